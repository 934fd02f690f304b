//! The EAV dataset on disk.
//!
//! - [`subject`]: find `subjectN` folders, load a subject's EEG (`seg1`/`seg`), labels and matched audio.
//! - [`dataset`]: preprocessing as the official pipeline does it (500 → 100 Hz, 0.5–45 Hz band-pass, 5 s
//!   windows) and MFCC windows of speaking trials.
//! - [`split`]: official chronological, trial-grouped k-fold and leave-one-subject-out splits.
//! - [`causal`]: the same preprocessing with causal filters, sample by sample (`PreprocessConfig::causal`,
//!   and what a live stream computes).
//! - [`cache`]: a preprocessing cache keyed by the source files and the settings.
//! - [`synth`]: a synthetic tree in the same formats, with class structure of known strength.
//! - [`mat`]: MAT level-5 reading and writing; [`audio`]: WAV decoding and resampling; [`signal`]: filters.
//!
//! Every error names the file and the reason. This crate never sees a `VarBuilder`.
//!
//! # Example
//! ```
//! use eav::dataset::{PreprocessConfig, preprocess};
//! use eav::subject::{discover, load_subject};
//! use eav::synth::{SynthConfig, write_synthetic};
//!
//! let root = std::env::temp_dir().join(format!("eav-doc-{}", std::process::id()));
//! write_synthetic(&root, &SynthConfig { subjects: 1, trials: 4, ..SynthConfig::default() }, &|_| {})?;
//! let subject = load_subject(&discover(&root)?[0])?;
//! let windows = preprocess(&subject, &PreprocessConfig::default())?;
//! assert_eq!(windows.samples.len(), 4 * 4); // four 5 s windows per 20 s trial
//! assert_eq!(windows.samples[1].eeg.len(), 30 * 500); // 30 channels at 100 Hz
//! # std::fs::remove_dir_all(&root).ok();
//! # Ok::<(), eav::Error>(())
//! ```
//!
//! Reading one WAV file:
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
pub mod causal;
pub mod dataset;
mod error;
pub mod mat;
pub mod signal;
pub mod split;
pub mod subject;
pub mod synth;

pub use error::{Error, Result};
