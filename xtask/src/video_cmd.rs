//! `cargo xtask video FILE [--json]`: what a video clip holds (like `mat` for MAT files), read from its
//! header without decoding.

use std::path::PathBuf;

/// Arguments of `video`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The MP4 clip.
    file: PathBuf,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
    /// Also decode every frame (checks the whole stream; says how long it took). Each frame is
    /// dropped once decoded, as the preprocessing does, so the time is the decoder's alone.
    #[arg(long)]
    decode: bool,
}

/// Runs the command; exits non-zero when the clip cannot be decoded.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let info = video::probe(&args.file)?;
    let problem = info.problem();
    let decoded = if args.decode && problem.is_none() {
        let t = std::time::Instant::now();
        let frames = video::decode_map(&args.file, None, |_| ())?;
        Some((frames.len(), t.elapsed().as_secs_f64()))
    } else {
        None
    };
    if args.json {
        let mut v = serde_json::to_value(&info)?;
        v["file"] = serde_json::Value::from(args.file.display().to_string());
        v["problem"] = serde_json::to_value(&problem)?;
        if let Some((n, s)) = decoded {
            v["decoded_frames"] = n.into();
            v["decode_seconds"] = s.into();
        }
        say!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        say!("{}", args.file.display());
        say!(
            "  codec {} ({}), profile {}, chroma {}, {}-bit{}",
            info.codec,
            info.codec_string.as_deref().unwrap_or("-"),
            if info.profile.is_empty() { "-" } else { &info.profile },
            if info.chroma_format.is_empty() { "-" } else { &info.chroma_format },
            info.bit_depth,
            if info.interlaced { ", interlaced" } else { "" }
        );
        say!(
            "  {}×{}, {:.3} fps, {:.3} s, {} frames",
            info.width,
            info.height,
            info.fps,
            info.duration_s,
            info.frames
        );
        if let Some((n, s)) = decoded {
            say!("  decoded {n} frames in {s:.3} s ({:.0} frames/s)", n as f64 / s.max(1e-9));
        }
        if let Some(p) = &problem {
            say!("  problem: {p}");
        }
    }
    match problem {
        Some(p) => anyhow::bail!("{}: cannot decode: {p}", args.file.display()),
        None => Ok(()),
    }
}
