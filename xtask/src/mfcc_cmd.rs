//! `cargo xtask mfcc --input FILE.wav --output OUT.json [--config project|librosa] [--precision f64|f32]`.

use std::path::PathBuf;

use anyhow::Context;
use mfcc::{Mfcc, MfccConfig};
use serde::Serialize;

/// Which MFCC parameter set to use.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Preset {
    /// 16 kHz, 13 coefficients, n_fft 512, window 400, hop 160, 40 mel bands (the audio encoder's input).
    Project,
    /// librosa's defaults: 22 050 Hz, 20 coefficients, n_fft 2048, hop 512, 128 mel bands.
    Librosa,
}

/// The precision the MFCCs are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Double precision (within 1e-4 of librosa's values).
    F64,
    /// Single precision, as librosa computes for float32 audio (about twice as fast).
    F32,
}

/// Arguments of `mfcc`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The WAV file to analyse.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the JSON result.
    #[arg(long)]
    output: PathBuf,
    /// The parameter set; the audio is resampled to its rate when the file's rate differs.
    #[arg(long, value_enum, default_value = "project")]
    config: Preset,
    /// The precision of the computation (the JSON holds f64 numbers either way).
    #[arg(long, value_enum, default_value = "f64")]
    precision: Precision,
}

#[derive(Serialize)]
struct Output<'a> {
    config: &'a MfccConfig,
    precision: Precision,
    sample_rate: u32,
    /// The file's own rate when it was resampled to `sample_rate`, else `null`.
    resampled_from: Option<u32>,
    shape: [usize; 2],
    /// One row per coefficient, one value per frame.
    mfcc: Vec<&'a [f64]>,
}

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = match args.config {
        Preset::Project => MfccConfig::project(),
        Preset::Librosa => MfccConfig::librosa_default(),
    };
    let audio = eav::audio::read_wav(&args.input)?;
    let native = audio.sample_rate;
    let audio = eav::audio::resample(audio, cfg.sample_rate, &args.input)?;
    let feats = match args.precision {
        Precision::F64 => Mfcc::new(cfg.clone())?.mfcc(&audio.samples),
        Precision::F32 => Mfcc::<f32>::with_precision(cfg.clone())?.mfcc(&audio.samples).map(|f| f.to_f64()),
    }
    .with_context(|| args.input.display().to_string())?;
    let (rows, cols) = feats.shape();
    let out = Output {
        config: &cfg,
        precision: args.precision,
        sample_rate: audio.sample_rate,
        resampled_from: (native != audio.sample_rate).then_some(native),
        shape: [rows, cols],
        mfcc: feats.rows().collect(),
    };
    let json = serde_json::to_vec(&out)?;
    crate::output::write(&args.output, json)?;
    let note = out.resampled_from.map_or(String::new(), |r| format!(", resampled from {r} Hz"));
    say!(
        "{}: {rows} × {cols} MFCC at {} Hz{note} → {}",
        args.input.display(),
        audio.sample_rate,
        args.output.display()
    );
    Ok(())
}
