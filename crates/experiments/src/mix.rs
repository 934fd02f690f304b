//! Late fusion that cannot fall far below its best single output: a fused model with unimodal heads
//! predicts with a mixture of its fused classifier's and its heads' class probabilities, and of the
//! separately trained single-modality models' ([`OutputMix`]), the weights chosen on windows the models
//! did not train on.
//!
//! Why held-out windows: a modality can fit the training windows perfectly and still say nothing about
//! new trials (a voice whose pitch is unique to each trial lets a model memorise every training trial).
//! On the training windows such a modality looks as good as an informative one; only trials the model
//! has not seen tell them apart. [`OutputProbs::choose`] picks, on such windows, the weights of a grid
//! over the simplex (steps of 0.1) with the lowest mean negative log-likelihood of the mixture;
//! [`OutputProbs::choose_even`] (the default of a run) the most even weights among those that the
//! held-out trials cannot tell from that best fit.

use candle_core::D;
use core_types::{Emotion, Modality};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::TensorSet;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::{EmotionModel, MixExpert, ModelConfig, OutputMix};

/// Grid steps per unit weight when choosing a mix (0.1 apart).
pub const MIX_STEPS: usize = 10;

/// The weights of a grid point given as [`MIX_STEPS`] steps per output.
fn step_weights(steps: &[usize]) -> Vec<f64> {
    steps.iter().map(|&s| s as f64 / MIX_STEPS as f64).collect()
}

/// Temperatures tried when calibrating an output ([`OutputProbs::choose`]): `2^(k/4)` for
/// `k = −TEMPERATURE_STEPS..=TEMPERATURE_STEPS`, i.e. 0.125 to 8 (ties go to the one nearest 1).
pub const TEMPERATURE_STEPS: i32 = 12;

/// How many standard errors of the paired per-trial difference a mix may fit worse than the best one
/// and still be a candidate of [`OutputProbs::choose_even`] (the "one standard error" rule).
pub const EVEN_STANDARD_ERRORS: f64 = 1.0;

/// Rounds of [`OutputProbs::refine`] at most.
const REFINE_ROUNDS: usize = 3;

/// The temperatures of [`TEMPERATURE_STEPS`]'s grid, nearest 1 first.
fn temperature_grid() -> impl Iterator<Item = f64> {
    let mut steps: Vec<i32> = (-TEMPERATURE_STEPS..=TEMPERATURE_STEPS).collect();
    steps.sort_by_key(|k| k.abs());
    steps.into_iter().map(|k| 2f64.powf(f64::from(k) / 4.0))
}

/// `p` with its logits divided by `t`: `softmax(ln p / t)` (`p` itself for `t` = 1).
fn temper(p: &[f64; Emotion::COUNT], t: f64) -> [f64; Emotion::COUNT] {
    #[allow(clippy::float_cmp)] // 1 exactly: untouched
    if t == 1.0 {
        return *p;
    }
    let logits = p.map(|v| v.max(f64::MIN_POSITIVE).ln() / t);
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e = logits.map(|v| (v - max).exp());
    let sum: f64 = e.iter().sum();
    e.map(|v| v / sum)
}

/// How [`OutputProbs::choose_bagged`] resamples the held-out windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bagging {
    /// The trial of each window (any id; a trial's windows are drawn together).
    pub groups: Vec<u64>,
    /// Bootstrap resamples (0: no bagging).
    pub resamples: usize,
    /// Seed of the resampling.
    pub seed: u64,
}

/// Which output of a fused model's mixture.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// The fused classifier.
    Fused,
    /// A modality's unimodal head.
    Head(Modality),
    /// A separately trained single-modality model with its configuration.
    Expert(Box<ModelConfig>),
}

/// One output's class probabilities over a set of windows, and where it is present.
#[derive(Debug, Clone)]
struct Output {
    source: Source,
    probs: Vec<[f64; Emotion::COUNT]>,
    present: Vec<bool>,
}

impl Output {
    /// `fused`, the head's modality (`eeg`), or the expert's row name (`eeg_only`).
    fn name(&self) -> String {
        match &self.source {
            Source::Fused => "fused".to_owned(),
            Source::Head(m) => m.to_string(),
            Source::Expert(cfg) => cfg.name().to_owned(),
        }
    }

    /// The temperature of [`TEMPERATURE_STEPS`]'s grid with the lowest mean negative log-likelihood of
    /// this output alone on the windows where it is present (1 where it is never present).
    fn fitted_temperature(&self, labels: &[usize]) -> f64 {
        let mut best = (f64::INFINITY, 1.0);
        for t in temperature_grid() {
            let nll: f64 = self
                .probs
                .iter()
                .zip(labels)
                .zip(&self.present)
                .filter(|(_, present)| **present)
                .map(|((p, &c), _)| -temper(p, t)[c].max(1e-30).ln())
                .sum();
            if nll < best.0 - 1e-12 {
                best = (nll, t);
            }
        }
        best.1
    }
}

/// A presence mask `(B)` (or every sample for `None`) as booleans.
fn present(mask: Option<&candle_core::Tensor>, n: usize) -> Result<Vec<bool>> {
    Ok(match mask {
        Some(p) => p.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?.iter().map(|v| *v == 1.0).collect(),
        None => vec![true; n],
    })
}

/// The class probabilities of a fused model's outputs (the fused classifier and each unimodal head) on a
/// set of windows, in evaluation mode, with the true labels.
#[derive(Debug, Clone)]
pub struct OutputProbs {
    labels: Vec<usize>,
    outputs: Vec<Output>,
}

fn probs(logits: &candle_core::Tensor) -> Result<Vec<[f64; Emotion::COUNT]>> {
    let p: Vec<Vec<f32>> = candle_nn::ops::softmax(logits, D::Minus1)?.to_vec2()?;
    Ok(p.into_iter()
        .map(|row| {
            let mut out = [0.0; Emotion::COUNT];
            for (o, v) in out.iter_mut().zip(row) {
                *o = f64::from(v);
            }
            out
        })
        .collect())
}

impl OutputProbs {
    /// Runs `model` (fused, with unimodal heads) over `set` in evaluation mode.
    ///
    /// # Errors
    /// [`Error::Input`] for a model without fusion or without unimodal heads; candle errors.
    pub fn collect(model: &EmotionModel, set: &TensorSet) -> Result<Self> {
        if model.fusion().is_none() || model.config().unimodal_loss <= 0.0 {
            return Err(Error::Input(format!(
                "an output mix needs a fused model with unimodal heads (the {} model has none)",
                model.config().name()
            )));
        }
        let modalities = model.modalities();
        let experts = model.experts();
        let mut outputs: Vec<Output> = std::iter::once(Source::Fused)
            .chain(modalities.iter().copied().map(Source::Head))
            .chain(experts.iter().map(|(_, e)| Source::Expert(Box::new(e.config().clone()))))
            .map(|source| Output { source, probs: Vec::new(), present: Vec::new() })
            .collect();
        for batch in set.in_order(64) {
            let batch = batch?;
            let n = batch.len();
            let out = model.forward_inputs(batch.inputs(), &batch.presence, false)?;
            outputs[0].probs.extend(probs(&out.classifier_logits)?);
            outputs[0].present.extend(std::iter::repeat_n(true, n));
            for o in &mut outputs[1..] {
                let found = match &o.source {
                    Source::Head(m) => out.unimodal_logits.iter().find(|(x, _, _)| x == m),
                    Source::Expert(cfg) => out.expert_logits.iter().find(|(x, _, _)| *x == cfg.single),
                    Source::Fused => None,
                };
                match found {
                    Some((_, logits, mask)) => {
                        o.probs.extend(probs(logits)?);
                        o.present.extend(present(mask.as_ref(), n)?);
                    }
                    // No sample of the batch has the modality.
                    None => {
                        o.probs.extend(std::iter::repeat_n([0.0; Emotion::COUNT], n));
                        o.present.extend(std::iter::repeat_n(false, n));
                    }
                }
            }
        }
        Ok(Self { labels: set.label_vec.clone(), outputs })
    }

    /// Adds `single` (a separately trained single-modality model) as an expert output, run over `set`
    /// (the windows these outputs were collected on) in evaluation mode; it is present where its
    /// modality is.
    ///
    /// # Errors
    /// [`Error::Input`] for a fused model, or a set of other windows; candle errors.
    pub fn push_expert(&mut self, single: &EmotionModel, set: &TensorSet) -> Result<()> {
        let cfg = single.config();
        if cfg.fusion.is_some() || set.label_vec != self.labels {
            return Err(Error::Input(format!(
                "an expert of the output mix must be a single-modality model run on the same windows (got the {} model on {} windows)",
                cfg.name(),
                set.len()
            )));
        }
        let m = cfg.single;
        let mut out =
            Output { source: Source::Expert(Box::new(cfg.clone())), probs: Vec::new(), present: Vec::new() };
        for batch in set.in_order(64) {
            let batch = batch?;
            let n = batch.len();
            let mask = present(batch.presence.get(m), n)?;
            if batch.inputs().get(m).is_some() && mask.contains(&true) {
                let logits =
                    single.forward_inputs(batch.inputs(), &crate::model::Presence::default(), false)?.logits;
                out.probs.extend(probs(&logits)?);
                out.present.extend(mask);
            } else {
                out.probs.extend(std::iter::repeat_n([0.0; Emotion::COUNT], n));
                out.present.extend(std::iter::repeat_n(false, n));
            }
        }
        self.outputs.push(out);
        Ok(())
    }

    /// Adds the windows of `other` (the same model kind's outputs on other windows).
    pub fn append(&mut self, other: Self) {
        self.labels.extend(other.labels);
        for (o, x) in self.outputs.iter_mut().zip(other.outputs) {
            o.probs.extend(x.probs);
            o.present.extend(x.present);
        }
    }

    /// The mixture's probability of the true class of window `i` under `weights` (fused first, then
    /// the heads in the model's modality order, then the experts), as [`OutputMix`] defines it.
    fn true_class_prob(&self, weights: &[f64], i: usize) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for (o, &w) in self.outputs.iter().zip(weights) {
            if w > 0.0 && o.present[i] {
                num += w * o.probs[i][self.labels[i]];
                den += w;
            }
        }
        if den > 0.0 { num / den } else { self.outputs[0].probs[i][self.labels[i]] }
    }

    /// Mean negative log-likelihood of the mixture with `weights`.
    fn nll(&self, weights: &[f64]) -> f64 {
        let n = self.labels.len().max(1) as f64;
        (0..self.labels.len()).map(|i| -self.true_class_prob(weights, i).max(1e-30).ln()).sum::<f64>() / n
    }

    /// These outputs with output `j`'s probabilities tempered with `t` (from the untempered `raw`).
    fn with_temperature(&mut self, raw: &Self, j: usize, t: f64) {
        self.outputs[j].probs = raw.outputs[j].probs.iter().map(|p| temper(p, t)).collect();
    }

    /// The weights on the grid of [`MIX_STEPS`] steps with the lowest mean negative log-likelihood, with
    /// it; ties go to the weights met first, which start from the fused classifier alone and move weight
    /// to the heads in the model's modality order, then to the experts.
    fn best_weights(&self) -> (f64, Vec<f64>) {
        let k = self.outputs.len();
        let mut best: Option<(f64, Vec<usize>)> = None;
        let mut grid = vec![0usize; k];
        compositions(MIX_STEPS, &mut grid, 0, &mut |w| {
            let weights = step_weights(w);
            let nll = self.nll(&weights);
            if best.as_ref().is_none_or(|(b, _)| nll < b - 1e-12) {
                best = Some((nll, w.to_vec()));
            }
        });
        let (nll, w) = best.unwrap_or_else(|| (f64::INFINITY, vec![MIX_STEPS]));
        (nll, step_weights(&w))
    }

    /// From the temperatures `start`: the best weights, then, in turns (at most [`REFINE_ROUNDS`]), the
    /// temperature of each weighted output that lowers the mixture's negative log-likelihood most with
    /// the others fixed, and the best weights again. Returns the negative log-likelihood, the
    /// temperatures and the weights.
    fn refine(&self, start: Vec<f64>) -> (f64, Vec<f64>, Vec<f64>) {
        let mut tempered = self.tempered(&start);
        let mut temperatures = start;
        let (mut nll, mut weights) = tempered.best_weights();
        for _ in 0..REFINE_ROUNDS {
            let mut moved = false;
            for j in 0..self.outputs.len() {
                if weights[j] == 0.0 {
                    continue;
                }
                for t in temperature_grid() {
                    tempered.with_temperature(self, j, t);
                    let n = tempered.nll(&weights);
                    if n < nll - 1e-12 {
                        (nll, temperatures[j], moved) = (n, t, true);
                    }
                }
                tempered.with_temperature(self, j, temperatures[j]);
            }
            let (n, w) = tempered.best_weights();
            if n < nll - 1e-12 {
                (nll, weights, moved) = (n, w, true);
            }
            if !moved {
                break;
            }
        }
        (nll, temperatures, weights)
    }

    /// The mix of these outputs: the weights on the grid of [`MIX_STEPS`] steps with the lowest mean
    /// negative log-likelihood; ties go to the weights met first, which start from the fused classifier
    /// alone and move weight to the heads in the model's modality order, then to the experts. Experts
    /// left at weight 0 are dropped from the mix (a checkpoint carries only the experts it uses).
    ///
    /// With `calibrate`, each output's logits may also be divided by a temperature from
    /// [`TEMPERATURE_STEPS`]'s grid. Two starts: every output as trained, and every output at the
    /// temperature that fits it best alone (an output that is right but unsure, a slow learner, is then
    /// no longer outweighed by a sure but less accurate one); from each, the temperatures of the weighted
    /// outputs are refined for the mixture (in turns with the weights), and the start whose mixture has
    /// the lower negative log-likelihood is kept (ties: the untempered one), so the chosen mixture fits
    /// these windows at least as well as the untempered choice. The mix keeps the temperatures of the
    /// fused classifier and of the weighted outputs (those at 1 are left out).
    #[must_use]
    pub fn choose(&self, calibrate: bool) -> OutputMix {
        let (temperatures, weights) = self.choice(calibrate);
        self.mix(&weights, &temperatures)
    }

    /// The temperatures and weights of [`OutputProbs::choose`].
    fn choice(&self, calibrate: bool) -> (Vec<f64>, Vec<f64>) {
        let k = self.outputs.len();
        // Refining moves only on a gain above 1e-12, so the refinement from "as trained" is the
        // untempered choice itself or better than it by more than that.
        if calibrate {
            let fitted: Vec<f64> = self.outputs.iter().map(|o| o.fitted_temperature(&self.labels)).collect();
            let (trained, own) = (self.refine(vec![1.0; k]), self.refine(fitted));
            let (_, temperatures, weights) = if own.0 < trained.0 - 1e-12 { own } else { trained };
            (temperatures, weights)
        } else {
            (vec![1.0; k], self.best_weights().1)
        }
    }

    /// [`OutputProbs::choose`] with bagged weights: the temperatures as `choose` fits them on every
    /// window, the weights the mean of the grid choices on `bagging.resamples` bootstrap resamples of
    /// the windows' groups (`bagging.groups[i]` is window `i`'s trial: a trial's windows are drawn
    /// together), from `bagging.seed` (multiples of 1/(10·resamples)). One choice on a few dozen held-out trials
    /// is all or nothing where two outputs fit them almost equally well; the mean over resamples keeps
    /// a share for each output in proportion to how often it wins, which is what the evidence says.
    /// `resamples` = 0: `choose` itself.
    ///
    /// # Errors
    /// [`Error::Input`] when `bagging.groups` does not have one entry per window, or a group holds
    /// windows of two classes.
    pub fn choose_bagged(&self, calibrate: bool, bagging: &Bagging) -> Result<OutputMix> {
        let n = self.labels.len();
        let (group, groups) = self.group_index(&bagging.groups, "bagging an output mix")?;
        let (temperatures, weights) = self.choice(calibrate);
        if bagging.resamples == 0 || n == 0 {
            return Ok(self.mix(&weights, &temperatures));
        }
        let (grid, per_group) = self.tempered(&temperatures).grid_nll_per_group(&group, groups);
        let mut rng = ChaCha8Rng::seed_from_u64(bagging.seed);
        let mut total = vec![0usize; self.outputs.len()];
        let mut counts = vec![0.0f64; groups];
        for _ in 0..bagging.resamples {
            counts.fill(0.0);
            for _ in 0..groups {
                counts[rng.random_range(0..groups)] += 1.0;
            }
            // Ties go to the grid point met first, as in `best_weights`.
            let mut best = (f64::INFINITY, 0);
            for (c, sums) in per_group.iter().enumerate() {
                let nll: f64 = sums.iter().zip(&counts).map(|(s, k)| s * k).sum();
                if nll < best.0 - 1e-9 {
                    best = (nll, c);
                }
            }
            for (t, s) in total.iter_mut().zip(&grid[best.1]) {
                *t += s;
            }
        }
        let scale = (MIX_STEPS * bagging.resamples) as f64;
        let weights: Vec<f64> = total.iter().map(|&s| s as f64 / scale).collect();
        Ok(self.mix(&weights, &temperatures))
    }

    /// These outputs with output `j`'s probabilities tempered with `temperatures[j]`.
    fn tempered(&self, temperatures: &[f64]) -> Self {
        let mut tempered = self.clone();
        for (j, &t) in temperatures.iter().enumerate() {
            tempered.with_temperature(self, j, t);
        }
        tempered
    }

    /// Every point of the grid of [`MIX_STEPS`] steps (as steps, in the order of [`compositions`]) with
    /// the mixture's negative log-likelihood summed per group (`group[i]` is window `i`'s group index,
    /// `0..groups`).
    fn grid_nll_per_group(&self, group: &[usize], groups: usize) -> (Vec<Vec<usize>>, Vec<Vec<f64>>) {
        let mut grid: Vec<Vec<usize>> = Vec::new();
        let mut per_group: Vec<Vec<f64>> = Vec::new();
        compositions(MIX_STEPS, &mut vec![0usize; self.outputs.len()], 0, &mut |w| {
            let weights = step_weights(w);
            let mut sums = vec![0.0; groups];
            for (i, &g) in group.iter().enumerate() {
                sums[g] -= self.true_class_prob(&weights, i).max(1e-30).ln();
            }
            grid.push(w.to_vec());
            per_group.push(sums);
        });
        (grid, per_group)
    }

    /// Each window's group as an index `0..G` in order of first appearance, with `G`.
    ///
    /// # Errors
    /// [`Error::Input`] when `groups` does not have one entry per window, or a group holds windows of
    /// two classes (a trial has one emotion: such groups are not these windows' trials).
    fn group_index(&self, groups: &[u64], what: &str) -> Result<(Vec<usize>, usize)> {
        let n = self.labels.len();
        if groups.len() != n {
            return Err(Error::Input(format!(
                "{what} needs one group per window ({} groups for {n} windows)",
                groups.len()
            )));
        }
        let mut index_of = std::collections::BTreeMap::new();
        let mut group = Vec::with_capacity(n);
        for (g, &c) in groups.iter().zip(&self.labels) {
            let next = index_of.len();
            let &mut (index, class) = index_of.entry(g).or_insert((next, c));
            if class != c {
                return Err(Error::Input(format!(
                    "{what}: group {g} holds windows of two classes (the groups are not these windows' trials)"
                )));
            }
            group.push(index);
        }
        Ok((group, index_of.len()))
    }

    /// The even mix of these outputs ([`crate::config::MixChoice::Even`]): with `calibrate`, each output
    /// at the temperature of [`TEMPERATURE_STEPS`]'s grid that fits it alone best; then, on the grid of
    /// [`MIX_STEPS`] steps, the weights whose mean negative log-likelihood per trial (`groups[i]` is
    /// window `i`'s trial) is within [`EVEN_STANDARD_ERRORS`] standard errors of the best weights' (the
    /// paired per-trial differences, so that trials, not their correlated windows, are the samples),
    /// and among them the most even ones (the highest entropy of the weights; ties: the lower negative
    /// log-likelihood).
    ///
    /// On a few dozen held-out trials many mixes fit almost equally well, and the one that fits best
    /// is partly chance; of those the held-out windows cannot tell apart, the even one spreads the bet.
    /// An output that fits clearly worse (a modality that misleads on trials its model has not seen)
    /// moves the fit by more than the noise and gets no weight. With fewer than two trials: the best
    /// weights.
    ///
    /// # Errors
    /// [`Error::Input`] when `groups` does not have one entry per window, or a group holds windows of
    /// two classes.
    pub fn choose_even(&self, calibrate: bool, groups: &[u64]) -> Result<OutputMix> {
        let (group, count) = self.group_index(groups, "an even output mix")?;
        let k = self.outputs.len();
        let temperatures: Vec<f64> = if calibrate {
            self.outputs.iter().map(|o| o.fitted_temperature(&self.labels)).collect()
        } else {
            vec![1.0; k]
        };
        let mut sizes = vec![0usize; count];
        for &g in &group {
            sizes[g] += 1;
        }
        // Every grid point's weights and mean negative log-likelihood per trial.
        let (steps, mut per_trial) = self.tempered(&temperatures).grid_nll_per_group(&group, count);
        for sums in &mut per_trial {
            for (s, &size) in sums.iter_mut().zip(&sizes) {
                *s /= size as f64;
            }
        }
        let grid: Vec<Vec<f64>> = steps.iter().map(|w| step_weights(w)).collect();
        let mean = |v: &mut dyn Iterator<Item = f64>| v.sum::<f64>() / count.max(1) as f64;
        let fits: Vec<f64> = per_trial.iter().map(|v| mean(&mut v.iter().copied())).collect();
        let mut best = 0;
        for (c, &fit) in fits.iter().enumerate() {
            if fit < fits[best] - 1e-12 {
                best = c;
            }
        }
        let entropy =
            |w: &[f64]| -> f64 { -w.iter().filter(|&&x| x > 0.0).map(|&x| x * x.ln()).sum::<f64>() };
        let mut chosen = best;
        if count >= 2 {
            for (c, trials) in per_trial.iter().enumerate() {
                let diff: Vec<f64> = trials.iter().zip(&per_trial[best]).map(|(a, b)| a - b).collect();
                let m = mean(&mut diff.iter().copied());
                let variance = diff.iter().map(|d| (d - m).powi(2)).sum::<f64>() / (count - 1) as f64;
                if m > EVEN_STANDARD_ERRORS * (variance / count as f64).sqrt() + 1e-12 {
                    continue;
                }
                let (e, now) = (entropy(&grid[c]), entropy(&grid[chosen]));
                if e > now + 1e-12 || ((e - now).abs() <= 1e-12 && fits[c] < fits[chosen] - 1e-12) {
                    chosen = c;
                }
            }
        }
        Ok(self.mix(&grid[chosen], &temperatures))
    }

    /// The mix of `weights`, keeping the temperatures of the fused classifier and of the weighted
    /// outputs (those at 1 left out).
    fn mix(&self, weights: &[f64], temperatures: &[f64]) -> OutputMix {
        let mut mix = self.weights_mix(weights);
        mix.temperatures = self
            .outputs
            .iter()
            .zip(temperatures)
            .zip(weights)
            .filter(|((o, t), w)| **t != 1.0 && (**w > 0.0 || o.source == Source::Fused))
            .map(|((o, t), _)| (o.name(), *t))
            .collect();
        mix
    }

    fn weights_mix(&self, weights: &[f64]) -> OutputMix {
        let outputs = || self.outputs.iter().zip(weights);
        OutputMix {
            fused: weights[0],
            heads: outputs()
                .filter_map(|(o, &w)| if let Source::Head(m) = o.source { Some((m, w)) } else { None })
                .collect(),
            experts: outputs()
                .filter_map(|(o, &w)| match &o.source {
                    Source::Expert(cfg) if w > 0.0 => Some(MixExpert { weight: w, model: (**cfg).clone() }),
                    _ => None,
                })
                .collect(),
            temperatures: std::collections::BTreeMap::new(),
        }
    }

    /// The mean negative log-likelihood of each output alone, in the order of [`OutputProbs::accuracies`].
    #[must_use]
    pub fn nlls(&self) -> Vec<f64> {
        (0..self.outputs.len())
            .map(|k| {
                self.nll(&(0..self.outputs.len()).map(|j| f64::from(u8::from(j == k))).collect::<Vec<_>>())
            })
            .collect()
    }

    /// The accuracy of each output alone on the windows where it is present: `fused`, each modality's
    /// head (`eeg`, …) and each expert (`eeg_only`, …).
    #[must_use]
    pub fn accuracies(&self) -> std::collections::BTreeMap<String, f64> {
        self.outputs
            .iter()
            .map(|o| {
                let name = o.name();
                let (truth, pred): (Vec<usize>, Vec<usize>) = o
                    .probs
                    .iter()
                    .zip(&self.labels)
                    .zip(&o.present)
                    .filter(|(_, present)| **present)
                    .map(|((p, &t), _)| {
                        (t, (0..Emotion::COUNT).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0))
                    })
                    .unzip();
                let accuracy = if truth.is_empty() {
                    f64::NAN
                } else {
                    Metrics::from_predictions(&truth, &pred, Emotion::COUNT).accuracy
                };
                (name, accuracy)
            })
            .collect()
    }
}

/// Calls `f` with every way of writing `total` as `grid.len()` non-negative parts, the first part
/// largest first.
fn compositions(total: usize, grid: &mut [usize], at: usize, f: &mut dyn FnMut(&[usize])) {
    if at + 1 == grid.len() {
        grid[at] = total;
        f(grid);
        return;
    }
    for v in (0..=total).rev() {
        grid[at] = v;
        compositions(total - v, grid, at + 1, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_hot(c: usize, sure: f64) -> [f64; Emotion::COUNT] {
        let mut p = [(1.0 - sure) / 4.0; Emotion::COUNT];
        p[c] = sure;
        p
    }

    /// Three outputs on 20 windows: a fused classifier right on half, an EEG head right on all, an audio
    /// head confidently wrong. The choice puts the weight on the EEG head, never on the audio head.
    #[test]
    fn the_choice_follows_the_held_out_evidence() {
        let labels: Vec<usize> = (0..20).map(|i| i % 5).collect();
        let fused =
            labels.iter().enumerate().map(|(i, &c)| one_hot(if i % 2 == 0 { c } else { (c + 1) % 5 }, 0.6));
        let eeg = labels.iter().map(|&c| one_hot(c, 0.7));
        let audio = labels.iter().map(|&c| one_hot((c + 2) % 5, 0.99));
        let out = |m: Option<Modality>, p: Vec<_>| Output {
            source: m.map_or(Source::Fused, Source::Head),
            probs: p,
            present: vec![true; 20],
        };
        let probs = OutputProbs {
            labels: labels.clone(),
            outputs: vec![
                out(None, fused.collect()),
                out(Some(Modality::Eeg), eeg.collect()),
                out(Some(Modality::Audio), audio.collect()),
            ],
        };
        let mix = probs.choose(false);
        assert_eq!(mix.head(Modality::Audio), 0.0, "{}", mix.describe());
        assert!(mix.head(Modality::Eeg) >= 0.5, "{}", mix.describe());
        let acc = probs.accuracies();
        assert_eq!((acc["fused"], acc["eeg"], acc["audio"]), (0.5, 1.0, 0.0));
        // The chosen weights are no worse than any single output.
        let chosen: Vec<f64> = [mix.fused, mix.head(Modality::Eeg), mix.head(Modality::Audio)].to_vec();
        for single in [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] {
            assert!(probs.nll(&chosen) <= probs.nll(&single) + 1e-12);
        }
        // With equal evidence the fused classifier keeps the weight.
        let same = OutputProbs {
            labels: labels.clone(),
            outputs: vec![
                out(None, labels.iter().map(|&c| one_hot(c, 0.7)).collect()),
                out(Some(Modality::Eeg), labels.iter().map(|&c| one_hot(c, 0.7)).collect()),
            ],
        };
        assert_eq!(
            same.choose(false),
            OutputMix {
                fused: 1.0,
                heads: vec![(Modality::Eeg, 0.0)],
                experts: Vec::new(),
                temperatures: std::collections::BTreeMap::new(),
            }
        );
    }

    /// A single-modality expert that the held-out windows favour takes the weight and carries its
    /// configuration into the mix; an expert left at 0 is dropped from it.
    #[test]
    fn experts_join_the_choice_and_unweighted_ones_are_dropped() {
        let labels: Vec<usize> = (0..20).map(|i| i % 5).collect();
        let weak = |i: usize, c: usize| one_hot(if i.is_multiple_of(2) { c } else { (c + 1) % 5 }, 0.6);
        let out = |source, probs| Output { source, probs, present: vec![true; 20] };
        let eeg_only = crate::model::ModelConfig::eeg_only(4);
        let audio_only = crate::model::ModelConfig::audio_only(4);
        let probs = OutputProbs {
            labels: labels.clone(),
            outputs: vec![
                out(Source::Fused, labels.iter().enumerate().map(|(i, &c)| weak(i, c)).collect()),
                out(
                    Source::Head(Modality::Eeg),
                    labels.iter().enumerate().map(|(i, &c)| weak(i + 1, c)).collect(),
                ),
                out(
                    Source::Expert(Box::new(eeg_only.clone())),
                    labels.iter().map(|&c| one_hot(c, 0.8)).collect(),
                ),
                out(
                    Source::Expert(Box::new(audio_only)),
                    labels.iter().map(|&c| one_hot((c + 3) % 5, 0.9)).collect(),
                ),
            ],
        };
        let mix = probs.choose(false);
        assert_eq!(mix.experts.len(), 1, "{}", mix.describe());
        assert_eq!(mix.experts[0].model, eeg_only);
        assert!(mix.expert(Modality::Eeg) >= 0.5 && mix.expert(Modality::Audio) == 0.0, "{}", mix.describe());
        let acc = probs.accuracies();
        assert_eq!((acc["eeg_only"], acc["audio_only"]), (1.0, 0.0));
        assert!(mix.describe().contains("eeg_only="), "{}", mix.describe());
    }

    /// Calibration: a video head that is right on every window but unsure (0.4 on the true class) loses
    /// to a sure fused classifier that is wrong on a quarter of them when the probabilities are taken as
    /// trained; tempered, the head is sharpened (temperature below 1) and takes the weight, and the mix
    /// keeps its temperature. Tempering is dividing the logits.
    #[test]
    fn calibration_lets_a_right_but_unsure_output_count() {
        let labels: Vec<usize> = (0..40).map(|i| i % 5).collect();
        let sure =
            labels.iter().enumerate().map(|(i, &c)| one_hot(if i % 4 == 3 { (c + 1) % 5 } else { c }, 0.97));
        let unsure = labels.iter().map(|&c| one_hot(c, 0.4));
        let out = |source, probs: Vec<_>| Output { source, probs, present: vec![true; 40] };
        let probs = OutputProbs {
            labels: labels.clone(),
            outputs: vec![
                out(Source::Fused, sure.collect()),
                out(Source::Head(Modality::Video), unsure.collect()),
            ],
        };
        let plain = probs.choose(false);
        assert!(plain.fused > plain.head(Modality::Video), "{}", plain.describe());
        assert!(plain.temperatures.is_empty());
        let calibrated = probs.choose(true);
        assert!(calibrated.head(Modality::Video) > calibrated.fused, "{}", calibrated.describe());
        assert!(calibrated.temperature("video") < 1.0, "{}", calibrated.describe());
        assert!(calibrated.describe().contains("temperatures"), "{}", calibrated.describe());
        // The tempered choice fits the windows at least as well as the untempered one.
        let nll_of = |mix: &OutputMix| {
            let mut t = probs.clone();
            for j in 0..t.outputs.len() {
                t.with_temperature(&probs, j, mix.temperature(&probs.outputs[j].name()));
            }
            t.nll(&[mix.fused, mix.head(Modality::Video)])
        };
        assert!(nll_of(&calibrated) < nll_of(&plain) - 0.1, "{} vs {}", nll_of(&calibrated), nll_of(&plain));
        // softmax(ln p / t) is softmax(logits / t).
        let logits = [0.3f64, -1.2, 2.0, 0.0, 0.7];
        let softmax = |l: &[f64; 5]| {
            let e = l.map(f64::exp);
            let s: f64 = e.iter().sum();
            e.map(|v| v / s)
        };
        let t = 0.6;
        let got = temper(&softmax(&logits), t);
        let want = softmax(&logits.map(|v| v / t));
        assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12), "{got:?} vs {want:?}");
        assert_eq!(temper(&one_hot(2, 0.5), 1.0), one_hot(2, 0.5));
    }

    /// Bagging: where a second output is nearly as good (better on 11 of 20 trials, worse on the rest),
    /// one choice on every window gives it nothing, the mean over bootstrap resamples a share; a
    /// confidently wrong output stays at 0 either way. Same seed, same mix; no resamples: `choose`.
    #[test]
    fn bagged_weights_share_between_near_equals_and_skip_a_decoy() {
        let groups: Vec<u64> = (0..40).map(|i| i / 2).collect();
        let labels: Vec<usize> = groups.iter().map(|&g| g as usize % 5).collect();
        let out = |source, probs: Vec<_>| Output { source, probs, present: vec![true; 40] };
        let steady = labels.iter().map(|&c| one_hot(c, 0.6)).collect();
        let uneven = labels.iter().zip(&groups).map(|(&c, &g)| one_hot(c, if g < 11 { 0.9 } else { 0.2 }));
        let decoy = labels.iter().map(|&c| one_hot((c + 1) % 5, 0.9)).collect();
        let probs = OutputProbs {
            labels: labels.clone(),
            outputs: vec![
                out(Source::Fused, steady),
                out(Source::Head(Modality::Eeg), uneven.collect()),
                out(Source::Head(Modality::Audio), decoy),
            ],
        };
        let single = probs.choose(false);
        assert_eq!((single.fused, single.head(Modality::Eeg)), (1.0, 0.0), "{}", single.describe());
        let bagging = Bagging { groups: groups.clone(), resamples: 200, seed: 7 };
        let bagged = probs.choose_bagged(false, &bagging).unwrap();
        let eeg = bagged.head(Modality::Eeg);
        assert!((0.03..0.3).contains(&eeg), "{}", bagged.describe());
        assert_eq!(bagged.head(Modality::Audio), 0.0, "{}", bagged.describe());
        assert!((bagged.fused + eeg - 1.0).abs() < 1e-9, "{}", bagged.describe());
        assert!(
            [bagged.fused, eeg].iter().all(|w| ((w * 2000.0).round() - w * 2000.0).abs() < 1e-9),
            "{}",
            bagged.describe()
        );
        assert_eq!(probs.choose_bagged(false, &bagging).unwrap(), bagged);
        assert_eq!(
            probs.choose_bagged(true, &Bagging { resamples: 0, ..bagging.clone() }).unwrap(),
            probs.choose(true)
        );
        let short = Bagging { groups: groups[..39].to_vec(), ..bagging };
        assert!(
            matches!(probs.choose_bagged(false, &short), Err(Error::Input(m)) if m.contains("39 groups for 40 windows"))
        );
    }

    /// The even choice: two outputs that the held-out trials cannot tell apart (one a little better on
    /// 11 trials of 20, a little worse on the rest) share the weight, where the best fit puts it all on
    /// the one that is better on average; a confidently wrong output gets
    /// nothing either way; with tempered outputs each keeps the temperature that fits it alone. Groups
    /// must be the windows' trials.
    #[test]
    fn the_even_choice_shares_between_indistinguishable_outputs_and_skips_a_decoy() {
        let groups: Vec<u64> = (0..40).map(|i| i / 2).collect();
        let labels: Vec<usize> = groups.iter().map(|&g| g as usize % 5).collect();
        let out = |source, probs: Vec<_>| Output { source, probs, present: vec![true; 40] };
        let a = labels.iter().map(|&c| one_hot(c, 0.7)).collect();
        let b =
            labels.iter().zip(&groups).map(|(&c, &g)| one_hot(c, if g < 11 { 0.72 } else { 0.68 })).collect();
        let decoy = labels.iter().map(|&c| one_hot((c + 1) % 5, 0.9)).collect();
        let probs = OutputProbs {
            labels: labels.clone(),
            outputs: vec![
                out(Source::Fused, a),
                out(Source::Head(Modality::Eeg), b),
                out(Source::Head(Modality::Audio), decoy),
            ],
        };
        let best = probs.choose(false);
        assert_eq!((best.fused, best.head(Modality::Eeg)), (0.0, 1.0), "{}", best.describe());
        let even = probs.choose_even(false, &groups).unwrap();
        assert_eq!(
            (even.fused, even.head(Modality::Eeg), even.head(Modality::Audio)),
            (0.5, 0.5, 0.0),
            "{}",
            even.describe()
        );
        assert!(even.temperatures.is_empty());
        // Tempered: each weighted output at its own fitted temperature.
        let tempered = probs.choose_even(true, &groups).unwrap();
        assert!(tempered.fused > 0.0, "{}", tempered.describe());
        assert_eq!(tempered.temperature("fused"), probs.outputs[0].fitted_temperature(&labels));
        assert!(tempered.temperature("fused") < 1.0, "{}", tempered.describe());
        assert_eq!(tempered.head(Modality::Audio), 0.0, "{}", tempered.describe());
        // One output clearly better on every trial keeps all the weight.
        let mut clear = probs.clone();
        clear.outputs[1].probs = labels.iter().map(|&c| one_hot(c, 0.95)).collect();
        let mix = clear.choose_even(false, &groups).unwrap();
        assert_eq!((mix.fused, mix.head(Modality::Eeg)), (0.0, 1.0), "{}", mix.describe());
        assert!(
            matches!(probs.choose_even(false, &groups[..39]), Err(Error::Input(m)) if m.contains("39 groups for 40 windows"))
        );
        let wrong: Vec<u64> = (0..40).map(|i| i % 2).collect();
        assert!(
            matches!(probs.choose_even(false, &wrong), Err(Error::Input(m)) if m.contains("two classes"))
        );
    }

    /// An absent head leaves the mixture of the windows that lack its modality; with nothing weighted
    /// present, the fused classifier speaks.
    #[test]
    fn absent_heads_leave_the_mixture() {
        let probs = OutputProbs {
            labels: vec![0, 0],
            outputs: vec![
                Output { source: Source::Fused, probs: vec![one_hot(0, 0.2); 2], present: vec![true; 2] },
                Output {
                    source: Source::Head(Modality::Audio),
                    probs: vec![one_hot(0, 0.9); 2],
                    present: vec![true, false],
                },
            ],
        };
        assert!((probs.true_class_prob(&[0.5, 0.5], 0) - 0.55).abs() < 1e-12);
        assert!((probs.true_class_prob(&[0.5, 0.5], 1) - 0.2).abs() < 1e-12);
        assert!((probs.true_class_prob(&[0.0, 1.0], 1) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn the_grid_covers_the_simplex_once() {
        let mut seen = Vec::new();
        compositions(10, &mut [0; 3], 0, &mut |w| seen.push(w.to_vec()));
        assert_eq!(seen.len(), 66);
        assert_eq!(seen[0], vec![10, 0, 0]);
        assert!(seen.iter().all(|w| w.iter().sum::<usize>() == 10));
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 66);
    }
}
