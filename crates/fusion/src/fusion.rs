//! [`Fusion`]: combines an EEG and an audio latent into one.

use candle_core::{D, Module, ModuleT, Tensor};
use candle_nn::VarBuilder;
use core_types::{FusionMode, Latent, same_batch};
use encoders::{Dropout, Linear};
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
            FusionMode::Concat => Kind::Concat { proj: Linear::new(2 * d, d, vb.pp("proj"))? },
            FusionMode::Gated => Kind::Gated {
                gate_fc: Linear::new(2 * d, 2 * d, vb.pp("gate_fc"))?,
                proj_fc: Linear::new(2 * d, d, vb.pp("proj_fc"))?,
            },
            FusionMode::CrossAttention => {
                let fits = cfg.tokens > 0
                    && d.is_multiple_of(cfg.tokens)
                    && cfg.heads > 0
                    && (d / cfg.tokens).is_multiple_of(cfg.heads);
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
                    proj: Linear::new(d, d, vb.pp("proj"))?,
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
                let m = (e_ctx.broadcast_mul(&w.narrow(0, 0, 1)?)?
                    + a_ctx.broadcast_mul(&w.narrow(0, 1, 1)?)?)?;
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
        self.forward_inspect(eeg, audio, false)?
            .gates
            .ok_or_else(|| self.wrong_mode("gate values", FusionMode::Gated))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};
    use candle_nn::VarMap;
    use proptest::prelude::*;

    fn build(mode: FusionMode, seed: u64) -> (VarMap, Fusion) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let f = Fusion::new(&FusionConfig { mode, ..FusionConfig::default() }, vb).unwrap();
        encoders::init_pytorch_default(&varmap, seed).unwrap();
        (varmap, f)
    }

    fn latent(batch: usize, seed: u64) -> Latent {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..batch * 128)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect();
        Latent::new(Tensor::from_vec(v, (batch, 128), &Device::Cpu).unwrap(), 128).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    fn mode() -> impl Strategy<Value = FusionMode> {
        prop::sample::select(FusionMode::ALL.to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn shapes_ranges_and_gradients(mode in mode(), batch in 1usize..17, seed in any::<u64>()) {
            let (varmap, f) = build(mode, seed);
            let (e, a) = (latent(batch, seed), latent(batch, seed ^ 1));
            let out = f.forward_inspect(&e, &a, true).unwrap();
            prop_assert_eq!(out.fused.dims(), &[batch, 128]);
            prop_assert!(max_abs(&out.fused).is_finite());
            if let Some(g) = &out.gates {
                prop_assert_eq!(g.dims(), &[batch, 256]);
                let lo = g.flatten_all().unwrap().min(0).unwrap().to_scalar::<f32>().unwrap();
                prop_assert!(lo >= 0.0 && max_abs(g) <= 1.0);
            }
            if let Some((w1, w2)) = &out.attention {
                for w in [w1, w2] {
                    prop_assert_eq!(w.dims(), &[batch, 4, 8, 8]);
                    let dev = (w.sum(3).unwrap() - 1.0).unwrap();
                    prop_assert!(max_abs(&dev) < 1e-5, "attention rows must sum to 1");
                }
            }
            // Every fusion parameter receives a finite, non-zero gradient.
            let loss = out.fused.sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            for (name, var) in varmap.data().lock().unwrap().iter() {
                let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{mode}: no gradient for {name}"));
                let m = max_abs(g);
                prop_assert!(m.is_finite() && m > 0.0, "{} {}: gradient max {}", mode, name, m);
            }
        }

        #[test]
        fn a_zero_scale_removes_that_channel(mode in mode(), channel in 0usize..128, audio in any::<bool>(), seed in any::<u64>()) {
            let (varmap, f) = build(mode, seed);
            let name = if audio { "audio_scale" } else { "eeg_scale" };
            let mut scale = vec![1.0f32; 128];
            scale[channel] = 0.0;
            varmap.data().lock().unwrap()[name].set(&Tensor::new(scale, &Device::Cpu).unwrap()).unwrap();
            let (e, a) = (latent(3, seed), latent(3, seed ^ 1));
            let base = f.fuse(&e, &a, false).unwrap().into_tensor();
            let mut bump = vec![0.0f32; 128];
            bump[channel] = 5.0;
            let bump = Tensor::new(bump, &Device::Cpu).unwrap();
            let shifted = |l: &Latent| Latent::new(l.tensor().broadcast_add(&bump).unwrap(), 128).unwrap();
            let moved = if audio { f.fuse(&e, &shifted(&a), false) } else { f.fuse(&shifted(&e), &a, false) };
            let d = max_abs(&(moved.unwrap().into_tensor() - &base).unwrap());
            prop_assert!(d == 0.0, "channel {} of {} still changes the output by {}", channel, name, d);
            // …while with its scale at 1 it does matter.
            let (_, g) = build(mode, seed);
            let moved = if audio { g.fuse(&e, &shifted(&a), false) } else { g.fuse(&shifted(&e), &a, false) };
            let d = max_abs(&(moved.unwrap().into_tensor() - g.fuse(&e, &a, false).unwrap().into_tensor()).unwrap());
            prop_assert!(d > 0.0);
        }
    }

    #[test]
    fn eval_output_of_a_sample_ignores_the_rest_of_its_batch() {
        for mode in FusionMode::ALL.iter().copied() {
            let (_, f) = build(mode, 3);
            let (e, a) = (latent(5, 10), latent(5, 11));
            let all = f.fuse(&e, &a, false).unwrap().into_tensor();
            let one = |l: &Latent| Latent::new(l.tensor().i(2..3).unwrap(), 128).unwrap();
            let alone = f.fuse(&one(&e), &one(&a), false).unwrap().into_tensor();
            assert!(max_abs(&(alone - all.i(2..3).unwrap()).unwrap()) < 1e-6, "{mode}");
        }
    }

    #[test]
    fn wrong_inputs_and_modes_are_errors() {
        let (_, f) = build(FusionMode::Concat, 0);
        let short = Latent::new(Tensor::zeros((2, 64), DType::F32, &Device::Cpu).unwrap(), 64).unwrap();
        assert!(matches!(f.fuse(&latent(2, 0), &short, false), Err(Error::Shape(_))));
        assert!(matches!(f.fuse(&latent(2, 0), &latent(3, 0), false), Err(Error::Shape(_))));
        assert!(matches!(f.gate_values(&latent(2, 0), &latent(2, 1)), Err(Error::WrongMode { .. })));
        assert!(f.blend_weights().is_err());
        let (_, x) = build(FusionMode::CrossAttention, 0);
        let w = x.blend_weights().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(w, vec![0.5, 0.5]);
    }
}
