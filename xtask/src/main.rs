//! `cargo xtask`: the emofuse command line (the cargo-xtask convention, <https://github.com/matklad/cargo-xtask>).
//!
//! Each command lives in its own module with an `Args` struct and a `run` function.

mod bench;
mod mfcc_cmd;

use clap::{Parser, Subcommand};

/// Emotion recognition from EEG and speech: data, features, training and comparisons.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MFCC features of one WAV file, as JSON.
    Mfcc(mfcc_cmd::Args),
    /// Throughput figures (MFCC × real time), as a table or JSON.
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Mfcc(args) => mfcc_cmd::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
