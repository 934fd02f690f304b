//! [`EmotionClassifier`]: latent → emotion logits.

use candle_core::{ModuleT, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::dropout::Dropout;
use crate::error::Result;
use crate::linear::Linear;

/// Sizes of the classifier head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Input latent size (128).
    pub latent_dim: usize,
    /// Hidden units (64).
    pub hidden: usize,
    /// Output classes (5 emotions).
    pub classes: usize,
    /// Dropout probability between the two layers (0.3).
    pub dropout: f32,
    /// Seed of the dropout masks.
    pub seed: u64,
}

impl Default for ClassifierConfig {
    /// The reference head: 128 → 64 → 5 with dropout 0.3.
    fn default() -> Self {
        Self { latent_dim: 128, hidden: 64, classes: core_types::Emotion::COUNT, dropout: 0.3, seed: 0 }
    }
}

/// `Linear(128, 64) → ReLU → Dropout → Linear(64, 5)`; tensor names `net.0.*` and `net.3.*`.
#[derive(Debug, Clone)]
pub struct EmotionClassifier {
    fc1: Linear,
    dropout: Dropout,
    fc2: Linear,
}

impl EmotionClassifier {
    /// Builds the head under `vb`.
    ///
    /// # Errors
    /// A candle error from the var builder.
    pub fn new(cfg: &ClassifierConfig, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("net");
        Ok(Self {
            fc1: Linear::new(cfg.latent_dim, cfg.hidden, vb.pp("0"))?,
            dropout: Dropout::new(cfg.dropout, cfg.seed),
            fc2: Linear::new(cfg.hidden, cfg.classes, vb.pp("3"))?,
        })
    }

    /// The dropout layer (its generator state belongs in a checkpoint).
    #[must_use]
    pub fn dropout(&self) -> &Dropout {
        &self.dropout
    }
}

impl ModuleT for EmotionClassifier {
    fn forward_t(&self, z: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward_relu(z)?;
        self.fc2.forward(&self.dropout.forward_t(&h, train)?)
    }
}
