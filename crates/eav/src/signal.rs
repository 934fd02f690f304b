//! EEG signal processing: polyphase down-sampling and a zero-phase Butterworth band-pass, both equal to
//! scipy's (`resample_poly(x, 1, q)`, `butter(N, [lo, hi], 'bandpass', output='sos')`, `sosfiltfilt`).

use num_complex::Complex64;
use std::f64::consts::PI;

/// Modified Bessel function of the first kind, order 0 (power series; converges fast for Kaiser betas).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, mut k) = (1.0, 1.0, 1.0);
    while term > 1e-17 * sum {
        term *= (x / (2.0 * k)).powi(2);
        sum += term;
        k += 1.0;
    }
    sum
}

/// The anti-aliasing filter of `scipy.signal.resample_poly(x, up, down)` (`up`, `down` coprime): a
/// `20·max(up, down) + 1`-tap windowed sinc with cutoff `1/max(up, down)` (of Nyquist), Kaiser window
/// β = 5, normalised to a DC gain of `up`.
fn polyphase_filter(up: usize, down: usize) -> Vec<f64> {
    let max_rate = up.max(down);
    let half = 10 * max_rate;
    let n = 2 * half + 1;
    let cutoff = 1.0 / max_rate as f64;
    let beta = 5.0;
    let mut h: Vec<f64> = (0..n)
        .map(|i| {
            let m = i as f64 - half as f64;
            let sinc = if m == 0.0 { 1.0 } else { (PI * cutoff * m).sin() / (PI * cutoff * m) };
            let r = 2.0 * i as f64 / (n - 1) as f64 - 1.0;
            cutoff * sinc * bessel_i0(beta * (1.0 - r * r).max(0.0).sqrt()) / bessel_i0(beta)
        })
        .collect();
    let sum: f64 = h.iter().sum();
    h.iter_mut().for_each(|v| *v = *v / sum * up as f64);
    h
}

/// Down-samples by an integer factor with scipy's `resample_poly(x, 1, down)` (zero padding at the ends):
/// `ceil(len / down)` samples.
#[must_use]
pub fn decimate(x: &[f64], down: usize) -> Vec<f64> {
    if down <= 1 {
        return x.to_vec();
    }
    let h = polyphase_filter(1, down);
    let half = (h.len() - 1) / 2;
    let n_out = x.len().div_ceil(down);
    (0..n_out)
        .map(|m| {
            // y[m] = Σ_i h[i] · x[m·down + half − i]
            let centre = m * down + half;
            let lo = centre.saturating_sub(x.len() - 1);
            let hi = centre.min(h.len() - 1);
            (lo..=hi).map(|i| h[i] * x[centre - i]).sum()
        })
        .collect()
}

/// One second-order section `[b0, b1, b2, 1, a1, a2]`.
pub type Sos = [f64; 6];

/// A digital Butterworth band-pass of order `order` (a filter of order `2·order`) between `lo` and `hi`
/// Hz at sample rate `fs`, as second-order sections: scipy's `butter(order, [lo, hi], 'bandpass', fs=fs,
/// output='sos')` (analog prototype, band-pass transform, bilinear transform with pre-warping).
///
/// # Panics
/// Never for `0 < lo < hi < fs / 2`; other bands give a filter with non-finite coefficients, which
/// [`crate::dataset::PreprocessConfig::validate`] rules out first.
#[must_use]
pub fn butter_bandpass(order: usize, lo: f64, hi: f64, fs: f64) -> Vec<Sos> {
    // Pre-warped analog edges (scipy normalises to fs = 2, hence 2·fs_n = 4).
    let warp = |f: f64| 4.0 * (PI * (f / (fs / 2.0)) / 2.0).tan();
    let (w1, w2) = (warp(lo), warp(hi));
    let (bw, w0) = (w2 - w1, (w1 * w2).sqrt());
    let n = order as f64;
    let mut poles = Vec::with_capacity(2 * order);
    for k in 0..order {
        // Butterworth prototype pole: −exp(iπ(2k − N + 1) / 2N).
        let m = 2.0 * k as f64 - n + 1.0;
        let p = -Complex64::from_polar(1.0, PI * m / (2.0 * n));
        let pl = p * (bw / 2.0);
        let root = (pl * pl - w0 * w0).sqrt();
        poles.push(pl + root);
        poles.push(pl - root);
    }
    // Bilinear transform (fs_n = 2): s → z = (4 + s) / (4 − s). The N zeros at s = 0 go to z = 1 and the N
    // zeros at infinity to z = −1.
    let gain_analog = bw.powi(order as i32);
    let num = Complex64::new(4.0, 0.0).powi(order as i32);
    let den = poles.iter().fold(Complex64::new(1.0, 0.0), |acc, p| acc * (4.0 - p));
    let gain = gain_analog * (num / den).re;
    let zpoles: Vec<Complex64> = poles.iter().map(|p| (4.0 + p) / (4.0 - p)).collect();

    // Pair conjugate poles; real poles pair with each other.
    let mut sections = Vec::new();
    let mut reals: Vec<f64> = Vec::new();
    for p in &zpoles {
        if p.im > 1e-12 {
            sections.push([1.0, 0.0, -1.0, 1.0, -2.0 * p.re, p.norm_sqr()]);
        } else if p.im.abs() <= 1e-12 {
            reals.push(p.re);
        }
    }
    for pair in reals.chunks(2) {
        let (a, b) = (pair[0], pair.get(1).copied().unwrap_or(0.0));
        sections.push([1.0, 0.0, -1.0, 1.0, -(a + b), a * b]);
    }
    if let Some(first) = sections.first_mut() {
        for v in &mut first[..3] {
            *v *= gain;
        }
    }
    sections
}

/// `|H(e^{iω})|` of a section cascade at frequency `f` (Hz) and sample rate `fs`.
#[must_use]
pub fn sos_gain(sos: &[Sos], f: f64, fs: f64) -> f64 {
    let z1 = Complex64::from_polar(1.0, -2.0 * PI * f / fs); // z⁻¹
    sos.iter()
        .map(|s| ((s[0] + s[1] * z1 + s[2] * z1 * z1) / (s[3] + s[4] * z1 + s[5] * z1 * z1)).norm())
        .product()
}

/// Steady-state initial state of each section for a unit step (scipy's `sosfilt_zi`).
fn sosfilt_zi(sos: &[Sos]) -> Vec<[f64; 2]> {
    let mut scale = 1.0;
    sos.iter()
        .map(|s| {
            let dc = (s[0] + s[1] + s[2]) / (s[3] + s[4] + s[5]);
            // For a constant input u: y = dc·u, z2 = b2·u − a2·y, z1 = b1·u − a1·y + z2.
            let z2 = s[2] - s[5] * dc;
            let z1 = s[1] - s[4] * dc + z2;
            let out = [z1 * scale, z2 * scale];
            scale *= dc;
            out
        })
        .collect()
}

/// Zero-phase filtering, scipy's `sosfiltfilt(sos, x)`: odd extension of `3·(2·sections + 1)` samples at
/// both ends, steady-state initial conditions, forward then backward.
#[must_use]
pub fn sosfiltfilt(sos: &[Sos], x: &[f64]) -> Vec<f64> {
    let n = x.len();
    if n == 0 {
        return Vec::new();
    }
    let pad = (3 * (2 * sos.len() + 1)).min(n - 1);
    let mut ext = Vec::with_capacity(n + 2 * pad);
    ext.extend((1..=pad).rev().map(|i| 2.0 * x[0] - x[i]));
    ext.extend_from_slice(x);
    ext.extend((1..=pad).map(|i| 2.0 * x[n - 1] - x[n - 1 - i]));
    // Each pass is the causal filter started in the steady state of its first sample.
    let mut filter = CausalSos::new(sos.to_vec());
    for _ in 0..2 {
        filter.reset();
        ext.iter_mut().for_each(|v| *v = filter.step(*v));
        ext.reverse();
    }
    ext[pad..pad + n].to_vec()
}

/// What a causal filter assumes its input was before the first sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// Silence (audio).
    Zero,
    /// The first sample, for ever (EEG, whose offset would otherwise ring through the filters).
    First,
}

/// A causal polyphase resampler by `up / down`, with the anti-aliasing filter of scipy's
/// `resample_poly`: output `m` (at time `m·down/up` input samples) is `Σ_j h[m·down − j·up]·x[j]` over the
/// inputs up to and including that time, so it is ready as soon as input `⌊m·down/up⌋` has arrived and
/// lags the zero-phase output by the filter's half length (`10·max(up, down)/up` input samples).
/// Fed in chunks of any size, it gives the same numbers as fed the whole signal at once; it keeps a fixed
/// number of past inputs.
#[derive(Debug, Clone)]
pub struct CausalResampler {
    /// The filter split by phase: `phases[p]` holds `h[p], h[p + up], …` in reverse (oldest input first).
    phases: Vec<Vec<f64>>,
    up: usize,
    down: usize,
    history: History,
    /// The last `span` inputs twice over (`buf[i]` = `buf[i + span]`), so that they are one slice.
    buf: Vec<f64>,
    span: usize,
    received: u64,
    produced: u64,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl CausalResampler {
    /// A resampler from `from` to `to` samples per second (any positive rates; the ratio is reduced).
    ///
    /// # Panics
    /// Never for positive rates; a zero rate is the caller's bug.
    #[must_use]
    pub fn new(from: usize, to: usize, history: History) -> Self {
        assert!(from > 0 && to > 0, "sample rates must be positive");
        let g = gcd(from, to);
        let (up, down) = (to / g, from / g);
        let h = if up == 1 && down == 1 { vec![1.0] } else { polyphase_filter(up, down) };
        let phases: Vec<Vec<f64>> =
            (0..up).map(|p| h.iter().skip(p).step_by(up).rev().copied().collect()).collect();
        let span = h.len().div_ceil(up);
        Self { phases, up, down, history, buf: vec![0.0; 2 * span], span, received: 0, produced: 0 }
    }

    /// A decimator by `down` (`resample_poly(x, 1, down)` made causal).
    #[must_use]
    pub fn decimator(down: usize, history: History) -> Self {
        Self::new(down.max(1), 1, history)
    }

    /// Forgets every input: the next sample starts a new signal.
    pub fn reset(&mut self) {
        self.received = 0;
        self.produced = 0;
    }

    /// Inputs taken since the start (or the last reset).
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes one input sample; hands every output it completes to `out` (none, one or several).
    pub fn push(&mut self, x: f64, mut out: impl FnMut(f64)) {
        let span = self.span;
        if self.received == 0 {
            let before = match self.history {
                History::Zero => 0.0,
                History::First => x,
            };
            self.buf.fill(before);
        }
        let at = (self.received % span as u64) as usize;
        self.buf[at] = x;
        self.buf[at + span] = x;
        self.received += 1;
        let (up, down) = (self.up as u64, self.down as u64);
        // Output m is ready once input ⌊m·down/up⌋ is in (m·down < received·up); outputs are made as soon
        // as they are ready, so that input is always the newest.
        let newest = self.received - 1;
        while self.produced * down < self.received * up {
            let phase = (self.produced * down - newest * up) as usize;
            let taps = &self.phases[phase];
            // The inputs newest − taps.len() + 1 ..= newest, oldest first.
            let last = at + span;
            let x = &self.buf[last + 1 - taps.len()..=last];
            out(taps.iter().zip(x).map(|(h, v)| h * v).sum());
            self.produced += 1;
        }
    }
}

/// A causal cascade of second-order sections (`scipy.signal.sosfilt`, transposed direct form II) whose
/// state runs across calls, started in the steady state of its first input (`sosfilt_zi · x[0]`), so a
/// signal's offset does not ring through it. Each pass of [`sosfiltfilt`] is one.
#[derive(Debug, Clone)]
pub struct CausalSos {
    sos: Vec<Sos>,
    zi: Vec<[f64; 2]>,
    state: Vec<[f64; 2]>,
    started: bool,
}

impl CausalSos {
    /// The filter `sos`, at rest until its first input.
    #[must_use]
    pub fn new(sos: Vec<Sos>) -> Self {
        let zi = sosfilt_zi(&sos);
        let state = vec![[0.0; 2]; sos.len()];
        Self { sos, zi, state, started: false }
    }

    /// Forgets the state: the next sample starts a new signal.
    pub fn reset(&mut self) {
        self.started = false;
    }

    /// Filters one sample.
    pub fn step(&mut self, x: f64) -> f64 {
        if !self.started {
            for (s, z) in self.state.iter_mut().zip(&self.zi) {
                *s = [z[0] * x, z[1] * x];
            }
            self.started = true;
        }
        let mut s = x;
        for (sec, z) in self.sos.iter().zip(self.state.iter_mut()) {
            let y = sec[0] * s + z[0];
            z[0] = sec[1] * s - sec[4] * y + z[1];
            z[1] = sec[2] * s - sec[5] * y;
            s = y;
        }
        s
    }
}
