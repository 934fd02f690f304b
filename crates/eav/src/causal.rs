//! Causal preprocessing: the steps of [`crate::dataset::preprocess`] with filters that only look back, run
//! sample by sample with their state carried along, so that a recorded trial (`PreprocessConfig::causal`)
//! and a live stream (the `emofuse-online` crate) give the same windows.
//!
//! - EEG: [`EegFilter`], one per channel: the polyphase decimation of `resample_poly` made causal (lag
//!   0.1 s at the default 500 → 100 Hz), then the Butterworth band-pass run forward only (no backward
//!   pass), both started in the steady state of the channel's first sample.
//! - Audio: [`SpeechFrames`]: a causal polyphase resampler to 16 kHz and the mel frames of the MFCC, each
//!   frame ending where its 10 ms hop ends (it covers the 32 ms before that point; a window's first
//!   frames reach 22 ms before the window, into silence at a stream's start). A window's MFCC is
//!   [`window_cepstra`] of its 500 frames: the `top_db` floor below the window's maximum, then the DCT.
//!
//! A window ending at `t` seconds after the stream's start holds the EEG samples and the MFCC frames that
//! end in `(t − 5 s, t]`: both run at 100 Hz with the default settings.

use mfcc::{Mfcc, MfccConfig};

use crate::dataset::PreprocessConfig;
use crate::signal::{CausalResampler, CausalSos, History, butter_bandpass};

/// The MFCC settings of the causal path: the project's, with frames that end at their hop instead of
/// being centred on it.
#[must_use]
pub fn mfcc_config() -> MfccConfig {
    MfccConfig { center: false, ..MfccConfig::project() }
}

/// Samples of a frame that precede its own hop: `n_fft − hop` (352 at 16 kHz).
#[must_use]
pub fn frame_lead() -> usize {
    let c = mfcc_config();
    c.n_fft - c.hop_length
}

/// One EEG channel through the causal decimation and band-pass.
#[derive(Debug, Clone)]
pub struct EegFilter {
    decimate: CausalResampler,
    band: CausalSos,
}

impl EegFilter {
    /// The filter for `cfg` (decimation, band and order; `cfg` is assumed valid).
    #[must_use]
    pub fn new(cfg: &PreprocessConfig) -> Self {
        Self {
            decimate: CausalResampler::decimator(cfg.decimation, History::First),
            band: CausalSos::new(butter_bandpass(
                cfg.filter_order,
                cfg.band_hz.0,
                cfg.band_hz.1,
                cfg.eeg_rate(),
            )),
        }
    }

    /// Takes one raw sample (at [`crate::subject::EEG_RATE`]); hands each down-sampled, filtered sample it completes to
    /// `out` (one per `decimation` inputs).
    pub fn push(&mut self, x: f32, mut out: impl FnMut(f64)) {
        let band = &mut self.band;
        self.decimate.push(f64::from(x), |v| out(band.step(v)));
    }

    /// Forgets the signal: the next sample starts a new one.
    pub fn reset(&mut self) {
        self.decimate.reset();
        self.band.reset();
    }
}

/// The causal EEG of one channel's raw samples: `ceil(len / decimation)` samples at the decimated rate.
#[must_use]
pub fn eeg_channel(raw: &[f32], cfg: &PreprocessConfig) -> Vec<f64> {
    let mut f = EegFilter::new(cfg);
    let mut out = Vec::with_capacity(raw.len().div_ceil(cfg.decimation.max(1)));
    for &x in raw {
        f.push(x, |v| out.push(v));
    }
    out
}

/// Speech at any rate → 16 kHz (causal) → mel frames as the samples arrive.
#[derive(Debug, Clone)]
pub struct SpeechFrames {
    resample: CausalResampler,
    planner: Mfcc,
    /// Resampled samples not yet framed, after the `frame_lead()` samples the next frame reaches back to.
    pending: Vec<f32>,
    frames: u64,
}

impl SpeechFrames {
    /// For speech sampled at `rate` Hz.
    ///
    /// # Errors
    /// MFCC configuration errors (none for the fixed configuration).
    pub fn new(rate: u32) -> mfcc::Result<Self> {
        let planner = Mfcc::new(mfcc_config())?;
        let to = planner.config().sample_rate as usize;
        Ok(Self {
            resample: CausalResampler::new(rate.max(1) as usize, to, History::Zero),
            planner,
            pending: vec![0.0; frame_lead()],
            frames: 0,
        })
    }

    /// Frames completed since the start.
    #[must_use]
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// 16 kHz samples held for frames not yet complete (at most `n_fft + hop` between calls).
    #[must_use]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Input samples taken since the start.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.resample.received()
    }

    /// Takes speech samples (non-finite ones are the caller's to reject first); appends every completed
    /// frame's dB mel values to `mel` (`n_mels` per frame) and its own hop's energy (sum of squares of the
    /// 160 new 16 kHz samples) to `energy`. Frames are completed in pairs, so that they are the same bits
    /// however the input is chunked (frames share an FFT in pairs).
    ///
    /// # Errors
    /// MFCC errors (none for finite input).
    pub fn push(&mut self, samples: &[f32], mel: &mut Vec<f64>, energy: &mut Vec<f64>) -> mfcc::Result<()> {
        let pending = &mut self.pending;
        #[allow(clippy::cast_possible_truncation)]
        for &x in samples {
            self.resample.push(f64::from(x), |v| pending.push(v as f32));
        }
        let (n_fft, hop) = (self.planner.config().n_fft, self.planner.config().hop_length);
        let lead = n_fft - hop;
        let ready = pending.len().saturating_sub(lead) / hop;
        let k = ready - ready % 2;
        if k == 0 {
            return Ok(());
        }
        mel.extend(self.planner.mel_frames(&pending[..lead + k * hop])?);
        energy.extend(
            pending[lead..lead + k * hop]
                .chunks_exact(hop)
                .map(|c| c.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>()),
        );
        pending.drain(..k * hop);
        self.frames += k as u64;
        Ok(())
    }
}

/// The causal 16 kHz resampling of speech at `rate` Hz: output `m` is the speech at `m / 16000` s, from
/// the input up to that time only.
#[must_use]
pub fn speech_16k(samples: &[f32], rate: u32) -> Vec<f32> {
    let to = mfcc_config().sample_rate as usize;
    let mut r = CausalResampler::new(rate.max(1) as usize, to, History::Zero);
    let mut out = Vec::with_capacity(samples.len() * to / rate.max(1) as usize + 1);
    #[allow(clippy::cast_possible_truncation)]
    for &x in samples {
        r.push(f64::from(x), |v| out.push(v as f32));
    }
    out
}

/// The 16 kHz samples window `w` of `window` samples reads on the causal path: the window itself and the
/// `frame_lead()` samples before it, zeros before the start and past the end of `speech`.
#[must_use]
pub fn speech_window(speech: &[f32], w: usize, window: usize) -> Vec<f32> {
    speech_segment(speech, (w + 1) * window, window)
}

/// The 16 kHz samples that the window of `window` samples ending at sample `end` (exclusive) reads: the
/// window and the `frame_lead()` samples before it, zeros outside `speech`. Its mel frames
/// ([`Mfcc::mel_frames`] under [`mfcc_config`]) are the window's `window / hop` frames.
#[must_use]
pub fn speech_segment(speech: &[f32], end: usize, window: usize) -> Vec<f32> {
    let lead = frame_lead();
    let mut seg = vec![0.0f32; lead + window];
    let start = end as i64 - (window + lead) as i64;
    for (i, v) in seg.iter_mut().enumerate() {
        if let Ok(j) = usize::try_from(start + i as i64)
            && let Some(&x) = speech.get(j)
        {
            *v = x;
        }
    }
    seg
}

/// The MFCC `[coefficient][frame]` (`f32`, the first `frames` frames) of a run of frame-major dB mel
/// frames from [`SpeechFrames`] or [`Mfcc::mel_frames`] under [`mfcc_config`].
///
/// # Errors
/// MFCC errors (an empty or ragged run).
#[allow(clippy::cast_possible_truncation)]
pub fn window_cepstra(planner: &Mfcc, mel: &[f64], frames: usize) -> mfcc::Result<Vec<f32>> {
    let c = planner.cepstra(mel)?;
    Ok(c.crop_cols(frames).as_slice().iter().map(|&v| v as f32).collect())
}
