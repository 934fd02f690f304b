//! Trained models on disk: the weights as safetensors (PyTorch names) and, beside them, what is needed to
//! use them on new data (`<file>.json`: model config, preprocessing and the training windows'
//! normalisation).

use std::path::{Path, PathBuf};

use candle_core::Device;
use eav::dataset::{PreprocessConfig, preprocess};
use eav::subject::{discover, load_subject};
use serde::{Deserialize, Serialize};

use crate::data::{Normalisation, TensorSet};
use crate::error::{Error, Result};
use crate::model::{EmotionModel, ModelConfig};
use crate::train::evaluate;

/// What a checkpoint's side file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The model's configuration.
    pub model: ModelConfig,
    /// How windows were made from the raw files.
    pub preprocess: PreprocessConfig,
    /// Per-channel EEG and per-coefficient MFCC mean and std of the training windows.
    pub eeg_mean: Vec<f32>,
    /// See `eeg_mean`.
    pub eeg_std: Vec<f32>,
    /// MFCC mean per coefficient (fused models).
    pub mfcc_mean: Option<Vec<f32>>,
    /// MFCC std per coefficient (fused models).
    pub mfcc_std: Option<Vec<f32>>,
    /// The luma standardisation and window shape (models that read video).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<crate::data::VideoNorm>,
}

impl CheckpointMeta {
    /// Bundles the pieces.
    #[must_use]
    pub fn new(model: &ModelConfig, preprocess: &PreprocessConfig, norm: &Normalisation) -> Self {
        Self {
            model: model.clone(),
            preprocess: preprocess.clone(),
            eeg_mean: norm.eeg.mean.clone(),
            eeg_std: norm.eeg.std.clone(),
            mfcc_mean: norm.mfcc.as_ref().map(|m| m.mean.clone()),
            mfcc_std: norm.mfcc.as_ref().map(|m| m.std.clone()),
            video: norm.video.clone().filter(|_| model.modalities().contains(&core_types::Modality::Video)),
        }
    }

    /// The training windows' normalisation.
    #[must_use]
    pub fn normalisation(&self) -> Normalisation {
        use eav::split::Standardizer;
        Normalisation {
            eeg: Standardizer { mean: self.eeg_mean.clone(), std: self.eeg_std.clone() },
            mfcc: self
                .mfcc_mean
                .clone()
                .zip(self.mfcc_std.clone())
                .map(|(mean, std)| Standardizer { mean, std }),
            video: self.video.clone(),
        }
    }
}

/// The side file of a checkpoint.
#[must_use]
pub fn meta_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

/// Saves the weights and the side file.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn save(path: &Path, model: &EmotionModel, meta: &CheckpointMeta) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    }
    model.save(path)?;
    let side = meta_path(path);
    let bytes = serde_json::to_vec_pretty(meta).map_err(|e| Error::Input(e.to_string()))?;
    crate::atomic::write(&side, &bytes)
}

/// Loads a checkpoint written by [`save`].
///
/// # Errors
/// [`Error::Io`] for a missing weights or side file, [`Error::Input`] for a side file that does not parse,
/// checkpoint mismatches as [`EmotionModel::load`].
pub fn load(path: &Path, device: &Device) -> Result<(EmotionModel, CheckpointMeta)> {
    let side = meta_path(path);
    let bytes = std::fs::read(&side).map_err(|source| Error::Io { path: side.clone(), source })?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Input(format!("{}: not a checkpoint side file: {e}", side.display())))?;
    let model = EmotionModel::new(&meta.model, device, 0)?;
    model.load(path)?;
    Ok((model, meta))
}

/// One window's prediction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prediction {
    /// Subject number.
    pub subject: u32,
    /// 0-based trial.
    pub trial: usize,
    /// Window in the trial.
    pub window: usize,
    /// The label file's class.
    pub label: String,
    /// The most probable class.
    pub predicted: String,
    /// Probabilities in class order (neutral, sadness, anger, happiness, calmness).
    pub probabilities: Vec<f32>,
    /// The adaptive router's weights over `fusion::ADAPTIVE_EXPERTS` (adaptive models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<Vec<f32>>,
    /// The modalities the prediction used (`eeg`, `audio`, `video`): a fused model on a window without audio (a
    /// listening window, or `no_audio`) uses the EEG alone.
    pub modalities: Vec<String>,
}

/// Class probabilities for every window of the chosen subjects that the model can read: every window for
/// models that read EEG (a fused model reads a window without audio, or every window with `no_audio`,
/// through its other modalities), the windows with audio for the audio-only model and those with a clip
/// for the video-only model.
///
/// # Errors
/// Data errors naming the file; [`Error::Input`] when the data's channels do not fit the model, or
/// `no_audio` with the audio-only model.
pub fn predict(
    model: &EmotionModel,
    meta: &CheckpointMeta,
    data_dir: &Path,
    subjects: &[u32],
    no_audio: bool,
) -> Result<Vec<Prediction>> {
    let modalities = meta.model.modalities();
    let (reads_eeg, reads_audio) =
        (modalities.contains(&core_types::Modality::Eeg), modalities.contains(&core_types::Modality::Audio));
    if no_audio && !reads_eeg {
        return Err(Error::Input("the audio-only model cannot predict without audio".into()));
    }
    let use_audio = reads_audio && !no_audio;
    let reads_video = modalities.contains(&core_types::Modality::Video);
    let norm = meta.normalisation();
    let mut out = Vec::new();
    for sd in discover(data_dir)?.into_iter().filter(|s| subjects.is_empty() || subjects.contains(&s.id)) {
        let subject = load_subject(&sd)?;
        let video = if reads_video { meta.preprocess.video.clone() } else { None };
        let pre =
            preprocess(&subject, &PreprocessConfig { audio: use_audio, video, ..meta.preprocess.clone() })?;
        if pre.channels.len() != meta.model.eeg.in_channels {
            return Err(Error::Input(format!(
                "subject {}: {} EEG channels after selection, the model reads {}",
                sd.id,
                pre.channels.len(),
                meta.model.eeg.in_channels
            )));
        }
        // A window the model can read: one with a modality it reads (EEG is always recorded).
        let readable = |s: &eav::dataset::Sample| {
            reads_eeg || (use_audio && s.mfcc.is_some()) || (reads_video && s.video.is_some())
        };
        let idx: Vec<usize> = (0..pre.samples.len()).filter(|&i| readable(&pre.samples[i])).collect();
        if idx.is_empty() {
            continue;
        }
        let mut set =
            TensorSet::build(&pre.samples, &idx, &norm, pre.eeg_len, pre.mfcc_frames, model.device())?;
        if reads_audio && set.mfcc.is_none() {
            // No window has audio: a fused model reads them all through the EEG (windows without audio
            // among others are already masked).
            set = set.without(core_types::Modality::Audio)?;
        }
        if reads_video && set.video.is_none() {
            set = set.without(core_types::Modality::Video)?;
        }
        let (_, probs) = evaluate(model, &set, 64)?;
        let mut routers: Vec<Option<Vec<f32>>> = vec![None; idx.len()];
        if meta.model.fusion.as_ref().is_some_and(|f| f.mode == core_types::FusionMode::Adaptive) {
            let mut rows = Vec::with_capacity(idx.len());
            for batch in set.in_order(64) {
                let batch = batch?;
                if let Some(w) = model.inspect_inputs(batch.inputs(), &batch.presence)?.and_then(|i| i.router)
                {
                    rows.extend(w.to_vec2::<f32>()?.into_iter().map(Some));
                }
            }
            if rows.len() == idx.len() {
                routers = rows;
            }
        }
        for ((&i, p), router) in idx.iter().zip(probs).zip(routers) {
            let s = &pre.samples[i];
            let best = p.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(k, _)| k);
            let mut used = Vec::new();
            if reads_eeg {
                used.push("eeg".to_owned());
            }
            if reads_audio && s.mfcc.is_some() {
                used.push("audio".to_owned());
            }
            if reads_video && s.video.is_some() {
                used.push("video".to_owned());
            }
            out.push(Prediction {
                subject: s.subject,
                trial: s.trial,
                window: s.window,
                label: s.emotion.to_string(),
                predicted: core_types::Emotion::from_index(best).map_or_else(String::new, |e| e.to_string()),
                probabilities: p,
                router,
                modalities: used,
            });
        }
    }
    Ok(out)
}
