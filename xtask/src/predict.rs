//! `cargo xtask predict --checkpoint FILE --data-dir DIR`: class probabilities per window.

use std::path::PathBuf;

use experiments::checkpoint::{load, predict};
use experiments::config::device;

/// Arguments of `predict`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model saved by `compare` or `baseline` (`runs/<run>/checkpoints/*.safetensors`, with its `.json`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// EAV root to predict on.
    #[arg(long)]
    data_dir: PathBuf,
    /// Subjects, e.g. `1,3` (default: all).
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<u32>,
    /// Folder for `predictions.csv` and `predictions.json`.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// `cpu`, or `cuda` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Predict without the audio: a fused model reads every window through its EEG alone.
    #[arg(long)]
    no_audio: bool,
}

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let dev = device(&args.device)?;
    let (model, meta) = load(&args.checkpoint, &dev)?;
    let preds = predict(&model, &meta, &args.data_dir, &args.subjects, args.no_audio)?;
    let mut csv = String::from("subject,trial,window,label,predicted,modalities");
    for e in core_types::Emotion::ALL {
        csv.push_str(&format!(",p_{e}"));
    }
    let routed = preds.iter().any(|p| p.router.is_some());
    if routed {
        for m in fusion::ADAPTIVE_EXPERTS {
            csv.push_str(&format!(",router_{m}"));
        }
    }
    csv.push('\n');
    for p in &preds {
        csv.push_str(&format!(
            "{},{},{},{},{},{}",
            p.subject,
            p.trial,
            p.window,
            p.label,
            p.predicted,
            p.modalities.join("+")
        ));
        for v in p.probabilities.iter().chain(p.router.iter().flatten()) {
            csv.push_str(&format!(",{v:.6}"));
        }
        csv.push('\n');
    }
    let csv_path = args.out.join("predictions.csv");
    crate::output::write(&csv_path, csv)?;
    let json_path = args.out.join("predictions.json");
    crate::output::write(&json_path, serde_json::to_vec_pretty(&preds)?)?;
    let correct = preds.iter().filter(|p| p.label == p.predicted).count();
    say!(
        "{} windows, {} match the label file ({:.1} %); wrote {} and {}",
        preds.len(),
        correct,
        100.0 * correct as f64 / preds.len().max(1) as f64,
        csv_path.display(),
        json_path.display()
    );
    Ok(())
}
