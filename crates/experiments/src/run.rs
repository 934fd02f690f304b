//! Runs over subjects: EEG-only against EEG+audio (each fusion mode) on the same speaking-trial windows,
//! per subject, with the chosen split.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::Device;
use core_types::{Emotion, FusionMode, Modality};
use eav::dataset::Sample;
use eav::split::{Protocol, Split, kfold, loso, official};
use eav::subject::{SubjectDir, discover};

use crate::config::{ExperimentConfig, MixChoice, Trials, device};
use crate::data::{Normalisation, TensorSet};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::mix::{Bagging, OutputProbs};
use crate::model::{EmotionModel, ModelConfig};
use crate::results::{Results, RunResult, ScaleSummary, Skipped, summarise, summarise_runs};
use crate::robustness::{ConditionSets, SplitData};
use crate::train::{EpochLog, train};

/// An attention map, `[query][key]`.
type Map = Vec<Vec<f32>>;

/// What the fusion layer did on a set of windows.
#[derive(Default)]
struct FusionView {
    /// Mean gate values (gated).
    gates: Option<Vec<f32>>,
    /// Mean attention maps over windows and heads, EEG → audio and audio → EEG.
    attention: Option<(Map, Map)>,
    /// Mean entropy of the attention rows (per window, head and query), over the entropy of a uniform
    /// row: EEG → audio and audio → EEG. 1 means the attention is uniform.
    entropy: Option<(f64, f64)>,
    /// The adaptive router's mean weights over the windows, and per true class (`[class][mode]`).
    router: Option<(Vec<f64>, Vec<Vec<f64>>)>,
}

/// Sums of one direction's attention: the map summed over windows (mean over heads) and the relative
/// entropy summed over windows.
#[derive(Default)]
struct AttentionSums {
    map: Option<candle_core::Tensor>,
    entropy: f64,
}

impl AttentionSums {
    fn add(&mut self, weights: &candle_core::Tensor) -> Result<()> {
        let m = weights.mean(1)?.sum(0)?;
        self.map = Some(match self.map.take() {
            Some(a) => (a + m)?,
            None => m,
        });
        let (b, _, _, keys) = weights.dims4()?;
        let plogp = (weights * (weights + 1e-30)?.log()?)?.sum(candle_core::D::Minus1)?.neg()?;
        let rows = plogp.mean_all()?.to_scalar::<f32>()?;
        if keys > 1 {
            self.entropy += f64::from(rows) / (keys as f64).ln() * b as f64;
        }
        Ok(())
    }
}

fn inspect_fusion(model: &EmotionModel, set: &TensorSet) -> Result<FusionView> {
    if model.fusion().is_none() {
        return Ok(FusionView::default());
    }
    let mut gates: Option<candle_core::Tensor> = None;
    let (mut e2a, mut a2e) = (AttentionSums::default(), AttentionSums::default());
    let experts = fusion::ADAPTIVE_EXPERTS.len();
    // Router weight sums: over all windows, per true class, and the windows per class.
    type RouterSums = (Vec<f64>, Vec<Vec<f64>>, Vec<usize>);
    let mut router: Option<RouterSums> = None;
    for batch in set.in_order(64) {
        let batch = batch?;
        let labels = &batch.labels;
        let Some(ins) = model.inspect_inputs(batch.inputs(), &batch.presence)? else {
            return Ok(FusionView::default());
        };
        if let Some(g) = ins.gates {
            let g = g.sum(0)?;
            gates = Some(match gates.take() {
                Some(a) => (a + g)?,
                None => g,
            });
        }
        if let Some(w) = &ins.router {
            let (all, by_class, counts) = router.get_or_insert_with(|| {
                (vec![0.0; experts], vec![vec![0.0; experts]; Emotion::COUNT], vec![0; Emotion::COUNT])
            });
            let w: Vec<Vec<f32>> = w.to_vec2()?;
            let y: Vec<u32> = labels.to_vec1()?;
            for (row, &class) in w.iter().zip(&y) {
                let class = class as usize;
                counts[class] += 1;
                for (k, &v) in row.iter().enumerate() {
                    all[k] += f64::from(v);
                    by_class[class][k] += f64::from(v);
                }
            }
        }
        // An adaptive model reports the maps of two experts; the temporal one's are shown.
        let shown = if ins.attention.iter().any(|m| m.mode == FusionMode::Temporal) {
            FusionMode::Temporal
        } else {
            FusionMode::CrossAttention
        };
        for map in ins.attention.into_iter().filter(|m| m.mode == shown) {
            match (map.query, map.key) {
                (Modality::Eeg, Modality::Audio) => e2a.add(&map.weights)?,
                (Modality::Audio, Modality::Eeg) => a2e.add(&map.weights)?,
                _ => {}
            }
        }
    }
    let n = set.len().max(1) as f64;
    let gates = gates.map(|g| (g / n)?.to_vec1::<f32>()).transpose()?;
    let (attention, entropy) = match (e2a.map, a2e.map) {
        (Some(x), Some(y)) => (
            Some(((x / n)?.to_vec2::<f32>()?, (y / n)?.to_vec2::<f32>()?)),
            Some((e2a.entropy / n, a2e.entropy / n)),
        ),
        _ => (None, None),
    };
    let router = router.map(|(all, by_class, counts)| {
        let per_class = by_class
            .into_iter()
            .zip(&counts)
            .map(|(row, &c)| row.into_iter().map(|v| v / c.max(1) as f64).collect())
            .collect();
        (all.into_iter().map(|v| v / n).collect(), per_class)
    });
    Ok(FusionView { gates, attention, entropy, router })
}

/// What a run reports while it works.
pub trait Progress {
    /// A subject (or held-out subject) starts; `total` of them.
    fn subject(&self, _id: u32, _index: usize, _total: usize) {}
    /// An epoch of a setting ended.
    fn epoch(&self, _setting: &str, _log: &EpochLog) {}
    /// A subject was left out because its files failed to load.
    fn skipped(&self, _skipped: &Skipped) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;
impl Progress for Quiet {}

fn keep_speaking(s: Vec<Sample>) -> Vec<Sample> {
    s.into_iter().filter(|s| s.mfcc.is_some()).collect()
}

/// The subjects to use.
fn subject_dirs(cfg: &ExperimentConfig) -> Result<Vec<SubjectDir>> {
    let all = discover(&cfg.data_dir)?;
    if cfg.subjects.is_empty() {
        return Ok(all);
    }
    cfg.subjects
        .iter()
        .map(|id| {
            all.iter().find(|s| s.id == *id).cloned().ok_or_else(|| {
                Error::Input(format!(
                    "subject {id} not found in {} (have {:?})",
                    cfg.data_dir.display(),
                    all.iter().map(|s| s.id).collect::<Vec<_>>()
                ))
            })
        })
        .collect()
}

/// Loads and preprocesses one subject's windows (speaking ones, or every one with `Trials::All`): the
/// windows, EEG channels and EEG samples per window.
///
/// # Errors
/// Data errors naming the file; [`Error::Input`] when the subject has no speaking window with audio.
pub fn load_samples(sd: &SubjectDir, cfg: &ExperimentConfig) -> Result<(Vec<Sample>, usize, usize)> {
    if cfg.reads_video() && cfg.preprocess.video.is_none() {
        return Err(Error::Input(
            "the video models need the video sampling settings (preprocess.video)".into(),
        ));
    }
    let (pre, _) = eav::cache::preprocess_cached(sd, &cfg.preprocess, cfg.cache_dir.as_deref())?;
    let channels = pre.channels.len();
    if cfg.reads_video()
        && let Some(s) = pre.samples.iter().find(|s| s.video.is_none())
    {
        return Err(Error::Input(format!(
            "subject {}: trial {} has no video clip in {} (the video models need one per trial)",
            sd.id,
            s.trial + 1,
            sd.path.join("Video").display()
        )));
    }
    if !pre.samples.iter().any(|s| s.mfcc.is_some()) {
        return Err(Error::Input(format!("subject {}: no speaking windows with audio", sd.id)));
    }
    let mut silent: Vec<usize> =
        pre.samples.iter().filter(|s| s.speaking && s.mfcc.is_none()).map(|s| s.trial + 1).collect();
    silent.dedup();
    if !silent.is_empty() {
        tracing::warn!(
            subject = sd.id,
            trials = silent.len(),
            first = silent[0],
            "speaking trials without an audio file: left out of the speaking windows, audio absent with --trials all (`cargo xtask inspect` lists them)"
        );
    }
    let samples = match cfg.trials {
        Trials::Speaking => keep_speaking(pre.samples),
        Trials::All => pre.samples,
    };
    Ok((samples, channels, pre.eeg_len))
}

/// Runs EEG-only and every fused setting of `cfg` on every subject, calling `progress` as it goes.
///
/// # Errors
/// Data errors naming the file; training errors.
pub fn run(cfg: &ExperimentConfig, progress: &dyn Progress) -> Result<Results> {
    run_with(cfg, progress, &mut |_| Ok(()))
}

/// [`run`], handing the results so far to `finished` after each subject (or held-out subject), so that a
/// caller can save them: a run stopped later by an error or a kill keeps what finished before.
///
/// A subject whose files fail to load stops the run with that error, or with `cfg.skip_bad_subjects` is
/// left out, recorded in [`Results::skipped`] and reported to `progress`.
///
/// # Errors
/// Data errors naming the file; training errors; [`Error::Input`] when every subject was skipped; the
/// errors of `finished`.
pub fn run_with(
    cfg: &ExperimentConfig,
    progress: &dyn Progress,
    finished: &mut dyn FnMut(&Results) -> Result<()>,
) -> Result<Results> {
    if cfg.late_fusion_folds == 1 {
        return Err(Error::Input(
            "late fusion needs at least 2 folds to predict every training trial out of fold (0 turns it off)"
                .into(),
        ));
    }
    if cfg.late_fusion_ensemble
        && (cfg.late_fusion_folds < 2
            || cfg.val_fraction > 0.0
            || (!cfg.fusion_modes.is_empty() && cfg.unimodal_loss <= 0.0))
    {
        return Err(Error::Input(
            "the cross-validation ensemble is made of the late-fusion fold models: it needs late fusion folds ≥ 2, no validation split, and, with fused models, unimodal losses > 0 (their heads are what the mix weights)"
                .into(),
        ));
    }
    if cfg.late_fusion_choice == MixChoice::Even && cfg.late_fusion_bootstrap > 0 {
        return Err(Error::Input(
            "bagged weights (late fusion bootstrap > 0) average best-fit choices: use them with the `best` mix choice"
                .into(),
        ));
    }
    let device = device(&cfg.device)?;
    let dirs = subject_dirs(cfg)?;
    let mut results = Results {
        data_fingerprint: String::new(),
        summary: Vec::new(),
        runs: Vec::new(),
        skipped: Vec::new(),
        robustness: Vec::new(),
    };
    // The audio file of each (subject, trial), for the noisy-speech conditions.
    let mut audio = BTreeMap::new();
    let mut used: Vec<&SubjectDir> = Vec::new();
    // The data fingerprint, folded over the used subjects' cache keys as they are used.
    let mut fp = FINGERPRINT_START;
    let load = |sd: &SubjectDir, results: &mut Results| -> Result<Option<(Vec<Sample>, usize, usize)>> {
        tracing::info!(subject = sd.id, "loading and preprocessing {}", sd.path.display());
        match load_samples(sd, cfg) {
            Ok(loaded) => Ok(Some(loaded)),
            Err(e) if cfg.skip_bad_subjects => {
                let skipped = Skipped { subject: sd.id, reason: e.to_string() };
                tracing::warn!(subject = sd.id, reason = %skipped.reason, "subject skipped");
                progress.skipped(&skipped);
                results.skipped.push(skipped);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    };
    let refresh = |results: &mut Results, fp: u64| {
        results.summary = summarise_runs(&results.runs);
        results.robustness = crate::robustness::summarise(&results.runs);
        results.data_fingerprint = format!("{fp:016x}");
    };
    match cfg.split {
        Protocol::Official | Protocol::KFold(_) => {
            for (i, sd) in dirs.iter().enumerate() {
                progress.subject(sd.id, i, dirs.len());
                let Some((samples, channels, eeg_len)) = load(sd, &mut results)? else { continue };
                used.push(sd);
                fp = fold_key(fp, sd, cfg)?;
                add_audio_files(&mut audio, sd)?;
                tracing::info!(subject = sd.id, windows = samples.len(), channels, "speaking windows ready");
                let splits: Vec<Split> = match cfg.split {
                    Protocol::KFold(k) => (0..k).map(|f| kfold(&samples, k, f, cfg.val_fraction)).collect(),
                    _ => vec![official(&samples, cfg.train_fraction, cfg.val_fraction)],
                };
                for (fold, split) in splits.iter().enumerate() {
                    results.runs.extend(run_split(
                        cfg, &device, &samples, split, sd.id, fold, channels, eeg_len, &audio, progress,
                    )?);
                }
                refresh(&mut results, fp);
                finished(&results)?;
            }
        }
        Protocol::Loso => {
            let mut samples = Vec::new();
            let mut dims = (0, 0);
            for sd in &dirs {
                let Some((s, c, l)) = load(sd, &mut results)? else { continue };
                used.push(sd);
                fp = fold_key(fp, sd, cfg)?;
                add_audio_files(&mut audio, sd)?;
                samples.extend(s);
                dims = (c, l);
            }
            for (i, sd) in used.iter().enumerate() {
                progress.subject(sd.id, i, used.len());
                let split = loso(&samples, sd.id, cfg.val_fraction);
                results.runs.extend(run_split(
                    cfg, &device, &samples, &split, sd.id, 0, dims.0, dims.1, &audio, progress,
                )?);
                refresh(&mut results, fp);
                finished(&results)?;
            }
        }
    }
    if used.is_empty() {
        let reasons: Vec<String> =
            results.skipped.iter().map(|s| format!("subject {}: {}", s.subject, s.reason)).collect();
        return Err(Error::Input(format!("every subject was skipped; {}", reasons.join("; "))));
    }
    Ok(results)
}

/// Adds subject `sd`'s audio files to `audio`, keyed by (subject, trial).
fn add_audio_files(audio: &mut BTreeMap<(u32, usize), PathBuf>, sd: &SubjectDir) -> Result<()> {
    audio.extend(eav::subject::audio_files(sd)?.into_iter().map(|(trial, path)| ((sd.id, trial), path)));
    Ok(())
}

/// The start of the data fingerprint: a hash over the used subjects' file names, sizes and modification
/// times and the preprocessing settings (the preprocessing cache keys), folded in with [`fold_key`].
const FINGERPRINT_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The fingerprint `fp` with subject `sd`'s cache key folded in.
fn fold_key(fp: u64, sd: &SubjectDir, cfg: &ExperimentConfig) -> Result<u64> {
    Ok((fp ^ eav::cache::key(sd, &cfg.preprocess)?).wrapping_mul(0x0100_0000_01b3))
}

#[allow(clippy::too_many_arguments)] // one call site; the arguments are the pieces of one split
fn run_split(
    cfg: &ExperimentConfig,
    device: &Device,
    samples: &[Sample],
    split: &Split,
    subject: u32,
    fold: usize,
    channels: usize,
    eeg_len: usize,
    audio: &BTreeMap<(u32, usize), PathBuf>,
    progress: &dyn Progress,
) -> Result<Vec<RunResult>> {
    if split.train.is_empty() || split.test.is_empty() {
        return Err(Error::Input(format!(
            "subject {subject}: the split leaves no training or no test windows"
        )));
    }
    let frames = cfg.preprocess.mfcc_frames;
    let video_shape = cfg.preprocess.video.as_ref().map(|v| (v.per_window, v.height, v.width));
    let norm = match (cfg.standardise, video_shape) {
        (true, Some(shape)) => Normalisation::fit(samples, &split.train, channels, eeg_len, frames)
            .with_video(samples, &split.train, shape),
        (true, None) => Normalisation::fit(samples, &split.train, channels, eeg_len, frames),
        (false, shape) => Normalisation {
            video: shape.map(|shape| crate::data::VideoNorm { mean: 0.0, std: 1.0, shape }),
            ..Normalisation::identity(channels)
        },
    };
    let set = |idx: &[usize]| TensorSet::build(samples, idx, &norm, eeg_len, frames, device);
    // Every model is tested on the same speaking windows, whatever it trained on; the listening test
    // windows (loaded with `Trials::All`) are the `listening` robustness condition.
    let (test, listening): (Vec<usize>, Vec<usize>) =
        split.test.iter().copied().partition(|&i| samples[i].mfcc.is_some());
    if test.is_empty() {
        return Err(Error::Input(format!("subject {subject}: the split leaves no speaking test windows")));
    }
    let data = SplitData { samples, test: &test, listening: &listening, norm: &norm, eeg_len, audio };
    let conditions = ConditionSets::build(&data, &cfg.preprocess, cfg.seed, device)?;
    let (train_set, test_set) = (set(&split.train)?, conditions.full());
    let val_set = if split.val.is_empty() { None } else { Some(set(&split.val)?) };
    // The audio-only model trains on the windows with audio.
    let speaking = |idx: &[usize]| -> Vec<usize> {
        idx.iter().copied().filter(|&i| samples[i].mfcc.is_some()).collect()
    };
    let audio_sets = if cfg.audio_only && cfg.trials == Trials::All {
        let (train, val) = (speaking(&split.train), speaking(&split.val));
        if train.is_empty() {
            return Err(Error::Input(format!("subject {subject}: no training window has audio")));
        }
        Some((set(&train)?, if val.is_empty() { None } else { Some(set(&val)?) }))
    } else {
        None
    };
    // Every model's settings beyond its architecture.
    let prepare = |model_cfg: ModelConfig| {
        let mut model_cfg = model_cfg.with_dropout(cfg.dropout).with_dropout_seed(cfg.seed);
        model_cfg.eeg_rate = cfg.preprocess.eeg_rate();
        if let Some(v) = &cfg.preprocess.video {
            // The clips' nominal 30 frames/s, sampled every `step`-th frame.
            model_cfg.video_rate = 30.0 / v.step.max(1) as f64;
        }
        model_cfg
    };
    let single_cfg = |m: Modality| {
        prepare(match m {
            Modality::Eeg => ModelConfig::eeg_only(channels),
            Modality::Audio => ModelConfig::audio_only(channels),
            Modality::Video => ModelConfig::video_only(channels),
        })
    };
    // The training windows of a single-modality model among `idx`: the audio-only model's have audio.
    let single_windows = |m: Modality, idx: &[usize]| -> Vec<usize> {
        if m == Modality::Audio && cfg.trials == Trials::All { speaking(idx) } else { idx.to_vec() }
    };
    // The trained single-modality models of this split (the late-fusion experts), and those trained on
    // the folds of the output-mix choice.
    let mut singles: Vec<EmotionModel> = Vec::new();
    let fold_singles: std::cell::RefCell<Vec<(usize, EmotionModel)>> = std::cell::RefCell::default();
    let mut settings: Vec<(ModelConfig, String, String)> = Vec::new();
    if cfg.eeg_only {
        settings.push((ModelConfig::eeg_only(channels), "eeg_only".into(), "none".into()));
    }
    if cfg.audio_only {
        settings.push((ModelConfig::audio_only(channels), "audio_only".into(), "none".into()));
    }
    if cfg.video_only {
        settings.push((ModelConfig::video_only(channels), "video_only".into(), "none".into()));
    }
    for set in cfg.fused_sets() {
        for &mode in &cfg.fusion_modes {
            let mut fused = ModelConfig::fused_over(channels, mode, &set);
            fused.unimodal_loss = cfg.unimodal_loss;
            if let Some(f) = fused.fusion.as_mut() {
                f.router_balance = cfg.router_balance;
            }
            settings.push((fused, crate::config::row_name(&set), mode.to_string()));
        }
    }
    let mut out = Vec::new();
    for (model_cfg, modality, mode) in settings {
        let modality = modality.as_str();
        let mut model_cfg = prepare(model_cfg);
        let name = format!("subject {subject} {modality} {mode}");
        let state_file = |suffix: &str| {
            cfg.state_dir.as_ref().map(|d| {
                d.join(format!("subject{subject}_fold{fold}_{modality}_{mode}{suffix}.state.safetensors"))
            })
        };
        let state = state_file("");
        if let Some(d) = &cfg.state_dir {
            std::fs::create_dir_all(d).map_err(|source| Error::Io { path: d.clone(), source })?;
        }
        let (train_set, val_set) = match (&audio_sets, modality) {
            (Some((t, v)), "audio_only") => (t, v.as_ref()),
            _ => (&train_set, val_set.as_ref()),
        };
        let late = model_cfg.fusion.is_some() && model_cfg.unimodal_loss > 0.0 && cfg.late_fusion_folds > 1;
        let experts: Vec<Modality> =
            if late && cfg.late_fusion_experts { model_cfg.modalities() } else { Vec::new() };
        let mut mix_seconds = 0.0;
        // The trained single-modality models of `needed` (the experts of a mix): the comparison's own
        // rows, or trained here like them.
        let train_singles = |needed: &[Modality], singles: &mut Vec<EmotionModel>| -> Result<()> {
            for &m in needed {
                let want = single_cfg(m);
                if singles.iter().any(|s| *s.config() == want) {
                    continue;
                }
                let single = EmotionModel::new(&want, device, cfg.seed)?;
                let single_name = format!("subject {subject} {m}_only (expert of the output mix)");
                let (train_idx, val_idx) = (single_windows(m, &split.train), single_windows(m, &split.val));
                if train_idx.is_empty() {
                    // No training window has the modality: no such expert (the mix cannot weight it).
                    continue;
                }
                let val = if val_idx.is_empty() { None } else { Some(set(&val_idx)?) };
                let state = state_file(&format!("_expert_{m}"));
                train(
                    &single,
                    &set(&train_idx)?,
                    val.as_ref(),
                    &cfg.train,
                    cfg.seed,
                    state.as_deref(),
                    &mut |log| {
                        progress.epoch(&single_name, log);
                    },
                )?;
                singles.push(single);
            }
            Ok(())
        };
        let trial_of = |i: usize| (u64::from(samples[i].subject) << 32) | samples[i].trial as u64;
        // The fold models of a cross-validation ensemble (`late_fusion_ensemble`).
        let mut ensemble: Vec<EmotionModel> = Vec::new();
        let probes = Probes {
            cfg,
            device,
            name: &name,
            progress,
            state_file: &state_file,
            experts: &experts,
            single_cfg: &single_cfg,
            single_windows: &single_windows,
            fold_singles: &fold_singles,
        };
        let folds = || eav::split::trial_folds(samples, &split.train, cfg.late_fusion_folds);
        if late && val_set.is_none() {
            let start = std::time::Instant::now();
            let (mix, members) = probes.out_of_fold_mix(&model_cfg, folds(), &set, &trial_of)?;
            model_cfg.output_mix = mix;
            ensemble = members;
            mix_seconds += start.elapsed().as_secs_f64();
            if let Some(mix) = &model_cfg.output_mix {
                tracing::info!(subject, fold, modality, mode = %mode, mix = %mix.describe(), "output mix chosen");
            } else {
                tracing::warn!(subject, fold, modality, mode = %mode, "one training trial per class: no output mix (the fused classifier predicts alone)");
            }
        }
        let mut model = EmotionModel::new(&model_cfg, device, cfg.seed)?;
        let trained =
            train(&model, train_set, val_set, &cfg.train, cfg.seed, state.as_deref(), &mut |log| {
                progress.epoch(&name, log)
            })?;
        let start = std::time::Instant::now();
        if late && let Some(val) = val_set {
            train_singles(&experts, &mut singles)?;
            let mut probs = OutputProbs::collect(&model, val)?;
            for &m in &experts {
                if let Some(single) = singles.iter().find(|s| *s.config() == single_cfg(m)) {
                    probs.push_expert(single, val)?;
                }
            }
            let groups = split.val.iter().map(|&i| trial_of(i)).collect();
            model.set_output_mix(Some(choose_mix(cfg, &probs, groups)?))?;
        }
        let weighted: Vec<Modality> = model.experts().iter().map(|(m, _)| *m).collect();
        train_singles(&weighted, &mut singles)?;
        for (m, expert) in model.experts() {
            let trained = singles.iter().find(|s| s.config() == expert.config()).ok_or_else(|| {
                Error::Input(format!("{name}: no trained {m}_only model for the output mix"))
            })?;
            model.copy_expert(trained)?;
        }
        let model = if !ensemble.is_empty() {
            let members: Vec<&EmotionModel> = ensemble.iter().collect();
            EmotionModel::ensemble_of(&model, &members)?
        } else if cfg.late_fusion_ensemble
            && cfg.late_fusion_folds > 1
            && model_cfg.fusion.is_none()
            && val_set.is_none()
        {
            // A single-modality model's ensemble: the models of its kind trained without each fold (the
            // experts' fold models of the fused models' mixes, trained here if not yet).
            let m = model_cfg.single;
            let folds = probes.fits(folds());
            for (f, fit) in folds.fits.iter().enumerate() {
                if !(single_windows)(m, fit).is_empty() {
                    probes.fold_single(f, folds.fits.len(), m, fit, &folds.all, &set)?;
                }
            }
            let fs = fold_singles.borrow();
            let members: Vec<&EmotionModel> =
                (0..folds.fits.len()).filter_map(|f| fold_single_of(&fs, f, &model_cfg)).collect();
            if members.len() < 2 {
                drop(fs);
                model
            } else {
                let ens = EmotionModel::ensemble_of(&model, &members)?;
                drop(fs);
                // The model itself stays the source of the fused models' experts.
                singles.push(model);
                ens
            }
        } else {
            model
        };
        mix_seconds += start.elapsed().as_secs_f64();
        let model_cfg = model.config().clone();
        let outputs = if model_cfg.output_mix.is_some() {
            Some(OutputProbs::collect(&model, test_set)?.accuracies())
        } else {
            None
        };
        let (m, robustness): (Metrics, _) = conditions.evaluate(&model)?;
        tracing::info!(subject, fold, modality, mode = %mode, accuracy = m.accuracy, macro_f1 = m.macro_f1, seconds = trained.seconds, "tested");
        let FusionView { gates: gate_mean, attention, entropy, router } = inspect_fusion(&model, test_set)?;
        let blend_weights =
            model.fusion().and_then(|f| f.blend_weights().ok()).map(|w| w.to_vec1::<f32>()).transpose()?;
        let checkpoint = match &cfg.checkpoint_dir {
            Some(dir) => {
                let path = dir.join(format!("subject{subject}_fold{fold}_{modality}_{mode}.safetensors"));
                crate::checkpoint::save(
                    &path,
                    &model,
                    &crate::checkpoint::CheckpointMeta::new(&model_cfg, &cfg.preprocess, &norm),
                )?;
                Some(path)
            }
            None => None,
        };
        let scale = |m: Modality| -> Result<Option<ScaleSummary>> {
            model.fusion().and_then(|fu| fu.scale(m)).map(|t| Ok(summarise(t.to_vec1::<f32>()?))).transpose()
        };
        out.push(RunResult {
            subject,
            modality: modality.into(),
            fusion_mode: mode,
            fold,
            accuracy: m.accuracy,
            macro_f1: m.macro_f1,
            kappa: m.kappa,
            loss: m.loss.unwrap_or(f64::NAN),
            confusion: m.confusion,
            precision: m.precision,
            recall: m.recall,
            parameters: model.num_parameters(),
            train_seconds: trained.seconds + mix_seconds,
            windows: [train_set.len(), val_set.map_or(0, TensorSet::len), test.len()],
            history: trained.history,
            eeg_scale: scale(Modality::Eeg)?,
            audio_scale: scale(Modality::Audio)?,
            video_scale: scale(Modality::Video)?,
            checkpoint,
            gate_mean,
            attention_e2a: attention.as_ref().map(|a| a.0.clone()),
            attention_a2e: attention.map(|a| a.1),
            attention_entropy: entropy.map(|(x, y)| vec![x, y]),
            router_weights: router.as_ref().map(|(all, _)| {
                fusion::ADAPTIVE_EXPERTS.iter().map(|m| m.to_string()).zip(all.iter().copied()).collect()
            }),
            router_by_class: router.map(|(_, by_class)| by_class),
            blend_weights,
            output_mix: model_cfg.output_mix.clone(),
            output_accuracy: outputs,
            robustness,
        });
        if model_cfg.fusion.is_none() && model_cfg.ensemble == 0 {
            singles.push(model);
        }
    }
    Ok(out)
}

/// What the extra models of a cross-fitted output-mix choice need.
struct Probes<'a> {
    cfg: &'a ExperimentConfig,
    device: &'a Device,
    name: &'a str,
    progress: &'a dyn Progress,
    state_file: &'a dyn Fn(&str) -> Option<PathBuf>,
    /// The modalities whose single-modality models join the mix as experts (none: the fused model's
    /// own outputs only).
    experts: &'a [Modality],
    /// The configuration of a modality's single-modality model.
    single_cfg: &'a dyn Fn(Modality) -> ModelConfig,
    /// A single-modality model's training windows among the given ones.
    single_windows: &'a dyn Fn(Modality, &[usize]) -> Vec<usize>,
    /// Single-modality models trained without fold `f`, shared by the fused models of the split.
    fold_singles: &'a std::cell::RefCell<Vec<(usize, EmotionModel)>>,
}

/// The output mix `cfg` asks for, chosen on `probs` (held-out windows; `groups[i]` is window `i`'s trial).
fn choose_mix(
    cfg: &ExperimentConfig,
    probs: &OutputProbs,
    groups: Vec<u64>,
) -> Result<crate::model::OutputMix> {
    match cfg.late_fusion_choice {
        MixChoice::Even => probs.choose_even(cfg.late_fusion_temperatures, &groups),
        MixChoice::Best => probs.choose_bagged(
            cfg.late_fusion_temperatures,
            &Bagging { groups, resamples: cfg.late_fusion_bootstrap, seed: cfg.seed },
        ),
    }
}

/// The single-modality model of configuration `cfg` trained without fold `f`, if `singles` holds it.
fn fold_single_of<'a>(
    singles: &'a [(usize, EmotionModel)],
    f: usize,
    cfg: &ModelConfig,
) -> Option<&'a EmotionModel> {
    singles.iter().find(|(g, s)| *g == f && s.config() == cfg).map(|(_, s)| s)
}

/// The non-empty folds of the training windows, the windows without each, and all of them.
struct Folds {
    folds: Vec<Vec<usize>>,
    fits: Vec<Vec<usize>>,
    all: Vec<usize>,
}

impl Probes<'_> {
    /// The non-empty folds of `folds` with their complements.
    fn fits(&self, folds: Vec<Vec<usize>>) -> Folds {
        let folds: Vec<Vec<usize>> = folds.into_iter().filter(|f| !f.is_empty()).collect();
        let all: Vec<usize> = folds.iter().flatten().copied().collect();
        let fits = (0..folds.len())
            .map(|f| {
                folds
                    .iter()
                    .enumerate()
                    .filter(|(g, _)| *g != f)
                    .flat_map(|(_, w)| w.iter().copied())
                    .collect()
            })
            .collect();
        Folds { folds, fits, all }
    }

    /// Trains `m`'s single-modality model on the windows `fit` (those without fold `f` of `k`; `all`
    /// is every training window) unless the split has it already, for as many optimisation steps as
    /// the model trained on every window takes; kept in `fold_singles`.
    fn fold_single(
        &self,
        f: usize,
        k: usize,
        m: Modality,
        fit: &[usize],
        all: &[usize],
        set: &dyn Fn(&[usize]) -> Result<TensorSet>,
    ) -> Result<()> {
        let want = (self.single_cfg)(m);
        if fold_single_of(&self.fold_singles.borrow(), f, &want).is_some() {
            return Ok(());
        }
        let single = EmotionModel::new(&want, self.device, self.cfg.seed)?;
        let single_fit = (self.single_windows)(m, fit);
        let mut single_train = self.cfg.train.clone();
        single_train.epochs = (self.cfg.train.epochs as f64 * (self.single_windows)(m, all).len() as f64
            / single_fit.len().max(1) as f64)
            .round() as usize;
        let single_name = format!("{} ({m}_only expert, fold {}/{k})", self.name, f + 1);
        let state = (self.state_file)(&format!("_mixfold{f}_expert_{m}"));
        train(
            &single,
            &set(&single_fit)?,
            None,
            &single_train,
            self.cfg.seed,
            state.as_deref(),
            &mut |log| {
                self.progress.epoch(&single_name, log);
            },
        )?;
        self.fold_singles.borrow_mut().push((f, single));
        Ok(())
    }

    /// The output mix chosen on out-of-fold predictions: for each non-empty fold of `folds`, a model
    /// trained on the other folds predicts it ([`crate::mix`]). `None` with fewer than two non-empty
    /// folds (a class with fewer training trials than folds leaves some folds without it; folds left
    /// empty are dropped).
    fn out_of_fold_mix(
        &self,
        model_cfg: &ModelConfig,
        folds: Vec<Vec<usize>>,
        set: &dyn Fn(&[usize]) -> Result<TensorSet>,
        trial_of: &dyn Fn(usize) -> u64,
    ) -> Result<(Option<crate::model::OutputMix>, Vec<EmotionModel>)> {
        let Folds { folds, fits, all } = self.fits(folds);
        let k = folds.len();
        if k < 2 {
            return Ok((None, Vec::new()));
        }
        let mut probes = Vec::new();
        let mut out_of_fold: Option<OutputProbs> = None;
        let total = all.len();
        // An expert joins only if its single-modality model has training windows without each fold
        // (the audio-only model's need audio: with listening trials, some folds may lack them).
        let experts: Vec<Modality> = self
            .experts
            .iter()
            .copied()
            .filter(|&m| fits.iter().all(|fit| !(self.single_windows)(m, fit).is_empty()))
            .collect();
        for ((f, held), fit) in folds.iter().enumerate().zip(&fits) {
            let probe = EmotionModel::new(model_cfg, self.device, self.cfg.seed)?;
            let probe_name = format!("{} (fold {}/{k} of the output mix)", self.name, f + 1);
            let state = (self.state_file)(&format!("_mixfold{f}"));
            // As many optimisation steps as the model trained on every window takes (more epochs over
            // fewer windows), so that a slow-learning output is not judged undertrained.
            let mut train_cfg = self.cfg.train.clone();
            train_cfg.epochs =
                (self.cfg.train.epochs as f64 * total as f64 / fit.len().max(1) as f64).round() as usize;
            train(&probe, &set(fit)?, None, &train_cfg, self.cfg.seed, state.as_deref(), &mut |log| {
                self.progress.epoch(&probe_name, log);
            })?;
            let held_set = set(held)?;
            let mut probs = OutputProbs::collect(&probe, &held_set)?;
            for &m in &experts {
                let want = (self.single_cfg)(m);
                self.fold_single(f, k, m, fit, &all, set)?;
                let singles = self.fold_singles.borrow();
                if let Some(single) = fold_single_of(&singles, f, &want) {
                    probs.push_expert(single, &held_set)?;
                }
            }
            match &mut out_of_fold {
                Some(all) => all.append(probs),
                None => out_of_fold = Some(probs),
            }
            if self.cfg.late_fusion_ensemble {
                probes.push(probe);
            }
        }
        let Some(oof) = out_of_fold else { return Ok((None, Vec::new())) };
        tracing::info!(name = self.name, accuracy = ?oof.accuracies(), nll = ?oof.nlls(), "out-of-fold outputs");
        // The held-out windows in the order they were collected: fold by fold.
        let mix = choose_mix(self.cfg, &oof, folds.iter().flatten().map(|&i| trial_of(i)).collect())?;
        // The ensemble's fold models predict with the mix chosen on them, each with its fold's experts.
        for (f, probe) in probes.iter_mut().enumerate() {
            probe.set_output_mix(Some(mix.clone()))?;
            let singles = self.fold_singles.borrow();
            for (_, expert) in probe.experts() {
                let trained = fold_single_of(&singles, f, expert.config()).ok_or_else(|| {
                    Error::Input(format!("{}: no fold {f} expert for the ensemble", self.name))
                })?;
                probe.copy_expert(trained)?;
            }
        }
        Ok((Some(mix), probes))
    }
}
