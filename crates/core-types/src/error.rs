//! Errors of `core-types`.

use std::fmt;

/// The axis of a tensor that a shape check refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Axis {
    /// The number of dimensions itself was wrong.
    Rank,
    /// Axis 0 of every batch type.
    Batch,
    /// The feature axis of a latent.
    Dim,
    /// The channel axis of an EEG batch.
    Channels,
    /// The time axis of an EEG batch.
    Time,
    /// The coefficient axis of an MFCC batch.
    Coefficients,
    /// The frame axis of an MFCC batch.
    Frames,
    /// The step (time) axis of an encoder's sequence.
    Steps,
    /// The row axis of a video batch's frames.
    Height,
    /// The column axis of a video batch's frames.
    Width,
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rank => "rank",
            Self::Batch => "batch",
            Self::Dim => "dim",
            Self::Channels => "channels",
            Self::Time => "time",
            Self::Coefficients => "coefficients",
            Self::Frames => "frames",
            Self::Steps => "steps",
            Self::Height => "height",
            Self::Width => "width",
        })
    }
}

/// A tensor did not have the shape a wrapper requires.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {axis} is {got}, expected {expected} (shape {shape:?})")]
pub struct ShapeError {
    /// The wrapper that rejected the tensor (`Latent`, `EegBatch`, …).
    pub what: &'static str,
    /// The first axis that did not fit.
    pub axis: Axis,
    /// What that axis should have been, in words (`"3"`, `"≥ 1"`, `"128"`).
    pub expected: String,
    /// What it was.
    pub got: usize,
    /// The full shape that was offered.
    pub shape: Vec<usize>,
}

/// A name that is not one of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{got}`; expected one of: {}", valid.join(", "))]
pub struct ParseEnumError {
    /// What was being parsed (`"emotion"`, `"fusion mode"`, …).
    pub kind: &'static str,
    /// The text that was offered.
    pub got: String,
    /// Every accepted spelling.
    pub valid: Vec<&'static str>,
}

/// Every error of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A shape check failed.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// An unknown enum name.
    #[error(transparent)]
    Parse(#[from] ParseEnumError),
    /// candle failed while reading a tensor's metadata.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
