//! Errors of the `encoders` crate.

/// Everything that can go wrong when building or running a layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input had the wrong shape.
    #[error(transparent)]
    Shape(#[from] core_types::ShapeError),
    /// A configuration value is out of range.
    #[error("invalid config: {0}")]
    Config(String),
    /// The input is too short for the layer's kernels.
    #[error("input of length {len} is too short for {layer} (needs ≥ {min})")]
    TooShort {
        /// The layer.
        layer: String,
        /// The input length.
        len: usize,
        /// The shortest accepted length.
        min: usize,
    },
    /// A candle operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
