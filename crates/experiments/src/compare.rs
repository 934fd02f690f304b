//! Experiments over subjects: EEG-only against EEG+audio (each fusion mode) on the same speaking-trial
//! windows, per subject, with the chosen split; results as JSON, CSV and a Markdown report.

use std::path::{Path, PathBuf};

use candle_core::Device;
use core_types::FusionMode;
use eav::dataset::{PreprocessConfig, Sample};
use eav::split::{Protocol, Split, kfold, loso, official};
use eav::subject::{SubjectDir, discover};
use serde::{Deserialize, Serialize};

use crate::data::{Normalisation, TensorSet};
use crate::error::{Error, Result};
use crate::metrics::{Metrics, mean_std};
use crate::model::{EmotionModel, ModelConfig};
use crate::train::{EpochLog, TrainConfig, evaluate, train};

/// Everything a run depends on; written to `config.json` before training starts, and enough to repeat
/// the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// The EAV root.
    pub data_dir: PathBuf,
    /// Subjects to use (all when empty).
    pub subjects: Vec<u32>,
    /// EEG and audio preprocessing.
    pub preprocess: PreprocessConfig,
    /// Evaluation protocol.
    pub split: Protocol,
    /// Fraction of each class's trials that train (official split).
    pub train_fraction: f64,
    /// Fraction of the training trials moved to validation (early stopping); 0 disables it.
    pub val_fraction: f64,
    /// Fused models to train besides EEG-only.
    pub fusion_modes: Vec<FusionMode>,
    /// Whether to train the EEG-only model too.
    pub eeg_only: bool,
    /// Optimiser and schedule.
    pub train: TrainConfig,
    /// Dropout probability of the classifier and fusion layer.
    pub dropout: f32,
    /// Seed of weights, dropout and shuffling.
    pub seed: u64,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Where to save each trained model (safetensors + side file); none when unset.
    #[serde(default)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Preprocessing cache folder; none when unset.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Standardise EEG channels and MFCC coefficients with statistics of the training windows.
    #[serde(default = "yes")]
    pub standardise: bool,
    /// Folder of per-run training states (saved every epoch; a rerun continues from them); none when unset.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl ExperimentConfig {
    /// The default comparison on `data_dir` for `modes`.
    #[must_use]
    pub fn new(data_dir: PathBuf, modes: Vec<FusionMode>) -> Self {
        Self {
            data_dir,
            subjects: Vec::new(),
            preprocess: PreprocessConfig::default(),
            split: Protocol::Official,
            train_fraction: 0.7,
            val_fraction: 0.0,
            fusion_modes: modes,
            eeg_only: true,
            train: TrainConfig::default(),
            dropout: 0.3,
            seed: 42,
            device: "cpu".into(),
            checkpoint_dir: None,
            cache_dir: None,
            state_dir: None,
            standardise: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// The device named by `name`.
///
/// # Errors
/// [`Error::Input`] for an unknown name, or `cuda` in a build without the `cuda` feature.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if candle_core::utils::cuda_is_available() => Ok(Device::new_cuda(0)?),
        "cuda" => Err(Error::Input(
            "--device cuda needs a build with `--features cuda` (and nvcc); this build is CPU-only".into(),
        )),
        other => Err(Error::Input(format!("unknown device `{other}`; expected cpu or cuda"))),
    }
}

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

fn summarise(values: Vec<f32>) -> ScaleSummary {
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
    /// `eeg_only` or `eeg_audio`.
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
    /// Training wall time.
    pub train_seconds: f64,
    /// Windows used: train, validation, test.
    pub windows: [usize; 3],
    /// Learning curve.
    pub history: Vec<EpochLog>,
    /// Learned `eeg_scale` (fused models).
    pub eeg_scale: Option<ScaleSummary>,
    /// Learned `audio_scale` (fused models).
    pub audio_scale: Option<ScaleSummary>,
    /// The saved model, when checkpoints are kept.
    pub checkpoint: Option<PathBuf>,
    /// Gate values averaged over the test windows, `2·128` (gated): EEG half then audio half.
    pub gate_mean: Option<Vec<f32>>,
    /// Attention EEG → audio averaged over test windows and heads, `tokens × tokens` (cross_attention).
    pub attention_e2a: Option<Vec<Vec<f32>>>,
    /// Attention audio → EEG, likewise.
    pub attention_a2e: Option<Vec<Vec<f32>>>,
    /// `softmax(blend_logits)`: weight of the EEG and of the audio branch (cross_attention).
    pub blend_weights: Option<Vec<f32>>,
}

/// What the fusion layer did on a set of windows: mean gate values, mean attention maps.
type FusionView = (Option<Vec<f32>>, Option<(Vec<Vec<f32>>, Vec<Vec<f32>>)>);

fn inspect_fusion(model: &EmotionModel, set: &TensorSet) -> Result<FusionView> {
    let Some(fusion) = model.fusion() else { return Ok((None, None)) };
    let ids: Vec<u32> = (0..u32::try_from(set.len()).unwrap_or(u32::MAX)).collect();
    let (mut gates, mut e2a, mut a2e): (
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
        Option<candle_core::Tensor>,
    ) = (None, None, None);
    let add = |acc: &mut Option<candle_core::Tensor>, t: candle_core::Tensor| -> Result<()> {
        *acc = Some(match acc.take() {
            Some(a) => (a + t)?,
            None => t,
        });
        Ok(())
    };
    for idx in ids.chunks(64) {
        let (eeg, mfcc, _) = set.batch(idx)?;
        let inter = model.forward_intermediates(&eeg, mfcc.as_ref(), false)?;
        let d = fusion.config().latent_dim;
        let e = core_types::Latent::new(inter.eeg_latent, d)?;
        let a = core_types::Latent::new(
            inter.audio_latent.ok_or_else(|| Error::Input("fused model without audio".into()))?,
            d,
        )?;
        let ins = fusion.forward_inspect(&e, &a, false)?;
        if let Some(g) = ins.gates {
            add(&mut gates, g.sum(0)?)?;
        }
        if let Some((x, y)) = ins.attention {
            add(&mut e2a, x.mean(1)?.sum(0)?)?;
            add(&mut a2e, y.mean(1)?.sum(0)?)?;
        }
    }
    let n = set.len().max(1) as f64;
    let gates = gates.map(|g| (g / n)?.to_vec1::<f32>()).transpose()?;
    let attention = match (e2a, a2e) {
        (Some(x), Some(y)) => Some(((x / n)?.to_vec2::<f32>()?, (y / n)?.to_vec2::<f32>()?)),
        _ => None,
    };
    Ok((gates, attention))
}

/// Mean ± std of one setting across subjects (and folds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// `eeg_only` or `eeg_audio`.
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
}

/// What a run reports while it works.
pub trait Progress {
    /// A subject (or held-out subject) starts; `total` of them.
    fn subject(&self, _id: u32, _index: usize, _total: usize) {}
    /// An epoch of a setting ended.
    fn epoch(&self, _setting: &str, _log: &EpochLog) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;
impl Progress for Quiet {}

fn keep_speaking(s: Vec<Sample>) -> Vec<Sample> {
    s.into_iter().filter(|s| s.mfcc.is_some()).collect()
}

/// The subjects to use.
fn subject_dirs(cfg: &ExperimentConfig) -> Result<Vec<SubjectDir>> {
    let all = discover(&cfg.data_dir)?;
    if cfg.subjects.is_empty() {
        return Ok(all);
    }
    cfg.subjects
        .iter()
        .map(|id| {
            all.iter().find(|s| s.id == *id).cloned().ok_or_else(|| {
                Error::Input(format!(
                    "subject {id} not found in {} (have {:?})",
                    cfg.data_dir.display(),
                    all.iter().map(|s| s.id).collect::<Vec<_>>()
                ))
            })
        })
        .collect()
}

fn load_samples(sd: &SubjectDir, cfg: &ExperimentConfig) -> Result<(Vec<Sample>, usize, usize)> {
    let (pre, _) = eav::cache::preprocess_cached(sd, &cfg.preprocess, cfg.cache_dir.as_deref())?;
    let channels = pre.channels.len();
    let samples = keep_speaking(pre.samples);
    if samples.is_empty() {
        return Err(Error::Input(format!("subject {}: no speaking windows with audio", sd.id)));
    }
    Ok((samples, channels, pre.eeg_len))
}

/// Runs EEG-only and every fused setting of `cfg` on every subject, calling `progress` as it goes.
///
/// # Errors
/// Data errors naming the file; training errors.
pub fn run(cfg: &ExperimentConfig, progress: &dyn Progress) -> Result<Results> {
    let device = device(&cfg.device)?;
    let dirs = subject_dirs(cfg)?;
    let mut runs = Vec::new();
    match cfg.split {
        Protocol::Official | Protocol::KFold(_) => {
            for (i, sd) in dirs.iter().enumerate() {
                progress.subject(sd.id, i, dirs.len());
                tracing::info!(subject = sd.id, "loading and preprocessing {}", sd.path.display());
                let (samples, channels, eeg_len) = load_samples(sd, cfg)?;
                tracing::info!(subject = sd.id, windows = samples.len(), channels, "speaking windows ready");
                let splits: Vec<Split> = match cfg.split {
                    Protocol::KFold(k) => (0..k).map(|f| kfold(&samples, k, f, cfg.val_fraction)).collect(),
                    _ => vec![official(&samples, cfg.train_fraction, cfg.val_fraction)],
                };
                for (fold, split) in splits.iter().enumerate() {
                    runs.extend(run_split(
                        cfg, &device, &samples, split, sd.id, fold, channels, eeg_len, progress,
                    )?);
                }
            }
        }
        Protocol::Loso => {
            let mut samples = Vec::new();
            let mut dims = (0, 0);
            for sd in &dirs {
                let (s, c, l) = load_samples(sd, cfg)?;
                samples.extend(s);
                dims = (c, l);
            }
            for (i, sd) in dirs.iter().enumerate() {
                progress.subject(sd.id, i, dirs.len());
                let split = loso(&samples, sd.id, cfg.val_fraction);
                runs.extend(run_split(cfg, &device, &samples, &split, sd.id, 0, dims.0, dims.1, progress)?);
            }
        }
    }
    let mut fp = 0xcbf2_9ce4_8422_2325_u64;
    for sd in &dirs {
        fp = (fp ^ eav::cache::key(sd, &cfg.preprocess)?).wrapping_mul(0x0100_0000_01b3);
    }
    Ok(Results { data_fingerprint: format!("{fp:016x}"), summary: summarise_runs(&runs), runs })
}

#[allow(clippy::too_many_arguments)] // one call site; the arguments are the pieces of one split
fn run_split(
    cfg: &ExperimentConfig,
    device: &Device,
    samples: &[Sample],
    split: &Split,
    subject: u32,
    fold: usize,
    channels: usize,
    eeg_len: usize,
    progress: &dyn Progress,
) -> Result<Vec<RunResult>> {
    if split.train.is_empty() || split.test.is_empty() {
        return Err(Error::Input(format!(
            "subject {subject}: the split leaves no training or no test windows"
        )));
    }
    let frames = cfg.preprocess.mfcc_frames;
    let norm = if cfg.standardise {
        Normalisation::fit(samples, &split.train, channels, eeg_len, frames)
    } else {
        Normalisation::identity(channels)
    };
    let set = |idx: &[usize]| TensorSet::build(samples, idx, &norm, eeg_len, frames, device);
    let (train_set, test_set) = (set(&split.train)?, set(&split.test)?);
    let val_set = if split.val.is_empty() { None } else { Some(set(&split.val)?) };
    let mut settings: Vec<(ModelConfig, &str, String)> = Vec::new();
    if cfg.eeg_only {
        settings.push((ModelConfig::eeg_only(channels), "eeg_only", "none".into()));
    }
    for &mode in &cfg.fusion_modes {
        settings.push((ModelConfig::fused(channels, mode), "eeg_audio", mode.to_string()));
    }
    let mut out = Vec::new();
    for (model_cfg, modality, mode) in settings {
        let model_cfg = model_cfg.with_dropout(cfg.dropout).with_dropout_seed(cfg.seed);
        let model = EmotionModel::new(&model_cfg, device, cfg.seed)?;
        let name = format!("subject {subject} {modality} {mode}");
        let state = cfg
            .state_dir
            .as_ref()
            .map(|d| d.join(format!("subject{subject}_fold{fold}_{modality}_{mode}.state.safetensors")));
        if let Some(d) = &cfg.state_dir {
            std::fs::create_dir_all(d).map_err(|source| Error::Io { path: d.clone(), source })?;
        }
        let trained = train(
            &model,
            &train_set,
            val_set.as_ref(),
            &cfg.train,
            cfg.seed,
            state.as_deref(),
            &mut |log| progress.epoch(&name, log),
        )?;
        let (m, _): (Metrics, _) = evaluate(&model, &test_set, 64)?;
        tracing::info!(subject, fold, modality, mode = %mode, accuracy = m.accuracy, macro_f1 = m.macro_f1, seconds = trained.seconds, "tested");
        let (gate_mean, attention) = inspect_fusion(&model, &test_set)?;
        let blend_weights =
            model.fusion().and_then(|f| f.blend_weights().ok()).map(|w| w.to_vec1::<f32>()).transpose()?;
        let checkpoint = match &cfg.checkpoint_dir {
            Some(dir) => {
                let path = dir.join(format!("subject{subject}_fold{fold}_{modality}_{mode}.safetensors"));
                crate::checkpoint::save(
                    &path,
                    &model,
                    &crate::checkpoint::CheckpointMeta::new(&model_cfg, &cfg.preprocess, &norm),
                )?;
                Some(path)
            }
            None => None,
        };
        let scale = |f: fn(&fusion::Fusion) -> &candle_core::Tensor| -> Result<Option<ScaleSummary>> {
            model.fusion().map(|fu| Ok(summarise(f(fu).to_vec1::<f32>()?))).transpose()
        };
        out.push(RunResult {
            subject,
            modality: modality.into(),
            fusion_mode: mode,
            fold,
            accuracy: m.accuracy,
            macro_f1: m.macro_f1,
            kappa: m.kappa,
            loss: m.loss.unwrap_or(f64::NAN),
            confusion: m.confusion,
            precision: m.precision,
            recall: m.recall,
            parameters: model.num_parameters(),
            train_seconds: trained.seconds,
            windows: [split.train.len(), split.val.len(), split.test.len()],
            history: trained.history,
            eeg_scale: scale(fusion::Fusion::eeg_scale)?,
            audio_scale: scale(fusion::Fusion::audio_scale)?,
            checkpoint,
            gate_mean,
            attention_e2a: attention.as_ref().map(|a| a.0.clone()),
            attention_a2e: attention.map(|a| a.1),
            blend_weights,
        });
    }
    Ok(out)
}

fn summarise_runs(runs: &[RunResult]) -> Vec<SummaryRow> {
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

/// The comparison table: one line per fused mode with EEG-only, EEG+audio and the difference.
#[must_use]
pub fn table(results: &Results) -> String {
    let eeg = results.summary.iter().find(|r| r.modality == "eeg_only");
    let mut s = String::new();
    if results.summary.iter().any(|r| r.modality == "eeg_audio") {
        s.push_str(
            "| mode | EEG-only acc | EEG+audio acc | Δ acc | EEG-only F1 | EEG+audio F1 | Δ F1 | loss (fused) | params (fused) | train s (fused) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
    }
    for r in results.summary.iter().filter(|r| r.modality == "eeg_audio") {
        let (ea, ef) = eeg.map_or((f64::NAN, f64::NAN), |e| (e.accuracy_mean, e.macro_f1_mean));
        s.push_str(&format!(
            "| {} | {:.3} | {:.3} ± {:.3} | {:+.3} | {:.3} | {:.3} ± {:.3} | {:+.3} | {:.3} | {} | {:.1} |\n",
            r.fusion_mode,
            ea,
            r.accuracy_mean,
            r.accuracy_std,
            r.accuracy_mean - ea,
            ef,
            r.macro_f1_mean,
            r.macro_f1_std,
            r.macro_f1_mean - ef,
            r.loss_mean,
            r.parameters,
            r.train_seconds
        ));
    }
    if let Some(e) = eeg {
        s.push_str(&format!(
            "\nEEG-only: accuracy {:.3} ± {:.3}, macro-F1 {:.3} ± {:.3}, loss {:.3}, {} parameters, {:.1} s training.\n",
            e.accuracy_mean, e.accuracy_std, e.macro_f1_mean, e.macro_f1_std, e.loss_mean, e.parameters, e.train_seconds
        ));
    }
    s
}

/// Writes `bytes` to a temporary name beside `path`, then renames it into place: a killed run leaves neither
/// a half-written file nor a lost earlier one.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|source| Error::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.into(), source })
}

/// Writes `config.json` into `dir` (created if needed); call before training.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_config(dir: &Path, cfg: &ExperimentConfig) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    write(&dir.join("config.json"), &serde_json::to_vec_pretty(cfg).unwrap_or_default())
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
    md.push_str(&table(results));
    md.push_str("\n## Learned per-channel scales (mean over subjects of each run's summary)\n\n| mode | eeg_scale mean ± std | audio_scale mean ± std | top EEG-latent channels | top audio-latent channels |\n|---|---|---|---|---|\n");
    for r in results.runs.iter().filter(|r| r.eeg_scale.is_some()) {
        let (e, a) = (r.eeg_scale.as_ref(), r.audio_scale.as_ref());
        let top = |s: Option<&ScaleSummary>| {
            s.map(|s| s.top10.iter().map(|(i, _)| i.to_string()).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        md.push_str(&format!(
            "| {} (subject {}) | {:.3} ± {:.3} | {:.3} ± {:.3} | {} | {} |\n",
            r.fusion_mode,
            r.subject,
            e.map_or(f64::NAN, |s| s.mean),
            e.map_or(f64::NAN, |s| s.std),
            a.map_or(f64::NAN, |s| s.mean),
            a.map_or(f64::NAN, |s| s.std),
            top(e),
            top(a)
        ));
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
