//! [`EmotionModel`]: EEG-only or EEG+audio emotion classifier, with its own parameters and checkpoints.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use core_types::{FusionMode, Latent, Modality};
use encoders::{AudioEncoder, ClassifierConfig, EegEncoder, EmotionClassifier, EncoderConfig};
use fusion::{Fusion, FusionConfig, Inspection, ModalityInput};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The whole model: encoders, optional fusion, classifier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The EEG encoder (its `in_channels` come from the data: 30 on EAV, 28 in the reference).
    pub eeg: EncoderConfig,
    /// The audio encoder (used only when `fusion` is set).
    pub audio: EncoderConfig,
    /// The fusion layer; `None` is the EEG-only model (classifier directly on the EEG latent).
    pub fusion: Option<FusionConfig>,
    /// The classifier head.
    pub classifier: ClassifierConfig,
    /// EEG samples per second at the encoder's input (100 after the default decimation): the clock of
    /// the EEG sequence in the `temporal` mode.
    #[serde(default = "hundred")]
    pub eeg_rate: f64,
    /// MFCC frames per second (100: hop 160 at 16 kHz): the clock of the audio sequence.
    #[serde(default = "hundred")]
    pub audio_rate: f64,
}

fn hundred() -> f64 {
    100.0
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
            classifier: ClassifierConfig::default(),
            eeg_rate: hundred(),
            audio_rate: hundred(),
        }
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

    /// `eeg_only` or the fusion mode's name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.fusion.as_ref().map_or("eeg_only", |f| f.mode.as_str())
    }
}

/// Every intermediate of one forward pass.
#[derive(Debug, Clone)]
pub struct Intermediates {
    /// `(B, 128)`.
    pub eeg_latent: Tensor,
    /// `(B, 128)` (fused models).
    pub audio_latent: Option<Tensor>,
    /// `(B, 128)` (fused models).
    pub fused: Option<Tensor>,
    /// `(B, 5)`.
    pub logits: Tensor,
    /// A penalty to add to the training loss (the adaptive router's balance term, when configured).
    pub aux_loss: Option<Tensor>,
}

/// An emotion model that owns its parameters (a [`VarMap`] whose names are the PyTorch `state_dict` names).
pub struct EmotionModel {
    cfg: ModelConfig,
    varmap: VarMap,
    device: Device,
    eeg: EegEncoder,
    audio: Option<AudioEncoder>,
    fusion: Option<Fusion>,
    classifier: EmotionClassifier,
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
        let eeg = EegEncoder::new(&cfg.eeg, vb.pp("eeg_encoder"))?;
        let (audio, fusion) = match &cfg.fusion {
            Some(f) => (
                Some(AudioEncoder::new(&cfg.audio, vb.pp("audio_encoder"))?),
                Some(Fusion::new(f, vb.pp("fusion"))?),
            ),
            None => (None, None),
        };
        let classifier = EmotionClassifier::new(&cfg.classifier, vb.pp("classifier"))?;
        encoders::init_pytorch_default(&varmap, seed)?;
        Ok(Self { cfg: cfg.clone(), varmap, device: device.clone(), eeg, audio, fusion, classifier })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
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

    /// Runs the model and keeps every intermediate. `audio` is required by fused models and ignored by the
    /// EEG-only one. `train` uses batch statistics (updating the running ones) and dropout.
    ///
    /// # Errors
    /// [`Error::Input`] when a fused model gets no audio; shape errors for wrong inputs.
    pub fn forward_intermediates(
        &self,
        eeg: &Tensor,
        audio: Option<&Tensor>,
        train: bool,
    ) -> Result<Intermediates> {
        self.forward_present(eeg, audio, None, train)
    }

    /// [`EmotionModel::forward_intermediates`] with audio absent from some samples: `audio_present` `(B)`
    /// holds 1 where the sample has audio and 0 where it has none (a listening window). The audio encoder
    /// sees only the present samples (so their BatchNorm statistics are not diluted by placeholder rows),
    /// and the fusion layer masks the absent ones: their fused vector depends on the EEG alone, whatever
    /// `audio` holds in their rows. `None` means audio in every sample. The EEG-only model ignores both.
    ///
    /// # Errors
    /// As [`EmotionModel::forward_intermediates`]; [`Error::Input`] for a mask that is not `(B)` of 0 and 1.
    pub fn forward_present(
        &self,
        eeg: &Tensor,
        audio: Option<&Tensor>,
        audio_present: Option<&Tensor>,
        train: bool,
    ) -> Result<Intermediates> {
        let (eeg_latent, audio_latent, inspection) =
            self.encode_and_fuse(eeg, audio, audio_present, train)?;
        let aux_loss = inspection.as_ref().and_then(|i| i.aux_loss.clone());
        let fused = inspection.map(|i| i.fused);
        let logits = self.classifier.forward_t(fused.as_ref().unwrap_or(eeg_latent.tensor()), train)?;
        Ok(Intermediates {
            eeg_latent: eeg_latent.into_tensor(),
            audio_latent: audio_latent.map(Latent::into_tensor),
            fused,
            logits,
            aux_loss,
        })
    }

    /// What the fusion layer does with a batch in evaluation: the fused vector with gate values or
    /// attention maps (fused models; `None` for the EEG-only one).
    ///
    /// # Errors
    /// As [`EmotionModel::forward_intermediates`].
    pub fn inspect_fusion(&self, eeg: &Tensor, audio: Option<&Tensor>) -> Result<Option<Inspection>> {
        Ok(self.encode_and_fuse(eeg, audio, None, false)?.2)
    }

    /// The EEG latent, the audio latent and the fusion's output (fused models).
    fn encode_and_fuse(
        &self,
        eeg: &Tensor,
        audio: Option<&Tensor>,
        audio_present: Option<&Tensor>,
        train: bool,
    ) -> Result<(Latent, Option<Latent>, Option<Inspection>)> {
        // The temporal mode, and the adaptive one (whose experts include it), read the sequences.
        let temporal = self
            .fusion
            .as_ref()
            .is_some_and(|f| matches!(f.config().mode, FusionMode::Temporal | FusionMode::Adaptive));
        let (eeg_latent, eeg_sequence) = if temporal {
            let (s, l) = self.eeg.encode_sequence(eeg, self.cfg.eeg_rate, train)?;
            (l, Some(s))
        } else {
            (self.eeg.encode(eeg, train)?, None)
        };
        let (Some(enc), Some(fusion)) = (&self.audio, &self.fusion) else {
            return Ok((eeg_latent, None, None));
        };
        let audio =
            audio.ok_or_else(|| Error::Input(format!("the {} model needs audio input", self.cfg.name())))?;
        core_types::same_batch("MFCC input", eeg_latent.batch(), audio)?;
        if let Some(mask) = audio_present {
            let batch = eeg_latent.batch();
            let values: Vec<f32> = mask.to_dtype(candle_core::DType::F32)?.to_vec1().map_err(|_| {
                Error::Input(format!("audio presence mask is {:?}, expected [{batch}]", mask.dims()))
            })?;
            if values.len() != batch || values.iter().any(|v| *v != 0.0 && *v != 1.0) {
                return Err(Error::Input(format!(
                    "audio presence mask must hold {batch} values of 0 or 1, got {values:?}"
                )));
            }
            if values.contains(&0.0) {
                return self.fuse_partial(fusion, enc, (eeg_latent, eeg_sequence), audio, &values, train);
            }
        }
        let (a, inspection) = match eeg_sequence {
            Some(es) => {
                let (s, a) = enc.encode_sequence(audio, self.cfg.audio_rate, train)?;
                let set = [
                    ModalityInput::new(Modality::Eeg, eeg_latent.clone()).with_sequence(es),
                    ModalityInput::new(Modality::Audio, a.clone()).with_sequence(s),
                ];
                let inspection = fusion.fuse_set(&set, train)?;
                (a, inspection)
            }
            None => {
                let a = enc.encode(audio, train)?;
                let inspection = fusion.forward_inspect(&eeg_latent, &a, train)?;
                (a, inspection)
            }
        };
        Ok((eeg_latent, Some(a), Some(inspection)))
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
    /// Shape errors for a wrong input.
    pub fn encode_eeg(&self, eeg: &Tensor, train: bool) -> Result<Latent> {
        Ok(self.eeg.encode(eeg, train)?)
    }

    /// The fused model on a batch where audio is absent from the samples whose `present` value is 0: the
    /// audio encoder runs on the present rows only, and its outputs are placed back into a full batch (zero
    /// rows where absent) for the masked fusion.
    fn fuse_partial(
        &self,
        fusion: &Fusion,
        enc: &AudioEncoder,
        (eeg_latent, eeg_sequence): (Latent, Option<core_types::Sequence>),
        audio: &Tensor,
        present: &[f32],
        train: bool,
    ) -> Result<(Latent, Option<Latent>, Option<Inspection>)> {
        let batch = present.len();
        let d = fusion.config().latent_dim;
        let mask = Tensor::from_vec(present.to_vec(), batch, audio.device())?
            .to_dtype(eeg_latent.tensor().dtype())?;
        let mut eeg_input = ModalityInput::new(Modality::Eeg, eeg_latent.clone());
        if let Some(s) = eeg_sequence {
            eeg_input = eeg_input.with_sequence(s);
        }
        let rows: Vec<u32> = (0..batch as u32).filter(|&i| present[i as usize] == 1.0).collect();
        if rows.is_empty() {
            let inspection = fusion.fuse_set(&[eeg_input], train)?;
            return Ok((eeg_latent, None, Some(inspection)));
        }
        let idx = Tensor::from_vec(rows, present.iter().filter(|v| **v == 1.0).count(), audio.device())?;
        let sub = audio.index_select(&idx, 0)?;
        let zeros = |dims: &[usize]| Tensor::zeros(dims, eeg_latent.tensor().dtype(), audio.device());
        let (latent, sequence) = if eeg_input.sequence.is_some() {
            let (s, l) = enc.encode_sequence(&sub, self.cfg.audio_rate, train)?;
            let (steps, times) = (s.steps(), s.times().to_vec());
            let full = zeros(&[batch, steps, d])?.index_add(&idx, &s.tensor().contiguous()?, 0)?;
            (l, Some(core_types::Sequence::new(full, d, times)?))
        } else {
            (enc.encode(&sub, train)?, None)
        };
        let full_latent =
            Latent::new(zeros(&[batch, d])?.index_add(&idx, &latent.tensor().contiguous()?, 0)?, d)?;
        let mut audio_input = ModalityInput::new(Modality::Audio, full_latent.clone()).with_presence(mask);
        if let Some(s) = sequence {
            audio_input = audio_input.with_sequence(s);
        }
        let inspection = fusion.fuse_set(&[eeg_input, audio_input], train)?;
        Ok((eeg_latent, Some(full_latent), Some(inspection)))
    }

    /// Saves every tensor (running statistics included) as safetensors with the PyTorch `state_dict`
    /// names, atomically (a temporary file renamed into place).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> =
            self.named_tensors().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
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
        let own = self.named_tensors();
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
