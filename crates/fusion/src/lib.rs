//! Fusion of EEG and audio latents: [`Fusion`] in `concat`, `cross_attention` or `gated` mode, each with
//! learnable per-channel `eeg_scale` / `audio_scale` applied before fusing.
//!
//! Read-only inspection: [`Fusion::eeg_scale`], [`Fusion::audio_scale`], [`Fusion::gate_values`] (gated),
//! [`Fusion::attention_weights`] and [`Fusion::blend_weights`] (cross_attention). Every op records its
//! gradient (no fused softmax or sdpa). No IO.
//!
//! # Example
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use core_types::{FusionMode, Latent};
//! use fusion::{Fusion, FusionConfig};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let cfg = FusionConfig { mode: FusionMode::CrossAttention, ..FusionConfig::default() };
//! let fusion = Fusion::new(&cfg, vb.pp("fusion"))?;
//!
//! let eeg = Latent::new(Tensor::randn(0f32, 1.0, (2, 128), &Device::Cpu)?, 128)?;
//! let audio = Latent::new(Tensor::randn(0f32, 1.0, (2, 128), &Device::Cpu)?, 128)?;
//! let fused = fusion.fuse(&eeg, &audio, false)?;
//! assert_eq!(fused.tensor().dims(), &[2, 128]);
//! let (e2a, _a2e) = fusion.attention_weights(&eeg, &audio)?;
//! assert_eq!(e2a.dims(), &[2, 4, 8, 8]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attention;
mod attention_op;
mod error;
mod fusion;

pub use error::{Error, Result};
pub use fusion::{Fusion, FusionConfig, Inspection};
