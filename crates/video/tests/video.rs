//! Golden clips written once by ffmpeg/libx264 (128×96, 30 frames at 30 fps): every decoded luma frame
//! equals ffmpeg's (hashes in `tests/data/golden.json`); headers; and every kind of bad clip is a typed
//! error naming the file.

use std::path::{Path, PathBuf};

use video::{Error, decode_luma, probe};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn fnv1a(bytes: &[u8]) -> String {
    let h = bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{h:016x}")
}

/// Baseline, main with B-frames and high profile with a B-pyramid (moov at the front): the luma of every
/// frame, in presentation order, is ffmpeg's (`-vf extractplanes=y`), bit for bit.
#[test]
fn decoded_luma_equals_ffmpeg_on_every_frame() {
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("golden.json")).unwrap()).unwrap();
    for (name, want) in golden.as_object().unwrap() {
        let frames = decode_luma(&data(name), None).unwrap();
        let hashes: Vec<String> = frames.iter().map(|f| fnv1a(&f.data)).collect();
        let want: Vec<String> =
            want["luma_fnv1a"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()).collect();
        assert_eq!(hashes.len(), 30, "{name}");
        assert_eq!(hashes, want, "{name}");
        assert!(frames.iter().all(|f| (f.width, f.height) == (128, 96)));
        let times: Vec<f64> = frames.iter().map(|f| f.time_s).collect();
        assert!(times.windows(2).all(|w| (w[1] - w[0] - 1.0 / 30.0).abs() < 1e-6), "{name}: {times:?}");
        assert_eq!(decode_luma(&data(name), Some(7)).unwrap(), frames[..7]);
    }
}

#[test]
fn headers_name_codec_profile_chroma_and_size() {
    let cases = [
        ("baseline.mp4", "avc1", "constrained_baseline", "4:2:0", 8),
        ("main_bframes.mp4", "avc1", "main", "4:2:0", 8),
        ("high.mp4", "avc1", "high", "4:2:0", 8),
        ("yuv422.mp4", "avc1", "high422", "4:2:2", 8),
        ("high10.mp4", "avc1", "high10", "4:2:0", 10),
    ];
    for (name, codec, profile, chroma, depth) in cases {
        let i = probe(&data(name)).unwrap();
        assert_eq!(
            (i.codec.as_str(), i.profile.as_str(), i.chroma_format.as_str(), i.bit_depth),
            (codec, profile, chroma, depth),
            "{name}"
        );
        assert_eq!((i.width, i.height, i.frames), (128, 96, 30), "{name}");
        assert!((i.fps - 30.0).abs() < 0.01 && (i.duration_s - 1.0).abs() < 0.01, "{name}: {i:?}");
        assert!(!i.interlaced);
    }
    let m = probe(&data("mpeg4.mp4")).unwrap();
    assert_eq!(m.codec, "mp4v");
    assert!(m.problem().unwrap().contains("not H.264"));
}

fn message(e: &Error) -> String {
    e.to_string()
}

/// Zero bytes, a cut-off file, no video track, another codec, 4:2:2, 10-bit: typed errors that name the
/// file and say why; never a panic.
#[test]
fn bad_clips_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let e = decode_luma(&empty, None).unwrap_err();
    assert!(matches!(e, Error::Container { .. }) && message(&e).contains("empty.mp4: empty file"), "{e}");

    let e = decode_luma(&dir.path().join("missing.mp4"), None).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && message(&e).contains("missing.mp4"), "{e}");

    let e = decode_luma(&data("audio_only.mp4"), None).unwrap_err();
    assert!(
        matches!(e, Error::NoVideo { .. }) && message(&e).contains("audio_only.mp4: no video track"),
        "{e}"
    );

    for (name, why) in [("mpeg4.mp4", "not H.264"), ("yuv422.mp4", "chroma 4:2:2"), ("high10.mp4", "10-bit")]
    {
        let e = decode_luma(&data(name), None).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{name}: {e}");
        assert!(message(&e).contains(name) && message(&e).contains(why), "{e}");
    }

    // Every cut of a clip (faststart and moov-at-end layouts) is an error or, when only trailing data is
    // lost, fewer frames; never a panic.
    for name in ["baseline.mp4", "high.mp4"] {
        let bytes = std::fs::read(data(name)).unwrap();
        let cut = dir.path().join(format!("cut-{name}"));
        for len in (0..bytes.len()).step_by(97) {
            std::fs::write(&cut, &bytes[..len]).unwrap();
            match decode_luma(&cut, None) {
                Ok(frames) => assert!(frames.len() <= 30),
                Err(e) => assert!(message(&e).contains("cut-"), "{e}"),
            }
            let _ = probe(&cut);
        }
    }
    // Damaged sample data (bytes flipped in the middle of the stream): an error naming a sample, or
    // frames; never a panic.
    let mut bytes = std::fs::read(data("main_bframes.mp4")).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let bad = dir.path().join("flipped.mp4");
    std::fs::write(&bad, &bytes).unwrap();
    if let Err(e) = decode_luma(&bad, None) {
        assert!(message(&e).contains("flipped.mp4"), "{e}");
    }
}

/// Box averaging: a constant stays constant, halving averages 2×2 blocks, and a 3 → 2 shrink weights the
/// shared middle pixel by its covered half.
#[test]
fn area_resize_averages_the_covered_area() {
    use video::area_resize;
    assert!(area_resize(&[77; 12 * 10], 12, 10, 5, 3).iter().all(|v| (v - 77.0).abs() < 1e-4));
    let src: Vec<u8> = (0..16).collect();
    assert_eq!(area_resize(&src, 4, 4, 2, 2), [2.5, 4.5, 10.5, 12.5]);
    let src = [0u8, 90, 180, 30, 120, 210, 60, 150, 240];
    let out = area_resize(&src, 3, 3, 2, 2);
    let want = (0.0 + 0.5 * 90.0 + 0.5 * 30.0 + 0.25 * 120.0) / 2.25;
    assert!((f64::from(out[0]) - want).abs() < 1e-4, "{out:?}");
}

/// Windows sample every `step`-th frame in presentation order (B-frames reordered first) and resize each;
/// a clip shorter than the frames asked for is a typed error.
#[test]
fn windows_sample_resized_frames_in_presentation_order() {
    use video::{Sampling, area_resize, windows};
    let s = Sampling { step: 6, frames: 30, per_window: 5, width: 16, height: 12 };
    assert_eq!(s.windows(), 1);
    assert_eq!(Sampling::default().windows(), 4);
    for name in ["main_bframes.mp4", "high.mp4"] {
        let w = windows(&data(name), &s).unwrap();
        let frames = decode_luma(&data(name), None).unwrap();
        let want: Vec<f32> =
            [0, 6, 12, 18, 24].iter().flat_map(|&i| area_resize(&frames[i].data, 128, 96, 16, 12)).collect();
        assert_eq!(w, [want], "{name}");
        let two = Sampling { frames: 30, step: 3, per_window: 5, ..s.clone() };
        assert_eq!(windows(&data(name), &two).unwrap().len(), 2);
    }
    let e = windows(&data("high.mp4"), &Sampling { frames: 31, ..s }).unwrap_err();
    assert!(matches!(e, Error::Short { frames: 30, needed: 31, .. }), "{e}");
    assert!(e.to_string().contains("high.mp4: 30 frames, 31 needed"), "{e}");
    // Decoding stops after the samples the first frames need.
    assert_eq!(video::decode_map(&data("main_bframes.mp4"), Some(4), |l| l.time_s).unwrap().len(), 4);
}

/// Frames written by `write_mp4` (pure-Rust encoder and muxer) come back from `probe` and `decode_luma`
/// with their size, rate and count, and within a few luma levels of what was written.
#[test]
fn written_clips_decode_to_their_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("written.mp4");
    let (w, h) = (64, 48);
    let frames: Vec<Vec<u8>> =
        (0..45).map(|t| (0..w * h).map(|i| ((i % w) * 3 + (i / w) * 2 + t * 4) as u8).collect()).collect();
    video::write_mp4(&path, w, h, 30, 18, &frames).unwrap();
    let info = probe(&path).unwrap();
    assert_eq!(
        (info.codec.as_str(), info.profile.as_str(), info.width, info.height, info.frames),
        ("avc1", "constrained_baseline", w, h, 45)
    );
    assert!((info.fps - 30.0).abs() < 1e-9 && (info.duration_s - 1.5).abs() < 1e-9, "{info:?}");
    assert!(info.problem().is_none());
    let back = decode_luma(&path, None).unwrap();
    assert_eq!(back.len(), 45);
    for (a, b) in back.iter().zip(&frames) {
        let mean_err =
            a.data.iter().zip(b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / (w * h) as f64;
        assert!(mean_err < 2.0, "{mean_err}");
    }
    let err = video::write_mp4(&path, 63, 48, 30, 18, &frames).unwrap_err();
    assert!(err.to_string().contains("written.mp4"), "{err}");
}
