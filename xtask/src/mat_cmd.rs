//! `cargo xtask mat FILE [--json]`: what is inside a MATLAB file (`whos -file` without MATLAB).

use std::path::PathBuf;

use eav::mat::{MatFile, Variable, read_mat};
use serde::Serialize;

/// Arguments of `mat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The MAT file.
    file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Stats {
    min: f64,
    max: f64,
    mean: f64,
    nan: usize,
    inf: usize,
}

#[derive(Serialize)]
struct VarOut<'a> {
    name: &'a str,
    class: String,
    dims: &'a [usize],
    complex: bool,
    compressed: bool,
    stats: Option<Stats>,
}

#[derive(Serialize)]
struct Out<'a> {
    file: String,
    format: &'static str,
    endian: eav::mat::Endian,
    variables: Vec<VarOut<'a>>,
}

fn stats(data: &[f64]) -> Stats {
    let finite: Vec<f64> = data.iter().copied().filter(|v| v.is_finite()).collect();
    let (min, max) =
        finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let mean = if finite.is_empty() { f64::NAN } else { finite.iter().sum::<f64>() / finite.len() as f64 };
    Stats {
        min,
        max,
        mean,
        nan: data.iter().filter(|v| v.is_nan()).count(),
        inf: data.iter().filter(|v| v.is_infinite()).count(),
    }
}

fn describe(v: &Variable) -> VarOut<'_> {
    VarOut {
        name: &v.name,
        class: v.class.name(),
        dims: &v.dims,
        complex: v.complex,
        compressed: v.compressed,
        stats: v.data.as_deref().filter(|d| !d.is_empty()).map(stats),
    }
}

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let file: MatFile = read_mat(&args.file, &|_| true)?;
    let out = Out {
        file: args.file.display().to_string(),
        format: "level5",
        endian: file.endian,
        variables: file.variables.iter().map(describe).collect(),
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    say!("{} (MAT level 5, {:?}-endian): {}", out.file, out.endian, file.header);
    say!(
        "{:<20} {:<16} {:<10} {:>12} {:>12} {:>12} {:>6} {:>6}  flags",
        "name",
        "size",
        "class",
        "min",
        "max",
        "mean",
        "NaN",
        "Inf"
    );
    for v in &out.variables {
        let size = v.dims.iter().map(ToString::to_string).collect::<Vec<_>>().join("×");
        let flags = [(v.complex, "complex"), (v.compressed, "compressed")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, f)| *f)
            .collect::<Vec<_>>()
            .join(",");
        match &v.stats {
            Some(s) => say!(
                "{:<20} {:<16} {:<10} {:>12.5} {:>12.5} {:>12.5} {:>6} {:>6}  {flags}",
                v.name,
                size,
                v.class,
                s.min,
                s.max,
                s.mean,
                s.nan,
                s.inf
            ),
            None => say!(
                "{:<20} {:<16} {:<10} {:>12} {:>12} {:>12} {:>6} {:>6}  {flags}",
                v.name,
                size,
                v.class,
                "",
                "",
                "",
                "",
                ""
            ),
        }
    }
    Ok(())
}
