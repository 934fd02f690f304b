//! EAV's video clips (`Video/NNN_Trial_TT_{Listening|Speaking}_{Emotion}.mp4`, H.264 in MP4) read from
//! crates alone: the MP4 container by `re_mp4`, the H.264 stream by the pure-Rust `rusty_h264-decoder`
//! (pinned to one version; golden tests compare every decoded luma frame with ffmpeg's).
//!
//! - [`probe`]: a clip's header (codec, profile, chroma format, bit depth, size, frame rate, duration, frame
//!   count) without decoding it, and [`ClipInfo::problem`] for what the decoder cannot read.
//! - [`decode_luma`]: the luma (Y) plane of every frame in presentation order ([`decode_map`]: each frame
//!   mapped as it is decoded, so a long clip need not be held whole).
//! - [`windows`]: a clip as the official code's windows ([`Sampling`]: every 6th of the first 600 frames,
//!   25 per 5 s window, luma box-averaged by [`area_resize`] to 64×64).
//! - [`write_mp4`]: frames encoded by the pure-Rust `rusty_h264-encoder` into an MP4 clip (for synthetic
//!   trees).
//!
//! Every error names the file and the reason; a clip the decoder cannot read (4:2:2 or 4:4:4 chroma, more
//! than 8 bits, interlaced, another codec) is a typed error before any decoding.
//!
//! # Example
//! ```
//! let clip = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/high.mp4");
//! let info = video::probe(&clip)?;
//! assert_eq!((info.codec.as_str(), info.profile.as_str(), info.width, info.height), ("avc1", "high", 128, 96));
//! let frames = video::decode_luma(&clip, None)?;
//! assert_eq!(frames.len(), info.frames);
//! assert_eq!(frames[0].data.len(), 128 * 96);
//! # Ok::<(), video::Error>(())
//! ```

mod error;
mod sps;
mod write;

use std::path::Path;

use re_mp4::{Mp4, StsdBoxContent, TrackKind};
use serde::Serialize;

pub use error::{Error, Result};
pub use write::write_mp4;

/// What a clip's header says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipInfo {
    /// The video track's sample entry, e.g. `avc1`, `hev1`, `mp4v`.
    pub codec: String,
    /// The RFC 6381 codec string when the container gives one, e.g. `avc1.64000B`.
    pub codec_string: Option<String>,
    /// H.264 profile (`baseline`, `main`, `high`, `high10`, `high422`, …; empty for other codecs).
    pub profile: String,
    /// Chroma sampling: `4:0:0`, `4:2:0`, `4:2:2` or `4:4:4` (H.264; empty for other codecs).
    pub chroma_format: String,
    /// Luma bit depth (H.264; 0 for other codecs).
    pub bit_depth: u8,
    /// Whether the stream codes fields (interlaced) rather than only frames.
    pub interlaced: bool,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Frames per second (the track's sample count over its duration).
    pub fps: f64,
    /// Duration in seconds.
    pub duration_s: f64,
    /// Frames in the track.
    pub frames: usize,
}

impl ClipInfo {
    /// Why [`decode_luma`] cannot read this clip, if it cannot.
    #[must_use]
    pub fn problem(&self) -> Option<String> {
        if self.codec != "avc1" && self.codec != "avc3" {
            return Some(format!("codec {} is not H.264 (avc1)", self.codec));
        }
        if self.chroma_format != "4:2:0" {
            return Some(format!("chroma {} (only 4:2:0 is decoded)", self.chroma_format));
        }
        if self.bit_depth != 8 {
            return Some(format!("{}-bit samples (only 8-bit is decoded)", self.bit_depth));
        }
        if self.interlaced {
            return Some("interlaced (field-coded) video".into());
        }
        None
    }
}

/// One decoded frame's luma plane.
#[derive(Debug, Clone, PartialEq)]
pub struct Luma {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Presentation time in seconds from the clip's start.
    pub time_s: f64,
    /// `width · height` samples, row by row (video range as coded, not stretched).
    pub data: Vec<u8>,
}

/// A clip opened: the container parsed and its video track found.
struct Opened {
    mp4: Mp4,
    bytes: Vec<u8>,
    track: re_mp4::TrackId,
}

fn open(path: &Path) -> Result<Opened> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.into(), source })?;
    if bytes.is_empty() {
        return Err(Error::container(path, "empty file"));
    }
    // The parser has no panics on the inputs the tests cover, but a damaged file must never take the
    // process down: anything it panics on is a container error.
    let parsed = std::panic::catch_unwind(|| Mp4::read_bytes(&bytes));
    let mp4 = match parsed {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(Error::container(path, format!("not a readable MP4 file ({e})"))),
        Err(_) => return Err(Error::container(path, "not a readable MP4 file (the parser failed)")),
    };
    // A video track by its handler (`vide`), whatever its codec: the sample entry says which.
    let track = mp4
        .tracks()
        .iter()
        .find(|(_, t)| {
            t.kind == Some(TrackKind::Video) || t.trak(&mp4).mdia.hdlr.handler_type.to_string() == "vide"
        })
        .map(|(id, _)| *id)
        .ok_or_else(|| Error::NoVideo { path: path.into() })?;
    Ok(Opened { mp4, bytes, track })
}

/// The sample entry's four-character code.
fn codec_name(contents: &StsdBoxContent) -> String {
    match contents {
        StsdBoxContent::Avc1(_) => "avc1".into(),
        StsdBoxContent::Hev1(_) => "hev1".into(),
        StsdBoxContent::Hvc1(_) => "hvc1".into(),
        StsdBoxContent::Av01(_) => "av01".into(),
        StsdBoxContent::Vp08(_) => "vp08".into(),
        StsdBoxContent::Vp09(_) => "vp09".into(),
        StsdBoxContent::Mp4a(_) => "mp4a".into(),
        StsdBoxContent::Tx3g(_) => "tx3g".into(),
        StsdBoxContent::Unknown(fourcc) => fourcc.to_string(),
    }
}

/// Reads a clip's header: the container and, for H.264, the sequence parameter set. Decodes nothing.
///
/// # Errors
/// [`Error::Io`]; [`Error::Container`] for an empty, truncated or damaged file; [`Error::NoVideo`].
pub fn probe(path: &Path) -> Result<ClipInfo> {
    let o = open(path)?;
    info(path, &o)
}

fn info(path: &Path, o: &Opened) -> Result<ClipInfo> {
    let track = &o.mp4.tracks()[&o.track];
    let contents = &track.trak(&o.mp4).mdia.minf.stbl.stsd.contents;
    let codec = codec_name(contents);
    let frames = track.samples.len();
    let duration_s = if track.timescale > 0 { track.duration as f64 / track.timescale as f64 } else { 0.0 };
    let mut out = ClipInfo {
        codec,
        codec_string: track.codec_string(&o.mp4),
        profile: String::new(),
        chroma_format: String::new(),
        bit_depth: 0,
        interlaced: false,
        width: usize::from(track.width),
        height: usize::from(track.height),
        fps: if duration_s > 0.0 { frames as f64 / duration_s } else { 0.0 },
        duration_s,
        frames,
    };
    if let StsdBoxContent::Avc1(avc) = contents {
        let sps = avc
            .avcc
            .contents
            .sequence_parameter_sets
            .first()
            .ok_or_else(|| Error::container(path, "H.264 track without a sequence parameter set"))?;
        let h = sps::parse(&sps.bytes)
            .map_err(|reason| Error::container(path, format!("sequence parameter set: {reason}")))?;
        out.profile = h.profile.into();
        out.chroma_format = h.chroma_format.into();
        out.bit_depth = h.bit_depth;
        out.interlaced = h.interlaced;
    }
    Ok(out)
}

/// The luma plane of every frame (the first `max_frames` in presentation order, when given), in
/// presentation order. Pictures come out of the decoder in decode order and are put in order by the
/// container's composition times.
///
/// # Errors
/// As [`probe`]; [`Error::Unsupported`] for a clip [`ClipInfo::problem`] rejects; [`Error::Decode`] naming
/// the sample where the stream is damaged or truncated.
pub fn decode_luma(path: &Path, max_frames: Option<usize>) -> Result<Vec<Luma>> {
    decode_map(path, max_frames, |l| l)
}

/// [`decode_luma`] with each frame handed to `map` as soon as it is decoded (in decode order), so that
/// only what `map` keeps stays in memory; the results come back in presentation order. Only the samples
/// up to the last one the first `max_frames` frames need are decoded.
///
/// # Errors
/// As [`decode_luma`].
pub fn decode_map<T>(
    path: &Path,
    max_frames: Option<usize>,
    mut map: impl FnMut(Luma) -> T,
) -> Result<Vec<T>> {
    let o = open(path)?;
    let info = info(path, &o)?;
    if let Some(reason) = info.problem() {
        return Err(Error::Unsupported { path: path.into(), reason });
    }
    let track = &o.mp4.tracks()[&o.track];
    let StsdBoxContent::Avc1(avc) = &track.trak(&o.mp4).mdia.minf.stbl.stsd.contents else {
        return Err(Error::Unsupported { path: path.into(), reason: "not H.264".into() });
    };
    let avcc = &avc.avcc.contents;
    let length_size = usize::from(avcc.length_size_minus_one & 3) + 1;
    let mut params = Vec::new();
    for nal in avcc.sequence_parameter_sets.iter().chain(&avcc.picture_parameter_sets) {
        params.extend_from_slice(&[0, 0, 0, 1]);
        params.extend_from_slice(&nal.bytes);
    }
    // Samples in decode order; the ones the first `max_frames` presented frames need end with the last of
    // them in decode order.
    let mut samples: Vec<&re_mp4::Sample> = track.samples.iter().collect();
    samples.sort_by_key(|s| s.decode_timestamp);
    let mut by_cts: Vec<i64> = samples.iter().map(|s| s.composition_timestamp).collect();
    by_cts.sort_unstable();
    let needed = match max_frames {
        Some(n) if n < by_cts.len() => {
            let last_cts = by_cts[n.saturating_sub(1)];
            samples.iter().rposition(|s| s.composition_timestamp <= last_cts).map_or(0, |i| i + 1)
        }
        _ => samples.len(),
    };
    let timescale = track.timescale.max(1) as f64;
    let first_cts = by_cts.first().copied().unwrap_or(0);
    let mut decoder = rusty_h264_decoder::Decoder::new();
    let mut pictures: Vec<(i64, T)> = Vec::with_capacity(needed);
    let mut annex_b = Vec::new();
    for (n, s) in samples.iter().take(needed).enumerate() {
        let damaged = |reason: String| Error::Decode { path: path.into(), sample: n, reason };
        let data = o.bytes.get(s.byte_range()).ok_or_else(|| {
            damaged(format!("sample data at bytes {:?} lies past the end of the file", s.byte_range()))
        })?;
        annex_b.clear();
        // Parameter sets before every sync sample, so decoding can start at any of them.
        if s.is_sync {
            annex_b.extend_from_slice(&params);
        }
        let mut at = 0;
        while at < data.len() {
            let len_bytes = data
                .get(at..at + length_size)
                .ok_or_else(|| damaged("a NAL length prefix is cut off".into()))?;
            let len = len_bytes.iter().fold(0usize, |a, &b| (a << 8) | usize::from(b));
            let nal = data
                .get(at + length_size..at + length_size + len)
                .ok_or_else(|| damaged(format!("a NAL unit of {len} bytes is cut off")))?;
            annex_b.extend_from_slice(&[0, 0, 0, 1]);
            annex_b.extend_from_slice(nal);
            at += length_size + len;
        }
        match decoder.decode(&annex_b) {
            Ok(Some(frame)) => {
                let mut y = frame.y;
                y.truncate(frame.width * frame.height);
                let time_s = (s.composition_timestamp - first_cts) as f64 / timescale;
                let luma = Luma { width: frame.width, height: frame.height, time_s, data: y };
                pictures.push((s.composition_timestamp, map(luma)));
            }
            Ok(None) => return Err(damaged("no picture in the sample".into())),
            Err(e) => return Err(damaged(e.to_string())),
        }
    }
    pictures.sort_by_key(|(cts, _)| *cts);
    let mut out: Vec<T> = pictures.into_iter().map(|(_, t)| t).collect();
    if let Some(n) = max_frames {
        out.truncate(n);
    }
    Ok(out)
}

/// How a clip becomes windows, as the official EAV code does it: every `step`-th of the first `frames`
/// frames (5 frames/s of 30), `per_window` consecutive sampled frames per window (25: 5 s), each frame's
/// luma box-averaged to `width × height`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Sampling {
    /// Keep every `step`-th frame (6).
    pub step: usize,
    /// Frames read from the clip's start (600: 20 s at 30 fps).
    pub frames: usize,
    /// Sampled frames per window (25).
    pub per_window: usize,
    /// Output width (64).
    pub width: usize,
    /// Output height (64).
    pub height: usize,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { step: 6, frames: 600, per_window: 25, width: 64, height: 64 }
    }
}

impl Sampling {
    /// Windows per clip (4 by default).
    #[must_use]
    pub fn windows(&self) -> usize {
        self.frames.div_ceil(self.step.max(1)) / self.per_window.max(1)
    }
}

/// The windows of a clip: [`Sampling::windows`] windows, each `per_window × height × width` luma values
/// (0–255, as coded), frame by frame, row by row.
///
/// # Errors
/// As [`decode_luma`]; [`Error::Short`] when the clip has fewer frames than `s.frames`.
pub fn windows(path: &Path, s: &Sampling) -> Result<Vec<Vec<f32>>> {
    let step = s.step.max(1);
    // Every frame is decoded (the stream needs it); frames arrive in decode order, so each is kept resized
    // (16 KB at 64×64) and the sampled ones are picked in presentation order afterwards.
    let kept: Vec<Vec<f32>> =
        decode_map(path, Some(s.frames), |l| area_resize(&l.data, l.width, l.height, s.width, s.height))?;
    if kept.len() < s.frames {
        return Err(Error::Short { path: path.into(), frames: kept.len(), needed: s.frames });
    }
    let sampled: Vec<Vec<f32>> = kept.into_iter().step_by(step).collect();
    Ok(sampled.chunks_exact(s.per_window.max(1)).take(s.windows()).map(|w| w.concat()).collect())
}

/// Box-averages a `sw × sh` plane to `dw × dh`: each output pixel is the mean of the input area it covers,
/// input pixels on its edges weighted by the fraction covered (OpenCV's `INTER_AREA` when shrinking).
#[must_use]
pub fn area_resize(src: &[u8], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    /// Per output index: the covered input indices and their coverage, normalised to sum 1.
    fn spans(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f64)>> {
        let scale = n_in as f64 / n_out.max(1) as f64;
        (0..n_out)
            .map(|o| {
                let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
                let mut w: Vec<(usize, f64)> = (a.floor() as usize..(b.ceil() as usize).min(n_in))
                    .map(|i| (i, (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0)))
                    .filter(|&(_, w)| w > 0.0)
                    .collect();
                let total: f64 = w.iter().map(|x| x.1).sum();
                w.iter_mut().for_each(|x| x.1 /= total);
                w
            })
            .collect()
    }
    let (xs, ys) = (spans(sw, dw), spans(sh, dh));
    let mut out = Vec::with_capacity(dw * dh);
    for yw in &ys {
        for xw in &xs {
            let mut acc = 0.0;
            for &(y, wy) in yw {
                let row = &src[y * sw..(y + 1) * sw];
                acc += wy * xw.iter().map(|&(x, wx)| wx * f64::from(row[x])).sum::<f64>();
            }
            #[allow(clippy::cast_possible_truncation)]
            out.push(acc as f32);
        }
    }
    out
}
