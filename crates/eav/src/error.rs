//! Errors of the `eav` crate: each names the file it is about and the reason.

use std::path::PathBuf;

/// Everything that can go wrong while reading or preparing EAV data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A WAV file could not be decoded.
    #[error("{}: {reason}", path.display())]
    Wav {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A MAT file is malformed or of an unsupported kind.
    #[error("{}{}: {reason} (at byte {offset})", path.display(), variable.as_ref().map(|v| format!(", variable `{v}`")).unwrap_or_default())]
    Mat {
        /// The file.
        path: PathBuf,
        /// The variable being read, when known.
        variable: Option<String>,
        /// Byte offset in the file of the element being read.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A video clip could not be read or written (the error names the file).
    #[error(transparent)]
    Video {
        /// The video crate's error.
        #[from]
        source: video::Error,
    },
    /// The dataset's layout or content is wrong.
    #[error("{}: {reason}", path.display())]
    Dataset {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Resampling failed.
    #[error("{}: resampling {from} Hz → {to} Hz failed: {reason}", path.display())]
    Resample {
        /// The file whose audio was being resampled.
        path: PathBuf,
        /// Input rate.
        from: u32,
        /// Output rate.
        to: u32,
        /// The resampler's message.
        reason: String,
    },
    /// MFCC computation failed.
    #[error("{}: {source}", path.display())]
    Mfcc {
        /// The file whose audio was being analysed.
        path: PathBuf,
        /// The MFCC error.
        source: mfcc::Error,
    },
}

impl Error {
    /// A dataset error about `path`.
    pub(crate) fn dataset(path: impl AsRef<std::path::Path>, reason: impl Into<String>) -> Self {
        Self::Dataset { path: path.as_ref().into(), reason: reason.into() }
    }

    /// A WAV error about `path`.
    pub(crate) fn wav(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Wav { path: path.into(), reason: reason.into() }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
