//! `cargo xtask inspect --data-dir DIR [--json]`: validates and summarises an EAV copy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use core_types::Emotion;
use eav::subject::{discover, load_subject};
use serde::Serialize;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The EAV root (holding `subject1`, `subject2`, …).
    #[arg(long)]
    data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct SubjectReport {
    id: u32,
    path: String,
    usable: bool,
    trials: usize,
    channels: usize,
    samples_per_trial: usize,
    sample_rate: f64,
    speaking_trials: usize,
    audio_files: usize,
    video_files: usize,
    /// Clips whose header the decoder reads (H.264, 4:2:0, 8-bit, progressive) and that last the trial.
    video_readable: usize,
    class_counts: BTreeMap<String, usize>,
    problems: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    data_dir: String,
    subjects: Vec<SubjectReport>,
    problems: Vec<String>,
    peak_memory_mib: Option<f64>,
}

/// A field of the first processor in `/proc/cpuinfo` (`"model name"`, `"cpu family"`, …); `None` where
/// there is no such file or field.
pub fn cpu_field(key: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_owned()))
}

/// Peak resident memory of this process (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The MFCC's sample rate: audio below it is upsampled, which adds no information.
const MFCC_RATE: u32 = 16_000;

/// Checks one audio file's header against its trial: a problem naming the file, if any, and whether
/// `compare` can read the file at all.
fn check_audio(path: &Path, trial_seconds: f64) -> (Option<String>, bool) {
    let info = match eav::audio::probe_wav(path) {
        Ok(info) => info,
        Err(e) => return (Some(e.to_string()), false),
    };
    let p = path.display();
    let seconds = info.seconds();
    let problem = if seconds + 0.01 < trial_seconds {
        Some(format!(
            "{p}: {seconds:.2} s of audio for a {trial_seconds:.2} s trial (runs pad it with silence)"
        ))
    } else if seconds > 1.5 * trial_seconds {
        Some(format!("{p}: {seconds:.2} s of audio for a {trial_seconds:.2} s trial (is it the right file?)"))
    } else if info.sample_rate < MFCC_RATE {
        Some(format!(
            "{p}: sampled at {} Hz, below the MFCC's {MFCC_RATE} Hz (upsampled, so its upper band is empty)",
            info.sample_rate
        ))
    } else {
        None
    };
    (problem, true)
}

/// Opens the header of every clip in a subject's `Video/` folder: problems naming the clip (unreadable,
/// a format the decoder does not read, shorter than the trial) and a count of the trials without a clip,
/// and how many clips are fine. A subject without clips has nothing to check.
fn check_video(dir: &Path, trial_seconds: f64, trials: usize) -> (Vec<String>, usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return (Vec::new(), 0) };
    let mut clips: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("mp4")))
        .collect();
    clips.sort();
    let (mut problems, mut ok) = (Vec::new(), 0);
    for clip in &clips {
        match video::probe(clip) {
            Err(e) => problems.push(e.to_string()),
            Ok(info) => match info.problem() {
                Some(why) => problems.push(format!("{}: cannot decode: {why}", clip.display())),
                None if info.duration_s + 0.05 < trial_seconds => problems.push(format!(
                    "{}: {:.2} s of video for a {trial_seconds:.2} s trial",
                    clip.display(),
                    info.duration_s
                )),
                None => ok += 1,
            },
        }
    }
    if !clips.is_empty() && clips.len() < trials {
        problems.push(format!("{}: {} clips for {trials} trials", dir.display(), clips.len()));
    }
    (problems, ok)
}

/// Runs the command; exits non-zero when any subject is unusable or any file has a problem.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let mut report = Report {
        data_dir: args.data_dir.display().to_string(),
        subjects: Vec::new(),
        problems: Vec::new(),
        peak_memory_mib: None,
    };
    match discover(&args.data_dir) {
        Err(e) => report.problems.push(e.to_string()),
        Ok(dirs) => {
            let bar = crate::progress::bar(dirs.len() as u64, "checking subjects");
            for sd in dirs {
                let mut r = SubjectReport {
                    id: sd.id,
                    path: sd.path.display().to_string(),
                    usable: false,
                    trials: 0,
                    channels: 0,
                    samples_per_trial: 0,
                    sample_rate: eav::subject::EEG_RATE,
                    speaking_trials: 0,
                    audio_files: 0,
                    video_files: 0,
                    video_readable: 0,
                    class_counts: Emotion::ALL.iter().map(|e| (e.to_string(), 0)).collect(),
                    problems: Vec::new(),
                };
                match load_subject(&sd) {
                    Ok(s) => {
                        r.usable = true;
                        r.trials = s.trials.len();
                        r.channels = s.channels;
                        r.samples_per_trial = s.samples_per_trial;
                        r.speaking_trials = s.trials.iter().filter(|t| t.speaking).count();
                        r.audio_files = s.trials.iter().filter(|t| t.audio.is_some()).count();
                        r.video_files = s.video_files;
                        for t in &s.trials {
                            *r.class_counts.entry(t.emotion.to_string()).or_default() += 1;
                        }
                        for t in s.trials.iter().filter(|t| t.speaking && t.audio.is_none()) {
                            r.problems.push(format!("speaking trial {} has no audio file", t.index + 1));
                        }
                        let trial_seconds = s.samples_per_trial as f64 / eav::subject::EEG_RATE;
                        for path in s.trials.iter().filter_map(|t| t.audio.as_deref()) {
                            let (problem, readable) = check_audio(path, trial_seconds);
                            r.problems.extend(problem);
                            r.usable &= readable;
                        }
                        let (problems, readable) =
                            check_video(&sd.path.join("Video"), trial_seconds, s.trials.len());
                        r.problems.extend(problems);
                        r.video_readable = readable;
                        for p in &s.unmatched_audio {
                            r.problems.push(format!("{}: audio file name not understood", p.display()));
                        }
                    }
                    Err(e) => r.problems.push(e.to_string()),
                }
                if !r.usable {
                    report.problems.push(format!("subject {} is unusable", r.id));
                }
                report.subjects.push(r);
                bar.inc(1);
            }
            bar.finish_and_clear();
        }
    }
    report.peak_memory_mib = peak_rss_mib();
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        say!("{}: {} subjects", report.data_dir, report.subjects.len());
        say!(
            "{:>7} {:>6} {:>8} {:>8} {:>8} {:>6}  classes (n/s/a/h/c)  problems",
            "subject",
            "trials",
            "channels",
            "samples",
            "speaking",
            "audio"
        );
        for s in &report.subjects {
            let classes: Vec<String> =
                Emotion::ALL.iter().map(|e| s.class_counts[e.as_str()].to_string()).collect();
            say!(
                "{:>7} {:>6} {:>8} {:>8} {:>8} {:>6}  {:<19}  {}",
                s.id,
                s.trials,
                s.channels,
                s.samples_per_trial,
                s.speaking_trials,
                s.audio_files,
                classes.join("/"),
                first_problems(&s.problems, SHOWN_PROBLEMS)
            );
        }
        for p in &report.problems {
            say!("problem: {p}");
        }
        if let Some(m) = report.peak_memory_mib {
            say!("peak memory: {m:.0} MiB");
        }
    }
    let problems = report.problems.len() + report.subjects.iter().map(|s| s.problems.len()).sum::<usize>();
    if problems == 0 { Ok(()) } else { anyhow::bail!("{problems} problem(s) found") }
}

/// Problems per subject in the table; `--json` lists every one.
const SHOWN_PROBLEMS: usize = 3;

/// The first `shown` of `problems`, and how many more `--json` lists.
fn first_problems(problems: &[String], shown: usize) -> String {
    let mut text = problems.iter().take(shown).cloned().collect::<Vec<_>>().join("; ");
    if problems.len() > shown {
        text.push_str(&format!("; … and {} more (`--json` lists every one)", problems.len() - shown));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_the_first_problems_and_counts_the_rest() {
        let p: Vec<String> = (1..=5).map(|i| format!("problem {i}")).collect();
        assert_eq!(first_problems(&p[..2], 3), "problem 1; problem 2");
        assert_eq!(first_problems(&p[..3], 3), "problem 1; problem 2; problem 3");
        assert_eq!(
            first_problems(&p, 3),
            "problem 1; problem 2; problem 3; … and 2 more (`--json` lists every one)"
        );
        assert_eq!(first_problems(&[], 3), "");
    }
}
