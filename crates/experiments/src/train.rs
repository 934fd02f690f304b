//! Training (AdamW, seeded shuffling, optional cosine schedule and gradient clipping, early stopping on
//! the validation set with the best weights kept) and evaluation.

use std::time::Instant;

use candle_core::{D, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::TensorSet;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::EmotionModel;

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
    /// Cosine decay of the learning rate to 0 over all steps.
    pub cosine: bool,
    /// Stop after this many epochs without a better validation loss (only with a validation set).
    pub patience: Option<usize>,
    /// Train the fusion layer's `eeg_scale` / `audio_scale` (off: fixed at 1).
    pub train_scales: bool,
}

impl Default for TrainConfig {
    /// 5 epochs of batch 8, AdamW lr 3e-3, weight decay 1e-2, β (0.9, 0.999), clip 5, patience 10.
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 8,
            lr: 3e-3,
            weight_decay: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            grad_clip: Some(5.0),
            cosine: false,
            patience: Some(10),
            train_scales: true,
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

/// Trains `model` on `train_set`; with a validation set, keeps the weights of the epoch with the lowest
/// validation loss and stops early after `patience` epochs without improvement. `on_epoch` sees each epoch.
///
/// # Errors
/// [`Error::NonFinite`] naming the epoch and step when the loss stops being finite (the model keeps the
/// best weights seen so far); candle errors.
pub fn train(
    model: &EmotionModel,
    train_set: &TensorSet,
    val_set: Option<&TensorSet>,
    cfg: &TrainConfig,
    seed: u64,
    on_epoch: &mut dyn FnMut(&EpochLog),
) -> Result<Trained> {
    let start = Instant::now();
    let params: Vec<(String, candle_core::Var)> = model
        .parameters()
        .into_iter()
        .filter(|(n, _)| cfg.train_scales || !(n.ends_with("eeg_scale") || n.ends_with("audio_scale")))
        .collect();
    let vars: Vec<candle_core::Var> = params.iter().map(|(_, v)| v.clone()).collect();
    let adam = ParamsAdamW {
        lr: cfg.lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: 1e-8,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = AdamW::new(vars.clone(), adam)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = train_set.len();
    let batch = cfg.batch_size.max(1);
    let steps_per_epoch = n.div_ceil(batch);
    let total_steps = (steps_per_epoch * cfg.epochs).max(1);
    let mut order: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
    let mut history = Vec::new();
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    let mut step = 0usize;
    for epoch in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut correct) = (0.0, 0usize);
        for (b, idx) in order.chunks(batch).enumerate() {
            // A batch of one gives BatchNorm a single sample per channel position only; skip a trailing
            // singleton so batch statistics stay defined.
            if idx.len() < 2 && n > 1 {
                continue;
            }
            if cfg.cosine {
                opt.set_learning_rate(
                    cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total_steps as f64).cos()),
                );
            }
            let (eeg, mfcc, y) = train_set.batch(idx)?;
            let logits = model.forward(&eeg, mfcc.as_ref(), true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let value = scalar(&loss)?;
            if !value.is_finite() {
                if let Some((_, _, weights)) = &best {
                    restore(model, weights)?;
                }
                return Err(Error::NonFinite { epoch, step: b + 1, loss: value });
            }
            let mut grads = loss.backward()?;
            if let Some(max) = cfg.grad_clip {
                let mut sq = 0.0;
                for v in &vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        sq += scalar(&g.sqr()?.sum_all()?)?;
                    }
                }
                let norm = sq.sqrt();
                if norm > max {
                    for v in &vars {
                        if let Some(g) = grads.remove(v.as_tensor()) {
                            grads.insert(v.as_tensor(), (g * (max / norm))?);
                        }
                    }
                }
            }
            opt.step(&grads)?;
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
            let m = evaluate(model, val, batch.max(64))?.0;
            log.val_loss = m.loss;
            log.val_accuracy = Some(m.accuracy);
            let vl = m.loss.unwrap_or(f64::INFINITY);
            if best.as_ref().is_none_or(|(b, _, _)| vl < *b) {
                best = Some((vl, epoch, snapshot(model)?));
            }
        }
        on_epoch(&log);
        history.push(log);
        if let (Some(p), Some((_, best_epoch, _))) = (cfg.patience, &best)
            && epoch - best_epoch >= p
        {
            break;
        }
    }
    let best_epoch = match &best {
        Some((_, e, weights)) => {
            restore(model, weights)?;
            *e
        }
        None => history.len(),
    };
    Ok(Trained { history, best_epoch, seconds: start.elapsed().as_secs_f64() })
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
        let (eeg, mfcc, y) = set.batch(idx)?;
        let logits = model.forward(&eeg, mfcc.as_ref(), false)?;
        loss_sum += scalar(&candle_nn::loss::cross_entropy(&logits, &y)?)? * idx.len() as f64;
        pred.extend(logits.argmax(D::Minus1)?.to_vec1::<u32>()?.into_iter().map(|p| p as usize));
        probs.extend(candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?);
    }
    let mut m = Metrics::from_predictions(&set.label_vec, &pred, core_types::Emotion::COUNT);
    m.loss = Some(loss_sum / set.len().max(1) as f64);
    Ok((m, probs))
}
