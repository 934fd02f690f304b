//! The streamed prediction at every hop equals the offline prediction of the same window under the
//! causal option, whatever the chunking; buffers stay bounded; bad live input gets a typed error or a
//! documented recovery.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use core_types::{FusionMode, Modality};
use eav::causal::{eeg_channel, mfcc_config, speech_16k, speech_segment, window_cepstra};
use eav::dataset::{PreprocessConfig, preprocess};
use eav::subject::{Subject, discover, load_subject};
use experiments::checkpoint::{CheckpointMeta, save};
use experiments::data::Normalisation;
use experiments::{EmotionModel, ModelConfig, Presence};
use online::{AudioState, Error, Hop, Predictor, Source, StreamConfig};
use proptest::prelude::*;

const SECONDS: f64 = 8.0;

/// One subject of four 8 s trials (listening, speaking, listening, speaking) at `audio_rate`.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    subject: Subject,
    pre: PreprocessConfig,
    norm: Normalisation,
}

fn tree(audio_rate: u32) -> &'static Tree {
    static T16: OnceLock<Tree> = OnceLock::new();
    static T44: OnceLock<Tree> = OnceLock::new();
    let cell = if audio_rate == 16_000 { &T16 } else { &T44 };
    cell.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let cfg = eav::synth::SynthConfig {
            subjects: 1,
            trials: 4,
            trial_seconds: SECONDS,
            audio_rate,
            ..Default::default()
        };
        eav::synth::write_synthetic(&root, &cfg, &|_| {}).unwrap();
        let subject = load_subject(&discover(&root).unwrap()[0]).unwrap();
        let pre = PreprocessConfig { causal: true, windows_per_trial: 1, ..Default::default() };
        let s = preprocess(&subject, &pre).unwrap();
        let all: Vec<usize> = (0..s.samples.len()).collect();
        let norm = Normalisation::fit(&s.samples, &all, 30, s.eeg_len, s.mfcc_frames);
        Tree { _dir: dir, root, subject, pre, norm }
    })
}

fn models() -> Vec<ModelConfig> {
    let mut m = vec![ModelConfig::eeg_only(30), ModelConfig::audio_only(30)];
    m.extend(FusionMode::ALL.iter().map(|&mode| ModelConfig::fused(30, mode)));
    m
}

/// A checkpoint of model `k` of [`models`] (untrained, seeded) with the tree's normalisation.
fn checkpoint(t: &Tree, k: usize) -> PathBuf {
    // Tests run in parallel: one writes a checkpoint while the others wait, so none reads the weights
    // before their side file exists.
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = WRITING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = t.root.join(format!("model{k}.safetensors"));
    if !path.exists() {
        let cfg = models()[k].clone();
        let model = EmotionModel::new(&cfg, &Device::Cpu, 11 + k as u64).unwrap();
        save(&path, &model, &CheckpointMeta::new(&cfg, &t.pre, &t.norm)).unwrap();
    }
    path
}

/// Trial `trial`'s EEG frame-major and its mono speech (speaking trials).
fn trial_data(s: &Subject, trial: usize) -> (Vec<f32>, Option<(Vec<f32>, u32)>) {
    let raw = s.eeg_trial(trial);
    let n = s.samples_per_trial;
    let mut frames = vec![0.0f32; raw.len()];
    for c in 0..s.channels {
        for i in 0..n {
            frames[i * s.channels + c] = raw[c * n + i];
        }
    }
    let audio = s.trials[trial].audio.as_ref().map(|p| {
        let a = eav::audio::read_wav(p).unwrap();
        (a.samples, a.sample_rate)
    });
    (frames, audio)
}

/// Replays a trial in chunks cut by `eeg_cuts` / `audio_cuts` (cycled), pushing whichever stream is
/// behind in time, then ends the audio.
fn replay(
    p: &mut Predictor,
    s: &Subject,
    trial: usize,
    eeg_cuts: &[usize],
    audio_cuts: &[usize],
) -> Vec<Hop> {
    let (eeg, audio) = trial_data(s, trial);
    let ch = s.channels;
    let (mut e, mut a, mut ie, mut ia) = (0usize, 0usize, 0usize, 0usize);
    let n_eeg = eeg.len() / ch;
    let mut hops = Vec::new();
    loop {
        let te = e as f64 / 500.0;
        let ta = audio.as_ref().map_or(f64::INFINITY, |(x, r)| {
            if a < x.len() { a as f64 / f64::from(*r) } else { f64::INFINITY }
        });
        if e >= n_eeg && ta.is_infinite() {
            break;
        }
        if te <= ta && e < n_eeg {
            let n = eeg_cuts[ie % eeg_cuts.len()].min(n_eeg - e);
            hops.extend(p.push_eeg(te, ch, &eeg[e * ch..(e + n) * ch]).unwrap());
            e += n;
            ie += 1;
        } else if let Some((x, _)) = &audio {
            let n = audio_cuts[ia % audio_cuts.len()].min(x.len() - a);
            hops.extend(p.push_audio(ta, &x[a..a + n]).unwrap());
            a += n;
            ia += 1;
        }
    }
    hops.extend(p.end_audio().unwrap());
    hops
}

/// The offline probabilities of the windows ending at `ends` (100 Hz steps) of a trial, from the causal
/// preprocessing functions and one batched forward pass.
fn offline(t: &Tree, model: &EmotionModel, trial: usize, ends: &[usize], with_audio: bool) -> Vec<Vec<f32>> {
    let s = &t.subject;
    let n = s.samples_per_trial;
    let raw = s.eeg_trial(trial);
    let eeg: Vec<Vec<f64>> = (0..s.channels).map(|c| eeg_channel(&raw[c * n..(c + 1) * n], &t.pre)).collect();
    let speech = with_audio.then(|| trial_data(s, trial).1.map(|(x, r)| speech_16k(&x, r))).flatten();
    let planner = mfcc::Mfcc::new(mfcc_config()).unwrap();
    let (mut e, mut m) = (Vec::new(), Vec::new());
    for &end in ends {
        let mut w: Vec<f32> =
            eeg.iter().flat_map(|ch| ch[end - 500..end].iter().map(|&v| v as f32)).collect();
        t.norm.eeg.apply(&mut w, 500);
        e.extend(w);
        if let Some(sp) = &speech {
            let seg = speech_segment(sp, end * 160, 80_000);
            let mut c = window_cepstra(&planner, &planner.mel_frames(&seg).unwrap(), 500).unwrap();
            t.norm.mfcc.as_ref().unwrap().apply(&mut c, 500);
            m.extend(c);
        }
    }
    let b = ends.len();
    let eeg = Tensor::from_vec(e, (b, 30, 500), &Device::Cpu).unwrap();
    let mfcc = speech.as_ref().map(|_| Tensor::from_vec(m, (b, 13, 500), &Device::Cpu).unwrap());
    let presence = Presence {
        eeg: None,
        audio: mfcc.is_none().then(|| Tensor::zeros(b, candle_core::DType::F32, &Device::Cpu).unwrap()),
        video: None,
    };
    let out = model.forward_present(&eeg, mfcc.as_ref(), &presence, false).unwrap();
    candle_nn::ops::softmax_last_dim(&out.logits).unwrap().to_vec2().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    /// Every hop of every trial equals the offline causal prediction of its window (≤ 1e-5), for every
    /// model kind, at 16 and 44.1 kHz, whatever the chunk sizes (1-sample chunks included).
    #[test]
    fn streamed_hops_equal_offline_causal_windows(
        k in 0usize..7,
        rate in prop::sample::select(vec![16_000u32, 44_100]),
        eeg_cuts in prop::collection::vec(prop_oneof![Just(1usize), 1usize..40, 40usize..1000], 1..5),
        audio_cuts in prop::collection::vec(prop_oneof![Just(1usize), 1usize..2000, 2000usize..32_000], 1..5),
    ) {
        let t = tree(rate);
        let path = checkpoint(t, k);
        // Chunks of up to 2 s put one stream up to 2 s ahead of the other: within the skew allowed.
        let cfg = StreamConfig { max_skew_s: 3.0, ..StreamConfig::default() };
        let mut p = Predictor::from_checkpoint(&path, Source::eav(rate), cfg).unwrap();
        let (model, _) = experiments::checkpoint::load(&path, &Device::Cpu).unwrap();
        let reads_eeg = k != 1;
        for trial in 0..t.subject.trials.len() {
            p.reset();
            let hops = replay(&mut p, &t.subject, trial, &eeg_cuts, &audio_cuts);
            let speaking = t.subject.trials[trial].speaking;
            let expected = if reads_eeg || speaking { 7 } else { 0 };
            prop_assert_eq!(hops.len(), expected, "trial {}", trial);
            if hops.is_empty() {
                continue;
            }
            let ends: Vec<usize> = hops.iter().map(|h| (h.end_s * 100.0).round() as usize).collect();
            prop_assert_eq!(&ends, &[500, 550, 600, 650, 700, 750, 800]);
            let want = offline(t, &model, trial, &ends, speaking && k != 0);
            for (h, w) in hops.iter().zip(&want) {
                let audio = match (k, speaking) {
                    (0, _) => AudioState::NotRead,
                    (_, true) => AudioState::Used,
                    (_, false) => AudioState::None,
                };
                prop_assert_eq!(h.audio, audio, "hop {}", h.end_s);
                prop_assert!(max_diff(&h.probabilities, w) <= 1e-5, "hop {}: {:?} vs {:?}", h.end_s, h.probabilities, w);
            }
        }
    }
}

/// The hop at 5 s is the offline `predict` of the checkpoint's first window (causal preprocessing).
#[test]
fn the_first_hop_is_the_checkpoint_prediction() {
    let t = tree(16_000);
    for k in [0, 2, 5] {
        let path = checkpoint(t, k);
        let (model, meta) = experiments::checkpoint::load(&path, &Device::Cpu).unwrap();
        let offline = experiments::checkpoint::predict(&model, &meta, &t.root, &[], false).unwrap();
        let mut p = Predictor::from_checkpoint(&path, Source::eav(16_000), StreamConfig::default()).unwrap();
        assert!(p.trained_causal());
        for row in offline {
            p.reset();
            let hops = replay(&mut p, &t.subject, row.trial, &[20], &[640]);
            assert!(
                max_diff(&hops[0].probabilities, &row.probabilities) <= 1e-5,
                "model {k} trial {}",
                row.trial
            );
            let used: Vec<String> = hops[0].modalities.iter().map(ToString::to_string).collect();
            assert_eq!(used, row.modalities);
        }
    }
}

/// A long stream (10 minutes) holds no more than its first hop did: ring buffers, not growing vectors.
#[test]
fn buffers_stay_bounded_over_a_long_stream() {
    let t = tree(16_000);
    let mut p =
        Predictor::from_checkpoint(&checkpoint(t, 2), Source::eav(16_000), StreamConfig::default()).unwrap();
    let (eeg, audio) = trial_data(&t.subject, 1);
    let (speech, _) = audio.unwrap();
    let (mut hops, mut early, mut late) = (0usize, 0, 0);
    for i in 0..15_000usize {
        // 40 ms chunks, the trial looped.
        let ts = i as f64 * 0.04;
        let e0 = (i * 20) % 4000;
        let a0 = (i * 640) % 128_000;
        hops += p.push_eeg(ts, 30, &eeg[e0 * 30..(e0 + 20) * 30]).unwrap().len();
        hops += p.push_audio(ts, &speech[a0..a0 + 640]).unwrap().len();
        if i < 1000 {
            early = early.max(p.buffered_bytes());
        } else {
            late = late.max(p.buffered_bytes());
        }
    }
    assert_eq!(hops, (600.0f64 / 0.5) as usize - 9, "a hop every 0.5 s from 5 s on");
    assert!(late <= early, "{late} bytes after 40 s, {early} before");
    assert!(early < 1 << 20, "{early} bytes");
    assert!(p.take_events().is_empty());
}

fn predictor(k: usize) -> Predictor {
    let t = tree(16_000);
    Predictor::from_checkpoint(&checkpoint(t, k), Source::eav(16_000), StreamConfig::default()).unwrap()
}

/// Wrong channel count, ragged chunks, NaN, a jump back: typed errors that leave the stream as it was
/// (a clean replay after rejected chunks gives the same hops).
#[test]
fn bad_chunks_are_rejected_without_changing_the_stream() {
    let t = tree(16_000);
    let clean = replay(&mut predictor(2), &t.subject, 1, &[20], &[640]);
    let (eeg, audio) = trial_data(&t.subject, 1);
    let (speech, _) = audio.unwrap();
    let mut p = predictor(2);
    let mut hops = Vec::new();
    for i in 0..200usize {
        let ts = i as f64 * 0.04;
        let chunk = &eeg[i * 600..(i + 1) * 600];
        if i == 50 {
            assert!(matches!(
                p.push_eeg(ts, 29, &chunk[..580]),
                Err(Error::Channels { expected: 30, got: 29, .. })
            ));
            assert!(matches!(p.push_eeg(ts, 30, &chunk[..599]), Err(Error::Ragged { .. })));
            let mut bad = chunk.to_vec();
            bad[77] = f32::NAN;
            assert!(matches!(
                p.push_eeg(ts, 30, &bad),
                Err(Error::NotFinite { stream: "eeg", index: 77, .. })
            ));
            let mut loud = speech[i * 640..(i + 1) * 640].to_vec();
            loud[3] = f32::INFINITY;
            assert!(matches!(
                p.push_audio(ts, &loud),
                Err(Error::NotFinite { stream: "audio", index: 3, .. })
            ));
        }
        hops.extend(p.push_eeg(ts, 30, chunk).unwrap());
        if i == 60 {
            let err = p.push_eeg(ts - 0.5, 30, chunk).unwrap_err();
            assert!(matches!(err, Error::TimeWentBack { stream: "eeg", .. }), "{err}");
            assert!(err.to_string().contains("before the stream's end"), "{err}");
        }
        hops.extend(p.push_audio(ts, &speech[i * 640..(i + 1) * 640]).unwrap());
    }
    hops.extend(p.end_audio().unwrap());
    assert_eq!(hops, clean);
    assert!(p.take_events().is_empty());
}

/// A checkpoint for another EEG rate, a hop off the 10 ms grid: typed errors at construction.
#[test]
fn a_source_that_does_not_fit_is_refused() {
    let t = tree(16_000);
    let path = checkpoint(t, 2);
    let err = Predictor::from_checkpoint(
        &path,
        Source { eeg_rate: 256.0, ..Source::eav(16_000) },
        StreamConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Rate { stream: "eeg", got, .. } if got == 256.0), "{err}");
    let err = Predictor::from_checkpoint(
        &path,
        Source { eeg_channels: 28, ..Source::eav(16_000) },
        StreamConfig::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Channels { .. }), "{err}");
    let err = Predictor::from_checkpoint(
        &path,
        Source::eav(16_000),
        StreamConfig { hop_s: 0.255, ..Default::default() },
    )
    .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = Predictor::from_checkpoint(
        Path::new("/nonexistent/m.safetensors"),
        Source::eav(16_000),
        StreamConfig::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/m.json"), "{err}");
    // A model that reads video: refused when the stream is made, not at the first hop.
    let cfg = ModelConfig::video_only(30);
    let model = EmotionModel::new(&cfg, &Device::Cpu, 1).unwrap();
    let meta = CheckpointMeta::new(&cfg, &t.pre, &t.norm);
    let err = Predictor::new(model, meta, Source::eav(16_000), StreamConfig::default()).unwrap_err();
    assert!(matches!(&err, Error::Config(m) if m.contains("video")), "{err}");
}

/// A gap in the EEG restarts its filters (an event says so) and the next prediction comes a full window
/// after the gap; audio that stops mid-window, or is silent, is not used (the hop says why) and the
/// prediction is the EEG-alone one.
#[test]
fn gaps_stopped_and_silent_audio_are_recovered_and_marked() {
    let t = tree(16_000);
    let (eeg, audio) = trial_data(&t.subject, 1);
    let (speech, _) = audio.unwrap();
    // EEG gap of 0.4 s at 6 s: hops at 5.0, 5.5, 6.0, then none until a window after 6.4 s (the trial's
    // EEG looped to 13.4 s).
    let mut p = predictor(0);
    let mut hops = Vec::new();
    for i in 0..325usize {
        let ts = i as f64 * 0.04 + if i >= 150 { 0.4 } else { 0.0 };
        let e0 = (i * 20) % 4000;
        hops.extend(p.push_eeg(ts, 30, &eeg[e0 * 30..(e0 + 20) * 30]).unwrap());
    }
    let ends: Vec<f64> = hops.iter().map(|h| h.end_s).collect();
    assert_eq!(ends, [5.0, 5.5, 6.0, 11.5, 12.0, 12.5, 13.0]);
    let events = p.take_events();
    assert_eq!(events.len(), 1);
    assert!(events[0].stream == "eeg" && events[0].what.contains("gap of 0.400 s"), "{events:?}");

    // Audio that stops at 6.2 s: the hops at 6.5 s and later use the EEG alone, marked incomplete, and
    // equal the fused model's EEG-alone offline prediction.
    let mut p = predictor(2);
    let (model, _) = experiments::checkpoint::load(&checkpoint(t, 2), &Device::Cpu).unwrap();
    let mut hops = Vec::new();
    for i in 0..200usize {
        let ts = i as f64 * 0.04;
        hops.extend(p.push_eeg(ts, 30, &eeg[i * 600..(i + 1) * 600]).unwrap());
        if ts < 6.2 {
            hops.extend(p.push_audio(ts, &speech[i * 640..(i + 1) * 640]).unwrap());
        }
    }
    // Without end_audio the last hops would wait up to max_skew_s (1 s) of EEG for the audio.
    assert_eq!(hops.len(), 5);
    hops.extend(p.end_audio().unwrap());
    let states: Vec<AudioState> = hops.iter().map(|h| h.audio).collect();
    use AudioState::{Incomplete, Used};
    assert_eq!(states, [Used, Used, Used, Incomplete, Incomplete, Incomplete, Incomplete]);
    let alone = offline(t, &model, 1, &[650, 700], false);
    assert!(max_diff(&hops[3].probabilities, &alone[0]) <= 1e-5);
    assert_eq!(hops[3].modalities, [Modality::Eeg]);
    assert!(p.take_events().is_empty());

    // Silence (a microphone that is on, but nobody speaks).
    let mut p = predictor(3);
    let mut hops = Vec::new();
    for i in 0..150usize {
        let ts = i as f64 * 0.04;
        hops.extend(p.push_eeg(ts, 30, &eeg[i * 600..(i + 1) * 600]).unwrap());
        hops.extend(p.push_audio(ts, &vec![1e-4f32; 640]).unwrap());
    }
    assert!(
        hops.len() == 3
            && hops.iter().all(|h| h.audio == AudioState::Silent && h.modalities == [Modality::Eeg])
    );
}

/// Lab Streaming Layer (feature `lsl`, liblsl from `EMOFUSE_LIBLSL`): samples pushed into local outlets
/// arrive as pushed (values, stamps), and a predictor fed by [`online::lsl::LiveSource`] gives the hops
/// of the same trial pushed directly.
#[cfg(feature = "lsl")]
#[test]
fn lsl_streams_reach_the_predictor_as_pushed() {
    use online::lsl::{Inlet, LiveSource, Lsl, Outlet};
    use std::time::{Duration, Instant};
    let lsl = Lsl::load().expect("liblsl (set EMOFUSE_LIBLSL: docs/guide.md, section 4)");
    let tag = std::process::id();
    let deadline = || Instant::now() + Duration::from_secs(30);

    // Raw: three channels, values and stamps as pushed.
    let name = format!("emofuse-test-raw-{tag}");
    let out = Outlet::new(&lsl, &name, "EEG", 3, 250.0).unwrap();
    let mut inlet = Inlet::resolve(&lsl, &name, 10.0).unwrap();
    assert_eq!((inlet.shape().channels, inlet.shape().rate), (3, 250.0));
    assert!(out.wait_for_consumers(10.0));
    let sent: Vec<f32> = (0..300).map(|k| (k as f32 * 0.731).sin() * 80.0).collect();
    let base = lsl.local_clock();
    out.push(base, &sent[..150]).unwrap();
    out.push(base + 50.0 / 250.0, &sent[150..]).unwrap();
    let (mut got, mut stamps) = (Vec::new(), Vec::new());
    let end = deadline();
    while got.len() < sent.len() && Instant::now() < end {
        if let Some(c) = inlet.pull(0.2).unwrap() {
            got.extend_from_slice(c.data);
            stamps.extend_from_slice(c.stamps);
        }
    }
    assert_eq!(got, sent);
    let shift = stamps[0] - base; // liblsl's clock correction (0 up to jitter on one machine)
    assert!(shift.abs() < 0.01, "{shift}");
    for (k, s) in stamps.iter().enumerate() {
        assert!((s - shift - (base + k as f64 / 250.0)).abs() < 1e-6, "frame {k}: {s}");
    }
    assert!(
        matches!(Inlet::resolve(&lsl, &format!("emofuse-absent-{tag}"), 0.5), Err(Error::Lsl(m)) if m.contains("no LSL stream"))
    );

    // A speaking trial through EEG and audio outlets, in 40 ms chunks, into a fused model's predictor.
    let t = tree(16_000);
    let path = checkpoint(t, 2);
    let s = &t.subject;
    let (eeg, audio) = trial_data(s, 1);
    let (speech, rate) = audio.expect("trial 1 speaks");
    let (eeg_name, audio_name) = (format!("emofuse-test-eeg-{tag}"), format!("emofuse-test-audio-{tag}"));
    let eeg_out = Outlet::new(&lsl, &eeg_name, "EEG", s.channels, 500.0).unwrap();
    let audio_out = Outlet::new(&lsl, &audio_name, "Audio", 1, f64::from(rate)).unwrap();
    let mut live = LiveSource::open(&lsl, &eeg_name, Some(&audio_name), 10.0).unwrap();
    assert_eq!(live.source(), Source::eav(16_000));
    assert!(eeg_out.wait_for_consumers(10.0) && audio_out.wait_for_consumers(10.0));
    let mut p = Predictor::from_checkpoint(&path, live.source(), StreamConfig::default()).unwrap();
    let base = lsl.local_clock();
    let (frames, per_chunk) = (eeg.len() / s.channels, 20);
    for (i, start) in (0..frames).step_by(per_chunk).enumerate() {
        let end = (start + per_chunk).min(frames);
        eeg_out.push(base + start as f64 / 500.0, &eeg[start * s.channels..end * s.channels]).unwrap();
        let (a, b) = (i * 640, ((i + 1) * 640).min(speech.len()));
        if a < b {
            audio_out.push(base + a as f64 / f64::from(rate), &speech[a..b]).unwrap();
        }
    }
    let mut hops = Vec::new();
    let end = deadline();
    while live.received() != (frames, speech.len()) && Instant::now() < end {
        hops.extend(live.poll(&mut p, 0.2).unwrap());
    }
    assert_eq!(live.received(), (frames, speech.len()));
    hops.extend(live.flush(&mut p).unwrap());
    hops.extend(p.end_audio().unwrap());
    let mut direct = Predictor::from_checkpoint(&path, Source::eav(16_000), StreamConfig::default()).unwrap();
    let want = replay(&mut direct, s, 1, &[20], &[640]);
    assert_eq!(hops.len(), want.len());
    for (h, w) in hops.iter().zip(&want) {
        assert!((h.end_s - base - w.end_s).abs() < 0.01, "{} vs {}", h.end_s - base, w.end_s);
        assert!(
            max_diff(&h.probabilities, &w.probabilities) <= 1e-6,
            "hop {}: {:?} {:?} vs {:?} {:?} ({:?})",
            w.end_s,
            h.probabilities,
            h.audio,
            w.probabilities,
            w.audio,
            p.take_events()
        );
        assert_eq!((&h.modalities, h.audio), (&w.modalities, w.audio));
    }
    assert!(hops.iter().any(|h| h.audio == AudioState::Used));
}
