//! Honest evaluation splits. Every split keeps a trial's windows together, never tunes on the test part,
//! and is deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dataset::Sample;

/// An evaluation protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Within subject, per class, chronological: the first 70 % of trials train, the rest test.
    Official,
    /// Within subject, trial-grouped k-fold (trials dealt to folds per class in order).
    KFold(usize),
    /// Leave one subject out: train on all others, test on it.
    Loso,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    /// `official`, `kfold:K` (K ≥ 2) or `loso`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "official" => Ok(Self::Official),
            "loso" => Ok(Self::Loso),
            _ => match s.strip_prefix("kfold:").map(str::parse::<usize>) {
                Some(Ok(k)) if k >= 2 => Ok(Self::KFold(k)),
                _ => Err(format!("unknown split `{s}`; expected official, kfold:K (K ≥ 2) or loso")),
            },
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Official => f.write_str("official"),
            Self::KFold(k) => write!(f, "kfold:{k}"),
            Self::Loso => f.write_str("loso"),
        }
    }
}

/// Indices into a sample list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Training windows.
    pub train: Vec<usize>,
    /// Validation windows, carved from the training trials (never from the test part).
    pub val: Vec<usize>,
    /// Test windows.
    pub test: Vec<usize>,
}

/// Lists keyed by `(subject, trial)` or `(subject, class)`.
type Groups = BTreeMap<(u32, usize), Vec<usize>>;

/// `(subject, trial)` → window indices, and per (subject, class) the trials in chronological order.
fn trials_by_class(samples: &[Sample]) -> (Groups, Groups) {
    let mut windows = Groups::new();
    let mut classes = Groups::new();
    for (i, s) in samples.iter().enumerate() {
        let w = windows.entry((s.subject, s.trial)).or_default();
        if w.is_empty() {
            classes.entry((s.subject, s.emotion.index())).or_default().push(s.trial);
        }
        w.push(i);
    }
    for trials in classes.values_mut() {
        trials.sort_unstable();
    }
    (windows, classes)
}

fn collect(
    windows: &BTreeMap<(u32, usize), Vec<usize>>,
    subject: u32,
    trials: &[usize],
    out: &mut Vec<usize>,
) {
    for t in trials {
        out.extend_from_slice(&windows[&(subject, *t)]);
    }
}

/// Moves the chronologically last `val_fraction` of each class's training trials to validation.
fn carve(train_trials: &[usize], val_fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let n_val = if train_trials.len() >= 2 {
        ((train_trials.len() as f64) * val_fraction).round() as usize
    } else {
        0
    };
    let n_val = n_val.min(train_trials.len().saturating_sub(1));
    let cut = train_trials.len() - n_val;
    (train_trials[..cut].to_vec(), train_trials[cut..].to_vec())
}

/// The official EAV split: within each subject and class, the first `train_fraction` of trials (rounded)
/// train and the rest test, in recording order; then `val_fraction` of each class's training trials (the
/// latest) validate.
#[must_use]
pub fn official(samples: &[Sample], train_fraction: f64, val_fraction: f64) -> Split {
    let (windows, classes) = trials_by_class(samples);
    let mut split = Split::default();
    for (&(subject, _), trials) in &classes {
        let n_train = ((trials.len() as f64) * train_fraction).round() as usize;
        let n_train = n_train.clamp(usize::from(trials.len() > 1), trials.len().saturating_sub(1).max(1));
        let (train, val) = carve(&trials[..n_train], val_fraction);
        collect(&windows, subject, &train, &mut split.train);
        collect(&windows, subject, &val, &mut split.val);
        collect(&windows, subject, &trials[n_train..], &mut split.test);
    }
    split
}

/// Fold `fold` of a trial-grouped k-fold: within each subject and class, trial `j` (in order) belongs to
/// fold `j mod k`.
#[must_use]
pub fn kfold(samples: &[Sample], k: usize, fold: usize, val_fraction: f64) -> Split {
    let (windows, classes) = trials_by_class(samples);
    let mut split = Split::default();
    for (&(subject, _), trials) in &classes {
        let (test, rest): (Vec<_>, Vec<_>) = trials.iter().enumerate().partition(|(j, _)| j % k == fold);
        let rest: Vec<usize> = rest.into_iter().map(|(_, t)| *t).collect();
        let test: Vec<usize> = test.into_iter().map(|(_, t)| *t).collect();
        let (train, val) = carve(&rest, val_fraction);
        collect(&windows, subject, &train, &mut split.train);
        collect(&windows, subject, &val, &mut split.val);
        collect(&windows, subject, &test, &mut split.test);
    }
    split
}

/// Leave `held_out` out: its windows test; the other subjects' windows train, with the latest
/// `val_fraction` of each (subject, class)'s trials validating.
#[must_use]
pub fn loso(samples: &[Sample], held_out: u32, val_fraction: f64) -> Split {
    let (windows, classes) = trials_by_class(samples);
    let mut split = Split::default();
    for (&(subject, _), trials) in &classes {
        if subject == held_out {
            collect(&windows, subject, trials, &mut split.test);
        } else {
            let (train, val) = carve(trials, val_fraction);
            collect(&windows, subject, &train, &mut split.train);
            collect(&windows, subject, &val, &mut split.val);
        }
    }
    split
}

/// Deals the windows `indices` of `samples` (a training part) into `k` folds, keeping each trial's windows
/// together: within each subject and class, trial `j` in recording order goes to fold `j mod k`, so every
/// fold holds trials of every class that has at least `k` of them. Deterministic.
#[must_use]
pub fn trial_folds(samples: &[Sample], indices: &[usize], k: usize) -> Vec<Vec<usize>> {
    let mut windows = Groups::new();
    let mut classes = Groups::new();
    for &i in indices {
        let s = &samples[i];
        let w = windows.entry((s.subject, s.trial)).or_default();
        if w.is_empty() {
            classes.entry((s.subject, s.emotion.index())).or_default().push(s.trial);
        }
        w.push(i);
    }
    let mut folds = vec![Vec::new(); k.max(1)];
    for (&(subject, _), trials) in &mut classes {
        trials.sort_unstable();
        for (j, t) in trials.iter().enumerate() {
            collect(&windows, subject, std::slice::from_ref(t), &mut folds[j % k.max(1)]);
        }
    }
    folds
}

/// Per-channel mean and standard deviation of EEG windows, fitted on training windows only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Mean per channel.
    pub mean: Vec<f32>,
    /// Standard deviation per channel (at least 1e-6).
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Fits on the windows `indices` of `samples` (each `[channel][len]`).
    #[must_use]
    pub fn fit(samples: &[Sample], indices: &[usize], channels: usize, len: usize) -> Self {
        let mut sum = vec![0.0f64; channels];
        let mut sq = vec![0.0f64; channels];
        for &i in indices {
            for (c, ch) in samples[i].eeg.chunks_exact(len).enumerate().take(channels) {
                for &v in ch {
                    sum[c] += f64::from(v);
                    sq[c] += f64::from(v) * f64::from(v);
                }
            }
        }
        let n = (indices.len() * len).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std =
            sq.iter().zip(&mean).map(|(q, m)| ((q / n - m * m).max(0.0).sqrt()).max(1e-6) as f32).collect();
        Self { mean: mean.into_iter().map(|m| m as f32).collect(), std }
    }

    /// Standardises one window in place.
    pub fn apply(&self, eeg: &mut [f32], len: usize) {
        for ((ch, m), s) in eeg.chunks_exact_mut(len).zip(&self.mean).zip(&self.std) {
            ch.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
    }
}
