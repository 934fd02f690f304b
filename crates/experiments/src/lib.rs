//! Emotion models built from the workspace's layers, their checkpoints, training ([`train`], [`optim`]),
//! evaluation ([`metrics`], [`stats`]), comparisons ([`config`] → [`run`] → [`results`] → [`report`]),
//! sweeps ([`sweep`]), plots ([`plots`]) and the held-out choice of a fused model's output mix ([`mix`]). Every file is written through [`write_atomic`].
//!
//! [`EmotionModel`] is a single-modality model (classifier on the EEG, audio or video latent) or a fused one
//! over a set of them (encoders, [`fusion::Fusion`], classifier); [`EmotionModel::forward_inputs`] takes
//! every modality's batch with per-sample presence masks. Tensor names equal the PyTorch reference's `state_dict` names, so
//! [`EmotionModel::save`] and [`EmotionModel::load`] move weights to and from PyTorch.
//!
//! # Example
//! ```
//! use candle_core::{Device, Tensor};
//! use core_types::FusionMode;
//! use experiments::{EmotionModel, ModelConfig};
//!
//! let model = EmotionModel::new(&ModelConfig::fused(30, FusionMode::Gated), &Device::Cpu, 7)?;
//! let eeg = Tensor::randn(0f32, 1.0, (2, 30, 500), &Device::Cpu)?;
//! let mfcc = Tensor::randn(0f32, 1.0, (2, 13, 500), &Device::Cpu)?;
//! let logits = model.forward(&eeg, Some(&mfcc), false)?;
//! assert_eq!(logits.dims(), &[2, 5]);
//!
//! // Three modalities: 25 luma frames of 32×32 per window, the second window without speech.
//! use core_types::Modality::{Audio, Eeg, Video};
//! use experiments::{Inputs, Presence};
//! let three = EmotionModel::new(&ModelConfig::fused_over(30, FusionMode::Temporal, &[Eeg, Audio, Video]), &Device::Cpu, 7)?;
//! let video = Tensor::randn(0f32, 1.0, (2, 25, 32, 32), &Device::Cpu)?;
//! let presence = Presence { audio: Some(Tensor::new(&[1f32, 0.0], &Device::Cpu)?), ..Presence::default() };
//! let inputs = Inputs { eeg: &eeg, audio: Some(&mfcc), video: Some(&video) };
//! let out = three.forward_inputs(inputs, &presence, false)?;
//! assert_eq!(out.logits.dims(), &[2, 5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Performance
//! On the CPU every layer of the model is one of the `encoders` crate's kernels (conv blocks, `Linear`) or
//! the `fusion` crate's attention op, each with its own backward pass; none goes through candle's matrix
//! product, which looks up the thread count on every call (with `RAYON_NUM_THREADS` unset, by parsing
//! `/proc/cpuinfo`). Set `RAYON_NUM_THREADS` to choose the number of threads, as `cargo xtask --threads`
//! does; batch-1 latency does not depend on it being set. [`train::train`] runs each optimisation step on a
//! thread of rayon's pool, so that the thread doing the step's serial work also takes part in the kernels'
//! parallel loops: called from a program's main thread, training the concat model on two cores went from
//! 540–682 to 750–927 samples/s that way (the main thread no longer sleeps through every loop while the
//! pool's threads spin against its work between them). candle runs large element-wise ops (the
//! gradient additions of its backward pass) on a thread of its own that spins 25 000 rounds after each op
//! before it sleeps; on as many compute threads as cores that spinning takes CPU time from the work.
//! `cargo xtask` sets `CANDLE_BARRIER_POOL_SPIN_LIMIT=0` at start-up, before any thread exists (candle
//! reads it once); a program that trains should do the same (measured: `docs/benchmarks.md`, the Zen 4
//! section).

mod atomic;
pub mod checkpoint;
pub mod config;
pub mod data;
mod error;
pub mod metrics;
pub mod mix;
mod model;
pub mod optim;
pub mod plots;
pub mod report;
pub mod results;
pub mod robustness;
pub mod run;
pub mod stats;
pub mod sweep;
pub mod train;

pub use atomic::write as write_atomic;
pub use error::{Error, Result};
pub use model::{
    EmotionModel, Inputs, Intermediates, MixExpert, ModelConfig, OutputMix, Presence, is_running_stat,
};
