//! Writing clips: frames encoded by the pure-Rust `rusty_h264-encoder` (Constrained Baseline, one
//! reference, no B-frames) and put in an MP4 file (`ftyp`, `moov` with the `avcC` parameter sets, `mdat`),
//! the layout ffmpeg writes with `-movflags +faststart`. For synthetic trees; not a general muxer.

use std::path::Path;

use rusty_h264_common::YuvFrame;
use rusty_h264_encoder::{Encoder, EncoderConfig};

use crate::error::{Error, Result};

/// An MP4 box: size, type, body.
fn bx(kind: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// A full box: version and flags, then the body.
fn full(kind: &[u8; 4], version: u8, flags: u32, parts: &[&[u8]]) -> Vec<u8> {
    let mut head = flags.to_be_bytes();
    head[0] = version;
    let mut all: Vec<&[u8]> = vec![&head];
    all.extend_from_slice(parts);
    bx(kind, &all)
}

fn be32(v: usize) -> [u8; 4] {
    u32::try_from(v).unwrap_or(u32::MAX).to_be_bytes()
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn matrix() -> Vec<u8> {
    MATRIX.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// The NAL units of an Annex-B byte stream.
fn nal_units(stream: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| {
            let mut end = starts.get(k + 1).map_or(stream.len(), |&n| n - 3);
            while end > s && stream[end - 1] == 0 {
                end -= 1; // the leading zero of a 4-byte start code, or trailing zeros
            }
            &stream[s..end]
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Encodes `frames` (luma planes of `width × height`, row by row; chroma neutral grey) at `fps` frames
/// per second with quantiser `qp` (lower is finer; 20 keeps the luma within a few levels) and writes them
/// as an MP4 clip at `path`.
///
/// # Errors
/// [`Error::Unsupported`] for an odd size, no frames or a plane of the wrong size; [`Error::Io`] when the
/// file cannot be written.
pub fn write_mp4(
    path: &Path,
    width: usize,
    height: usize,
    fps: u32,
    qp: u8,
    frames: &[Vec<u8>],
) -> Result<()> {
    let bad = |reason: String| Error::Unsupported { path: path.into(), reason };
    if width == 0
        || height == 0
        || !width.is_multiple_of(2)
        || !height.is_multiple_of(2)
        || frames.is_empty()
        || fps == 0
    {
        return Err(bad(format!("cannot write {} frames of {width}×{height} at {fps} fps", frames.len())));
    }
    if let Some(i) = frames.iter().position(|f| f.len() != width * height) {
        return Err(bad(format!("frame {i} holds {} values, not {width}×{height}", frames[i].len())));
    }
    let mut cfg = EncoderConfig::baseline(width, height);
    cfg.qp = qp;
    cfg.framerate = fps as f32;
    let mut encoder = Encoder::new(cfg).map_err(|e| bad(format!("encoder: {e}")))?;
    let grey = vec![128u8; (width / 2) * (height / 2)];
    let (mut sps, mut pps) = (Vec::new(), Vec::new());
    let (mut samples, mut sync) = (Vec::<Vec<u8>>::new(), Vec::new());
    for (i, y) in frames.iter().enumerate() {
        let frame = YuvFrame { width, height, y: y.clone(), u: grey.clone(), v: grey.clone() };
        let au = encoder.try_encode(&frame).map_err(|e| bad(format!("frame {i}: {e}")))?;
        let mut sample = Vec::new();
        let mut idr = false;
        for nal in nal_units(&au) {
            match nal[0] & 0x1f {
                7 => sps = nal.to_vec(),
                8 => pps = nal.to_vec(),
                t => {
                    idr |= t == 5;
                    sample.extend_from_slice(&be32(nal.len()));
                    sample.extend_from_slice(nal);
                }
            }
        }
        if sample.is_empty() {
            return Err(bad(format!("frame {i}: the encoder gave no picture")));
        }
        if idr {
            sync.push(i + 1);
        }
        samples.push(sample);
    }
    if sps.len() < 4 || pps.is_empty() {
        return Err(bad("the encoder gave no parameter sets".into()));
    }
    let n = samples.len();
    let duration_ms = n * 1000 / fps as usize;
    let zero4 = [0u8; 4];
    let ftyp = bx(b"ftyp", &[b"isom", &512u32.to_be_bytes(), b"isomiso2avc1mp41"]);
    let mvhd = full(
        b"mvhd",
        0,
        0,
        &[
            &zero4,
            &zero4,
            &be32(1000),
            &be32(duration_ms),
            &0x0001_0000u32.to_be_bytes(),
            &[1, 0],
            &[0; 10],
            &matrix(),
            &[0; 24],
            &be32(2),
        ],
    );
    let tkhd = full(
        b"tkhd",
        0,
        3,
        &[
            &zero4,
            &zero4,
            &be32(1),
            &zero4,
            &be32(duration_ms),
            &[0; 8],
            &[0; 4],
            &[0; 4],
            &matrix(),
            &be32(width << 16),
            &be32(height << 16),
        ],
    );
    let mdhd = full(
        b"mdhd",
        0,
        0,
        &[&zero4, &zero4, &be32(fps as usize), &be32(n), &0x55c4u16.to_be_bytes(), &[0, 0]],
    );
    let hdlr = full(b"hdlr", 0, 0, &[&zero4, b"vide", &[0; 12], b"VideoHandler\0"]);
    let vmhd = full(b"vmhd", 0, 1, &[&[0; 8]]);
    let dinf = bx(b"dinf", &[&full(b"dref", 0, 0, &[&be32(1), &full(b"url ", 0, 1, &[])])]);
    let mut avcc = vec![1, sps[1], sps[2], sps[3], 0xff, 0xe1];
    avcc.extend_from_slice(&u16::try_from(sps.len()).unwrap_or(u16::MAX).to_be_bytes());
    avcc.extend_from_slice(&sps);
    avcc.push(1);
    avcc.extend_from_slice(&u16::try_from(pps.len()).unwrap_or(u16::MAX).to_be_bytes());
    avcc.extend_from_slice(&pps);
    let (w16, h16) = (u16::try_from(width).unwrap_or(u16::MAX), u16::try_from(height).unwrap_or(u16::MAX));
    let avc1 = bx(
        b"avc1",
        &[
            &[0; 6],
            &[0, 1],
            &[0; 16],
            &w16.to_be_bytes(),
            &h16.to_be_bytes(),
            &0x0048_0000u32.to_be_bytes(),
            &0x0048_0000u32.to_be_bytes(),
            &zero4,
            &[0, 1],
            &[0; 32],
            &[0, 0x18],
            &[0xff, 0xff],
            &bx(b"avcC", &[&avcc]),
        ],
    );
    let stsd = full(b"stsd", 0, 0, &[&be32(1), &avc1]);
    let stts = full(b"stts", 0, 0, &[&be32(1), &be32(n), &be32(1)]);
    let stss_body: Vec<u8> = sync.iter().flat_map(|&s| be32(s)).collect();
    let stss = full(b"stss", 0, 0, &[&be32(sync.len()), &stss_body]);
    let stsc = full(b"stsc", 0, 0, &[&be32(1), &be32(1), &be32(n), &be32(1)]);
    let sizes: Vec<u8> = samples.iter().flat_map(|s| be32(s.len())).collect();
    let stsz = full(b"stsz", 0, 0, &[&zero4, &be32(n), &sizes]);
    let moov_with = |offset: usize| {
        let stco = full(b"stco", 0, 0, &[&be32(1), &be32(offset)]);
        let stbl = bx(b"stbl", &[&stsd, &stts, &stss, &stsc, &stsz, &stco]);
        let minf = bx(b"minf", &[&vmhd, &dinf, &stbl]);
        let mdia = bx(b"mdia", &[&mdhd, &hdlr, &minf]);
        let trak = bx(b"trak", &[&tkhd, &mdia]);
        bx(b"moov", &[&mvhd, &trak])
    };
    // The chunk offset has a fixed size, so the moov's length does not depend on its value.
    let offset = ftyp.len() + moov_with(0).len() + 8;
    let moov = moov_with(offset);
    let data: Vec<u8> = samples.concat();
    let mdat = bx(b"mdat", &[&data]);
    let mut file = Vec::with_capacity(ftyp.len() + moov.len() + mdat.len());
    for part in [ftyp, moov, mdat] {
        file.extend_from_slice(&part);
    }
    std::fs::write(path, file).map_err(|source| Error::Io { path: path.into(), source })
}
