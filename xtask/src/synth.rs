//! `cargo xtask synth --out DIR`: a synthetic EAV tree in the released file formats.

use std::path::PathBuf;

use eav::synth::{Signal, SynthConfig, write_synthetic};

/// Arguments of `synth`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to write the tree into (created if needed).
    #[arg(long)]
    out: PathBuf,
    /// Number of subjects.
    #[arg(long, default_value_t = SynthConfig::default().subjects)]
    subjects: u32,
    /// Trials per subject (alternating listening and speaking; multiples of 10 balance the classes).
    #[arg(long, default_value_t = SynthConfig::default().trials)]
    trials: usize,
    /// Class signal relative to noise (higher is easier).
    #[arg(long, default_value_t = SynthConfig::default().snr)]
    snr: f64,
    /// Make the EEG pure noise (no class information).
    #[arg(long)]
    no_eeg_signal: bool,
    /// Make the audio pure noise (no class information).
    #[arg(long)]
    no_audio_signal: bool,
    /// With `--no-audio-signal`: every speaking trial holds a clean voiced tone whose pitch is random,
    /// unrelated to the class (a distractor), instead of noise alone.
    #[arg(long, requires = "no_audio_signal")]
    decoy_audio: bool,
    /// Write plain MAT files (scipy's default) instead of compressed ones (MATLAB's).
    #[arg(long)]
    plain: bool,
    /// Store the EEG as `double` (as MATLAB usually does) instead of `single`.
    #[arg(long)]
    double: bool,
    /// Seed; the same seed writes the same files.
    #[arg(long, default_value_t = SynthConfig::default().seed)]
    seed: u64,
    /// Write no video clips.
    #[arg(long)]
    no_video: bool,
    /// Make the video pure noise around a blob that flickers at a rate unrelated to the class.
    #[arg(long, conflicts_with = "no_video")]
    no_video_signal: bool,
    /// Frame-to-frame brightness jitter of the video's blob, in luma levels (σ): higher makes the video
    /// harder to read (0: the blob follows its class's rate exactly).
    #[arg(long, default_value_t = SynthConfig::default().video_jitter, conflicts_with = "no_video")]
    video_jitter: f64,
    /// Where the class lies: `modalities` (EEG rhythm and speech pitch) or `synchrony` (only in the lag
    /// between an EEG event and an audio event of the same window; see `eav::synth`).
    #[arg(long, default_value = "modalities")]
    signal: Signal,
}

impl Args {
    /// The generator settings these arguments describe.
    pub fn config(&self) -> SynthConfig {
        SynthConfig {
            subjects: self.subjects,
            trials: self.trials,
            snr: self.snr,
            eeg_signal: !self.no_eeg_signal,
            audio_signal: !self.no_audio_signal,
            compress: !self.plain,
            single: !self.double,
            seed: self.seed,
            signal: self.signal,
            decoy_audio: self.decoy_audio,
            video: !self.no_video,
            video_signal: !self.no_video_signal,
            video_jitter: self.video_jitter,
            ..SynthConfig::default()
        }
    }
}

/// Writes a tree with a progress bar.
pub fn generate(out: &std::path::Path, cfg: &SynthConfig) -> anyhow::Result<()> {
    let bar = crate::progress::bar(u64::from(cfg.subjects), "writing subjects");
    write_synthetic(out, cfg, &|_| bar.inc(1))?;
    bar.finish_and_clear();
    crate::output::write(&out.join("synth_config.json"), serde_json::to_vec_pretty(cfg)?)?;
    Ok(())
}

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = args.config();
    generate(&args.out, &cfg)?;
    say!(
        "wrote {} subjects × {} trials of synthetic EAV data to {} (settings in synth_config.json)",
        cfg.subjects,
        cfg.trials,
        args.out.display()
    );
    Ok(())
}
