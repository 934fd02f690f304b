//! Integration tests of the `eav` crate on files written the way recorders and MATLAB write them.

use std::path::{Path, PathBuf};

use eav::audio::{load_mono, read_wav, resample};
use hound::{SampleFormat, WavSpec, WavWriter};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eav-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn sine(rate: u32, hz: f64, seconds: f64) -> Vec<f64> {
    (0..(f64::from(rate) * seconds) as usize)
        .map(|i| 0.5 * (std::f64::consts::TAU * hz * i as f64 / f64::from(rate)).sin())
        .collect()
}

/// Writes `channels` copies of `x` (channel c scaled by (c + 1) / channels) with the given sample format.
fn write_wav(path: &Path, rate: u32, channels: u16, bits: u16, float: bool, x: &[f64]) {
    let spec = WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format: if float { SampleFormat::Float } else { SampleFormat::Int },
    };
    let mut w = WavWriter::create(path, spec).unwrap();
    for &v in x {
        for c in 0..channels {
            let v = v * f64::from(c + 1) / f64::from(channels);
            if float {
                w.write_sample(v as f32).unwrap();
            } else {
                let full = f64::from((1u32 << (bits - 1)) - 1);
                let q = (v * full).round() as i32;
                match bits {
                    8 => w.write_sample(q as i8).unwrap(),
                    16 => w.write_sample(q as i16).unwrap(),
                    _ => w.write_sample(q).unwrap(),
                }
            }
        }
    }
    w.finalize().unwrap();
}

#[test]
fn every_pcm_format_decodes_to_the_same_mono_signal() {
    let x = sine(16_000, 440.0, 0.25);
    for (bits, float, tol) in
        [(8, false, 1e-2), (16, false, 1e-4), (24, false, 1e-6), (32, false, 1e-6), (32, true, 1e-7)]
    {
        for channels in [1u16, 2, 3] {
            let p = tmp(&format!("fmt_{bits}_{float}_{channels}.wav"));
            write_wav(&p, 16_000, channels, bits, float, &x);
            let a = read_wav(&p).unwrap();
            assert_eq!(a.sample_rate, 16_000);
            assert_eq!(a.samples.len(), x.len(), "{bits} bit, {channels} ch");
            // The mean of channels scaled (c+1)/C is x · (C+1)/(2C).
            let gain = f64::from(channels + 1) / (2.0 * f64::from(channels));
            let err =
                a.samples.iter().zip(&x).map(|(s, v)| (f64::from(*s) - v * gain).abs()).fold(0.0, f64::max);
            assert!(err < tol, "{bits} bit float={float} {channels} ch: max error {err}");
        }
    }
}

#[test]
fn resampling_keeps_amplitude_length_and_alignment() {
    let p = tmp("sine44k.wav");
    write_wav(&p, 44_100, 1, 16, false, &sine(44_100, 440.0, 1.0));
    let a = load_mono(&p, 16_000).unwrap();
    assert_eq!(a.sample_rate, 16_000);
    assert_eq!(a.samples.len(), 16_000);
    // Away from the edges the output is the same tone: fit its amplitude and phase at 440 Hz.
    let w = std::f64::consts::TAU * 440.0 / 16_000.0;
    let (mut dot_sin, mut dot_cos) = (0.0, 0.0);
    for (i, v) in a.samples.iter().enumerate().take(15_500).skip(500) {
        dot_sin += f64::from(*v) * (w * i as f64).sin();
        dot_cos += f64::from(*v) * (w * i as f64).cos();
    }
    let amplitude = 2.0 * dot_sin.hypot(dot_cos) / 15_000.0;
    let delay_samples = dot_cos.atan2(dot_sin) / w;
    assert!((amplitude - 0.5).abs() < 2e-3, "amplitude {amplitude}");
    // The resampler's delay is removed to within a fraction of an output sample (measured: 0.18).
    assert!(delay_samples.abs() < 0.5, "delay {delay_samples} samples");
    // Same rate: untouched.
    let same = resample(a.clone(), 16_000, &p).unwrap();
    assert_eq!(same, a);
}

#[test]
fn bad_wav_files_are_named_errors() {
    let not_wav = tmp("not_a.wav");
    std::fs::write(&not_wav, b"this is plain text, not RIFF audio at all, really not").unwrap();
    let msg = read_wav(&not_wav).unwrap_err().to_string();
    assert!(msg.contains("not_a.wav") && msg.contains("not a readable WAV"), "{msg}");

    let good = tmp("good.wav");
    write_wav(&good, 16_000, 1, 16, false, &sine(16_000, 440.0, 0.5));
    let bytes = std::fs::read(&good).unwrap();
    let cut = tmp("truncated.wav");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let msg = read_wav(&cut).unwrap_err().to_string();
    assert!(msg.contains("truncated.wav") && msg.contains("truncated"), "{msg}");

    let empty = tmp("empty.wav");
    write_wav(&empty, 16_000, 1, 16, false, &[]);
    let msg = read_wav(&empty).unwrap_err().to_string();
    assert!(msg.contains("empty.wav"), "{msg}");

    let missing = tmp("missing.wav");
    let msg = read_wav(&missing).unwrap_err().to_string();
    assert!(msg.contains("missing.wav"), "{msg}");
}

/// A real speech recording (synthesised by espeak-ng, stored as 16-bit PCM WAV) read through the WAV decoder
/// gives librosa's MFCCs for the same samples to within 1e-3 of the largest coefficient magnitude
/// (measured: 1.5e-7 relative, 6.6e-5 absolute).
#[test]
fn speech_recording_matches_librosa() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("speech_16k.librosa_mfcc.json")).unwrap()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["mfcc"].clone()).unwrap();
    let audio = load_mono(&dir.join("speech_16k.wav"), 16_000).unwrap();
    let got = mfcc::Mfcc::new(mfcc::MfccConfig::project()).unwrap().mfcc(&audio.samples).unwrap();
    assert_eq!(got.shape(), (want.len(), want[0].len()));
    let largest = want.iter().flatten().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = got.rows().zip(&want).flat_map(|(g, w)| g.iter().zip(w).map(|(a, b)| (a - b).abs()));
    let diff = diff.fold(0.0, f64::max);
    assert!(diff <= 1e-3 * largest, "max abs diff {diff}, largest coefficient {largest}");
    assert!(diff < 2e-4, "max abs diff {diff}");
}

mod wav_fuzz {
    use super::*;
    use proptest::prelude::*;

    fn valid_wav() -> Vec<u8> {
        let p = tmp("fuzz_base.wav");
        write_wav(&p, 16_000, 2, 16, false, &sine(16_000, 440.0, 0.01));
        std::fs::read(p).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Mutated or arbitrary bytes give a result or a typed error, never a panic.
        #[test]
        fn damaged_wav_never_panics(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
            cut in any::<prop::sample::Index>(),
            junk in prop::collection::vec(any::<u8>(), 0..64),
            case in 0u32..1_000_000,
        ) {
            let mut bytes = valid_wav();
            for (i, b) in edits {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if bytes.len() < 44 {
                bytes.extend_from_slice(&junk);
            }
            let name = format!("fuzz_{case}.wav");
            let p = tmp(&name);
            std::fs::write(&p, &bytes).unwrap();
            if let Err(e) = read_wav(&p) {
                let msg = e.to_string();
                prop_assert!(msg.contains(&name), "{}", msg);
            }
            std::fs::remove_file(&p).unwrap();
        }
    }
}
