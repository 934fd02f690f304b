//! [`ExperimentConfig`]: everything a run depends on, and the device it names.

use std::path::PathBuf;

use candle_core::Device;
use core_types::{FusionMode, Modality};
use eav::dataset::PreprocessConfig;
use eav::split::Protocol;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::TrainConfig;

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
    /// Whether to train the audio-only model too (on the windows with audio).
    #[serde(default)]
    pub audio_only: bool,
    /// Whether to train the video-only model too (needs `preprocess.video`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub video_only: bool,
    /// The modality sets the fused models fuse, each trained with every mode of `fusion_modes`; empty
    /// (the default, and older configs) means EEG and audio. Sets with video need `preprocess.video`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fused_sets: Vec<Vec<Modality>>,
    /// Optimiser and schedule.
    pub train: TrainConfig,
    /// Dropout probability of the classifier and fusion layer.
    pub dropout: f32,
    /// Fused models: weight of the unimodal auxiliary losses (`ModelConfig::unimodal_loss`); 0 is the
    /// design's plain training. A config without the field (older runs) means 0.
    #[serde(default)]
    pub unimodal_loss: f64,
    /// Fused models with unimodal heads: the number of folds of the cross-fitted choice of the output mix
    /// ([`crate::mix`]). The training trials are dealt into this many folds (whole trials, every class in
    /// each); a model trained without each fold (for as many optimisation steps as the full model) predicts it, the mix is chosen on those out-of-fold
    /// predictions, and the model trained from the same seed on every training window predicts with it.
    /// With a validation split (`val_fraction` > 0) the mix is chosen on the validation windows instead,
    /// without extra training. 0 (and configs without the field): the fused classifier alone, the
    /// design's model.
    #[serde(default)]
    pub late_fusion_folds: usize,
    /// Late fusion: the mixture may also weight the separately trained single-modality model of each
    /// fused modality (an *expert*, the `{modality}_only` model of the same split, trained like that row;
    /// its out-of-fold predictions come from single-modality models trained on the same folds). Experts
    /// given weight travel inside the fused model's checkpoint. With them, a mixture can put its weight
    /// on the best single model where the fused model's own outputs are weaker. `false` (and configs
    /// without the field): the fused model's own outputs only.
    #[serde(default)]
    pub late_fusion_experts: bool,
    /// Late fusion: before the weights are chosen, temper each output's probabilities with the
    /// temperature that fits its own held-out predictions best (temperature scaling); the mix keeps
    /// them. Right-but-unsure outputs (slow learners, such as video from few trials) then count for what
    /// they get right rather than for how sure they are. `false` (and configs without the field): the
    /// probabilities as trained.
    #[serde(default)]
    pub late_fusion_temperatures: bool,
    /// Late fusion: the weights are the mean of the choices on this many bootstrap resamples of the
    /// held-out trials ([`crate::mix::OutputProbs::choose_bagged`]); the temperatures are fitted on
    /// every held-out window. 0 (and configs without the field): one choice on every held-out window.
    #[serde(default)]
    pub late_fusion_bootstrap: usize,
    /// Late fusion: how the weights are chosen on the held-out predictions ([`MixChoice`]).
    /// Configs without the field (older runs): [`MixChoice::Best`].
    #[serde(default)]
    pub late_fusion_choice: MixChoice,
    /// Cross-validation ensemble (needs `late_fusion_folds` > 1, no validation split and, with fused
    /// models, `unimodal_loss` > 0; otherwise the run is an input error): every model
    /// predicts with the mean of its own class probabilities and those of the models of its kind
    /// trained without each fold — for a fused model the fold models whose out-of-fold predictions chose
    /// its mix (each with that mix and its fold's experts), for a single-modality row the fold models of
    /// the experts (trained for it when no fused model needs them). The checkpoint carries the fold
    /// models, and a prediction costs `late_fusion_folds + 1` models. `false` (and configs without the
    /// field): each model alone.
    #[serde(default)]
    pub late_fusion_ensemble: bool,
    /// Adaptive fused models: weight of the router's balance penalty (`FusionConfig::router_balance`),
    /// which keeps the router from settling on one mode; 0 (and configs without the field): none.
    #[serde(default, skip_serializing_if = "crate::model::is_zero")]
    pub router_balance: f32,
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
    /// Which trials' windows the models train on (test windows are always speaking windows with audio).
    #[serde(default)]
    pub trials: Trials,
    /// Skip a subject whose files fail to load (recorded in [`crate::results::Results::skipped`]) instead of stopping.
    #[serde(default)]
    pub skip_bad_subjects: bool,
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
            audio_only: true,
            video_only: false,
            fused_sets: Vec::new(),
            train: TrainConfig::default(),
            dropout: 0.3,
            unimodal_loss: DEFAULT_UNIMODAL_LOSS,
            late_fusion_folds: DEFAULT_LATE_FUSION_FOLDS,
            late_fusion_experts: true,
            late_fusion_temperatures: true,
            late_fusion_bootstrap: DEFAULT_LATE_FUSION_BOOTSTRAP,
            late_fusion_choice: MixChoice::Even,
            late_fusion_ensemble: false,
            router_balance: 0.0,
            seed: 42,
            device: "cpu".into(),
            checkpoint_dir: None,
            cache_dir: None,
            state_dir: None,
            standardise: true,
            skip_bad_subjects: false,
            trials: Trials::Speaking,
        }
    }
}

impl ExperimentConfig {
    /// The modality sets of the fused models (EEG and audio when `fused_sets` is empty).
    #[must_use]
    pub fn fused_sets(&self) -> Vec<Vec<Modality>> {
        if self.fused_sets.is_empty() {
            vec![vec![Modality::Eeg, Modality::Audio]]
        } else {
            self.fused_sets.clone()
        }
    }

    /// Whether some model reads video.
    #[must_use]
    pub fn reads_video(&self) -> bool {
        self.video_only
            || (!self.fusion_modes.is_empty()
                && self.fused_sets().iter().any(|s| s.contains(&Modality::Video)))
    }
}

/// The fused sets a comparison of `modalities` trains: every subset of two or more that includes EEG (or
/// the whole set when it has no EEG), fewer modalities first, each in the order EEG, audio, video.
#[must_use]
pub fn fused_sets(modalities: &[Modality]) -> Vec<Vec<Modality>> {
    let mut set = modalities.to_vec();
    set.sort();
    set.dedup();
    let subsets = (1u32..1 << set.len()).map(|bits| {
        set.iter().enumerate().filter(|(i, _)| bits >> i & 1 == 1).map(|(_, m)| *m).collect::<Vec<_>>()
    });
    let mut fused: Vec<Vec<Modality>> = if set.contains(&Modality::Eeg) {
        subsets.filter(|s| s.len() >= 2 && s.contains(&Modality::Eeg)).collect()
    } else {
        subsets.filter(|s| s.len() >= 2 && s.len() == set.len()).collect()
    };
    fused.sort_by_key(|s| (s.len(), s.clone()));
    fused
}

/// The row name of a model over `modalities`: `eeg_only`, `video_only`, … for one, the names joined by `_`
/// (`eeg_audio`, `eeg_audio_video`) for a fused set.
#[must_use]
pub fn row_name(modalities: &[Modality]) -> String {
    match modalities {
        [m] => format!("{m}_only"),
        set => set.iter().map(|m| m.as_str()).collect::<Vec<_>>().join("_"),
    }
}

/// The default weight of the fused models' unimodal losses: the candidate that kept fused models closest
/// to their best single modality on the synthetic trees where one modality misleads or carries nothing
/// (measured in `docs/results.md`).
pub const DEFAULT_UNIMODAL_LOSS: f64 = 3.0;

/// The default folds of the fused models' output-mix choice ([`ExperimentConfig::late_fusion_folds`]).
pub const DEFAULT_LATE_FUSION_FOLDS: usize = 3;

/// The default bootstrap resamples of the output-mix choice ([`ExperimentConfig::late_fusion_bootstrap`]).
pub const DEFAULT_LATE_FUSION_BOOTSTRAP: usize = 0;

/// Which trials' windows a run trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trials {
    /// Speaking trials only (the design's protocol): every window has EEG and audio.
    #[default]
    Speaking,
    /// Every trial: listening windows (EEG, no audio) train the models too; fused models see them with
    /// audio absent (masked, no placeholder data). Tests stay on the speaking windows.
    All,
}

impl std::str::FromStr for Trials {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "speaking" => Ok(Self::Speaking),
            "all" => Ok(Self::All),
            other => Err(format!("unknown trial set `{other}`; expected speaking or all")),
        }
    }
}

impl std::fmt::Display for Trials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Speaking => "speaking",
            Self::All => "all",
        })
    }
}

/// How an output mix's weights are chosen on held-out predictions ([`crate::mix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixChoice {
    /// The weights with the lowest negative log-likelihood (with tempered outputs: the temperatures
    /// refined together with the weights). Fits the held-out windows best, and follows their noise:
    /// on a few dozen held-out trials the winner among near-equal mixes is partly chance.
    #[default]
    Best,
    /// Each output at the temperature that fits it alone (with tempered outputs), then, among the
    /// weights whose fit is within one standard error of the best (the paired per-trial difference of
    /// negative log-likelihoods, trials as clusters), the most even ones (highest entropy; ties: the
    /// better fit). Mixes the held-out windows cannot tell apart are not told apart; an output that
    /// is clearly worse still gets nothing.
    Even,
}

impl std::str::FromStr for MixChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "best" => Ok(Self::Best),
            "even" => Ok(Self::Even),
            other => Err(format!("unknown mix choice `{other}`; expected even or best")),
        }
    }
}

impl std::fmt::Display for MixChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Best => "best",
            Self::Even => "even",
        })
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
