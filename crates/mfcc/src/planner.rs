//! [`Mfcc`]: a planner built once per configuration that turns signals into mel-dB spectrograms and MFCCs.

use std::sync::Arc;

use rayon::prelude::*;
use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use crate::config::MfccConfig;
use crate::error::{Error, Result};
use crate::float::{Float, Sample};
use crate::mel::{MelFilterbank, dct_ortho_matrix, periodic_hann_padded};
use crate::simd::Pass;

/// Frames per parallel task: enough to amortise a task, small enough to balance 2–16 cores. A multiple of
/// [`LANES`], so that the frame pairs sharing an FFT are the same however the frames are split.
const FRAMES_PER_TASK: usize = 512;

/// Frames carried side by side after the FFT (one value per frame in each `[F; LANES]`): the mel
/// weighting, `log10` and the DCT then run on whole vector registers (8 × f32 is one AVX2 register).
/// Even: frames share FFTs in pairs.
const LANES: usize = 8;

/// `power_to_db`'s floor on power values.
pub const AMIN: f64 = 1e-10;

/// A dense row-major matrix of features, `(rows, cols)`: coefficients or mel bands by frames.
#[derive(Debug, Clone, PartialEq)]
pub struct Features<F = f64> {
    rows: usize,
    cols: usize,
    data: Vec<F>,
}

impl<F: Copy> Features<F> {
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
    pub fn row(&self, r: usize) -> &[F] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Iterates over the rows.
    pub fn rows(&self) -> impl ExactSizeIterator<Item = &[F]> {
        self.data.chunks_exact(self.cols.max(1)).take(self.rows)
    }

    /// All values, row-major.
    #[must_use]
    pub fn as_slice(&self) -> &[F] {
        &self.data
    }

    /// All values, row-major, consuming the matrix.
    #[must_use]
    pub fn into_vec(self) -> Vec<F> {
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

impl<F: Float> Features<F> {
    /// The same matrix in `f64` (exact: every `f32` is an `f64`).
    #[must_use]
    pub fn to_f64(&self) -> Features<f64> {
        Features {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(|&v| Sample::to_f64(v)).collect(),
        }
    }
}

/// The MFCC pipeline for one [`MfccConfig`], computing in precision `F` (`f64` by default; `f32` as librosa
/// does for float32 input): window, mel filterbank, DCT matrix and FFT plan are computed once in
/// [`Mfcc::new`] / [`Mfcc::with_precision`]; [`Mfcc::mfcc`] and [`Mfcc::mel_db`] can then be called from
/// any thread.
#[derive(Clone)]
pub struct Mfcc<F: Float = f64> {
    cfg: MfccConfig,
    window: Vec<F>,
    mel: MelFilterbank<F>,
    dct: Vec<F>,
    /// A complex FFT of `n_fft` points: two real frames go through it at once, one as the real part and
    /// one as the imaginary part.
    fft: Arc<dyn Fft<F>>,
}

impl<F: Float> std::fmt::Debug for Mfcc<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mfcc")
            .field("cfg", &self.cfg)
            .field("precision", &std::any::type_name::<F>())
            .finish_non_exhaustive()
    }
}

impl Mfcc {
    /// Validates `cfg` and plans everything, computing in `f64`.
    ///
    /// # Errors
    /// [`Error::Config`] when a parameter is out of range.
    pub fn new(cfg: MfccConfig) -> Result<Self> {
        Self::with_precision(cfg)
    }
}

impl<F: Float> Mfcc<F> {
    /// Validates `cfg` and plans everything, computing in `F`: `Mfcc::<f32>::with_precision(cfg)` is
    /// librosa's single-precision pipeline.
    ///
    /// # Errors
    /// [`Error::Config`] when a parameter is out of range.
    pub fn with_precision(cfg: MfccConfig) -> Result<Self> {
        cfg.validate()?;
        let window = periodic_hann_padded(cfg.win_length, cfg.n_fft).into_iter().map(F::of).collect();
        let mel = MelFilterbank::slaney(&cfg);
        let dct = dct_ortho_matrix(cfg.n_mfcc, cfg.n_mels).into_iter().map(F::of).collect();
        let fft = FftPlanner::<F>::new().plan_fft_forward(cfg.n_fft);
        Ok(Self { cfg, window, mel, dct, fft })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &MfccConfig {
        &self.cfg
    }

    /// The mel filterbank, `(n_mels, n_fft / 2 + 1)`, with librosa's float32 values.
    #[must_use]
    pub fn mel_basis(&self) -> Features<F> {
        let (rows, cols) = (self.cfg.n_mels, self.cfg.n_bins());
        Features { rows, cols, data: self.mel.dense(cols) }
    }

    /// The analysis window, zero-padded to `n_fft`.
    #[must_use]
    pub fn window(&self) -> &[F] {
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
    pub fn mel_db<T: Sample>(&self, signal: &[T]) -> Result<Features<F>> {
        let (frames, by_frame, _) = self.mel_db_by_frame(signal, false)?;
        Ok(transpose(&by_frame, frames, self.cfg.n_mels))
    }

    /// The MFCCs, `(n_mfcc, frames)`: librosa's `feature.mfcc(y=y, …)`.
    ///
    /// # Errors
    /// As [`Mfcc::mel_db`].
    pub fn mfcc<T: Sample>(&self, signal: &[T]) -> Result<Features<F>> {
        // The DCT runs in the same pass as the mel spectrogram, on the values before the top_db floor;
        // frames where the floor clips a value (silence, mostly) are transformed again afterwards.
        let (frames, _, cepstra) = self.mel_db_by_frame(signal, true)?;
        Ok(transpose(&cepstra, frames, self.cfg.n_mfcc))
    }

    /// The dB mel power of every frame *before* the `top_db` floor, frame-major `(frames, n_mels)`. A long
    /// signal's frames can be computed piece by piece: a piece that starts at an even frame gives the same
    /// bits as the whole (frames share an FFT in pairs). [`Mfcc::cepstra`] then floors and transforms any
    /// run of them, so `cepstra(mel_frames(x))` is `mfcc(x)`.
    ///
    /// # Errors
    /// As [`Mfcc::mel_db`].
    pub fn mel_frames<T: Sample>(&self, signal: &[T]) -> Result<Vec<F>> {
        let frames = self.n_frames(signal.len())?;
        first_non_finite(signal)?;
        let mut out = vec![F::ZERO; frames * self.cfg.n_mels];
        for_frame_chunks(&mut out, self.cfg.n_mels, &mut [], 0, |first, chunk, _| {
            crate::simd::with_best_features(FramePass { planner: self, signal, first, out: chunk, dct: None })
        });
        Ok(out)
    }

    /// The MFCCs `(n_mfcc, frames)` of frame-major dB mel frames from [`Mfcc::mel_frames`]: floored at
    /// `top_db` below their maximum (when the configuration sets it), then the DCT of each frame.
    ///
    /// # Errors
    /// [`Error::Empty`] for no frames; [`Error::Config`] when the length is not a multiple of `n_mels`.
    pub fn cepstra(&self, mel_frames: &[F]) -> Result<Features<F>> {
        let n_mels = self.cfg.n_mels;
        if mel_frames.is_empty() {
            return Err(Error::Empty);
        }
        if !mel_frames.len().is_multiple_of(n_mels) {
            return Err(Error::Config(format!(
                "{} mel values are not whole frames of {n_mels} bands",
                mel_frames.len()
            )));
        }
        let frames = mel_frames.len() / n_mels;
        let floor = self
            .cfg
            .top_db
            .map(|top| mel_frames.iter().copied().fold(F::neg_infinity(), F::max) - F::of(top));
        let mut col = vec![F::ZERO; n_mels];
        let mut by_frame = vec![F::ZERO; frames * self.cfg.n_mfcc];
        for (frame, out) in mel_frames.chunks_exact(n_mels).zip(by_frame.chunks_exact_mut(self.cfg.n_mfcc)) {
            for (c, &v) in col.iter_mut().zip(frame) {
                *c = floor.map_or(v, |f| v.max(f));
            }
            self.dct_frame(&col, out);
        }
        Ok(transpose(&by_frame, frames, self.cfg.n_mfcc))
    }

    /// The orthonormal DCT-II of one frame's dB values.
    fn dct_frame(&self, mel_db: &[F], out: &mut [F]) {
        let single: Vec<[F; 1]> = mel_db.iter().map(|&v| [v]).collect();
        let mut fold = Vec::new();
        self.dct_lanes(&single, &mut fold, |k, c| out[k] = c[0]);
    }

    /// The orthonormal DCT-II of `L` frames side by side (`x[i][l]`: value `i` of frame `l`), coefficient
    /// `k` of every frame handed to `out(k, [c_k of frame 0, …])`. Row k of the basis is symmetric about
    /// the middle for even k and antisymmetric for odd k, so the frames are folded first
    /// (`x_i ± x_{N−1−i}`), halving the products.
    #[inline(always)]
    fn dct_lanes<const L: usize>(
        &self,
        x: &[[F; L]],
        fold: &mut Vec<[F; L]>,
        mut out: impl FnMut(usize, [F; L]),
    ) {
        let n = x.len();
        let h = n.div_ceil(2);
        fold.clear();
        fold.resize(2 * h, [F::ZERO; L]);
        let (even, odd) = fold.split_at_mut(h);
        for i in 0..n / 2 {
            let (a, b) = (x[i], x[n - 1 - i]);
            for l in 0..L {
                even[i][l] = a[l] + b[l];
                odd[i][l] = a[l] - b[l];
            }
        }
        if n % 2 == 1 {
            // The middle value: weight cos(πk/2)·scale, zero for odd k.
            even[h - 1] = x[h - 1];
        }
        for (k, basis) in self.dct.chunks_exact(n).enumerate() {
            out(k, dot_lanes(&basis[..h], if k % 2 == 0 { even } else { odd }));
        }
    }

    /// dB mel values laid out frame-major, `(frames, n_mels)`, floored at `top_db` below the maximum.
    /// With `with_dct`, also the MFCCs, frame-major `(frames, n_mfcc)`, computed in the same pass
    /// (otherwise that vector is empty).
    fn mel_db_by_frame<T: Sample>(&self, signal: &[T], with_dct: bool) -> Result<(usize, Vec<F>, Vec<F>)> {
        let frames = self.n_frames(signal.len())?;
        let cfg = &self.cfg;
        first_non_finite(signal)?;

        let mut out = vec![F::ZERO; frames * cfg.n_mels];
        let mut dct_out = if with_dct { vec![F::ZERO; frames * cfg.n_mfcc] } else { Vec::new() };
        // Mel power, 10·log10(max(S, amin)) and (optionally) the DCT per frame, in parallel; each chunk
        // reports its maximum.
        let max = for_frame_chunks(&mut out, cfg.n_mels, &mut dct_out, cfg.n_mfcc, |first, chunk, dct| {
            let dct = with_dct.then_some(dct);
            crate::simd::with_best_features(FramePass { planner: self, signal, first, out: chunk, dct })
        });
        // The floor at (clip maximum − top_db).
        if let Some(top_db) = cfg.top_db {
            let floor = max - F::of(top_db);
            let clip = |col: &mut [F], dct: Option<&mut [F]>| {
                if col.iter().fold(false, |clipped, &v| clipped | (v < floor)) {
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
        out: &mut [F],
        dct: Option<&mut [F]>,
    ) -> F {
        let cfg = &self.cfg;
        let (n_fft, n_bins, n_mels, win) = (cfg.n_fft, cfg.n_bins(), cfg.n_mels, cfg.win_length);
        // Only the window's non-zero span [left, left + win_length) contributes. Frame t starts at
        // t·hop in the padded signal, i.e. at t·hop + left − pad in `signal`.
        let left = (n_fft - win) / 2;
        let pad = if cfg.center { n_fft / 2 } else { 0 };
        let window = &self.window[left..left + win];
        let zero = Complex::new(F::ZERO, F::ZERO);
        let (quarter, ten, amin) = (F::of(0.25), F::of(10.0), F::of(AMIN));
        let mut buf = vec![zero; n_fft];
        let mut scratch = vec![zero; self.fft.get_inplace_scratch_len()];
        // LANES frames side by side: [frame t0, frame t0 + 1, …] per bin, per band, per coefficient.
        let mut power = vec![[F::ZERO; LANES]; n_bins];
        let mut mel_db = vec![[F::ZERO; LANES]; n_mels];
        let mut fold = Vec::with_capacity(n_mels + 1);
        // Frames that reach into the padding (or a missing partner frame) are copied here first.
        let (mut edge_a, mut edge_b) = (Vec::new(), Vec::new());
        let mut max = F::neg_infinity();
        let mut dct = dct.map(|d| d.chunks_mut(LANES * cfg.n_mfcc));
        let start = |t: usize| (t * cfg.hop_length + left).wrapping_sub(pad);
        for (group, cols) in out.chunks_mut(LANES * n_mels).enumerate() {
            let t0 = first_frame + LANES * group;
            let n_here = cols.len() / n_mels;
            // Frames go in pairs: z = a + i·b, Z = FFT(z), then A[k] = (Z[k] + conj Z[N−k]) / 2 and
            // B[k] = (Z[k] − conj Z[N−k]) / 2i. A lone last frame is paired with zeros; lanes past the
            // last frame hold zeros and are not written out.
            for la in (0..LANES).step_by(2) {
                let lb = la + 1;
                if la >= n_here {
                    for p in &mut power {
                        p[la] = F::ZERO;
                        p[lb] = F::ZERO;
                    }
                    continue;
                }
                let a = frame_samples(signal, start(t0 + la), win, &mut edge_a);
                let b = if lb < n_here {
                    frame_samples(signal, start(t0 + lb), win, &mut edge_b)
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
                for (((z, &w), &x), &y) in body.iter_mut().zip(window).zip(a).zip(b) {
                    *z = Complex::new(w * F::from_sample(x), w * F::from_sample(y));
                }
                self.fft.process_with_scratch(&mut buf, &mut scratch);
                // |Z[k] ± conj Z[N−k]|² / 4; Z[N − 0] is Z[0].
                let (z0, rest) = buf.split_first().expect("n_fft ≥ 1");
                power[0][la] = z0.re * z0.re;
                power[0][lb] = z0.im * z0.im;
                let mirror = buf[n_fft + 1 - n_bins..].iter().rev();
                for ((z, m), p) in rest.iter().zip(mirror).zip(&mut power[1..]) {
                    let (re_a, im_a) = (z.re + m.re, z.im - m.im);
                    let (re_b, im_b) = (z.im + m.im, m.re - z.re);
                    p[la] = quarter * (re_a * re_a + im_a * im_a);
                    p[lb] = quarter * (re_b * re_b + im_b * im_b);
                }
            }
            self.mel.apply(&power, &mut mel_db);
            // (Loops over bands, then lanes: a flattened iterator was not vectorised.)
            if mel_db.iter().all(|v| v.iter().fold(true, |ok, x| ok & x.is_finite())) {
                for v in &mut mel_db {
                    for x in v {
                        *x = ten * x.max(amin).log10_finite();
                    }
                }
            } else {
                for v in &mut mel_db {
                    for x in v {
                        *x = ten * x.max(amin).log10();
                    }
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
                self.dct_lanes(&mel_db, &mut fold, |k, c| {
                    for (lane, out) in d.chunks_exact_mut(n_mfcc).enumerate() {
                        out[k] = c[lane];
                    }
                });
            }
        }
        max
    }
}

/// [`Mfcc::mel_db_frames`] as a [`Pass`] for [`crate::simd::with_best_features`].
struct FramePass<'a, F: Float, T> {
    planner: &'a Mfcc<F>,
    signal: &'a [T],
    first: usize,
    out: &'a mut [F],
    dct: Option<&'a mut [F]>,
}

impl<F: Float, T: Sample> Pass for FramePass<'_, F, T> {
    type Output = F;
    #[inline(always)]
    fn run(self) -> F {
        self.planner.mel_db_frames(self.signal, self.first, self.out, self.dct)
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

/// `Σ_i w_i·x_i` for `L` vectors side by side (`x[i][l]`: element `i` of vector `l`), with four
/// independent accumulators (elements `i mod 4`); the summation order is the same for every `L`.
#[inline(always)]
pub(crate) fn dot_lanes<F: Float, const L: usize>(w: &[F], x: &[[F; L]]) -> [F; L] {
    let mut acc = [[F::ZERO; L]; 4];
    let (cw, cx) = (w.chunks_exact(4), x.chunks_exact(4));
    let mut tail = [F::ZERO; L];
    for (&w, x) in cw.remainder().iter().zip(cx.remainder()) {
        for l in 0..L {
            tail[l] = tail[l] + w * x[l];
        }
    }
    for (w, x) in cw.zip(cx) {
        for i in 0..4 {
            for l in 0..L {
                acc[i][l] = acc[i][l] + w[i] * x[i][l];
            }
        }
    }
    for l in 0..L {
        tail[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]) + tail[l];
    }
    tail
}

/// Splits `out` (`per_frame` values per frame) and `extra` (`extra_per_frame` values per frame, or empty)
/// into chunks of whole frames, runs `f(first_frame, chunk, extra_chunk)` on each in parallel (rayon's
/// pool), and returns the maximum of the results. Each frame is computed alone, so the result does not
/// depend on the split.
fn for_frame_chunks<F: Float, G>(
    out: &mut [F],
    per_frame: usize,
    extra: &mut [F],
    extra_per_frame: usize,
    f: G,
) -> F
where
    G: Fn(usize, &mut [F], &mut [F]) -> F + Sync,
{
    let frames = out.len() / per_frame;
    let chunk = FRAMES_PER_TASK.min(frames.max(1));
    let extra_step = if extra.is_empty() { 0 } else { chunk * extra_per_frame };
    let mut extra_chunks: Vec<&mut [F]> =
        if extra.is_empty() { Vec::new() } else { extra.chunks_mut(extra_step).collect() };
    extra_chunks.resize_with(frames.div_ceil(chunk), Default::default);
    out.par_chunks_mut(chunk * per_frame)
        .zip(extra_chunks.into_par_iter())
        .enumerate()
        .map(|(i, (c, ex))| f(i * chunk, c, ex))
        .reduce(F::neg_infinity, F::max)
}

/// `(frames, n)` frame-major values as `(n, frames)` [`Features`].
fn transpose<F: Float>(by_frame: &[F], frames: usize, n: usize) -> Features<F> {
    let mut data = vec![F::ZERO; n * frames];
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

    /// The AVX2 build of the per-frame pass and the baseline build give the same bits, in both precisions.
    #[test]
    fn vector_width_does_not_change_the_numbers() {
        fn check<F: Float>() {
            let planner = Mfcc::<F>::with_precision(MfccConfig::project()).unwrap();
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
                let (mut mel, mut dct) = (vec![F::ZERO; frames * n_mels], vec![F::ZERO; frames * n_mfcc]);
                let max = if best {
                    let pass = FramePass {
                        planner: &planner,
                        signal: &signal,
                        first: 0,
                        out: &mut mel,
                        dct: Some(&mut dct),
                    };
                    crate::simd::with_best_features(pass)
                } else {
                    planner.mel_db_frames(&signal, 0, &mut mel, Some(&mut dct))
                };
                let bits = |v: &F| Sample::to_f64(*v).to_bits();
                (bits(&max), mel.iter().chain(&dct).map(bits).collect::<Vec<_>>())
            };
            assert_eq!(run(true), run(false), "{}", std::any::type_name::<F>());
        }
        check::<f64>();
        check::<f32>();
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
}
