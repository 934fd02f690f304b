//! The EAV dataset on disk.
//!
//! - [`audio`]: WAV decoding to mono `f32` and resampling.
//!
//! # Example
//! ```no_run
//! use std::path::Path;
//!
//! let audio = eav::audio::load_mono(Path::new("001_Trial_01_Speaking_Neutral_aud.wav"), 16_000)?;
//! println!("{:.1} s at {} Hz", audio.seconds(), audio.sample_rate);
//! # Ok::<(), eav::Error>(())
//! ```

pub mod audio;
pub mod cache;
pub mod dataset;
mod error;
pub mod mat;
pub mod signal;
pub mod split;
pub mod subject;
pub mod synth;

pub use error::{Error, Result};
