//! Training (AdamW, seeded shuffling, optional cosine or step schedule and gradient clipping, early stopping on
//! the validation set with the best weights kept) and evaluation.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{D, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::TensorSet;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{EmotionModel, Presence};
use crate::optim::AdamW;

/// Optimiser and schedule settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training windows.
    pub epochs: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW β₁.
    pub beta1: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// Clip the global gradient norm to this value.
    pub grad_clip: Option<f64>,
    /// How the learning rate changes over training.
    pub schedule: Schedule,
    /// Stop after this many epochs without a better validation loss (only with a validation set).
    pub patience: Option<usize>,
    /// Train the fusion layer's `eeg_scale` / `audio_scale` (off: fixed at 1).
    pub train_scales: bool,
    /// Fused models: the probability that each present modality of a training sample is dropped (masked
    /// as absent) in a step, never all of a sample's modalities. Drawn from the run's seed, the epoch and
    /// the step, so runs repeat and resume exactly. 0 disables it.
    #[serde(default, skip_serializing_if = "crate::model::is_zero")]
    pub modality_dropout: f64,
    /// Fused models with unimodal heads: on-the-fly gradient modulation (OGM, Peng et al. 2022) with this
    /// α. In each step the modality whose head is more confident on the true classes (mean softmax
    /// probability) has its encoder's gradients scaled by `1 − tanh(α·(ratio − 1))`, so the other
    /// modality's encoder can catch up. 0 disables it.
    #[serde(default, skip_serializing_if = "crate::model::is_zero")]
    pub gradient_modulation: f64,
    /// Recompute every BatchNorm layer's running statistics for the trained weights before the model is
    /// evaluated ([`recompute_batch_norm`]): after training, and before each validation pass. On by
    /// default. Off: the running averages that training leaves (PyTorch's default), which lag behind
    /// weights that still move. Absent from older configs: off, so they repeat their numbers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recompute_batch_norm: bool,
}

impl Default for TrainConfig {
    /// 5 epochs of batch 8, AdamW lr 3e-3, weight decay 1e-2, β (0.9, 0.999), clip 5, patience 10,
    /// BatchNorm statistics recomputed after training.
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 8,
            lr: 3e-3,
            weight_decay: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            grad_clip: Some(5.0),
            schedule: Schedule::Constant,
            patience: Some(10),
            train_scales: true,
            modality_dropout: 0.0,
            gradient_modulation: 0.0,
            recompute_batch_norm: true,
        }
    }
}

/// Learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// The base rate throughout.
    Constant,
    /// Cosine decay from the base rate to 0 over all steps.
    Cosine,
    /// Multiply the rate by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Factor per decay.
        gamma: f64,
    },
}

impl Schedule {
    /// The rate at global step `step` of `total` (0-based) in 1-based `epoch`.
    #[must_use]
    pub fn lr(self, base: f64, step: usize, total: usize, epoch: usize) -> f64 {
        match self {
            Self::Constant => base,
            Self::Cosine => {
                base * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos())
            }
            Self::Step { every, gamma } => {
                base * gamma.powi(i32::try_from((epoch - 1) / every.max(1)).unwrap_or(i32::MAX))
            }
        }
    }
}

impl std::str::FromStr for Schedule {
    type Err = String;

    /// `constant`, `cosine` or `step:EVERY:GAMMA` (e.g. `step:10:0.5`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            _ => {
                let bad = || format!("unknown schedule `{s}`; expected constant, cosine or step:EVERY:GAMMA");
                let rest = s.strip_prefix("step:").ok_or_else(bad)?;
                let (every, gamma) = rest.split_once(':').ok_or_else(bad)?;
                Ok(Self::Step {
                    every: every.parse().map_err(|_| bad())?,
                    gamma: gamma.parse().map_err(|_| bad())?,
                })
            }
        }
    }
}

/// What happened in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (in training mode, over the epoch's batches).
    pub train_accuracy: f64,
    /// Validation loss (eval mode).
    pub val_loss: Option<f64>,
    /// Validation accuracy.
    pub val_accuracy: Option<f64>,
}

/// The outcome of [`train`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trained {
    /// One entry per epoch run.
    pub history: Vec<EpochLog>,
    /// The epoch whose weights the model holds at the end (the best on validation, else the last).
    pub best_epoch: usize,
    /// Wall time of training.
    pub seconds: f64,
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?))
}

/// Where training stands after an epoch: saved (with the weights, the optimiser moments and the best
/// weights, in one safetensors file) so an interrupted run continues exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    /// The settings and seed the state belongs to.
    settings: String,
    epoch: usize,
    finished: bool,
    adam_steps: u64,
    step: usize,
    rng_seed: [u8; 32],
    rng_pos: String,
    dropout: Vec<([u8; 32], String)>,
    history: Vec<EpochLog>,
    best: Option<(f64, usize)>,
}

fn save_state(
    path: &Path,
    model: &EmotionModel,
    opt: &AdamW,
    best: Option<&(f64, usize, Vec<Tensor>)>,
    state: &TrainState,
) -> Result<()> {
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (n, v) in model.named_tensors() {
        tensors.insert(format!("param.{n}"), v.as_tensor().clone());
    }
    if let Some((_, _, weights)) = best {
        for ((n, _), w) in model.named_tensors().iter().zip(weights) {
            tensors.insert(format!("best.{n}"), w.clone());
        }
    }
    for (n, t) in opt.state()? {
        tensors.insert(format!("adam.{n}"), t);
    }
    let json = serde_json::to_vec(state).map_err(|e| Error::Input(e.to_string()))?;
    let len = json.len();
    tensors.insert("state_json".into(), Tensor::from_vec(json, len, &candle_core::Device::Cpu)?);
    let tmp = path.with_extension("tmp");
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| Error::Io { path: tmp.clone(), source: std::io::Error::other(e.to_string()) })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.into(), source })
}

type Loaded = (TrainState, HashMap<String, Tensor>);

fn load_state(path: &Path, model: &EmotionModel) -> Result<Option<Loaded>> {
    if !path.is_file() {
        return Ok(None);
    }
    let tensors = candle_core::safetensors::load(path, model.device())
        .map_err(|source| Error::Checkpoint { path: path.into(), source })?;
    let json = tensors
        .get("state_json")
        .ok_or_else(|| Error::Input(format!("{}: not a training state", path.display())))?
        .to_vec1::<u8>()?;
    let state: TrainState = serde_json::from_slice(&json)
        .map_err(|e| Error::Input(format!("{}: damaged training state: {e}", path.display())))?;
    Ok(Some((state, tensors)))
}

/// Runs `f` on a thread of rayon's pool (inline when already on one). The kernels' parallel loops then
/// use the calling thread too, instead of leaving it asleep while the pool's threads spin against its
/// serial work between loops (concat on two cores, called from a program's main thread: 540–682 → 750–927
/// samples/s). Results do not depend on the thread.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// `presence` of a batch of `n` samples with each present modality of each sample (among the model's
/// `modalities`, in the order EEG, audio, video) dropped with probability `p`, never all of a sample's:
/// when the draw drops every modality a sample has, one of them, chosen at random, stays. The generator
/// is seeded from `key` alone, so a resumed run draws the same.
fn drop_modalities(
    presence: &Presence,
    modalities: &[core_types::Modality],
    n: usize,
    p: f64,
    key: [u64; 3],
    device: &candle_core::Device,
) -> Result<Presence> {
    use core_types::Modality;
    const ORDER: [Modality; 3] = [Modality::Eeg, Modality::Audio, Modality::Video];
    let values = |m: Modality| -> Result<Vec<f32>> {
        Ok(match presence.get(m) {
            _ if !modalities.contains(&m) => vec![0.0; n],
            Some(t) => t.to_dtype(candle_core::DType::F32)?.to_vec1()?,
            None => vec![1.0; n],
        })
    };
    let mut masks = ORDER.map(values).into_iter().collect::<Result<Vec<_>>>()?;
    let mut h = 0x9e37_79b9_7f4a_7c15_u64;
    for k in key {
        h = (h ^ k).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(h);
    for i in 0..n {
        let had: Vec<bool> = masks.iter().map(|m| m[i] == 1.0).collect();
        let mut keep: Vec<bool> = had.iter().map(|&h| h && !rng.random_bool(p)).collect();
        if had.iter().any(|h| *h) && !keep.iter().any(|k| *k) {
            let present: Vec<usize> = (0..had.len()).filter(|&m| had[m]).collect();
            keep[present[rng.random_range(0..present.len())]] = true;
        }
        for (m, k) in masks.iter_mut().zip(&keep) {
            m[i] = if *k { 1.0 } else { 0.0 };
        }
    }
    let mut out = Presence::default();
    for (m, v) in ORDER.into_iter().zip(masks) {
        if modalities.contains(&m) && v.contains(&0.0) {
            *out.get_mut(m) = Some(Tensor::from_vec(v, n, device)?);
        }
    }
    Ok(out)
}

/// Mean cross-entropy over the samples whose `present` value is 1 (every sample when `None`); 0 when none.
fn masked_cross_entropy(logits: &Tensor, y: &Tensor, present: Option<&Tensor>) -> Result<Tensor> {
    let Some(p) = present else { return Ok(candle_nn::loss::cross_entropy(logits, y)?) };
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?;
    let p = p.to_dtype(picked.dtype())?;
    let n = p.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((picked * p)?.sum_all()?.neg()? / f64::from(n))?)
}

/// The mean softmax probability of the true class over the samples whose `present` value is 1.
fn true_class_confidence(logits: &Tensor, y: &Tensor, present: Option<&Tensor>) -> Result<f64> {
    let p: Vec<f32> = candle_nn::ops::softmax(&logits.detach(), D::Minus1)?
        .gather(&y.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .to_vec1()?;
    let mask: Vec<f32> = match present {
        Some(m) => m.to_dtype(candle_core::DType::F32)?.to_vec1()?,
        None => vec![1.0; p.len()],
    };
    let n: f32 = mask.iter().sum();
    Ok(if n > 0.0 { f64::from(p.iter().zip(&mask).map(|(a, b)| a * b).sum::<f32>() / n) } else { 0.0 })
}

/// One optimisation step on the samples `idx`: returns the loss, the logits and the labels. With a
/// non-finite loss the weights are left unchanged. `dropout_key` seeds the modality dropout's draw.
fn train_step(
    model: &EmotionModel,
    set: &TensorSet,
    idx: &[u32],
    (names, vars): (&[String], &[candle_core::Var]),
    cfg: &TrainConfig,
    opt: &mut AdamW,
    dropout_key: [u64; 3],
) -> Result<(f64, Tensor, Tensor)> {
    let (grad_clip, modulation) = (cfg.grad_clip, cfg.gradient_modulation);
    let batch = set.batch(idx)?;
    let y = batch.labels.clone();
    let mut presence = batch.presence.clone();
    if cfg.modality_dropout > 0.0 && model.fusion().is_some() {
        let (p, key, dev) = (cfg.modality_dropout, dropout_key, batch.eeg.device());
        presence = drop_modalities(&presence, &model.modalities(), idx.len(), p, key, dev)?;
    }
    let out = model.forward_inputs(batch.inputs(), &presence, true)?;
    let logits = out.logits;
    let mut loss = candle_nn::loss::cross_entropy(&logits, &y)?;
    if let Some(aux) = out.aux_loss {
        loss = (loss + aux)?;
    }
    let weight = model.config().unimodal_loss;
    let mut confidence = Vec::new();
    for (m, head_logits, present) in &out.unimodal_logits {
        loss = (loss + (masked_cross_entropy(head_logits, &y, present.as_ref())? * weight)?)?;
        if modulation > 0.0 {
            confidence.push((*m, true_class_confidence(head_logits, &y, present.as_ref())?));
        }
    }
    let value = scalar(&loss)?;
    if !value.is_finite() {
        return Ok((value, logits, y));
    }
    let mut grads = loss.backward()?;
    if let [(m0, s0), (m1, s1)] = confidence[..]
        && s0 > 0.0
        && s1 > 0.0
    {
        // The more confident modality's encoder slows down.
        let (m, ratio) = if s0 > s1 { (m0, s0 / s1) } else { (m1, s1 / s0) };
        let k = 1.0 - (modulation * (ratio - 1.0)).tanh();
        let prefix = format!("{m}_encoder.");
        for (name, v) in names.iter().zip(vars) {
            if name.starts_with(&prefix)
                && let Some(g) = grads.remove(v.as_tensor())
            {
                grads.insert(v.as_tensor(), (g * k)?);
            }
        }
    }
    if let Some(max) = grad_clip {
        let mut sq = 0.0;
        for v in vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                sq += scalar(&g.sqr()?.sum_all()?)?;
            }
        }
        let norm = sq.sqrt();
        if norm > max {
            for v in vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    grads.insert(v.as_tensor(), (g * (max / norm))?);
                }
            }
        }
    }
    opt.step(&grads)?;
    Ok((value, logits, y))
}

/// Trains `model` on `train_set`; with a validation set, keeps the weights of the epoch with the lowest
/// validation loss and stops early after `patience` epochs without improvement. `on_epoch` sees each epoch.
/// With `state`, progress is saved there after every epoch and a run that finds a state file continues
/// from it, reaching the numbers of a run that was never interrupted.
///
/// # Errors
/// [`Error::NonFinite`] naming the epoch and step when the loss stops being finite (the model keeps the
/// best weights seen so far); [`Error::Input`] for a state file made with other settings; candle errors.
pub fn train(
    model: &EmotionModel,
    train_set: &TensorSet,
    val_set: Option<&TensorSet>,
    cfg: &TrainConfig,
    seed: u64,
    state: Option<&Path>,
    on_epoch: &mut dyn FnMut(&EpochLog),
) -> Result<Trained> {
    let start = Instant::now();
    if !(0.0..1.0).contains(&cfg.modality_dropout) {
        return Err(Error::Input(format!(
            "modality dropout must be in [0, 1), got {}",
            cfg.modality_dropout
        )));
    }
    let params: Vec<(String, candle_core::Var)> = model
        .parameters()
        .into_iter()
        .filter(|(n, _)| cfg.train_scales || !(n.ends_with("eeg_scale") || n.ends_with("audio_scale")))
        .collect();
    let vars: Vec<candle_core::Var> = params.iter().map(|(_, v)| v.clone()).collect();
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    let mut opt = AdamW::new(params, cfg.lr, (cfg.beta1, cfg.beta2), 1e-8, cfg.weight_decay)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = train_set.len();
    let batch = cfg.batch_size.max(1);
    let steps_per_epoch = n.div_ceil(batch);
    let total_steps = (steps_per_epoch * cfg.epochs).max(1);
    let mut history = Vec::new();
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut step = 0usize;
    let mut first_epoch = 1;
    // The state belongs to these settings and these training windows (a checksum of their data, so a state
    // left in a run folder by a run on other data is refused rather than continued).
    let settings = format!(
        "{}|seed={seed}|n={n}|data={}",
        serde_json::to_string(cfg).unwrap_or_default(),
        train_set.checksum()?
    );
    if let Some((saved, tensors)) = state.map(|p| load_state(p, model)).transpose()?.flatten() {
        if saved.settings != settings {
            return Err(Error::Input(format!(
                "{}: the training state was made with other settings; remove it to start afresh",
                state.map_or_else(String::new, |p| p.display().to_string())
            )));
        }
        for (name, var) in model.named_tensors() {
            let t = tensors
                .get(&format!("param.{name}"))
                .ok_or_else(|| Error::Input(format!("training state lacks {name}")))?;
            var.set(t)?;
        }
        let adam: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("adam.").map(|k| (k.to_owned(), v.clone())))
            .collect();
        opt.restore(&adam, saved.adam_steps)?;
        rng = ChaCha8Rng::from_seed(saved.rng_seed);
        rng.set_word_pos(saved.rng_pos.parse().unwrap_or(0));
        for (d, (seed, pos)) in model.dropouts().into_iter().zip(&saved.dropout) {
            d.set_rng_state((*seed, pos.parse().unwrap_or(0)));
        }
        if let Some((loss, epoch)) = saved.best {
            let weights = model
                .named_tensors()
                .iter()
                .map(|(name, _)| {
                    tensors
                        .get(&format!("best.{name}"))
                        .cloned()
                        .ok_or_else(|| Error::Input(format!("training state lacks best.{name}")))
                })
                .collect::<Result<Vec<_>>>()?;
            best = Some((loss, epoch, weights));
        }
        history = saved.history;
        step = saved.step;
        first_epoch = if saved.finished { cfg.epochs + 1 } else { saved.epoch + 1 };
    }
    for epoch in first_epoch..=cfg.epochs {
        // A fresh permutation per epoch drawn from the saved generator: resuming needs nothing else.
        let mut order: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for (b, idx) in order.chunks(batch).enumerate() {
            // A batch of one gives BatchNorm a single sample per channel position only; skip a trailing
            // singleton so batch statistics stay defined.
            if idx.len() < 2 && n > 1 {
                continue;
            }
            opt.lr = cfg.schedule.lr(cfg.lr, step, total_steps, epoch);
            let (value, logits, y) = on_pool(|| {
                train_step(
                    model,
                    train_set,
                    idx,
                    (&names, &vars),
                    cfg,
                    &mut opt,
                    [seed, epoch as u64, b as u64],
                )
            })?;
            if !value.is_finite() {
                if let Some((_, _, weights)) = &best {
                    restore(model, weights)?;
                }
                return Err(Error::NonFinite { epoch, step: b + 1, loss: value });
            }
            step += 1;
            loss_sum += value * idx.len() as f64;
            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let truth = y.to_vec1::<u32>()?;
            correct += pred.iter().zip(&truth).filter(|(p, t)| p == t).count();
        }
        let mut log = EpochLog {
            epoch,
            train_loss: loss_sum / n.max(1) as f64,
            train_accuracy: correct as f64 / n.max(1) as f64,
            val_loss: None,
            val_accuracy: None,
        };
        if let Some(val) = val_set {
            if cfg.recompute_batch_norm {
                recompute_batch_norm(model, train_set, batch, seed)?;
            }
            let m = evaluate(model, val, batch.max(64))?.0;
            log.val_loss = m.loss;
            log.val_accuracy = Some(m.accuracy);
            let vl = m.loss.unwrap_or(f64::INFINITY);
            if best.as_ref().is_none_or(|(b, _, _)| vl < *b) {
                best = Some((vl, epoch, snapshot(model)?));
            }
        }
        tracing::info!(
            epoch,
            train_loss = log.train_loss,
            train_accuracy = log.train_accuracy,
            val_loss = ?log.val_loss,
            "epoch done"
        );
        on_epoch(&log);
        history.push(log);
        let stop =
            matches!((cfg.patience, &best), (Some(p), Some((_, best_epoch, _))) if epoch - best_epoch >= p);
        if let Some(path) = state {
            let saved = TrainState {
                settings: settings.clone(),
                epoch,
                finished: stop || epoch == cfg.epochs,
                adam_steps: opt.steps(),
                step,
                rng_seed: rng.get_seed(),
                rng_pos: rng.get_word_pos().to_string(),
                dropout: model
                    .dropouts()
                    .iter()
                    .map(|d| d.rng_state())
                    .map(|(s, p)| (s, p.to_string()))
                    .collect(),
                history: history.clone(),
                best: best.as_ref().map(|(l, e, _)| (*l, *e)),
            };
            save_state(path, model, &opt, best.as_ref(), &saved)?;
        }
        if stop {
            break;
        }
    }
    let best_epoch = match &best {
        // The snapshot holds the statistics recomputed before its validation pass.
        Some((_, e, weights)) => {
            restore(model, weights)?;
            *e
        }
        None => {
            if cfg.recompute_batch_norm {
                recompute_batch_norm(model, train_set, batch, seed)?;
            }
            history.len()
        }
    };
    Ok(Trained { history, best_epoch, seconds: start.elapsed().as_secs_f64() })
}

/// Separates the batches of [`recompute_batch_norm`] from the training order.
const BATCH_NORM_SALT: u64 = 0x424e_5354_4154_5301;

/// Sets every BatchNorm layer's running statistics to the mean of its batch statistics over `set` under
/// the model's current weights ("precise BatchNorm", Wu & Johnson 2021): `set` in batches of `batch`
/// (seeded order, a trailing single window left out, as in training), each through a training-mode forward
/// pass that changes nothing else (no gradient step; the dropout generators are put back). The running
/// averages that training leaves mix statistics of earlier weights (momentum 0.1: about the last ten
/// steps); when the weights still move, evaluation normalises with statistics the layers no longer
/// produce. A layer that no batch reached (a modality absent from every window) keeps its statistics.
/// Assumes every BatchNorm layer updates with momentum [`encoders::BN_MOMENTUM`].
///
/// # Errors
/// candle errors.
pub fn recompute_batch_norm(model: &EmotionModel, set: &TensorSet, batch: usize, seed: u64) -> Result<()> {
    let named = model.named_tensors();
    let layers: Vec<(candle_core::Var, candle_core::Var)> = named
        .iter()
        .filter_map(|(name, mean)| {
            let stem = name.strip_suffix("running_mean")?;
            let var = named.iter().find(|(n, _)| n.strip_suffix("running_var") == Some(stem))?;
            Some((mean.clone(), var.1.clone()))
        })
        .collect();
    if layers.is_empty() || set.len() < 2 {
        return Ok(());
    }
    let dropout: Vec<_> = model.dropouts().iter().map(|d| d.rng_state()).collect();
    let before: Vec<(Tensor, Tensor)> = layers
        .iter()
        .map(|(m, v)| Ok((m.as_tensor().copy()?, v.as_tensor().copy()?)))
        .collect::<Result<_>>()?;
    let mut order: Vec<u32> = (0..u32::try_from(set.len()).unwrap_or(u32::MAX)).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ BATCH_NORM_SALT));
    let result = batch_norm_means(model, set, &order, batch, &layers);
    // On an error every layer gets back the statistics it had.
    let means = result.as_ref().map_or_else(|_| vec![None; layers.len()], Clone::clone);
    for (((m, v), (m0, v0)), mean) in layers.iter().zip(&before).zip(means) {
        let (mean, var) = mean.as_ref().map_or((m0, v0), |(a, b)| (a, b));
        m.set(mean)?;
        v.set(var)?;
    }
    for (d, state) in model.dropouts().into_iter().zip(dropout) {
        d.set_rng_state(state);
    }
    result.map(drop)
}

/// Each layer's mean batch statistics over the batches of `order` (`None` for a layer no batch reached).
fn batch_norm_means(
    model: &EmotionModel,
    set: &TensorSet,
    order: &[u32],
    batch: usize,
    layers: &[(candle_core::Var, candle_core::Var)],
) -> Result<Vec<Option<(Tensor, Tensor)>>> {
    let mut sums: Vec<Option<(Tensor, Tensor)>> = vec![None; layers.len()];
    let mut counts = vec![0usize; layers.len()];
    for idx in order.chunks(batch.max(2)).filter(|idx| idx.len() >= 2) {
        // From zero, one update leaves `momentum · batch statistic`; a layer its batch did not reach stays 0.
        for (m, v) in layers {
            m.set(&m.as_tensor().zeros_like()?)?;
            v.set(&v.as_tensor().zeros_like()?)?;
        }
        let b = set.batch(idx)?;
        on_pool(|| model.forward_inputs(b.inputs(), &b.presence, true).map(drop))?;
        for (i, (m, v)) in layers.iter().enumerate() {
            let (m, v) = (m.as_tensor().copy()?, v.as_tensor().copy()?);
            let touched = v.abs()?.max_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? > 0.0
                || m.abs()?.max_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? > 0.0;
            if touched {
                counts[i] += 1;
                sums[i] = Some(match sums[i].take() {
                    Some((sm, sv)) => ((sm + m)?, (sv + v)?),
                    None => (m, v),
                });
            }
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(sum, count)| {
            sum.map(|(sm, sv)| {
                let k = encoders::BN_MOMENTUM * count as f64;
                Ok(((sm / k)?, (sv / k)?))
            })
            .transpose()
        })
        .collect()
}

fn snapshot(model: &EmotionModel) -> Result<Vec<Tensor>> {
    model.named_tensors().iter().map(|(_, v)| Ok(v.as_tensor().copy()?)).collect()
}

fn restore(model: &EmotionModel, weights: &[Tensor]) -> Result<()> {
    for ((_, v), w) in model.named_tensors().iter().zip(weights) {
        v.set(w)?;
    }
    Ok(())
}

/// Evaluates in eval mode: metrics (with the mean cross-entropy) and class probabilities per window.
///
/// # Errors
/// candle errors.
pub fn evaluate(model: &EmotionModel, set: &TensorSet, batch: usize) -> Result<(Metrics, Vec<Vec<f32>>)> {
    let n = u32::try_from(set.len()).unwrap_or(u32::MAX);
    let ids: Vec<u32> = (0..n).collect();
    let (mut pred, mut probs, mut loss_sum) = (Vec::new(), Vec::new(), 0.0);
    for idx in ids.chunks(batch.max(1)) {
        let batch = set.batch(idx)?;
        let y = &batch.labels;
        let logits = model.forward_inputs(batch.inputs(), &batch.presence, false)?.logits;
        loss_sum += scalar(&candle_nn::loss::cross_entropy(&logits, y)?)? * idx.len() as f64;
        pred.extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?.into_iter().map(|p| p as usize));
        probs.extend(candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?);
    }
    let mut m = Metrics::from_predictions(&set.label_vec, &pred, core_types::Emotion::COUNT);
    m.loss = Some(loss_sum / set.len().max(1) as f64);
    Ok((m, probs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Training steps run on a pool thread, whether or not the caller is one.
    #[test]
    fn steps_run_on_a_pool_thread() {
        assert!(rayon::current_thread_index().is_none());
        assert!(on_pool(rayon::current_thread_index).is_some());
        let inner = rayon::scope(|_| (rayon::current_thread_index(), on_pool(rayon::current_thread_index)));
        assert_eq!(inner.0, inner.1, "already on the pool: runs in place");
    }

    /// Modality dropout: about `p` of the present modalities dropped, never every modality of a sample,
    /// absent ones stay absent, and the same key draws the same masks.
    #[test]
    fn modality_dropout_draws_repeat_and_keep_a_modality() {
        let dev = candle_core::Device::Cpu;
        let n = 4000;
        let audio: Vec<f32> = (0..n).map(|i| if i % 4 == 0 { 0.0 } else { 1.0 }).collect();
        let presence =
            Presence { audio: Some(Tensor::from_vec(audio.clone(), n, &dev).unwrap()), ..Default::default() };
        let two = [core_types::Modality::Eeg, core_types::Modality::Audio];
        let draw = |key| drop_modalities(&presence, &two, n, 0.3, key, &dev).unwrap();
        let vals = |p: &Presence| -> (Vec<f32>, Vec<f32>) {
            let v = |t: &Option<Tensor>| t.as_ref().map_or(vec![1.0; n], |t| t.to_vec1::<f32>().unwrap());
            (v(&p.eeg), v(&p.audio))
        };
        let (e, a) = vals(&draw([1, 2, 3]));
        assert_eq!((e.clone(), a.clone()), vals(&draw([1, 2, 3])));
        assert_ne!((e.clone(), a.clone()), vals(&draw([1, 2, 4])));
        for i in 0..n {
            assert!(e[i] + a[i] >= 1.0, "sample {i} kept no modality");
            assert!(a[i] <= audio[i], "sample {i}: an absent modality came back");
        }
        // Where both were present, each is dropped with 0.3 minus the draws where both fell (0.09 of the
        // samples, half of which keep each modality): 0.3 − 0.045 = 0.255.
        let both: Vec<usize> = (0..n).filter(|&i| audio[i] == 1.0).collect();
        let dropped = both.iter().filter(|&&i| e[i] == 0.0).count() as f64 / both.len() as f64;
        assert!((dropped - 0.255).abs() < 0.03, "EEG dropped in {dropped}");
        // Where EEG alone was present, it always stays.
        assert!((0..n).filter(|&i| audio[i] == 0.0).all(|i| e[i] == 1.0));
        assert!(draw([1, 2, 3]).video.is_none(), "a model without video gets no video mask");
        // Three modalities: never all three dropped; the two-modality draws are not disturbed by
        // modalities the model does not read.
        let three = [core_types::Modality::Eeg, core_types::Modality::Audio, core_types::Modality::Video];
        let p3 = drop_modalities(&presence, &three, n, 0.5, [9, 9, 9], &dev).unwrap();
        let v = |t: &Option<Tensor>| t.as_ref().map_or(vec![1.0; n], |t| t.to_vec1::<f32>().unwrap());
        let (e3, a3, v3) = (v(&p3.eeg), v(&p3.audio), v(&p3.video));
        assert!((0..n).all(|i| e3[i] + a3[i] + v3[i] >= 1.0 && a3[i] <= audio[i]));
        assert!(v3.contains(&0.0) && v3.contains(&1.0));
    }

    /// `n` windows of seeded noise (different `seed`, different windows).
    fn tiny_set(
        n: usize,
        audio_present: Option<Vec<f32>>,
        seed: u64,
        dev: &candle_core::Device,
    ) -> TensorSet {
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
        TensorSet {
            eeg: encoders::seeded_randn(0.0, 1.0, &[n, 4, 2000], 2 * seed, dev).unwrap(),
            mfcc: Some(
                (encoders::seeded_randn(0.0, 1.0, &[n, 13, 1000], 2 * seed + 1, dev).unwrap() + 0.5).unwrap(),
            ),
            audio_present: audio_present.map(|v| Tensor::from_vec(v, n, dev).unwrap()),
            eeg_present: None,
            video: None,
            video_present: None,
            labels: Tensor::from_vec(labels.clone(), n, dev).unwrap(),
            label_vec: labels.iter().map(|&l| l as usize).collect(),
        }
    }

    fn stats(model: &EmotionModel) -> Vec<(String, Vec<f32>)> {
        model
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| n.contains("running"))
            .map(|(n, v)| (n, v.as_tensor().to_vec1::<f32>().unwrap()))
            .collect()
    }

    /// Recomputed BatchNorm statistics: with the whole set as one batch they are that batch's, so the
    /// encoders' eval-mode latents equal their training-mode ones; over several batches each layer's
    /// statistics are the mean of what each batch alone gives; the trained parameters and the dropout
    /// generators are untouched, the same call repeats exactly, a failed call changes nothing, and a layer
    /// no window reaches (audio absent from every window) keeps its statistics.
    #[test]
    fn recomputed_batch_norm_statistics() {
        let dev = candle_core::Device::Cpu;
        let cfg = crate::model::ModelConfig::fused(4, core_types::FusionMode::Concat);
        let model = EmotionModel::new(&cfg, &dev, 7).unwrap();
        let set = tiny_set(12, None, 1, &dev);
        let params: Vec<Vec<f32>> = model
            .parameters()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();

        recompute_batch_norm(&model, &set, 12, 1).unwrap();
        let all: Vec<u32> = (0..12).collect();
        let b = set.batch(&all).unwrap();
        let eval = model.forward_inputs(b.inputs(), &b.presence, false).unwrap();
        let after_one = stats(&model);
        let train = model.forward_inputs(b.inputs(), &b.presence, true).unwrap();
        for (e, t) in [(&eval.eeg_latent, &train.eeg_latent), (&eval.audio_latent, &train.audio_latent)] {
            let (e, t) = (e.as_ref().unwrap(), t.as_ref().unwrap());
            let d = (e - t).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            // Only the unbiased running variance (n/(n − 1) over thousands of positions) differs.
            assert!(d <= 2e-3 * scale, "eval-mode latent off by {d} (scale {scale})");
        }

        // Batches of 4: the mean of the three batches' own statistics.
        let dropout: Vec<_> = model.dropouts().iter().map(|d| d.rng_state()).collect();
        recompute_batch_norm(&model, &set, 4, 1).unwrap();
        let mixed = stats(&model);
        let mut order: Vec<u32> = (0..12).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(1 ^ BATCH_NORM_SALT));
        let mut want: Vec<Vec<f64>> = mixed.iter().map(|(_, v)| vec![0.0; v.len()]).collect();
        for idx in order.chunks(4) {
            let part = tiny_subset(&set, idx);
            recompute_batch_norm(&model, &part, 4, 1).unwrap();
            for (w, (_, v)) in want.iter_mut().zip(stats(&model)) {
                for (a, b) in w.iter_mut().zip(v) {
                    *a += f64::from(b) / 3.0;
                }
            }
        }
        for ((name, got), w) in mixed.iter().zip(&want) {
            for (g, w) in got.iter().zip(w) {
                assert!((f64::from(*g) - w).abs() <= 1e-5 * w.abs().max(1.0), "{name}: {g} vs {w}");
            }
        }
        assert_ne!(after_one, mixed, "other batches, other statistics");
        recompute_batch_norm(&model, &set, 4, 1).unwrap();
        assert_eq!(stats(&model), mixed, "the same call repeats exactly");
        let params_after: Vec<Vec<f32>> = model
            .parameters()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        assert_eq!(params, params_after, "no parameter moves");
        let dropout_after: Vec<_> = model.dropouts().iter().map(|d| d.rng_state()).collect();
        assert_eq!(dropout, dropout_after, "the dropout generators are put back");

        // A forward pass that fails (EEG with the wrong channel count): an error, and every layer keeps
        // the statistics it had.
        let before = stats(&model);
        let mut bad = tiny_set(12, None, 2, &dev);
        bad.eeg = encoders::seeded_randn(0.0, 1.0, &[12, 3, 2000], 99, &dev).unwrap();
        assert!(recompute_batch_norm(&model, &bad, 4, 1).is_err());
        assert_eq!(stats(&model), before, "a failed recomputation changes nothing");

        // No window with audio: the audio encoder's statistics stay; the EEG encoder's are recomputed.
        let before = stats(&model);
        let silent = tiny_set(12, Some(vec![0.0; 12]), 3, &dev);
        recompute_batch_norm(&model, &silent, 4, 1).unwrap();
        for ((name, old), (_, new)) in before.iter().zip(stats(&model)) {
            if name.starts_with("audio_encoder") {
                assert_eq!(old, &new, "{name} changed without audio");
            } else if name.starts_with("eeg_encoder") {
                assert_ne!(old, &new, "{name} not recomputed");
            }
        }
    }

    fn tiny_subset(set: &TensorSet, idx: &[u32]) -> TensorSet {
        let b = set.batch(idx).unwrap();
        TensorSet {
            eeg: b.eeg,
            mfcc: b.mfcc,
            audio_present: None,
            eeg_present: None,
            video: None,
            video_present: None,
            label_vec: b.labels.to_vec1::<u32>().unwrap().iter().map(|&l| l as usize).collect(),
            labels: b.labels,
        }
    }

    #[test]
    fn schedules() {
        assert_eq!(Schedule::Constant.lr(1.0, 50, 100, 3), 1.0);
        assert!((Schedule::Cosine.lr(1.0, 50, 100, 3) - 0.5).abs() < 1e-12);
        assert_eq!(Schedule::Cosine.lr(1.0, 0, 100, 1), 1.0);
        let step: Schedule = "step:2:0.5".parse().unwrap();
        assert_eq!([1, 2, 3, 4, 5].map(|e| step.lr(1.0, 0, 1, e)), [1.0, 1.0, 0.5, 0.5, 0.25]);
        assert!("step:x:1".parse::<Schedule>().is_err());
    }
}
