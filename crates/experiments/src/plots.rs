//! SVG plots of a comparison: learning curves, confusion matrices and the learned per-channel scales.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};
use crate::results::{Results, RunResult};

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io { path: path.into(), source: std::io::Error::other(e.to_string()) }
}

fn setting(r: &RunResult) -> String {
    if r.modality.ends_with("_only") {
        r.modality.clone()
    } else {
        format!("{}_{}", r.modality, r.fusion_mode)
    }
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

const PALETTE: [RGBColor; 8] =
    [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK, RGBColor(230, 140, 0), RGBColor(120, 80, 40)];

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

/// Accuracy per robustness condition, one line per model (points only where a condition applies).
fn robustness(path: &Path, rows: &[crate::robustness::RobustnessRow]) -> Result<()> {
    let mut conditions: Vec<String> = Vec::new();
    let mut models: Vec<(String, Option<String>)> = Vec::new();
    for r in rows {
        if !conditions.contains(&r.condition) {
            conditions.push(r.condition.clone());
        }
        let m = (r.modality.clone(), r.fusion_mode.clone());
        if !models.contains(&m) {
            models.push(m);
        }
    }
    let root = SVGBackend::new(path, (860, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("test accuracy per condition (mean over subjects)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d(-0.5f64..conditions.len() as f64 - 0.5, 0f64..1f64)
        .map_err(|e| plot_error(path, e))?;
    let names = conditions.clone();
    chart
        .configure_mesh()
        .x_labels(conditions.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.round();
            if (x - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            names.get(i as usize).cloned().unwrap_or_default()
        })
        .y_desc("accuracy")
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (i, (modality, mode)) in models.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let points: Vec<(f64, f64)> = conditions
            .iter()
            .enumerate()
            .filter_map(|(k, c)| {
                rows.iter()
                    .find(|r| &r.modality == modality && &r.fusion_mode == mode && &r.condition == c)
                    .map(|r| (k as f64, r.accuracy_mean))
            })
            .collect();
        let label = mode.as_ref().map_or(modality.clone(), |m| format!("{modality} {m}"));
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| plot_error(path, e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| plot_error(path, e))?;
    }
    legend_and_present(&mut chart, &root, path)
}

/// The confusion matrix of one setting summed over subjects.
fn confusion(path: &Path, title: &str, m: &[Vec<usize>]) -> Result<()> {
    let m: Vec<Vec<f64>> = m.iter().map(|r| r.iter().map(|&c| c as f64).collect()).collect();
    let names: Vec<String> = ["neu", "sad", "ang", "hap", "cal"].map(String::from).to_vec();
    heatmap(path, title, &m, (&names, &names), ("predicted", "true"))
}

/// A matrix as coloured cells, row 0 at the top, with a colour bar that shows the real range of its
/// values (colours span the matrix's own minimum to maximum, so the bar is what tells a map whose weights
/// all lie within 0.12–0.13 from a structured one). Cells carry their values when the matrix is small.
fn heatmap(
    path: &Path,
    title: &str,
    m: &[Vec<f64>],
    (row_names, col_names): (&[String], &[String]),
    axes: (&str, &str),
) -> Result<()> {
    let (rows, cols) = (m.len(), m.first().map_or(0, Vec::len));
    let max = m.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = m.iter().flatten().copied().fold(f64::INFINITY, f64::min).min(max);
    let span = (max - min).max(1e-12);
    let shade = |v: f64| {
        let s = 1.0 - (v - min) / span;
        RGBColor((255.0 * s) as u8, (255.0 * s) as u8, 255)
    };
    let integers = m.iter().flatten().all(|v| v.fract() == 0.0);
    let root = SVGBackend::new(path, (600, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let (left, right) = root.split_horizontally(480);
    let mut chart = ChartBuilder::on(&left)
        .caption(title, ("sans-serif", 13))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(48)
        .build_cartesian_2d((0..cols as i32 - 1).into_segmented(), (0..rows as i32 - 1).into_segmented())
        .map_err(|e| plot_error(path, e))?;
    // Row 0 at the top: the y value of row t is rows − 1 − t.
    let name = |names: &[String], v: &SegmentValue<i32>, flip: bool| -> String {
        let SegmentValue::CenterOf(v) = v else { return String::new() };
        let i = usize::try_from(*v).ok().filter(|&i| i < if flip { rows } else { cols });
        i.map(|i| if flip { rows - 1 - i } else { i }).and_then(|i| names.get(i)).cloned().unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .x_labels(cols.min(12))
        .y_labels(rows.min(12))
        .label_style(("sans-serif", 12))
        .x_label_formatter(&|v| name(col_names, v, false))
        .y_label_formatter(&|v| name(row_names, v, true))
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for (t, row) in m.iter().enumerate() {
        let y = (rows - 1 - t) as i32;
        chart
            .draw_series(row.iter().enumerate().map(|(p, &v)| {
                let (x0, x1) = (SegmentValue::Exact(p as i32), SegmentValue::Exact(p as i32 + 1));
                Rectangle::new(
                    [(x0, SegmentValue::Exact(y)), (x1, SegmentValue::Exact(y + 1))],
                    shade(v).filled(),
                )
            }))
            .map_err(|e| plot_error(path, e))?;
        if rows <= 12 && cols <= 12 {
            chart
                .draw_series(row.iter().enumerate().map(|(p, &v)| {
                    let text = if integers { format!("{v:.0}") } else { format!("{v:.3}") };
                    let at = (SegmentValue::CenterOf(p as i32), SegmentValue::CenterOf(y));
                    let ink: &'static RGBColor = if (v - min) / span > 0.6 { &WHITE } else { &BLACK };
                    let style = TextStyle::from(("sans-serif", 11).into_font()).color(ink);
                    Text::new(text, at, style.pos(Pos::new(HPos::Center, VPos::Center)))
                }))
                .map_err(|e| plot_error(path, e))?;
        }
    }
    // The colour bar: the real range of the values.
    let mut bar = ChartBuilder::on(&right)
        .margin_top(40)
        .margin_bottom(52)
        .margin_right(8)
        .set_label_area_size(LabelAreaPosition::Right, 64)
        .build_cartesian_2d(0f64..1.0, min..min + span)
        .map_err(|e| plot_error(path, e))?;
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .label_style(("sans-serif", 12))
        .y_label_formatter(&|v| if integers { format!("{v:.0}") } else { format!("{v:.4}") })
        .draw()
        .map_err(|e| plot_error(path, e))?;
    let steps = 64;
    bar.draw_series((0..steps).map(|k| {
        let (a, b) = (min + span * k as f64 / steps as f64, min + span * (k + 1) as f64 / steps as f64);
        Rectangle::new([(0.0, a), (1.0, b)], shade((a + b) / 2.0).filled())
    }))
    .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// Per-channel curves of one fused setting (the learned `{modality}_scale`s, or the mean gate values), one
/// line per modality.
fn scales(path: &Path, title: &str, series: &[(String, &[f64])]) -> Result<()> {
    let all = || series.iter().flat_map(|(_, v)| v.iter().copied());
    let lo = all().fold(f64::INFINITY, f64::min).min(0.0);
    let hi = all().fold(f64::NEG_INFINITY, f64::max).max(1.5);
    let len = series.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
    let root = SVGBackend::new(path, (720, 380)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..len as f64, lo..hi)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("latent channel")
        .y_desc("scale")
        .draw()
        .map_err(|e| plot_error(path, e))?;
    for ((name, v), color) in series.iter().zip([BLUE, RED, GREEN].into_iter().cycle()) {
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(i, &s)| (i as f64, s)),
                color.stroke_width(1),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(name.as_str())
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
    if !results.robustness.is_empty() {
        let p = dir.join("robustness.svg");
        robustness(&p, &results.robustness)?;
        files.push(p);
    }
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
        let learned: Vec<(String, Vec<f64>)> = [
            ("eeg_scale", mean(|r| r.eeg_scale.as_ref().map(|s| &s.values))),
            ("audio_scale", mean(|r| r.audio_scale.as_ref().map(|s| &s.values))),
            ("video_scale", mean(|r| r.video_scale.as_ref().map(|s| &s.values))),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n.to_owned(), v)))
        .collect();
        if learned.len() >= 2 {
            let series: Vec<(String, &[f64])> =
                learned.iter().map(|(n, v)| (n.clone(), v.as_slice())).collect();
            let p = dir.join(format!("scales_{name}.svg"));
            scales(&p, &format!("{name}: learned per-channel scales (mean over subjects)"), &series)?;
            files.push(p);
        }
        if let Some(g) = mean(|r| r.gate_mean.as_ref()) {
            // One block of gate values per fused modality, in the order of the setting's name.
            let modalities: Vec<&str> = runs.first().map_or(vec![], |r| r.modality.split('_').collect());
            let k = modalities.len().max(1);
            let series: Vec<(String, &[f64])> = g
                .chunks(g.len().div_ceil(k).max(1))
                .zip(modalities.iter().chain(std::iter::repeat(&"")))
                .map(|(v, m)| (format!("{m} gate"), v))
                .collect();
            let p = dir.join(format!("gates_{name}.svg"));
            scales(&p, &format!("{name}: mean gate value per input (test windows)"), &series)?;
            files.push(p);
        }
        let by_class: Vec<&Vec<Vec<f64>>> = runs.iter().filter_map(|r| r.router_by_class.as_ref()).collect();
        if let Some(first) = by_class.first() {
            let avg: Vec<Vec<f64>> = (0..first.len())
                .map(|c| {
                    (0..first[c].len())
                        .map(|k| by_class.iter().map(|m| m[c][k]).sum::<f64>() / by_class.len() as f64)
                        .collect()
                })
                .collect();
            let classes: Vec<String> = core_types::Emotion::ALL.iter().map(ToString::to_string).collect();
            let modes: Vec<String> = fusion::ADAPTIVE_EXPERTS.iter().map(ToString::to_string).collect();
            let p = dir.join(format!("router_{name}.svg"));
            heatmap(
                &p,
                &format!("{name}: mean router weight per true class"),
                &avg,
                (&classes, &modes),
                ("mode", "true class"),
            )?;
            files.push(p);
        }
        let entropy = |k: usize| -> Option<f64> {
            let vs: Vec<f64> =
                runs.iter().filter_map(|r| r.attention_entropy.as_ref()?.get(k).copied()).collect();
            (!vs.is_empty()).then(|| vs.iter().sum::<f64>() / vs.len() as f64)
        };
        for (k, (dir_name, get)) in [
            ("e2a", (|r: &RunResult| r.attention_e2a.as_ref()) as fn(&RunResult) -> Option<&Vec<Vec<f32>>>),
            ("a2e", |r: &RunResult| r.attention_a2e.as_ref()),
        ]
        .into_iter()
        .enumerate()
        {
            let maps: Vec<&Vec<Vec<f32>>> = runs.iter().filter_map(|r| get(r)).collect();
            let Some(first) = maps.first() else { continue };
            let avg: Vec<Vec<f64>> = (0..first.len())
                .map(|i| {
                    (0..first[i].len())
                        .map(|j| maps.iter().map(|m| f64::from(m[i][j])).sum::<f64>() / maps.len() as f64)
                        .collect()
                })
                .collect();
            let names = |n: usize| -> Vec<String> { (0..n).map(|i| format!("{i}")).collect() };
            // Temporal maps (also the ones an adaptive model reports) run over time steps.
            let over_time = name.contains("temporal") || name.contains("adaptive");
            let (what, unit) = if over_time { ("steps", "step") } else { ("tokens", "token") };
            let (from, to) = if dir_name == "e2a" { ("EEG", "audio") } else { ("audio", "EEG") };
            let p = dir.join(format!("attention_{dir_name}_{name}.svg"));
            let h = entropy(k).map_or(String::new(), |h| format!(", entropy {h:.3} of uniform"));
            heatmap(
                &p,
                &format!("{name}: {from} {what} → {to} {what}{h}"),
                &avg,
                (&names(avg.len()), &names(first.first().map_or(0, Vec::len))),
                (&format!("key {unit} ({to})"), &format!("query {unit} ({from})")),
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
