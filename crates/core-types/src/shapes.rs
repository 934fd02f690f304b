//! Shape-checked wrappers over [`candle_core::Tensor`].
//!
//! # Shapes
//! | type | layout |
//! | --- | --- |
//! | [`Latent`] | `(batch, dim)` |
//! | [`EegBatch`] | `(batch, channels, time)` |
//! | [`MfccBatch`] | `(batch, n_mfcc, frames)` |
//! | [`VideoBatch`] | `(batch, frames, height, width)` (luma) |
//! | [`Sequence`] | `(batch, steps, dim)`, with each step's time in seconds |
//!
//! Every axis must be at least 1. A constructor that is given the expected size of an axis rejects any
//! other size with a [`ShapeError`] naming that axis; nothing is broadcast or reshaped.

use crate::error::{Axis, ShapeError};
use candle_core::Tensor;

/// What one axis must be: any size ≥ 1, or exactly `n`.
#[derive(Debug, Clone, Copy)]
enum Want {
    Any,
    Exactly(usize),
}

fn check(what: &'static str, t: &Tensor, spec: &[(Axis, Want)]) -> Result<(), ShapeError> {
    let dims = t.dims();
    let fail = |axis, expected: String, got| ShapeError { what, axis, expected, got, shape: dims.to_vec() };
    if dims.len() != spec.len() {
        return Err(fail(Axis::Rank, spec.len().to_string(), dims.len()));
    }
    for (&got, &(axis, want)) in dims.iter().zip(spec) {
        match want {
            Want::Exactly(n) if got != n => return Err(fail(axis, n.to_string(), got)),
            Want::Any if got == 0 => return Err(fail(axis, "≥ 1".to_owned(), got)),
            _ => {}
        }
    }
    Ok(())
}

fn want(n: Option<usize>) -> Want {
    n.map_or(Want::Any, Want::Exactly)
}

/// A batch of latent vectors, `(batch, dim)`.
#[derive(Debug, Clone)]
pub struct Latent(Tensor);

impl Latent {
    /// Wraps `t` if it is `(batch, dim)` with exactly `dim` features.
    ///
    /// # Errors
    /// A [`ShapeError`] naming the rank, batch or dim axis.
    pub fn new(t: Tensor, dim: usize) -> Result<Self, ShapeError> {
        check("Latent", &t, &[(Axis::Batch, Want::Any), (Axis::Dim, Want::Exactly(dim))])?;
        Ok(Self(t))
    }

    /// The tensor, `(batch, dim)`.
    #[must_use]
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }

    /// Gives the tensor back.
    #[must_use]
    pub fn into_tensor(self) -> Tensor {
        self.0
    }

    /// The batch size.
    #[must_use]
    pub fn batch(&self) -> usize {
        self.0.dims()[0]
    }

    /// The feature size.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.0.dims()[1]
    }
}

/// A batch of EEG windows, `(batch, channels, time)`.
#[derive(Debug, Clone)]
pub struct EegBatch(Tensor);

impl EegBatch {
    /// Wraps `t` if it is `(batch, channels, time)`; `channels`/`time` of `Some(n)` must match exactly.
    ///
    /// # Errors
    /// A [`ShapeError`] naming the rank, batch, channels or time axis.
    pub fn new(t: Tensor, channels: Option<usize>, time: Option<usize>) -> Result<Self, ShapeError> {
        check(
            "EegBatch",
            &t,
            &[(Axis::Batch, Want::Any), (Axis::Channels, want(channels)), (Axis::Time, want(time))],
        )?;
        Ok(Self(t))
    }

    /// The tensor, `(batch, channels, time)`.
    #[must_use]
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }

    /// Gives the tensor back.
    #[must_use]
    pub fn into_tensor(self) -> Tensor {
        self.0
    }

    /// The batch size.
    #[must_use]
    pub fn batch(&self) -> usize {
        self.0.dims()[0]
    }

    /// The number of EEG channels.
    #[must_use]
    pub fn channels(&self) -> usize {
        self.0.dims()[1]
    }

    /// The number of samples per channel.
    #[must_use]
    pub fn time(&self) -> usize {
        self.0.dims()[2]
    }
}

/// A batch of MFCC windows, `(batch, n_mfcc, frames)`.
#[derive(Debug, Clone)]
pub struct MfccBatch(Tensor);

impl MfccBatch {
    /// The number of coefficients the audio encoder reads.
    pub const N_MFCC: usize = 13;

    /// Wraps `t` if it is `(batch, 13, frames)`; `frames` of `Some(n)` must match exactly.
    ///
    /// # Errors
    /// A [`ShapeError`] naming the rank, batch, coefficients or frames axis.
    pub fn new(t: Tensor, frames: Option<usize>) -> Result<Self, ShapeError> {
        check(
            "MfccBatch",
            &t,
            &[
                (Axis::Batch, Want::Any),
                (Axis::Coefficients, Want::Exactly(Self::N_MFCC)),
                (Axis::Frames, want(frames)),
            ],
        )?;
        Ok(Self(t))
    }

    /// The tensor, `(batch, 13, frames)`.
    #[must_use]
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }

    /// Gives the tensor back.
    #[must_use]
    pub fn into_tensor(self) -> Tensor {
        self.0
    }

    /// The batch size.
    #[must_use]
    pub fn batch(&self) -> usize {
        self.0.dims()[0]
    }

    /// The number of frames.
    #[must_use]
    pub fn frames(&self) -> usize {
        self.0.dims()[2]
    }
}

/// A batch of video windows, `(batch, frames, height, width)`: one luma plane per frame.
#[derive(Debug, Clone)]
pub struct VideoBatch(Tensor);

impl VideoBatch {
    /// Wraps `t` if it is `(batch, frames, height, width)`; a `Some` size must match exactly.
    ///
    /// # Errors
    /// A [`ShapeError`] naming the rank, batch, frames, height or width axis.
    pub fn new(
        t: Tensor,
        frames: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
    ) -> Result<Self, ShapeError> {
        check(
            "VideoBatch",
            &t,
            &[
                (Axis::Batch, Want::Any),
                (Axis::Frames, want(frames)),
                (Axis::Height, want(height)),
                (Axis::Width, want(width)),
            ],
        )?;
        Ok(Self(t))
    }

    /// The tensor, `(batch, frames, height, width)`.
    #[must_use]
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }

    /// The batch size.
    #[must_use]
    pub fn batch(&self) -> usize {
        self.0.dims()[0]
    }

    /// The number of frames.
    #[must_use]
    pub fn frames(&self) -> usize {
        self.0.dims()[1]
    }

    /// `(height, width)` of every frame.
    #[must_use]
    pub fn frame_size(&self) -> (usize, usize) {
        (self.0.dims()[2], self.0.dims()[3])
    }
}

/// A batch of encoded sequences, `(batch, steps, dim)`, with the time of each step in seconds from the start
/// of the window (the centre of the step's receptive field). Every modality's steps are on this one clock,
/// whatever their rate.
#[derive(Debug, Clone)]
pub struct Sequence {
    tensor: Tensor,
    times: Vec<f64>,
}

impl Sequence {
    /// Wraps `t` if it is `(batch, steps, dim)` with exactly `dim` features and `times.len()` steps.
    ///
    /// # Errors
    /// A [`ShapeError`] naming the rank, batch, steps or dim axis.
    pub fn new(t: Tensor, dim: usize, times: Vec<f64>) -> Result<Self, ShapeError> {
        check(
            "Sequence",
            &t,
            &[
                (Axis::Batch, Want::Any),
                (Axis::Steps, Want::Exactly(times.len())),
                (Axis::Dim, Want::Exactly(dim)),
            ],
        )?;
        Ok(Self { tensor: t, times })
    }

    /// The tensor, `(batch, steps, dim)`.
    #[must_use]
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    /// The time of each step in seconds from the window start.
    #[must_use]
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// The batch size.
    #[must_use]
    pub fn batch(&self) -> usize {
        self.tensor.dims()[0]
    }

    /// The number of steps.
    #[must_use]
    pub fn steps(&self) -> usize {
        self.tensor.dims()[1]
    }

    /// The feature size.
    #[must_use]
    pub fn dim(&self) -> usize {
        self.tensor.dims()[2]
    }
}

/// Checks that two batches hold the same number of samples (an EEG and an MFCC batch to be fused).
///
/// # Errors
/// A [`ShapeError`] on the batch axis of `what`.
pub fn same_batch(what: &'static str, expected: usize, t: &Tensor) -> Result<(), ShapeError> {
    let dims = t.dims();
    match dims.first() {
        Some(&b) if b == expected => Ok(()),
        got => Err(ShapeError {
            what,
            axis: if got.is_some() { Axis::Batch } else { Axis::Rank },
            expected: expected.to_string(),
            got: got.copied().unwrap_or(0),
            shape: dims.to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use proptest::prelude::*;

    fn zeros(dims: &[usize]) -> Tensor {
        Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
    }

    /// Any shape of rank 0–4 with sizes 0–6.
    fn any_shape() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0usize..7, 0..5)
    }

    /// The axis a checker must name for `dims` against `spec`, or `None` when it must accept.
    fn expected_failure(dims: &[usize], spec: &[(Axis, Option<usize>)]) -> Option<Axis> {
        if dims.len() != spec.len() {
            return Some(Axis::Rank);
        }
        dims.iter().zip(spec).find_map(|(&d, &(axis, want))| match want {
            Some(n) if d != n => Some(axis),
            None if d == 0 => Some(axis),
            _ => None,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn latent_accepts_exactly_batch_by_dim(dims in any_shape(), dim in 1usize..7) {
            let spec = [(Axis::Batch, None), (Axis::Dim, Some(dim))];
            let got = Latent::new(zeros(&dims), dim);
            match expected_failure(&dims, &spec) {
                None => {
                    let l = got.unwrap();
                    prop_assert_eq!((l.batch(), l.dim()), (dims[0], dims[1]));
                    let t = l.into_tensor();
                    prop_assert_eq!(t.dims(), &dims[..]);
                }
                Some(axis) => {
                    let err = got.unwrap_err();
                    prop_assert_eq!(err.axis, axis);
                    prop_assert_eq!(&err.shape, &dims);
                }
            }
        }

        #[test]
        fn eeg_batch_checks_every_axis(
            dims in any_shape(),
            channels in prop::option::of(1usize..7),
            time in prop::option::of(1usize..7),
        ) {
            let spec = [(Axis::Batch, None), (Axis::Channels, channels), (Axis::Time, time)];
            let got = EegBatch::new(zeros(&dims), channels, time);
            match expected_failure(&dims, &spec) {
                None => {
                    let b = got.unwrap();
                    prop_assert_eq!((b.batch(), b.channels(), b.time()), (dims[0], dims[1], dims[2]));
                }
                Some(axis) => prop_assert_eq!(got.unwrap_err().axis, axis),
            }
        }

        #[test]
        fn mfcc_batch_requires_13_coefficients(
            batch in 0usize..4,
            coeffs in prop::sample::select(vec![1usize, 12, 13, 14, 20]),
            frames in 0usize..7,
            want_frames in prop::option::of(1usize..7),
        ) {
            let dims = [batch, coeffs, frames];
            let spec = [(Axis::Batch, None), (Axis::Coefficients, Some(13)), (Axis::Frames, want_frames)];
            let got = MfccBatch::new(zeros(&dims), want_frames);
            match expected_failure(&dims, &spec) {
                None => prop_assert_eq!(got.unwrap().frames(), frames),
                Some(axis) => prop_assert_eq!(got.unwrap_err().axis, axis),
            }
        }
    }

    #[test]
    fn error_names_the_axis_and_sizes() {
        let err = Latent::new(zeros(&[4, 64]), 128).unwrap_err();
        assert_eq!(err.to_string(), "Latent: dim is 64, expected 128 (shape [4, 64])");
        let err = EegBatch::new(zeros(&[28, 512]), None, None).unwrap_err();
        assert_eq!(err.axis, Axis::Rank);
        assert_eq!((err.expected.as_str(), err.got), ("3", 2));
    }

    #[test]
    fn sequence_checks_steps_against_its_times() {
        let s = Sequence::new(zeros(&[2, 3, 4]), 4, vec![0.1, 0.2, 0.3]).unwrap();
        assert_eq!((s.batch(), s.steps(), s.dim(), s.times()), (2, 3, 4, &[0.1, 0.2, 0.3][..]));
        let err = Sequence::new(zeros(&[2, 3, 4]), 4, vec![0.1, 0.2]).unwrap_err();
        assert_eq!((err.axis, err.got), (Axis::Steps, 3));
        assert_eq!(Sequence::new(zeros(&[2, 3, 5]), 4, vec![0.0; 3]).unwrap_err().axis, Axis::Dim);
        assert_eq!(Sequence::new(zeros(&[2, 3]), 4, vec![0.0; 3]).unwrap_err().axis, Axis::Rank);
    }

    #[test]
    fn same_batch_rejects_mismatch() {
        assert!(same_batch("audio", 4, &zeros(&[4, 13, 5])).is_ok());
        assert_eq!(same_batch("audio", 4, &zeros(&[3, 13, 5])).unwrap_err().axis, Axis::Batch);
    }
}
