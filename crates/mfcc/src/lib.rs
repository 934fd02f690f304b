//! MFCCs and log-mel spectrograms that match librosa 0.11, on [`rustfft`].
//!
//! - [`MfccConfig`]: every parameter, with [`MfccConfig::librosa_default`] (what `librosa.feature.mfcc(y=y)`
//!   uses) and [`MfccConfig::project`] (16 kHz, 13 coefficients, the audio encoder's input).
//! - [`Mfcc`]: a planner built once per configuration; window, mel filterbank, DCT matrix and FFT plan are
//!   computed in [`Mfcc::new`]. [`Mfcc::mfcc`] gives `(n_mfcc, frames)`, [`Mfcc::mel_db`] the
//!   `(n_mels, frames)` dB spectrogram, from `&[f32]` or `&[f64]`.
//!
//! Conventions (librosa's defaults): periodic Hann window zero-padded to `n_fft`; `center` pads `n_fft / 2`
//! zeros on both sides, giving `1 + len / hop` frames; power spectrum; Slaney mel scale with area-normalised
//! filters (rounded to f32, as librosa builds them); `10·log10(max(S, 1e-10))` floored at the clip's maximum
//! minus `top_db`; orthonormal DCT-II. All arithmetic runs in f64, on AVX2 where the CPU has it (chosen at
//! run time; the numbers are the same either way).
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
//! # Ok::<(), mfcc::Error>(())
//! ```

mod config;
mod error;
mod mel;
mod planner;
mod simd;

pub use config::MfccConfig;
pub use error::{Error, Result};
pub use planner::{AMIN, Features, Mfcc, Sample};
