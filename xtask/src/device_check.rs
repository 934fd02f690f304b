//! `cargo xtask device-check --device cuda`: does a device compute what the CPU computes? Every model kind
//! (single modalities and each fusion mode) is built from one seed twice, once on the CPU with this
//! project's CPU kernels (the path that the PyTorch parity and finite-difference tests check) and once on
//! the device, and both see the same batch, with modalities absent from some samples. Compared: the
//! training-mode logits, every parameter's gradient of the loss, and the evaluation-mode logits after the
//! BatchNorm running statistics moved. With `--device cpu` the second model runs on the CPU with the
//! kernels off ([`encoders::cpu_op::with_generic_ops`]): the candle-op paths a GPU runs, minus the GPU.

use std::path::PathBuf;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use core_types::{FusionMode, Modality};
use experiments::config::device;
use experiments::{EmotionModel, Inputs, ModelConfig, Presence};
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Arguments of `device-check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `cuda` (a build with `--features cuda`) compares the GPU with the CPU kernels; `cpu` compares the
    /// candle-op paths on the CPU with them.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Samples in the batch (at least 4, so that some lack audio or video and some have everything).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// EEG channels.
    #[arg(long, default_value_t = 30)]
    channels: usize,
    /// Seed of the weights and of the batch.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Largest relative difference allowed in the logits and in each parameter's gradient: the largest
    /// difference over the largest magnitude of the CPU's values (for a gradient, at least 1e-4 of the
    /// model's largest gradient).
    #[arg(long, default_value_t = 1e-3)]
    tolerance: f64,
    /// Also write the table as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One model's comparison.
#[derive(Debug, Serialize)]
struct Row {
    model: String,
    modalities: String,
    loss_cpu: f64,
    loss_device: f64,
    logits_train: f64,
    logits_eval: f64,
    gradient: f64,
    gradient_worst: String,
    /// The largest gradient of a parameter whose gradient is 0 in exact arithmetic, on either side,
    /// over the model's largest gradient (rounding noise; must stay below the tolerance too).
    null_gradient: f64,
    parameters: usize,
    pass: bool,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report<'a> {
    device: &'a str,
    reference: &'static str,
    candidate: String,
    batch: usize,
    tolerance: f64,
    rows: &'a [Row],
    pass: bool,
}

/// One forward and backward pass of a model on a device: what is compared.
struct Outcome {
    loss: f64,
    logits_train: Vec<f32>,
    logits_eval: Vec<f32>,
    grads: Vec<(String, Vec<f32>)>,
    /// Parameters whose gradient is 0 in exact arithmetic: the bias of a convolution that BatchNorm
    /// follows (BatchNorm removes the batch mean, and the bias with it), rounding noise in practice.
    null: Vec<String>,
}

/// The batch, on the CPU: EEG `(B, C, 500)`, MFCC `(B, 13, 501)`, video `(B, 25, 64, 64)`, labels, and
/// which samples have audio and video (every 4th from the second lacks audio, from the third video).
struct Batch {
    eeg: Tensor,
    audio: Tensor,
    video: Tensor,
    labels: Tensor,
    audio_present: Vec<f32>,
    video_present: Vec<f32>,
}

impl Batch {
    fn new(batch: usize, channels: usize, seed: u64) -> anyhow::Result<Self> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut normal = |dims: &[usize]| -> anyhow::Result<Tensor> {
            let n = dims.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.sample(rand_distr::StandardNormal)).collect();
            Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
        };
        let eeg = normal(&[batch, channels, 500])?;
        let audio = normal(&[batch, 13, 501])?;
        let video = normal(&[batch, 25, 64, 64])?;
        let labels: Vec<u32> = (0..batch).map(|i| (i % core_types::Emotion::COUNT) as u32).collect();
        let labels = Tensor::new(labels.as_slice(), &Device::Cpu)?;
        let mask = |skip: usize| (0..batch).map(|i| if i % 4 == skip { 0.0 } else { 1.0 }).collect();
        Ok(Self { eeg, audio, video, labels, audio_present: mask(1), video_present: mask(2) })
    }
}

/// The models compared: each single modality, each fusion mode over EEG and audio, and two fusion modes
/// over all three modalities.
fn models(channels: usize) -> Vec<ModelConfig> {
    let mut all = vec![
        ModelConfig::eeg_only(channels),
        ModelConfig::audio_only(channels),
        ModelConfig::video_only(channels),
    ];
    all.extend(FusionMode::ALL.iter().map(|&m| ModelConfig::fused(channels, m)));
    let three = [Modality::Eeg, Modality::Audio, Modality::Video];
    all.extend(
        [FusionMode::Gated, FusionMode::Temporal]
            .iter()
            .map(|&m| ModelConfig::fused_over(channels, m, &three)),
    );
    all.into_iter().map(|c| c.with_dropout(0.0)).collect()
}

fn values(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

fn run_once(cfg: &ModelConfig, batch: &Batch, dev: &Device, seed: u64) -> anyhow::Result<Outcome> {
    let model = EmotionModel::new(cfg, dev, seed)?;
    let fused = cfg.fusion.is_some();
    let mask = |v: &[f32]| -> anyhow::Result<Option<Tensor>> {
        Ok(if fused { Some(Tensor::new(v, dev)?) } else { None })
    };
    let presence =
        Presence { eeg: None, audio: mask(&batch.audio_present)?, video: mask(&batch.video_present)? };
    let reads = cfg.modalities();
    let (eeg, audio, video) =
        (batch.eeg.to_device(dev)?, batch.audio.to_device(dev)?, batch.video.to_device(dev)?);
    let inputs = Inputs {
        eeg: &eeg,
        audio: reads.contains(&Modality::Audio).then_some(&audio),
        video: reads.contains(&Modality::Video).then_some(&video),
    };
    let labels = batch.labels.to_device(dev)?;
    let out = model.forward_inputs(inputs, &presence, true)?;
    let mut loss = candle_nn::loss::cross_entropy(&out.logits, &labels)?;
    if let Some(aux) = &out.aux_loss {
        loss = (loss + aux)?;
    }
    let grads = loss.backward()?;
    let mut named = Vec::new();
    for (name, var) in model.parameters() {
        let g = match grads.get(var.as_tensor()) {
            Some(g) => values(g)?,
            None => vec![0.0; var.elem_count()],
        };
        named.push((name, g));
    }
    let names: Vec<String> = model.named_tensors().into_iter().map(|(n, _)| n).collect();
    let null = names
        .iter()
        .filter_map(|n| n.strip_suffix(".0.bias"))
        .filter(|p| names.contains(&format!("{p}.1.running_mean")))
        .map(|p| format!("{p}.0.bias"))
        .collect();
    let eval = model.forward_inputs(inputs, &presence, false)?;
    Ok(Outcome {
        loss: f64::from(loss.to_device(&Device::Cpu)?.to_scalar::<f32>()?),
        logits_train: values(&out.logits)?,
        logits_eval: values(&eval.logits)?,
        grads: named,
        null,
    })
}

/// `max |a − b| / max(max |a|, floor)` (0 when equal; infinite when `b` is not finite or the lengths
/// differ).
fn relative(a: &[f32], b: &[f32], floor: f64) -> f64 {
    if b.iter().any(|v| !v.is_finite()) || a.len() != b.len() {
        return f64::INFINITY;
    }
    let diff = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    if diff == 0.0 { 0.0 } else { diff / largest(a).max(floor).max(f64::from(f32::MIN_POSITIVE)) }
}

fn largest(a: &[f32]) -> f64 {
    a.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())))
}

/// Gradients below this fraction of the model's largest gradient are compared against that floor.
const GRADIENT_FLOOR: f64 = 1e-4;

fn compare(cfg: &ModelConfig, cpu: &Outcome, other: &Outcome, tolerance: f64) -> Row {
    let logits_train = relative(&cpu.logits_train, &other.logits_train, 0.0);
    let logits_eval = relative(&cpu.logits_eval, &other.logits_eval, 0.0);
    let max_grad = cpu.grads.iter().fold(0f64, |m, (_, g)| m.max(largest(g)));
    let floor = GRADIENT_FLOOR * max_grad;
    let (mut gradient, mut gradient_worst, mut null_gradient) = (0.0, String::new(), 0f64);
    for ((name, a), (_, b)) in cpu.grads.iter().zip(&other.grads) {
        if cpu.null.contains(name) {
            // Rounding noise that two paths do not share: it must be small (and finite) on both sides.
            let noise =
                if b.iter().all(|v| v.is_finite()) { largest(a).max(largest(b)) } else { f64::INFINITY };
            null_gradient = null_gradient.max(noise / max_grad.max(f64::from(f32::MIN_POSITIVE)));
            continue;
        }
        let r = relative(a, b, floor);
        if r > gradient || gradient_worst.is_empty() {
            gradient = r;
            gradient_worst.clone_from(name);
        }
    }
    let modalities: Vec<&str> = cfg.modalities().iter().map(|m| m.as_str()).collect();
    let pass = [logits_train, logits_eval, gradient, null_gradient].iter().all(|r| *r <= tolerance)
        && (cpu.loss - other.loss).abs() <= tolerance * cpu.loss.abs().max(1.0);
    Row {
        model: cfg.name().to_owned(),
        modalities: modalities.join("+"),
        loss_cpu: cpu.loss,
        loss_device: other.loss,
        logits_train,
        logits_eval,
        gradient,
        gradient_worst,
        null_gradient,
        parameters: cpu.grads.len(),
        pass,
    }
}

/// Runs the command: a table on stdout, the JSON file when asked, and an error when a model differs by
/// more than the tolerance.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.batch < 4 {
        bail!("--batch must be at least 4 (samples with and without audio and video), got {}", args.batch);
    }
    let dev = device(&args.device)?;
    let candidate =
        if dev.is_cpu() { "cpu, candle ops (the CPU kernels off)".to_owned() } else { format!("{dev:?}") };
    let batch = Batch::new(args.batch, args.channels, args.seed)?;
    let configs = models(args.channels);
    let bar = crate::progress::bar(configs.len() as u64, "models");
    let mut rows = Vec::new();
    for cfg in &configs {
        bar.set_message(cfg.name());
        let what = || format!("{} over {:?}", cfg.name(), cfg.modalities());
        let cpu = run_once(cfg, &batch, &Device::Cpu, args.seed)
            .with_context(|| format!("{} on the CPU", what()))?;
        let other = if dev.is_cpu() {
            encoders::cpu_op::with_generic_ops(|| run_once(cfg, &batch, &dev, args.seed))
        } else {
            run_once(cfg, &batch, &dev, args.seed)
        }
        .with_context(|| format!("{} on {}", what(), args.device))?;
        rows.push(compare(cfg, &cpu, &other, args.tolerance));
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!("reference: cpu with its kernels; candidate: {candidate}; batch {}", args.batch);
    println!(
        "{:<16} {:<18} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}  worst gradient",
        "model", "modalities", "loss cpu", "loss dev", "logits train", "logits eval", "gradient", "null grad"
    );
    for r in &rows {
        println!(
            "{:<16} {:<18} {:>10.6} {:>10.6} {:>12.2e} {:>12.2e} {:>10.2e} {:>10.2e}  {}{}",
            r.model,
            r.modalities,
            r.loss_cpu,
            r.loss_device,
            r.logits_train,
            r.logits_eval,
            r.gradient,
            r.null_gradient,
            r.gradient_worst,
            if r.pass { "" } else { "  ← over tolerance" }
        );
    }
    let pass = rows.iter().all(|r| r.pass);
    if let Some(path) = &args.json {
        let report = Report {
            device: &args.device,
            reference: "cpu kernels",
            candidate: candidate.clone(),
            batch: args.batch,
            tolerance: args.tolerance,
            rows: &rows,
            pass,
        };
        crate::output::write(path, serde_json::to_string_pretty(&report)? + "\n")?;
    }
    if !pass {
        let failed: Vec<&str> = rows.iter().filter(|r| !r.pass).map(|r| r.model.as_str()).collect();
        bail!(
            "{candidate} differs from the CPU kernels by more than {} in: {}",
            args.tolerance,
            failed.join(", ")
        );
    }
    println!("every model within {} of the CPU", args.tolerance);
    Ok(())
}
