//! From a loaded [`Subject`] to model-ready windows: EEG `(channels, 500)` and MFCC `(13, 500)` per 5 s.

use std::path::Path;

use core_types::Emotion;
use mfcc::{Mfcc, MfccConfig};
use serde::{Deserialize, Serialize};

use crate::causal;
use crate::error::{Error, Result};
use crate::signal::{butter_bandpass, decimate, sosfiltfilt};
use crate::subject::{CHANNEL_NAMES, EEG_RATE, Subject};

/// Which EEG channels to keep.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channels {
    /// Every channel in the file.
    #[default]
    All,
    /// Only these (names from [`CHANNEL_NAMES`] or 1-based numbers), in this order.
    Keep(Vec<String>),
    /// Every channel but these.
    Drop(Vec<String>),
}

impl Channels {
    /// Parses `all`, `drop:FP1,FP2` or a list `O1,OZ,O2` (names or 1-based numbers).
    ///
    /// # Errors
    /// An empty list.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let list = |t: &str| {
            t.split(',').map(|c| c.trim().to_uppercase()).filter(|c| !c.is_empty()).collect::<Vec<_>>()
        };
        match s.trim() {
            "all" | "" => Ok(Self::All),
            t => {
                let (drop, rest) = t.strip_prefix("drop:").map_or((false, t), |r| (true, r));
                let names = list(rest);
                if names.is_empty() {
                    return Err(format!("no channels in `{s}`"));
                }
                Ok(if drop { Self::Drop(names) } else { Self::Keep(names) })
            }
        }
    }

    /// The kept channel indices for a file with `n` channels.
    ///
    /// # Errors
    /// A message naming an unknown channel.
    pub fn resolve(&self, n: usize) -> std::result::Result<Vec<usize>, String> {
        let index = |name: &String| -> std::result::Result<usize, String> {
            if let Ok(k) = name.parse::<usize>() {
                return (1..=n)
                    .contains(&k)
                    .then(|| k - 1)
                    .ok_or_else(|| format!("channel {k} not in 1..={n}"));
            }
            if n != CHANNEL_NAMES.len() {
                return Err(format!("channel names need the 30-channel EAV layout, the file has {n}"));
            }
            CHANNEL_NAMES
                .iter()
                .position(|c| c == name)
                .ok_or_else(|| format!("unknown channel `{name}`; known: {}", CHANNEL_NAMES.join(" ")))
        };
        match self {
            Self::All => Ok((0..n).collect()),
            Self::Keep(names) => names.iter().map(index).collect(),
            Self::Drop(names) => {
                let drop = names.iter().map(index).collect::<std::result::Result<Vec<_>, _>>()?;
                Ok((0..n).filter(|i| !drop.contains(i)).collect())
            }
        }
    }
}

/// Preprocessing settings; the defaults are the official EAV pipeline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// EEG down-sampling factor (500 Hz → 100 Hz), polyphase like scipy's `resample_poly`.
    pub decimation: usize,
    /// Band-pass edges in Hz (0.5–45).
    pub band_hz: (f64, f64),
    /// Butterworth order (5), applied forward and backward (zero phase).
    pub filter_order: usize,
    /// Window length in seconds (5).
    pub window_seconds: f64,
    /// Windows per trial (4 of 5 s in a 20 s trial).
    pub windows_per_trial: usize,
    /// EEG channel selection.
    pub channels: Channels,
    /// MFCC frames kept per window (5 s at hop 160 gives 501; the first 500 are kept).
    pub mfcc_frames: usize,
    /// Whether to compute MFCC windows for speaking trials.
    pub audio: bool,
    /// Causal filters (see [`crate::causal`]): what a live stream sees, instead of the official zero-phase
    /// band-pass and centred MFCC frames. Off by default; absent from older settings files.
    #[serde(default, skip_serializing_if = "is_false")]
    pub causal: bool,
    /// Video windows from each trial's clip (luma, sampled and resized as set here), aligned with the EEG
    /// and audio windows; `None` (the default, and absent from older settings files): clips are not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<video::Sampling>,
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(v: &bool) -> bool {
    !*v
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            decimation: 5,
            band_hz: (0.5, 45.0),
            filter_order: 5,
            window_seconds: 5.0,
            windows_per_trial: 4,
            channels: Channels::All,
            mfcc_frames: 500,
            audio: true,
            causal: false,
            video: None,
        }
    }
}

impl PreprocessConfig {
    /// The EEG rate after down-sampling.
    #[must_use]
    pub fn eeg_rate(&self) -> f64 {
        EEG_RATE / self.decimation.max(1) as f64
    }

    /// EEG samples per window after down-sampling (500).
    #[must_use]
    pub fn eeg_window(&self) -> usize {
        (self.window_seconds * self.eeg_rate()).round() as usize
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// A message naming the bad setting.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let nyquist = self.eeg_rate() / 2.0;
        let (lo, hi) = self.band_hz;
        if self.decimation == 0
            || self.windows_per_trial == 0
            || self.window_seconds <= 0.0
            || self.filter_order == 0
        {
            return Err(format!("decimation, filter order, windows and window length must be > 0: {self:?}"));
        }
        if !(lo > 0.0 && lo < hi && hi < nyquist) {
            return Err(format!("band {lo}–{hi} Hz must satisfy 0 < low < high < {nyquist} Hz"));
        }
        Ok(())
    }
}

/// One 5 s window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Subject number.
    pub subject: u32,
    /// 0-based trial index.
    pub trial: usize,
    /// Window index within the trial.
    pub window: usize,
    /// The class.
    pub emotion: Emotion,
    /// Speaking trial (audio available) or listening.
    pub speaking: bool,
    /// EEG, `[channel][time]`.
    pub eeg: Vec<f32>,
    /// MFCC, `[coefficient][frame]` (speaking trials with audio).
    pub mfcc: Option<Vec<f32>>,
    /// Video, `[frame][row][column]` luma 0–255 (trials with a clip, when video is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<Vec<f32>>,
}

/// A subject's windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectSamples {
    /// Subject number.
    pub subject: u32,
    /// Kept channel indices (0-based, file order).
    pub channels: Vec<usize>,
    /// EEG samples per window.
    pub eeg_len: usize,
    /// MFCC frames per window.
    pub mfcc_frames: usize,
    /// Luma values per video window (frames × height × width; 0 without video).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub video_len: usize,
    /// Windows, in trial then window order.
    pub samples: Vec<Sample>,
    /// Non-fatal findings (short audio padded with silence, …).
    pub notes: Vec<String>,
}

/// Window `w` of `audio_win` samples of `audio`, zero-padded past its end.
fn speech_window(audio: &[f32], w: usize, audio_win: usize) -> Vec<f32> {
    let mut seg = vec![0.0f32; audio_win];
    let start = (w * audio_win).min(audio.len());
    let end = ((w + 1) * audio_win).min(audio.len());
    seg[..end - start].copy_from_slice(&audio[start..end]);
    seg
}

/// The MFCC `[coefficient][frame]` of one window's speech, cropped to `cfg.mfcc_frames`.
fn window_mfcc(planner: &Mfcc, seg: &[f32], cfg: &PreprocessConfig, path: &Path) -> Result<Vec<f32>> {
    let m = planner.mfcc(seg).map_err(|e| Error::Mfcc { path: path.into(), source: e })?;
    Ok(m.crop_cols(cfg.mfcc_frames).as_slice().iter().map(|&v| v as f32).collect())
}

/// The speech windows of one speaking trial's audio file as [`preprocess`] cuts them (resampled to the
/// MFCC rate, zero-padded past the file's end), one per window of the trial.
///
/// # Errors
/// Audio errors naming the file.
pub fn speech_windows(path: &Path, cfg: &PreprocessConfig) -> Result<Vec<Vec<f32>>> {
    let rate = MfccConfig::project().sample_rate;
    let audio_win = (cfg.window_seconds * f64::from(rate)).round() as usize;
    if cfg.causal {
        let a = crate::audio::read_wav(path)?;
        let speech = causal::speech_16k(&a.samples, a.sample_rate);
        return Ok((0..cfg.windows_per_trial)
            .map(|w| causal::speech_window(&speech, w, audio_win))
            .collect());
    }
    let a = crate::audio::load_mono(path, rate)?;
    Ok((0..cfg.windows_per_trial).map(|w| speech_window(&a.samples, w, audio_win)).collect())
}

/// The MFCC windows of speech windows from [`speech_windows`] (after any change to the waveform), the same
/// computation as [`preprocess`]; `path` names the file in errors.
///
/// # Errors
/// MFCC errors naming `path`.
pub fn speech_mfcc(windows: &[Vec<f32>], cfg: &PreprocessConfig, path: &Path) -> Result<Vec<Vec<f32>>> {
    let planner = Planner::new(cfg, path)?;
    windows.iter().map(|seg| planner.window(seg, cfg, path)).collect()
}

/// The MFCC planner of the zero-phase or the causal path.
enum Planner {
    Centred(Mfcc),
    Causal(Mfcc),
}

impl Planner {
    fn new(cfg: &PreprocessConfig, path: &Path) -> Result<Self> {
        let mfcc_err = |e| Error::Mfcc { path: path.into(), source: e };
        Ok(if cfg.causal {
            Self::Causal(Mfcc::new(causal::mfcc_config()).map_err(mfcc_err)?)
        } else {
            Self::Centred(Mfcc::new(MfccConfig::project()).map_err(mfcc_err)?)
        })
    }

    /// The MFCC of one speech window (from [`speech_windows`] under the same setting).
    fn window(&self, seg: &[f32], cfg: &PreprocessConfig, path: &Path) -> Result<Vec<f32>> {
        let mfcc_err = |e| Error::Mfcc { path: path.into(), source: e };
        match self {
            Self::Centred(p) => window_mfcc(p, seg, cfg, path),
            Self::Causal(p) => {
                causal::window_cepstra(p, &p.mel_frames(seg).map_err(mfcc_err)?, cfg.mfcc_frames)
                    .map_err(mfcc_err)
            }
        }
    }
}

/// Adds white Gaussian noise to `speech` at `snr_db` decibels below the window's own power (its mean
/// square): the noise drawn from `rng` is scaled so that its realised power is exactly `power / 10^(snr/10)`.
/// A silent window gets no noise. Returns the noise power added.
pub fn add_noise(speech: &mut [f32], snr_db: f64, rng: &mut impl rand::Rng) -> f64 {
    let n = speech.len().max(1) as f64;
    let power = speech.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n;
    if power == 0.0 {
        return 0.0;
    }
    let normal = rand_distr::StandardNormal;
    let noise: Vec<f64> =
        speech.iter().map(|_| rand_distr::Distribution::<f64>::sample(&normal, rng)).collect();
    let drawn = noise.iter().map(|v| v * v).sum::<f64>() / n;
    let target = power / 10f64.powf(snr_db / 10.0);
    let scale = (target / drawn.max(f64::MIN_POSITIVE)).sqrt();
    for (s, z) in speech.iter_mut().zip(&noise) {
        *s += (z * scale) as f32;
    }
    target
}

/// Preprocesses every trial of `subject`: EEG decimated, band-passed, cut into windows; audio of speaking
/// trials resampled to the MFCC rate, cut into the same windows and turned into MFCCs.
///
/// # Errors
/// [`Error::Dataset`] for a bad config or trials too short for the windows; audio errors naming the file.
pub fn preprocess(subject: &Subject, cfg: &PreprocessConfig) -> Result<SubjectSamples> {
    cfg.validate().map_err(|m| Error::dataset(&subject.dir, m))?;
    let channels = cfg.channels.resolve(subject.channels).map_err(|m| Error::dataset(&subject.dir, m))?;
    let win = cfg.eeg_window();
    let decimated_len = subject.samples_per_trial.div_ceil(cfg.decimation);
    if decimated_len < win * cfg.windows_per_trial {
        return Err(Error::dataset(
            &subject.dir,
            format!(
                "trials of {} samples give {decimated_len} after decimation, fewer than {} windows of {win}",
                subject.samples_per_trial, cfg.windows_per_trial
            ),
        ));
    }
    let sos = butter_bandpass(cfg.filter_order, cfg.band_hz.0, cfg.band_hz.1, cfg.eeg_rate());
    let planner = Planner::new(cfg, &subject.dir)?;
    let audio_rate = MfccConfig::project().sample_rate;
    let audio_win = (cfg.window_seconds * f64::from(audio_rate)).round() as usize;
    let mut samples = Vec::with_capacity(subject.trials.len() * cfg.windows_per_trial);
    let mut notes = Vec::new();
    let mut clips = video_windows(subject, cfg)?;
    for trial in &subject.trials {
        let raw = subject.eeg_trial(trial.index);
        let filtered: Vec<Vec<f64>> = channels
            .iter()
            .map(|&c| {
                let raw = &raw[c * subject.samples_per_trial..(c + 1) * subject.samples_per_trial];
                if cfg.causal {
                    return causal::eeg_channel(raw, cfg);
                }
                let x: Vec<f64> = raw.iter().map(|&v| f64::from(v)).collect();
                sosfiltfilt(&sos, &decimate(&x, cfg.decimation))
            })
            .collect();
        let audio = match (&trial.audio, cfg.audio && trial.speaking) {
            (Some(path), true) => {
                let a = if cfg.causal {
                    let a = crate::audio::read_wav(path)?;
                    crate::audio::MonoAudio {
                        sample_rate: audio_rate,
                        samples: causal::speech_16k(&a.samples, a.sample_rate),
                    }
                } else {
                    crate::audio::load_mono(path, audio_rate)?
                };
                let need = audio_win * cfg.windows_per_trial;
                if a.samples.len() < need {
                    notes.push(format!(
                        "{}: {:.2} s of audio, {:.2} s needed: padded with silence",
                        path.display(),
                        a.seconds(),
                        need as f64 / f64::from(audio_rate)
                    ));
                }
                Some((path.clone(), a.samples))
            }
            _ => None,
        };
        for w in 0..cfg.windows_per_trial {
            let eeg: Vec<f32> =
                filtered.iter().flat_map(|ch| ch[w * win..(w + 1) * win].iter().map(|&v| v as f32)).collect();
            let mfcc = match &audio {
                Some((path, a)) => {
                    let seg = if cfg.causal {
                        causal::speech_window(a, w, audio_win)
                    } else {
                        speech_window(a, w, audio_win)
                    };
                    Some(planner.window(&seg, cfg, path)?)
                }
                None => None,
            };
            let video = clips.get_mut(&trial.index).and_then(|c| c.get_mut(w)).map(std::mem::take);
            samples.push(Sample {
                subject: subject.id,
                trial: trial.index,
                window: w,
                emotion: trial.emotion,
                speaking: trial.speaking,
                eeg,
                mfcc,
                video,
            });
        }
    }
    Ok(SubjectSamples {
        subject: subject.id,
        channels,
        eeg_len: win,
        mfcc_frames: cfg.mfcc_frames,
        video_len: cfg.video.as_ref().map_or(0, |v| v.per_window * v.height * v.width),
        samples,
        notes,
    })
}

/// The video windows of every trial with a clip, by trial index, when `cfg.video` asks for them: clips
/// decoded in parallel (decoding is the slow part of a subject's preprocessing).
///
/// # Errors
/// [`Error::Dataset`] when the sampling gives fewer windows than `cfg.windows_per_trial` or a zero size;
/// [`Error::Video`] naming the clip that cannot be decoded (truncated, no video track, not H.264, 4:2:2,
/// 10-bit, too short, …).
fn video_windows(
    subject: &Subject,
    cfg: &PreprocessConfig,
) -> Result<std::collections::BTreeMap<usize, Vec<Vec<f32>>>> {
    use rayon::prelude::*;
    let Some(sampling) = &cfg.video else { return Ok(std::collections::BTreeMap::new()) };
    if sampling.width == 0 || sampling.height == 0 || sampling.per_window == 0 || sampling.step == 0 {
        return Err(Error::dataset(&subject.dir, format!("video sampling needs sizes ≥ 1: {sampling:?}")));
    }
    if sampling.windows() < cfg.windows_per_trial {
        return Err(Error::dataset(
            &subject.dir,
            format!(
                "video sampling gives {} windows per clip, the EEG {}: {sampling:?}",
                sampling.windows(),
                cfg.windows_per_trial
            ),
        ));
    }
    let clips: Vec<(usize, &std::path::PathBuf)> =
        subject.trials.iter().filter_map(|t| t.video.as_ref().map(|p| (t.index, p))).collect();
    clips
        .par_iter()
        .map(|&(index, path)| {
            let windows = video::windows(path, sampling).map_err(|source| Error::Video { source })?;
            Ok((index, windows))
        })
        .collect()
}
