//! Shared vocabulary of the emofuse workspace.
//!
//! - [`Emotion`], [`Modality`] and [`FusionMode`]: one spelling each, the same for `Display`, `FromStr`,
//!   serde and clap (`snake_case`: `cross_attention`). Unknown names give an error that lists the valid ones.
//! - [`Latent`], [`EegBatch`], [`MfccBatch`] and [`Sequence`] (an encoder's output over time, with each
//!   step's time in seconds): tensors whose shape was checked once, at construction. A wrong shape is a
//!   [`ShapeError`] naming the axis, never a silent broadcast.
//!
//! This crate does no IO.
//!
//! # Example
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use core_types::{Axis, EegBatch, Emotion, FusionMode, Latent};
//!
//! let mode: FusionMode = "cross_attention".parse()?;
//! assert_eq!(mode, FusionMode::CrossAttention);
//! assert_eq!(Emotion::from_index(2), Some(Emotion::Anger));
//!
//! let eeg = Tensor::zeros((8, 28, 512), DType::F32, &Device::Cpu)?;
//! let batch = EegBatch::new(eeg, Some(28), None)?;
//! assert_eq!((batch.batch(), batch.channels(), batch.time()), (8, 28, 512));
//!
//! let wrong = Tensor::zeros((8, 64), DType::F32, &Device::Cpu)?;
//! let err = Latent::new(wrong, 128).unwrap_err();
//! assert_eq!(err.axis, Axis::Dim);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod names;
mod shapes;

pub use error::{Axis, Error, ParseEnumError, Result, ShapeError};
pub use names::{Emotion, FusionMode, Modality};
pub use shapes::{EegBatch, Latent, MfccBatch, Sequence, VideoBatch, same_batch};
