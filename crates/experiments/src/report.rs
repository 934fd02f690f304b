//! A run's files: `config.json` before training, then `results.json`, `results.csv`, `report.md` and the
//! plots.

use std::path::Path;

use crate::atomic::write;
use crate::config::ExperimentConfig;
use crate::error::{Error, Result};
use crate::results::{Results, ScaleSummary, table};

/// Writes `config.json` into `dir` (created if needed); call before training.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_config(dir: &Path, cfg: &ExperimentConfig) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    write(&dir.join("config.json"), &serde_json::to_vec_pretty(cfg).unwrap_or_default())
}

/// The learned per-channel scales of every fused run: mean ± std and the ten largest channels, per modality.
fn scales_table(results: &Results) -> String {
    fn scales(r: &crate::results::RunResult) -> [(&'static str, Option<&ScaleSummary>); 3] {
        [("eeg", r.eeg_scale.as_ref()), ("audio", r.audio_scale.as_ref()), ("video", r.video_scale.as_ref())]
    }
    let fused: Vec<&crate::results::RunResult> =
        results.runs.iter().filter(|r| scales(r).iter().any(|(_, s)| s.is_some())).collect();
    // Columns for the modalities some run fuses (EEG and audio in a run without video).
    let shown: Vec<&str> = ["eeg", "audio", "video"]
        .into_iter()
        .filter(|m| fused.iter().any(|r| scales(r).iter().any(|(n, s)| n == m && s.is_some())))
        .collect();
    let mut md = String::from(
        "\n## Learned per-channel scales (mean over subjects of each run's summary)\n\n| mode |",
    );
    for m in &shown {
        md.push_str(&format!(" {m}_scale mean ± std |"));
    }
    for m in &shown {
        md.push_str(&format!(" top {}-latent channels |", if *m == "eeg" { "EEG" } else { m }));
    }
    md.push_str(&format!("\n|---|{}\n", "---|".repeat(2 * shown.len())));
    for r in fused {
        let all = scales(r);
        let get = |m: &str| all.iter().find(|(n, _)| *n == m).and_then(|(_, s)| *s);
        let label = if r.modality == "eeg_audio" {
            r.fusion_mode.clone()
        } else {
            format!("{} {}", r.modality, r.fusion_mode)
        };
        md.push_str(&format!("| {label} (subject {}) |", r.subject));
        for m in &shown {
            md.push_str(&match get(m) {
                Some(s) => format!(" {:.3} ± {:.3} |", s.mean, s.std),
                None => " – |".to_owned(),
            });
        }
        for m in &shown {
            let top =
                get(m).map(|s| s.top10.iter().map(|(i, _)| i.to_string()).collect::<Vec<_>>().join(" "));
            md.push_str(&format!(" {} |", top.unwrap_or_else(|| "–".to_owned())));
        }
        md.push('\n');
    }
    md
}

/// The robustness section: accuracy of each model under each condition that applies to it, and its
/// relative robustness (mean accuracy over the perturbed conditions over `full`).
fn robustness_table(results: &Results) -> String {
    let rows = &results.robustness;
    if rows.is_empty() {
        return String::new();
    }
    let mut conditions: Vec<&str> = Vec::new();
    let mut models: Vec<(String, Option<String>)> = Vec::new();
    for r in rows {
        if !conditions.contains(&r.condition.as_str()) {
            conditions.push(&r.condition);
        }
        let m = (r.modality.clone(), r.fusion_mode.clone());
        if !models.contains(&m) {
            models.push(m);
        }
    }
    let relative = crate::robustness::relative(rows);
    let mut md = String::from(
        "\n## Robustness: accuracy under missing and degraded modalities (test windows; – where a condition does not apply)\n\n| model |",
    );
    for c in &conditions {
        md.push_str(&format!(" {c} |"));
    }
    md.push_str(&format!(" relative robustness |\n|---|{}---:|\n", "---:|".repeat(conditions.len())));
    for (modality, mode) in &models {
        let label = mode.as_ref().map_or(modality.clone(), |m| format!("{modality} {m}"));
        md.push_str(&format!("| {label} |"));
        for c in &conditions {
            let cell = rows
                .iter()
                .find(|r| &r.modality == modality && &r.fusion_mode == mode && r.condition == *c)
                .map_or("–".to_owned(), |r| format!("{:.3} ± {:.3}", r.accuracy_mean, r.accuracy_std));
            md.push_str(&format!(" {cell} |"));
        }
        let rel =
            relative.iter().find(|(l, _)| *l == label).map_or("–".to_owned(), |(_, v)| format!("{v:.3}"));
        md.push_str(&format!(" {rel} |\n"));
    }
    md.push_str("\nRelative robustness: the model's mean accuracy over its perturbed conditions divided by its accuracy under `full` (1.000: no loss).\n");
    md
}

/// The late-fusion section: each fused model's output mix and the test accuracy of each of its outputs
/// alone beside the mixture's.
fn mix_table(results: &Results) -> String {
    let mixed: Vec<&crate::results::RunResult> =
        results.runs.iter().filter(|r| r.output_mix.is_some()).collect();
    if mixed.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Late fusion: output mix and each output alone (test windows)\n\nThe prediction mixes the class probabilities of the fused classifier, of each unimodal head and (with experts, the default) of the separately trained single-modality models (`eeg_only=…` in the weights) with weights chosen on out-of-fold predictions of the training trials (or on the validation windows). `fused` is the fused classifier alone, `eeg`, `audio`, `video` the unimodal heads alone; a weighted expert scores what its own row scores.\n\n| model | subject | fold | weights | mixture | fused | eeg | audio | video |\n|---|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for r in mixed {
        let acc = |k: &str| {
            r.output_accuracy.as_ref().and_then(|a| a.get(k)).map_or("–".to_owned(), |v| format!("{v:.3}"))
        };
        md.push_str(&format!(
            "| {} {} | {} | {} | {} | {:.3} | {} | {} | {} | {} |\n",
            r.modality,
            r.fusion_mode,
            r.subject,
            r.fold,
            r.output_mix.as_ref().map(crate::model::OutputMix::describe).unwrap_or_default(),
            r.accuracy,
            acc("fused"),
            acc("eeg"),
            acc("audio"),
            acc("video"),
        ));
    }
    md
}

/// Writes `results.json`, `results.csv` and `report.md` into `dir`.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_results(dir: &Path, cfg: &ExperimentConfig, results: &Results) -> Result<()> {
    write(&dir.join("results.json"), &serde_json::to_vec_pretty(results).unwrap_or_default())?;
    let mut csv = String::from(
        "subject,fold,modality,fusion_mode,accuracy,macro_f1,kappa,loss,parameters,train_seconds,train_windows,val_windows,test_windows\n",
    );
    for r in &results.runs {
        csv.push_str(&format!(
            "{},{},{},{},{:.6},{:.6},{:.6},{:.6},{},{:.3},{},{},{}\n",
            r.subject,
            r.fold,
            r.modality,
            r.fusion_mode,
            r.accuracy,
            r.macro_f1,
            r.kappa,
            r.loss,
            r.parameters,
            r.train_seconds,
            r.windows[0],
            r.windows[1],
            r.windows[2]
        ));
    }
    write(&dir.join("results.csv"), csv.as_bytes())?;
    let mut md = format!(
        "# EEG-only vs EEG+audio\n\nData: `{}` (fingerprint {}); split: {} (train fraction {}, validation fraction {}); seed {}; {} epochs, batch {}, AdamW lr {}.\n\n",
        cfg.data_dir.display(),
        results.data_fingerprint,
        cfg.split,
        cfg.train_fraction,
        cfg.val_fraction,
        cfg.seed,
        cfg.train.epochs,
        cfg.train.batch_size,
        cfg.train.lr
    );
    md.push_str(&format!(
        "Training windows: {} trials; modality dropout {}; unimodal loss weight {}; late fusion {}.\n\n",
        cfg.trials,
        cfg.train.modality_dropout,
        cfg.unimodal_loss,
        if cfg.late_fusion_folds > 1 && cfg.unimodal_loss > 0.0 {
            format!(
                "over {} folds, {} weights{}{}{}{}",
                cfg.late_fusion_folds,
                match cfg.late_fusion_choice {
                    crate::config::MixChoice::Even => "even",
                    crate::config::MixChoice::Best => "best-fit",
                },
                if cfg.late_fusion_experts { ", with single-modality experts" } else { "" },
                if cfg.late_fusion_temperatures { ", tempered outputs" } else { "" },
                if cfg.late_fusion_bootstrap > 0 {
                    format!(", weights bagged over {} resamples", cfg.late_fusion_bootstrap)
                } else {
                    String::new()
                },
                if cfg.late_fusion_ensemble && cfg.val_fraction == 0.0 {
                    ", every model predicting with its fold models too (cross-validation ensemble)"
                } else {
                    ""
                }
            )
        } else {
            "off".to_owned()
        }
    ));
    md.push_str(&table(results));
    md.push_str(&robustness_table(results));
    md.push_str(&mix_table(results));
    md.push_str(&scales_table(results));
    let attention: Vec<&crate::results::RunResult> =
        results.runs.iter().filter(|r| r.attention_entropy.is_some()).collect();
    if !attention.is_empty() {
        md.push_str("\n## Attention: entropy relative to uniform\n\nMean entropy of the attention rows (per test window, head and query) over the entropy of uniform attention: 1.000 means the attention is uniform, i.e. it learned nothing about which steps or tokens matter; lower is more selective. The maps' colours span each map's own range; read the colour bar.\n\n| mode | subject | fold | EEG → audio | audio → EEG |\n|---|---:|---:|---:|---:|\n");
        for r in attention {
            let h = r.attention_entropy.as_deref().unwrap_or_default();
            let at = |k: usize| h.get(k).map_or("–".to_owned(), |v| format!("{v:.3}"));
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                r.fusion_mode,
                r.subject,
                r.fold,
                at(0),
                at(1)
            ));
        }
    }
    let routed: Vec<&crate::results::RunResult> =
        results.runs.iter().filter(|r| r.router_weights.is_some()).collect();
    if !routed.is_empty() {
        let modes = fusion::ADAPTIVE_EXPERTS;
        md.push_str("\n## Adaptive router: mean weight of each mode (test windows)\n\n| subject | fold |");
        for m in modes {
            md.push_str(&format!(" {m} |"));
        }
        md.push_str(&format!("\n|---:|---:|{}\n", "---:|".repeat(modes.len())));
        for r in &routed {
            md.push_str(&format!("| {} | {} |", r.subject, r.fold));
            for m in modes {
                let w =
                    r.router_weights.as_ref().and_then(|w| w.get(m.as_str())).copied().unwrap_or(f64::NAN);
                md.push_str(&format!(" {w:.3} |"));
            }
            md.push('\n');
        }
        md.push_str("\nPer true class (mean over subjects and folds):\n\n| class |");
        for m in modes {
            md.push_str(&format!(" {m} |"));
        }
        md.push_str(&format!("\n|---|{}\n", "---:|".repeat(modes.len())));
        for (c, emotion) in core_types::Emotion::ALL.iter().enumerate() {
            md.push_str(&format!("| {emotion} |"));
            for k in 0..modes.len() {
                let vs: Vec<f64> = routed
                    .iter()
                    .filter_map(|r| r.router_by_class.as_ref()?.get(c)?.get(k).copied())
                    .collect();
                md.push_str(&format!(" {:.3} |", vs.iter().sum::<f64>() / vs.len().max(1) as f64));
            }
            md.push('\n');
        }
    }
    let plots = crate::plots::write_plots(dir, results)?;
    md.push_str("\n## Plots\n\n");
    for p in plots {
        if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            md.push_str(&format!("![{name}]({name})\n"));
        }
    }
    write(&dir.join("report.md"), md.as_bytes())
}
