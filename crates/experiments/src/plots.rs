//! SVG plots of a comparison: learning curves, confusion matrices and the learned per-channel scales.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::results::{Results, RunResult};

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.into(), source: std::io::Error::other(e.to_string()) }
}

fn setting(r: &RunResult) -> String {
    if r.modality == "eeg_only" { "eeg_only".into() } else { format!("eeg_audio_{}", r.fusion_mode) }
}

fn settings(results: &Results) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in &results.runs {
        let s = setting(r);
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}

type LineChart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// Draws the series legend of a line chart and writes the file.
fn legend_and_present<'a, 'b: 'a>(
    chart: &mut LineChart<'a, 'b>,
    root: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

const PALETTE: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// Mean training loss per epoch of each setting across subjects.
fn learning_curves(path: &Path, results: &Results) -> Result<()> {
    let names = settings(results);
    let curves: Vec<Vec<f64>> = names
        .iter()
        .map(|n| {
            let runs: Vec<&RunResult> = results.runs.iter().filter(|r| &setting(r) == n).collect();
            let epochs = runs.iter().map(|r| r.history.len()).min().unwrap_or(0);
            (0..epochs)
                .map(|e| runs.iter().map(|r| r.history[e].train_loss).sum::<f64>() / runs.len() as f64)
                .collect()
        })
        .collect();
    let max_epoch = curves.iter().map(Vec::len).max().unwrap_or(1).max(2);
    let max_loss = curves.iter().flatten().copied().fold(0.1f64, f64::max) * 1.1;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("training loss (mean over subjects)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(1f64..max_epoch as f64, 0f64..max_loss)
        .map_err(|e| plot_error(path, e))?;
    chart.configure_mesh().x_desc("epoch").y_desc("cross-entropy").draw().map_err(|e| plot_error(path, e))?;
    for (i, (name, c)) in names.iter().zip(&curves).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                c.iter().enumerate().map(|(e, &l)| ((e + 1) as f64, l)),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    legend_and_present(&mut chart, &root, path)
}

/// The confusion matrix of one setting summed over subjects.
fn confusion(path: &Path, title: &str, m: &[Vec<usize>]) -> Result<()> {
    let m: Vec<Vec<f64>> = m.iter().map(|r| r.iter().map(|&c| c as f64).collect()).collect();
    heatmap(path, title, &m, &["neu", "sad", "ang", "hap", "cal"], ("predicted", "true"), 0)
}

/// A square matrix as coloured cells with their values (`decimals` after the point).
fn heatmap(
    path: &Path,
    title: &str,
    m: &[Vec<f64>],
    names: &[&str],
    axes: (&str, &str),
    decimals: usize,
) -> Result<()> {
    let n = m.len();
    // Colours span the matrix's own range, so near-uniform maps still show their structure.
    let max = m.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = m.iter().flatten().copied().fold(f64::INFINITY, f64::min).min(max);
    let span = (max - min).max(1e-12);
    let root = SVGBackend::new(path, (460, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d(0i32..n as i32, 0i32..n as i32)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .x_labels(n)
        .y_labels(n)
        .x_label_formatter(&|v| names.get(*v as usize).copied().unwrap_or("").to_string())
        .y_label_formatter(&|v| {
            let row = usize::try_from(*v).ok().filter(|&v| v < n).map(|v| n - 1 - v);
            row.and_then(|r| names.get(r)).copied().unwrap_or("").to_string()
        })
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (t, row) in m.iter().enumerate() {
        for (p, &value) in row.iter().enumerate() {
            let y = (n - 1 - t) as i32;
            let shade = 1.0 - (value - min) / span;
            let color = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(p as i32, y), (p as i32 + 1, y + 1)],
                    color.filled(),
                )))
                .map_err(|e| plot_error(path, e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{value:.decimals$}"),
                    (p as i32, y + 1),
                    ("sans-serif", 12),
                )))
                .map_err(|e| plot_error(path, e))?;
        }
    }
    root.present().map_err(|e| plot_error(path, e))
}

/// The learned `eeg_scale` and `audio_scale` of one fused setting, mean over subjects, per latent channel.
fn scales(path: &Path, title: &str, eeg: &[f64], audio: &[f64]) -> Result<()> {
    let lo = eeg.iter().chain(audio).copied().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = eeg.iter().chain(audio).copied().fold(f64::NEG_INFINITY, f64::max).max(1.5);
    let root = SVGBackend::new(path, (720, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..eeg.len().max(audio.len()) as f64, lo..hi)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("latent channel")
        .y_desc("scale")
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (name, v, color) in [("eeg_scale", eeg, BLUE), ("audio_scale", audio, RED)] {
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(i, &s)| (i as f64, s)),
                color.stroke_width(1),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    legend_and_present(&mut chart, &root, path)
}

/// Writes every plot of `results` into `dir`; returns the files written.
///
/// # Errors
/// [`Error::Io`] naming the file that could not be drawn.
pub fn write_plots(dir: &Path, results: &Results) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let p = dir.join("learning_curves.svg");
    learning_curves(&p, results)?;
    files.push(p);
    for name in settings(results) {
        let runs: Vec<&RunResult> = results.runs.iter().filter(|r| setting(r) == name).collect();
        let n = runs.first().map_or(5, |r| r.confusion.len());
        let mut sum = vec![vec![0usize; n]; n];
        for r in &runs {
            for (t, row) in r.confusion.iter().enumerate() {
                for (q, c) in row.iter().enumerate() {
                    sum[t][q] += c;
                }
            }
        }
        let p = dir.join(format!("confusion_{name}.svg"));
        confusion(&p, &format!("{name}: test confusion (all subjects)"), &sum)?;
        files.push(p);
        let mean = |get: fn(&RunResult) -> Option<&Vec<f32>>| -> Option<Vec<f64>> {
            let vs: Vec<&Vec<f32>> = runs.iter().filter_map(|r| get(r)).collect();
            let len = vs.first()?.len();
            Some(
                (0..len).map(|i| vs.iter().map(|v| f64::from(v[i])).sum::<f64>() / vs.len() as f64).collect(),
            )
        };
        if let (Some(e), Some(a)) = (
            mean(|r| r.eeg_scale.as_ref().map(|s| &s.values)),
            mean(|r| r.audio_scale.as_ref().map(|s| &s.values)),
        ) {
            let p = dir.join(format!("scales_{name}.svg"));
            scales(&p, &format!("{name}: learned per-channel scales (mean over subjects)"), &e, &a)?;
            files.push(p);
        }
        if let Some(g) = mean(|r| r.gate_mean.as_ref()) {
            let half = g.len() / 2;
            let p = dir.join(format!("gates_{name}.svg"));
            scales(&p, &format!("{name}: mean gate value per input (test windows)"), &g[..half], &g[half..])?;
            files.push(p);
        }
        let tokens: Vec<String> = (0..8).map(|i| format!("t{i}")).collect();
        let token_names: Vec<&str> = tokens.iter().map(String::as_str).collect();
        for (dir_name, get) in [
            ("e2a", (|r: &RunResult| r.attention_e2a.as_ref()) as fn(&RunResult) -> Option<&Vec<Vec<f32>>>),
            ("a2e", |r: &RunResult| r.attention_a2e.as_ref()),
        ] {
            let maps: Vec<&Vec<Vec<f32>>> = runs.iter().filter_map(|r| get(r)).collect();
            let Some(first) = maps.first() else { continue };
            let avg: Vec<Vec<f64>> = (0..first.len())
                .map(|i| {
                    (0..first[i].len())
                        .map(|j| maps.iter().map(|m| f64::from(m[i][j])).sum::<f64>() / maps.len() as f64)
                        .collect()
                })
                .collect();
            let p = dir.join(format!("attention_{dir_name}_{name}.svg"));
            let title =
                if dir_name == "e2a" { "EEG tokens → audio tokens" } else { "audio tokens → EEG tokens" };
            heatmap(
                &p,
                &format!("{name}: attention {title}"),
                &avg,
                &token_names,
                ("key token", "query token"),
                2,
            )?;
            files.push(p);
        }
    }
    Ok(files)
}

/// Per-subject accuracy of each setting (mean over seeds): one line per setting.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn per_subject(
    path: &Path,
    data: &std::collections::BTreeMap<String, std::collections::BTreeMap<u32, f64>>,
) -> Result<()> {
    let max_subject = data.values().flat_map(|m| m.keys()).copied().max().unwrap_or(1).max(2);
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("test accuracy per subject (mean over seeds)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0.5f64..f64::from(max_subject) + 0.5, 0f64..1f64)
        .map_err(|e| plot_error(path, e))?;
    chart.configure_mesh().x_desc("subject").y_desc("accuracy").draw().map_err(|e| plot_error(path, e))?;
    for (i, (name, points)) in data.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(s, a)| (f64::from(*s), *a)),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|(s, a)| Circle::new((f64::from(*s), *a), 3, color.filled())))
            .map_err(|e| plot_error(path, e))?;
    }
    legend_and_present(&mut chart, &root, path)
}
