//! [`Mfcc`]: a planner built once per configuration that turns signals into mel-dB spectrograms and MFCCs.

use std::sync::Arc;

use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::config::MfccConfig;
use crate::error::{Error, Result};
use crate::mel::{MelFilterbank, dct_ortho_matrix, periodic_hann_padded};

/// Frames per parallel task: enough to amortise a task, small enough to balance 2–16 cores. Even, so that
/// the frame pairs sharing an FFT are the same however the frames are split.
const FRAMES_PER_TASK: usize = 512;

/// `power_to_db`'s floor on power values.
pub const AMIN: f64 = 1e-10;

/// A sample type the planner accepts.
pub trait Sample: Copy + Send + Sync {
    /// Zero (the value `center` pads the signal with).
    const ZERO: Self;
    /// The value as `f64` (all computation runs in `f64`).
    fn to_f64(self) -> f64;
}

impl Sample for f32 {
    const ZERO: Self = 0.0;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Sample for f64 {
    const ZERO: Self = 0.0;
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
    /// A complex FFT of `n_fft` points: two real frames go through it at once, one as the real part and
    /// one as the imaginary part.
    fft: Arc<dyn Fft<f64>>,
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
        let fft = FftPlanner::<f64>::new().plan_fft_forward(cfg.n_fft);
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
        let pairs: Vec<[f64; 2]> = mel_db.iter().map(|&v| [v, 0.0]).collect();
        let mut fold = Vec::new();
        self.dct_pair(&pairs, &mut fold, |k, c| out[k] = c[0]);
    }

    /// The orthonormal DCT-II of two frames side by side (`x[i] = [a_i, b_i]`), coefficient `k` handed
    /// to `out(k, [A_k, B_k])`. Row k of the basis is symmetric about the middle for even k and
    /// antisymmetric for odd k, so the frame is folded first (`x_i ± x_{N−1−i}`), halving the products.
    #[inline]
    fn dct_pair(&self, x: &[[f64; 2]], fold: &mut Vec<[f64; 2]>, mut out: impl FnMut(usize, [f64; 2])) {
        let n = x.len();
        let h = n.div_ceil(2);
        fold.clear();
        fold.resize(2 * h, [0.0; 2]);
        let (even, odd) = fold.split_at_mut(h);
        for i in 0..n / 2 {
            let (a, b) = (x[i], x[n - 1 - i]);
            even[i] = [a[0] + b[0], a[1] + b[1]];
            odd[i] = [a[0] - b[0], a[1] - b[1]];
        }
        if n % 2 == 1 {
            // The middle value: weight cos(πk/2)·scale, zero for odd k.
            even[h - 1] = x[h - 1];
        }
        for (k, basis) in self.dct.chunks_exact(n).enumerate() {
            out(k, dot2(&basis[..h], if k % 2 == 0 { even } else { odd }));
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
        first_non_finite(signal)?;

        let mut out = vec![0.0; frames * cfg.n_mels];
        let mut dct_out = if with_dct { vec![0.0; frames * cfg.n_mfcc] } else { Vec::new() };
        // Mel power, 10·log10(max(S, amin)) and (optionally) the DCT per frame, in parallel; each chunk
        // reports its maximum.
        let max = for_frame_chunks(&mut out, cfg.n_mels, &mut dct_out, cfg.n_mfcc, |first, chunk, dct| {
            crate::simd::with_best_features(|| {
                self.mel_db_frames(signal, first, chunk, with_dct.then_some(dct))
            })
        });
        // The floor at (clip maximum − top_db).
        if let Some(top_db) = cfg.top_db {
            let floor = max - top_db;
            let clip = |col: &mut [f64], dct: Option<&mut [f64]>| {
                if col.iter().any(|&v| v < floor) {
                    for v in col.iter_mut() {
                        *v = v.max(floor);
                    }
                    if let Some(d) = dct {
                        self.dct_frame(col, d);
                    }
                }
            };
            let cols = out.par_chunks_exact_mut(cfg.n_mels);
            if with_dct {
                cols.zip(dct_out.par_chunks_exact_mut(cfg.n_mfcc)).for_each(|(c, d)| clip(c, Some(d)));
            } else {
                cols.for_each(|c| clip(c, None));
            }
        }
        Ok((frames, out, dct_out))
    }

    /// dB mel power of frames `first_frame..` into `out` (`n_mels` values per frame), without the
    /// `top_db` floor, and their DCT into `dct` when given; returns the largest dB value.
    #[inline(always)]
    fn mel_db_frames<T: Sample>(
        &self,
        signal: &[T],
        first_frame: usize,
        out: &mut [f64],
        dct: Option<&mut [f64]>,
    ) -> f64 {
        let cfg = &self.cfg;
        let (n_fft, n_bins, n_mels, win) = (cfg.n_fft, cfg.n_bins(), cfg.n_mels, cfg.win_length);
        // Only the window's non-zero span [left, left + win_length) contributes. Frame t starts at
        // t·hop in the padded signal, i.e. at t·hop + left − pad in `signal`.
        let left = (n_fft - win) / 2;
        let pad = if cfg.center { n_fft / 2 } else { 0 };
        let window = &self.window[left..left + win];
        let zero = Complex::new(0.0, 0.0);
        let mut buf = vec![zero; n_fft];
        let mut scratch = vec![zero; self.fft.get_inplace_scratch_len()];
        // Both frames of a pair side by side: [frame a, frame b] per bin, per band, per coefficient.
        let mut power = vec![[0.0; 2]; n_bins];
        let mut mel_db = vec![[0.0; 2]; n_mels];
        let mut fold = Vec::with_capacity(n_mels + 1);
        // Frames that reach into the padding (or a missing partner frame) are copied here first.
        let (mut edge_a, mut edge_b) = (Vec::new(), Vec::new());
        let mut max = f64::NEG_INFINITY;
        let mut dct = dct.map(|d| d.chunks_mut(2 * cfg.n_mfcc));
        // Frames go in pairs: z = a + i·b, Z = FFT(z), then A[k] = (Z[k] + conj Z[N−k]) / 2 and
        // B[k] = (Z[k] − conj Z[N−k]) / 2i. A lone last frame is paired with zeros.
        for (pair, cols) in out.chunks_mut(2 * n_mels).enumerate() {
            let t = first_frame + 2 * pair;
            let a = frame_samples(signal, (t * cfg.hop_length + left).wrapping_sub(pad), win, &mut edge_a);
            let b = if cols.len() > n_mels {
                frame_samples(signal, ((t + 1) * cfg.hop_length + left).wrapping_sub(pad), win, &mut edge_b)
            } else {
                edge_b.clear();
                edge_b.resize(win, T::ZERO);
                &edge_b
            };
            // The FFT works in place: the padding around the window is zeroed again every time.
            let (head, rest) = buf.split_at_mut(left);
            let (body, tail) = rest.split_at_mut(win);
            head.fill(zero);
            tail.fill(zero);
            for (((z, w), x), y) in body.iter_mut().zip(window).zip(a).zip(b) {
                *z = Complex::new(w * x.to_f64(), w * y.to_f64());
            }
            self.fft.process_with_scratch(&mut buf, &mut scratch);
            // |Z[k] ± conj Z[N−k]|² / 4; Z[N − 0] is Z[0].
            let (z0, rest) = buf.split_first().expect("n_fft ≥ 1");
            power[0] = [z0.re * z0.re, z0.im * z0.im];
            let mirror = buf[n_fft + 1 - n_bins..].iter().rev();
            for ((z, m), p) in rest.iter().zip(mirror).zip(&mut power[1..]) {
                let (re_a, im_a) = (z.re + m.re, z.im - m.im);
                let (re_b, im_b) = (z.im + m.im, m.re - z.re);
                *p = [0.25 * (re_a * re_a + im_a * im_a), 0.25 * (re_b * re_b + im_b * im_b)];
            }
            self.mel.apply(&power, &mut mel_db);
            if mel_db.iter().all(|v| v[0].is_finite() && v[1].is_finite()) {
                for v in &mut mel_db {
                    *v = v.map(|x| 10.0 * log10_finite(x.max(AMIN)));
                }
            } else {
                for v in &mut mel_db {
                    *v = v.map(|x| 10.0 * x.max(AMIN).log10());
                }
            }
            for (lane, col) in cols.chunks_exact_mut(n_mels).enumerate() {
                for (c, v) in col.iter_mut().zip(&mel_db) {
                    *c = v[lane];
                    max = max.max(v[lane]);
                }
            }
            if let Some(d) = dct.as_mut().and_then(Iterator::next) {
                let n_mfcc = cfg.n_mfcc;
                self.dct_pair(&mel_db, &mut fold, |k, c| {
                    for (lane, out) in d.chunks_exact_mut(n_mfcc).enumerate() {
                        out[k] = c[lane];
                    }
                });
            }
        }
        max
    }
}

/// `len` samples of `signal` from `start` (wrapped: a "negative" start reads as zeros before the
/// signal), zeros outside the signal; a plain slice when the frame lies inside, else copied into `edge`.
#[inline]
fn frame_samples<'a, T: Sample>(signal: &'a [T], start: usize, len: usize, edge: &'a mut Vec<T>) -> &'a [T] {
    if let Some(frame) = signal.get(start..).and_then(|s| s.get(..len)) {
        return frame;
    }
    edge.clear();
    edge.resize(len, T::ZERO);
    for (i, e) in edge.iter_mut().enumerate() {
        if let Some(&x) = signal.get(start.wrapping_add(i)) {
            *e = x;
        }
    }
    edge
}

/// [`Error::NonFinite`] for the first NaN or infinite sample, checked in parallel blocks (vectorised).
fn first_non_finite<T: Sample>(signal: &[T]) -> Result<()> {
    const BLOCK: usize = 16_384;
    let bad = signal
        .par_chunks(BLOCK)
        .position_first(|b| !b.iter().fold(true, |ok, x| ok & x.to_f64().is_finite()));
    match bad {
        None => Ok(()),
        Some(b) => {
            let (i, x) = signal[b * BLOCK..]
                .iter()
                .enumerate()
                .find(|(_, x)| !x.to_f64().is_finite())
                .expect("one is");
            Err(Error::NonFinite { index: b * BLOCK + i, value: x.to_f64() })
        }
    }
}

/// `log10(x)` for finite `x ≥ 1e-300`, within a few ulps of `f64::log10`, in branch-free arithmetic the
/// compiler vectorises (the libm call was a fifth of the MFCC time): `x = m·2^e` with `m` in [√½, √2),
/// `ln m = 2·atanh(s)`, `s = (m − 1)/(m + 1)`, `|s| ≤ 0.172`, summed to `s²³` (the next term is below
/// 1e-18 relative).
#[inline]
pub(crate) fn log10_finite(x: f64) -> f64 {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let big = m > std::f64::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = (exp + i64::from(big)) as f64;
    let s = (m - 1.0) / (m + 1.0);
    // p = Σ_{k<12} s2^k / (2k + 1), in Estrin's scheme: short dependency chains, so that neighbouring
    // values overlap in the pipeline.
    let c = |k: u32| 1.0 / f64::from(2 * k + 1);
    let s2 = s * s;
    let s4 = s2 * s2;
    let s8 = s4 * s4;
    let q = |k: u32| (c(k) + c(k + 1) * s2) + (c(k + 2) + c(k + 3) * s2) * s4;
    let p = q(0) + q(4) * s8 + q(8) * (s8 * s8);
    (e * std::f64::consts::LN_2 + 2.0 * s * p) * std::f64::consts::LOG10_E
}

/// `Σ w·x` for two vectors `x` at once (`x[i] = [a_i, b_i]`), with four independent accumulators.
#[inline]
pub(crate) fn dot2(w: &[f64], x: &[[f64; 2]]) -> [f64; 2] {
    let mut acc = [[0.0; 2]; 4];
    let (cw, cx) = (w.chunks_exact(4), x.chunks_exact(4));
    let mut tail = [0.0; 2];
    for (w, x) in cw.remainder().iter().zip(cx.remainder()) {
        tail = [tail[0] + w * x[0], tail[1] + w * x[1]];
    }
    for (w, x) in cw.zip(cx) {
        for i in 0..4 {
            acc[i] = [acc[i][0] + w[i] * x[i][0], acc[i][1] + w[i] * x[i][1]];
        }
    }
    std::array::from_fn(|l| (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]) + tail[l])
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
    data.par_chunks_mut(frames.max(1)).enumerate().for_each(|(r, row)| {
        for (d, col) in row.iter_mut().zip(by_frame.chunks_exact(n)) {
            *d = col[r];
        }
    });
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

    /// The AVX2 build of the per-frame pass and the baseline build give the same bits.
    #[test]
    fn vector_width_does_not_change_the_numbers() {
        let planner = Mfcc::new(MfccConfig::project()).unwrap();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let signal: Vec<f32> = (0..16_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        let frames = planner.n_frames(signal.len()).unwrap();
        let (n_mels, n_mfcc) = (planner.cfg.n_mels, planner.cfg.n_mfcc);
        let run = |best: bool| {
            let (mut mel, mut dct) = (vec![0.0; frames * n_mels], vec![0.0; frames * n_mfcc]);
            let max = if best {
                crate::simd::with_best_features(|| {
                    planner.mel_db_frames(&signal, 0, &mut mel, Some(&mut dct))
                })
            } else {
                planner.mel_db_frames(&signal, 0, &mut mel, Some(&mut dct))
            };
            (max.to_bits(), mel.iter().chain(&dct).map(|v| v.to_bits()).collect::<Vec<_>>())
        };
        assert_eq!(run(true), run(false));
    }

    #[test]
    fn folded_dct_equals_the_matrix_product() {
        for n_mels in [40, 41] {
            let planner = Mfcc::new(MfccConfig { n_mels, ..MfccConfig::project() }).unwrap();
            let x: Vec<f64> = (0..n_mels).map(|i| ((i * 37 % 11) as f64 - 5.0) * 3.7).collect();
            let mut got = vec![0.0; planner.cfg.n_mfcc];
            planner.dct_frame(&x, &mut got);
            for (k, g) in got.iter().enumerate() {
                let want: f64 = (0..n_mels).map(|i| planner.dct[k * n_mels + i] * x[i]).sum();
                assert!((g - want).abs() < 1e-12, "n_mels {n_mels}, k {k}: {g} vs {want}");
            }
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
