//! `cargo xtask bench [--json FILE]`: throughput figures.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use mfcc::{Mfcc, MfccConfig};
use serde::Serialize;

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 21)]
    repeats: usize,
}

#[derive(Serialize)]
struct Figures {
    /// Seconds of 16 kHz audio turned into project-config MFCCs per second of wall time (median).
    mfcc_x_realtime: f64,
    /// Median wall time for 60 s of audio, in milliseconds.
    mfcc_60s_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let planner = Mfcc::new(MfccConfig::project())?;
    let y = noise_60s();
    planner.mfcc(&y)?; // warm-up
    let times = (0..args.repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            let m = planner.mfcc(&y);
            let dt = t.elapsed().as_secs_f64();
            m.map(|_| dt)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secs = median(times);
    let fig = Figures { mfcc_x_realtime: 60.0 / secs, mfcc_60s_ms: secs * 1e3 };
    println!(
        "MFCC (project config, 60 s of 16 kHz audio): {:.2} ms, {:.0}× real time",
        fig.mfcc_60s_ms, fig.mfcc_x_realtime
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&fig)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
