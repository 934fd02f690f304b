//! What a run produces: per-model [`RunResult`]s, per-setting [`SummaryRow`]s, skipped subjects, and the
//! comparison [`table`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::metrics::mean_std;
use crate::train::EpochLog;

/// Summary statistics of a per-channel scale vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleSummary {
    /// Mean over channels.
    pub mean: f64,
    /// Standard deviation over channels.
    pub std: f64,
    /// The ten channels with the largest absolute scale: (channel, value).
    pub top10: Vec<(usize, f64)>,
    /// Every value.
    pub values: Vec<f32>,
}

pub(crate) fn summarise(values: Vec<f32>) -> ScaleSummary {
    let v: Vec<f64> = values.iter().map(|&x| f64::from(x)).collect();
    let (mean, std) = mean_std(&v);
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()));
    ScaleSummary { mean, std, top10: idx.into_iter().take(10).map(|i| (i, v[i])).collect(), values }
}

/// One trained and tested model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The held-out subject (LOSO) or the subject trained and tested on.
    pub subject: u32,
    /// `eeg_only`, `audio_only`, `video_only` or a fused set (`eeg_audio`, `eeg_audio_video`, …).
    pub modality: String,
    /// The fusion mode compared against (EEG-only runs carry the mode of their comparison, or `none`).
    pub fusion_mode: String,
    /// Fold index (k-fold), else 0.
    pub fold: usize,
    /// Test accuracy.
    pub accuracy: f64,
    /// Test macro-F1.
    pub macro_f1: f64,
    /// Test Cohen's kappa.
    pub kappa: f64,
    /// Test cross-entropy.
    pub loss: f64,
    /// Test confusion matrix, `[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Per-class precision and recall.
    pub precision: Vec<f64>,
    /// Per-class recall.
    pub recall: Vec<f64>,
    /// Trained scalars.
    pub parameters: usize,
    /// Training wall time (with late fusion, the out-of-fold models' training included).
    pub train_seconds: f64,
    /// Windows used: train, validation, test.
    pub windows: [usize; 3],
    /// Learning curve.
    pub history: Vec<EpochLog>,
    /// Learned `eeg_scale` (fused models).
    pub eeg_scale: Option<ScaleSummary>,
    /// Learned `video_scale` (fused models with video).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_scale: Option<ScaleSummary>,
    /// Learned `audio_scale` (fused models).
    pub audio_scale: Option<ScaleSummary>,
    /// The saved model, when checkpoints are kept.
    pub checkpoint: Option<PathBuf>,
    /// Gate values averaged over the test windows, `2·128` (gated): EEG half then audio half.
    pub gate_mean: Option<Vec<f32>>,
    /// Attention EEG → audio averaged over test windows and heads: `tokens × tokens` (cross_attention) or
    /// EEG steps × audio steps of the last layer (temporal).
    pub attention_e2a: Option<Vec<Vec<f32>>>,
    /// Attention audio → EEG, likewise.
    pub attention_a2e: Option<Vec<Vec<f32>>>,
    /// `softmax(blend_logits)`: weight of the EEG and of the audio branch (cross_attention).
    pub blend_weights: Option<Vec<f32>>,
    /// Mean entropy of the attention rows over that of uniform attention (1: uniform), EEG → audio then
    /// audio → EEG (cross_attention, temporal).
    #[serde(default)]
    pub attention_entropy: Option<Vec<f64>>,
    /// The adaptive router's mean weight of each mode over the test windows (adaptive).
    #[serde(default)]
    pub router_weights: Option<std::collections::BTreeMap<String, f64>>,
    /// The router's mean weights per true class, `[class][mode]` with modes in
    /// `fusion::ADAPTIVE_EXPERTS` order (adaptive; a class without test windows has zeros).
    #[serde(default)]
    pub router_by_class: Option<Vec<Vec<f64>>>,
    /// The weights with which the fused model's prediction mixes its outputs (late fusion; fused models
    /// with unimodal heads and `late_fusion` > 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_mix: Option<crate::model::OutputMix>,
    /// Test accuracy of each output alone: `fused` (the fused classifier) and each modality's unimodal
    /// head (fused models with an output mix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_accuracy: Option<std::collections::BTreeMap<String, f64>>,
    /// Accuracy under every robustness condition that applies to the model (`full` first).
    #[serde(default)]
    pub robustness: Vec<crate::robustness::ConditionResult>,
}
/// Mean ± std of one setting across subjects (and folds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// `eeg_only`, `audio_only`, `video_only` or a fused set (`eeg_audio`, `eeg_audio_video`, …).
    pub modality: String,
    /// Fusion mode (EEG-only rows: `none`).
    pub fusion_mode: String,
    /// Mean test accuracy.
    pub accuracy_mean: f64,
    /// Its standard deviation.
    pub accuracy_std: f64,
    /// Mean test macro-F1.
    pub macro_f1_mean: f64,
    /// Its standard deviation.
    pub macro_f1_std: f64,
    /// Mean test loss.
    pub loss_mean: f64,
    /// Trained scalars.
    pub parameters: usize,
    /// Total training time.
    pub train_seconds: f64,
    /// Subjects covered.
    pub subjects: Vec<u32>,
}

/// A subject left out of a run because its files failed to load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The subject.
    pub subject: u32,
    /// Why: the loading error, naming the file.
    pub reason: String,
}

/// All results of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// Fingerprint of the data and preprocessing: a hash over every subject's file names, sizes and
    /// modification times and the preprocessing settings (the preprocessing cache keys).
    pub data_fingerprint: String,
    /// One row per setting.
    pub summary: Vec<SummaryRow>,
    /// One entry per subject, fold and setting.
    pub runs: Vec<RunResult>,
    /// Subjects left out because their files failed to load (with `skip_bad_subjects`).
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// The robustness matrix: one row per model and condition, over subjects (and folds).
    #[serde(default)]
    pub robustness: Vec<crate::robustness::RobustnessRow>,
}

pub(crate) fn summarise_runs(runs: &[RunResult]) -> Vec<SummaryRow> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in runs {
        let k = (r.modality.clone(), r.fusion_mode.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(modality, fusion_mode)| {
            let rs: Vec<&RunResult> =
                runs.iter().filter(|r| r.modality == modality && r.fusion_mode == fusion_mode).collect();
            let acc: Vec<f64> = rs.iter().map(|r| r.accuracy).collect();
            let f1: Vec<f64> = rs.iter().map(|r| r.macro_f1).collect();
            let loss: Vec<f64> = rs.iter().map(|r| r.loss).collect();
            let mut subjects: Vec<u32> = rs.iter().map(|r| r.subject).collect();
            subjects.dedup();
            SummaryRow {
                modality,
                fusion_mode,
                accuracy_mean: mean_std(&acc).0,
                accuracy_std: mean_std(&acc).1,
                macro_f1_mean: mean_std(&f1).0,
                macro_f1_std: mean_std(&f1).1,
                loss_mean: mean_std(&loss).0,
                parameters: rs.first().map_or(0, |r| r.parameters),
                train_seconds: rs.iter().map(|r| r.train_seconds).sum(),
                subjects,
            }
        })
        .collect()
}

/// The comparison table: one line per fused mode with the single-modality models, EEG+audio and the
/// difference to the better single-modality model (fusion must not do worse than the best modality it is
/// given); then a line per single-modality model.
#[must_use]
pub fn table(results: &Results) -> String {
    let single = |m: &str| results.summary.iter().find(|r| r.modality == m);
    let (eeg, audio) = (single("eeg_only"), single("audio_only"));
    let cell = |r: Option<&SummaryRow>, f: fn(&SummaryRow) -> f64| {
        r.map_or("–".to_owned(), |r| format!("{:.3}", f(r)))
    };
    let best = [eeg, audio].into_iter().flatten().map(|r| r.accuracy_mean).fold(f64::NAN, f64::max);
    let mut s = String::new();
    if results.summary.iter().any(|r| r.modality == "eeg_audio") {
        s.push_str(
            "| mode | EEG-only acc | audio-only acc | EEG+audio acc | Δ acc vs best single | EEG-only F1 | audio-only F1 | EEG+audio F1 | loss (fused) | params (fused) | train s (fused) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
    }
    for r in results.summary.iter().filter(|r| r.modality == "eeg_audio") {
        s.push_str(&format!(
            "| {} | {} | {} | {:.3} ± {:.3} | {:+.3} | {} | {} | {:.3} ± {:.3} | {:.3} | {} | {:.1} |\n",
            r.fusion_mode,
            cell(eeg, |r| r.accuracy_mean),
            cell(audio, |r| r.accuracy_mean),
            r.accuracy_mean,
            r.accuracy_std,
            r.accuracy_mean - best,
            cell(eeg, |r| r.macro_f1_mean),
            cell(audio, |r| r.macro_f1_mean),
            r.macro_f1_mean,
            r.macro_f1_std,
            r.loss_mean,
            r.parameters,
            r.train_seconds
        ));
    }
    let others: Vec<&SummaryRow> = results
        .summary
        .iter()
        .filter(|r| !r.modality.ends_with("_only") && r.modality != "eeg_audio")
        .collect();
    if !others.is_empty() {
        s.push_str(
            "\n| modalities | mode | acc | best single given | Δ acc vs best single | macro-F1 | params | train s |\n|---|---|---:|---|---:|---:|---:|---:|\n",
        );
    }
    for r in others {
        let given = r.modality.split('_').filter_map(|m| single(&format!("{m}_only")));
        let best = given.max_by(|a, b| a.accuracy_mean.total_cmp(&b.accuracy_mean));
        s.push_str(&format!(
            "| {} | {} | {:.3} ± {:.3} | {} | {} | {:.3} ± {:.3} | {} | {:.1} |\n",
            r.modality,
            r.fusion_mode,
            r.accuracy_mean,
            r.accuracy_std,
            best.map_or("–".to_owned(), |b| format!("{} {:.3}", b.modality, b.accuracy_mean)),
            best.map_or("–".to_owned(), |b| format!("{:+.3}", r.accuracy_mean - b.accuracy_mean)),
            r.macro_f1_mean,
            r.macro_f1_std,
            r.parameters,
            r.train_seconds
        ));
    }
    for (name, r) in [("EEG-only", eeg), ("Audio-only", audio), ("Video-only", single("video_only"))] {
        if let Some(e) = r {
            s.push_str(&format!(
                "\n{name}: accuracy {:.3} ± {:.3}, macro-F1 {:.3} ± {:.3}, loss {:.3}, {} parameters, {:.1} s training.",
                e.accuracy_mean, e.accuracy_std, e.macro_f1_mean, e.macro_f1_std, e.loss_mean, e.parameters, e.train_seconds
            ));
        }
    }
    s.push('\n');
    if !results.skipped.is_empty() {
        s.push_str(&format!("\nSkipped {} subject(s) whose files failed to load:\n", results.skipped.len()));
        for k in &results.skipped {
            s.push_str(&format!("- subject {}: {}\n", k.subject, k.reason));
        }
    }
    s
}
