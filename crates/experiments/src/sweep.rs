//! Sweeps: a grid of settings × seeds × subjects expanded into jobs with stable ids, run (or resumed) one
//! shard at a time, each finished job recorded atomically; and the merge of any number of sweep folders
//! into one report with paired Wilcoxon tests across subjects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use core_types::{FusionMode, Modality};
use serde::{Deserialize, Serialize};

use crate::atomic::write as write_atomic;
use crate::config::{ExperimentConfig, Trials, fused_sets, row_name};
use crate::error::{Error, Result};
use crate::metrics::mean_std;
use crate::results::{RunResult, Skipped};
use crate::run::{Progress, load_samples, run};
use crate::stats::{Wilcoxon, wilcoxon};

/// The grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    /// Settings shared by every job (data, preprocessing, split, optimiser, epochs, device).
    pub base: ExperimentConfig,
    /// Fused modes (EEG-only is always included).
    pub fusion_modes: Vec<FusionMode>,
    /// Channel scales trained (`true`) and/or fixed at 1 (`false`).
    pub scales: Vec<bool>,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Subjects (all when empty).
    pub subjects: Vec<u32>,
    /// Modality-dropout probabilities of the fused settings (an axis; empty: the base config's).
    #[serde(default)]
    pub modality_dropouts: Vec<f64>,
    /// Trial sets (an axis; empty: the base config's).
    #[serde(default)]
    pub trials: Vec<Trials>,
    /// The modalities compared, as `compare --modalities` reads them: a single-modality setting for each
    /// and the fusion modes over every set of two or more that includes EEG ([`fused_sets`]). Empty (the
    /// default, and older sweeps): EEG and audio, with audio-only as the base config says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modalities: Vec<Modality>,
}

/// One training of the grid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Job {
    /// Stable id, e.g. `s03-gated-scales_on-seed2` or `s03-eeg_only-seed2`.
    pub id: String,
    /// Subject.
    pub subject: u32,
    /// `eeg_only` or a fusion mode's name.
    pub setting: String,
    /// Whether the channel scales are trained (fused settings).
    pub scales: bool,
    /// Seed.
    pub seed: u64,
    /// Modality dropout of a fused setting, in thousandths.
    #[serde(default, skip_serializing_if = "crate::model::is_zero")]
    pub modality_dropout_permille: u32,
    /// The trials the job trains on.
    #[serde(default, skip_serializing_if = "is_speaking")]
    pub trials: Trials,
    /// A fused setting's modalities when they are not EEG and audio (empty: EEG and audio).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fused_set: Vec<Modality>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_speaking(t: &Trials) -> bool {
    *t == Trials::Speaking
}

impl Job {
    /// The setting's label across subjects and seeds, e.g. `gated/scales_on` (EEG and audio fused) or
    /// `eeg_video/gated/scales_on`.
    #[must_use]
    pub fn label(&self) -> String {
        let base = if SINGLE.contains(&self.setting.as_str()) {
            self.setting.clone()
        } else {
            format!("{}{}/scales_{}", self.set_prefix('/'), self.setting, on_off(self.scales))
        };
        format!("{base}{}", self.suffix('/'))
    }

    /// `eeg_video` and `sep` for a fused set other than EEG and audio; empty otherwise.
    fn set_prefix(&self, sep: char) -> String {
        if self.fused_set.is_empty() { String::new() } else { format!("{}{sep}", row_name(&self.fused_set)) }
    }

    /// The modalities the job's model reads.
    #[must_use]
    pub fn modalities(&self) -> Vec<Modality> {
        match self.setting.as_str() {
            "eeg_only" => vec![Modality::Eeg],
            "audio_only" => vec![Modality::Audio],
            "video_only" => vec![Modality::Video],
            _ if self.fused_set.is_empty() => vec![Modality::Eeg, Modality::Audio],
            _ => self.fused_set.clone(),
        }
    }

    /// The axes beyond setting, scales and seed, each after `sep`: `md0.3` (modality dropout) and
    /// `trials_all`, when they differ from the defaults.
    fn suffix(&self, sep: char) -> String {
        let mut s = String::new();
        if self.modality_dropout_permille > 0 {
            s.push_str(&format!("{sep}md{}", f64::from(self.modality_dropout_permille) / 1000.0));
        }
        if self.trials != Trials::Speaking {
            s.push_str(&format!("{sep}trials_{}", self.trials));
        }
        s
    }

    /// The modality dropout probability.
    #[must_use]
    pub fn modality_dropout(&self) -> f64 {
        f64::from(self.modality_dropout_permille) / 1000.0
    }
}

/// The single-modality settings.
const SINGLE: [&str; 3] = ["eeg_only", "audio_only", "video_only"];

fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

/// Every job of `spec` for `subjects`, sorted by id.
#[must_use]
pub fn jobs(spec: &SweepSpec, subjects: &[u32]) -> Vec<Job> {
    let mut out = Vec::new();
    let trial_sets = if spec.trials.is_empty() { vec![spec.base.trials] } else { spec.trials.clone() };
    let dropouts: Vec<u32> = if spec.modality_dropouts.is_empty() {
        vec![spec.base.train.modality_dropout]
    } else {
        spec.modality_dropouts.clone()
    }
    .into_iter()
    .map(|p| (p * 1000.0).round() as u32)
    .collect();
    let with_id = |mut job: Job, stem: String| {
        job.id = format!("{stem}-seed{}{}", job.seed, job.suffix('-'));
        job
    };
    let (singles, sets): (Vec<Modality>, Vec<Vec<Modality>>) = if spec.modalities.is_empty() {
        let singles =
            if spec.base.audio_only { vec![Modality::Eeg, Modality::Audio] } else { vec![Modality::Eeg] };
        (singles, vec![Vec::new()])
    } else {
        let mut singles = spec.modalities.clone();
        singles.sort();
        singles.dedup();
        let sets = fused_sets(&singles)
            .into_iter()
            .map(|s| if s == [Modality::Eeg, Modality::Audio] { Vec::new() } else { s })
            .collect();
        (singles, sets)
    };
    for &subject in subjects {
        for &seed in &spec.seeds {
            for &trials in &trial_sets {
                let job = |setting: String, scales: bool, md: u32, fused_set: &[Modality]| Job {
                    id: String::new(),
                    subject,
                    setting,
                    scales,
                    seed,
                    modality_dropout_permille: md,
                    trials,
                    fused_set: fused_set.to_vec(),
                };
                for single in singles.iter().map(|m| row_name(&[*m])) {
                    out.push(with_id(job(single.clone(), true, 0, &[]), format!("s{subject:03}-{single}")));
                }
                for set in &sets {
                    for mode in &spec.fusion_modes {
                        for &scales in &spec.scales {
                            for &md in &dropouts {
                                let j = job(mode.to_string(), scales, md, set);
                                let stem = format!(
                                    "s{subject:03}-{}{mode}-scales_{}",
                                    j.set_prefix('-'),
                                    on_off(scales)
                                );
                                out.push(with_id(j, stem));
                            }
                        }
                    }
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The `index`-th (1-based) of `count` disjoint shards: jobs whose position in the sorted list is
/// `index − 1` modulo `count`.
#[must_use]
pub fn shard(all: &[Job], index: usize, count: usize) -> Vec<Job> {
    all.iter()
        .enumerate()
        .filter(|(i, _)| count > 0 && i % count == index.wrapping_sub(1))
        .map(|(_, j)| j.clone())
        .collect()
}

/// A finished job, as recorded in `<dir>/jobs/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job.
    pub job: Job,
    /// Its test result.
    pub run: RunResult,
}

/// Where the record of a skipped subject lives in a sweep folder.
fn skip_record(dir: &Path, subject: u32) -> PathBuf {
    dir.join("skipped").join(format!("s{subject:03}.json"))
}

/// Whether `subject` loads, with `skip_bad_subjects`: `None` when it does (and any earlier skip record is
/// removed), else the reason, recorded under `<dir>/skipped/` and reported to `progress`.
fn check_subject(
    spec: &SweepSpec,
    subject: u32,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<Option<String>> {
    let sd = eav::subject::discover(&spec.base.data_dir)?.into_iter().find(|s| s.id == subject).ok_or_else(
        || Error::Input(format!("subject {subject} not found in {}", spec.base.data_dir.display())),
    )?;
    let record = skip_record(dir, subject);
    match load_samples(&sd, &spec.base) {
        Ok(_) => {
            if record.is_file() {
                std::fs::remove_file(&record).map_err(|source| Error::Io { path: record.clone(), source })?;
            }
            Ok(None)
        }
        Err(e) => {
            let skipped = Skipped { subject, reason: e.to_string() };
            tracing::warn!(subject, reason = %skipped.reason, "subject skipped");
            progress.skipped(&skipped);
            let parent = dir.join("skipped");
            std::fs::create_dir_all(&parent).map_err(|source| Error::Io { path: parent, source })?;
            let bytes = serde_json::to_vec_pretty(&skipped).map_err(|e| Error::Input(e.to_string()))?;
            write_atomic(&record, &bytes)?;
            Ok(Some(skipped.reason))
        }
    }
}

/// Runs the jobs not yet recorded under `dir`; returns how many ran. A job interrupted mid-training
/// continues from its training state. With `spec.base.skip_bad_subjects`, the jobs of a subject whose files
/// fail to load are left out and the subject is recorded under `<dir>/skipped/` (read by
/// [`collect_skipped`]); without it, such a subject stops the sweep with its error.
///
/// # Errors
/// Data and training errors; [`Error::Io`] naming the record that could not be written.
pub fn run_jobs(spec: &SweepSpec, todo: &[Job], dir: &Path, progress: &dyn Progress) -> Result<usize> {
    let records = dir.join("jobs");
    std::fs::create_dir_all(&records).map_err(|source| Error::Io { path: records.clone(), source })?;
    let mut ran = 0;
    let mut bad: BTreeMap<u32, Option<String>> = BTreeMap::new();
    for job in todo {
        let record = records.join(format!("{}.json", job.id));
        if record.is_file() {
            continue;
        }
        if spec.base.skip_bad_subjects {
            let reason = match bad.get(&job.subject) {
                Some(r) => r.clone(),
                None => {
                    let r = check_subject(spec, job.subject, dir, progress)?;
                    bad.insert(job.subject, r.clone());
                    r
                }
            };
            if reason.is_some() {
                continue;
            }
        }
        let mut cfg = spec.base.clone();
        cfg.subjects = vec![job.subject];
        cfg.seed = job.seed;
        cfg.eeg_only = job.setting == "eeg_only";
        cfg.audio_only = job.setting == "audio_only";
        cfg.video_only = job.setting == "video_only";
        cfg.fusion_modes = if SINGLE.contains(&job.setting.as_str()) {
            Vec::new()
        } else {
            vec![job.setting.parse().map_err(|e| Error::Input(format!("{e}")))?]
        };
        cfg.fused_sets = if job.fused_set.is_empty() { Vec::new() } else { vec![job.fused_set.clone()] };
        // Jobs without video keep the cache entries (and numbers) of a sweep that has none.
        if !cfg.reads_video() {
            cfg.preprocess.video = None;
        } else if cfg.preprocess.video.is_none() {
            cfg.preprocess.video = Some(Default::default());
        }
        cfg.train.train_scales = job.scales;
        cfg.train.modality_dropout = job.modality_dropout();
        cfg.trials = job.trials;
        cfg.checkpoint_dir = None;
        cfg.state_dir = Some(dir.join("state").join(&job.id));
        tracing::info!(job = %job.id, "running");
        let results = run(&cfg, progress)?;
        let run = results
            .runs
            .into_iter()
            .next()
            .ok_or_else(|| Error::Input(format!("job {} produced no run", job.id)))?;
        let bytes = serde_json::to_vec_pretty(&JobResult { job: job.clone(), run })
            .map_err(|e| Error::Input(e.to_string()))?;
        write_atomic(&record, &bytes)?;
        ran += 1;
    }
    Ok(ran)
}

/// Mean ± std of one setting over subjects and seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingSummary {
    /// `eeg_only` or `<mode>/scales_<on|off>`.
    pub setting: String,
    /// Jobs merged.
    pub jobs: usize,
    /// Mean test accuracy.
    pub accuracy_mean: f64,
    /// Its standard deviation.
    pub accuracy_std: f64,
    /// Mean macro-F1.
    pub macro_f1_mean: f64,
    /// Its standard deviation.
    pub macro_f1_std: f64,
}

/// A paired comparison of two settings across subjects (each subject's accuracy averaged over seeds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedTest {
    /// The setting tested.
    pub setting: String,
    /// The setting it is compared with.
    pub baseline: String,
    /// Subjects present in both.
    pub subjects: usize,
    /// Mean accuracy difference (setting − baseline).
    pub mean_difference: f64,
    /// Wilcoxon signed-rank test of the per-subject differences.
    pub wilcoxon: Wilcoxon,
}

/// The merged sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Per setting.
    pub summary: Vec<SettingSummary>,
    /// Every setting against EEG-only (trained on the same trials), and scales on against off per mode.
    pub tests: Vec<PairedTest>,
    /// Per setting and subject: accuracy averaged over seeds.
    pub per_subject: BTreeMap<String, BTreeMap<u32, f64>>,
    /// Every job, sorted by id.
    pub jobs: Vec<JobResult>,
    /// Subjects left out because their files failed to load, sorted by subject.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// Accuracy per setting and robustness condition, over jobs.
    #[serde(default)]
    pub robustness: Vec<SettingRobustness>,
}

/// One setting under one robustness condition, over its jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettingRobustness {
    /// The setting's label.
    pub setting: String,
    /// The condition (see [`crate::robustness`]).
    pub condition: String,
    /// Jobs with this condition.
    pub jobs: usize,
    /// Mean accuracy.
    pub accuracy_mean: f64,
    /// Its standard deviation.
    pub accuracy_std: f64,
}

/// Reads the job records of every folder in `dirs`.
///
/// # Errors
/// [`Error::Io`] / [`Error::Input`] naming an unreadable record; [`Error::Input`] when two folders hold
/// different results for the same job id.
pub fn collect(dirs: &[PathBuf]) -> Result<Vec<JobResult>> {
    let mut by_id: BTreeMap<String, JobResult> = BTreeMap::new();
    for dir in dirs {
        let records = dir.join("jobs");
        let entries =
            std::fs::read_dir(&records).map_err(|source| Error::Io { path: records.clone(), source })?;
        for e in entries {
            let path = e.map_err(|source| Error::Io { path: records.clone(), source })?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            let r: JobResult = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
            if let Some(prev) = by_id.get(&r.job.id)
                && (prev.run.accuracy, prev.run.macro_f1) != (r.run.accuracy, r.run.macro_f1)
            {
                return Err(Error::Input(format!(
                    "job {} has different results in two folders ({})",
                    r.job.id,
                    path.display()
                )));
            }
            by_id.insert(r.job.id.clone(), r);
        }
    }
    Ok(by_id.into_values().collect())
}

/// The skipped-subject records of every folder in `dirs`, one per subject, sorted by subject.
///
/// # Errors
/// [`Error::Io`] / [`Error::Input`] naming an unreadable record.
pub fn collect_skipped(dirs: &[PathBuf]) -> Result<Vec<Skipped>> {
    let mut by_subject: BTreeMap<u32, Skipped> = BTreeMap::new();
    for dir in dirs {
        let folder = dir.join("skipped");
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for e in entries {
            let path = e.map_err(|source| Error::Io { path: folder.clone(), source })?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
            let s: Skipped = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
            by_subject.insert(s.subject, s);
        }
    }
    Ok(by_subject.into_values().collect())
}

/// Summaries, per-subject means and paired tests of `jobs`; `skipped` is carried into the report.
#[must_use]
pub fn report(jobs: Vec<JobResult>, skipped: Vec<Skipped>) -> SweepReport {
    let mut by_setting: BTreeMap<String, Vec<&JobResult>> = BTreeMap::new();
    for j in &jobs {
        by_setting.entry(j.job.label()).or_default().push(j);
    }
    let summary = by_setting
        .iter()
        .map(|(setting, rs)| {
            let acc: Vec<f64> = rs.iter().map(|r| r.run.accuracy).collect();
            let f1: Vec<f64> = rs.iter().map(|r| r.run.macro_f1).collect();
            SettingSummary {
                setting: setting.clone(),
                jobs: rs.len(),
                accuracy_mean: mean_std(&acc).0,
                accuracy_std: mean_std(&acc).1,
                macro_f1_mean: mean_std(&f1).0,
                macro_f1_std: mean_std(&f1).1,
            }
        })
        .collect();
    let per_subject: BTreeMap<String, BTreeMap<u32, f64>> = by_setting
        .iter()
        .map(|(setting, rs)| {
            let mut acc: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for r in rs {
                acc.entry(r.job.subject).or_default().push(r.run.accuracy);
            }
            (setting.clone(), acc.into_iter().map(|(s, v)| (s, mean_std(&v).0)).collect())
        })
        .collect();
    let paired = |a: &str, b: &str| -> Option<PairedTest> {
        let (x, y) = (per_subject.get(a)?, per_subject.get(b)?);
        let d: Vec<f64> = x.iter().filter_map(|(s, v)| y.get(s).map(|w| v - w)).collect();
        (!d.is_empty()).then(|| PairedTest {
            setting: a.into(),
            baseline: b.into(),
            subjects: d.len(),
            mean_difference: mean_std(&d).0,
            wilcoxon: wilcoxon(&d),
        })
    };
    let mut robustness = Vec::new();
    for (setting, rs) in &by_setting {
        let mut conditions: Vec<&str> = Vec::new();
        for r in rs {
            for c in &r.run.robustness {
                if !conditions.contains(&c.condition.as_str()) {
                    conditions.push(&c.condition);
                }
            }
        }
        for condition in conditions {
            let acc: Vec<f64> = rs
                .iter()
                .filter_map(|r| {
                    r.run.robustness.iter().find(|c| c.condition == condition).map(|c| c.accuracy)
                })
                .collect();
            robustness.push(SettingRobustness {
                setting: setting.clone(),
                condition: condition.into(),
                jobs: acc.len(),
                accuracy_mean: mean_std(&acc).0,
                accuracy_std: mean_std(&acc).1,
            });
        }
    }
    let mut tests = Vec::new();
    for (setting, rs) in by_setting.iter().filter(|(s, _)| !s.starts_with("eeg_only")) {
        // Against EEG-only trained on the same trials, then (fused settings) against each other single
        // modality they fuse.
        let trials = if setting.ends_with("/trials_all") { "/trials_all" } else { "" };
        tests.extend(paired(setting, &format!("eeg_only{trials}")));
        if let Some(job) = rs.first().filter(|r| !SINGLE.contains(&r.job.setting.as_str())) {
            for m in job.job.modalities().into_iter().filter(|m| *m != Modality::Eeg) {
                tests.extend(paired(setting, &format!("{}{trials}", row_name(&[m]))));
            }
        }
        if setting.contains("/scales_on") {
            tests.extend(paired(setting, &setting.replace("/scales_on", "/scales_off")));
        }
    }
    SweepReport { summary, tests, per_subject, jobs, skipped, robustness }
}

/// Writes `results.json`, `results.csv`, `report.md` and `per_subject_accuracy.svg` into `dir`.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write_report(dir: &Path, r: &SweepReport) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
    write_atomic(
        &dir.join("results.json"),
        &serde_json::to_vec_pretty(r).map_err(|e| Error::Input(e.to_string()))?,
    )?;
    let mut csv = String::from(
        "job,subject,setting,scales,seed,modality_dropout,trials,accuracy,macro_f1,kappa,loss,modalities\n",
    );
    for j in &r.jobs {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{}\n",
            j.job.id,
            j.job.subject,
            j.job.setting,
            j.job.scales,
            j.job.seed,
            j.job.modality_dropout(),
            j.job.trials,
            j.run.accuracy,
            j.run.macro_f1,
            j.run.kappa,
            j.run.loss,
            row_name(&j.job.modalities())
        ));
    }
    write_atomic(&dir.join("results.csv"), csv.as_bytes())?;
    let mut md = String::from("# Sweep\n\n| setting | jobs | accuracy | macro-F1 |\n|---|---:|---:|---:|\n");
    for s in &r.summary {
        md.push_str(&format!(
            "| {} | {} | {:.3} ± {:.3} | {:.3} ± {:.3} |\n",
            s.setting, s.jobs, s.accuracy_mean, s.accuracy_std, s.macro_f1_mean, s.macro_f1_std
        ));
    }
    md.push_str("\n## Paired tests across subjects (Wilcoxon signed-rank, two-sided)\n\n| setting | vs | subjects | mean Δ acc | W+ | W− | p | effect (rank-biserial) |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
    for t in &r.tests {
        md.push_str(&format!(
            "| {} | {} | {} | {:+.3} | {} | {} | {:.4}{} | {:+.3} |\n",
            t.setting,
            t.baseline,
            t.subjects,
            t.mean_difference,
            t.wilcoxon.w_plus,
            t.wilcoxon.w_minus,
            t.wilcoxon.p_value,
            if t.wilcoxon.exact { "" } else { " (approx.)" },
            t.wilcoxon.effect_size
        ));
    }
    if !r.robustness.is_empty() {
        md.push_str("\n## Robustness (accuracy per condition, mean ± std over jobs)\n\n| setting | condition | jobs | accuracy |\n|---|---|---:|---:|\n");
        for x in &r.robustness {
            md.push_str(&format!(
                "| {} | {} | {} | {:.3} ± {:.3} |\n",
                x.setting, x.condition, x.jobs, x.accuracy_mean, x.accuracy_std
            ));
        }
    }
    if !r.skipped.is_empty() {
        md.push_str("\n## Skipped subjects (files failed to load)\n\n");
        for k in &r.skipped {
            md.push_str(&format!("- subject {}: {}\n", k.subject, k.reason));
        }
    }
    md.push_str("\n![per-subject accuracy](per_subject_accuracy.svg)\n");
    write_atomic(&dir.join("report.md"), md.as_bytes())?;
    crate::plots::per_subject(&dir.join("per_subject_accuracy.svg"), &r.per_subject)
}

/// Scheduler settings of an emitted job-array script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlurmOptions {
    /// Array tasks, one shard each.
    pub shards: usize,
    /// CPUs per task (2).
    pub cpus_per_task: usize,
    /// `--partition`, when set.
    pub partition: Option<String>,
    /// `--time` (e.g. `02:00:00`), when set.
    pub time: Option<String>,
    /// `--mem` (e.g. `4G`), when set.
    pub mem: Option<String>,
    /// Further `#SBATCH` lines, verbatim after `#SBATCH ` (e.g. `--account=abc`).
    pub extra: Vec<String>,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        Self { shards: 4, cpus_per_task: 2, partition: None, time: None, mem: None, extra: Vec::new() }
    }
}

/// An `sbatch` job-array script that runs shard `$SLURM_ARRAY_TASK_ID` of `opts.shards` into
/// `out/shard-<i>`, with the given sweep arguments (everything but `--shard`, `--out` and `--emit-slurm`).
/// Each task runs the release binary built beforehand (`target/release/xtask`), so that tasks never compile
/// and never wait on each other for cargo's lock, with `RAYON_NUM_THREADS` set to the CPUs SLURM gave it;
/// its log goes to `out/slurm-<job>_<task>.log` (the folder must exist before submission: SLURM opens
/// the log before the script runs).
#[must_use]
pub fn slurm_script(repo: &Path, sweep_args: &[String], opts: &SlurmOptions, out: &Path) -> String {
    let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
    let quoted: Vec<String> = sweep_args.iter().map(|a| quote(a)).collect();
    let shards = opts.shards.max(1);
    let mut head = format!(
        "#!/usr/bin/env bash\n#SBATCH --job-name=emofuse-sweep\n#SBATCH --array=1-{shards}\n#SBATCH --cpus-per-task={}\n#SBATCH --output={}/slurm-%A_%a.log\n",
        opts.cpus_per_task.max(1),
        out.display()
    );
    for (key, value) in [("partition", &opts.partition), ("time", &opts.time), ("mem", &opts.mem)] {
        if let Some(v) = value {
            head.push_str(&format!("#SBATCH --{key}={v}\n"));
        }
    }
    for line in &opts.extra {
        head.push_str(&format!("#SBATCH {line}\n"));
    }
    let shard_out = format!("{}\"-${{SLURM_ARRAY_TASK_ID}}\"", quote(&format!("{}/shard", out.display())));
    format!(
        "{head}# One shard of the sweep per array task; merge afterwards with:\n#   cargo xtask report {out}/shard-*\nset -euo pipefail\ncd {repo}\nexport RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-{cpus}}}\"\nbin=target/release/xtask\n[ -x \"$bin\" ] || {{ echo \"$bin missing: run cargo build -p xtask --release before sbatch\" >&2; exit 1; }}\n\"$bin\" sweep {args} --shard \"${{SLURM_ARRAY_TASK_ID}}/{shards}\" --out {shard_out}\n",
        out = out.display(),
        repo = quote(&repo.display().to_string()),
        cpus = opts.cpus_per_task.max(1),
        args = quoted.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(modalities: &[Modality]) -> SweepSpec {
        SweepSpec {
            base: ExperimentConfig::new(PathBuf::from("/nowhere"), Vec::new()),
            fusion_modes: vec![FusionMode::Concat, FusionMode::Gated],
            scales: vec![true],
            seeds: vec![1],
            subjects: Vec::new(),
            modality_dropouts: Vec::new(),
            trials: Vec::new(),
            modalities: modalities.to_vec(),
        }
    }

    fn ids(spec: &SweepSpec) -> Vec<String> {
        jobs(spec, &[1]).into_iter().map(|j| j.id).collect()
    }

    /// Without `modalities` the grid is EEG and audio as before (ids unchanged, so older sweeps resume);
    /// naming EEG and audio gives the same grid.
    #[test]
    fn the_default_grid_keeps_its_ids() {
        let want = [
            "s001-audio_only-seed1",
            "s001-concat-scales_on-seed1",
            "s001-eeg_only-seed1",
            "s001-gated-scales_on-seed1",
        ];
        assert_eq!(ids(&spec(&[])), want);
        assert_eq!(ids(&spec(&[Modality::Audio, Modality::Eeg])), want);
    }

    /// Three modalities: a single setting per modality and each mode over every set with EEG, the sets
    /// other than EEG+audio named in ids, labels and the modalities each job reads.
    #[test]
    fn three_modalities_add_sets_to_the_grid() {
        let all = jobs(&spec(&[Modality::Video, Modality::Eeg, Modality::Audio]), &[1]);
        let ids: Vec<&str> = all.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(ids.len(), 3 + 3 * 2, "{ids:?}");
        for id in [
            "s001-eeg_only-seed1",
            "s001-audio_only-seed1",
            "s001-video_only-seed1",
            "s001-concat-scales_on-seed1",
            "s001-eeg_video-gated-scales_on-seed1",
            "s001-eeg_audio_video-concat-scales_on-seed1",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let find = |id: &str| all.iter().find(|j| j.id == id).unwrap();
        let ev = find("s001-eeg_video-gated-scales_on-seed1");
        assert_eq!(ev.label(), "eeg_video/gated/scales_on");
        assert_eq!(ev.modalities(), [Modality::Eeg, Modality::Video]);
        assert_eq!(find("s001-concat-scales_on-seed1").modalities(), [Modality::Eeg, Modality::Audio]);
        assert_eq!(find("s001-video_only-seed1").modalities(), [Modality::Video]);
        assert_eq!(find("s001-video_only-seed1").label(), "video_only");
        // A job record without the new field reads as EEG and audio.
        let old: Job = serde_json::from_str(
            r#"{"id":"s001-gated-scales_on-seed1","subject":1,"setting":"gated","scales":true,"seed":1}"#,
        )
        .unwrap();
        assert_eq!(old.modalities(), [Modality::Eeg, Modality::Audio]);
        assert_eq!(old.label(), "gated/scales_on");
    }

    /// Each fused setting is tested against EEG-only and against each other single modality it fuses.
    #[test]
    fn fused_settings_are_tested_against_each_single_modality_they_fuse() {
        let all = jobs(&spec(&[Modality::Eeg, Modality::Video]), &[1, 2, 3]);
        let results: Vec<JobResult> = all
            .into_iter()
            .enumerate()
            .map(|(i, job)| {
                let mut run: RunResult = serde_json::from_value(serde_json::json!({
                    "subject": job.subject, "modality": "x", "fusion_mode": "none", "fold": 0,
                    "accuracy": 0.0, "macro_f1": 0.0, "kappa": 0.0, "loss": 0.0,
                    "confusion": [], "precision": [], "recall": [], "parameters": 0,
                    "train_seconds": 0.0, "windows": [0, 0, 0], "history": []
                }))
                .unwrap();
                run.accuracy = (i % 5) as f64 / 10.0;
                JobResult { job, run }
            })
            .collect();
        let r = report(results, Vec::new());
        let vs = |s: &str| -> Vec<&str> {
            r.tests.iter().filter(|t| t.setting == s).map(|t| t.baseline.as_str()).collect()
        };
        assert_eq!(vs("eeg_video/concat/scales_on"), ["eeg_only", "video_only"]);
        assert_eq!(vs("video_only"), ["eeg_only"]);
    }
}
