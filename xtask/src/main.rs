//! `cargo xtask`: the emofuse command line (the cargo-xtask convention, <https://github.com/matklad/cargo-xtask>).
//!
//! Each command lives in its own module with an `Args` struct and a `run` function.

/// `println!` that ignores a closed standard output (`cargo xtask … | head`): the command carries on and
/// still writes its files, where `println!` would panic in the middle of a run.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod bench;
mod compare;
mod device_check;
mod inspect;
mod mat_cmd;
mod mfcc_cmd;
mod output;
mod predict;
mod progress;
mod runtime;
mod stream;
mod sweep;
mod synth;
mod video_cmd;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed pages for reuse: the large, short-lived tensors of training no longer cost a page
/// fault and a page clear per allocation, as they do with the system allocator's `mmap` for big blocks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Emotion recognition from EEG and speech: data, features, training and comparisons.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log progress details (subjects, epochs, test scores) to stderr.
    #[arg(long, global = true)]
    verbose: bool,
    /// CPU threads for the numeric kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Instruction set of the CPU kernels' matrix products: avx512, avx2, neon or scalar (default: the
    /// widest this CPU has, or `$EMOFUSE_ISA`). For measurements and cross-checks: every path gives
    /// the same results within round-off.
    #[arg(long, global = true)]
    isa: Option<encoders::Isa>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a synthetic EAV tree (same layout and file formats as the real dataset).
    Synth(synth::Args),
    /// Validate and summarise an EAV copy; non-zero exit when a subject is unusable.
    Inspect(inspect::Args),
    /// EEG-only vs EEG+audio for a fusion mode (or all), per subject and overall; saves the results.
    Compare(compare::CompareArgs),
    /// Train and test one configuration (EEG-only, or EEG+audio with `--use-audio`).
    Baseline(compare::BaselineArgs),
    /// A grid of fusion modes × channel scales × seeds × subjects: resumable, shardable, SLURM-ready.
    Sweep(sweep::Args),
    /// Merge sweep or shard folders into one report with paired tests across subjects.
    Report(sweep::ReportArgs),
    /// Class probabilities per window from a saved model.
    Predict(predict::Args),
    /// Replay recorded trials as live EEG and audio streams: a prediction every hop, latency, real-time
    /// factor and accuracy.
    Stream(stream::Args),
    /// MFCC features of one WAV file, as JSON.
    Mfcc(mfcc_cmd::Args),
    /// What is inside a MATLAB file: names, classes, dims and statistics of every variable.
    Mat(mat_cmd::Args),
    /// What a video clip holds: codec, profile, chroma, size, frame rate, duration, frames (`--decode`:
    /// decode them all).
    Video(video_cmd::Args),
    /// Throughput figures (MFCC × real time), as a table or JSON.
    Bench(bench::Args),
    /// Whether a device computes what the CPU kernels compute: logits and every gradient of each model
    /// kind on one batch (`--device cuda`; `cpu` checks the candle-op paths a GPU runs).
    DeviceCheck(device_check::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    runtime::fix_thread_count(cli.threads);
    if let Err(e) = runtime::choose_isa(cli.isa) {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    let level = if cli.verbose {
        tracing_subscriber::filter::LevelFilter::INFO
    } else {
        tracing_subscriber::filter::LevelFilter::WARN
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The command runs on a worker of rayon's pool, so the kernels' parallel loops use this thread too;
    // otherwise it sleeps while the pool's threads work, and on 2 cores their idle spinning competes with
    // its serial work between loops (measured: 15–20 % more training throughput this way).
    match rayon::scope(|_| run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Synth(args) => synth::run(&args),
        Command::Compare(args) => compare::run_compare(&args),
        Command::Baseline(args) => compare::run_baseline(&args),
        Command::Predict(args) => predict::run(&args),
        Command::Stream(args) => stream::run(&args),
        Command::Sweep(args) => sweep::run(&args),
        Command::Report(args) => sweep::run_report(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Mfcc(args) => mfcc_cmd::run(&args),
        Command::Mat(args) => mat_cmd::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::DeviceCheck(args) => device_check::run(&args),
        Command::Video(args) => video_cmd::run(&args),
    }
}
