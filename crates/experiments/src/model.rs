//! [`EmotionModel`]: an emotion classifier over one modality (EEG, audio or video) or a fused set of them,
//! with its own parameters and checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use core_types::{FusionMode, Latent, Modality};
use encoders::{
    AudioEncoder, ClassifierConfig, EegEncoder, EmotionClassifier, EncoderConfig, VideoEncoder,
    VideoEncoderConfig,
};
use fusion::{Fusion, FusionConfig, Inspection, ModalityInput};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The whole model: encoders, optional fusion, classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The EEG encoder (its `in_channels` come from the data: 30 on EAV, 28 in the reference).
    pub eeg: EncoderConfig,
    /// The audio encoder (used by fused models and the audio-only one).
    pub audio: EncoderConfig,
    /// The fusion layer; `None` is a single-modality model (classifier directly on the latent of
    /// [`ModelConfig::single`]).
    pub fusion: Option<FusionConfig>,
    /// The modality of a model without fusion: EEG (the design's EEG-only model) or audio.
    #[serde(default = "eeg")]
    pub single: Modality,
    /// Fused models: weight of the unimodal auxiliary losses. Above 0, each modality gets its own linear
    /// head on its latent (`unimodal_heads.{modality}`), trained with cross-entropy on the samples that have
    /// the modality, added to the fused loss with this weight; predictions stay the fused head's. 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unimodal_loss: f64,
    /// The classifier head.
    pub classifier: ClassifierConfig,
    /// EEG samples per second at the encoder's input (100 after the default decimation): the clock of
    /// the EEG sequence in the `temporal` mode.
    #[serde(default = "hundred")]
    pub eeg_rate: f64,
    /// MFCC frames per second (100: hop 160 at 16 kHz): the clock of the audio sequence.
    #[serde(default = "hundred")]
    pub audio_rate: f64,
    /// The video encoder (models that read video; absent from the settings of the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoEncoderConfig>,
    /// Video frames per second at the encoder's input (5: every 6th frame at 30 fps): the clock of the
    /// video sequence.
    #[serde(default = "five", skip_serializing_if = "is_five")]
    pub video_rate: f64,
    /// Fused models with unimodal heads: in evaluation, the prediction mixes the fused classifier's and
    /// the heads' class probabilities with these weights (chosen on held-out windows, see
    /// [`crate::mix`]). `None`: the fused classifier alone (the design's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_mix: Option<OutputMix>,
    /// Cross-validation ensemble: the number of fold models the model carries under `members.{i}.`
    /// (models of this configuration with `ensemble` 0, each trained without one fold of the training
    /// trials: for a fused model, those whose out-of-fold predictions chose its output mix, each with
    /// that mix over its own outputs and its fold's experts). In evaluation the prediction is the mean of
    /// the class probabilities of the model and its members; training is the model's alone. 0 (and
    /// older files): the model alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ensemble: usize,
}

/// How a fused model with unimodal heads predicts in evaluation: a weighted mixture of class
/// probabilities, `p = (w_f·p_fused + Σ_o w_o·present_o·p_o) / (w_f + Σ_o w_o·present_o)` over the
/// outputs `o`: the unimodal head of each modality and each single-modality expert (a separately
/// trained single-modality model the fused model carries), `present_o` being the presence of the
/// output's modality in the sample. An output whose modality a sample lacks leaves the mixture; a sample
/// with no weighted output present gets the fused classifier's probabilities. Training is unchanged (the
/// fused loss plus the unimodal losses); experts are trained on their own and copied in
/// ([`EmotionModel::copy_expert`]). Each output's probabilities are `softmax(logits / T)` with its
/// temperature `T` from [`OutputMix::temperatures`] (1 where not listed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputMix {
    /// Weight of the fused classifier.
    pub fused: f64,
    /// Weight of each modality's unimodal head.
    pub heads: Vec<(Modality, f64)>,
    /// Single-modality experts with their weights (mixes without them, and older files: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub experts: Vec<MixExpert>,
    /// Temperature of each output's logits, by output name: `fused`, a head's modality (`video`), an
    /// expert's `{modality}_only`; fitted on the same held-out windows as the weights ([`crate::mix`]).
    /// Outputs not listed (and older files): 1, the probabilities as trained.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub temperatures: BTreeMap<String, f64>,
}

/// A single-modality model inside a fused model's [`OutputMix`]: trained on its own (the comparison's
/// `{modality}_only` model of the same split), stored in the fused model's checkpoint under
/// `experts.{modality}.`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixExpert {
    /// Its weight in the mixture.
    pub weight: f64,
    /// Its configuration (a model without fusion; its modality is `model.single`).
    pub model: ModelConfig,
}

impl MixExpert {
    /// The modality the expert reads.
    #[must_use]
    pub fn modality(&self) -> Modality {
        self.model.single
    }
}

impl OutputMix {
    /// The fused classifier alone.
    #[must_use]
    pub fn fused_only() -> Self {
        Self { fused: 1.0, heads: Vec::new(), experts: Vec::new(), temperatures: BTreeMap::new() }
    }

    /// The temperature of the output named `output` (`fused`, `eeg`, `eeg_only`, …; 1 when not listed).
    #[must_use]
    pub fn temperature(&self, output: &str) -> f64 {
        self.temperatures.get(output).copied().unwrap_or(1.0)
    }

    /// The weight of `modality`'s head (0 when not listed).
    #[must_use]
    pub fn head(&self, modality: Modality) -> f64 {
        self.heads.iter().find(|(m, _)| *m == modality).map_or(0.0, |(_, w)| *w)
    }

    /// The weight of `modality`'s single-modality expert (0 when not listed).
    #[must_use]
    pub fn expert(&self, modality: Modality) -> f64 {
        self.experts.iter().filter(|e| e.modality() == modality).map(|e| e.weight).sum()
    }

    /// `fused=0.20 eeg=0.50 audio=0.00 eeg_only=0.30` (heads by modality, experts as `{modality}_only`).
    #[must_use]
    pub fn describe(&self) -> String {
        let mut s = format!("fused={:.2}", self.fused);
        for (m, w) in &self.heads {
            s.push_str(&format!(" {m}={w:.2}"));
        }
        for e in &self.experts {
            s.push_str(&format!(" {}_only={:.2}", e.modality(), e.weight));
        }
        if !self.temperatures.is_empty() {
            let t: Vec<String> = self.temperatures.iter().map(|(o, t)| format!("{o}={t:.2}")).collect();
            s.push_str(&format!(" (temperatures {})", t.join(" ")));
        }
        s
    }

    /// Checks the weights against a model's modalities and heads.
    fn check(&self, modalities: &[Modality], has_heads: bool) -> Result<()> {
        let weights = std::iter::once(self.fused)
            .chain(self.heads.iter().map(|(_, w)| *w))
            .chain(self.experts.iter().map(|e| e.weight));
        if weights.clone().any(|w| !w.is_finite() || w < 0.0) || weights.sum::<f64>() <= 0.0 {
            return Err(Error::Input(format!(
                "output mix weights must be finite, non-negative and not all 0: {}",
                self.describe()
            )));
        }
        if let Some((m, _)) = self.heads.iter().find(|(m, w)| *w > 0.0 && !modalities.contains(m)) {
            return Err(Error::Input(format!("the output mix weights a {m} head the model does not have")));
        }
        if !has_heads && self.heads.iter().any(|(_, w)| *w > 0.0) {
            return Err(Error::Input(
                "the output mix weights unimodal heads, but the model has none (unimodal_loss 0)".into(),
            ));
        }
        for (i, e) in self.experts.iter().enumerate() {
            let m = e.modality();
            if e.model.fusion.is_some() || e.model.output_mix.is_some() {
                return Err(Error::Input(format!(
                    "output mix expert {i} ({m}) must be a single-modality model without an output mix"
                )));
            }
            if !modalities.contains(&m) {
                return Err(Error::Input(format!(
                    "the output mix has a {m} expert, but the model reads no {m}"
                )));
            }
            if self.experts[..i].iter().any(|x| x.modality() == m) {
                return Err(Error::Input(format!("the output mix has two {m} experts")));
            }
        }
        for (output, t) in &self.temperatures {
            let known = output == "fused"
                || modalities.iter().any(|m| *output == m.to_string())
                || self.experts.iter().any(|e| output == e.model.name());
            if !known || !t.is_finite() || *t <= 0.0 {
                return Err(Error::Input(format!(
                    "output mix temperature {output}={t}: temperatures must be finite and positive, for `fused`, a modality's head or an expert of the mix"
                )));
            }
        }
        Ok(())
    }

    /// The mixture's log-probabilities `(B, 5)` from the fused classifier's logits and the heads' and
    /// experts' logits with their presence.
    fn apply(
        &self,
        fused: &Tensor,
        heads: &[(Modality, Tensor, Option<Tensor>)],
        experts: &[(Modality, Tensor, Option<Tensor>)],
    ) -> Result<Tensor> {
        let softmax = |logits: &Tensor, output: &str| -> Result<Tensor> {
            let t = self.temperature(output);
            #[allow(clippy::float_cmp)] // 1 exactly: the logits as trained, bit for bit
            let logits = if t == 1.0 { logits.clone() } else { logits.affine(1.0 / t, 0.0)? };
            Ok(candle_nn::ops::softmax(&logits, candle_core::D::Minus1)?)
        };
        let p_fused = softmax(fused, "fused")?;
        let b = p_fused.dim(0)?;
        let mut num = p_fused.affine(self.fused, 0.0)?;
        let mut den = Tensor::full(self.fused as f32, (b, 1), fused.device())?.to_dtype(fused.dtype())?;
        let weighted = heads
            .iter()
            .map(|(m, l, p)| (self.head(*m), m.to_string(), l, p))
            .chain(experts.iter().map(|(m, l, p)| (self.expert(*m), format!("{m}_only"), l, p)));
        for (w, name, logits, present) in weighted {
            if w == 0.0 {
                continue;
            }
            let p = softmax(logits, &name)?;
            let mask = match present {
                Some(t) => t.to_dtype(p.dtype())?.reshape((b, 1))?.affine(w, 0.0)?,
                None => Tensor::full(w as f32, (b, 1), p.device())?.to_dtype(p.dtype())?,
            };
            num = (num + p.broadcast_mul(&mask)?)?;
            den = (den + mask)?;
        }
        // Where no weighted output is present, the fused classifier's probabilities (the tiny weight
        // changes nothing elsewhere beyond rounding).
        const FALLBACK: f64 = 1e-9;
        let p = (num + p_fused.affine(FALLBACK, 0.0)?)?.broadcast_div(&den.affine(1.0, FALLBACK)?)?;
        Ok(p.clamp(1e-30, 1.0)?.log()?)
    }
}

fn hundred() -> f64 {
    100.0
}

fn five() -> f64 {
    5.0
}

#[allow(clippy::trivially_copy_pass_by_ref, clippy::float_cmp)] // serde's skip_serializing_if
fn is_five(v: &f64) -> bool {
    *v == 5.0
}

fn eeg() -> Modality {
    Modality::Eeg
}

/// Sets each tensor of `to` to the value of the tensor at the same place in `from` (two models of one
/// configuration list the same names in the same order).
fn copy_tensors(to: &[(String, Var)], from: &[(String, Var)]) -> Result<()> {
    for ((_, to), (_, from)) in to.iter().zip(from) {
        to.set(from.as_tensor())?;
    }
    Ok(())
}

/// Whether a setting is 0, its default (serde's `skip_serializing_if` for settings that older files lack).
pub(crate) fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Which samples of a batch have each modality: `(B)` of 1 (present) and 0 (absent); `None` means every
/// sample has it.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    /// EEG presence.
    pub eeg: Option<Tensor>,
    /// Audio presence.
    pub audio: Option<Tensor>,
    /// Video presence.
    pub video: Option<Tensor>,
}

impl Presence {
    /// The mask of `modality`.
    #[must_use]
    pub fn get(&self, modality: Modality) -> Option<&Tensor> {
        match modality {
            Modality::Eeg => self.eeg.as_ref(),
            Modality::Audio => self.audio.as_ref(),
            Modality::Video => self.video.as_ref(),
        }
    }

    /// The mask of `modality`, to set.
    pub fn get_mut(&mut self, modality: Modality) -> &mut Option<Tensor> {
        match modality {
            Modality::Eeg => &mut self.eeg,
            Modality::Audio => &mut self.audio,
            Modality::Video => &mut self.video,
        }
    }
}

/// One batch's inputs: EEG `(B, C, T)`, MFCC `(B, 13, F)` and video `(B, frames, H, W)`, each where the
/// model reads it and some sample has it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// EEG windows (every batch carries them; their rows are ignored where EEG is absent).
    pub eeg: &'a Tensor,
    /// MFCC windows.
    pub audio: Option<&'a Tensor>,
    /// Video windows (luma, standardised).
    pub video: Option<&'a Tensor>,
}

impl<'a> Inputs<'a> {
    /// The input of `modality`.
    #[must_use]
    pub fn get(&self, modality: Modality) -> Option<&'a Tensor> {
        match modality {
            Modality::Eeg => Some(self.eeg),
            Modality::Audio => self.audio,
            Modality::Video => self.video,
        }
    }
}

/// The values of a presence mask, checked to be `(batch)` of 0 and 1.
fn mask_values(mask: Option<&Tensor>, batch: usize, what: &str) -> Result<Option<Vec<f32>>> {
    let Some(mask) = mask else { return Ok(None) };
    let values: Vec<f32> = mask.to_dtype(DType::F32)?.to_vec1().map_err(|_| {
        Error::Input(format!("{what} presence mask is {:?}, expected [{batch}]", mask.dims()))
    })?;
    if values.len() != batch || values.iter().any(|v| *v != 0.0 && *v != 1.0) {
        return Err(Error::Input(format!(
            "{what} presence mask must hold {batch} values of 0 or 1, got {values:?}"
        )));
    }
    Ok(Some(values))
}

impl Default for ModelConfig {
    /// The reference EEG+audio model with concat fusion over 28 EEG channels.
    fn default() -> Self {
        Self::fused(28, FusionMode::Concat)
    }
}

impl ModelConfig {
    /// The EEG-only reference model for `channels` electrodes.
    #[must_use]
    pub fn eeg_only(channels: usize) -> Self {
        Self {
            eeg: EncoderConfig::eeg(channels),
            audio: EncoderConfig::audio(),
            fusion: None,
            single: Modality::Eeg,
            unimodal_loss: 0.0,
            classifier: ClassifierConfig::default(),
            eeg_rate: hundred(),
            audio_rate: hundred(),
            video: None,
            video_rate: five(),
            output_mix: None,
            ensemble: 0,
        }
    }

    /// The video-only model: the default video encoder and the classifier on its latent.
    #[must_use]
    pub fn video_only(channels: usize) -> Self {
        Self {
            single: Modality::Video,
            video: Some(VideoEncoderConfig::default()),
            ..Self::eeg_only(channels)
        }
    }

    /// A fused model over `modalities` (in this order) with fusion `mode`; `[Eeg, Audio]` is
    /// [`ModelConfig::fused`].
    #[must_use]
    pub fn fused_over(channels: usize, mode: FusionMode, modalities: &[Modality]) -> Self {
        let mut cfg = Self::fused(channels, mode);
        if let Some(f) = &mut cfg.fusion {
            f.modalities = modalities.to_vec();
        }
        if modalities.contains(&Modality::Video) {
            cfg.video = Some(VideoEncoderConfig::default());
        }
        cfg
    }

    /// The audio-only model: the reference audio encoder and the classifier on its latent. `channels`
    /// only sizes the (unused) EEG encoder config, so that every model of a run shares one config shape.
    #[must_use]
    pub fn audio_only(channels: usize) -> Self {
        Self { single: Modality::Audio, ..Self::eeg_only(channels) }
    }

    /// The EEG+audio reference model with fusion `mode`.
    #[must_use]
    pub fn fused(channels: usize, mode: FusionMode) -> Self {
        Self { fusion: Some(FusionConfig { mode, ..FusionConfig::default() }), ..Self::eeg_only(channels) }
    }

    /// Sets every dropout probability (0 disables dropout, as the reference's gradient check does).
    #[must_use]
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.classifier.dropout = p;
        if let Some(f) = &mut self.fusion {
            f.dropout = p;
        }
        self
    }

    /// Sets the seed of every dropout mask generator.
    #[must_use]
    pub fn with_dropout_seed(mut self, seed: u64) -> Self {
        self.classifier.seed = seed;
        if let Some(f) = &mut self.fusion {
            f.seed = seed;
        }
        self
    }

    /// `eeg_only`, `audio_only`, `video_only` or the fusion mode's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match (&self.fusion, self.single) {
            (Some(f), _) => f.mode.as_str(),
            (None, Modality::Audio) => "audio_only",
            (None, Modality::Video) => "video_only",
            (None, Modality::Eeg) => "eeg_only",
        }
    }

    /// The modalities the model reads (a fused model's in fusion order).
    #[must_use]
    pub fn modalities(&self) -> Vec<Modality> {
        match (&self.fusion, self.single) {
            (Some(f), _) => f.modalities.clone(),
            (None, m) => vec![m],
        }
    }

    /// The latent size of `modality`'s encoder.
    fn latent_dim(&self, modality: Modality) -> usize {
        match modality {
            Modality::Eeg => self.eeg.latent_dim(),
            Modality::Audio => self.audio.latent_dim(),
            Modality::Video => {
                self.video.as_ref().map_or(encoders::LATENT_DIM, VideoEncoderConfig::latent_dim)
            }
        }
    }
}

/// Every intermediate of one forward pass.
#[derive(Debug, Clone)]
pub struct Intermediates {
    /// `(B, 128)` (models that read EEG, when some sample has it).
    pub eeg_latent: Option<Tensor>,
    /// `(B, 128)` (models that read audio, when some sample has it).
    pub audio_latent: Option<Tensor>,
    /// `(B, 128)` (models that read video, when some sample has it).
    pub video_latent: Option<Tensor>,
    /// `(B, 128)` (fused models).
    pub fused: Option<Tensor>,
    /// `(B, 5)`: the model's prediction (in evaluation with an [`OutputMix`], the mixture's
    /// log-probabilities).
    pub logits: Tensor,
    /// `(B, 5)`: the classifier's logits (equal to `logits` unless an output mix applies).
    pub classifier_logits: Tensor,
    /// A penalty to add to the training loss (the adaptive router's balance term, when configured).
    pub aux_loss: Option<Tensor>,
    /// The unimodal heads' logits `(B, 5)` with the modality's presence `(B)` (`None`: every sample), for
    /// the unimodal losses (fused models with `unimodal_loss` > 0).
    pub unimodal_logits: Vec<(Modality, Tensor, Option<Tensor>)>,
    /// In evaluation, the logits `(B, 5)` of the output mix's single-modality experts with their
    /// modality's presence, for the experts whose modality some sample has.
    pub expert_logits: Vec<(Modality, Tensor, Option<Tensor>)>,
}

/// The latent of each encoded modality, in fusion order.
type Latents = Vec<(Modality, Latent)>;

/// An emotion model that owns its parameters (a [`VarMap`] whose names are the PyTorch `state_dict` names).
pub struct EmotionModel {
    cfg: ModelConfig,
    varmap: VarMap,
    device: Device,
    eeg: Option<EegEncoder>,
    audio: Option<AudioEncoder>,
    video: Option<VideoEncoder>,
    fusion: Option<Fusion>,
    classifier: EmotionClassifier,
    heads: Vec<(Modality, candle_nn::Linear)>,
    /// The output mix's single-modality experts (their own parameters, outside `varmap`: training the
    /// fused model leaves them alone).
    experts: Vec<(Modality, EmotionModel)>,
    /// The cross-validation ensemble's fold models ([`OutputMix::members`]; their own parameters).
    members: Vec<EmotionModel>,
}

impl std::fmt::Debug for EmotionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmotionModel").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Whether a tensor name is a BatchNorm running statistic (state, not a trained parameter).
#[must_use]
pub fn is_running_stat(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

impl EmotionModel {
    /// Builds the model in f32 on `device` and initialises it with PyTorch's default schemes from `seed`.
    ///
    /// # Errors
    /// Invalid configs; candle errors.
    pub fn new(cfg: &ModelConfig, device: &Device, seed: u64) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let modalities = cfg.modalities();
        let eeg = if modalities.contains(&Modality::Eeg) {
            Some(EegEncoder::new(&cfg.eeg, vb.pp("eeg_encoder"))?)
        } else {
            None
        };
        let audio = if modalities.contains(&Modality::Audio) {
            Some(AudioEncoder::new(&cfg.audio, vb.pp("audio_encoder"))?)
        } else {
            None
        };
        let video = if modalities.contains(&Modality::Video) {
            let vcfg = cfg.video.clone().unwrap_or_default();
            Some(VideoEncoder::new(&vcfg, vb.pp("video_encoder"))?)
        } else {
            None
        };
        let fusion = cfg.fusion.as_ref().map(|f| Fusion::new(f, vb.pp("fusion"))).transpose()?;
        let classifier = EmotionClassifier::new(&cfg.classifier, vb.pp("classifier"))?;
        // Named to sort after the classifier, EEG, audio and fusion tensors, so that they leave those
        // tensors' initialisation unchanged (`video_encoder` sorts after them: video models differ).
        let heads = if cfg.fusion.is_some() && cfg.unimodal_loss > 0.0 {
            modalities
                .iter()
                .map(|&m| {
                    let vb = vb.pp("unimodal_heads").pp(m.as_str());
                    Ok((m, candle_nn::linear(cfg.latent_dim(m), core_types::Emotion::COUNT, vb)?))
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        encoders::init_pytorch_default(&varmap, seed)?;
        let experts = match &cfg.output_mix {
            Some(mix) => {
                mix.check(&modalities, !heads.is_empty())?;
                Self::build_experts(mix, device, seed)?
            }
            None => Vec::new(),
        };
        let members = Self::build_members(cfg, device, seed)?;
        Ok(Self {
            cfg: cfg.clone(),
            varmap,
            device: device.clone(),
            eeg,
            audio,
            video,
            fusion,
            classifier,
            heads,
            experts,
            members,
        })
    }

    /// The (untrained) fold models of `cfg`'s cross-validation ensemble: `cfg` with an output mix
    /// without members.
    fn build_members(cfg: &ModelConfig, device: &Device, seed: u64) -> Result<Vec<EmotionModel>> {
        let member_cfg = ModelConfig { ensemble: 0, ..cfg.clone() };
        (0..cfg.ensemble).map(|_| EmotionModel::new(&member_cfg, device, seed)).collect()
    }

    /// The cross-validation ensemble of `model` and `members` (trained models of `model`'s
    /// configuration, which has no ensemble of its own): a model of that configuration with
    /// [`ModelConfig::ensemble`] set, holding copies of every tensor.
    ///
    /// # Errors
    /// [`Error::Input`] for a model that is an ensemble already or a member of another configuration.
    pub fn ensemble_of(model: &EmotionModel, members: &[&EmotionModel]) -> Result<EmotionModel> {
        if model.cfg.ensemble > 0 {
            return Err(Error::Input(format!("the {} model is an ensemble already", model.cfg.name())));
        }
        let cfg = ModelConfig { ensemble: members.len(), ..model.cfg.clone() };
        let out = EmotionModel::new(&cfg, &model.device, 0)?;
        copy_tensors(&out.stored_tensors(), &model.stored_tensors())?;
        for (i, member) in members.iter().enumerate() {
            out.copy_member(i, member)?;
        }
        Ok(out)
    }

    /// The (untrained) expert models of `mix`.
    fn build_experts(mix: &OutputMix, device: &Device, seed: u64) -> Result<Vec<(Modality, EmotionModel)>> {
        mix.experts.iter().map(|e| Ok((e.modality(), EmotionModel::new(&e.model, device, seed)?))).collect()
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Sets (or with `None` removes) the output mix of evaluation. The mix's experts start untrained:
    /// give each its trained model with [`EmotionModel::copy_expert`].
    ///
    /// # Errors
    /// [`Error::Input`] for weights that are negative, all 0, or on heads the model lacks.
    pub fn set_output_mix(&mut self, mix: Option<OutputMix>) -> Result<()> {
        let experts = match &mix {
            Some(m) => {
                m.check(&self.cfg.modalities(), !self.heads.is_empty())?;
                Self::build_experts(m, &self.device, 0)?
            }
            None => Vec::new(),
        };
        self.cfg.output_mix = mix;
        self.experts = experts;
        self.members = Self::build_members(&self.cfg, &self.device, 0)?;
        Ok(())
    }

    /// Copies every tensor of `trained` (a fold model of this model's configuration without the
    /// ensemble; with its output mix's experts) into member `i` of the cross-validation ensemble.
    ///
    /// # Errors
    /// [`Error::Input`] when there is no member `i` or `trained`'s configuration differs.
    pub fn copy_member(&self, i: usize, trained: &EmotionModel) -> Result<()> {
        let Some(member) = self.members.get(i) else {
            return Err(Error::Input(format!("the {} model has no ensemble member {i}", self.cfg.name())));
        };
        if member.cfg != trained.cfg {
            return Err(Error::Input(format!(
                "ensemble member {i} of the {} model: the given model's configuration differs",
                self.cfg.name()
            )));
        }
        copy_tensors(&member.stored_tensors(), &trained.stored_tensors())
    }

    /// Copies the tensors of `trained` (a single-modality model) into the output mix's expert of the
    /// same configuration. Training the fused model does not touch its experts, so this may come before
    /// or after that training.
    ///
    /// # Errors
    /// [`Error::Input`] when the mix has no expert with `trained`'s configuration.
    pub fn copy_expert(&self, trained: &EmotionModel) -> Result<()> {
        let m = trained.cfg.single;
        let Some((_, expert)) =
            self.experts.iter().find(|(x, e)| *x == m && e.cfg == trained.cfg && trained.fusion.is_none())
        else {
            return Err(Error::Input(format!(
                "the {} model's output mix has no {m} expert with the given model's configuration",
                self.cfg.name()
            )));
        };
        copy_tensors(&expert.named_tensors(), &trained.named_tensors())
    }

    /// The single-modality experts of the output mix.
    #[must_use]
    pub fn experts(&self) -> Vec<(Modality, &EmotionModel)> {
        self.experts.iter().map(|(m, e)| (*m, e)).collect()
    }

    /// The device the parameters live on.
    #[must_use]
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every dropout layer (their generators' positions belong in a training state).
    #[must_use]
    pub fn dropouts(&self) -> Vec<&encoders::Dropout> {
        let mut d = vec![self.classifier.dropout()];
        if let Some(f) = &self.fusion {
            d.push(f.dropout());
        }
        d
    }

    /// The fusion layer, for inspection (fused models).
    #[must_use]
    pub fn fusion(&self) -> Option<&Fusion> {
        self.fusion.as_ref()
    }

    /// Every tensor by name, running statistics included, sorted by name.
    #[must_use]
    pub fn named_tensors(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The trained parameters (everything but BatchNorm running statistics), sorted by name.
    #[must_use]
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.named_tensors().into_iter().filter(|(n, _)| !is_running_stat(n)).collect()
    }

    /// Number of trained scalars (PyTorch's `sum(p.numel() for p in model.parameters())`).
    #[must_use]
    pub fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Runs the model and keeps every intermediate. `audio` is required by models that read audio and
    /// ignored by the EEG-only one; `eeg` is ignored by the audio-only one. `train` uses batch statistics
    /// (updating the running ones) and dropout.
    ///
    /// # Errors
    /// [`Error::Input`] when a model that reads audio gets none; shape errors for wrong inputs.
    pub fn forward_intermediates(
        &self,
        eeg: &Tensor,
        audio: Option<&Tensor>,
        train: bool,
    ) -> Result<Intermediates> {
        self.forward_present(eeg, audio, &Presence::default(), train)
    }

    /// [`EmotionModel::forward_intermediates`] with modalities absent from some samples (`presence`): an
    /// encoder sees only the samples that have its modality (so BatchNorm statistics are not diluted by
    /// placeholder rows), and the fusion layer masks the absent ones: a sample's fused vector depends only
    /// on the modalities it has, whatever the absent ones' rows hold. `audio` may be `None` when
    /// `presence.audio` marks every sample absent. A single-modality model reads its modality in every
    /// sample and ignores `presence`.
    ///
    /// # Errors
    /// As [`EmotionModel::forward_intermediates`]; [`Error::Input`] for a mask that is not `(B)` of 0 and 1,
    /// or a sample with no modality present.
    pub fn forward_present(
        &self,
        eeg: &Tensor,
        audio: Option<&Tensor>,
        presence: &Presence,
        train: bool,
    ) -> Result<Intermediates> {
        self.forward_inputs(Inputs { eeg, audio, video: None }, presence, train)
    }

    /// [`EmotionModel::forward_present`] with every modality's input, video included.
    ///
    /// # Errors
    /// As [`EmotionModel::forward_present`]; [`Error::Input`] when a modality the model reads is missing
    /// although some sample has it.
    pub fn forward_inputs(
        &self,
        inputs: Inputs<'_>,
        presence: &Presence,
        train: bool,
    ) -> Result<Intermediates> {
        let (latents, inspection) = self.encode_and_fuse(inputs, presence, train)?;
        let aux_loss = inspection.as_ref().and_then(|i| i.aux_loss.clone());
        let fused = inspection.map(|i| i.fused);
        let latent = |m: Modality| latents.iter().find(|(x, _)| *x == m).map(|(_, l)| l.tensor().clone());
        let head_input = match (&fused, latents.first()) {
            (Some(f), _) => f.clone(),
            (None, Some((_, l))) => l.tensor().clone(),
            (None, None) => return Err(Error::Input("the model encoded no modality".into())),
        };
        let logits = self.classifier.forward_t(&head_input, train)?;
        let mut unimodal_logits = Vec::new();
        for (m, head) in &self.heads {
            if let Some(l) = latent(*m) {
                unimodal_logits.push((
                    *m,
                    candle_core::Module::forward(head, &l)?,
                    presence.get(*m).cloned(),
                ));
            }
        }
        let mut expert_logits = Vec::new();
        if !train {
            for (m, expert) in &self.experts {
                let present = presence.get(*m);
                let some = match present {
                    Some(p) => p.to_dtype(DType::F32)?.to_vec1::<f32>()?.contains(&1.0),
                    None => true,
                };
                if let (true, Some(_)) = (some, inputs.get(*m)) {
                    let logits = expert.forward_inputs(inputs, &Presence::default(), false)?.logits;
                    expert_logits.push((*m, logits, present.cloned()));
                }
            }
        }
        let classifier_logits = logits.clone();
        let logits = match &self.cfg.output_mix {
            Some(mix) if !train && fused.is_some() => mix.apply(&logits, &unimodal_logits, &expert_logits)?,
            _ => logits,
        };
        let logits = if train || self.members.is_empty() {
            logits
        } else {
            // The mean of this model's and the members' class probabilities.
            let softmax = |l: &Tensor| candle_nn::ops::softmax(l, candle_core::D::Minus1);
            let mut p = softmax(&logits)?;
            for member in &self.members {
                p = (p + softmax(&member.forward_inputs(inputs, presence, false)?.logits)?)?;
            }
            p.affine(1.0 / (self.members.len() + 1) as f64, 0.0)?.clamp(1e-30, 1.0)?.log()?
        };
        Ok(Intermediates {
            eeg_latent: latent(Modality::Eeg),
            audio_latent: latent(Modality::Audio),
            video_latent: latent(Modality::Video),
            fused,
            logits,
            classifier_logits,
            aux_loss,
            unimodal_logits,
            expert_logits,
        })
    }

    /// What the fusion layer does with a batch in evaluation: the fused vector with gate values or
    /// attention maps (fused models; `None` for single-modality ones).
    ///
    /// # Errors
    /// As [`EmotionModel::forward_present`].
    pub fn inspect_fusion(
        &self,
        eeg: &Tensor,
        audio: Option<&Tensor>,
        presence: &Presence,
    ) -> Result<Option<Inspection>> {
        self.inspect_inputs(Inputs { eeg, audio, video: None }, presence)
    }

    /// [`EmotionModel::inspect_fusion`] with every modality's input.
    ///
    /// # Errors
    /// As [`EmotionModel::forward_inputs`].
    pub fn inspect_inputs(&self, inputs: Inputs<'_>, presence: &Presence) -> Result<Option<Inspection>> {
        Ok(self.encode_and_fuse(inputs, presence, false)?.1)
    }

    /// The modalities the model reads, in fusion order.
    #[must_use]
    pub fn modalities(&self) -> Vec<Modality> {
        self.cfg.modalities()
    }

    /// Encodes `x` with the encoder of `modality`: the pooled latent and, with `sequence`, the sequence.
    fn encode_with(
        &self,
        modality: Modality,
        x: &Tensor,
        sequence: bool,
        train: bool,
    ) -> Result<(Latent, Option<core_types::Sequence>)> {
        let missing = || Error::Input(format!("the {} model has no {modality} encoder", self.cfg.name()));
        Ok(match (modality, sequence) {
            (Modality::Eeg, false) => (self.eeg.as_ref().ok_or_else(missing)?.encode(x, train)?, None),
            (Modality::Eeg, true) => {
                let (s, l) =
                    self.eeg.as_ref().ok_or_else(missing)?.encode_sequence(x, self.cfg.eeg_rate, train)?;
                (l, Some(s))
            }
            (Modality::Audio, false) => (self.audio.as_ref().ok_or_else(missing)?.encode(x, train)?, None),
            (Modality::Audio, true) => {
                let (s, l) = self.audio.as_ref().ok_or_else(missing)?.encode_sequence(
                    x,
                    self.cfg.audio_rate,
                    train,
                )?;
                (l, Some(s))
            }
            (Modality::Video, false) => (self.video.as_ref().ok_or_else(missing)?.encode(x, train)?, None),
            (Modality::Video, true) => {
                let (s, l) = self.video.as_ref().ok_or_else(missing)?.encode_sequence(
                    x,
                    self.cfg.video_rate,
                    train,
                )?;
                (l, Some(s))
            }
        })
    }

    /// The fusion input of `modality` for the samples marked present in `mask` (every sample when `None`):
    /// the encoder runs on the present rows only, and its outputs are placed back into a full batch (zero
    /// rows where absent) with the presence mask. `None` when no sample has the modality.
    fn encode_present(
        &self,
        modality: Modality,
        x: &Tensor,
        mask: Option<&[f32]>,
        sequence: bool,
        train: bool,
    ) -> Result<Option<ModalityInput>> {
        let with = |input: ModalityInput, s: Option<core_types::Sequence>| match s {
            Some(s) => input.with_sequence(s),
            None => input,
        };
        let Some(mask) = mask.filter(|m| m.contains(&0.0)) else {
            let (l, s) = self.encode_with(modality, x, sequence, train)?;
            return Ok(Some(with(ModalityInput::new(modality, l), s)));
        };
        let rows: Vec<u32> = (0..mask.len() as u32).filter(|&i| mask[i as usize] == 1.0).collect();
        if rows.is_empty() {
            return Ok(None);
        }
        let batch = mask.len();
        let n = rows.len();
        let dev = x.device();
        let idx = Tensor::from_vec(rows, n, dev)?;
        let (latent, sequence) = self.encode_with(modality, &x.index_select(&idx, 0)?, sequence, train)?;
        let d = latent.dim();
        let dtype = latent.tensor().dtype();
        let zeros = |dims: &[usize]| Tensor::zeros(dims, dtype, dev);
        let full = Latent::new(zeros(&[batch, d])?.index_add(&idx, &latent.tensor().contiguous()?, 0)?, d)?;
        let sequence = sequence
            .map(|s| -> Result<core_types::Sequence> {
                let (steps, times) = (s.steps(), s.times().to_vec());
                let t = zeros(&[batch, steps, d])?.index_add(&idx, &s.tensor().contiguous()?, 0)?;
                Ok(core_types::Sequence::new(t, d, times)?)
            })
            .transpose()?;
        let present = Tensor::from_vec(mask.to_vec(), batch, dev)?.to_dtype(dtype)?;
        Ok(Some(with(ModalityInput::new(modality, full).with_presence(present), sequence)))
    }

    /// The latent of every modality the model reads and some sample has, in fusion order, and the fusion's
    /// output (fused models).
    fn encode_and_fuse(
        &self,
        inputs: Inputs<'_>,
        presence: &Presence,
        train: bool,
    ) -> Result<(Latents, Option<Inspection>)> {
        let need = |m: Modality| Error::Input(format!("the {} model needs {m} input", self.cfg.name()));
        let Some(fusion) = &self.fusion else {
            let m = self.cfg.single;
            let x = inputs.get(m).ok_or_else(|| need(m))?;
            return Ok((vec![(m, self.encode_with(m, x, false, train)?.0)], None));
        };
        let batch = inputs.eeg.dim(0)?;
        let modalities = fusion.config().modalities.clone();
        let masks = modalities
            .iter()
            .map(|&m| {
                let what = if m == Modality::Eeg { "EEG" } else { m.as_str() };
                mask_values(presence.get(m), batch, what)
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(i) = (0..batch).find(|&i| masks.iter().all(|m| m.as_ref().is_some_and(|v| v[i] == 0.0))) {
            return Err(Error::Input(format!("sample {i} of the batch has no modality present")));
        }
        // The temporal mode, and the adaptive one (whose experts include it), read the sequences.
        let sequence = matches!(fusion.config().mode, FusionMode::Temporal | FusionMode::Adaptive);
        let every = |m: &Option<Vec<f32>>| m.as_ref().is_none_or(|m| !m.contains(&0.0));
        if !sequence && modalities == [Modality::Eeg, Modality::Audio] && masks.iter().all(every) {
            // Every sample has both: the two-modality path (the reference's numbers).
            let e = self.encode_with(Modality::Eeg, inputs.eeg, false, train)?.0;
            let audio = inputs.audio.ok_or_else(|| need(Modality::Audio))?;
            core_types::same_batch("MFCC input", batch, audio)?;
            let a = self.encode_with(Modality::Audio, audio, false, train)?.0;
            let inspection = fusion.forward_inspect(&e, &a, train)?;
            return Ok((vec![(Modality::Eeg, e), (Modality::Audio, a)], Some(inspection)));
        }
        let mut set = Vec::with_capacity(modalities.len());
        for (&m, mask) in modalities.iter().zip(&masks) {
            let absent = mask.as_ref().is_some_and(|v| !v.contains(&1.0));
            let x = match inputs.get(m) {
                Some(x) => {
                    let what = match m {
                        Modality::Eeg => "EEG input",
                        Modality::Audio => "MFCC input",
                        Modality::Video => "video input",
                    };
                    core_types::same_batch(what, batch, x)?;
                    x
                }
                None if absent => continue,
                None => return Err(need(m)),
            };
            set.extend(self.encode_present(m, x, mask.as_deref(), sequence, train)?);
        }
        let latents = set.iter().map(|i| (i.modality, i.latent.clone())).collect();
        let inspection = fusion.fuse_set(&set, train)?;
        Ok((latents, Some(inspection)))
    }

    /// Logits `(B, 5)`.
    ///
    /// # Errors
    /// As [`EmotionModel::forward_intermediates`].
    pub fn forward(&self, eeg: &Tensor, audio: Option<&Tensor>, train: bool) -> Result<Tensor> {
        Ok(self.forward_intermediates(eeg, audio, train)?.logits)
    }

    /// The EEG latent alone, `(B, 128)`.
    ///
    /// # Errors
    /// [`Error::Input`] for a model without an EEG encoder; shape errors for a wrong input.
    pub fn encode_eeg(&self, eeg: &Tensor, train: bool) -> Result<Latent> {
        Ok(self.encode_with(Modality::Eeg, eeg, false, train)?.0)
    }

    /// Every tensor a checkpoint holds: [`EmotionModel::named_tensors`], each expert's under
    /// `experts.{modality}.` and each ensemble member's (with its experts) under `members.{i}.`.
    fn stored_tensors(&self) -> Vec<(String, Var)> {
        let mut v = self.named_tensors();
        for (m, e) in &self.experts {
            v.extend(e.named_tensors().into_iter().map(|(n, t)| (format!("experts.{m}.{n}"), t)));
        }
        for (i, member) in self.members.iter().enumerate() {
            v.extend(member.stored_tensors().into_iter().map(|(n, t)| (format!("members.{i}.{n}"), t)));
        }
        v
    }

    /// Saves every tensor (running statistics and the output mix's experts included) as safetensors with the PyTorch `state_dict`
    /// names, atomically (a temporary file renamed into place).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> =
            self.stored_tensors().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&tensors, &tmp)
            .map_err(|e| Error::Io { path: tmp.clone(), source: std::io::Error::other(e.to_string()) })?;
        std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.into(), source })
    }

    /// Loads every tensor from a safetensors file written by [`EmotionModel::save`] or by PyTorch
    /// (`num_batches_tracked` buffers are ignored). Nothing is changed unless every tensor fits.
    ///
    /// # Errors
    /// [`Error::CheckpointMismatch`] listing the missing, unexpected and mis-shaped tensors;
    /// [`Error::Checkpoint`] for an unreadable file.
    pub fn load(&self, path: &Path) -> Result<()> {
        if !path.is_file() {
            return Err(Error::Io { path: path.into(), source: std::io::ErrorKind::NotFound.into() });
        }
        let file = candle_core::safetensors::load(path, &self.device)
            .map_err(|source| Error::Checkpoint { path: path.into(), source })?;
        let own = self.stored_tensors();
        let mut missing = Vec::new();
        let mut misshaped = Vec::new();
        for (name, var) in &own {
            match file.get(name) {
                None => missing.push(name.clone()),
                Some(t) if t.dims() != var.dims() => {
                    misshaped.push(format!("{name}: file {:?} vs model {:?}", t.dims(), var.dims()));
                }
                Some(_) => {}
            }
        }
        let mut unexpected: Vec<String> = file
            .keys()
            .filter(|k| !k.ends_with("num_batches_tracked") && !own.iter().any(|(n, _)| n == *k))
            .cloned()
            .collect();
        unexpected.sort();
        if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty()) {
            return Err(Error::CheckpointMismatch { path: path.into(), missing, unexpected, misshaped });
        }
        for (name, var) in &own {
            var.set(&file[name].to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}
