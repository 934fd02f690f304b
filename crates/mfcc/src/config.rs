//! [`MfccConfig`]: every parameter of the MFCC pipeline, with librosa's and the project's defaults.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Parameters of [`crate::Mfcc`]. The names and meanings are librosa 0.11's.
///
/// Fixed, as in librosa's defaults: periodic Hann window, zero (`constant`) padding when `center`,
/// power spectrum (`power = 2`), Slaney mel scale and Slaney (area) filter normalisation,
/// `power_to_db` with `ref = 1` and `amin = 1e-10`, DCT-II with orthonormal scaling, no liftering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfccConfig {
    /// Sample rate of the input, in Hz.
    pub sample_rate: u32,
    /// Number of cepstral coefficients kept.
    pub n_mfcc: usize,
    /// FFT size.
    pub n_fft: usize,
    /// Window length (≤ `n_fft`); the window is zero-padded to `n_fft`, centred.
    pub win_length: usize,
    /// Samples between frames.
    pub hop_length: usize,
    /// Number of mel bands.
    pub n_mels: usize,
    /// Lowest mel-filter frequency, in Hz.
    pub fmin: f64,
    /// Highest mel-filter frequency, in Hz; `None` means `sample_rate / 2`.
    pub fmax: Option<f64>,
    /// Pad the signal by `n_fft / 2` zeros on both sides so frame `t` is centred on sample `t · hop`.
    pub center: bool,
    /// Floor of the dB spectrogram below its maximum over the whole clip; `None` disables it.
    pub top_db: Option<f64>,
}

impl MfccConfig {
    /// `librosa.feature.mfcc(y=y)` with every default: 22 050 Hz, 20 coefficients, `n_fft` 2048,
    /// hop 512, 128 mel bands.
    #[must_use]
    pub fn librosa_default() -> Self {
        Self {
            sample_rate: 22_050,
            n_mfcc: 20,
            n_fft: 2048,
            win_length: 2048,
            hop_length: 512,
            n_mels: 128,
            fmin: 0.0,
            fmax: None,
            center: true,
            top_db: Some(80.0),
        }
    }

    /// The features the audio encoder reads: 16 kHz, 13 coefficients, `n_fft` 512, 25 ms window (400),
    /// 10 ms hop (160), 40 mel bands. Five seconds give 501 frames.
    #[must_use]
    pub fn project() -> Self {
        Self {
            sample_rate: 16_000,
            n_mfcc: 13,
            n_fft: 512,
            win_length: 400,
            hop_length: 160,
            n_mels: 40,
            ..Self::librosa_default()
        }
    }

    /// The upper filter frequency in effect.
    #[must_use]
    pub fn fmax_hz(&self) -> f64 {
        self.fmax.unwrap_or(f64::from(self.sample_rate) / 2.0)
    }

    /// Number of FFT bins, `n_fft / 2 + 1`.
    #[must_use]
    pub fn n_bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// Checks every parameter.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<()> {
        let nyquist = f64::from(self.sample_rate) / 2.0;
        let fmax = self.fmax_hz();
        let bad = |msg: String| Err(Error::Config(msg));
        if self.sample_rate == 0 {
            return bad("sample_rate must be > 0".into());
        }
        if self.n_fft < 2 {
            return bad(format!("n_fft = {} must be ≥ 2", self.n_fft));
        }
        if self.win_length == 0 || self.win_length > self.n_fft {
            return bad(format!("win_length = {} must be in 1..={}", self.win_length, self.n_fft));
        }
        if self.hop_length == 0 {
            return bad("hop_length must be > 0".into());
        }
        if self.n_mels == 0 || self.n_mels > self.n_bins() {
            return bad(format!(
                "n_mels = {} must be in 1..={} (n_fft / 2 + 1); more bands than FFT bins leaves empty filters",
                self.n_mels,
                self.n_bins()
            ));
        }
        if self.n_mfcc == 0 || self.n_mfcc > self.n_mels {
            return bad(format!("n_mfcc = {} must be in 1..={} (n_mels)", self.n_mfcc, self.n_mels));
        }
        if !(self.fmin.is_finite() && self.fmin >= 0.0) {
            return bad(format!("fmin = {} must be a finite frequency ≥ 0", self.fmin));
        }
        if !(fmax.is_finite() && fmax <= nyquist) {
            return bad(format!("fmax = {fmax} must not exceed the Nyquist frequency {nyquist}"));
        }
        if self.fmin >= fmax {
            return bad(format!("fmin = {} must be below fmax = {fmax}", self.fmin));
        }
        if let Some(t) = self.top_db
            && !(t.is_finite() && t >= 0.0)
        {
            return bad(format!("top_db = {t} must be finite and ≥ 0"));
        }
        Ok(())
    }
}

impl Default for MfccConfig {
    /// [`MfccConfig::project`].
    fn default() -> Self {
        Self::project()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        MfccConfig::project().validate().unwrap();
        MfccConfig::librosa_default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        type Edit = fn(&mut MfccConfig);
        let cases: [(&str, Edit); 7] = [
            ("n_mels", |c| c.n_mels = 300),
            ("fmax", |c| c.fmax = Some(9000.0)),
            ("hop_length", |c| c.hop_length = 0),
            ("win_length", |c| c.win_length = 1024),
            ("n_mfcc", |c| c.n_mfcc = 41),
            ("fmin", |c| c.fmin = 8000.0),
            ("top_db", |c| c.top_db = Some(f64::NAN)),
        ];
        for (name, edit) in cases {
            let mut c = MfccConfig::project();
            edit(&mut c);
            let msg = c.validate().unwrap_err().to_string();
            assert!(msg.contains(name), "{name}: {msg}");
        }
    }
}
