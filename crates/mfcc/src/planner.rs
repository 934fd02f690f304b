//! [`Mfcc`]: a planner built once per configuration that turns signals into mel-dB spectrograms and MFCCs.

use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

use crate::config::MfccConfig;
use crate::error::{Error, Result};
use crate::mel::{MelFilterbank, dct_ortho_matrix, periodic_hann_padded};

/// Frames per parallel task: enough to amortise a task, small enough to balance 2–16 cores.
const FRAMES_PER_TASK: usize = 512;

/// `power_to_db`'s floor on power values.
pub const AMIN: f64 = 1e-10;

/// A sample type the planner accepts.
pub trait Sample: Copy {
    /// The value as `f64` (all computation runs in `f64`).
    fn to_f64(self) -> f64;
}

impl Sample for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Sample for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// A dense row-major matrix of features, `(rows, cols)`: coefficients or mel bands by frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    rows: usize,
    cols: usize,
    data: Vec<f64>,
}

impl Features {
    /// `(rows, cols)`.
    #[must_use]
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Row `r` (one coefficient or band over all frames).
    ///
    /// # Panics
    /// When `r ≥ rows`.
    #[must_use]
    pub fn row(&self, r: usize) -> &[f64] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Iterates over the rows.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[f64]> {
        self.data.chunks_exact(self.cols.max(1)).take(self.rows)
    }

    /// All values, row-major.
    #[must_use]
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// All values, row-major, consuming the matrix.
    #[must_use]
    pub fn into_vec(self) -> Vec<f64> {
        self.data
    }

    /// The matrix with only its first `cols` columns (frames), e.g. 501 → 500.
    #[must_use]
    pub fn crop_cols(&self, cols: usize) -> Self {
        let cols = cols.min(self.cols);
        let data = self.rows().flat_map(|r| r[..cols].iter().copied()).collect();
        Self { rows: self.rows, cols, data }
    }
}

/// The MFCC pipeline for one [`MfccConfig`]: window, mel filterbank, DCT matrix and FFT plan are computed
/// once in [`Mfcc::new`]; [`Mfcc::mfcc`] and [`Mfcc::mel_db`] can then be called from any thread.
#[derive(Clone)]
pub struct Mfcc {
    cfg: MfccConfig,
    window: Vec<f64>,
    mel: MelFilterbank,
    dct: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for Mfcc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mfcc").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Mfcc {
    /// Validates `cfg` and plans everything.
    ///
    /// # Errors
    /// [`Error::Config`] when a parameter is out of range.
    pub fn new(cfg: MfccConfig) -> Result<Self> {
        cfg.validate()?;
        let window = periodic_hann_padded(cfg.win_length, cfg.n_fft);
        let mel = MelFilterbank::slaney(&cfg);
        let dct = dct_ortho_matrix(cfg.n_mfcc, cfg.n_mels);
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(cfg.n_fft);
        Ok(Self { cfg, window, mel, dct, fft })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &MfccConfig {
        &self.cfg
    }

    /// The mel filterbank, `(n_mels, n_fft / 2 + 1)`, with librosa's float32 values.
    #[must_use]
    pub fn mel_basis(&self) -> Features {
        let (rows, cols) = (self.cfg.n_mels, self.cfg.n_bins());
        Features { rows, cols, data: self.mel.dense(cols) }
    }

    /// The analysis window, zero-padded to `n_fft`.
    #[must_use]
    pub fn window(&self) -> &[f64] {
        &self.window
    }

    /// Number of frames for a signal of `len` samples.
    ///
    /// # Errors
    /// [`Error::Empty`] for `len = 0`, [`Error::TooShort`] when `center` is off and `len < n_fft`.
    pub fn n_frames(&self, len: usize) -> Result<usize> {
        if len == 0 {
            return Err(Error::Empty);
        }
        let padded = if self.cfg.center { len + 2 * (self.cfg.n_fft / 2) } else { len };
        if padded < self.cfg.n_fft {
            return Err(Error::TooShort { len, n_fft: self.cfg.n_fft });
        }
        Ok(1 + (padded - self.cfg.n_fft) / self.cfg.hop_length)
    }

    /// The log-power mel spectrogram, `(n_mels, frames)`, in dB with the `top_db` floor applied:
    /// librosa's `power_to_db(melspectrogram(y))`.
    ///
    /// # Errors
    /// See [`Mfcc::n_frames`]; [`Error::NonFinite`] for a NaN or infinite sample.
    pub fn mel_db<T: Sample>(&self, signal: &[T]) -> Result<Features> {
        let (frames, by_frame, _) = self.mel_db_by_frame(signal, false)?;
        Ok(transpose(&by_frame, frames, self.cfg.n_mels))
    }

    /// The MFCCs, `(n_mfcc, frames)`: librosa's `feature.mfcc(y=y, …)`.
    ///
    /// # Errors
    /// As [`Mfcc::mel_db`].
    pub fn mfcc<T: Sample>(&self, signal: &[T]) -> Result<Features> {
        // The DCT runs in the same pass as the mel spectrogram, on the values before the top_db floor;
        // frames where the floor clips a value (silence, mostly) are transformed again afterwards.
        let (frames, _, cepstra) = self.mel_db_by_frame(signal, true)?;
        Ok(transpose(&cepstra, frames, self.cfg.n_mfcc))
    }

    /// The orthonormal DCT-II of one frame's dB values.
    fn dct_frame(&self, mel_db: &[f64], out: &mut [f64]) {
        for (o, basis) in out.iter_mut().zip(self.dct.chunks_exact(mel_db.len())) {
            *o = dot(basis, mel_db);
        }
    }

    /// dB mel values laid out frame-major, `(frames, n_mels)`, floored at `top_db` below the maximum.
    /// With `with_dct`, also the MFCCs, frame-major `(frames, n_mfcc)`, computed in the same pass
    /// (otherwise that vector is empty).
    fn mel_db_by_frame<T: Sample>(
        &self,
        signal: &[T],
        with_dct: bool,
    ) -> Result<(usize, Vec<f64>, Vec<f64>)> {
        let frames = self.n_frames(signal.len())?;
        let cfg = &self.cfg;
        let pad = if cfg.center { cfg.n_fft / 2 } else { 0 };
        // The padded signal in f64, once: every frame is then a plain slice of it.
        let mut padded = Vec::with_capacity(signal.len() + 2 * pad);
        padded.resize(pad, 0.0);
        padded.extend(signal.iter().map(|s| s.to_f64()));
        padded.resize(signal.len() + 2 * pad, 0.0);
        if let Some(i) = padded[pad..pad + signal.len()].iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { index: i, value: padded[pad + i] });
        }

        let mut out = vec![0.0; frames * cfg.n_mels];
        let mut dct_out = if with_dct { vec![0.0; frames * cfg.n_mfcc] } else { Vec::new() };
        // Mel power, 10·log10(max(S, amin)) and (optionally) the DCT per frame, in parallel; each chunk
        // reports its maximum.
        let max = for_frame_chunks(&mut out, cfg.n_mels, &mut dct_out, cfg.n_mfcc, |first, chunk, dct| {
            self.mel_db_frames(&padded, first, chunk, with_dct.then_some(dct))
        });
        // The floor at (clip maximum − top_db).
        if let Some(top_db) = cfg.top_db {
            let floor = max - top_db;
            let n_mfcc = cfg.n_mfcc;
            for (t, col) in out.chunks_exact_mut(cfg.n_mels).enumerate() {
                if col.iter().any(|&v| v < floor) {
                    for v in col.iter_mut() {
                        *v = v.max(floor);
                    }
                    if with_dct {
                        self.dct_frame(col, &mut dct_out[t * n_mfcc..][..n_mfcc]);
                    }
                }
            }
        }
        Ok((frames, out, dct_out))
    }

    /// dB mel power of frames `first_frame..` into `out` (`n_mels` values per frame), from the padded
    /// signal, without the `top_db` floor, and their DCT into `dct` when given; returns the largest
    /// dB value.
    fn mel_db_frames(
        &self,
        padded: &[f64],
        first_frame: usize,
        out: &mut [f64],
        dct: Option<&mut [f64]>,
    ) -> f64 {
        let cfg = &self.cfg;
        // Only the window's non-zero span [left, left + win_length) contributes.
        let left = (cfg.n_fft - cfg.win_length) / 2;
        let span = left..left + cfg.win_length;
        let window = &self.window[span.clone()];
        let mut buf = self.fft.make_input_vec();
        let mut spec = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0; cfg.n_bins()];
        let mut max = f64::NEG_INFINITY;
        for (t, mel_col) in out.chunks_exact_mut(cfg.n_mels).enumerate() {
            let start = (first_frame + t) * cfg.hop_length + span.start;
            // The FFT uses its input as scratch: zero the padding around the window each frame.
            let (head, rest) = buf.split_at_mut(span.start);
            let (body, tail) = rest.split_at_mut(cfg.win_length);
            head.fill(0.0);
            tail.fill(0.0);
            for ((b, w), x) in body.iter_mut().zip(window).zip(&padded[start..start + cfg.win_length]) {
                *b = w * x;
            }
            self.fft
                .process_with_scratch(&mut buf, &mut spec, &mut scratch)
                .expect("buffers come from the plan, so their lengths fit");
            for (p, c) in power.iter_mut().zip(&spec) {
                *p = c.norm_sqr();
            }
            self.mel.apply(&power, mel_col);
            if mel_col.iter().all(|v| v.is_finite()) {
                for v in mel_col.iter_mut() {
                    *v = 10.0 * log10_finite(v.max(AMIN));
                }
            } else {
                for v in mel_col.iter_mut() {
                    *v = 10.0 * v.max(AMIN).log10();
                }
            }
            max = mel_col.iter().fold(max, |a, &v| a.max(v));
        }
        if let Some(dct) = dct {
            for (col, c) in out.chunks_exact(cfg.n_mels).zip(dct.chunks_exact_mut(cfg.n_mfcc)) {
                self.dct_frame(col, c);
            }
        }
        max
    }
}

/// `log10(x)` for finite `x ≥ 1e-300`, within a few ulps of `f64::log10`, in branch-free arithmetic the
/// compiler vectorises (the libm call was a fifth of the MFCC time): `x = m·2^e` with `m` in [√½, √2),
/// `ln m = 2·atanh(s)`, `s = (m − 1)/(m + 1)`, `|s| ≤ 0.172`, summed to `s²³` (the next term is below
/// 1e-18 relative).
pub(crate) fn log10_finite(x: f64) -> f64 {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let big = m > std::f64::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = (exp + i64::from(big)) as f64;
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut p = 1.0 / 23.0;
    for k in (0..11).rev() {
        p = p * s2 + 1.0 / f64::from(2 * k + 1);
    }
    (e * std::f64::consts::LN_2 + 2.0 * s * p) * std::f64::consts::LOG10_E
}

/// `Σ a·b` with four independent accumulators (pipelined, and vectorised by the compiler).
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += x[i] * y[i];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Splits `out` (`per_frame` values per frame) and `extra` (`extra_per_frame` values per frame, or empty)
/// into chunks of whole frames, runs `f(first_frame, chunk, extra_chunk)` on each in parallel (rayon's
/// pool), and returns the maximum of the results. Each frame is computed alone, so the result does not
/// depend on the split.
fn for_frame_chunks<F>(
    out: &mut [f64],
    per_frame: usize,
    extra: &mut [f64],
    extra_per_frame: usize,
    f: F,
) -> f64
where
    F: Fn(usize, &mut [f64], &mut [f64]) -> f64 + Sync,
{
    let frames = out.len() / per_frame;
    let chunk = FRAMES_PER_TASK.min(frames.max(1));
    let extra_step = if extra.is_empty() { 0 } else { chunk * extra_per_frame };
    let mut extra_chunks: Vec<&mut [f64]> =
        if extra.is_empty() { Vec::new() } else { extra.chunks_mut(extra_step).collect() };
    extra_chunks.resize_with(frames.div_ceil(chunk), Default::default);
    out.par_chunks_mut(chunk * per_frame)
        .zip(extra_chunks.into_par_iter())
        .enumerate()
        .map(|(i, (c, ex))| f(i * chunk, c, ex))
        .reduce(|| f64::NEG_INFINITY, f64::max)
}

/// `(frames, n)` frame-major values as `(n, frames)` [`Features`].
fn transpose(by_frame: &[f64], frames: usize, n: usize) -> Features {
    let mut data = vec![0.0; n * frames];
    for (t, col) in by_frame.chunks_exact(n).enumerate() {
        for (r, &v) in col.iter().enumerate() {
            data[r * frames + t] = v;
        }
    }
    Features { rows: n, cols: frames, data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn log10_matches_the_standard_library(exp in -10.0f64..30.0, frac in 0.0f64..1.0) {
            let x = 10f64.powf(exp) * (1.0 + frac);
            let (a, b) = (log10_finite(x), x.log10());
            prop_assert!((a - b).abs() <= 4.0 * f64::EPSILON * b.abs().max(1.0), "{} vs {} at {}", a, b, x);
        }
    }

    #[test]
    fn log10_at_powers_of_ten_and_around_one() {
        for k in -10..=30 {
            let x = 10f64.powi(k);
            assert!((log10_finite(x) - f64::from(k)).abs() < 1e-14, "{x}");
        }
        for x in [1.0, 1.0 + 1e-12, 1.0 - 1e-12, std::f64::consts::SQRT_2, 0.707_2, 1.414_3, 1e-300] {
            assert!((log10_finite(x) - x.log10()).abs() < 4.0 * f64::EPSILON, "{x}");
        }
    }
}
