//! `cargo xtask sweep` (run a grid, resumable and shardable; or emit a SLURM job array) and
//! `cargo xtask report DIR…` (merge sweep folders with paired tests).

use std::path::PathBuf;

use core_types::{FusionMode, Modality};
use experiments::config::ExperimentConfig;
use experiments::results::Skipped;
use experiments::run::Progress;
use experiments::sweep::{
    SlurmOptions, SweepSpec, collect, collect_skipped, jobs, report, run_jobs, shard, slurm_script,
    write_report,
};

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Scales trained.
    On,
    /// Scales fixed at 1.
    Off,
}

/// `I/N`: the I-th (1-based) of N shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard(usize, usize);

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected I/N with 1 ≤ I ≤ N");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if i == 0 || i > n {
            return Err(bad());
        }
        Ok(Self(i, n))
    }
}

/// Arguments of `sweep`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fusion modes, each trained over every fused set of `--modalities`.
    #[arg(long, value_delimiter = ',', default_value = "concat,cross_attention,gated")]
    fusion_modes: Vec<FusionMode>,
    /// The modalities compared, as in `compare`: a single-modality setting for each and the fusion modes
    /// over every set of two or more that includes EEG (`eeg,audio,video`: `eeg_audio`, `eeg_video`,
    /// `eeg_audio_video`). Default: EEG and audio.
    #[arg(long, value_delimiter = ',')]
    modalities: Vec<Modality>,
    /// Video frames are box-averaged to this size, `WIDTHxHEIGHT` (settings that read video).
    #[arg(long, default_value = "64x64", value_parser = crate::compare::parse_size)]
    video_size: (usize, usize),
    /// Channel scales trained (on) and/or fixed at 1 (off).
    #[arg(long, value_delimiter = ',', value_enum, default_value = "on,off")]
    scales: Vec<OnOff>,
    /// Seeds.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Subjects (default: all in the data folder).
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<u32>,
    /// Modality-dropout probabilities of the fused settings, an axis of the grid (e.g. `0,0.3`; default:
    /// `--modality-dropout`).
    #[arg(long, value_delimiter = ',')]
    modality_dropouts: Vec<f64>,
    /// Trial sets, an axis of the grid (e.g. `speaking,all`; default: `--trials`).
    #[arg(long, value_delimiter = ',')]
    trial_sets: Vec<experiments::config::Trials>,
    #[command(flatten)]
    training: crate::compare::Training,
    /// EAV root; without it, the built-in synthetic tree that `compare` uses.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Skip a subject whose files fail to load (recorded under `<out>/skipped/` and in the report) instead
    /// of stopping the sweep.
    #[arg(long)]
    skip_bad_subjects: bool,
    /// Folder of this sweep (or shard): job records, training states, report.
    #[arg(long)]
    out: PathBuf,
    /// Run only the I-th of N disjoint parts of the grid.
    #[arg(long)]
    shard: Option<Shard>,
    /// Instead of running, write an sbatch job-array script to this file (one shard per array task, into
    /// `<out>/shard-<i>`).
    #[arg(long)]
    emit_slurm: Option<PathBuf>,
    /// Number of shards (array tasks) for `--emit-slurm`.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// `--emit-slurm`: CPUs per array task (also the task's thread count).
    #[arg(long, default_value_t = 2)]
    cpus_per_task: usize,
    /// `--emit-slurm`: the partition to submit to.
    #[arg(long)]
    partition: Option<String>,
    /// `--emit-slurm`: each task's time limit, in SLURM's format (e.g. `02:00:00`).
    #[arg(long)]
    time: Option<String>,
    /// `--emit-slurm`: each task's memory (e.g. `4G`).
    #[arg(long)]
    mem: Option<String>,
    /// `--emit-slurm`: a further `#SBATCH` line (repeatable), e.g. `--sbatch=--account=abc`.
    #[arg(long = "sbatch", allow_hyphen_values = true)]
    sbatch_lines: Vec<String>,
}

fn spec(args: &Args, data_dir: PathBuf) -> SweepSpec {
    let mut base = ExperimentConfig::new(data_dir, Vec::new());
    args.training.apply(&mut base);
    base.skip_bad_subjects = args.skip_bad_subjects;
    if args.modalities.contains(&Modality::Video) {
        let (width, height) = args.video_size;
        base.preprocess.video = Some(video::Sampling { width, height, ..video::Sampling::default() });
    }
    base.cache_dir = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/cache"));
    SweepSpec {
        base,
        fusion_modes: args.fusion_modes.clone(),
        scales: args.scales.iter().map(|s| *s == OnOff::On).collect(),
        seeds: args.seeds.clone(),
        subjects: args.subjects.clone(),
        modality_dropouts: args.modality_dropouts.clone(),
        trials: args.trial_sets.clone(),
        modalities: args.modalities.clone(),
    }
}

/// The sweep arguments to repeat inside each array task (all but --out, --shard, --emit-slurm, --shards).
fn forwarded(args: &Args, data_dir: &std::path::Path) -> Vec<String> {
    let join = |v: Vec<String>| v.join(",");
    let mut a = vec![
        "--fusion-modes".into(),
        join(args.fusion_modes.iter().map(ToString::to_string).collect()),
        "--scales".into(),
        join(args.scales.iter().map(|s| if *s == OnOff::On { "on".into() } else { "off".into() }).collect()),
        "--seeds".into(),
        join(args.seeds.iter().map(ToString::to_string).collect()),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    a.extend(args.training.to_args());
    if !args.modalities.is_empty() {
        a.push("--modalities".into());
        a.push(join(args.modalities.iter().map(ToString::to_string).collect()));
        let (w, h) = args.video_size;
        a.push("--video-size".into());
        a.push(format!("{w}x{h}"));
    }
    if args.skip_bad_subjects {
        a.push("--skip-bad-subjects".into());
    }
    if !args.subjects.is_empty() {
        a.push("--subjects".into());
        a.push(join(args.subjects.iter().map(ToString::to_string).collect()));
    }
    if !args.modality_dropouts.is_empty() {
        a.push("--modality-dropouts".into());
        a.push(join(args.modality_dropouts.iter().map(ToString::to_string).collect()));
    }
    if !args.trial_sets.is_empty() {
        a.push("--trial-sets".into());
        a.push(join(args.trial_sets.iter().map(ToString::to_string).collect()));
    }
    a
}

/// Runs `sweep`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => crate::compare::default_data()?,
    };
    if let Some(script) = &args.emit_slurm {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let repo = repo.canonicalize().unwrap_or(repo);
        let opts = SlurmOptions {
            shards: args.shards.max(1),
            cpus_per_task: args.cpus_per_task.max(1),
            partition: args.partition.clone(),
            time: args.time.clone(),
            mem: args.mem.clone(),
            extra: args.sbatch_lines.clone(),
        };
        let out = std::path::absolute(&args.out)?;
        let data_dir = std::path::absolute(&data_dir)?;
        let text = slurm_script(&repo, &forwarded(args, &data_dir), &opts, &out);
        crate::output::write(script, text)?;
        // SLURM opens each task's log in the output folder before the task starts.
        std::fs::create_dir_all(&out)?;
        say!(
            "wrote {}: after `cargo build -p xtask --release`, `sbatch {}` runs {} shards into {}/shard-*; then `cargo xtask report {}/shard-*`",
            script.display(),
            script.display(),
            opts.shards,
            out.display(),
            out.display()
        );
        return Ok(());
    }
    let spec = spec(args, data_dir);
    let subjects = if spec.subjects.is_empty() {
        eav::subject::discover(&spec.base.data_dir)?.into_iter().map(|s| s.id).collect()
    } else {
        spec.subjects.clone()
    };
    let all = jobs(&spec, &subjects);
    let mine = match args.shard {
        Some(Shard(i, n)) => shard(&all, i, n),
        None => all.clone(),
    };
    crate::output::write(&args.out.join("sweep.json"), serde_json::to_vec_pretty(&spec)?)?;
    let bar = crate::progress::bar(mine.len() as u64, "sweep jobs");
    let mut ran = 0;
    let progress = SkipNotice(bar.clone());
    for job in &mine {
        ran += run_jobs(&spec, std::slice::from_ref(job), &args.out, &progress)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let dirs = std::slice::from_ref(&args.out);
    let merged = report(collect(dirs)?, collect_skipped(dirs)?);
    write_report(&args.out, &merged)?;
    if merged.jobs.is_empty() && !merged.skipped.is_empty() {
        anyhow::bail!("every subject was skipped (reasons in {}/report.md)", args.out.display());
    }
    let recorded = mine.iter().filter(|j| merged.jobs.iter().any(|r| r.job.id == j.id)).count();
    let skipped = mine.len() - recorded;
    say!(
        "{} of {} jobs in this {} ran now ({} were already recorded{}); report in {}/report.md",
        ran,
        mine.len(),
        if args.shard.is_some() { "shard" } else { "sweep" },
        recorded - ran,
        if skipped > 0 { format!(", {skipped} skipped with their subjects") } else { String::new() },
        args.out.display()
    );
    Ok(())
}

/// Says on the terminal which subjects a sweep skips.
struct SkipNotice(indicatif::ProgressBar);

impl Progress for SkipNotice {
    fn skipped(&self, skipped: &Skipped) {
        self.0.suspend(|| say!("skipping subject {}: {}", skipped.subject, skipped.reason));
    }
}

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Sweep or shard folders to merge.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Folder for the merged results (default: the folder itself when one is given, else `sweep-report`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `report`.
pub fn run_report(args: &ReportArgs) -> anyhow::Result<()> {
    let merged = report(collect(&args.dirs)?, collect_skipped(&args.dirs)?);
    let out = args.out.clone().unwrap_or_else(|| match args.dirs.as_slice() {
        [one] => one.clone(),
        _ => PathBuf::from("sweep-report"),
    });
    write_report(&out, &merged)?;
    for s in &merged.summary {
        say!("{:<28} {:>4} jobs  accuracy {:.3} ± {:.3}", s.setting, s.jobs, s.accuracy_mean, s.accuracy_std);
    }
    for t in &merged.tests {
        say!(
            "{} vs {}: Δ {:+.3}, p = {:.4}, effect {:+.3}",
            t.setting,
            t.baseline,
            t.mean_difference,
            t.wilcoxon.p_value,
            t.wilcoxon.effect_size
        );
    }
    for k in &merged.skipped {
        say!("skipped subject {}: {}", k.subject, k.reason);
    }
    say!("merged {} jobs into {}/results.json, results.csv, report.md", merged.jobs.len(), out.display());
    Ok(())
}
