//! [`Fusion`]: combines an EEG and an audio latent into one.

use candle_core::{D, Module, ModuleT, Tensor};
use candle_nn::{Linear, VarBuilder};
use core_types::{FusionMode, Latent, same_batch};
use encoders::Dropout;
use serde::{Deserialize, Serialize};

use crate::attention::MultiHeadAttention;
use crate::error::{Error, Result};

/// Settings of the fusion layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionConfig {
    /// How the latents are combined.
    pub mode: FusionMode,
    /// Size of each latent and of the output (128).
    pub latent_dim: usize,
    /// Dropout after the output projection (0.3).
    pub dropout: f32,
    /// Tokens each latent is cut into for cross-attention (8 tokens of 16).
    pub tokens: usize,
    /// Attention heads (4).
    pub heads: usize,
    /// Seed of the dropout masks.
    pub seed: u64,
}

impl Default for FusionConfig {
    /// The reference: concat, 128-d, dropout 0.3, 8 tokens × 16 dims, 4 heads.
    fn default() -> Self {
        Self { mode: FusionMode::Concat, latent_dim: 128, dropout: 0.3, tokens: 8, heads: 4, seed: 0 }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Concat { proj: Linear },
    Gated { gate_fc: Linear, proj_fc: Linear },
    CrossAttention { e2a: MultiHeadAttention, a2e: MultiHeadAttention, blend_logits: Tensor, proj: Linear },
}

/// The fusion layer: `e = eeg ⊙ eeg_scale`, `a = audio ⊙ audio_scale`, then the mode:
/// - concat: `Dropout(ReLU(Linear(2D → D)([e, a])))`;
/// - gated: `c = [e, a]`, `g = σ(Linear(2D → 2D)(c))`, `Dropout(ReLU(Linear(2D → D)(c ⊙ g)))`;
/// - cross_attention: `e`, `a` as `tokens` tokens; `e' = e + MHA(e → a)`, `a' = a + MHA(a → e)`;
///   `w = softmax(blend_logits)`; `Dropout(ReLU(Linear(D → D)(w₀·e' + w₁·a')))`.
///
/// Tensor names: `eeg_scale`, `audio_scale`; `proj.*` (concat, cross_attention), `gate_fc.*`, `proj_fc.*`
/// (gated), `attn_e2a.*`, `attn_a2e.*`, `blend_logits` (cross_attention).
///
/// # Shapes
/// `(B, D)` + `(B, D)` → `(B, D)`.
#[derive(Debug, Clone)]
pub struct Fusion {
    cfg: FusionConfig,
    eeg_scale: Tensor,
    audio_scale: Tensor,
    dropout: Dropout,
    kind: Kind,
}

/// What [`Fusion::forward_inspect`] exposes besides the output.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The fused latent `(B, D)`.
    pub fused: Tensor,
    /// Gate values in [0, 1], `(B, 2D)` (gated mode).
    pub gates: Option<Tensor>,
    /// Attention weights EEG → audio and audio → EEG, `(B, heads, tokens, tokens)` each (cross_attention).
    pub attention: Option<(Tensor, Tensor)>,
}

fn sigmoid(x: &Tensor) -> candle_core::Result<Tensor> {
    // 1 / (1 + e^(−x)) from elementary ops, which all record gradients.
    (x.neg()?.exp()? + 1.0)?.recip()
}

impl Fusion {
    /// Builds the layer for `cfg.mode` under `vb`.
    ///
    /// # Errors
    /// [`Error::Config`] when `latent_dim` is not divisible into `tokens` tokens of a size divisible by
    /// `heads`; candle errors from the var builder.
    pub fn new(cfg: &FusionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.latent_dim;
        let ones = candle_nn::Init::Const(1.0);
        let eeg_scale = vb.get_with_hints(d, "eeg_scale", ones)?;
        let audio_scale = vb.get_with_hints(d, "audio_scale", ones)?;
        let kind = match cfg.mode {
            FusionMode::Concat => Kind::Concat { proj: candle_nn::linear(2 * d, d, vb.pp("proj"))? },
            FusionMode::Gated => Kind::Gated {
                gate_fc: candle_nn::linear(2 * d, 2 * d, vb.pp("gate_fc"))?,
                proj_fc: candle_nn::linear(2 * d, d, vb.pp("proj_fc"))?,
            },
            FusionMode::CrossAttention => {
                let fits = cfg.tokens > 0 && d % cfg.tokens == 0 && cfg.heads > 0 && (d / cfg.tokens) % cfg.heads == 0;
                if !fits {
                    return Err(Error::Config(format!(
                        "latent_dim {d} must split into {} tokens whose size is divisible by {} heads",
                        cfg.tokens, cfg.heads
                    )));
                }
                let token_dim = d / cfg.tokens;
                Kind::CrossAttention {
                    e2a: MultiHeadAttention::new(token_dim, cfg.heads, vb.pp("attn_e2a"))?,
                    a2e: MultiHeadAttention::new(token_dim, cfg.heads, vb.pp("attn_a2e"))?,
                    blend_logits: vb.get_with_hints(2, "blend_logits", candle_nn::Init::Const(0.0))?,
                    proj: candle_nn::linear(d, d, vb.pp("proj"))?,
                }
            }
        };
        let dropout = Dropout::new(cfg.dropout, cfg.seed ^ 0xF0_5105);
        Ok(Self { cfg: cfg.clone(), eeg_scale, audio_scale, dropout, kind })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &FusionConfig {
        &self.cfg
    }

    /// The per-channel EEG scale `(D)` (read-only view of the parameter).
    #[must_use]
    pub fn eeg_scale(&self) -> &Tensor {
        &self.eeg_scale
    }

    /// The per-channel audio scale `(D)`.
    #[must_use]
    pub fn audio_scale(&self) -> &Tensor {
        &self.audio_scale
    }

    /// The dropout layer (its generator state belongs in a checkpoint).
    #[must_use]
    pub fn dropout(&self) -> &Dropout {
        &self.dropout
    }

    /// The blend weights `softmax(blend_logits)` `(2)`: EEG, audio (cross_attention only).
    ///
    /// # Errors
    /// [`Error::WrongMode`] in other modes.
    pub fn blend_weights(&self) -> Result<Tensor> {
        match &self.kind {
            Kind::CrossAttention { blend_logits, .. } => Ok(candle_nn::ops::softmax(blend_logits, 0)?),
            _ => Err(self.wrong_mode("blend weights", FusionMode::CrossAttention)),
        }
    }

    fn wrong_mode(&self, what: &'static str, needs: FusionMode) -> Error {
        Error::WrongMode { what, needs, mode: self.cfg.mode }
    }

    /// Fuses two latents.
    ///
    /// # Errors
    /// [`Error::Shape`] when the latents are not both `(B, D)` with the same `B`.
    pub fn fuse(&self, eeg: &Latent, audio: &Latent, train: bool) -> Result<Latent> {
        Ok(Latent::new(self.forward_inspect(eeg, audio, train)?.fused, self.cfg.latent_dim)?)
    }

    /// Fuses two latents and returns the gate values or attention weights along with the output.
    ///
    /// # Errors
    /// As [`Fusion::fuse`].
    pub fn forward_inspect(&self, eeg: &Latent, audio: &Latent, train: bool) -> Result<Inspection> {
        let d = self.cfg.latent_dim;
        let (eeg, audio) = (Latent::new(eeg.tensor().clone(), d)?, Latent::new(audio.tensor().clone(), d)?);
        same_batch("audio latent", eeg.batch(), audio.tensor())?;
        let e = eeg.tensor().broadcast_mul(&self.eeg_scale)?;
        let a = audio.tensor().broadcast_mul(&self.audio_scale)?;
        let (pre, gates, attention) = match &self.kind {
            Kind::Concat { proj } => (proj.forward(&Tensor::cat(&[&e, &a], D::Minus1)?)?, None, None),
            Kind::Gated { gate_fc, proj_fc } => {
                let c = Tensor::cat(&[&e, &a], D::Minus1)?;
                let g = sigmoid(&gate_fc.forward(&c)?)?;
                (proj_fc.forward(&(&c * &g)?)?, Some(g), None)
            }
            Kind::CrossAttention { e2a, a2e, blend_logits, proj } => {
                let b = eeg.batch();
                let (t, td) = (self.cfg.tokens, d / self.cfg.tokens);
                let et = e.reshape((b, t, td))?;
                let at = a.reshape((b, t, td))?;
                let (e_ctx, w_e2a) = e2a.forward(&et, &at)?;
                let (a_ctx, w_a2e) = a2e.forward(&at, &et)?;
                let e_ctx = (et + e_ctx)?.reshape((b, d))?;
                let a_ctx = (at + a_ctx)?.reshape((b, d))?;
                let w = candle_nn::ops::softmax(blend_logits, 0)?;
                let m = (e_ctx.broadcast_mul(&w.narrow(0, 0, 1)?)? + a_ctx.broadcast_mul(&w.narrow(0, 1, 1)?)?)?;
                (proj.forward(&m)?, None, Some((w_e2a, w_a2e)))
            }
        };
        let fused = self.dropout.forward_t(&pre.relu()?, train)?;
        Ok(Inspection { fused, gates, attention })
    }

    /// Gate values in [0, 1], `(B, 2D)` (gated only).
    ///
    /// # Errors
    /// [`Error::WrongMode`] in other modes; shape errors as [`Fusion::fuse`].
    pub fn gate_values(&self, eeg: &Latent, audio: &Latent) -> Result<Tensor> {
        self.forward_inspect(eeg, audio, false)?.gates.ok_or_else(|| self.wrong_mode("gate values", FusionMode::Gated))
    }

    /// Attention weights (EEG → audio, audio → EEG), `(B, heads, tokens, tokens)` each (cross_attention only).
    ///
    /// # Errors
    /// [`Error::WrongMode`] in other modes; shape errors as [`Fusion::fuse`].
    pub fn attention_weights(&self, eeg: &Latent, audio: &Latent) -> Result<(Tensor, Tensor)> {
        self.forward_inspect(eeg, audio, false)?
            .attention
            .ok_or_else(|| self.wrong_mode("attention weights", FusionMode::CrossAttention))
    }
}
