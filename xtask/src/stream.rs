//! `cargo xtask stream --checkpoint FILE`: recorded trials replayed as live streams through
//! [`online::Predictor`], one row per hop, with latency, real-time factor and accuracy; with
//! `--lsl-eeg NAME` (feature `lsl`), live Lab Streaming Layer streams instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use eav::dataset::Sample;
use eav::subject::{Subject, discover, load_subject};
use online::{AudioState, Hop, Predictor, Source, StreamConfig};
use serde::Serialize;

/// Arguments of `stream`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model saved by `compare` or `baseline` (train it with `--causal` to see live what it saw in
    /// training).
    #[arg(long)]
    checkpoint: PathBuf,
    /// EAV root whose trials are replayed (default: the built-in synthetic tree).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Subjects, e.g. `1,3` (default: all).
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<u32>,
    /// Chunk length in milliseconds (EEG and audio alike).
    #[arg(long, default_value_t = 40.0)]
    chunk_ms: f64,
    /// Milliseconds between predictions (a multiple of 10).
    #[arg(long, default_value_t = 500.0)]
    hop_ms: f64,
    /// Pace the chunks at the recording's speed (otherwise as fast as they are processed).
    #[arg(long)]
    realtime: bool,
    /// Write the summary and every hop as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every hop as CSV here.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Predict live from this Lab Streaming Layer EEG stream (by name) instead of replaying recorded
    /// trials (needs the `lsl` feature and liblsl: see docs/guide.md).
    #[arg(long)]
    lsl_eeg: Option<String>,
    /// With `--lsl-eeg`: the LSL audio stream (by name); without it, EEG alone.
    #[arg(long, requires = "lsl_eeg")]
    lsl_audio: Option<String>,
    /// With `--lsl-eeg`: stop after this many seconds of EEG have arrived.
    #[arg(long, default_value_t = 60.0, requires = "lsl_eeg")]
    lsl_seconds: f64,
}

/// One hop of a replayed trial.
#[derive(Debug, Serialize)]
struct Row {
    subject: u32,
    trial: usize,
    speaking: bool,
    /// Whether the trial is in the test part of the official split (the last 30 % of its class and kind).
    test: bool,
    end_s: f64,
    label: String,
    predicted: String,
    probabilities: Vec<f32>,
    modalities: Vec<String>,
    audio: AudioState,
    latency_ms: f64,
}

/// What `--json` holds.
#[derive(Debug, Serialize)]
struct Summary {
    cpu: String,
    checkpoint: PathBuf,
    model: String,
    trained_causal: bool,
    chunk_ms: f64,
    hop_ms: f64,
    /// `hops` and their latency: `latency_ms_p50`, `latency_ms_p99`, `latency_ms_max`.
    #[serde(flatten)]
    latency: Latency,
    /// The same figures for each set of modalities the hops used (`"eeg+audio"`, `"eeg"`, `"audio"`):
    /// a hop with speech runs the audio pathway and every attention over its steps, one without runs
    /// the EEG pathway alone, so the two cost differently and the overall p99 is mostly the first's.
    latency_by_modalities: BTreeMap<String, Latency>,
    /// Stream seconds replayed per wall second (unpaced: the pushes alone).
    real_time_factor: f64,
    accuracy: f64,
    /// Accuracy over the hops of test trials only.
    accuracy_test: f64,
    peak_rss_mib: Option<f64>,
    events: Vec<online::Event>,
    rows: Vec<Row>,
}

/// The trials of `s` in the test part of the official split, computed per kind (speaking, listening)
/// like the training's split of its windows.
fn test_trials(s: &Subject) -> Vec<bool> {
    let mut test = vec![false; s.trials.len()];
    for speaking in [true, false] {
        let samples: Vec<Sample> = s
            .trials
            .iter()
            .filter(|t| t.speaking == speaking)
            .map(|t| Sample {
                subject: s.id,
                trial: t.index,
                window: 0,
                emotion: t.emotion,
                speaking,
                eeg: Vec::new(),
                mfcc: None,
                video: None,
            })
            .collect();
        for i in eav::split::official(&samples, 0.7, 0.0).test {
            test[samples[i].trial] = true;
        }
    }
    test
}

/// Latency percentiles of a group of hops.
#[derive(Debug, Serialize)]
struct Latency {
    hops: usize,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
}

/// One line per set of modalities when the hops used more than one.
fn say_latency_groups(groups: &BTreeMap<String, Latency>) {
    if groups.len() > 1 {
        for (k, g) in groups {
            say!(
                "  hops with {k}: {} (latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)",
                g.hops,
                g.latency_ms_p50,
                g.latency_ms_p99,
                g.latency_ms_max
            );
        }
    }
}

/// [`Latency`] per set of modalities (joined with `+`), from `(modalities, latency)` pairs.
fn latency_by_modalities<'a>(hops: impl Iterator<Item = (&'a [String], f64)>) -> BTreeMap<String, Latency> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (modalities, ms) in hops {
        groups.entry(modalities.join("+")).or_default().push(ms);
    }
    groups.into_iter().map(|(k, v)| (k, Latency::of(v))).collect()
}

impl Latency {
    /// The figures of hops that took `ms` milliseconds each.
    fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        Self {
            hops: ms.len(),
            latency_ms_p50: percentile(&ms, 0.5),
            latency_ms_p99: percentile(&ms, 0.99),
            latency_ms_max: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs the command.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.chunk_ms > 0.0 && args.chunk_ms.is_finite(), "--chunk-ms must be positive");
    if let Some(eeg) = &args.lsl_eeg {
        return live(args, eeg);
    }
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => crate::compare::default_data()?,
    };
    let cfg = StreamConfig {
        hop_s: args.hop_ms / 1000.0,
        max_skew_s: (2.0 * args.chunk_ms / 1000.0).max(1.0),
        ..StreamConfig::default()
    };
    let subjects: Vec<_> = discover(&data_dir)?
        .into_iter()
        .filter(|s| args.subjects.is_empty() || args.subjects.contains(&s.id))
        .collect();
    anyhow::ensure!(!subjects.is_empty(), "no subject folders under {}", data_dir.display());
    let mut predictor: Option<Predictor> = None;
    let (mut rows, mut events) = (Vec::new(), Vec::new());
    let (mut stream_s, mut wall) = (0.0, Duration::ZERO);
    let bar = crate::progress::bar(subjects.len() as u64, "streaming");
    for sd in &subjects {
        bar.set_message(format!("subject {}", sd.id));
        let subject = load_subject(sd)?;
        let test = test_trials(&subject);
        for trial in &subject.trials {
            let audio = match &trial.audio {
                Some(p) if trial.speaking => Some(eav::audio::read_wav(p)?),
                _ => None,
            };
            let rate = audio.as_ref().map_or(16_000, |a| a.sample_rate);
            let source =
                Source { eeg_rate: eav::subject::EEG_RATE, eeg_channels: subject.channels, audio_rate: rate };
            if predictor.as_ref().is_none_or(|p| p.source() != &source) {
                predictor = Some(
                    Predictor::from_checkpoint(&args.checkpoint, source, cfg.clone())
                        .with_context(|| format!("loading {}", args.checkpoint.display()))?,
                );
            }
            let Some(p) = predictor.as_mut() else { continue };
            p.reset();
            let replay = replay(p, &subject, trial.index, audio.as_ref(), args)?;
            stream_s += subject.samples_per_trial as f64 / eav::subject::EEG_RATE;
            wall += replay.wall;
            events.extend(p.take_events());
            for (hop, latency) in replay.hops {
                rows.push(Row {
                    subject: subject.id,
                    trial: trial.index,
                    speaking: trial.speaking,
                    test: test[trial.index],
                    end_s: hop.end_s,
                    label: trial.emotion.to_string(),
                    predicted: hop.predicted.to_string(),
                    probabilities: hop.probabilities,
                    modalities: hop.modalities.iter().map(ToString::to_string).collect(),
                    audio: hop.audio,
                    latency_ms: latency.as_secs_f64() * 1e3,
                });
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let p = predictor.context("no trial to replay")?;
    let accuracy = |rows: &mut dyn Iterator<Item = &Row>| {
        let (n, ok) = rows.fold((0, 0), |(n, ok), r| (n + 1, ok + usize::from(r.label == r.predicted)));
        if n == 0 { f64::NAN } else { ok as f64 / n as f64 }
    };
    let summary = Summary {
        cpu: crate::inspect::cpu_field("model name").unwrap_or_default(),
        checkpoint: args.checkpoint.clone(),
        model: p.meta().model.name().to_owned(),
        trained_causal: p.trained_causal(),
        chunk_ms: args.chunk_ms,
        hop_ms: args.hop_ms,
        latency: Latency::of(rows.iter().map(|r| r.latency_ms).collect()),
        latency_by_modalities: latency_by_modalities(rows.iter().map(|r| (&r.modalities[..], r.latency_ms))),
        real_time_factor: stream_s / wall.as_secs_f64().max(1e-9),
        accuracy: accuracy(&mut rows.iter()),
        accuracy_test: accuracy(&mut rows.iter().filter(|r| r.test)),
        peak_rss_mib: crate::inspect::peak_rss_mib(),
        events,
        rows,
    };
    if !summary.trained_causal {
        say!(
            "note: the model was trained on zero-phase windows; live windows are causal (train with --causal)"
        );
    }
    say!(
        "{} hops of {} ({} ms chunks, hop {} ms): latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
         {:.0}× real time; accuracy {:.3} (test trials {:.3}); peak memory {:.0} MiB",
        summary.latency.hops,
        summary.model,
        args.chunk_ms,
        args.hop_ms,
        summary.latency.latency_ms_p50,
        summary.latency.latency_ms_p99,
        summary.latency.latency_ms_max,
        summary.real_time_factor,
        summary.accuracy,
        summary.accuracy_test,
        summary.peak_rss_mib.unwrap_or(f64::NAN)
    );
    say_latency_groups(&summary.latency_by_modalities);
    for e in &summary.events {
        say!("{} at {:.3} s: {}", e.stream, e.at_s, e.what);
    }
    if let Some(path) = &args.csv {
        let mut csv =
            String::from("subject,trial,speaking,test,end_s,label,predicted,modalities,audio,latency_ms");
        for e in core_types::Emotion::ALL {
            csv.push_str(&format!(",p_{e}"));
        }
        csv.push('\n');
        for r in &summary.rows {
            csv.push_str(&format!(
                "{},{},{},{},{:.2},{},{},{},{},{:.4}",
                r.subject,
                r.trial,
                r.speaking,
                r.test,
                r.end_s,
                r.label,
                r.predicted,
                r.modalities.join("+"),
                serde_json::to_value(r.audio)?.as_str().unwrap_or_default(),
                r.latency_ms
            ));
            for v in &r.probabilities {
                csv.push_str(&format!(",{v:.6}"));
            }
            csv.push('\n');
        }
        crate::output::write(path, csv)?;
        say!("wrote {}", path.display());
    }
    if let Some(path) = &args.json {
        crate::output::write(path, serde_json::to_vec_pretty(&summary)?)?;
        say!("wrote {}", path.display());
    }
    Ok(())
}

struct Replay {
    /// Hops with the time from the start of the push that completed each to its prediction.
    hops: Vec<(Hop, Duration)>,
    /// Time spent in the pushes.
    wall: Duration,
}

/// Pushes one trial as chunks of `chunk_ms` (EEG, then the audio of the same span), paced at the
/// recording's speed with `--realtime`.
fn replay(
    p: &mut Predictor,
    subject: &Subject,
    trial: usize,
    audio: Option<&eav::audio::MonoAudio>,
    args: &Args,
) -> anyhow::Result<Replay> {
    let ch = subject.channels;
    let n = subject.samples_per_trial;
    let raw = subject.eeg_trial(trial);
    let mut frames = vec![0.0f32; raw.len()];
    for c in 0..ch {
        for i in 0..n {
            frames[i * ch + c] = raw[c * n + i];
        }
    }
    let chunk_s = args.chunk_ms / 1000.0;
    let eeg_chunk = ((chunk_s * eav::subject::EEG_RATE).round() as usize).max(1);
    let start = Instant::now();
    let (mut hops, mut wall) = (Vec::new(), Duration::ZERO);
    let mut timed = |f: &mut dyn FnMut() -> online::Result<Vec<Hop>>| -> anyhow::Result<()> {
        let t0 = Instant::now();
        let out = f()?;
        let took = t0.elapsed();
        wall += took;
        hops.extend(out.into_iter().map(|h| (h, took)));
        Ok(())
    };
    for k in 0..n.div_ceil(eeg_chunk) {
        let t = (k * eeg_chunk) as f64 / eav::subject::EEG_RATE;
        if args.realtime {
            // A chunk is complete once its last sample is recorded.
            let due = Duration::from_secs_f64(t + chunk_s);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let e = &frames[k * eeg_chunk * ch..((k + 1) * eeg_chunk).min(n) * ch];
        timed(&mut || p.push_eeg(t, ch, e))?;
        if let Some(a) = audio {
            let rate = f64::from(a.sample_rate);
            let (from, to) = ((t * rate).round() as usize, ((t + chunk_s) * rate).round() as usize);
            let (from, to) = (from.min(a.samples.len()), to.min(a.samples.len()));
            if from < to {
                timed(&mut || p.push_audio(from as f64 / rate, &a.samples[from..to]))?;
            }
        }
    }
    timed(&mut || p.end_audio())?;
    Ok(Replay { hops, wall })
}

/// One hop of a live stream.
#[cfg(feature = "lsl")]
#[derive(Debug, Serialize)]
struct LiveRow {
    /// The window's end on LSL's clock (seconds).
    end_s: f64,
    predicted: String,
    probabilities: Vec<f32>,
    modalities: Vec<String>,
    audio: AudioState,
    /// The poll that completed the hop: pulling what had arrived, preprocessing, the model.
    latency_ms: f64,
}

/// What `--json` holds for a live stream.
#[cfg(feature = "lsl")]
#[derive(Debug, Serialize)]
struct LiveSummary {
    cpu: String,
    checkpoint: PathBuf,
    model: String,
    trained_causal: bool,
    lsl_eeg: String,
    lsl_audio: Option<String>,
    liblsl_version: i32,
    /// EEG and audio frames received.
    eeg_frames: usize,
    audio_frames: usize,
    /// `hops` and their latency: `latency_ms_p50`, `latency_ms_p99`, `latency_ms_max`.
    #[serde(flatten)]
    latency: Latency,
    /// As [`Summary`]'s.
    latency_by_modalities: BTreeMap<String, Latency>,
    peak_rss_mib: Option<f64>,
    events: Vec<online::Event>,
    rows: Vec<LiveRow>,
}

#[cfg(not(feature = "lsl"))]
fn live(_args: &Args, _eeg: &str) -> anyhow::Result<()> {
    anyhow::bail!(
        "--lsl-eeg needs the lsl feature: cargo run -p xtask --release --features lsl -- stream … (and liblsl: docs/guide.md)"
    )
}

/// Predicts from live LSL streams until `--lsl-seconds` of EEG have arrived.
#[cfg(feature = "lsl")]
fn live(args: &Args, eeg: &str) -> anyhow::Result<()> {
    use online::lsl::{LiveSource, Lsl};
    anyhow::ensure!(args.csv.is_none(), "--csv is for replays; a live stream writes --json");
    anyhow::ensure!(args.lsl_seconds > 0.0, "--lsl-seconds must be positive");
    let lsl = Lsl::load()?;
    say!(
        "liblsl {}: waiting for LSL stream {eeg:?}{}",
        lsl.version(),
        args.lsl_audio.as_ref().map_or(String::new(), |a| format!(" and {a:?}"))
    );
    let mut source = LiveSource::open(&lsl, eeg, args.lsl_audio.as_deref(), 30.0)?;
    let cfg = StreamConfig { hop_s: args.hop_ms / 1000.0, ..StreamConfig::default() };
    let mut p = Predictor::from_checkpoint(&args.checkpoint, source.source(), cfg)
        .with_context(|| format!("loading {}", args.checkpoint.display()))?;
    let eeg_rate = source.source().eeg_rate;
    let mut rows = Vec::new();
    let push = |hops: Vec<Hop>, took: Duration, rows: &mut Vec<LiveRow>| {
        for hop in hops {
            say!(
                "{:.2} s: {} ({})",
                hop.end_s,
                hop.predicted,
                hop.modalities.iter().map(ToString::to_string).collect::<Vec<_>>().join("+")
            );
            rows.push(LiveRow {
                end_s: hop.end_s,
                predicted: hop.predicted.to_string(),
                probabilities: hop.probabilities,
                modalities: hop.modalities.iter().map(ToString::to_string).collect(),
                audio: hop.audio,
                latency_ms: took.as_secs_f64() * 1e3,
            });
        }
    };
    while (source.received().0 as f64) < args.lsl_seconds * eeg_rate {
        // Without waiting inside the poll, its time is the work alone; sleep while nothing arrives.
        let t0 = Instant::now();
        let hops = source.poll(&mut p, 0.0)?;
        let took = t0.elapsed();
        if hops.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
        push(hops, took, &mut rows);
    }
    let t0 = Instant::now();
    let hops = source.flush(&mut p)?;
    push(hops, t0.elapsed(), &mut rows);
    let (eeg_frames, audio_frames) = source.received();
    let summary = LiveSummary {
        cpu: crate::inspect::cpu_field("model name").unwrap_or_default(),
        checkpoint: args.checkpoint.clone(),
        model: p.meta().model.name().to_owned(),
        trained_causal: p.trained_causal(),
        lsl_eeg: eeg.to_owned(),
        lsl_audio: args.lsl_audio.clone(),
        liblsl_version: lsl.version(),
        eeg_frames,
        audio_frames,
        latency: Latency::of(rows.iter().map(|r| r.latency_ms).collect()),
        latency_by_modalities: latency_by_modalities(rows.iter().map(|r| (&r.modalities[..], r.latency_ms))),
        peak_rss_mib: crate::inspect::peak_rss_mib(),
        events: p.take_events(),
        rows,
    };
    say!(
        "{} hops of {} from {:.1} s of EEG: latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        summary.latency.hops,
        summary.model,
        eeg_frames as f64 / eeg_rate,
        summary.latency.latency_ms_p50,
        summary.latency.latency_ms_p99,
        summary.latency.latency_ms_max
    );
    say_latency_groups(&summary.latency_by_modalities);
    if let Some(path) = &args.json {
        crate::output::write(path, serde_json::to_vec_pretty(&summary)?)?;
        say!("wrote {}", path.display());
    }
    Ok(())
}
