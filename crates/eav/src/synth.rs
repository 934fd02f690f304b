//! A synthetic EAV tree in the released layout and formats (MAT level 5 EEG and labels, 16-bit WAV audio,
//! H.264 MP4 video), with class information of known strength, so everything runs without the download.
//! The video's blob flickers at a rate set by the class (see [`write_clip`]); `--modalities …,video` reads it.
//!
//! Class structure: the EEG carries the class as the frequency of a rhythm over the posterior channels
//! (6, 10 or 20 Hz) and the speech as the pitch of a voiced, syllable-modulated tone (120, 180 or 260 Hz).
//! With both modalities informative, each separates only three groups: EEG {neutral, sadness}
//! {anger, happiness} {calmness}; audio {neutral} {sadness, anger} {happiness, calmness}. Alone each can
//! reach at most 60 % accuracy; together they identify every class. When `eeg_signal` or `audio_signal`
//! switches one modality off (pure noise), the other carries all five classes (five rhythms or five
//! pitches). `snr` sets the difficulty.
//!
//! With [`Signal::Synchrony`] the class is in *timing* only. Every 5 s window holds one EEG event (a 0.3 s
//! burst of a 10 Hz rhythm over the posterior channels) and one audio event (a 0.3 s tone at 440 Hz);
//! the EEG event's time `tₑ` is uniform over the window (0.25–4.75 s) and the audio event follows it by
//! the class's lag, wrapped around that 4.5 s span: `tₐ = 0.25 + (tₑ − 0.25 + lag) mod 4.5` with lags
//! 0.45, 1.35, 2.25, 3.15 and 4.05 s. Each modality's own event is then uniform over the window for every
//! class, so neither modality alone, nor any vector pooled over time, tells the classes apart; the signed
//! delay `tₐ − tₑ` does (it is `lag` or `lag − 4.5`, ten distinct values, two per class).

use std::path::Path;

use core_types::Emotion;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mat::{MatData, write_mat};
use crate::subject::EEG_RATE;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    /// Number of subjects (`subject1` …).
    pub subjects: u32,
    /// Trials per subject (alternating listening, speaking; a multiple of 10 gives balanced classes).
    pub trials: usize,
    /// Seconds per trial (20 in EAV: four 5 s windows).
    pub trial_seconds: f64,
    /// EEG channels (30 in EAV).
    pub channels: usize,
    /// Audio sample rate in Hz.
    pub audio_rate: u32,
    /// Amplitude of the class signal relative to the noise (both modalities).
    pub snr: f64,
    /// Whether the EEG carries class information.
    pub eeg_signal: bool,
    /// Whether the audio carries class information.
    pub audio_signal: bool,
    /// Write the EEG compressed (MATLAB's default) rather than plain (scipy's default).
    pub compress: bool,
    /// Store the EEG as class `single` (half the size) rather than `double`.
    pub single: bool,
    /// Seed: the same seed writes the same files.
    pub seed: u64,
    /// Where the class information lies.
    #[serde(default)]
    pub signal: Signal,
    /// Without audio signal: give every speaking trial a clean voiced tone (amplitude 0.3, noise 0.002)
    /// whose pitch is drawn uniformly from 110–330 Hz, unrelated to the class (a distractor a fused model
    /// can memorise), instead of noise alone.
    #[serde(default)]
    pub decoy_audio: bool,
    /// Write a video clip (H.264 in MP4, 30 fps) for every trial, listening and speaking
    /// (`Video/{NNN}_Trial_{TT}_{Listening|Speaking}_{Emotion}.mp4`). Absent from older settings: off.
    #[serde(default)]
    pub video: bool,
    /// Whether the video carries class information (see [`write_clip`]).
    #[serde(default = "yes")]
    pub video_signal: bool,
    /// Frame width and height of the clips (32 × 24 by default: small and quick to write).
    #[serde(default = "small_frames")]
    pub video_size: (usize, usize),
    /// Frame-to-frame brightness jitter of the video's blob (standard deviation in luma levels; see
    /// [`write_clip`]). The default, 9, puts video-only accuracy on the default tree near the strength the
    /// dataset's authors report for video (about 0.71), above audio and EEG; without it the blob's rate is
    /// read almost perfectly (video-only 0.96–1.00) and a fused model has nothing left to add. Absent from
    /// older settings: 0 (the clips as they were written before).
    #[serde(default)]
    pub video_jitter: f64,
}

fn yes() -> bool {
    true
}

fn small_frames() -> (usize, usize) {
    (32, 24)
}

/// Where a synthetic tree's class information lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// In each modality's content: EEG rhythm and speech pitch (see the module docs).
    #[default]
    Modalities,
    /// In the lag between an EEG event and an audio event of the same window (see the module docs).
    Synchrony,
}

impl std::str::FromStr for Signal {
    type Err = String;

    /// `modalities` or `synchrony`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "modalities" => Ok(Self::Modalities),
            "synchrony" => Ok(Self::Synchrony),
            other => Err(format!("unknown signal `{other}`; expected modalities or synchrony")),
        }
    }
}

/// The span (s) within a window where synchrony events lie, and its length.
const EVENT_SPAN: (f64, f64) = (0.25, 4.5);
/// Half-width of an event's envelope (s): a Hann window of 0.3 s.
const EVENT_HALF: f64 = 0.15;

/// The audio event's lag behind the EEG event (before wrapping) for each emotion, in seconds.
#[must_use]
pub fn synchrony_lag(emotion: Emotion) -> f64 {
    0.45 + 0.9 * emotion.index() as f64
}

/// A Hann bump of half-width [`EVENT_HALF`] centred at `centre`, evaluated at `t`.
fn bump(t: f64, centre: f64) -> f64 {
    let x = (t - centre) / EVENT_HALF;
    if x.abs() >= 1.0 { 0.0 } else { 0.5 * (1.0 + (std::f64::consts::PI * x).cos()) }
}

impl Default for SynthConfig {
    /// Two subjects × 60 trials of 20 s, 30 channels (stored as `single`), 16 kHz audio, SNR 0.6, both
    /// modalities informative; a 32 × 24 video clip per trial whose blob flickers at the class's rate.
    fn default() -> Self {
        Self {
            subjects: 2,
            trials: 60,
            trial_seconds: 20.0,
            channels: 30,
            audio_rate: 16_000,
            snr: 0.6,
            eeg_signal: true,
            audio_signal: true,
            compress: true,
            single: true,
            seed: 7,
            signal: Signal::Modalities,
            decoy_audio: false,
            video: true,
            video_signal: true,
            video_size: small_frames(),
            video_jitter: 9.0,
        }
    }
}

/// The EEG rhythm (Hz) of each emotion when both modalities carry the class: three groups.
const EEG_HZ_SHARED: [f64; 5] = [6.0, 6.0, 10.0, 10.0, 20.0];
/// The pitch (Hz) of each emotion when both modalities carry the class: three other groups.
const PITCH_HZ_SHARED: [f64; 5] = [120.0, 180.0, 180.0, 260.0, 260.0];
/// One rhythm per emotion, when the EEG alone carries the class.
const EEG_HZ_ALONE: [f64; 5] = [5.0, 8.0, 11.0, 16.0, 22.0];
/// One pitch per emotion, when the audio alone carries the class.
const PITCH_HZ_ALONE: [f64; 5] = [110.0, 150.0, 200.0, 260.0, 330.0];

/// The emotion of trial `n`: pairs of (listening, speaking) trials cycle through the five classes.
#[must_use]
pub fn emotion_of_trial(n: usize) -> Emotion {
    Emotion::ALL[(n / 2) % Emotion::COUNT]
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.into(), source }
}

/// Writes the tree under `root` (created if needed): `subject{N}/EEG/subject{N}_eeg.mat`,
/// `subject{N}/EEG/subject{N}_eeg_label.mat`, `subject{N}/Audio/{NNN}_Trial_{TT}_Speaking_{Emotion}_aud.wav`
/// and, with `video`, `subject{N}/Video/{NNN}_Trial_{TT}_{Listening|Speaking}_{Emotion}.mp4` for every
/// trial. `progress` is called after each subject.
///
/// # Errors
/// [`Error::Io`] naming the file that could not be written; [`Error::Dataset`] for a config that cannot
/// produce EAV windows (fewer than 2 trials, no channel, trials shorter than 5 s).
pub fn write_synthetic(root: &Path, cfg: &SynthConfig, progress: &dyn Fn(u32)) -> Result<()> {
    let (vw, vh) = cfg.video_size;
    let bad_video = cfg.video
        && (vw < 2
            || vh < 3
            || vw % 2 == 1
            || vh % 2 == 1
            || !(cfg.video_jitter >= 0.0 && cfg.video_jitter.is_finite()));
    if cfg.trials < 2 || cfg.channels == 0 || cfg.trial_seconds < 5.0 || cfg.audio_rate == 0 || bad_video {
        return Err(Error::dataset(root, format!("synthetic config cannot make EAV windows: {cfg:?}")));
    }
    let samples = (cfg.trial_seconds * EEG_RATE).round() as usize;
    let audio_len = (cfg.trial_seconds * f64::from(cfg.audio_rate)).round() as usize;
    let noise = Normal::new(0.0, 1.0).map_err(|e| Error::dataset(root, e.to_string()))?;
    for s in 1..=cfg.subjects {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (u64::from(s) << 32));
        let dir = root.join(format!("subject{s}"));
        for sub in ["EEG", "Audio", "Video"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir))?;
        }
        // EEG, column-major (time, channel, trial).
        let mut eeg = vec![0.0f64; samples * cfg.channels * cfg.trials];
        let mut label = vec![0.0f64; 10 * cfg.trials];
        let posterior = cfg.channels.saturating_sub(cfg.channels / 3);
        for n in 0..cfg.trials {
            let emotion = emotion_of_trial(n);
            let speaking = n % 2 == 1;
            label[n * 10 + 2 * emotion.index() + usize::from(speaking)] = 1.0;
            if cfg.signal == Signal::Synchrony {
                synchrony_trial(
                    &mut eeg[n * cfg.channels * samples..][..cfg.channels * samples],
                    &dir,
                    n,
                    cfg,
                    &mut rng,
                )?;
                continue;
            }
            let hz = if cfg.audio_signal { EEG_HZ_SHARED } else { EEG_HZ_ALONE }[emotion.index()];
            for c in 0..cfg.channels {
                let base = (n * cfg.channels + c) * samples;
                let phase = rng.random_range(0.0..std::f64::consts::TAU);
                let amp = if cfg.eeg_signal && c >= posterior { cfg.snr * 2.0 } else { 0.0 };
                // Slow drift (removed by the band-pass) plus white noise plus the class rhythm.
                let drift = rng.random_range(-1.0..1.0) * 5.0;
                for t in 0..samples {
                    let time = t as f64 / EEG_RATE;
                    eeg[base + t] = noise.sample(&mut rng)
                        + amp * (std::f64::consts::TAU * hz * time + phase).sin()
                        + drift * (std::f64::consts::TAU * 0.05 * time).sin();
                }
            }
            if speaking {
                let name = format!(
                    "{:03}_Trial_{:02}_Speaking_{}_aud.wav",
                    n + 1,
                    n / 2 + 1,
                    capitalised(emotion.as_str())
                );
                let path = dir.join("Audio").join(name);
                let pitch = if cfg.decoy_audio && !cfg.audio_signal {
                    rng.random_range(PITCH_HZ_ALONE[0]..PITCH_HZ_ALONE[4])
                } else if cfg.eeg_signal {
                    PITCH_HZ_SHARED[emotion.index()]
                } else {
                    PITCH_HZ_ALONE[emotion.index()]
                };
                write_speech(&path, cfg, audio_len, pitch, &mut rng)?;
            }
        }
        if cfg.video {
            // Its own generator: the EEG and audio are the same with or without video.
            let mut vrng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (u64::from(s) << 32) ^ VIDEO_SALT);
            for n in 0..cfg.trials {
                let emotion = emotion_of_trial(n);
                let kind = if n % 2 == 1 { "Speaking" } else { "Listening" };
                let name = format!(
                    "{:03}_Trial_{:02}_{kind}_{}.mp4",
                    n + 1,
                    n / 2 + 1,
                    capitalised(emotion.as_str())
                );
                write_clip(&dir.join("Video").join(name), cfg, emotion, &mut vrng)?;
            }
        }
        let eeg_path = dir.join("EEG").join(format!("subject{s}_eeg.mat"));
        let dims = [samples, cfg.channels, cfg.trials];
        if cfg.single {
            let eeg: Vec<f32> = eeg.iter().map(|&v| v as f32).collect();
            write_mat(&eeg_path, &[("seg1", &dims, MatData::F32(&eeg))], cfg.compress)?;
        } else {
            write_mat(&eeg_path, &[("seg1", &dims, MatData::F64(&eeg))], cfg.compress)?;
        }
        let label_path = dir.join("EEG").join(format!("subject{s}_eeg_label.mat"));
        write_mat(&label_path, &[("label", &[10, cfg.trials], MatData::F64(&label))], cfg.compress)?;
        progress(s);
    }
    Ok(())
}

/// One trial of a synchrony tree: EEG (`[channel][time]`, written into `eeg`) and, for a speaking trial,
/// its audio file; one event pair per 5 s window (see the module docs).
fn synchrony_trial(
    eeg: &mut [f64],
    dir: &Path,
    n: usize,
    cfg: &SynthConfig,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let emotion = emotion_of_trial(n);
    let samples = eeg.len() / cfg.channels;
    let windows = (cfg.trial_seconds / 5.0).floor() as usize;
    let (start, span) = EVENT_SPAN;
    let events: Vec<(f64, f64)> = (0..windows)
        .map(|w| {
            let te = start + rng.random_range(0.0..span);
            let ta = start + (te - start + synchrony_lag(emotion)).rem_euclid(span);
            (5.0 * w as f64 + te, 5.0 * w as f64 + ta)
        })
        .collect();
    let noise = Normal::new(0.0, 1.0).map_err(|e| Error::dataset(dir, e.to_string()))?;
    let posterior = cfg.channels.saturating_sub(cfg.channels / 3);
    for c in 0..cfg.channels {
        let phase = rng.random_range(0.0..std::f64::consts::TAU);
        let amp = if cfg.eeg_signal && c >= posterior { cfg.snr * 4.0 } else { 0.0 };
        for (t, v) in eeg[c * samples..(c + 1) * samples].iter_mut().enumerate() {
            let time = t as f64 / EEG_RATE;
            let envelope: f64 = events.iter().map(|(te, _)| bump(time, *te)).sum();
            *v = noise.sample(rng) + amp * envelope * (std::f64::consts::TAU * 10.0 * time + phase).sin();
        }
    }
    if n % 2 == 1 {
        let name =
            format!("{:03}_Trial_{:02}_Speaking_{}_aud.wav", n + 1, n / 2 + 1, capitalised(emotion.as_str()));
        let path = dir.join("Audio").join(name);
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: cfg.audio_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).map_err(|e| Error::wav(&path, e.to_string()))?;
        let rate = f64::from(cfg.audio_rate);
        let noise = Normal::new(0.0, 0.05).map_err(|e| Error::dataset(&path, e.to_string()))?;
        let loud = if cfg.audio_signal { cfg.snr.min(3.0) * 0.3 } else { 0.0 };
        let len = (cfg.trial_seconds * rate).round() as usize;
        for i in 0..len {
            let t = i as f64 / rate;
            let envelope: f64 = events.iter().map(|(_, ta)| bump(t, *ta)).sum();
            let v = (loud * envelope * (std::f64::consts::TAU * 440.0 * t).sin() + noise.sample(rng))
                .clamp(-1.0, 1.0);
            w.write_sample((v * 32767.0).round() as i16).map_err(|e| Error::wav(&path, e.to_string()))?;
        }
        w.finalize().map_err(|e| Error::wav(&path, e.to_string()))?;
    }
    Ok(())
}

/// Separates the video's random stream from the EEG's and audio's.
const VIDEO_SALT: u64 = 0x5649_4445_4f00_0001;

/// The flicker rate (Hz) of the video blob for each emotion: sampled at 5 frames/s (the official windows)
/// all five stay below that rate's 2.5 Hz limit.
const VIDEO_HZ: [f64; 5] = [0.6, 1.0, 1.4, 1.8, 2.2];

/// One trial's clip: `trial_seconds` at 30 fps of grey noise (σ = 12 levels around 110) with a centred
/// square blob (a third of the frame's height) whose brightness swings by `40 · min(snr, 1.5)` levels at
/// its emotion's rate ([`VIDEO_HZ`], random phase), plus a brightness jitter drawn for each frame (σ =
/// `video_jitter` levels, the same over the whole blob, so it does not average out over its pixels);
/// without video signal the blob flickers at a rate drawn uniformly from the same range, unrelated to
/// the class.
///
/// # Errors
/// Video errors naming the file, as [`Error::Video`].
pub fn write_clip(path: &Path, cfg: &SynthConfig, emotion: Emotion, rng: &mut ChaCha8Rng) -> Result<()> {
    let (w, h) = cfg.video_size;
    let fps = 30u32;
    let frames = (cfg.trial_seconds * f64::from(fps)).round() as usize;
    let hz =
        if cfg.video_signal { VIDEO_HZ[emotion.index()] } else { rng.random_range(VIDEO_HZ[0]..VIDEO_HZ[4]) };
    let phase = rng.random_range(0.0..std::f64::consts::TAU);
    let swing = 40.0 * cfg.snr.min(1.5);
    let noise = Normal::new(0.0, 12.0).map_err(|e| Error::dataset(path, e.to_string()))?;
    let jitter = Normal::new(0.0, cfg.video_jitter).map_err(|e| Error::dataset(path, e.to_string()))?;
    let side = (h / 3).max(1);
    let (x0, y0) = ((w - side.min(w)) / 2, (h - side) / 2);
    let clip: Vec<Vec<u8>> = (0..frames)
        .map(|f| {
            let t = f as f64 / f64::from(fps);
            // No draw without jitter: the clips of a tree written without it stay as they were.
            let jolt = if cfg.video_jitter > 0.0 { jitter.sample(rng) } else { 0.0 };
            let blob = 150.0 + swing * (std::f64::consts::TAU * hz * t + phase).sin() + jolt;
            (0..w * h)
                .map(|i| {
                    let (x, y) = (i % w, i / w);
                    let inside = (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
                    let base = if inside { blob } else { 110.0 };
                    (base + noise.sample(rng)).round().clamp(16.0, 235.0) as u8
                })
                .collect()
        })
        .collect();
    video::write_mp4(path, w, h, fps, 24, &clip).map_err(|source| Error::Video { source })
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

/// A voiced tone at `pitch` (five harmonics, ±5 % per file), amplitude-modulated at a syllable rate, in
/// noise; without audio signal, noise alone (or, with `decoy_audio`, the tone at a pitch unrelated to the
/// class).
fn write_speech(path: &Path, cfg: &SynthConfig, len: usize, pitch: f64, rng: &mut ChaCha8Rng) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: cfg.audio_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).map_err(|e| Error::wav(path, e.to_string()))?;
    let rate = f64::from(cfg.audio_rate);
    let pitch = pitch * rng.random_range(0.95..1.05);
    let syllable = rng.random_range(3.0..5.0);
    let decoy = cfg.decoy_audio && !cfg.audio_signal;
    let noise = Normal::new(0.0, if decoy { 0.002 } else { 0.05 })
        .map_err(|e| Error::dataset(path, e.to_string()))?;
    let voiced = if decoy {
        0.3
    } else if cfg.audio_signal {
        cfg.snr.min(3.0) * 0.1
    } else {
        0.0
    };
    for i in 0..len {
        let t = i as f64 / rate;
        let envelope = 0.5 * (1.0 - (std::f64::consts::TAU * syllable * t).cos());
        let tone: f64 =
            (1..=5).map(|h| (std::f64::consts::TAU * pitch * f64::from(h) * t).sin() / f64::from(h)).sum();
        let v = (voiced * envelope * tone + noise.sample(rng)).clamp(-1.0, 1.0);
        w.write_sample((v * 32767.0).round() as i16).map_err(|e| Error::wav(path, e.to_string()))?;
    }
    w.finalize().map_err(|e| Error::wav(path, e.to_string()))
}
