//! Errors of the `experiments` crate.

use std::path::PathBuf;

/// Everything that can go wrong while building, running, saving or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A checkpoint's tensors do not fit the model.
    #[error(
        "{}: checkpoint does not fit the model: missing {missing:?}, unexpected {unexpected:?}, mis-shaped {misshaped:?}",
        path.display()
    )]
    CheckpointMismatch {
        /// The file.
        path: PathBuf,
        /// Model tensors the file lacks.
        missing: Vec<String>,
        /// File tensors the model does not have.
        unexpected: Vec<String>,
        /// `name: file shape vs model shape`.
        misshaped: Vec<String>,
    },
    /// A checkpoint file could not be parsed.
    #[error("{}: not a readable safetensors file: {source}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: candle_core::Error,
    },
    /// The training loss stopped being finite.
    #[error(
        "training loss became {loss} at epoch {epoch}, step {step}; the model keeps the best weights seen so far"
    )]
    NonFinite {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// The loss value.
        loss: f64,
    },
    /// The dataset could not be read.
    #[error(transparent)]
    Eav(#[from] eav::Error),
    /// A required input is missing (audio for a fused model).
    #[error("{0}")]
    Input(String),
    /// An input had the wrong shape.
    #[error(transparent)]
    Shape(#[from] core_types::ShapeError),
    /// An encoder failed.
    #[error(transparent)]
    Encoders(#[from] encoders::Error),
    /// The fusion layer failed.
    #[error(transparent)]
    Fusion(#[from] fusion::Error),
    /// A candle operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
