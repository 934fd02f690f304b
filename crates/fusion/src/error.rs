//! Errors of the `fusion` crate.

/// Everything that can go wrong when building or running the fusion layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input latent had the wrong shape, or the two latents differ in batch size.
    #[error(transparent)]
    Shape(#[from] core_types::ShapeError),
    /// The inputs of one call do not fit the layer (modalities, presence masks).
    #[error("{0}")]
    Input(String),
    /// A configuration value is out of range.
    #[error("invalid fusion config: {0}")]
    Config(String),
    /// An inspection that only exists for another mode.
    #[error("{what} exists only in {needs} mode, this layer is {mode}")]
    WrongMode {
        /// What was asked for.
        what: &'static str,
        /// The mode that has it.
        needs: core_types::FusionMode,
        /// The layer's mode.
        mode: core_types::FusionMode,
    },
    /// A candle operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
