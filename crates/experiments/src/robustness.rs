//! The robustness matrix: every trained model evaluated on its test windows under missing and degraded
//! modalities.
//!
//! | condition | what changes |
//! |---|---|
//! | `full` | nothing: every modality as recorded |
//! | `audio_absent` | audio masked out (fused models) |
//! | `eeg_absent` | EEG masked out (fused models) |
//! | `audio_snr_20db`, `audio_snr_10db`, `audio_snr_0db` | seeded white noise added to each window's speech at that SNR (against the window's own power) before the MFCC |
//! | `eeg_channels_half` | half of the EEG channels (one seeded choice per run, the same for every model) zero after standardisation |
//! | `listening` | the listening-trial windows of the test split, audio genuinely absent (only with `--trials all`) |
//!
//! A condition applies to a model when it changes something the model reads and leaves it something to
//! read: `audio_absent` and `eeg_absent` to fused models, the SNR conditions to models that read audio,
//! `eeg_channels_half` and `listening` to models that read EEG.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use core_types::Modality;
use eav::dataset::{PreprocessConfig, Sample, add_noise, speech_mfcc, speech_windows};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Normalisation, TensorSet};
use crate::error::Result;
use crate::metrics::Metrics;
use crate::metrics::mean_std;
use crate::model::EmotionModel;
use crate::train::evaluate;

/// A test condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Every modality as recorded.
    Full,
    /// Audio masked out.
    AudioAbsent,
    /// EEG masked out.
    EegAbsent,
    /// Video masked out.
    VideoAbsent,
    /// White noise in the speech at this SNR in dB.
    AudioSnr(i32),
    /// Half of the EEG channels zero.
    EegChannelsHalf,
    /// The listening windows of the test split.
    Listening,
}

impl Condition {
    /// Every condition, in report order.
    pub const ALL: [Self; 9] = [
        Self::Full,
        Self::AudioAbsent,
        Self::EegAbsent,
        Self::VideoAbsent,
        Self::AudioSnr(20),
        Self::AudioSnr(10),
        Self::AudioSnr(0),
        Self::EegChannelsHalf,
        Self::Listening,
    ];

    /// The condition's name in results.
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::Full => "full".into(),
            Self::AudioAbsent => "audio_absent".into(),
            Self::EegAbsent => "eeg_absent".into(),
            Self::VideoAbsent => "video_absent".into(),
            Self::AudioSnr(db) => format!("audio_snr_{db}db"),
            Self::EegChannelsHalf => "eeg_channels_half".into(),
            Self::Listening => "listening".into(),
        }
    }

    /// Whether the condition applies to a model reading `modalities`.
    #[must_use]
    pub fn applies(self, modalities: &[Modality]) -> bool {
        let has = |m| modalities.contains(&m);
        let (eeg, audio, video) = (has(Modality::Eeg), has(Modality::Audio), has(Modality::Video));
        let fused = modalities.len() >= 2;
        match self {
            Self::Full => true,
            Self::AudioAbsent => fused && audio,
            Self::EegAbsent => fused && eeg,
            Self::VideoAbsent => fused && video,
            Self::AudioSnr(_) => audio,
            Self::EegChannelsHalf => eeg,
            // Listening windows have EEG and video, no audio.
            Self::Listening => eeg || video,
        }
    }
}

/// A model's accuracy under one condition, on one run's test windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionResult {
    /// The condition's name.
    pub condition: String,
    /// Test windows evaluated.
    pub windows: usize,
    /// Accuracy.
    pub accuracy: f64,
    /// Macro-F1.
    pub macro_f1: f64,
}

/// One row of the robustness table: a model under a condition, over subjects (and folds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustnessRow {
    /// `eeg_only`, `audio_only`, `video_only` or a fused set (`eeg_audio`, `eeg_audio_video`, …).
    pub modality: String,
    /// The fusion mode (null for single-modality models).
    pub fusion_mode: Option<String>,
    /// The condition's name.
    pub condition: String,
    /// Test windows over all runs.
    pub windows: usize,
    /// Mean accuracy over runs.
    pub accuracy_mean: f64,
    /// Standard deviation of the accuracy over runs.
    pub accuracy_std: f64,
    /// Mean macro-F1 over runs.
    pub macro_f1_mean: f64,
}

/// The test sets of every condition for one split, built once and shared by every model.
pub struct ConditionSets {
    sets: Vec<(Condition, TensorSet)>,
}

/// What [`ConditionSets::build`] needs to know about a split.
pub struct SplitData<'a> {
    /// Every window of the run.
    pub samples: &'a [Sample],
    /// The speaking test windows (indices into `samples`).
    pub test: &'a [usize],
    /// The listening test windows (empty unless listening windows were loaded).
    pub listening: &'a [usize],
    /// The split's standardisation.
    pub norm: &'a Normalisation,
    /// EEG samples per window.
    pub eeg_len: usize,
    /// The audio file of each (subject, trial) with audio.
    pub audio: &'a BTreeMap<(u32, usize), PathBuf>,
}

impl ConditionSets {
    /// Builds every condition's test set; the noise and the channel choice are drawn from `seed`.
    ///
    /// # Errors
    /// Audio errors naming the file (the speech is read again for the noise conditions); candle errors.
    pub fn build(d: &SplitData<'_>, pre: &PreprocessConfig, seed: u64, device: &Device) -> Result<Self> {
        let frames = pre.mfcc_frames;
        let set = |samples: &[Sample], idx: &[usize]| {
            TensorSet::build(samples, idx, d.norm, d.eeg_len, frames, device)
        };
        let full = set(d.samples, d.test)?;
        let mut sets = vec![
            (Condition::AudioAbsent, full.without(Modality::Audio)?),
            (Condition::EegAbsent, full.without(Modality::Eeg)?),
            (Condition::VideoAbsent, full.without(Modality::Video)?),
        ];
        // Noisy speech: each test trial's file read once and its noisy windows turned into MFCCs in one
        // call (one MFCC plan per trial); each window's noise drawn from (seed, subject, trial, window, SNR).
        const SNRS: [i32; 3] = [20, 10, 0];
        let mut trials: Vec<TrialKey> =
            d.test.iter().map(|&i| (d.samples[i].subject, d.samples[i].trial)).collect();
        trials.dedup();
        // Per trial: its windows' MFCCs under each SNR, `[snr][window]`.
        let mut noisy_mfcc: BTreeMap<TrialKey, Vec<Vec<Vec<f32>>>> = BTreeMap::new();
        for key in trials {
            let Some(path) = d.audio.get(&key) else { continue };
            let windows = speech_windows(path, pre)?;
            let mut noisy = Vec::with_capacity(SNRS.len() * windows.len());
            for db in SNRS {
                for (w, clean) in windows.iter().enumerate() {
                    let mut x = clean.clone();
                    let k = [seed, u64::from(key.0), key.1 as u64, w as u64, db as u64];
                    add_noise(&mut x, f64::from(db), &mut ChaCha8Rng::seed_from_u64(mix(&k)));
                    noisy.push(x);
                }
            }
            let mut mfcc = speech_mfcc(&noisy, pre, path)?.into_iter();
            let per_snr = SNRS.iter().map(|_| mfcc.by_ref().take(windows.len()).collect()).collect();
            noisy_mfcc.insert(key, per_snr);
        }
        for (k, db) in SNRS.into_iter().enumerate() {
            let noisy: Vec<Sample> = d
                .test
                .iter()
                .map(|&i| {
                    let mut s = d.samples[i].clone();
                    if let Some(m) = noisy_mfcc.get(&(s.subject, s.trial)) {
                        s.mfcc = Some(m[k][s.window].clone());
                    }
                    s
                })
                .collect();
            let idx: Vec<usize> = (0..noisy.len()).collect();
            sets.push((Condition::AudioSnr(db), set(&noisy, &idx)?));
        }
        let channels = full.eeg.dim(1)?;
        let mut order: Vec<usize> = (0..channels).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(&[seed, 0x6368_616e])));
        let keep: Vec<f32> =
            (0..channels).map(|c| if order[..channels / 2].contains(&c) { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::from_vec(keep, (1, channels, 1), device)?;
        let mut half = full.clone();
        half.eeg = half.eeg.broadcast_mul(&keep)?;
        sets.push((Condition::EegChannelsHalf, half));
        if !d.listening.is_empty() {
            sets.push((Condition::Listening, set(d.samples, d.listening)?.without(Modality::Audio)?));
        }
        sets.insert(0, (Condition::Full, full));
        Ok(Self { sets })
    }

    /// The full condition's set (the speaking test windows as recorded).
    #[must_use]
    pub fn full(&self) -> &TensorSet {
        &self.sets[0].1
    }

    /// Evaluates `model` under every condition that applies to it; the full condition's metrics first.
    ///
    /// # Errors
    /// candle errors.
    pub fn evaluate(&self, model: &EmotionModel) -> Result<(Metrics, Vec<ConditionResult>)> {
        let modalities = model.modalities();
        let mut full = None;
        let mut out = Vec::new();
        for (condition, set) in &self.sets {
            if !condition.applies(&modalities) {
                continue;
            }
            let (m, _) = evaluate(model, set, 64)?;
            out.push(ConditionResult {
                condition: condition.name(),
                windows: set.len(),
                accuracy: m.accuracy,
                macro_f1: m.macro_f1,
            });
            if *condition == Condition::Full {
                full = Some(m);
            }
        }
        let full = full.ok_or_else(|| crate::error::Error::Input("no full condition".into()))?;
        Ok((full, out))
    }
}

/// A trial: (subject, 0-based trial index).
type TrialKey = (u32, usize);

/// A seed from several numbers.
fn mix(key: &[u64]) -> u64 {
    key.iter().fold(0x9e37_79b9_7f4a_7c15, |h, k| (h ^ k).wrapping_mul(0x0100_0000_01b3).rotate_left(23))
}

/// The robustness rows of a set of runs: per (modality, fusion mode, condition), over runs, ordered by
/// condition (as [`Condition::ALL`]) and then by the models' order in `runs`.
#[must_use]
pub fn summarise(runs: &[crate::results::RunResult]) -> Vec<RobustnessRow> {
    type Key = (String, String, String);
    let mut groups: Vec<(Key, Vec<&ConditionResult>)> = Vec::new();
    for r in runs {
        for c in &r.robustness {
            let key = (r.modality.clone(), r.fusion_mode.clone(), c.condition.clone());
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => v.push(c),
                None => groups.push((key, vec![c])),
            }
        }
    }
    // Conditions in report order (stable: models keep their order within each).
    let rank = |c: &str| Condition::ALL.iter().position(|k| k.name() == c).unwrap_or(usize::MAX);
    groups.sort_by_key(|((_, _, c), _)| rank(c));
    groups
        .into_iter()
        .map(|((modality, mode, condition), cs)| {
            let acc: Vec<f64> = cs.iter().map(|c| c.accuracy).collect();
            let f1: Vec<f64> = cs.iter().map(|c| c.macro_f1).collect();
            RobustnessRow {
                fusion_mode: (!modality.ends_with("_only")).then_some(mode),
                modality,
                condition,
                windows: cs.iter().map(|c| c.windows).sum(),
                accuracy_mean: mean_std(&acc).0,
                accuracy_std: mean_std(&acc).1,
                macro_f1_mean: mean_std(&f1).0,
            }
        })
        .collect()
}

/// MultiBench-style relative robustness of each model: mean accuracy over its perturbed conditions divided
/// by its accuracy under `full` (1 means no loss), with the model's label.
#[must_use]
pub fn relative(rows: &[RobustnessRow]) -> Vec<(String, f64)> {
    let mut labels: Vec<(String, Option<String>)> = Vec::new();
    for r in rows {
        let l = (r.modality.clone(), r.fusion_mode.clone());
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    labels
        .into_iter()
        .filter_map(|(modality, mode)| {
            let mine: Vec<&RobustnessRow> =
                rows.iter().filter(|r| r.modality == modality && r.fusion_mode == mode).collect();
            let full = mine.iter().find(|r| r.condition == "full")?.accuracy_mean;
            let perturbed: Vec<f64> =
                mine.iter().filter(|r| r.condition != "full").map(|r| r.accuracy_mean).collect();
            if perturbed.is_empty() || full == 0.0 {
                return None;
            }
            let label = mode.map_or(modality.clone(), |m| format!("{modality} {m}"));
            Some((label, perturbed.iter().sum::<f64>() / perturbed.len() as f64 / full))
        })
        .collect()
}
