//! Live emotion prediction: a trained model fed with EEG and audio chunks as they arrive, one prediction
//! every hop (default 0.5 s) over the last window (5 s).
//!
//! [`Predictor`] is built from a checkpoint and its side file (channels, normalisation, model). It runs
//! the causal preprocessing of [`eav::causal`] with its state carried from chunk to chunk: each raw EEG
//! sample goes once through the decimation and the band-pass, each audio sample once through the
//! resampler, each 10 ms MFCC frame is computed once; a hop only floors and transforms the window's 500
//! frames, standardises, and runs the model on one window. Memory is fixed: ring buffers of
//! window + `max_skew_s` for each stream.
//!
//! A hop's prediction equals the offline prediction of the same window under
//! `PreprocessConfig { causal: true, .. }` (the `--causal` training option), whatever the chunk sizes:
//! train with `--causal` for a model that sees live what it saw in training.
//!
//! Audio is optional at every hop: a window without speech (no audio stream, an audio stream that started
//! inside the window or stopped before its end, or speech quieter than [`StreamConfig::silence_dbfs`])
//! is predicted from the EEG alone through the model's absent-modality mask, and the hop says so
//! ([`AudioState`]).
//!
//! # Example
//! ```
//! use online::{Predictor, Source, StreamConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("model.safetensors");
//! # online::doc_checkpoint(&path)?;
//! // A checkpoint written by `compare` / `baseline` (here: an untrained 30-channel concat model).
//! let mut live = Predictor::from_checkpoint(&path, Source::eav(16_000), StreamConfig::default())?;
//! let mut hops = Vec::new();
//! // 6 s of 30-channel EEG (500 Hz) and speech (16 kHz) in 40 ms chunks, stamped on one clock.
//! for i in 0..150 {
//!     let t = f64::from(i) * 0.04;
//!     let eeg: Vec<f32> = (0..20 * 30).map(|k| (k as f32 * 0.37 + t as f32).sin()).collect();
//!     let speech: Vec<f32> = (0..640).map(|k| 0.1 * ((k as f32 + t as f32 * 16e3) * 0.05).sin()).collect();
//!     hops.extend(live.push_eeg(t, 30, &eeg)?);
//!     hops.extend(live.push_audio(t, &speech)?);
//! }
//! // Hops end at 5.0, 5.5 and 6.0 s.
//! assert_eq!(hops.len(), 3);
//! assert!((hops[0].end_s - 5.0).abs() < 1e-9);
//! assert_eq!(hops[0].probabilities.len(), 5);
//! # Ok(())
//! # }
//! ```

mod error;
#[cfg(feature = "lsl")]
pub mod lsl;

use std::path::Path;

use candle_core::{Device, Tensor};
use core_types::{Emotion, FusionMode, Modality};
use eav::causal::{EegFilter, SpeechFrames, mfcc_config, window_cepstra};
use eav::dataset::PreprocessConfig;
use experiments::checkpoint::CheckpointMeta;
use experiments::data::Normalisation;
use experiments::{EmotionModel, Presence};
use mfcc::Mfcc;
use serde::{Deserialize, Serialize};

pub use error::{Error, Result};

/// The rate of the MFCC frames and of the down-sampled EEG that a stream's windows are cut on.
const FRAME_RATE: f64 = 100.0;

/// How a stream is cut into predictions and how it tolerates what live sources do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Seconds between predictions (a multiple of 10 ms).
    pub hop_s: f64,
    /// A window whose 16 kHz speech has a mean square below this many dB (relative to full scale: a
    /// full-scale square wave is 0 dB, a full-scale sine −3 dB) counts as silent: no audio. `None`: never.
    pub silence_dbfs: Option<f64>,
    /// How far one stream may run ahead of the other, in seconds: a hop waits this long for audio that lags
    /// the EEG before it is made from the EEG alone, and audio further ahead of the EEG than this loses
    /// its oldest frames. It sizes the ring buffers; chunks shorter than it keep every hop aligned.
    pub max_skew_s: f64,
    /// A chunk stamped within this many seconds of where its stream ended continues it; later starts a
    /// new segment after a gap (the stream's filters restart), earlier is an error.
    pub tolerance_s: f64,
    /// Threads for the model's kernels. One window at a time is too little work to share: with one thread
    /// (the default) nothing waits on another core, and the numbers do not depend on it.
    pub threads: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self { hop_s: 0.5, silence_dbfs: Some(-50.0), max_skew_s: 1.0, tolerance_s: 0.02, threads: 1 }
    }
}

/// What the live sources deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// EEG samples per second per channel.
    pub eeg_rate: f64,
    /// EEG channels per frame, in the recording's order (the checkpoint's channel selection applies).
    pub eeg_channels: usize,
    /// Audio samples per second (mono).
    pub audio_rate: u32,
}

impl Source {
    /// EAV's EEG (30 channels at 500 Hz) and mono audio at `audio_rate`.
    #[must_use]
    pub fn eav(audio_rate: u32) -> Self {
        Self { eeg_rate: eav::subject::EEG_RATE, eeg_channels: eav::subject::CHANNEL_NAMES.len(), audio_rate }
    }
}

/// Why a hop did or did not use audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioState {
    /// The model does not read audio.
    NotRead,
    /// The window's speech was used.
    Used,
    /// No audio stream covered the window.
    None,
    /// The window's speech was below the silence threshold.
    Silent,
    /// The audio stream started inside the window, stopped before its end, or ran too far ahead of the
    /// EEG: the window's speech is incomplete, so it was not used.
    Incomplete,
}

/// One prediction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// The window's end, on the chunks' clock (seconds).
    pub end_s: f64,
    /// Class probabilities (neutral, sadness, anger, happiness, calmness).
    pub probabilities: Vec<f32>,
    /// The most probable class.
    pub predicted: Emotion,
    /// The modalities the prediction used.
    pub modalities: Vec<Modality>,
    /// What happened to the window's audio.
    pub audio: AudioState,
}

/// Something a stream recovered from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Where, on the chunks' clock.
    pub at_s: f64,
    /// `eeg` or `audio`.
    pub stream: String,
    /// What was done, e.g. `gap of 0.300 s: filters restarted`.
    pub what: String,
}

/// Fixed-capacity history of a stream at 100 Hz: `width` values per step, steps numbered from the
/// stream's clock origin.
#[derive(Debug, Clone)]
struct Ring<T> {
    width: usize,
    cap: usize,
    data: Vec<T>,
    /// One past the newest step.
    end: i64,
}

impl<T: Copy + Default> Ring<T> {
    fn new(width: usize, cap: usize) -> Self {
        Self { width, cap, data: vec![T::default(); width * cap], end: 0 }
    }

    fn push(&mut self, row: &[T]) {
        let at = (self.end.rem_euclid(self.cap as i64)) as usize * self.width;
        self.data[at..at + self.width].copy_from_slice(row);
        self.end += 1;
    }

    /// Whether steps `[from, to)` are all held.
    fn holds(&self, from: i64, to: i64) -> bool {
        to <= self.end && from >= self.end - self.cap as i64
    }

    fn row(&self, step: i64) -> &[T] {
        let at = (step.rem_euclid(self.cap as i64)) as usize * self.width;
        &self.data[at..at + self.width]
    }
}

/// A stream's current segment: where it started and how many raw samples it has delivered.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// First 100 Hz step of the segment.
    start: i64,
    /// Raw samples (frames) delivered in the segment.
    received: u64,
}

/// The stamp at which a segment's next chunk is due.
fn due(origin: f64, seg: Segment, rate: f64) -> f64 {
    origin + seg.start as f64 / FRAME_RATE + seg.received as f64 / rate
}

fn check_finite(stream: &'static str, data: &[f32]) -> Result<()> {
    match data.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NotFinite { stream, index, value: data[index] }),
        None => Ok(()),
    }
}

/// The EEG side: one causal filter per kept channel, and the filtered 100 Hz samples of the last
/// window + skew.
#[derive(Debug, Clone)]
struct EegSide {
    channels: Vec<usize>,
    filters: Vec<EegFilter>,
    ring: Ring<f32>,
    segment: Option<Segment>,
    row: Vec<f32>,
}

/// The audio side: resampler and MFCC frames, and the frames (and their energy) of the last window + skew.
#[derive(Debug, Clone)]
struct AudioSide {
    frames: SpeechFrames,
    fresh: SpeechFrames,
    mel: Ring<f64>,
    energy: Ring<f64>,
    segment: Option<Segment>,
    /// The stream was ended by [`Predictor::end_audio`]: hops stop waiting for it.
    ended: bool,
    scratch_mel: Vec<f64>,
    scratch_energy: Vec<f64>,
}

/// A trained model fed live: see the crate documentation.
#[derive(Debug)]
pub struct Predictor {
    model: EmotionModel,
    meta: CheckpointMeta,
    norm: Normalisation,
    planner: Mfcc,
    source: Source,
    cfg: StreamConfig,
    reads_eeg: bool,
    reads_audio: bool,
    /// EEG and MFCC window length, in 100 Hz steps.
    window: i64,
    hop: i64,
    skew: i64,
    origin: Option<f64>,
    next_hop: i64,
    eeg: EegSide,
    audio: AudioSide,
    events: Vec<Event>,
    pool: std::sync::Arc<rayon::ThreadPool>,
}

/// `seconds · 100` when it is a whole number of 10 ms steps.
fn steps(seconds: f64, what: &str) -> Result<i64> {
    let s = seconds * FRAME_RATE;
    if !(s.is_finite() && s >= 1.0 && (s - s.round()).abs() < 1e-6) {
        return Err(Error::Config(format!("{what} of {seconds} s is not a positive multiple of 10 ms")));
    }
    Ok(s.round() as i64)
}

impl Predictor {
    /// Loads a checkpoint (weights and side file, on the CPU) and prepares a stream.
    ///
    /// # Errors
    /// Checkpoint errors naming the file; as [`Predictor::new`].
    pub fn from_checkpoint(path: &Path, source: Source, cfg: StreamConfig) -> Result<Self> {
        let (model, meta) = experiments::checkpoint::load(path, &Device::Cpu)?;
        Self::new(model, meta, source, cfg)
    }

    /// A stream for `model` with the preprocessing and normalisation of `meta`.
    ///
    /// # Errors
    /// [`Error::Rate`] when the EEG rate is not the one the preprocessing decimates from (500 Hz);
    /// [`Error::Channels`] when the checkpoint's channel selection does not fit the source's channels;
    /// [`Error::Config`] for a model that reads video, a hop or skew that is not a multiple of 10 ms, or
    /// preprocessing whose EEG or MFCC windows are not 100 Hz.
    pub fn new(model: EmotionModel, meta: CheckpointMeta, source: Source, cfg: StreamConfig) -> Result<Self> {
        let pre: &PreprocessConfig = &meta.preprocess;
        pre.validate().map_err(Error::Config)?;
        if model.modalities().contains(&Modality::Video) {
            return Err(Error::Config(format!(
                "the {} model reads video; streaming takes EEG and audio only",
                model.config().name()
            )));
        }
        if (source.eeg_rate - eav::subject::EEG_RATE).abs() > 1e-9 {
            return Err(Error::Rate {
                stream: "eeg",
                expected: eav::subject::EEG_RATE,
                got: source.eeg_rate,
            });
        }
        if source.audio_rate == 0 {
            return Err(Error::Rate { stream: "audio", expected: 16_000.0, got: 0.0 });
        }
        if (pre.eeg_rate() - FRAME_RATE).abs() > 1e-9 || pre.eeg_window() != pre.mfcc_frames {
            return Err(Error::Config(format!(
                "streaming cuts EEG and MFCC windows on one 100 Hz clock; the checkpoint's preprocessing has \
                 EEG at {} Hz, {} EEG samples and {} MFCC frames per window",
                pre.eeg_rate(),
                pre.eeg_window(),
                pre.mfcc_frames
            )));
        }
        let channels = pre.channels.resolve(source.eeg_channels).map_err(Error::Config)?;
        if channels.len() != meta.model.eeg.in_channels {
            return Err(Error::Channels {
                stream: "eeg",
                expected: meta.model.eeg.in_channels,
                got: channels.len(),
            });
        }
        let window = pre.mfcc_frames as i64;
        let hop = steps(cfg.hop_s, "hop")?;
        let skew = steps(cfg.max_skew_s, "max_skew_s")?;
        let cap = (window + skew + 1) as usize;
        let modalities = meta.model.modalities();
        let frames = SpeechFrames::new(source.audio_rate)?;
        let n_mels = mfcc_config().n_mels;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.max(1))
            .build()
            .map_err(|e| Error::Config(format!("a pool of {} threads: {e}", cfg.threads)))?;
        Ok(Self {
            pool: std::sync::Arc::new(pool),
            norm: meta.normalisation(),
            planner: Mfcc::new(mfcc_config())?,
            reads_eeg: modalities.contains(&Modality::Eeg),
            reads_audio: modalities.contains(&Modality::Audio),
            eeg: EegSide {
                filters: channels.iter().map(|_| EegFilter::new(pre)).collect(),
                ring: Ring::new(channels.len(), cap),
                row: vec![0.0; channels.len()],
                channels,
                segment: None,
            },
            audio: AudioSide {
                fresh: frames.clone(),
                frames,
                mel: Ring::new(n_mels, cap),
                energy: Ring::new(1, cap),
                segment: None,
                ended: false,
                scratch_mel: Vec::new(),
                scratch_energy: Vec::new(),
            },
            model,
            meta,
            source,
            cfg,
            window,
            hop,
            skew,
            origin: None,
            next_hop: 0,
            events: Vec::new(),
        })
    }

    /// The checkpoint's side file.
    #[must_use]
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// Whether the model was trained on causal preprocessing (what the stream computes); a model trained
    /// on the zero-phase windows still runs, on windows that differ from its training windows.
    #[must_use]
    pub fn trained_causal(&self) -> bool {
        self.meta.preprocess.causal
    }

    /// What the sources deliver.
    #[must_use]
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The stream settings.
    #[must_use]
    pub fn config(&self) -> &StreamConfig {
        &self.cfg
    }

    /// Bytes held by the ring buffers and the speech frames not yet complete: fixed by the settings,
    /// whatever the stream's length (it grows with a chunk's size only while that chunk is processed).
    #[must_use]
    pub fn buffered_bytes(&self) -> usize {
        self.eeg.ring.data.len() * 4
            + (self.audio.mel.data.len() + self.audio.energy.data.len()) * 8
            + self.audio.frames.pending_len() * 4
    }

    /// Forgets both streams and the clock: the next chunk starts a new recording.
    pub fn reset(&mut self) {
        self.origin = None;
        self.next_hop = 0;
        self.eeg.segment = None;
        self.eeg.filters.iter_mut().for_each(EegFilter::reset);
        self.audio.segment = None;
        self.audio.ended = false;
        self.audio.frames = self.audio.fresh.clone();
        self.events.clear();
    }

    /// What the streams recovered from since the last call (gaps), oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn origin(&mut self, t: f64) -> f64 {
        *self.origin.get_or_insert(t)
    }

    /// Whether a chunk of `stream` stamped `t` starts a new segment: its first chunk, or one stamped more
    /// than `tolerance_s` after the segment's end (a gap, recorded as an [`Event`] saying `what` was done).
    ///
    /// # Errors
    /// [`Error::TimeWentBack`] for a stamp more than `tolerance_s` before the segment's end.
    fn starts_segment(
        &mut self,
        stream: &'static str,
        seg: Option<Segment>,
        rate: f64,
        t: f64,
        what: &str,
    ) -> Result<bool> {
        let Some(seg) = seg else { return Ok(true) };
        let expected = due(self.origin.unwrap_or(t), seg, rate);
        let tol = self.cfg.tolerance_s;
        if t < expected - tol {
            return Err(Error::TimeWentBack { stream, expected_s: expected, got_s: t });
        }
        if t <= expected + tol {
            return Ok(false);
        }
        self.events.push(Event {
            at_s: t,
            stream: stream.into(),
            what: format!("gap of {:.3} s: {what}", t - expected),
        });
        Ok(true)
    }

    /// The 100 Hz step nearest to stamp `t`.
    fn step_at(&self, origin: f64, t: f64) -> i64 {
        ((t - origin) * FRAME_RATE).round() as i64
    }

    /// Takes an EEG chunk: `channels` values per frame (the source's channel order), frame-major, the
    /// first frame stamped `t` seconds. Returns the hops it completes.
    ///
    /// # Errors
    /// [`Error::Channels`], [`Error::Ragged`], [`Error::NotFinite`], [`Error::TimeWentBack`] (the chunk
    /// is rejected, nothing changes); model errors.
    pub fn push_eeg(&mut self, t: f64, channels: usize, data: &[f32]) -> Result<Vec<Hop>> {
        if channels != self.source.eeg_channels {
            return Err(Error::Channels { stream: "eeg", expected: self.source.eeg_channels, got: channels });
        }
        if !data.len().is_multiple_of(channels) {
            return Err(Error::Ragged { stream: "eeg", len: data.len(), channels });
        }
        check_finite("eeg", data)?;
        if !t.is_finite() {
            return Err(Error::Config(format!("eeg chunk stamped {t}")));
        }
        let origin = self.origin(t);
        let (seg, rate) = (self.eeg.segment, self.source.eeg_rate);
        if self.starts_segment("eeg", seg, rate, t, "filters restarted, next prediction a window later")? {
            self.eeg.filters.iter_mut().for_each(EegFilter::reset);
            let start = self.step_at(origin, t);
            self.eeg.segment = Some(Segment { start, received: 0 });
            // Rows older than the new start must not be read as this segment's.
            self.eeg.ring.end = start;
        }
        let mut hops = Vec::new();
        for frame in data.chunks_exact(channels) {
            let side = &mut self.eeg;
            let mut produced = false;
            for (k, (&c, f)) in side.channels.iter().zip(side.filters.iter_mut()).enumerate() {
                let row = &mut side.row;
                #[allow(clippy::cast_possible_truncation)]
                f.push(frame[c], |v| {
                    row[k] = v as f32;
                    produced = true;
                });
            }
            if let Some(seg) = side.segment.as_mut() {
                seg.received += 1;
            }
            if produced {
                side.ring.push(&side.row);
                self.drain(&mut hops)?;
            }
        }
        Ok(hops)
    }

    /// Takes a mono audio chunk at the source's audio rate, its first sample stamped `t` seconds on the
    /// EEG's clock. A stream's first chunk (and the first after a gap) starts on the nearest 10 ms step.
    /// Returns the hops it completes.
    ///
    /// # Errors
    /// [`Error::NotFinite`], [`Error::TimeWentBack`] (the chunk is rejected, nothing changes); model
    /// errors.
    pub fn push_audio(&mut self, t: f64, samples: &[f32]) -> Result<Vec<Hop>> {
        check_finite("audio", samples)?;
        if !t.is_finite() {
            return Err(Error::Config(format!("audio chunk stamped {t}")));
        }
        let origin = self.origin(t);
        // An ended stream's next chunk starts a new segment, wherever it is stamped.
        let seg = self.audio.segment.filter(|_| !self.audio.ended);
        let rate = f64::from(self.source.audio_rate);
        if self.starts_segment("audio", seg, rate, t, "resampler and frames restarted")? {
            self.audio.frames = self.audio.fresh.clone();
            self.audio.ended = false;
            let start = self.step_at(origin, t);
            self.audio.segment = Some(Segment { start, received: 0 });
            self.audio.mel.end = start;
            self.audio.energy.end = start;
        }
        let mut hops = Vec::new();
        // Frames are completed in pairs; feed in pieces of at most a hop so that hops waiting for audio
        // are released as soon as their frames exist (and the ring never skips past them).
        let piece = ((self.hop as f64 / FRAME_RATE) * rate).ceil().max(1.0) as usize;
        for part in samples.chunks(piece) {
            let a = &mut self.audio;
            a.scratch_mel.clear();
            a.scratch_energy.clear();
            a.frames.push(part, &mut a.scratch_mel, &mut a.scratch_energy)?;
            if let Some(seg) = a.segment.as_mut() {
                seg.received += part.len() as u64;
            }
            for (m, e) in a.scratch_mel.chunks_exact(a.mel.width).zip(&a.scratch_energy) {
                a.mel.push(m);
                a.energy.push(&[*e]);
            }
            self.drain(&mut hops)?;
        }
        Ok(hops)
    }

    /// The audio stream has ended (the speaker stopped, the microphone closed): hops stop waiting for it
    /// and windows it does not cover are made from the EEG alone. The next audio chunk starts a new
    /// segment. Returns the hops this releases.
    ///
    /// # Errors
    /// Model errors.
    pub fn end_audio(&mut self) -> Result<Vec<Hop>> {
        self.audio.ended = true;
        let mut hops = Vec::new();
        self.drain(&mut hops)?;
        Ok(hops)
    }

    /// One past the newest step of the stream that drives the hops (EEG when the model reads it).
    fn driver_end(&self) -> Option<i64> {
        if self.reads_eeg {
            self.eeg.segment.map(|_| self.eeg.ring.end)
        } else {
            self.audio.segment.map(|_| self.audio.mel.end)
        }
    }

    /// Makes every hop that is due.
    fn drain(&mut self, hops: &mut Vec<Hop>) -> Result<()> {
        let w = self.window;
        while let Some(driver) = self.driver_end() {
            let end = self.next_hop * self.hop;
            if driver < end {
                break;
            }
            let eeg_ok =
                self.eeg.segment.is_some_and(|s| s.start <= end - w) && self.eeg.ring.holds(end - w, end);
            if self.reads_eeg && !eeg_ok {
                // Before the first full window of a segment: jump to the first hop that has one.
                let start = self.eeg.segment.map_or(end, |s| s.start);
                self.next_hop = (self.next_hop + 1).max((start + w + self.hop - 1).div_euclid(self.hop));
                continue;
            }
            let audio =
                if self.reads_audio { self.audio_state(end, driver) } else { Some(AudioState::NotRead) };
            let Some(audio) = audio else { break }; // waiting for audio that lags
            if !self.reads_eeg && audio != AudioState::Used {
                self.next_hop += 1;
                continue;
            }
            hops.push(self.predict(end, audio)?);
            self.next_hop += 1;
        }
        Ok(())
    }

    /// The state of the audio for the window ending at step `end`, or `None` to wait for it.
    fn audio_state(&self, end: i64, driver: i64) -> Option<AudioState> {
        let w = self.window;
        let a = &self.audio;
        let Some(seg) = a.segment else { return Some(AudioState::None) };
        if seg.start > end - w {
            return Some(if seg.start >= end || a.ended { AudioState::None } else { AudioState::Incomplete });
        }
        if a.mel.end < end {
            // Behind: wait while the stream is live and the wait is within the skew.
            if !a.ended && driver - end < self.skew {
                return None;
            }
            return Some(if a.mel.end <= end - w { AudioState::None } else { AudioState::Incomplete });
        }
        if !a.mel.holds(end - w, end) {
            return Some(AudioState::Incomplete);
        }
        if let Some(db) = self.cfg.silence_dbfs {
            let hop_len = mfcc_config().hop_length as f64;
            let energy: f64 = (end - w..end).map(|s| a.energy.row(s)[0]).sum();
            let ms = energy / (w as f64 * hop_len);
            if 10.0 * ms.max(1e-30).log10() < db {
                return Some(AudioState::Silent);
            }
        }
        Some(AudioState::Used)
    }

    /// The model's prediction for the window ending at step `end`.
    fn predict(&self, end: i64, audio: AudioState) -> Result<Hop> {
        let w = self.window as usize;
        let c = self.eeg.channels.len();
        let device = self.model.device();
        let mut eeg = vec![0.0f32; c * w];
        if self.reads_eeg {
            for (i, s) in (end - self.window..end).enumerate() {
                for (k, v) in self.eeg.ring.row(s).iter().enumerate() {
                    eeg[k * w + i] = *v;
                }
            }
            self.norm.eeg.apply(&mut eeg, w);
        }
        let mfcc = if audio == AudioState::Used {
            let mut mel = Vec::with_capacity(w * self.audio.mel.width);
            for s in end - self.window..end {
                mel.extend_from_slice(self.audio.mel.row(s));
            }
            let mut m = window_cepstra(&self.planner, &mel, w)?;
            if let Some(st) = &self.norm.mfcc {
                st.apply(&mut m, w);
            }
            let n_mfcc = m.len() / w;
            Some(Tensor::from_vec(m, (1, n_mfcc, w), device)?)
        } else {
            None
        };
        let eeg_t = Tensor::from_vec(eeg, (1, c, w), device)?;
        let presence = Presence {
            eeg: None,
            audio: (self.reads_audio && mfcc.is_none())
                .then(|| Tensor::zeros(1, candle_core::DType::F32, device))
                .transpose()?,
            video: None,
        };
        let out =
            self.pool.install(|| self.model.forward_present(&eeg_t, mfcc.as_ref(), &presence, false))?;
        let probabilities: Vec<f32> = candle_nn::ops::softmax_last_dim(&out.logits)?.squeeze(0)?.to_vec1()?;
        let best = probabilities.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(k, _)| k);
        let mut modalities = Vec::new();
        if self.reads_eeg {
            modalities.push(Modality::Eeg);
        }
        if mfcc.is_some() {
            modalities.push(Modality::Audio);
        }
        Ok(Hop {
            end_s: self.origin.unwrap_or(0.0) + end as f64 / FRAME_RATE,
            probabilities,
            predicted: Emotion::from_index(best).unwrap_or(Emotion::ALL[0]),
            modalities,
            audio,
        })
    }
}

/// Writes an untrained 30-channel concat checkpoint (causal preprocessing) to `path`: for examples and
/// tests that need one without training.
///
/// # Errors
/// Model and file errors.
#[doc(hidden)]
pub fn doc_checkpoint(path: &Path) -> Result<()> {
    let cfg = experiments::ModelConfig::fused(30, FusionMode::Concat);
    let model = EmotionModel::new(&cfg, &Device::Cpu, 1)?;
    let pre = PreprocessConfig { causal: true, ..PreprocessConfig::default() };
    experiments::checkpoint::save(
        path,
        &model,
        &CheckpointMeta::new(&cfg, &pre, &Normalisation::identity(30)),
    )?;
    Ok(())
}
