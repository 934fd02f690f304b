//! MFCCs and log-mel spectrograms that match librosa 0.11, on [`rustfft`].
//!
//! - [`MfccConfig`]: every parameter, with [`MfccConfig::librosa_default`] (what `librosa.feature.mfcc(y=y)`
//!   uses) and [`MfccConfig::project`] (16 kHz, 13 coefficients, the audio encoder's input).
//! - [`Mfcc`]: a planner built once per configuration; window, mel filterbank, DCT matrix and FFT plan are
//!   computed in [`Mfcc::new`]. [`Mfcc::mfcc`] gives `(n_mfcc, frames)`, [`Mfcc::mel_db`] the
//!   `(n_mels, frames)` dB spectrogram, from `&[f32]` or `&[f64]`. The planner computes in f64
//!   ([`Mfcc::new`], within 1e-4 of librosa) or in f32 (`Mfcc::<f32>::with_precision`, what librosa itself
//!   does for float32 input: about twice as fast, within 5e-4).
//!
//! Conventions (librosa's defaults): periodic Hann window zero-padded to `n_fft`; `center` pads `n_fft / 2`
//! zeros on both sides, giving `1 + len / hop` frames; power spectrum; Slaney mel scale with area-normalised
//! filters (rounded to f32, as librosa builds them); `10·log10(max(S, 1e-10))` floored at the clip's maximum
//! minus `top_db`; orthonormal DCT-II. The arithmetic runs on AVX2 where the CPU has it (chosen at run time;
//! the numbers are the same either way).
//!
//! # Example
//! ```
//! use mfcc::{Mfcc, MfccConfig};
//!
//! let planner = Mfcc::new(MfccConfig::project())?;
//! let tone: Vec<f32> = (0..16_000).map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 16_000.0).sin()).collect();
//! let feats = planner.mfcc(&tone)?;
//! assert_eq!(feats.shape(), (13, 101)); // 1 + 16000 / 160 frames
//! assert!(feats.as_slice().iter().all(|v| v.is_finite()));
//!
//! // Single precision, as librosa computes for float32 audio.
//! let single = Mfcc::<f32>::with_precision(MfccConfig::project())?;
//! let fast = single.mfcc(&tone)?;
//! let close = fast.as_slice().iter().zip(feats.as_slice()).all(|(a, b)| (f64::from(*a) - b).abs() < 5e-4);
//! assert!(close);
//! # Ok::<(), mfcc::Error>(())
//! ```

mod config;
mod error;
mod float;
mod mel;
mod planner;
mod simd;

pub use config::MfccConfig;
pub use error::{Error, Result};
pub use float::{Float, Sample};
pub use planner::{AMIN, Features, Mfcc};
pub use simd::instruction_set;
