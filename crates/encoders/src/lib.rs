//! EEG and audio encoders, the emotion classifier, and the layers they are built from, on candle.
//!
//! - [`Conv1d`]: a 1-D convolution lowered to im2col + matmul, whose gradients are correct (candle 0.11.1's
//!   native CPU `conv1d` backward is not).
//! - [`EegEncoder`], [`AudioEncoder`]: `Conv1d → BatchNorm1d → ReLU` blocks, mean over time, to a
//!   128-d [`core_types::Latent`]; [`EncoderConfig::eeg`] and [`EncoderConfig::audio`] are the reference sizes.
//! - [`Conv2d`] and [`VideoEncoder`]: a per-frame `Conv2d → BatchNorm2d → ReLU` stack shared across
//!   frames, spatial mean, then `Conv1d` blocks over the frames, to a 128-d latent.
//! - [`EmotionClassifier`]: `128 → 64 → 5` logits.
//! - [`Linear`] and [`linear()`]: PyTorch's `nn.Linear`, one CPU op with its own backward pass.
//! - [`cpu_op`]: helpers for candle custom ops with f32/f64 CPU kernels (also used by `fusion`).
//! - [`Dropout`] with seeded masks, and [`init_pytorch_default`]: seeded PyTorch-default initialisation.
//! - [`isa`], [`force_isa`]: the instruction set of the CPU kernels' matrix products ([`Isa`]: AVX-512,
//!   AVX2, NEON or scalar), detected once; forcing one is for measurements and cross-checks, since the
//!   paths agree within round-off but not bit for bit.
//!
//! Tensor names equal the PyTorch reference's `state_dict` names. Layers are built with
//! `new(&cfg, vb)` and run with `ModuleT::forward_t(x, train)`. No IO.
//!
//! # Example
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use encoders::{EegEncoder, EncoderConfig, init_pytorch_default};
//!
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
//! let encoder = EegEncoder::new(&EncoderConfig::eeg(30), vb.pp("eeg_encoder"))?;
//! init_pytorch_default(&varmap, 42)?;
//!
//! let eeg = Tensor::randn(0f32, 1.0, (4, 30, 500), &Device::Cpu)?;
//! let latent = encoder.encode(&eeg, false)?;
//! assert_eq!((latent.batch(), latent.dim()), (4, 128));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod classifier;
mod conv;
mod conv2d;
pub mod cpu_op;
mod dropout;
mod encoder;
mod error;
mod init;
mod kernels;
mod linear;
mod video;

pub use classifier::{ClassifierConfig, EmotionClassifier};
pub use conv::{Conv1d, Conv1dConfig, ConvConfig};
pub use conv2d::{Conv2d, Conv2dConfig};
pub use dropout::Dropout;
pub use encoder::{AudioEncoder, BN_EPS, BN_MOMENTUM, ConvSpec, EegEncoder, EncoderConfig, LATENT_DIM};
pub use error::{Error, Result};
pub use init::{init_pytorch_default, seeded_randn};
pub use kernels::{Isa, IsaError, force_isa, isa, matmul_instruction_set};
pub use linear::{Linear, linear, linear_relu};
pub use video::{VideoEncoder, VideoEncoderConfig};
