//! One subject of the EAV dataset as released: `subject{N}/EEG/*_eeg.mat`, `*_eeg_label.mat`,
//! `Audio/{NNN}_Trial_{TT}_Speaking_{Emotion}_aud.wav`, `Video/`.

use std::path::{Path, PathBuf};

use core_types::Emotion;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::mat::{read_mat, read_mat_as};

/// The 30 EEG channel names in file order (from a third party's reading of the files; unverified).
pub const CHANNEL_NAMES: [&str; 30] = [
    "FP1", "FP2", "F7", "F3", "FZ", "F4", "F8", "FC5", "FC1", "FC2", "FC6", "T7", "C3", "CZ", "C4", "T8",
    "CP5", "CP1", "CP2", "CP6", "P7", "P3", "PZ", "P4", "P8", "PO9", "O1", "OZ", "O2", "PO10",
];

/// EEG sample rate of the released files, in Hz.
pub const EEG_RATE: f64 = 500.0;

/// One trial's metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trial {
    /// 0-based index in the EEG file (the audio name's `NNN` is this + 1).
    pub index: usize,
    /// The emotion from the label file.
    pub emotion: Emotion,
    /// Speaking (odd rows of the label file) or listening.
    pub speaking: bool,
    /// The matched audio file (speaking trials).
    pub audio: Option<PathBuf>,
    /// The matched video clip (`Video/{NNN}_Trial_{TT}_{Listening|Speaking}_{Emotion}.mp4`).
    pub video: Option<PathBuf>,
}

/// A subject folder found under the data root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubjectDir {
    /// The subject number (`subject7` and `subject07` are both 7).
    pub id: u32,
    /// The folder.
    pub path: PathBuf,
}

/// Lists `subjectN` / `subject0N` folders under `root`, sorted by number.
///
/// # Errors
/// [`Error::Io`] when `root` cannot be read; [`Error::Dataset`] when it holds no subject folder.
pub fn discover(root: &Path) -> Result<Vec<SubjectDir>> {
    let entries = std::fs::read_dir(root).map_err(|source| Error::Io { path: root.into(), source })?;
    let mut subjects = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io { path: root.into(), source })?;
        let name = entry.file_name().to_string_lossy().to_lowercase();
        if let Some(id) = name.strip_prefix("subject").and_then(|n| n.parse::<u32>().ok())
            && entry.path().is_dir()
        {
            subjects.push(SubjectDir { id, path: entry.path() });
        }
    }
    if subjects.is_empty() {
        return Err(Error::dataset(root, "no subject folders (expected subject1 … subjectN)"));
    }
    subjects.sort();
    Ok(subjects)
}

/// The audio files of a subject folder by 0-based trial index (from the `NNN` of their names), without
/// reading the EEG; files whose names do not parse are left out. [`load_subject`] checks them against the
/// label file.
///
/// # Errors
/// [`Error::Io`] when the `Audio` folder exists but cannot be read.
pub fn audio_files(sd: &SubjectDir) -> Result<std::collections::BTreeMap<usize, PathBuf>> {
    let dir = sd.path.join("Audio");
    let mut out = std::collections::BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(&dir).map_err(|source| Error::Io { path: dir.clone(), source })? {
        let path = entry.map_err(|source| Error::Io { path: dir.clone(), source })?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let Some(index) = parse_audio_name(&name).and_then(|(number, _)| number.checked_sub(1)) {
            out.insert(index, path);
        }
    }
    Ok(out)
}

/// A loaded subject: EEG of every trial, labels and matched audio files.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Subject number.
    pub id: u32,
    /// Its folder.
    pub dir: PathBuf,
    /// EEG channels per trial.
    pub channels: usize,
    /// EEG samples per trial and channel.
    pub samples_per_trial: usize,
    /// Trials in file order.
    pub trials: Vec<Trial>,
    /// Files found in `Video/` (clips whose name matches their trial are in [`Trial::video`]).
    pub video_files: usize,
    /// Audio files that could not be matched to a trial (name not understood); not fatal.
    pub unmatched_audio: Vec<PathBuf>,
    /// EEG, trial-major: `[trial][channel][time]`.
    eeg: Vec<f32>,
}

impl Subject {
    /// EEG of trial `i`, `[channel][time]`.
    ///
    /// # Panics
    /// When `i ≥ trials.len()`.
    #[must_use]
    pub fn eeg_trial(&self, i: usize) -> &[f32] {
        let n = self.channels * self.samples_per_trial;
        &self.eeg[i * n..(i + 1) * n]
    }
}

fn find_one(dir: &Path, pred: impl Fn(&str) -> bool, what: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| pred(&n.to_string_lossy().to_lowercase())))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::dataset(dir, format!("no {what} file"))),
        _ => Err(Error::dataset(dir, format!("several {what} files: {found:?}"))),
    }
}

/// `(NNN, speaking, emotion)` of a clip named `{NNN}_Trial_{TT}_{Listening|Speaking}_{Emotion}.mp4`.
fn parse_video_name(name: &str) -> Option<(usize, bool, Emotion)> {
    let stem = name.strip_suffix(".mp4").or_else(|| name.strip_suffix(".MP4"))?;
    let parts: Vec<&str> = stem.split('_').collect();
    let [num, .., kind, emotion] = parts.as_slice() else { return None };
    let speaking = match kind.to_ascii_lowercase().as_str() {
        "speaking" => true,
        "listening" => false,
        _ => return None,
    };
    if !trial_number(num) {
        return None;
    }
    Some((num.parse().ok()?, speaking, emotion.parse().ok()?))
}

/// A file name's trial number `NNN`: EAV writes three digits (`001`…`200`), zero-padded; longer numbers
/// (a synthetic tree of 1000 trials or more) are read too.
fn trial_number(num: &str) -> bool {
    num.len() >= 3 && num.bytes().all(|b| b.is_ascii_digit())
}

/// An audio file name understood: the 1-based trial number and the emotion it names.
fn parse_audio_name(name: &str) -> Option<(usize, Emotion)> {
    let stem = name.strip_suffix(".wav").or_else(|| name.strip_suffix(".WAV"))?;
    let parts: Vec<&str> = stem.split('_').collect();
    let [num, .., speaking, emotion, aud] = parts.as_slice() else { return None };
    if !aud.eq_ignore_ascii_case("aud") || !speaking.eq_ignore_ascii_case("speaking") || !trial_number(num) {
        return None;
    }
    Some((num.parse().ok()?, emotion.parse().ok()?))
}

/// Loads one subject: EEG (`seg1` or `seg`, dims (time, channel, trial)), labels (`label`, (10, trial),
/// one-hot per column, row = 2·emotion + speaking) and audio files matched to speaking trials.
///
/// # Errors
/// [`Error::Dataset`] or [`Error::Mat`] naming the file and the reason: missing files, wrong variable name,
/// wrong dims, label columns ≠ trials, a column that is not one-hot, NaN/Inf samples, an audio file whose
/// emotion disagrees with the label or whose trial is not a speaking trial.
pub fn load_subject(sd: &SubjectDir) -> Result<Subject> {
    let eeg_dir = sd.path.join("EEG");
    let eeg_path = find_one(&eeg_dir, |n| n.ends_with("_eeg.mat"), "*_eeg.mat")?;
    let label_path = find_one(&eeg_dir, |n| n.ends_with("_eeg_label.mat"), "*_eeg_label.mat")?;

    // Decoded straight to f32, the precision everything downstream uses: half the memory of f64.
    let mut mat = read_mat_as::<f32>(&eeg_path, &|n| n == "seg1" || n == "seg")?;
    let found = ["seg1", "seg"].iter().find_map(|name| mat.variables.iter().position(|v| v.name == *name));
    let Some(var) = found.map(|i| mat.variables.swap_remove(i)) else {
        let names: Vec<&str> = mat.variables.iter().map(|v| v.name.as_str()).collect();
        return Err(Error::dataset(&eeg_path, format!("no variable `seg1` or `seg` (found {names:?})")));
    };
    let &[samples, channels, n_trials] = var.dims.as_slice() else {
        return Err(Error::dataset(
            &eeg_path,
            format!(
                "variable `{}` has {} dims {:?}, expected 3 (time, channel, trial)",
                var.name,
                var.dims.len(),
                var.dims
            ),
        ));
    };
    // Column-major (time, channel, trial) is row-major [trial][channel][time]: the order is kept.
    let eeg = var.data.ok_or_else(|| {
        Error::dataset(
            &eeg_path,
            format!("variable `{}` is {}, not a numeric array", var.name, var.class.name()),
        )
    })?;
    if let Some(i) = eeg.iter().position(|v| !v.is_finite()) {
        let (t, c, n) = (i % samples, (i / samples) % channels, i / (samples * channels));
        return Err(Error::dataset(
            &eeg_path,
            format!(
                "non-finite sample {} at trial {}, channel {}, time {t} (or beyond the f32 range)",
                eeg[i],
                n + 1,
                c + 1
            ),
        ));
    }

    let labels = read_mat(&label_path, &|n| n == "label")?;
    let lab = labels.get("label").ok_or_else(|| Error::dataset(&label_path, "no variable `label`"))?;
    if lab.dims.len() != 2 || lab.dims[0] != 10 || lab.dims[1] != n_trials {
        return Err(Error::dataset(
            &label_path,
            format!(
                "`label` has dims {:?}, expected [10, {n_trials}] (10 rows, one column per EEG trial)",
                lab.dims
            ),
        ));
    }
    let ld = lab.data.as_ref().ok_or_else(|| Error::dataset(&label_path, "`label` is not numeric"))?;
    let mut trials = Vec::with_capacity(n_trials);
    for (index, col) in ld.chunks_exact(10).enumerate() {
        let hot: Vec<usize> = col.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(r, _)| r).collect();
        let [row] = hot.as_slice() else {
            return Err(Error::dataset(
                &label_path,
                format!("column {} is not one-hot (non-zero rows {hot:?})", index + 1),
            ));
        };
        if col[*row] != 1.0 {
            return Err(Error::dataset(
                &label_path,
                format!("column {} holds {} instead of 1", index + 1, col[*row]),
            ));
        }
        let emotion = Emotion::from_index(row / 2).unwrap_or(Emotion::Neutral);
        trials.push(Trial { index, emotion, speaking: row % 2 == 1, audio: None, video: None });
    }

    let mut unmatched_audio = Vec::new();
    let audio_dir = sd.path.join("Audio");
    if audio_dir.is_dir() {
        let entries =
            std::fs::read_dir(&audio_dir).map_err(|source| Error::Io { path: audio_dir.clone(), source })?;
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for path in files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let Some((number, emotion)) = parse_audio_name(&name) else {
                unmatched_audio.push(path);
                continue;
            };
            let Some(trial) = number.checked_sub(1).and_then(|i| trials.get_mut(i)) else {
                return Err(Error::dataset(
                    &path,
                    format!("trial {number} does not exist ({n_trials} trials)"),
                ));
            };
            if !trial.speaking {
                return Err(Error::dataset(
                    &path,
                    format!("trial {number} is a listening trial in the label file"),
                ));
            }
            if trial.emotion != emotion {
                return Err(Error::dataset(
                    &path,
                    format!("names {emotion} but the label file says trial {number} is {}", trial.emotion),
                ));
            }
            trial.audio = Some(path);
        }
    }
    let video_dir = sd.path.join("Video");
    let mut video_files = 0;
    if video_dir.is_dir() {
        let entries =
            std::fs::read_dir(&video_dir).map_err(|source| Error::Io { path: video_dir.clone(), source })?;
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        video_files = files.len();
        for path in files {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            // Clips are matched, not opened: a clip is read only when video is asked for.
            let Some((number, speaking, emotion)) = parse_video_name(&name) else { continue };
            let Some(trial) = number.checked_sub(1).and_then(|i| trials.get_mut(i)) else { continue };
            if trial.speaking == speaking && trial.emotion == emotion {
                trial.video = Some(path);
            }
        }
    }
    Ok(Subject {
        id: sd.id,
        dir: sd.path.clone(),
        channels,
        samples_per_trial: samples,
        trials,
        video_files,
        unmatched_audio,
        eeg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_give_their_trial_numbers_with_three_digits_or_more() {
        assert_eq!(parse_audio_name("002_Trial_01_Speaking_Neutral_aud.wav"), Some((2, Emotion::Neutral)));
        assert_eq!(
            parse_audio_name("1000_Trial_500_Speaking_Calmness_aud.wav"),
            Some((1000, Emotion::Calmness))
        );
        assert_eq!(
            parse_video_name("1999_Trial_1000_Listening_Anger.mp4"),
            Some((1999, false, Emotion::Anger))
        );
        assert_eq!(parse_video_name("010_Trial_05_Speaking_Sadness.mp4"), Some((10, true, Emotion::Sadness)));
        for bad in [
            "02_Trial_01_Speaking_Neutral_aud.wav",
            "0a2_Trial_01_Speaking_Neutral_aud.wav",
            "+12_Trial_01_Speaking_Neutral_aud.wav",
        ] {
            assert_eq!(parse_audio_name(bad), None, "{bad}");
        }
        assert_eq!(parse_video_name("12_Trial_01_Speaking_Neutral.mp4"), None);
    }
}
