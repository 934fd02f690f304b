//! Errors of the `video` crate.

use std::path::PathBuf;

/// Everything that can go wrong reading a clip; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is empty, truncated or not an MP4 file.
    #[error("{}: {reason}", path.display())]
    Container {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file has no video track.
    #[error("{}: no video track", path.display())]
    NoVideo {
        /// The file.
        path: PathBuf,
    },
    /// The clip's codec or format is one the decoder does not read.
    #[error("{}: cannot decode: {reason}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What it is.
        reason: String,
    },
    /// The clip has fewer frames than the windows need.
    #[error("{}: {frames} frames, {needed} needed for the windows", path.display())]
    Short {
        /// The file.
        path: PathBuf,
        /// Frames in the clip.
        frames: usize,
        /// Frames the windows read.
        needed: usize,
    },
    /// The stream is damaged at a sample (0-based, decode order).
    #[error("{}: sample {sample}: {reason}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The sample.
        sample: usize,
        /// What the decoder said.
        reason: String,
    },
}

impl Error {
    pub(crate) fn container(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::Container { path: path.into(), reason: reason.into() }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
