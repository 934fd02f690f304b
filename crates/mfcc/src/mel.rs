//! The fixed parts of the pipeline: window, Slaney mel filterbank and DCT-II matrix.

use crate::config::MfccConfig;
use crate::float::Float;

/// Periodic Hann window of `win_length` samples (`scipy.signal.get_window('hann', n, fftbins=True)`),
/// zero-padded to `n_fft` with `(n_fft − win_length) / 2` zeros on the left (librosa's `pad_center`).
pub(crate) fn periodic_hann_padded(win_length: usize, n_fft: usize) -> Vec<f64> {
    let mut w = vec![0.0; n_fft];
    let left = (n_fft - win_length) / 2;
    let n = win_length as f64;
    for (i, v) in w[left..left + win_length].iter_mut().enumerate() {
        *v = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
    }
    w
}

/// Slaney's mel scale (librosa `hz_to_mel(htk=False)`): linear below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ { min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep } else { hz / F_SP }
}

/// The inverse of [`hz_to_mel`].
fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel { MIN_LOG_HZ * (logstep * (mel - min_log_mel)).exp() } else { F_SP * mel }
}

/// `numpy.linspace(start, stop, n)` to the last bit (the end point is exact).
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    if let Some(last) = v.last_mut() {
        *last = stop;
    }
    v
}

/// A triangular filterbank stored sparsely: each filter's first non-zero bin and its weights.
#[derive(Debug, Clone)]
pub(crate) struct MelFilterbank<F> {
    filters: Vec<(usize, Vec<F>)>,
}

impl<F: Float> MelFilterbank<F> {
    /// `librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm='slaney', dtype=float32)`:
    /// weights computed in f64 and rounded to f32, area-normalised in f64 and rounded to f32 again (so
    /// exact in either precision).
    pub(crate) fn slaney(cfg: &MfccConfig) -> Self {
        let n_bins = cfg.n_bins();
        let sr = f64::from(cfg.sample_rate);
        // numpy.fft.rfftfreq(n_fft, d = 1/sr)
        let bin_hz = 1.0 / (cfg.n_fft as f64 * (1.0 / sr));
        let fft_freqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * bin_hz).collect();
        let mel_f: Vec<f64> = linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax_hz()), cfg.n_mels + 2)
            .into_iter()
            .map(mel_to_hz)
            .collect();
        let filters = (0..cfg.n_mels)
            .map(|i| {
                let (lo_d, hi_d) = (mel_f[i + 1] - mel_f[i], mel_f[i + 2] - mel_f[i + 1]);
                let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
                let weights: Vec<f64> = fft_freqs
                    .iter()
                    .map(|&f| {
                        let lower = -(mel_f[i] - f) / lo_d;
                        let upper = (mel_f[i + 2] - f) / hi_d;
                        let w = f64::from(lower.min(upper).max(0.0) as f32);
                        f64::from((w * enorm) as f32)
                    })
                    .collect();
                let first = weights.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = weights.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                (first, weights[first..last].iter().map(|&w| F::of(w)).collect())
            })
            .collect();
        Self { filters }
    }

    /// `out[m] = Σ_k basis[m, k] · power[k]` for `L` power spectra side by side (one lane each).
    #[inline(always)]
    pub(crate) fn apply<const L: usize>(&self, power: &[[F; L]], out: &mut [[F; L]]) {
        for (o, (first, w)) in out.iter_mut().zip(&self.filters) {
            *o = crate::planner::dot_lanes(w, &power[*first..*first + w.len()]);
        }
    }

    /// The dense `(n_mels, n_bins)` matrix, row-major.
    pub(crate) fn dense(&self, n_bins: usize) -> Vec<F> {
        let mut d = vec![F::ZERO; self.filters.len() * n_bins];
        for (row, (first, w)) in d.chunks_exact_mut(n_bins).zip(&self.filters) {
            row[*first..*first + w.len()].copy_from_slice(w);
        }
        d
    }
}

/// DCT-II with orthonormal scaling (`scipy.fft.dct(type=2, norm='ortho')`), first `n_out` rows of the
/// `n_in`-point transform, row-major `(n_out, n_in)`.
pub(crate) fn dct_ortho_matrix(n_out: usize, n_in: usize) -> Vec<f64> {
    let n = n_in as f64;
    let mut m = Vec::with_capacity(n_out * n_in);
    for k in 0..n_out {
        let scale = if k == 0 { (1.0 / n).sqrt() } else { (2.0 / n).sqrt() };
        for i in 0..n_in {
            let angle = std::f64::consts::PI * k as f64 * (2.0 * i as f64 + 1.0) / (2.0 * n);
            m.push(scale * angle.cos());
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 100.0, 999.0, 1000.0, 4000.0, 11025.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9 * hz.max(1.0));
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn dct_rows_are_orthonormal() {
        let m = dct_ortho_matrix(8, 8);
        for a in 0..8 {
            for b in 0..8 {
                let dot: f64 = (0..8).map(|i| m[a * 8 + i] * m[b * 8 + i]).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn hann_is_periodic_and_centred() {
        let w = periodic_hann_padded(4, 8);
        let want = [0.0, 0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.0];
        assert!(w.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15), "{w:?}");
    }
}
