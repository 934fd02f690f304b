//! Audio decoding: WAV (PCM 8/16/24/32-bit integer and 32/64-bit float, any channel count) to mono `f32`,
//! and resampling to a target rate.

use std::path::Path;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoderOptions};
use symphonia::core::errors::Error as SymErr;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::error::{Error, Result};

/// Mono audio at a known sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct MonoAudio {
    /// Samples per second.
    pub sample_rate: u32,
    /// Samples in [-1, 1] (the mean over the file's channels).
    pub samples: Vec<f32>,
}

impl MonoAudio {
    /// Duration in seconds.
    #[must_use]
    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }
}

/// Reads a WAV file and averages its channels to mono.
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened; [`Error::Wav`] naming the file when it is not a WAV file,
/// is truncated (fewer sample frames than its header declares), has no channels or no samples, or holds a
/// non-finite sample.
pub fn read_wav(path: &Path) -> Result<MonoAudio> {
    let Opened { mut format, track_id, params, frames: declared, sample_rate, channels, .. } = open(path)?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| Error::wav(path, format!("unsupported encoding ({e})")))?;

    let mut interleaved: Vec<f32> = Vec::new();
    let mut chunk: Vec<f32> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SymErr::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(Error::wav(path, format!("read error ({e})"))),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = decoder.decode(&packet).map_err(|e| Error::wav(path, format!("decode error ({e})")))?;
        chunk.resize(buf.samples_interleaved(), 0.0);
        buf.copy_to_slice_interleaved(&mut chunk);
        interleaved.extend_from_slice(&chunk);
    }
    let frames = interleaved.len() / channels;
    if let Some(n) = declared.filter(|&n| (frames as u64) < n) {
        return Err(Error::wav(
            path,
            format!("truncated: header declares {n} sample frames, file holds {frames}"),
        ));
    }
    if frames == 0 {
        return Err(Error::wav(path, "no samples"));
    }
    let samples: Vec<f32> =
        interleaved.chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32).collect();
    if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
        return Err(Error::wav(path, format!("sample frame {i} is not finite")));
    }
    Ok(MonoAudio { sample_rate, samples })
}

/// A WAV file opened by symphonia, its header checked.
struct Opened {
    format: Box<dyn FormatReader>,
    track_id: u32,
    params: AudioCodecParameters,
    /// Sample frames the header declares.
    frames: Option<u64>,
    sample_rate: u32,
    channels: usize,
    /// The file's chunk headers.
    riff: Riff,
}

/// Opens `path` with symphonia's WAV reader: its audio track, codec parameters, rate and channels.
fn open(path: &Path) -> Result<Opened> {
    let riff = riff(path)?;
    let file = std::fs::File::open(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    hint.with_extension("wav");
    let format = symphonia::default::get_probe()
        .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| Error::wav(path, format!("not a readable WAV file ({e})")))?;
    let track = format.default_track(TrackType::Audio).ok_or_else(|| Error::wav(path, "no audio track"))?;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| Error::wav(path, "no audio codec parameters"))?
        .clone();
    let (track_id, frames) = (track.id, track.num_frames);
    let sample_rate =
        params.sample_rate.filter(|&r| r > 0).ok_or_else(|| Error::wav(path, "no sample rate"))?;
    let channels = params.channels.as_ref().map_or(0, |c| c.count());
    if channels == 0 {
        return Err(Error::wav(path, "zero channels"));
    }
    Ok(Opened { format, track_id, params, frames, sample_rate, channels, riff })
}

/// What a WAV file's header says, read without decoding its samples.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WavInfo {
    /// The decoder that would read it, e.g. `pcm_s16le`.
    pub codec: String,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: usize,
    /// Bits per sample, when the header says.
    pub bits_per_sample: Option<u32>,
    /// Sample frames declared by the header (and present in the file).
    pub frames: u64,
}

impl WavInfo {
    /// Duration in seconds.
    #[must_use]
    pub fn seconds(&self) -> f64 {
        self.frames as f64 / f64::from(self.sample_rate)
    }
}

/// Reads a WAV file's header with the reader [`read_wav`] uses, without decoding the samples: the same
/// files are rejected for their container, codec, rate, channels or length, in a fraction of the time.
/// A file whose `data` chunk runs past its end is reported as truncated.
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened; [`Error::Wav`] naming the file when it is not a WAV file,
/// its encoding is unsupported, it declares no channels or no samples, or it is truncated.
pub fn probe_wav(path: &Path) -> Result<WavInfo> {
    let Opened { params, frames, sample_rate, channels, riff, .. } = open(path)?;
    let decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| Error::wav(path, format!("unsupported encoding ({e})")))?;
    let frames = frames.unwrap_or(0);
    if frames == 0 {
        return Err(Error::wav(path, "no samples"));
    }
    if let Some((offset, len)) = riff.data
        && offset + len > riff.len
    {
        let block = len / frames;
        let held = riff.len.saturating_sub(offset) / block.max(1);
        return Err(Error::wav(
            path,
            format!("truncated: header declares {frames} sample frames, file holds {held}"),
        ));
    }
    Ok(WavInfo {
        codec: decoder.codec_info().short_name.to_owned(),
        sample_rate,
        channels,
        bits_per_sample: params.bits_per_sample,
        frames,
    })
}

/// What the RIFF chunk headers of a WAV file say, read by seeking from header to header.
struct Riff {
    /// The file's size in bytes.
    len: u64,
    /// Byte offset and declared length of the `data` chunk, when there is one.
    data: Option<(u64, u64)>,
}

/// Walks the chunk headers of `path` (nothing is found in a file that is not RIFF/WAVE: symphonia then
/// reports it) and rejects a `fmt ` chunk whose channel count and sample size cannot describe a frame
/// (their product overflows the 16-bit block size): symphonia 0.6 multiplies them unchecked, which panics
/// in builds with overflow checks, and damaged headers must be a typed error instead.
fn riff(path: &Path) -> Result<Riff> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |source| Error::Io { path: path.into(), source };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut riff = Riff { len, data: None };
    let mut head = [0u8; 12];
    if len < 12 || f.read_exact(&mut head).is_err() || &head[..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Ok(riff);
    }
    let (mut at, mut fmt_seen) = (12u64, false);
    let mut header = [0u8; 8];
    while at + 8 <= len && !(fmt_seen && riff.data.is_some()) {
        f.seek(SeekFrom::Start(at)).map_err(io)?;
        f.read_exact(&mut header).map_err(io)?;
        let size = u64::from(u32::from_le_bytes([header[4], header[5], header[6], header[7]]));
        match &header[..4] {
            b"data" if riff.data.is_none() => riff.data = Some((at + 8, size)),
            b"fmt " if !fmt_seen && at + 8 + 16 <= len => {
                fmt_seen = true;
                let mut body = [0u8; 16];
                f.read_exact(&mut body).map_err(io)?;
                let channels = u32::from(u16::from_le_bytes([body[2], body[3]]));
                let bits = u32::from(u16::from_le_bytes([body[14], body[15]]));
                if channels * bits.div_ceil(8) > u32::from(u16::MAX) {
                    return Err(Error::wav(
                        path,
                        format!("implausible format: {channels} channels of {bits} bits"),
                    ));
                }
            }
            _ => {}
        }
        at += 8 + size + size % 2;
    }
    Ok(riff)
}

/// Resamples `audio` to `rate` with an FFT-based band-limited resampler; returns it unchanged when the rate
/// already matches. The output holds `ceil(len · rate / sample_rate)` samples, aligned with the input
/// to within a fraction of an output sample (the resampler's delay is removed).
///
/// # Errors
/// [`Error::Resample`] naming `path` (the file the audio came from) when the resampler fails.
pub fn resample(audio: MonoAudio, rate: u32, path: &Path) -> Result<MonoAudio> {
    if audio.sample_rate == rate {
        return Ok(audio);
    }
    let fail =
        |reason: String| Error::Resample { path: path.into(), from: audio.sample_rate, to: rate, reason };
    let mut resampler = Fft::<f32>::new(audio.sample_rate as usize, rate as usize, 1024, 1, FixedSync::Both)
        .map_err(|e| fail(e.to_string()))?;
    let len = audio.samples.len();
    let input = InterleavedSlice::new(&audio.samples, 1, len).map_err(|e| fail(e.to_string()))?;
    let mut out = vec![0.0f32; resampler.process_all_needed_output_len(len)];
    let out_len = out.len();
    let mut output = InterleavedSlice::new_mut(&mut out, 1, out_len).map_err(|e| fail(e.to_string()))?;
    let (_, produced) =
        resampler.process_all_into_buffer(&input, &mut output, len, None).map_err(|e| fail(e.to_string()))?;
    out.truncate(produced);
    Ok(MonoAudio { sample_rate: rate, samples: out })
}

/// [`read_wav`] then [`resample`] to `rate`.
///
/// # Errors
/// As [`read_wav`] and [`resample`].
pub fn load_mono(path: &Path, rate: u32) -> Result<MonoAudio> {
    resample(read_wav(path)?, rate, path)
}
