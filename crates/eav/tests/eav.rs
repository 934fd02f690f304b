//! Integration tests of the `eav` crate on files written the way recorders and MATLAB write them.

use std::path::{Path, PathBuf};

use eav::audio::{load_mono, probe_wav, read_wav, resample};
use hound::{SampleFormat, WavSpec, WavWriter};

/// A path in this test binary's scratch folder under `target/` (overwritten by the next run, removed by
/// `cargo clean`).
fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("eav-test");
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

    // A channel count whose frame size overflows 16 bits (found by the fuzz test: symphonia multiplies
    // unchecked) is a typed error, not a panic.
    let mut wide = bytes.clone();
    wide[22..24].copy_from_slice(&u16::MAX.to_le_bytes());
    let p = tmp("wide.wav");
    std::fs::write(&p, &wide).unwrap();
    let msg = read_wav(&p).unwrap_err().to_string();
    assert!(msg.contains("wide.wav") && msg.contains("65535 channels"), "{msg}");

    let empty = tmp("empty.wav");
    write_wav(&empty, 16_000, 1, 16, false, &[]);
    let msg = read_wav(&empty).unwrap_err().to_string();
    assert!(msg.contains("empty.wav"), "{msg}");

    let missing = tmp("missing.wav");
    let msg = read_wav(&missing).unwrap_err().to_string();
    assert!(msg.contains("missing.wav"), "{msg}");

    // The header probe rejects the same files for the same reasons, without decoding them.
    for (path, reason) in [
        (&not_wav, "not a readable WAV"),
        (&cut, "truncated: header declares 8000 sample frames"),
        (&p, "65535 channels"),
        (&empty, "no samples"),
        (&missing, "missing.wav"),
    ] {
        let msg = probe_wav(path).unwrap_err().to_string();
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(msg.contains(&*name) && msg.contains(reason), "{msg}");
    }
}

#[test]
fn the_header_probe_reads_what_the_decoder_reads() {
    for (rate, channels, bits, float) in
        [(16_000, 1, 16, false), (44_100, 2, 24, false), (22_050, 3, 32, true)]
    {
        let p = tmp(&format!("probe_{rate}_{channels}_{bits}.wav"));
        write_wav(&p, rate, channels, bits, float, &sine(rate, 440.0, 0.25));
        let info = probe_wav(&p).unwrap();
        let audio = read_wav(&p).unwrap();
        assert_eq!((info.sample_rate, info.channels), (rate, usize::from(channels)));
        assert_eq!(info.frames, audio.samples.len() as u64);
        assert_eq!(info.bits_per_sample, Some(u32::from(bits)));
        assert!((info.seconds() - 0.25).abs() < 1e-3, "{info:?}");
        assert!(info.codec.starts_with("pcm"), "{info:?}");
    }
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
            let read = read_wav(&p);
            if let Err(e) = &read {
                let msg = e.to_string();
                prop_assert!(msg.contains(&name), "{}", msg);
            }
            // The header probe never panics either, and accepts every file the decoder reads, with its
            // rate and (at most) its length.
            match (probe_wav(&p), &read) {
                (Ok(info), Ok(audio)) => {
                    prop_assert_eq!(info.sample_rate, audio.sample_rate);
                    prop_assert!(info.frames <= audio.samples.len() as u64, "{:?}", info);
                }
                (Err(e), Ok(_)) => prop_assert!(false, "probe rejects a readable file: {}", e),
                (Err(e), Err(_)) => prop_assert!(e.to_string().contains(&name), "{}", e),
                (Ok(_), Err(_)) => {}
            }
            std::fs::remove_file(&p).unwrap();
        }
    }
}

mod mat {
    use super::*;
    use eav::Error;
    use eav::mat::{Endian, MatClass, MatData, read_mat, read_mat_as, write_mat};
    use proptest::prelude::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mat").join(name)
    }

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn scipy_files_load_with_shapes_and_values() {
        for kind in ["plain", "compressed"] {
            let f = read_mat(&fixture(&format!("scipy_eeg_{kind}.mat")), &all).unwrap();
            assert_eq!(f.endian, Endian::Little);
            let v = f.get("seg1").unwrap();
            assert_eq!(
                (v.class, v.dims.as_slice(), v.compressed),
                (MatClass::Double, &[50, 3, 4][..], kind == "compressed")
            );
            let data = v.data.as_ref().unwrap();
            assert!(data.iter().enumerate().all(|(i, &x)| (x - i as f64 / 7.0).abs() < 1e-12));

            let l = read_mat(&fixture(&format!("scipy_label_{kind}.mat")), &all).unwrap();
            let label = l.get("label").unwrap();
            assert_eq!(label.dims, vec![10, 4]);
            let ones: Vec<usize> = label
                .data
                .as_ref()
                .unwrap()
                .iter()
                .enumerate()
                .filter(|(_, x)| **x == 1.0)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(ones, vec![1, 10 + 3, 20 + 4, 30 + 9]);
        }
    }

    #[test]
    fn every_class_is_listed_and_non_numeric_data_skipped() {
        for kind in ["plain", "compressed"] {
            let f = read_mat(&fixture(&format!("scipy_mixed_{kind}.mat")), &all).unwrap();
            let class = |n: &str| f.get(n).unwrap_or_else(|| panic!("{kind}: no {n}")).class;
            assert_eq!(class("seg"), MatClass::Double);
            assert_eq!(class("cellvar"), MatClass::Cell);
            assert_eq!(class("structvar"), MatClass::Struct);
            assert_eq!(class("name"), MatClass::Char);
            assert_eq!(class("single"), MatClass::Single);
            assert_eq!(class("i16"), MatClass::Int16);
            assert_eq!(class("boolvar"), MatClass::Logical);
            assert!(f.get("cplx").unwrap().complex);
            assert_eq!(f.get("single").unwrap().data.as_ref().unwrap(), &vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
            assert_eq!(f.get("i16").unwrap().data.as_ref().unwrap(), &vec![-3.0, 7.0]);
            assert_eq!(f.get("cplx").unwrap().data.as_ref().unwrap(), &vec![1.0, 3.0]);
            assert!(f.get("cellvar").unwrap().data.is_none());
            assert_eq!(f.get("seg").unwrap().dims, vec![50, 3, 2]);
        }
    }

    #[test]
    fn only_requested_variables_are_decoded() {
        let f = read_mat(&fixture("scipy_mixed_compressed.mat"), &|n| n == "i16").unwrap();
        assert!(f.get("seg").unwrap().data.is_none());
        assert!(f.get("i16").unwrap().data.is_some());
    }

    #[test]
    fn own_writer_round_trips_both_ways() {
        let values: Vec<f64> = (0..24).map(|i| f64::from(i) * 0.5 - 3.0).collect();
        let single: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        for compress in [false, true] {
            let p = tmp(&format!("own_{compress}.mat"));
            write_mat(
                &p,
                &[("a", &[2, 3, 4], MatData::F64(&values)), ("b", &[4, 6], MatData::F32(&single))],
                compress,
            )
            .unwrap();
            let f = read_mat(&p, &all).unwrap();
            assert_eq!(f.get("a").unwrap().data.as_ref().unwrap(), &values);
            assert_eq!(f.get("a").unwrap().dims, vec![2, 3, 4]);
            assert_eq!(f.get("b").unwrap().class, MatClass::Single);
            assert_eq!(f.get("b").unwrap().compressed, compress);
        }
    }

    /// A variable of many decoding blocks (240 kB) reads back exactly as f64 and rounded as f32, plain and
    /// compressed; cut in its middle, the file is a "truncated" error naming the variable.
    #[test]
    fn large_variables_decode_block_by_block_as_f64_and_f32() {
        let values: Vec<f64> = (0..30_000).map(|i| (f64::from(i) * 0.37).sin() * 1e3 + 1e-7).collect();
        for compress in [false, true] {
            let p = tmp(&format!("large_{compress}.mat"));
            write_mat(&p, &[("seg1", &[100, 30, 10], MatData::F64(&values))], compress).unwrap();
            let f64s = read_mat(&p, &all).unwrap();
            assert_eq!(f64s.get("seg1").unwrap().data.as_ref().unwrap(), &values);
            let f32s = read_mat_as::<f32>(&p, &all).unwrap();
            let v = f32s.get("seg1").unwrap();
            assert_eq!(v.dims, vec![100, 30, 10]);
            let want: Vec<f32> = values.iter().map(|&x| x as f32).collect();
            assert_eq!(v.data.as_ref().unwrap(), &want);

            let bytes = std::fs::read(&p).unwrap();
            let cut = tmp(&format!("large_cut_{compress}.mat"));
            std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
            let err = read_mat_as::<f32>(&cut, &all).unwrap_err().to_string();
            assert!(
                err.contains("seg1") && (err.contains("truncated") || err.contains("compressed")),
                "{err}"
            );
        }
    }

    /// A `double` array whose data MATLAB stored as `uint8`, in a big-endian file with a small-element name.
    fn handcrafted(big: bool, storage: u32, payload: &[u8]) -> Vec<u8> {
        let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut body = Vec::new();
        body.extend(w32(6));
        body.extend(w32(8));
        body.extend(w32(6));
        body.extend(w32(0)); // flags: double
        body.extend(w32(5));
        body.extend(w32(8));
        body.extend(w32(1));
        body.extend(w32(3)); // dims 1×3
        body.extend(w32((1 << 16) | 1));
        body.extend(b"x\0\0\0"); // small-element name "x"
        body.extend(w32(storage));
        body.extend(w32(payload.len() as u32));
        body.extend(payload);
        body.resize(body.len().div_ceil(8) * 8, 0);
        let mut out = b"MATLAB 5.0 MAT-file, handcrafted".to_vec();
        out.resize(124, b' ');
        out.extend(if big { [0x01, 0x00] } else { [0x00, 0x01] });
        out.extend(if big { b"MI" } else { b"IM" });
        out.extend(w32(14));
        out.extend(w32(body.len() as u32));
        out.extend(body);
        out
    }

    #[test]
    fn narrowed_storage_and_big_endian_files_read() {
        for big in [false, true] {
            let p = tmp(&format!("narrow_{big}.mat"));
            std::fs::write(&p, handcrafted(big, 2, &[7, 0, 255])).unwrap();
            let f = read_mat(&p, &all).unwrap();
            assert_eq!(f.endian, if big { Endian::Big } else { Endian::Little });
            let x = f.get("x").unwrap();
            assert_eq!((x.class, x.data.clone().unwrap()), (MatClass::Double, vec![7.0, 0.0, 255.0]));
            // int16 storage, endianness applied.
            let vals: Vec<u8> = [-2i16, 300, 5]
                .iter()
                .flat_map(|v| if big { v.to_be_bytes() } else { v.to_le_bytes() })
                .collect();
            std::fs::write(&p, handcrafted(big, 3, &vals)).unwrap();
            assert_eq!(
                read_mat(&p, &all).unwrap().get("x").unwrap().data.clone().unwrap(),
                vec![-2.0, 300.0, 5.0]
            );
        }
    }

    fn mat_error(bytes: &[u8], name: &str) -> String {
        let p = tmp(name);
        std::fs::write(&p, bytes).unwrap();
        match read_mat(&p, &all) {
            Err(e @ Error::Mat { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(name), "{msg}");
                msg
            }
            other => panic!("{name}: expected a MAT error, got {other:?}"),
        }
    }

    #[test]
    fn damaged_and_unsupported_files_are_named_errors() {
        let plain = std::fs::read(fixture("scipy_eeg_plain.mat")).unwrap();
        assert!(mat_error(&plain[..plain.len() - 100], "cut.mat").contains("truncated"));
        let packed = std::fs::read(fixture("scipy_eeg_compressed.mat")).unwrap();
        let mut bad = packed.clone();
        for b in &mut bad[300..340] {
            *b ^= 0x5A;
        }
        let msg = mat_error(&bad, "badzlib.mat");
        assert!(msg.contains("compressed"), "{msg}");
        assert!(
            mat_error(&handcrafted(false, 11, &[0; 8]), "unknown_type.mat")
                .contains("unknown numeric data type 11")
        );
        let mut v73 = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: x HDF5 schema 1.00 .".to_vec();
        v73.resize(128, b' ');
        assert!(mat_error(&v73, "v73.mat").contains("-v7"));
        let v4 = std::fs::read(fixture("scipy_v4.mat")).unwrap();
        assert!(mat_error(&v4, "v4.mat").contains("level 4"));
        assert!(mat_error(b"hello", "short.mat").contains("not a MAT file"));
        let mut bad_name = handcrafted(false, 2, &[1, 2, 3]);
        bad_name[128 + 8 + 32 + 4] = 0xFF;
        let msg = mat_error(&bad_name, "badname.mat");
        assert!(msg.contains("UTF-8") && msg.contains("byte"), "{msg}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Mutated or cut MAT files give a result or a typed error, never a panic.
        #[test]
        fn damaged_mat_never_panics(
            which in 0usize..3,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
            case in 0u32..1_000_000,
        ) {
            let name = ["scipy_eeg_plain.mat", "scipy_mixed_compressed.mat", "scipy_label_plain.mat"][which];
            let mut bytes = std::fs::read(fixture(name)).unwrap();
            for (i, b) in edits {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            bytes.truncate(cut.index(bytes.len() + 1).max(bytes.len() / 2));
            let p = tmp(&format!("matfuzz_{case}.mat"));
            std::fs::write(&p, &bytes).unwrap();
            let _ = read_mat(&p, &all);
            std::fs::remove_file(&p).unwrap();
        }
    }
}

mod signal {
    use eav::signal::{butter_bandpass, decimate, sos_gain, sosfiltfilt};
    use std::path::Path;

    fn reference() -> serde_json::Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/scipy_signal.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    fn vec(v: &serde_json::Value) -> Vec<f64> {
        serde_json::from_value(v.clone()).unwrap()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn decimation_equals_scipy_resample_poly() {
        let r = reference();
        let d = max_diff(&decimate(&vec(&r["x"]), 5), &vec(&r["resampled"]));
        assert!(d < 1e-12, "max diff {d}");
    }

    #[test]
    fn butterworth_equals_scipy_and_has_the_known_response() {
        let r = reference();
        let sos = butter_bandpass(5, 0.5, 45.0, 100.0);
        assert_eq!(sos.len(), 5);
        // Section order may differ from scipy's; the cascade's response and output may not.
        for (f, want) in vec(&r["freqs"]).into_iter().zip(vec(&r["gain"])) {
            let g = sos_gain(&sos, f, 100.0);
            assert!((g - want).abs() < 1e-9 * want.max(1e-3), "{f} Hz: gain {g} vs scipy {want}");
        }
        // −3 dB at both edges, unity in the pass band, strong rejection outside.
        assert!((sos_gain(&sos, 0.5, 100.0) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
        assert!((sos_gain(&sos, 45.0, 100.0) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9);
        assert!((sos_gain(&sos, 10.0, 100.0) - 1.0).abs() < 1e-6);
        assert!(sos_gain(&sos, 0.05, 100.0) < 1e-4 && sos_gain(&sos, 49.9, 100.0) < 1e-6);
        let d = max_diff(&sosfiltfilt(&sos, &vec(&r["resampled"])), &vec(&r["filtered"]));
        assert!(d < 1e-9, "sosfiltfilt max diff {d}");
    }
}

mod dataset {
    use super::*;
    use eav::Error;
    use eav::dataset::{Channels, PreprocessConfig, preprocess};
    use eav::mat::{MatData, write_mat};
    use eav::split::{Protocol, Standardizer, kfold, loso, official, trial_folds};
    use eav::subject::{discover, load_subject};
    use eav::synth::{SynthConfig, emotion_of_trial, write_synthetic};
    use std::collections::HashSet;

    fn small() -> SynthConfig {
        SynthConfig { subjects: 2, trials: 10, ..SynthConfig::default() }
    }

    /// The time (s, within the window) where a smoothed envelope of `power` (one value per sample at
    /// `rate`) peaks, for each 5 s window.
    fn peaks(power: &[f64], rate: f64, smooth_s: f64) -> Vec<f64> {
        let half = (smooth_s * rate / 2.0) as usize;
        let win = (5.0 * rate) as usize;
        power
            .chunks_exact(win)
            .map(|w| {
                let mut prefix = vec![0.0; w.len() + 1];
                for (i, v) in w.iter().enumerate() {
                    prefix[i + 1] = prefix[i] + v;
                }
                let smoothed = |i: usize| prefix[(i + half).min(w.len())] - prefix[i.saturating_sub(half)];
                let best = (0..w.len()).max_by(|&a, &b| smoothed(a).total_cmp(&smoothed(b))).unwrap();
                best as f64 / rate
            })
            .collect()
    }

    /// In a synchrony tree the audio event of every window follows the EEG event by its class's lag
    /// (wrapped around the 4.5 s span), as the files themselves show; the EEG events of each class cover
    /// the window rather than one place.
    #[test]
    fn synchrony_tree_puts_the_class_in_the_lag() {
        use eav::synth::{Signal, synchrony_lag};
        let cfg =
            SynthConfig { subjects: 1, trials: 40, signal: Signal::Synchrony, ..SynthConfig::default() };
        let root = tree("synchrony", &cfg);
        let s = load_subject(&discover(&root).unwrap()[0]).unwrap();
        let mut starts: Vec<Vec<f64>> = vec![Vec::new(); 5];
        let mut checked = 0;
        for t in s.trials.iter().filter(|t| t.speaking) {
            let eeg = s.eeg_trial(t.index);
            let posterior = s.channels - s.channels / 3..s.channels;
            let power: Vec<f64> = (0..s.samples_per_trial)
                .map(|i| posterior.clone().map(|c| f64::from(eeg[c * s.samples_per_trial + i]).powi(2)).sum())
                .collect();
            let te = peaks(&power, 500.0, 0.2);
            let audio = read_wav(t.audio.as_ref().unwrap()).unwrap();
            let power: Vec<f64> = audio.samples.iter().map(|v| f64::from(*v).powi(2)).collect();
            let ta = peaks(&power, f64::from(audio.sample_rate), 0.2);
            assert_eq!((te.len(), ta.len()), (4, 4));
            for (e, a) in te.iter().zip(&ta) {
                let lag = (a - e).rem_euclid(4.5);
                let want = synchrony_lag(t.emotion);
                let d = (lag - want).abs().min(4.5 - (lag - want).abs());
                assert!(d < 0.08, "trial {}: lag {lag:.3} s, class {} wants {want}", t.index + 1, t.emotion);
                starts[t.emotion.index()].push(*e);
                checked += 1;
            }
        }
        assert_eq!(checked, 80);
        for (class, times) in starts.iter().enumerate() {
            let (lo, hi) = times.iter().fold((f64::MAX, f64::MIN), |(l, h), &t| (l.min(t), h.max(t)));
            assert!(lo < 1.5 && hi > 3.5, "class {class}: EEG events only between {lo:.2} and {hi:.2} s");
        }
    }

    fn tree(name: &str, cfg: &SynthConfig) -> PathBuf {
        let root = tmp(name);
        let _ = std::fs::remove_dir_all(&root);
        write_synthetic(&root, cfg, &|_| {}).unwrap();
        root
    }

    #[test]
    fn synthetic_tree_round_trips_through_the_real_loader() {
        let root = tree("synth_rt", &small());
        let subjects = discover(&root).unwrap();
        assert_eq!(subjects.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
        let s = load_subject(&subjects[0]).unwrap();
        assert_eq!((s.channels, s.samples_per_trial, s.trials.len()), (30, 10_000, 10));
        for t in &s.trials {
            assert_eq!(t.emotion, emotion_of_trial(t.index));
            assert_eq!(t.speaking, t.index % 2 == 1);
            assert_eq!(t.audio.is_some(), t.speaking);
        }
        let pre = preprocess(&s, &PreprocessConfig::default()).unwrap();
        assert_eq!(pre.samples.len(), 40);
        assert_eq!(pre.eeg_len, 500);
        for smp in &pre.samples {
            assert_eq!(smp.eeg.len(), 30 * 500);
            assert!(smp.eeg.iter().all(|v| v.is_finite()));
            assert_eq!(smp.mfcc.as_ref().map(Vec::len), smp.speaking.then_some(13 * 500));
        }
        // Same seed, same bytes; another seed, other bytes.
        let again = tree("synth_rt2", &small());
        let eeg = |r: &Path| std::fs::read(r.join("subject1/EEG/subject1_eeg.mat")).unwrap();
        assert_eq!(eeg(&root), eeg(&again));
        let other = tree("synth_rt3", &SynthConfig { seed: 8, ..small() });
        assert_ne!(eeg(&root), eeg(&other));
        // Dropping FP1 and FP2 leaves 28 channels.
        let cfg = PreprocessConfig {
            channels: Channels::parse("drop:FP1,FP2").unwrap(),
            audio: false,
            ..PreprocessConfig::default()
        };
        let pre28 = preprocess(&s, &cfg).unwrap();
        assert_eq!(pre28.channels.len(), 28);
        assert_eq!(pre28.samples[0].eeg.len(), 28 * 500);
        assert_eq!(&pre28.samples[0].eeg[..500], &pre.samples[0].eeg[2 * 500..3 * 500]);
    }

    #[test]
    fn padded_folders_and_capital_aud_are_accepted() {
        let root = tree("synth_padded", &SynthConfig { subjects: 1, ..small() });
        std::fs::rename(root.join("subject1"), root.join("subject01")).unwrap();
        let audio = root.join("subject01/Audio");
        let first = std::fs::read_dir(&audio).unwrap().next().unwrap().unwrap().path();
        let renamed = first.to_string_lossy().replace("_aud.wav", "_Aud.wav");
        std::fs::rename(&first, &renamed).unwrap();
        let subjects = discover(&root).unwrap();
        assert_eq!(subjects[0].id, 1);
        let s = load_subject(&subjects[0]).unwrap();
        assert_eq!(s.trials.iter().filter(|t| t.audio.is_some()).count(), 5);
    }

    fn expect_dataset_error(root: &Path, needle: &str, file: &str) {
        let subjects = discover(root).unwrap();
        let err = load_subject(&subjects[0])
            .and_then(|s| preprocess(&s, &PreprocessConfig::default()))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(needle) && msg.contains(file), "expected `{needle}` about {file}, got: {msg}");
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let cfg = SynthConfig { subjects: 1, trials: 4, ..small() };
        let eeg_file = "subject1_eeg.mat";
        let label_file = "subject1_eeg_label.mat";
        let seg = vec![0.0f64; 10_000 * 30 * 4];

        let root = tree("bad_varname", &cfg);
        write_mat(
            &root.join("subject1/EEG").join(eeg_file),
            &[("data", &[10_000, 30, 4], MatData::F64(&seg))],
            true,
        )
        .unwrap();
        expect_dataset_error(&root, "no variable `seg1` or `seg`", eeg_file);

        let root = tree("bad_2d", &cfg);
        write_mat(
            &root.join("subject1/EEG").join(eeg_file),
            &[("seg", &[10_000, 120], MatData::F64(&seg))],
            false,
        )
        .unwrap();
        expect_dataset_error(&root, "has 2 dims", eeg_file);

        let root = tree("bad_labels", &cfg);
        let label = vec![0.0f64; 10 * 3];
        write_mat(
            &root.join("subject1/EEG").join(label_file),
            &[("label", &[10, 3], MatData::F64(&label))],
            true,
        )
        .unwrap();
        expect_dataset_error(&root, "expected [10, 4]", label_file);

        let root = tree("bad_onehot", &cfg);
        write_mat(
            &root.join("subject1/EEG").join(label_file),
            &[("label", &[10, 4], MatData::F64(&vec![0.0; 40]))],
            true,
        )
        .unwrap();
        expect_dataset_error(&root, "not one-hot", label_file);

        let root = tree("missing_label", &cfg);
        std::fs::remove_file(root.join("subject1/EEG").join(label_file)).unwrap();
        expect_dataset_error(&root, "no *_eeg_label.mat file", "EEG");

        let root = tree("nan_eeg", &cfg);
        let mut bad = seg.clone();
        bad[10_000 * 31 + 5] = f64::NAN;
        write_mat(
            &root.join("subject1/EEG").join(eeg_file),
            &[("seg1", &[10_000, 30, 4], MatData::F64(&bad))],
            true,
        )
        .unwrap();
        expect_dataset_error(&root, "non-finite sample NaN at trial 2, channel 2, time 5", eeg_file);

        let root = tree("mismatch_audio", &cfg);
        let audio = root.join("subject1/Audio");
        let wav = std::fs::read_dir(&audio).unwrap().map(|e| e.unwrap().path()).min().unwrap();
        let name = wav.file_name().unwrap().to_string_lossy().replace("Neutral", "Anger");
        std::fs::rename(&wav, audio.join(&name)).unwrap();
        expect_dataset_error(&root, "names anger but the label file says trial 2 is neutral", &name);

        let root = tree("not_wav", &cfg);
        let wav = std::fs::read_dir(audio_dir(&root)).unwrap().map(|e| e.unwrap().path()).min().unwrap();
        std::fs::write(&wav, b"RIFF....WAVEnope, not audio").unwrap();
        expect_dataset_error(&root, "not a readable WAV", &wav.file_name().unwrap().to_string_lossy());

        let empty = tmp("empty_root");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(discover(&empty), Err(Error::Dataset { .. })));
        assert!(matches!(discover(&tmp("does_not_exist")), Err(Error::Io { .. })));
    }

    fn audio_dir(root: &Path) -> PathBuf {
        root.join("subject1/Audio")
    }

    #[test]
    fn splits_are_honest() {
        let root = tree("splits", &SynthConfig { trials: 20, ..small() });
        let mut samples = Vec::new();
        let cfg = PreprocessConfig { audio: false, ..PreprocessConfig::default() };
        for sd in discover(&root).unwrap() {
            samples.extend(preprocess(&load_subject(&sd).unwrap(), &cfg).unwrap().samples);
        }
        let trial_of = |i: &usize| (samples[*i].subject, samples[*i].trial);
        let check = |split: &eav::split::Split, all: bool| {
            let parts = [&split.train, &split.val, &split.test]
                .map(|p| p.iter().map(trial_of).collect::<HashSet<_>>());
            for a in 0..3 {
                for b in a + 1..3 {
                    assert!(parts[a].is_disjoint(&parts[b]), "a trial straddles parts {a} and {b}");
                }
            }
            if all {
                assert_eq!(split.train.len() + split.val.len() + split.test.len(), samples.len());
            }
        };
        let s = official(&samples, 0.7, 0.0);
        check(&s, true);
        // 4 trials per class and subject: 3 (70 % rounded) train, 1 test, and test trials come last.
        assert_eq!((s.train.len(), s.test.len()), (2 * 5 * 3 * 4, 2 * 5 * 4));
        for &t in &s.test {
            let same_class_train = s.train.iter().filter(|&&i| {
                samples[i].subject == samples[t].subject && samples[i].emotion == samples[t].emotion
            });
            assert!(same_class_train.into_iter().all(|&i| samples[i].trial < samples[t].trial));
        }
        // Folds of the training part: whole trials, every window once, every class in every fold.
        let folds = trial_folds(&samples, &s.train, 3);
        let mut all: Vec<usize> = folds.concat();
        all.sort_unstable();
        let mut train = s.train.clone();
        train.sort_unstable();
        assert_eq!(all, train);
        for f in 0..3 {
            let rest: Vec<usize> = (0..3).filter(|&g| g != f).flat_map(|g| folds[g].clone()).collect();
            check(&eav::split::Split { train: rest, val: folds[f].clone(), test: s.test.clone() }, true);
            // 3 training trials per class and subject: one of each in every fold.
            assert_eq!(folds[f].len(), 2 * 5 * 4, "fold {f}");
        }
        assert_eq!(trial_folds(&samples, &s.train, 1), vec![s.train.clone()]);
        let with_val = official(&samples, 0.7, 0.34);
        check(&with_val, true);
        assert!(!with_val.val.is_empty());
        let test_set: HashSet<_> = s.test.iter().collect();
        assert!(
            with_val.val.iter().all(|i| !test_set.contains(i)),
            "validation must come from training trials"
        );
        let mut covered = HashSet::new();
        for fold in 0..4 {
            let f = kfold(&samples, 4, fold, 0.0);
            check(&f, true);
            covered.extend(f.test);
        }
        assert_eq!(covered.len(), samples.len());
        let l = loso(&samples, 2, 0.2);
        check(&l, true);
        assert!(l.test.iter().all(|&i| samples[i].subject == 2));
        assert!(l.train.iter().chain(&l.val).all(|&i| samples[i].subject == 1));
        assert_eq!("kfold:5".parse::<Protocol>().unwrap(), Protocol::KFold(5));
        assert!("kfold:1".parse::<Protocol>().is_err());

        let st = Standardizer::fit(&samples, &s.train, 30, 500);
        let mut w = samples[s.train[0]].eeg.clone();
        st.apply(&mut w, 500);
        assert!(w.iter().all(|v| v.is_finite()));
    }
}

/// A tree written with scipy (`savemat` plain and compressed, `wavfile.write` at 22 050 Hz), with a padded
/// folder name and both EEG variable names, loads with the right shapes, labels and audio matches.
#[test]
fn scipy_written_tree_loads() {
    use core_types::Emotion;
    use eav::dataset::{PreprocessConfig, preprocess};
    use eav::subject::{discover, load_subject};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/scipy_tree");
    let dirs = discover(&root).unwrap();
    assert_eq!(dirs.iter().map(|d| d.id).collect::<Vec<_>>(), vec![3, 4]);
    for sd in &dirs {
        let s = load_subject(sd).unwrap();
        assert_eq!((s.channels, s.samples_per_trial, s.trials.len(), s.video_files), (4, 10_000, 4, 1));
        let labels: Vec<(Emotion, bool)> = s.trials.iter().map(|t| (t.emotion, t.speaking)).collect();
        assert_eq!(
            labels,
            vec![
                (Emotion::Neutral, false),
                (Emotion::Neutral, true),
                (Emotion::Anger, false),
                (Emotion::Anger, true)
            ]
        );
        assert_eq!(
            s.trials.iter().filter(|t| t.audio.is_some()).map(|t| t.index).collect::<Vec<_>>(),
            vec![1, 3]
        );
        // EEG value at (time 100, channel 2, trial 3) as scipy stored it: sin(2π·(5+2+3·3)·0.2)·1.2.
        let want = (std::f64::consts::TAU * 16.0 * 0.2).sin() * 1.2;
        assert!((f64::from(s.eeg_trial(3)[2 * 10_000 + 100]) - want).abs() < 1e-6);
        // One second of 22.05 kHz audio is resampled and padded into four 5 s windows (with a note).
        let pre = preprocess(&s, &PreprocessConfig::default()).unwrap();
        assert_eq!(pre.samples.len(), 16);
        assert_eq!(pre.samples.iter().filter(|x| x.mfcc.is_some()).count(), 8);
        assert_eq!(pre.notes.len(), 2, "{:?}", pre.notes);
    }
}

#[test]
fn preprocessing_cache_hits_and_invalidates() {
    use eav::cache::{Outcome, preprocess_cached};
    use eav::dataset::PreprocessConfig;
    use eav::subject::discover;
    use eav::synth::{SynthConfig, write_synthetic};
    let root = tmp("cache_tree");
    let _ = std::fs::remove_dir_all(&root);
    write_synthetic(&root, &SynthConfig { subjects: 1, trials: 4, ..SynthConfig::default() }, &|_| {})
        .unwrap();
    let cache = tmp("cache_dir");
    let _ = std::fs::remove_dir_all(&cache);
    let sd = &discover(&root).unwrap()[0];
    let cfg = PreprocessConfig::default();
    let (a, first) = preprocess_cached(sd, &cfg, Some(&cache)).unwrap();
    let (b, second) = preprocess_cached(sd, &cfg, Some(&cache)).unwrap();
    assert_eq!((first, second), (Outcome::Miss, Outcome::Hit));
    assert_eq!(a, b);
    // Another setting is another entry.
    let other = PreprocessConfig { band_hz: (1.0, 40.0), ..cfg.clone() };
    assert_eq!(preprocess_cached(sd, &other, Some(&cache)).unwrap().1, Outcome::Miss);
    let entries = || {
        let mut v: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let before = entries();
    assert_eq!(before.len(), 2, "{before:?}");
    // A changed source file invalidates the entry; the stale entry of that setting is removed, the
    // other setting's entry stays.
    let wav = std::fs::read_dir(root.join("subject1/Audio")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&wav).unwrap();
    bytes.extend_from_slice(&[0, 0]);
    std::fs::write(&wav, bytes).unwrap();
    assert_eq!(preprocess_cached(sd, &cfg, Some(&cache)).unwrap().1, Outcome::Miss);
    let after = entries();
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(before.iter().filter(|e| after.contains(e)).count(), 1, "{before:?} → {after:?}");
    assert_eq!(preprocess_cached(sd, &cfg, Some(&cache)).unwrap().1, Outcome::Hit);
    // A damaged cache file is recomputed, not trusted.
    for f in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(f.unwrap().path(), b"garbage").unwrap();
    }
    let (c, outcome) = preprocess_cached(sd, &cfg, Some(&cache)).unwrap();
    assert_eq!(outcome, Outcome::Miss);
    assert_eq!(c.samples.len(), a.samples.len());
}

/// Speech windows cut from a trial's file and turned into MFCCs give the preprocessing's numbers; noise
/// added at an SNR is measured back at that SNR (within 0.1 dB) and changes the MFCCs more the lower it is.
#[test]
fn speech_windows_repeat_the_preprocessing_and_noise_has_its_snr() {
    use eav::dataset::{add_noise, speech_mfcc, speech_windows};
    use rand::SeedableRng;
    let root = tmp("speech-windows");
    let cfg = eav::synth::SynthConfig { subjects: 1, trials: 4, ..Default::default() };
    eav::synth::write_synthetic(&root, &cfg, &|_| {}).unwrap();
    let sd = &eav::subject::discover(&root).unwrap()[0];
    let files = eav::subject::audio_files(sd).unwrap();
    assert_eq!(files.keys().copied().collect::<Vec<_>>(), [1, 3], "speaking trials only");
    let path = &files[&1];
    let causal = eav::dataset::PreprocessConfig { causal: true, ..Default::default() };
    for pre in [causal, eav::dataset::PreprocessConfig::default()] {
        let samples = eav::dataset::preprocess(&eav::subject::load_subject(sd).unwrap(), &pre).unwrap();
        let windows = speech_windows(path, &pre).unwrap();
        let mfcc = speech_mfcc(&windows, &pre, path).unwrap();
        let from_pre: Vec<&Vec<f32>> =
            samples.samples.iter().filter(|s| s.trial == 1).map(|s| s.mfcc.as_ref().unwrap()).collect();
        assert_eq!(mfcc.iter().collect::<Vec<_>>(), from_pre, "causal: {}", pre.causal);
    }
    let pre = eav::dataset::PreprocessConfig::default();
    let windows = speech_windows(path, &pre).unwrap();
    let mfcc = speech_mfcc(&windows, &pre, path).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let mut change = Vec::new();
    for snr in [20.0, 10.0, 0.0] {
        let clean = windows[0].clone();
        let mut noisy = clean.clone();
        add_noise(&mut noisy, snr, &mut rng);
        let p = |x: &mut dyn Iterator<Item = f64>| x.map(|v| v * v).sum::<f64>();
        let signal = p(&mut clean.iter().map(|&v| f64::from(v)));
        let noise = p(&mut noisy.iter().zip(&clean).map(|(a, b)| f64::from(*a) - f64::from(*b)));
        let measured = 10.0 * (signal / noise).log10();
        assert!((measured - snr).abs() < 0.1, "asked {snr} dB, measured {measured}");
        let m = speech_mfcc(&[noisy], &pre, path).unwrap();
        change.push(m[0].iter().zip(&mfcc[0]).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>());
    }
    assert!(change[0] > 0.0 && change[0] < change[1] && change[1] < change[2], "{change:?}");
    let mut silent = vec![0.0f32; 100];
    assert_eq!(add_noise(&mut silent, 10.0, &mut rng), 0.0);
    assert!(silent.iter().all(|v| *v == 0.0));
}

/// The causal path: chunk-invariant filters whose numbers are the zero-phase ones delayed, or (EEG) the
/// steady state of a constant offset; the preprocessing's causal windows are cut from them.
mod causal {
    use eav::causal::{SpeechFrames, eeg_channel, frame_lead, mfcc_config, speech_16k};
    use eav::signal::{CausalResampler, History, decimate};
    use proptest::prelude::*;

    fn signal(n: usize, seed: u64) -> Vec<f64> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|i| (i as f64 * 0.05).sin() + rng.random_range(-0.5..0.5)).collect()
    }

    fn run(r: &mut CausalResampler, x: &[f64]) -> Vec<f64> {
        let mut out = Vec::new();
        for &v in x {
            r.push(v, |y| out.push(y));
        }
        out
    }

    /// With silence before the start, the causal resampler is scipy's `resample_poly` (checked against
    /// scipy in the signal tests) delayed by the filter's half length: 10 output samples whenever
    /// `down > up`. Its output count is `ceil(len · up / down)`.
    #[test]
    fn the_causal_resampler_is_resample_poly_delayed() {
        let x = signal(3000, 1);
        for down in [2, 3, 5] {
            let y = run(&mut CausalResampler::decimator(down, History::Zero), &x);
            let z = decimate(&x, down);
            assert_eq!(y.len(), z.len());
            for m in 0..z.len() - 10 {
                assert!((y[m + 10] - z[m]).abs() < 1e-12, "down {down} m {m}: {} vs {}", y[m + 10], z[m]);
            }
        }
        // 44.1 kHz → 16 kHz: up 160, down 441; as many outputs as the duration holds.
        let y = run(&mut CausalResampler::new(44_100, 16_000, History::Zero), &x);
        assert_eq!(y.len(), (3000usize * 160).div_ceil(441));
        // A 1 kHz tone keeps its amplitude through the 44.1 → 16 kHz filter (its pass band).
        let tone: Vec<f64> =
            (0..44_100).map(|i| (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 44_100.0).sin()).collect();
        let y = run(&mut CausalResampler::new(44_100, 16_000, History::Zero), &tone);
        let peak = y[1000..15_000].iter().fold(0.0f64, |a, v| a.max(v.abs()));
        assert!((peak - 1.0).abs() < 0.01, "peak {peak}");
    }

    /// A constant EEG offset (electrode DC) gives no output from the first sample on: the filters start in
    /// its steady state instead of ringing for seconds through the 0.5 Hz high-pass.
    #[test]
    fn an_offset_does_not_ring() {
        let pre = eav::dataset::PreprocessConfig::default();
        let y = eeg_channel(&vec![-1234.5f32; 5000], &pre);
        assert_eq!(y.len(), 1000);
        assert!(y.iter().all(|v| v.abs() < 1e-6), "max {}", y.iter().fold(0.0f64, |a, v| a.max(v.abs())));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any chunking of the input gives the same bits as the whole signal at once: EEG filters, the
        /// resampler, and the speech frames (which equal the MFCC crate's frames of the zero-led signal).
        #[test]
        fn chunking_does_not_change_the_numbers(cuts in proptest::collection::vec(1usize..900, 1..40), rate in prop::sample::select(vec![16_000u32, 44_100, 48_000])) {
            let pre = eav::dataset::PreprocessConfig::default();
            let x: Vec<f32> = signal(6000, 2).iter().map(|&v| v as f32 * 30.0).collect();
            let whole = eeg_channel(&x, &pre);
            let mut f = eav::causal::EegFilter::new(&pre);
            let (mut got, mut at, mut i) = (Vec::new(), 0, 0);
            while at < x.len() {
                let n = cuts[i % cuts.len()].min(x.len() - at);
                for &v in &x[at..at + n] {
                    f.push(v, |y| got.push(y));
                }
                at += n;
                i += 1;
            }
            prop_assert_eq!(&got, &whole);

            let speech: Vec<f32> = signal(rate as usize / 2, 3).iter().map(|&v| v as f32 * 0.1).collect();
            let (mut mel, mut energy) = (Vec::new(), Vec::new());
            let mut frames = SpeechFrames::new(rate).unwrap();
            let (mut at, mut i) = (0, 0);
            while at < speech.len() {
                let n = cuts[i % cuts.len()].min(speech.len() - at);
                frames.push(&speech[at..at + n], &mut mel, &mut energy).unwrap();
                at += n;
                i += 1;
            }
            let s16 = speech_16k(&speech, rate);
            let mut led = vec![0.0f32; frame_lead()];
            led.extend_from_slice(&s16);
            let planner = mfcc::Mfcc::new(mfcc_config()).unwrap();
            let all = planner.mel_frames(&led).unwrap();
            let n = frames.frames() as usize;
            prop_assert!(n >= s16.len() / 160 - 1 && n <= s16.len() / 160);
            prop_assert_eq!(&mel[..], &all[..n * 40]);
            prop_assert_eq!(energy.len(), n);
            let e0: f64 = s16[..160].iter().map(|&v| f64::from(v).powi(2)).sum();
            prop_assert_eq!(energy[0], e0);
        }
    }
}

/// The synthetic tree's clips: one per trial in the real naming scheme, decodable, the blob flickering at
/// its class's rate, and the EEG and audio files the same bytes with and
/// without video.
#[test]
fn synthetic_video_carries_the_class_and_changes_nothing_else() {
    let with = tmp("synth-video");
    let without = tmp("synth-novideo");
    let cfg = eav::synth::SynthConfig { subjects: 1, trials: 10, trial_seconds: 6.0, ..Default::default() };
    eav::synth::write_synthetic(&with, &cfg, &|_| {}).unwrap();
    eav::synth::write_synthetic(&without, &eav::synth::SynthConfig { video: false, ..cfg.clone() }, &|_| {})
        .unwrap();
    for f in ["EEG/subject1_eeg.mat", "Audio/002_Trial_01_Speaking_Neutral_aud.wav"] {
        assert_eq!(
            std::fs::read(with.join("subject1").join(f)).unwrap(),
            std::fs::read(without.join("subject1").join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(std::fs::read_dir(without.join("subject1/Video")).unwrap().count(), 0);
    let mut names: Vec<String> = std::fs::read_dir(with.join("subject1/Video"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 10);
    assert_eq!(names[0], "001_Trial_01_Listening_Neutral.mp4");
    assert_eq!(names[1], "002_Trial_01_Speaking_Neutral.mp4");
    // The blob's mean brightness, sampled at 5 frames/s as the windows are, peaks at the class's rate.
    let rates = [0.6, 1.0, 1.4, 1.8, 2.2];
    let subject = eav::subject::load_subject(&eav::subject::discover(&with).unwrap()[0]).unwrap();
    for (trial, name) in subject.trials.iter().zip(&names) {
        let trace = blob_trace(&with.join("subject1/Video").join(name));
        assert_eq!(trace.len(), 180);
        let blob: Vec<f64> = trace.into_iter().step_by(6).collect();
        let mean = blob.iter().sum::<f64>() / blob.len() as f64;
        let blob: Vec<f64> = blob.iter().map(|v| v - mean).collect();
        let power = |hz: f64| {
            let (mut re, mut im) = (0.0, 0.0);
            for (k, v) in blob.iter().enumerate() {
                let a = std::f64::consts::TAU * hz * k as f64 / 5.0;
                re += v * a.cos();
                im += v * a.sin();
            }
            re * re + im * im
        };
        let best = (0..5).max_by(|&a, &b| power(rates[a]).total_cmp(&power(rates[b]))).unwrap();
        assert_eq!(best, trial.emotion.index(), "{name}");
    }
}

/// The blob's mean luma in every frame of one clip (the 8 × 8 pixels at the centre of a 32 × 24 frame).
fn blob_trace(path: &std::path::Path) -> Vec<f64> {
    video::decode_luma(path, None)
        .unwrap()
        .iter()
        .map(|f| {
            let mut s = 0.0;
            for y in 8..16 {
                for x in 12..20 {
                    s += f64::from(f.data[y * 32 + x]);
                }
            }
            s / 64.0
        })
        .collect()
}

/// `video_jitter` shakes the blob's brightness from frame to frame (the same jolt over the whole blob),
/// 0 leaves it on its sinusoid, and settings written before the field existed read as 0, so the built-in
/// tree is written again rather than kept with other clips.
#[test]
fn video_jitter_shakes_the_blob_and_older_settings_read_as_none() {
    let clip = |jitter: f64| {
        let root = tmp(&format!("synth-jitter-{jitter}"));
        let cfg = eav::synth::SynthConfig {
            subjects: 1,
            trials: 2,
            trial_seconds: 6.0,
            video_jitter: jitter,
            ..Default::default()
        };
        eav::synth::write_synthetic(&root, &cfg, &|_| {}).unwrap();
        blob_trace(&root.join("subject1/Video/002_Trial_01_Speaking_Neutral.mp4"))
    };
    // Mean square of the second difference: a slow sinusoid has almost none; independent jolts of
    // σ levels give about 6σ².
    let roughness = |t: &[f64]| {
        t.windows(3).map(|w| (w[0] - 2.0 * w[1] + w[2]).powi(2)).sum::<f64>() / (t.len() - 2) as f64
    };
    let (still, shaken) = (roughness(&clip(0.0)), roughness(&clip(9.0)));
    assert!(still < 40.0, "without jitter: {still}");
    assert!(shaken > 200.0 && shaken > 10.0 * still, "with jitter 9: {shaken} against {still}");
    for bad in [-1.0, f64::NAN] {
        let cfg = eav::synth::SynthConfig { subjects: 1, trials: 2, video_jitter: bad, ..Default::default() };
        let err =
            eav::synth::write_synthetic(&tmp("synth-jitter-bad"), &cfg, &|_| {}).unwrap_err().to_string();
        assert!(err.contains("cannot make EAV windows") && err.contains("video_jitter"), "{err}");
    }
    let mut old = serde_json::to_value(eav::synth::SynthConfig::default()).unwrap();
    old.as_object_mut().unwrap().remove("video_jitter");
    let read: eav::synth::SynthConfig = serde_json::from_value(old).unwrap();
    assert_eq!(read.video_jitter, 0.0);
    assert_ne!(read, eav::synth::SynthConfig::default());
}

/// Video windows through preprocessing: every trial (listening ones too) gets its clip's windows, aligned
/// with its EEG windows, equal to `video::windows` of the clip; they survive the cache bit for bit; a
/// damaged clip is an error naming it when video is read, and is never opened when it is not.
#[test]
fn video_windows_are_preprocessed_cached_and_bad_clips_named() {
    let root = tmp("video-windows");
    let cfg = eav::synth::SynthConfig { subjects: 1, trials: 6, ..Default::default() };
    eav::synth::write_synthetic(&root, &cfg, &|_| {}).unwrap();
    let sd = eav::subject::discover(&root).unwrap().remove(0);
    let sampling = video::Sampling { width: 16, height: 12, ..Default::default() };
    let pre = eav::dataset::PreprocessConfig { video: Some(sampling.clone()), ..Default::default() };
    let subject = eav::subject::load_subject(&sd).unwrap();
    assert!(subject.trials.iter().all(|t| t.video.is_some()), "every synthetic trial has its clip");
    let s = eav::dataset::preprocess(&subject, &pre).unwrap();
    assert_eq!(s.video_len, 25 * 16 * 12);
    assert_eq!(s.samples.len(), 6 * 4);
    for trial in &subject.trials {
        let expected = video::windows(trial.video.as_ref().unwrap(), &sampling).unwrap();
        assert_eq!(expected.len(), 4);
        for (w, want) in expected.iter().enumerate() {
            let smp = &s.samples[trial.index * 4 + w];
            assert_eq!((smp.trial, smp.window), (trial.index, w));
            assert_eq!(smp.video.as_deref(), Some(want.as_slice()), "trial {} window {w}", trial.index);
        }
    }
    assert!(s.samples.iter().any(|x| !x.speaking && x.video.is_some()), "listening trials keep their video");
    // Without video nothing changes: the same EEG and MFCC, no video, and the settings serialise as before.
    let plain = eav::dataset::preprocess(&subject, &eav::dataset::PreprocessConfig::default()).unwrap();
    assert_eq!(plain.video_len, 0);
    for (a, b) in plain.samples.iter().zip(&s.samples) {
        assert!(a.video.is_none());
        assert_eq!((&a.eeg, &a.mfcc), (&b.eeg, &b.mfcc));
    }
    assert!(!serde_json::to_string(&eav::dataset::PreprocessConfig::default()).unwrap().contains("video"));
    // Through the cache.
    let cache = tmp("video-cache");
    let (first, o1) = eav::cache::preprocess_cached(&sd, &pre, Some(&cache)).unwrap();
    let (second, o2) = eav::cache::preprocess_cached(&sd, &pre, Some(&cache)).unwrap();
    assert_eq!((o1, o2), (eav::cache::Outcome::Miss, eav::cache::Outcome::Hit));
    assert_eq!(first, second);
    assert_eq!(first, s);
    // A truncated clip: named when video is read (and the cache entry for video is recomputed), ignored
    // otherwise.
    let clip = subject.trials[3].video.clone().unwrap();
    let bytes = std::fs::read(&clip).unwrap();
    std::fs::write(&clip, &bytes[..bytes.len() / 3]).unwrap();
    let err = eav::cache::preprocess_cached(&sd, &pre, Some(&cache)).unwrap_err();
    assert!(matches!(err, eav::Error::Video { .. }), "{err}");
    assert!(err.to_string().contains(&*clip.file_name().unwrap().to_string_lossy()), "{err}");
    let again =
        eav::dataset::preprocess(&eav::subject::load_subject(&sd).unwrap(), &Default::default()).unwrap();
    assert_eq!(again, plain);
    // Every other kind of bad clip: an error naming it.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../video/tests/data");
    let bad: [(&str, Option<&str>); 5] = [
        ("zero bytes", None),
        ("4:2:2", Some("yuv422.mp4")),
        ("10-bit", Some("high10.mp4")),
        ("MPEG-4 part 2", Some("mpeg4.mp4")),
        ("no video track", Some("audio_only.mp4")),
    ];
    for (what, file) in bad {
        match file {
            Some(f) => std::fs::copy(data.join(f), &clip).map(|_| ()).unwrap(),
            None => std::fs::write(&clip, b"").unwrap(),
        }
        let err = eav::dataset::preprocess(&eav::subject::load_subject(&sd).unwrap(), &pre).unwrap_err();
        assert!(matches!(err, eav::Error::Video { .. }), "{what}: {err}");
        assert!(err.to_string().contains(&*clip.file_name().unwrap().to_string_lossy()), "{what}: {err}");
    }
    // Sampling that gives fewer windows than the EEG: a dataset error.
    let short = eav::dataset::PreprocessConfig {
        video: Some(video::Sampling { frames: 300, ..sampling }),
        ..Default::default()
    };
    assert!(matches!(eav::dataset::preprocess(&subject, &short), Err(eav::Error::Dataset { .. })));
}
