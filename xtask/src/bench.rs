//! `cargo xtask bench [--json FILE] [--config NAME]`: throughput, latency and memory on the PyTorch
//! reference's workload, and MFCC throughput.
//!
//! Workload (as `bench_train.py`): N = 512 random samples, EEG (28, 512), MFCC (13, 500), 5 classes; training
//! with batch 32, AdamW lr 1e-3, 3 epochs, reported as the median samples/s of epochs 2–3; inference in eval
//! mode at batch 256 (median of 5 passes); batch-1 latency (median and p99 of 200 calls).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use core_types::FusionMode;
use experiments::optim::AdamW;
use experiments::{EmotionModel, ModelConfig};
use mfcc::{Mfcc, MfccConfig};
use serde::Serialize;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Only this model: eeg_only, concat, cross_attention, gated, temporal or adaptive.
    #[arg(long)]
    config: Option<String>,
    /// Repetitions of the MFCC measurement (the median is reported).
    #[arg(long, default_value_t = 21)]
    repeats: usize,
    /// Skip the model benchmarks (MFCC only).
    #[arg(long)]
    mfcc_only: bool,
    /// Where the models run: `cpu`, or `cuda` in a build with `--features cuda` (the MFCC figures are
    /// the CPU's either way).
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Serialize)]
struct ModelFigures {
    config: String,
    /// Trainable parameters (as `bench_train.py`'s `params`).
    params: usize,
    train_samples_per_s: f64,
    infer_samples_per_s: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    /// Peak resident memory of this process so far (run one `--config` for a per-model figure).
    peak_rss_mib: Option<f64>,
}

#[derive(Serialize)]
struct Figures {
    /// The CPU the figures are from (`model name`, family and model of `/proc/cpuinfo`).
    cpu: String,
    /// Kernel → the instruction set it chose at run time on this CPU.
    isa: std::collections::BTreeMap<&'static str, &'static str>,
    /// Threads of the numeric kernels (`RAYON_NUM_THREADS`, which `--threads` sets).
    threads: usize,
    /// Where the models ran (`cpu`, `cuda`).
    device: String,
    results: Vec<ModelFigures>,
    /// Seconds of 16 kHz audio turned into project-config MFCCs per second of wall time (median), computed
    /// in f32 as librosa computes for float32 input (the reference's librosa figure).
    mfcc_x_realtime: f64,
    /// Median wall time for 60 s of audio, in milliseconds (f32).
    mfcc_60s_ms: f64,
    /// As `mfcc_x_realtime`, computed in f64.
    mfcc_f64_x_realtime: f64,
    /// As `mfcc_60s_ms`, computed in f64.
    mfcc_f64_60s_ms: f64,
}

/// `"AMD EPYC (family 25, model 17)"` from `/proc/cpuinfo`; `"unknown"` where there is none.
fn cpu_model() -> String {
    let field = crate::inspect::cpu_field;
    match (field("model name"), field("cpu family"), field("model")) {
        (Some(name), Some(family), Some(model)) => format!("{name} (family {family}, model {model})"),
        (Some(name), _, _) => name,
        _ => "unknown".to_owned(),
    }
}

/// Each CPU kernel's run-time choice of instruction set.
fn instruction_sets() -> std::collections::BTreeMap<&'static str, &'static str> {
    [
        (
            "matmul (gemm: convolutions, linear layers, attention products)",
            encoders::matmul_instruction_set(),
        ),
        ("mfcc", mfcc::instruction_set()),
        ("attention softmax (temporal)", fusion::softmax_instruction_set()),
    ]
    .into_iter()
    .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// 60 s of deterministic noise at 16 kHz (the reference benchmark's input shape).
fn noise_60s() -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    (0..60 * 16_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            0.1 * ((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// Median milliseconds for 60 s of noise, in `f32` (librosa's precision for float32 input) and in `f64`;
/// the two planners alternate so that both see the same machine load.
fn mfcc_figures(repeats: usize) -> anyhow::Result<(f64, f64)> {
    let single = Mfcc::<f32>::with_precision(MfccConfig::project())?;
    let double = Mfcc::new(MfccConfig::project())?;
    let y = noise_60s();
    single.mfcc(&y)?; // warm-up
    double.mfcc(&y)?;
    let (mut t32, mut t64) = (Vec::new(), Vec::new());
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        single.mfcc(&y)?;
        t32.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        double.mfcc(&y)?;
        t64.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(t32), median(t64)))
}

fn model_config(name: &str) -> anyhow::Result<ModelConfig> {
    Ok(match name {
        "eeg_only" => ModelConfig::eeg_only(28),
        mode => ModelConfig::fused(
            28,
            mode.parse::<FusionMode>().map_err(|e| anyhow::anyhow!("{e} (or eeg_only)"))?,
        ),
    })
}

fn bench_model(name: &str, dev: &Device) -> anyhow::Result<ModelFigures> {
    const N: usize = 512;
    let dev = dev.clone();
    let cfg = model_config(name)?;
    let model = EmotionModel::new(&cfg, &dev, 0)?;
    let eeg = Tensor::randn(0f32, 1.0, (N, 28, 512), &dev)?;
    let mfcc = Tensor::randn(0f32, 1.0, (N, 13, 500), &dev)?;
    let labels = Tensor::from_vec((0..N as u32).map(|i| i % 5).collect::<Vec<_>>(), N, &dev)?;
    let audio = cfg.fusion.is_some();
    let mut opt = AdamW::new(model.parameters(), 1e-3, (0.9, 0.999), 1e-8, 1e-2)?;
    let mut epoch_rates = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        for start in (0..N).step_by(32) {
            let (e, m, y) =
                (eeg.narrow(0, start, 32)?, mfcc.narrow(0, start, 32)?, labels.narrow(0, start, 32)?);
            let logits = model.forward(&e, audio.then_some(&m), true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            opt.step(&loss.backward()?)?;
        }
        dev.synchronize()?; // a GPU queues the work: the epoch ends when it is done
        epoch_rates.push(N as f64 / t.elapsed().as_secs_f64());
    }
    let train = median(epoch_rates[1..].to_vec());
    let mut passes = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for start in (0..N).step_by(256) {
            let logits = model.forward(
                &eeg.narrow(0, start, 256)?,
                audio.then_some(&mfcc.narrow(0, start, 256)?),
                false,
            )?;
            logits.to_vec2::<f32>()?;
        }
        passes.push(N as f64 / t.elapsed().as_secs_f64());
    }
    let (e1, m1) = (eeg.narrow(0, 0, 1)?, mfcc.narrow(0, 0, 1)?);
    let mut lat = Vec::new();
    for i in 0..220 {
        let t = Instant::now();
        model.forward(&e1, audio.then_some(&m1), false)?.to_vec2::<f32>()?;
        if i >= 20 {
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(ModelFigures {
        config: name.to_owned(),
        params: model.num_parameters(),
        train_samples_per_s: train,
        infer_samples_per_s: median(passes),
        latency_ms_p50: median(lat.clone()),
        latency_ms_p99: percentile(lat, 0.99),
        peak_rss_mib: crate::inspect::peak_rss_mib(),
    })
}

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let names: Vec<String> = match &args.config {
        Some(c) => vec![c.clone()],
        None if args.mfcc_only => Vec::new(),
        None => std::iter::once("eeg_only")
            .chain(FusionMode::ALL.iter().map(|m| m.as_str()))
            .map(String::from)
            .collect(),
    };
    let (cpu, isa) = (cpu_model(), instruction_sets());
    let threads = rayon::current_num_threads();
    let dev = experiments::config::device(&args.device)?;
    say!("CPU: {cpu}; {threads} threads; instruction sets: {isa:?}; models on {}", args.device);
    let mut results = Vec::new();
    for name in &names {
        let f = bench_model(name, &dev)?;
        say!(
            "{:<16} train {:>7.0} samples/s   infer {:>7.0} samples/s   batch-1 latency p50 {:.2} ms p99 {:.2} ms   peak RSS {:.0} MiB",
            f.config,
            f.train_samples_per_s,
            f.infer_samples_per_s,
            f.latency_ms_p50,
            f.latency_ms_p99,
            f.peak_rss_mib.unwrap_or(f64::NAN)
        );
        results.push(f);
    }
    let (ms32, ms64) = mfcc_figures(args.repeats)?;
    let (x32, x64) = (60e3 / ms32, 60e3 / ms64);
    say!(
        "MFCC (project config, 60 s of 16 kHz audio): f32 {ms32:.2} ms, {x32:.0}× real time; f64 {ms64:.2} ms, {x64:.0}× real time"
    );
    let fig = Figures {
        cpu,
        isa,
        threads,
        device: args.device.clone(),
        results,
        mfcc_x_realtime: x32,
        mfcc_60s_ms: ms32,
        mfcc_f64_x_realtime: x64,
        mfcc_f64_60s_ms: ms64,
    };
    if let Some(path) = &args.json {
        crate::output::write(path, serde_json::to_vec_pretty(&fig)?)?;
    }
    Ok(())
}
