//! Errors of the `mfcc` crate.

/// Everything that can go wrong when configuring or running the MFCC planner.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range; the message says which and why.
    #[error("invalid MFCC config: {0}")]
    Config(String),
    /// The signal has no samples.
    #[error("empty signal: at least one sample is needed")]
    Empty,
    /// With `center = false` the signal must hold at least one full FFT frame.
    #[error("signal of {len} samples is shorter than n_fft = {n_fft} (center = false)")]
    TooShort {
        /// Samples in the signal.
        len: usize,
        /// The FFT size.
        n_fft: usize,
    },
    /// A sample is NaN or infinite.
    #[error("sample {index} is not finite ({value})")]
    NonFinite {
        /// Position of the first bad sample.
        index: usize,
        /// Its value.
        value: f64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
