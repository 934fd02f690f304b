//! Fusion of the latents of a set of modalities (EEG, audio, video): [`Fusion`] in `concat`,
//! `cross_attention` or `gated` mode, each with a learnable per-channel `{modality}_scale` applied before
//! fusing. [`Fusion::fuse_set`] takes any ordered set of [`ModalityInput`]s, each with a per-sample presence
//! mask: an absent modality contributes nothing to a sample's fused vector. [`Fusion::fuse`] is the
//! reference model's EEG + audio call.
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
//!
//! // The same layer with audio absent from the second sample.
//! use fusion::ModalityInput;
//! use core_types::Modality;
//! let present = Tensor::new(&[1f32, 0.0], &Device::Cpu)?;
//! let out = fusion.fuse_set(
//!     &[ModalityInput::new(Modality::Eeg, eeg), ModalityInput::new(Modality::Audio, audio).with_presence(present)],
//!     false,
//! )?;
//! assert_eq!(out.fused.dims(), &[2, 128]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attention;
mod attention_op;
mod error;
mod fusion;
mod graph_ops;
mod layer_norm_op;
mod recycle;
mod tables;
mod temporal;

pub use attention_op::softmax_instruction_set;
pub use error::{Error, Result};
pub use fusion::{ADAPTIVE_EXPERTS, AttentionMap, Fusion, FusionConfig, Inspection, ModalityInput};
pub use temporal::{LayerNorm, time_encoding};
