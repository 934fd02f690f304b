//! Errors of the `online` crate.

/// Everything that can go wrong while building a predictor or feeding it.
///
/// A chunk rejected with an error leaves the predictor as it was: push the next good chunk.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The checkpoint could not be loaded, or the model failed.
    #[error(transparent)]
    Model(#[from] experiments::Error),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The MFCC pass failed.
    #[error(transparent)]
    Mfcc(#[from] mfcc::Error),
    /// Lab Streaming Layer: liblsl missing, a stream not found, lost or refused (the message says which).
    #[error("{0}")]
    Lsl(String),
    /// Settings that cannot work together (the message says which).
    #[error("{0}")]
    Config(String),
    /// A stream's sample rate is not the one the checkpoint was made for.
    #[error("{stream} stream at {got} Hz: the checkpoint's preprocessing reads {expected} Hz")]
    Rate {
        /// `eeg` or `audio`.
        stream: &'static str,
        /// The rate the checkpoint needs.
        expected: f64,
        /// The stream's rate.
        got: f64,
    },
    /// A chunk has a different channel count from the stream's.
    #[error("{stream} chunk with {got} channels, the stream has {expected}")]
    Channels {
        /// `eeg` or `audio`.
        stream: &'static str,
        /// The stream's channel count.
        expected: usize,
        /// The chunk's.
        got: usize,
    },
    /// A chunk's length is not a whole number of frames.
    #[error("{stream} chunk of {len} values is not whole frames of {channels} channels")]
    Ragged {
        /// `eeg` or `audio`.
        stream: &'static str,
        /// Values in the chunk.
        len: usize,
        /// Channels per frame.
        channels: usize,
    },
    /// A chunk holds a NaN or infinite sample; the chunk is rejected.
    #[error("{stream} chunk: value {index} is not finite ({value})")]
    NotFinite {
        /// `eeg` or `audio`.
        stream: &'static str,
        /// Position in the chunk.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A chunk's timestamp lies before the end of what the stream already delivered; the chunk is
    /// rejected.
    #[error("{stream} chunk stamped {got_s:.4} s, before the stream's end at {expected_s:.4} s")]
    TimeWentBack {
        /// `eeg` or `audio`.
        stream: &'static str,
        /// Where the next chunk was due.
        expected_s: f64,
        /// The chunk's stamp.
        got_s: f64,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
