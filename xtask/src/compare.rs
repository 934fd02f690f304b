//! `cargo xtask compare` and `cargo xtask baseline`: train and test single-modality and fused models over
//! EEG, audio and video.

use std::path::{Path, PathBuf};

use anyhow::Context;
use core_types::{FusionMode, Modality};
use eav::split::Protocol;
use eav::synth::SynthConfig;
use experiments::config::ExperimentConfig;
use experiments::report::{write_config, write_results};
use experiments::results::{Skipped, table};
use experiments::run::{Progress, run_with};
use experiments::train::EpochLog;
use indicatif::ProgressBar;

/// A fusion mode or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum ModeArg {
    /// Concatenation.
    Concat,
    /// Cross-attention.
    CrossAttention,
    /// Gating.
    Gated,
    /// Cross-modal transformer over time.
    Temporal,
    /// A learned per-sample router over the other four modes.
    Adaptive,
    /// Every mode.
    All,
}

impl ModeArg {
    fn modes(self) -> Vec<FusionMode> {
        match self {
            Self::Concat => vec![FusionMode::Concat],
            Self::CrossAttention => vec![FusionMode::CrossAttention],
            Self::Gated => vec![FusionMode::Gated],
            Self::Temporal => vec![FusionMode::Temporal],
            Self::Adaptive => vec![FusionMode::Adaptive],
            Self::All => FusionMode::ALL.to_vec(),
        }
    }
}

/// Training settings shared by `compare`, `baseline` and `sweep`.
#[derive(Debug, clap::Args)]
pub struct Training {
    /// Training epochs.
    #[arg(long, default_value_t = 5)]
    pub epochs: usize,
    /// Windows per training step.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 3e-3)]
    pub lr: f64,
    /// Learning-rate schedule: constant, cosine or step:EVERY:GAMMA.
    #[arg(long, default_value = "constant")]
    pub schedule: experiments::train::Schedule,
    /// Evaluation protocol: official (within-subject chronological 70/30), kfold:K or loso.
    #[arg(long, default_value = "official")]
    pub split: Protocol,
    /// `cpu`, or `cuda` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Training windows: `speaking` (the design's protocol) or `all` (listening windows too: EEG without
    /// audio, masked in fused models). Tests always use the speaking windows.
    #[arg(long, default_value = "speaking")]
    pub trials: experiments::config::Trials,
    /// Fused models: drop each modality of a training sample with this probability (never all of them).
    #[arg(long, default_value_t = 0.0)]
    pub modality_dropout: f64,
    /// Fused models: weight of the unimodal auxiliary losses (a linear head per modality on its latent,
    /// trained with its own cross-entropy); 0 is the design's plain training.
    #[arg(long, default_value_t = experiments::config::DEFAULT_UNIMODAL_LOSS)]
    pub unimodal_loss: f64,
    /// Fused models with unimodal heads: choose the output mix (how much the prediction trusts the fused
    /// classifier and each unimodal head) on out-of-fold predictions over this many folds of the training
    /// trials, then train on every training window. 0: the fused classifier alone (the design's model).
    #[arg(long, default_value_t = experiments::config::DEFAULT_LATE_FUSION_FOLDS)]
    pub late_fusion_folds: usize,
    /// Late fusion: let the mixture also weight the separately trained single-modality model of each
    /// fused modality (carried inside the fused model's checkpoint when weighted); `false`: the fused
    /// model's own outputs only.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub late_fusion_experts: bool,
    /// Late fusion: temper each output's probabilities with the temperature that fits its out-of-fold
    /// predictions best before choosing the weights (kept in the mix); `false`: as trained.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub late_fusion_temperatures: bool,
    /// Late fusion: average the weight choices of this many bootstrap resamples of the held-out trials
    /// (bagging; the temperatures are fitted on every held-out window); 0: one choice on all of them.
    #[arg(long, default_value_t = experiments::config::DEFAULT_LATE_FUSION_BOOTSTRAP)]
    pub late_fusion_bootstrap: usize,
    /// Late fusion: how the weights are chosen on the held-out predictions: `even` (of the mixes that
    /// fit within one standard error of the best, the most even; each output at its own temperature)
    /// or `best` (the best fit, temperatures refined with the weights; needed for bagging).
    #[arg(long, default_value = "even")]
    pub late_fusion_choice: experiments::config::MixChoice,
    /// Cross-validation ensemble: every model (fused and single-modality rows alike) predicts with the
    /// mean of itself and its kind's models trained without each late-fusion fold (carried in the
    /// checkpoint; each prediction runs folds + 1 models).
    #[arg(long)]
    pub late_fusion_ensemble: bool,
    /// Fused models with unimodal heads: on-the-fly gradient modulation with this α (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub gradient_modulation: f64,
    /// `adaptive`: weight of a penalty on the router's mean weights that keeps it from settling on one
    /// mode (0: off; the router starts uniform).
    #[arg(long, default_value_t = 0.0)]
    pub router_balance: f32,
    /// Causal preprocessing (forward-only band-pass, MFCC frames that end at their hop): what `stream`
    /// computes live, so a model trained with it sees the same windows online.
    #[arg(long)]
    pub causal: bool,
    /// The BatchNorm statistics a trained model evaluates with: `recomputed` (the mean of each layer's
    /// batch statistics over the training windows under the final weights) or `running` (the running
    /// averages training leaves behind, PyTorch's default; they lag behind weights that still move).
    #[arg(long, value_enum, default_value = "recomputed")]
    pub batch_norm_stats: BatchNormStats,
}

/// Which BatchNorm statistics a trained model evaluates with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BatchNormStats {
    /// Recomputed for the final weights over the training windows.
    Recomputed,
    /// The running averages of training.
    Running,
}

impl Training {
    /// Writes these settings into `cfg`.
    pub fn apply(&self, cfg: &mut ExperimentConfig) {
        cfg.train.epochs = self.epochs;
        cfg.train.batch_size = self.batch_size;
        cfg.train.lr = self.lr;
        cfg.train.schedule = self.schedule;
        cfg.split = self.split;
        cfg.device.clone_from(&self.device);
        cfg.trials = self.trials;
        cfg.train.modality_dropout = self.modality_dropout;
        cfg.unimodal_loss = self.unimodal_loss;
        cfg.late_fusion_folds = self.late_fusion_folds;
        cfg.late_fusion_experts = self.late_fusion_experts;
        cfg.late_fusion_temperatures = self.late_fusion_temperatures;
        cfg.late_fusion_bootstrap = self.late_fusion_bootstrap;
        cfg.late_fusion_choice = self.late_fusion_choice;
        cfg.late_fusion_ensemble = self.late_fusion_ensemble;
        cfg.train.gradient_modulation = self.gradient_modulation;
        cfg.router_balance = self.router_balance;
        cfg.preprocess.causal = self.causal;
        cfg.train.recompute_batch_norm = self.batch_norm_stats == BatchNormStats::Recomputed;
    }

    /// The same settings as command-line arguments.
    pub fn to_args(&self) -> Vec<String> {
        let schedule = match self.schedule {
            experiments::train::Schedule::Constant => "constant".to_owned(),
            experiments::train::Schedule::Cosine => "cosine".to_owned(),
            experiments::train::Schedule::Step { every, gamma } => format!("step:{every}:{gamma}"),
        };
        [
            ("--epochs", self.epochs.to_string()),
            ("--batch-size", self.batch_size.to_string()),
            ("--lr", self.lr.to_string()),
            ("--schedule", schedule),
            ("--split", self.split.to_string()),
            ("--device", self.device.clone()),
            ("--trials", self.trials.to_string()),
            ("--modality-dropout", self.modality_dropout.to_string()),
            ("--unimodal-loss", self.unimodal_loss.to_string()),
            ("--late-fusion-folds", self.late_fusion_folds.to_string()),
            ("--late-fusion-experts", self.late_fusion_experts.to_string()),
            ("--late-fusion-temperatures", self.late_fusion_temperatures.to_string()),
            ("--late-fusion-bootstrap", self.late_fusion_bootstrap.to_string()),
            ("--late-fusion-choice", self.late_fusion_choice.to_string()),
            ("--gradient-modulation", self.gradient_modulation.to_string()),
            ("--router-balance", self.router_balance.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .chain(self.causal.then(|| "--causal".to_owned()))
        .chain(self.late_fusion_ensemble.then(|| "--late-fusion-ensemble".to_owned()))
        .chain(
            (self.batch_norm_stats == BatchNormStats::Running)
                .then(|| "--batch-norm-stats=running".to_owned()),
        )
        .collect()
    }
}

/// Settings shared by `compare` and `baseline`.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// EAV root; without it, a synthetic tree generated once under `datasets/synthetic`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Subjects to use, e.g. `1,2,5` (default: all).
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<u32>,
    #[command(flatten)]
    training: Training,
    /// EEG channels: `all`, `drop:FP1,FP2` (the 28 channels of the reference model) or a list of names or
    /// 1-based numbers.
    #[arg(long, default_value = "all", value_parser = eav::dataset::Channels::parse)]
    channels: eav::dataset::Channels,
    /// Use the windows as they are, without per-channel standardisation (fitted on training windows).
    #[arg(long)]
    no_standardise: bool,
    /// Fraction of the training trials used for validation / early stopping (0: none).
    #[arg(long, default_value_t = 0.0)]
    val_fraction: f64,
    /// Seed of weights, dropout and shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Run folder (default: a new folder under `runs/`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repeat a run from its `config.json` (the other settings are ignored).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue an interrupted run in this run folder (its `config.json` and training states).
    #[arg(long, conflicts_with_all = ["config", "out"])]
    resume: Option<PathBuf>,
    /// Skip a subject whose files fail to load (the reason goes to results.json and report.md) instead of
    /// stopping the run.
    #[arg(long)]
    skip_bad_subjects: bool,
    /// Video frames are box-averaged to this size, `WIDTHxHEIGHT` (models that read video).
    #[arg(long, default_value = "64x64", value_parser = parse_size)]
    video_size: (usize, usize),
}

pub(crate) fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (w, h) =
        s.split_once(['x', 'X']).ok_or_else(|| format!("`{s}`: expected WIDTHxHEIGHT, e.g. 64x64"))?;
    let n = |v: &str| v.trim().parse::<usize>().ok().filter(|n| *n > 0);
    match (n(w), n(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(format!("`{s}`: expected two sizes ≥ 1, e.g. 64x64")),
    }
}

/// The models a set of modalities asks for: the single-modality rows and the fused sets
/// ([`experiments::config::fused_sets`]).
fn plan(modalities: &[Modality]) -> (Vec<Modality>, Vec<Vec<Modality>>) {
    let mut set = modalities.to_vec();
    set.sort();
    set.dedup();
    let fused = experiments::config::fused_sets(&set);
    (set, fused)
}

/// Arguments of `compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// The fusion mode to compare against the single modalities, or `all`.
    #[arg(long, value_enum, default_value = "concat")]
    fusion_mode: ModeArg,
    /// The modalities compared: a single-modality model for each (`eeg_only`, `audio_only`,
    /// `video_only`) and fused models over every set of two or more that includes EEG (`eeg_audio`,
    /// `eeg_video`, `eeg_audio_video`). `video` reads the clips in `Video/`.
    #[arg(long, value_delimiter = ',', default_value = "eeg,audio")]
    modalities: Vec<Modality>,
    #[command(flatten)]
    common: Common,
}

/// Arguments of `baseline`.
#[derive(Debug, clap::Args)]
pub struct BaselineArgs {
    /// The modalities of the one model to train: `eeg` (the default), `audio` or `video` alone, or a set of
    /// them fused (`eeg,audio`, `eeg,video`, `eeg,audio,video`, …).
    #[arg(long, value_delimiter = ',', conflicts_with = "use_audio")]
    modalities: Vec<Modality>,
    /// The EEG+audio model: the same as `--modalities eeg,audio`.
    #[arg(long)]
    use_audio: bool,
    /// Fusion mode of the EEG+audio model.
    #[arg(long, value_enum, default_value = "concat")]
    fusion_mode: ModeArg,
    #[command(flatten)]
    common: Common,
}

/// The built-in synthetic tree (`datasets/synthetic`, or `$EMOFUSE_SYNTHETIC_DIR` when set): generated on
/// first use, regenerated when its settings change. `compare`, `baseline` and `sweep` use it when no
/// `--data-dir` is given.
pub fn default_data() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("EMOFUSE_SYNTHETIC_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/synthetic"), PathBuf::from);
    let cfg = SynthConfig::default();
    let stamp = dir.join("synth_config.json");
    let current = std::fs::read(&stamp).ok().and_then(|b| serde_json::from_slice::<SynthConfig>(&b).ok());
    if current.as_ref() != Some(&cfg) {
        eprintln!("generating the built-in synthetic EAV tree in {} (once)", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        crate::synth::generate(&dir, &cfg)?;
    }
    Ok(dir)
}

struct Bars {
    bar: ProgressBar,
}

impl Progress for Bars {
    fn subject(&self, id: u32, index: usize, total: usize) {
        self.bar.set_length(total as u64);
        self.bar.set_position(index as u64);
        self.bar.set_message(format!("subject {id}"));
    }

    fn epoch(&self, setting: &str, log: &EpochLog) {
        self.bar.set_message(format!("{setting}: epoch {} loss {:.3}", log.epoch, log.train_loss));
    }

    fn skipped(&self, skipped: &Skipped) {
        self.bar.suspend(|| say!("skipping subject {}: {}", skipped.subject, skipped.reason));
    }
}

fn execute(mut cfg: ExperimentConfig, out: Option<PathBuf>, what: &str) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| {
        let secs =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        PathBuf::from("runs").join(format!("{what}-{secs}"))
    });
    if cfg.cache_dir.is_none() {
        cfg.cache_dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../datasets/cache"));
    }
    // Checkpoints and training states belong to this run's folder, also when the settings come from an
    // earlier config.json.
    cfg.checkpoint_dir = Some(out.join("checkpoints"));
    cfg.state_dir = Some(out.join("state"));
    write_config(&out, &cfg)?;
    let bar = crate::progress::bar(1, "training");
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} subjects {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Results are saved after every subject: a run stopped by a later subject's error keeps them.
    let mut saved = 0;
    let outcome = run_with(&cfg, &Bars { bar: bar.clone() }, &mut |partial| {
        saved = partial.summary.first().map_or(0, |r| r.subjects.len());
        write_results(&out, &cfg, partial)
    });
    bar.finish_and_clear();
    let results = match outcome {
        Ok(r) => r,
        Err(e) if saved > 0 => {
            return Err(anyhow::Error::new(e).context(format!(
                "run stopped; the results of the {saved} subject(s) finished before are in {}",
                out.display()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    write_results(&out, &cfg, &results)?;
    say!("{}", table(&results));
    say!(
        "results: {}/results.json, results.csv, report.md, checkpoints/ (config.json repeats the run)",
        out.display()
    );
    Ok(())
}

fn config_from(
    common: &Common,
    modes: Vec<FusionMode>,
    (eeg_only, audio_only): (bool, bool),
) -> anyhow::Result<ExperimentConfig> {
    if let Some(path) =
        common.resume.as_ref().map(|d| d.join("config.json")).as_ref().or(common.config.as_ref())
    {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not an experiment config", path.display()));
    }
    let data_dir = match &common.data_dir {
        Some(d) => d.clone(),
        None => default_data()?,
    };
    let mut cfg = ExperimentConfig::new(data_dir, modes);
    cfg.eeg_only = eeg_only;
    cfg.audio_only = audio_only;
    cfg.subjects.clone_from(&common.subjects);
    cfg.preprocess.channels = common.channels.clone();
    cfg.standardise = !common.no_standardise;
    cfg.val_fraction = common.val_fraction;
    cfg.skip_bad_subjects = common.skip_bad_subjects;
    common.training.apply(&mut cfg);
    cfg.seed = common.seed;
    Ok(cfg)
}

/// Sets the rows of `cfg` for `singles` and fused `sets` (and the video sampling when some model reads
/// video). A config read from a file keeps its own rows.
fn set_rows(cfg: &mut ExperimentConfig, common: &Common, singles: &[Modality], sets: Vec<Vec<Modality>>) {
    if common.resume.is_some() || common.config.is_some() {
        return;
    }
    cfg.eeg_only = singles.contains(&Modality::Eeg);
    cfg.audio_only = singles.contains(&Modality::Audio);
    cfg.video_only = singles.contains(&Modality::Video);
    if sets.is_empty() {
        cfg.fusion_modes.clear();
    }
    // EEG and audio alone keep today's config (no `fused_sets` entry).
    cfg.fused_sets = if sets == [vec![Modality::Eeg, Modality::Audio]] { Vec::new() } else { sets };
    if cfg.reads_video() {
        let (width, height) = common.video_size;
        cfg.preprocess.video = Some(video::Sampling { width, height, ..video::Sampling::default() });
    }
}

/// Runs `compare`.
pub fn run_compare(args: &CompareArgs) -> anyhow::Result<()> {
    let mut cfg = config_from(&args.common, args.fusion_mode.modes(), (true, true))?;
    let (singles, sets) = plan(&args.modalities);
    set_rows(&mut cfg, &args.common, &singles, sets);
    execute(cfg, args.common.resume.clone().or_else(|| args.common.out.clone()), "compare")
}

/// Runs `baseline`.
pub fn run_baseline(args: &BaselineArgs) -> anyhow::Result<()> {
    let mut set = args.modalities.clone();
    if args.use_audio {
        set = vec![Modality::Eeg, Modality::Audio];
    }
    set.sort();
    set.dedup();
    if set.is_empty() {
        set.push(Modality::Eeg);
    }
    let mut cfg = config_from(&args.common, args.fusion_mode.modes(), (false, false))?;
    if set.len() == 1 {
        set_rows(&mut cfg, &args.common, &set, Vec::new());
    } else {
        set_rows(&mut cfg, &args.common, &[], vec![set]);
    }
    execute(cfg, args.common.resume.clone().or_else(|| args.common.out.clone()), "baseline")
}
