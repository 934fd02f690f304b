//! Parity with librosa 0.11 (reference arrays in `tests/data`, made by the reference script) and
//! property tests of the planner.

use std::path::{Path, PathBuf};

use mfcc::{Error, Mfcc, MfccConfig};
use proptest::prelude::*;

const SIGNALS: [&str; 5] =
    ["sine440_1s", "chirp_100_4000_1s", "white_noise_seed0_1s", "sine440_short_0p1s", "silence_1s"];

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

/// Reads a little-endian float32 `.npy` file (C order): its shape and values.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}: not an npy file", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{}: {header}", path.display());
    assert!(header.contains("'fortran_order': False"), "{}: {header}", path.display());
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape_text.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let values = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, values)
}

fn configs() -> [(&'static str, MfccConfig); 2] {
    [("project_16k", MfccConfig::project()), ("librosa_default", MfccConfig::librosa_default())]
}

fn max_abs_diff(a: &[f64], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - f64::from(*y)).abs()).fold(0.0, f64::max)
}

/// The largest excess of `|a − b|` over the tolerance `max(tol, 2 ulp of b in f32)`; ≤ 0 passes.
fn excess(a: &[f64], b: &[f32], tol: f64) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let ulp = f64::from(y.abs()) * f64::from(f32::EPSILON);
            (x - f64::from(*y)).abs() - tol.max(2.0 * ulp)
        })
        .fold(f64::NEG_INFINITY, f64::max)
}

/// Tolerance of the f64 pipeline against librosa. librosa computes in float32 and the reference is stored
/// in float32, so values beyond ~1000 in magnitude (silence under the default config: −100 dB · √128 ≈
/// −1131) carry 1–2 float32 ulps (1.2e-4 each there) of their own rounding: the bound is 1e-4 absolute or
/// two float32 ulps of the reference value, whichever is larger. Measured: ≤ 6.4e-5 on every non-silent
/// signal.
const F64_TOL: f64 = 1e-4;

/// Tolerances of the f32 pipeline (`Mfcc::<f32>`, librosa's own precision for float32 input) against the
/// same reference: the f32 FFT's rounding in low-power bins, far below the clip's maximum, moves the mel
/// spectrogram by up to 1.1e-3 dB and the MFCCs by up to 2.7e-4 (measured, both configurations); the
/// bounds are 2e-3 dB and 5e-4 (under 1.5e-6 of the largest coefficient of the tone signals).
const F32_TOL_MFCC: f64 = 5e-4;
const F32_TOL_DB: f64 = 2e-3;

fn check_parity<F: mfcc::Float>(tol_mfcc: f64, tol_db: f64) {
    let precision = std::any::type_name::<F>();
    for (name, cfg) in configs() {
        let planner = Mfcc::<F>::with_precision(cfg).unwrap();
        for signal in SIGNALS {
            let (_, y) = read_npy(&data(&format!("signals/{signal}.npy")));
            let (shape, want) = read_npy(&data(&format!("{name}/{signal}.mfcc.npy")));
            let got = planner.mfcc(&y).unwrap();
            assert_eq!([got.shape().0, got.shape().1], shape[..], "{name}/{signal}");
            // f64 input gives the same numbers.
            let y64: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
            assert!(planner.mfcc(&y64).unwrap() == got, "{precision} {name}/{signal}: f64 input differs");
            let got = got.to_f64();
            let d = max_abs_diff(got.as_slice(), &want);
            let e = excess(got.as_slice(), &want, tol_mfcc);
            assert!(e <= 0.0, "{precision} {name}/{signal}: mfcc max abs diff {d}, {e} over the bound");

            let (_, want_db) = read_npy(&data(&format!("{name}/{signal}.mel_db.npy")));
            let db = planner.mel_db(&y).unwrap().to_f64();
            let d_db = max_abs_diff(db.as_slice(), &want_db);
            let e = excess(db.as_slice(), &want_db, tol_db);
            assert!(e <= 0.0, "{precision} {name}/{signal}: mel_db max abs diff {d_db}, {e} over the bound");
            println!("{precision} {name}/{signal}: max abs diff mfcc {d:.2e}, mel_db {d_db:.2e}");
        }
    }
}

#[test]
fn mfcc_and_mel_db_match_librosa() {
    check_parity::<f64>(F64_TOL, F64_TOL);
}

#[test]
fn single_precision_matches_librosa_within_its_bound() {
    check_parity::<f32>(F32_TOL_MFCC, F32_TOL_DB);
}

#[test]
fn mel_basis_and_window_equal_librosa() {
    for (name, cfg) in configs() {
        let planner = Mfcc::new(cfg).unwrap();
        let (shape, want) = read_npy(&data(&format!("{name}/mel_basis.npy")));
        let basis = planner.mel_basis();
        assert_eq!([basis.shape().0, basis.shape().1], shape[..]);
        for (i, (g, w)) in basis.as_slice().iter().zip(&want).enumerate() {
            assert_eq!(*g as f32, *w, "{name}: mel basis element {i}");
        }
        let (_, window) = read_npy(&data(&format!("{name}/window.npy")));
        let d = max_abs_diff(planner.window(), &window);
        assert!(d < 1e-7, "{name}: window differs by {d}");
    }
}

/// The MFCCs are the orthonormal DCT-II of the floored mel-dB frames, also where the `top_db` floor
/// clips some frames and not others (a tone, then near-silence 120 dB down).
#[test]
fn mfcc_is_the_dct_of_the_floored_mel_spectrogram() {
    let cfg = MfccConfig::project();
    let planner = Mfcc::new(cfg.clone()).unwrap();
    let signal: Vec<f64> = (0..16_000)
        .map(|i| {
            let tone = (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 16_000.0).sin();
            if i < 8_000 { tone } else { 1e-6 * tone }
        })
        .collect();
    let mel = planner.mel_db(&signal).unwrap();
    let mfcc = planner.mfcc(&signal).unwrap();
    let (n_mels, frames) = mel.shape();
    let floor = mel.as_slice().iter().copied().fold(f64::INFINITY, f64::min);
    let clipped = (0..frames).filter(|&t| (0..n_mels).any(|m| mel.row(m)[t] == floor)).count();
    assert!(clipped > 0 && clipped < frames, "the floor should clip some frames only ({clipped})");
    for t in 0..frames {
        for k in 0..cfg.n_mfcc {
            let scale = if k == 0 { (1.0 / n_mels as f64).sqrt() } else { (2.0 / n_mels as f64).sqrt() };
            let want: f64 = (0..n_mels)
                .map(|m| {
                    let angle =
                        std::f64::consts::PI * k as f64 * (2.0 * m as f64 + 1.0) / (2.0 * n_mels as f64);
                    scale * angle.cos() * mel.row(m)[t]
                })
                .sum();
            assert!((mfcc.row(k)[t] - want).abs() < 1e-9, "frame {t}, coefficient {k}");
        }
    }
}

/// The frames before the floor, floored and transformed by `cepstra`, are the MFCCs (both `center`
/// settings); frames computed piece by piece from even frames give the same bits as the whole.
#[test]
fn cepstra_of_mel_frames_is_the_mfcc() {
    let signal: Vec<f64> = (0..16_000)
        .map(|i| {
            let tone = (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 16_000.0).sin();
            if i < 8_000 { tone } else { 1e-6 * tone }
        })
        .collect();
    for center in [true, false] {
        let planner = Mfcc::new(MfccConfig { center, ..MfccConfig::project() }).unwrap();
        let frames = planner.mel_frames(&signal).unwrap();
        let want = planner.mfcc(&signal).unwrap();
        let got = planner.cepstra(&frames).unwrap();
        assert_eq!(got.shape(), want.shape());
        let diff = got.as_slice().iter().zip(want.as_slice()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-9, "center {center}: {diff}");
        if !center {
            // Frames 10.. from the signal that starts at frame 10's first sample.
            let piece = planner.mel_frames(&signal[10 * 160..]).unwrap();
            assert_eq!(piece[..40 * 20], frames[40 * 10..40 * 30]);
        }
    }
    let planner = Mfcc::new(MfccConfig::project()).unwrap();
    assert_eq!(planner.cepstra(&[]).unwrap_err(), Error::Empty);
    assert!(matches!(planner.cepstra(&[0.0; 41]), Err(Error::Config(_))));
}

#[test]
fn five_seconds_give_501_frames() {
    let planner = Mfcc::new(MfccConfig::project()).unwrap();
    let feats = planner.mfcc(&vec![0.1f32; 80_000]).unwrap();
    assert_eq!(feats.shape(), (13, 501));
    assert_eq!(feats.crop_cols(500).shape(), (13, 500));
    assert_eq!(feats.crop_cols(500).row(3), &feats.row(3)[..500]);
}

#[test]
fn bad_signals_are_typed_errors() {
    let planner = Mfcc::new(MfccConfig::project()).unwrap();
    assert_eq!(planner.mfcc::<f32>(&[]).unwrap_err(), Error::Empty);
    let mut y = vec![0.0f32; 1000];
    y[17] = f32::NAN;
    assert!(matches!(planner.mfcc(&y).unwrap_err(), Error::NonFinite { index: 17, .. }));
    let uncentred = Mfcc::new(MfccConfig { center: false, ..MfccConfig::project() }).unwrap();
    assert_eq!(uncentred.mfcc(&[0.0f32; 100]).unwrap_err(), Error::TooShort { len: 100, n_fft: 512 });
    assert_eq!(uncentred.n_frames(512).unwrap(), 1);
    assert_eq!(uncentred.n_frames(512 + 160).unwrap(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_length_gives_the_right_frame_count(
        len in 1usize..4000,
        kind in 0u8..3,
        seed in any::<u64>(),
    ) {
        let planner = Mfcc::new(MfccConfig::project()).unwrap();
        let mut state = seed | 1;
        let y: Vec<f32> = (0..len)
            .map(|_| match kind {
                0 => 0.0,
                1 => 1.0,
                _ => {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                }
            })
            .collect();
        let m = planner.mfcc(&y).unwrap();
        prop_assert_eq!(m.shape(), (13, 1 + len / 160));
        prop_assert!(m.as_slice().iter().all(|v| v.is_finite()));
        let db = planner.mel_db(&y).unwrap();
        let max = db.as_slice().iter().copied().fold(f64::NEG_INFINITY, f64::max);
        prop_assert!(db.as_slice().iter().all(|&v| v >= max - 80.0 - 1e-9 && v <= max));

        // The same in single precision (frames go through the pass eight at a time: every remainder).
        let single = Mfcc::<f32>::with_precision(MfccConfig::project()).unwrap();
        let m = single.mfcc(&y).unwrap();
        prop_assert_eq!(m.shape(), (13, 1 + len / 160));
        prop_assert!(m.as_slice().iter().all(|v| v.is_finite()));
        let db = single.mel_db(&y).unwrap();
        let max = db.as_slice().iter().copied().fold(f32::NEG_INFINITY, f32::max);
        prop_assert!(db.as_slice().iter().all(|&v| v >= max - 80.0 && v <= max));
    }
}
