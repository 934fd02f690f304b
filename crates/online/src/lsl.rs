//! Lab Streaming Layer: EEG and audio inlets that feed a [`Predictor`] (cargo feature `lsl`).
//!
//! liblsl, the LSL network library, is loaded when [`Lsl::load`] runs, not linked at build time: the
//! feature builds everywhere without cmake or a C++ toolchain (the `lsl` crate's bundled build fails on
//! current glibc), and a program finds the library its lab already has. [`Lsl::load`] reads the path in
//! `EMOFUSE_LIBLSL`, else asks the system loader for `liblsl.so` / `liblsl.so.2` (macOS: `liblsl.dylib`;
//! Windows: `lsl.dll`). pylsl's wheels carry a ready build (`pylsl/lib/liblsl.so`).
//!
//! Inlets ask liblsl for clock synchronisation (`proc_clocksync`), so stamps from another machine arrive
//! on this machine's clock; [`LiveSource::poll`] pushes the chunks of both streams in stamp order, which is
//! all [`Predictor`] needs (its predictions do not depend on how the streams are cut into chunks).
//!
//! Audio streams may be mono or multi-channel (averaged to mono), `float32`/`double64` (taken as they
//! are, ±1 full scale) or integer (`int16`, `int32`, `int8`: scaled to ±1 full scale).

#![allow(unsafe_code)] // calls into liblsl's C API, loaded at run time

use std::ffi::{CString, c_char, c_double, c_int, c_uint, c_ulong, c_void};
use std::sync::Arc;

use crate::{Error, Hop, Predictor, Result, Source};

type Handle = *mut c_void;

/// `lsl_channel_format_t` values.
const CF_FLOAT32: c_int = 1;
const CF_STRING: c_int = 3;
const CF_INT32: c_int = 4;
const CF_INT16: c_int = 5;
const CF_INT8: c_int = 6;
/// `proc_clocksync`: stamps corrected to the local clock.
const PROC_CLOCKSYNC: c_uint = 1;

/// The liblsl functions used, with their C signatures (`lsl_c.h`).
struct Api {
    library_version: unsafe extern "C" fn() -> c_int,
    local_clock: unsafe extern "C" fn() -> c_double,
    create_streaminfo:
        unsafe extern "C" fn(*const c_char, *const c_char, c_int, c_double, c_int, *const c_char) -> Handle,
    destroy_streaminfo: unsafe extern "C" fn(Handle),
    get_channel_count: unsafe extern "C" fn(Handle) -> c_int,
    get_nominal_srate: unsafe extern "C" fn(Handle) -> c_double,
    get_channel_format: unsafe extern "C" fn(Handle) -> c_int,
    create_outlet: unsafe extern "C" fn(Handle, c_int, c_int) -> Handle,
    destroy_outlet: unsafe extern "C" fn(Handle),
    push_chunk_ft: unsafe extern "C" fn(Handle, *const f32, c_ulong, c_double) -> c_int,
    wait_for_consumers: unsafe extern "C" fn(Handle, c_double) -> c_int,
    resolve_byprop:
        unsafe extern "C" fn(*mut Handle, c_uint, *const c_char, *const c_char, c_int, c_double) -> c_int,
    create_inlet: unsafe extern "C" fn(Handle, c_int, c_int, c_int) -> Handle,
    destroy_inlet: unsafe extern "C" fn(Handle),
    open_stream: unsafe extern "C" fn(Handle, c_double, *mut c_int),
    set_postprocessing: unsafe extern "C" fn(Handle, c_uint) -> c_int,
    pull_chunk_f: unsafe extern "C" fn(
        Handle,
        *mut f32,
        *mut c_double,
        c_ulong,
        c_ulong,
        c_double,
        *mut c_int,
    ) -> c_ulong,
}

/// The loaded liblsl. Cheap to share: inlets and outlets hold an [`Arc`] of it.
pub struct Lsl {
    api: Api,
    path: String,
    // Keeps the functions of `api` mapped; dropped last.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Lsl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lsl").field("path", &self.path).field("version", &self.version()).finish()
    }
}

fn lsl_error(what: impl Into<String>) -> Error {
    Error::Lsl(what.into())
}

/// A C string of `s` (LSL names never hold NUL).
fn c_string(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| lsl_error(format!("{what} {s:?} holds a NUL character")))
}

/// What liblsl's error code `ec` means.
fn code(ec: c_int) -> &'static str {
    match ec {
        -1 => "timed out",
        -2 => "the stream was lost",
        -3 => "an argument was wrong",
        _ => "liblsl failed internally",
    }
}

impl Lsl {
    /// The library names tried when `EMOFUSE_LIBLSL` is not set.
    const NAMES: &'static [&'static str] = if cfg!(target_os = "macos") {
        &["liblsl.dylib"]
    } else if cfg!(windows) {
        &["lsl.dll", "liblsl.dll"]
    } else {
        &["liblsl.so", "liblsl.so.2", "liblsl.so.1"]
    };

    /// Loads liblsl from `EMOFUSE_LIBLSL`, else by its usual names.
    ///
    /// # Errors
    /// [`Error::Lsl`] naming what was tried.
    pub fn load() -> Result<Arc<Self>> {
        if let Some(path) = std::env::var_os("EMOFUSE_LIBLSL") {
            return Self::open(&path.to_string_lossy());
        }
        let mut tried = Vec::new();
        for name in Self::NAMES {
            match Self::open(name) {
                Ok(lsl) => return Ok(lsl),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(lsl_error(format!(
            "liblsl not found (set EMOFUSE_LIBLSL to its path; pylsl's wheel carries one in pylsl/lib/): {}",
            tried.join("; ")
        )))
    }

    /// Loads liblsl from `path` (a file, or a name for the system loader).
    ///
    /// # Errors
    /// [`Error::Lsl`] when it cannot be loaded or lacks a function used here.
    pub fn open(path: &str) -> Result<Arc<Self>> {
        // SAFETY: loading a shared library runs its initialisers; liblsl's set up its logging and
        // configuration only.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| lsl_error(format!("cannot load liblsl from {path}: {e}")))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the type is the function's C signature in lsl_c.h (liblsl ≥ 1.13).
                *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| lsl_error(format!("{path} is not liblsl ({}: {e})", $name)))?
            };
        }
        let api = Api {
            library_version: sym!("lsl_library_version"),
            local_clock: sym!("lsl_local_clock"),
            create_streaminfo: sym!("lsl_create_streaminfo"),
            destroy_streaminfo: sym!("lsl_destroy_streaminfo"),
            get_channel_count: sym!("lsl_get_channel_count"),
            get_nominal_srate: sym!("lsl_get_nominal_srate"),
            get_channel_format: sym!("lsl_get_channel_format"),
            create_outlet: sym!("lsl_create_outlet"),
            destroy_outlet: sym!("lsl_destroy_outlet"),
            push_chunk_ft: sym!("lsl_push_chunk_ft"),
            wait_for_consumers: sym!("lsl_wait_for_consumers"),
            resolve_byprop: sym!("lsl_resolve_byprop"),
            create_inlet: sym!("lsl_create_inlet"),
            destroy_inlet: sym!("lsl_destroy_inlet"),
            open_stream: sym!("lsl_open_stream"),
            set_postprocessing: sym!("lsl_set_postprocessing"),
            pull_chunk_f: sym!("lsl_pull_chunk_f"),
        };
        Ok(Arc::new(Self { api, path: path.to_owned(), _lib: lib }))
    }

    /// liblsl's version, e.g. 118 for 1.18.
    #[must_use]
    pub fn version(&self) -> i32 {
        // SAFETY: no arguments.
        unsafe { (self.api.library_version)() }
    }

    /// LSL's clock (seconds), the clock of inlet stamps.
    #[must_use]
    pub fn local_clock(&self) -> f64 {
        // SAFETY: no arguments.
        unsafe { (self.api.local_clock)() }
    }
}

/// A stream's description: channel count, nominal rate and sample format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamShape {
    /// Channels per sample.
    pub channels: usize,
    /// Samples per second (0: irregular).
    pub rate: f64,
    /// liblsl's `lsl_channel_format_t`.
    pub format: i32,
}

impl StreamShape {
    /// What one pulled value is multiplied by for ±1 full scale (integer formats), else 1.
    fn full_scale(&self) -> f32 {
        match self.format {
            CF_INT16 => 1.0 / 32_768.0,
            CF_INT32 => 1.0 / 2_147_483_648.0,
            CF_INT8 => 1.0 / 128.0,
            _ => 1.0,
        }
    }
}

/// An LSL inlet: the samples of one stream on the network, pulled as `f32` with their stamps.
pub struct Inlet {
    lsl: Arc<Lsl>,
    handle: Handle,
    name: String,
    shape: StreamShape,
    data: Vec<f32>,
    stamps: Vec<f64>,
}

impl std::fmt::Debug for Inlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inlet").field("name", &self.name).field("shape", &self.shape).finish_non_exhaustive()
    }
}

// SAFETY: an inlet handle is used from one thread at a time (`&mut self`); liblsl inlets may move
// between threads.
unsafe impl Send for Inlet {}

/// A chunk pulled from an inlet: frame-major values and each frame's stamp (local clock).
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// Frame-major values, `channels` per frame.
    pub data: &'a [f32],
    /// Each frame's stamp, seconds on [`Lsl::local_clock`].
    pub stamps: &'a [f64],
}

impl Inlet {
    /// Finds the stream named `name` on the network (waiting up to `timeout_s`) and opens it.
    ///
    /// # Errors
    /// [`Error::Lsl`] when no such stream answers in time or it cannot be opened.
    pub fn resolve(lsl: &Arc<Lsl>, name: &str, timeout_s: f64) -> Result<Self> {
        let (prop, value) = (c_string("property", "name")?, c_string("stream name", name)?);
        let mut found: [Handle; 8] = [std::ptr::null_mut(); 8];
        // SAFETY: `found` has room for the 8 handles asked for; the strings live through the call.
        let n = unsafe {
            (lsl.api.resolve_byprop)(found.as_mut_ptr(), 8, prop.as_ptr(), value.as_ptr(), 1, timeout_s)
        };
        let found = &found[..usize::try_from(n).unwrap_or(0)];
        let Some(&info) = found.first() else {
            return Err(lsl_error(format!("no LSL stream named {name:?} answered within {timeout_s} s")));
        };
        // SAFETY: `info` is a stream info returned above, destroyed below after the inlet copied it.
        let shape = unsafe {
            StreamShape {
                channels: usize::try_from((lsl.api.get_channel_count)(info)).unwrap_or(0),
                rate: (lsl.api.get_nominal_srate)(info),
                format: (lsl.api.get_channel_format)(info),
            }
        };
        // SAFETY: as above; 360 s of buffer, the sender's chunking, recovery on.
        let handle = if shape.channels > 0 && shape.format != CF_STRING {
            unsafe { (lsl.api.create_inlet)(info, 360, 0, 1) }
        } else {
            std::ptr::null_mut()
        };
        for &h in found {
            // SAFETY: each handle was returned by the resolve and is destroyed once.
            unsafe { (lsl.api.destroy_streaminfo)(h) };
        }
        if handle.is_null() {
            return Err(lsl_error(format!(
                "cannot open LSL stream {name:?} ({} channels, format {}: a numeric stream is needed)",
                shape.channels, shape.format
            )));
        }
        let inlet = Self {
            lsl: Arc::clone(lsl),
            handle,
            name: name.to_owned(),
            shape,
            data: Vec::new(),
            stamps: Vec::new(),
        };
        let mut ec: c_int = 0;
        // SAFETY: a live inlet handle; `ec` outlives the call.
        unsafe {
            (lsl.api.set_postprocessing)(handle, PROC_CLOCKSYNC);
            (lsl.api.open_stream)(handle, timeout_s, &raw mut ec);
        }
        if ec != 0 {
            return Err(lsl_error(format!("cannot open LSL stream {name:?}: {}", code(ec))));
        }
        Ok(inlet)
    }

    /// The stream's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream's channels, rate and format.
    #[must_use]
    pub fn shape(&self) -> StreamShape {
        self.shape
    }

    /// Pulls what has arrived (waiting up to `timeout_s` for the first sample; at most a second of
    /// samples, or 64 frames); integer formats scaled to ±1. `None` when nothing arrived.
    ///
    /// # Errors
    /// [`Error::Lsl`] when the stream was lost for good or liblsl failed.
    pub fn pull(&mut self, timeout_s: f64) -> Result<Option<Chunk<'_>>> {
        let frames = (self.shape.rate.ceil() as usize).max(64);
        let ch = self.shape.channels;
        self.data.resize(frames * ch, 0.0);
        self.stamps.resize(frames, 0.0);
        let mut ec: c_int = 0;
        // SAFETY: the buffers hold `frames * ch` values and `frames` stamps, as passed.
        let written = unsafe {
            (self.lsl.api.pull_chunk_f)(
                self.handle,
                self.data.as_mut_ptr(),
                self.stamps.as_mut_ptr(),
                (frames * ch) as c_ulong,
                frames as c_ulong,
                timeout_s,
                &raw mut ec,
            )
        } as usize;
        if ec != 0 && ec != -1 {
            return Err(lsl_error(format!("LSL stream {:?}: {}", self.name, code(ec))));
        }
        let n = written / ch.max(1);
        if n == 0 {
            return Ok(None);
        }
        let scale = self.shape.full_scale();
        if scale != 1.0 {
            self.data[..n * ch].iter_mut().for_each(|v| *v *= scale);
        }
        Ok(Some(Chunk { data: &self.data[..n * ch], stamps: &self.stamps[..n] }))
    }
}

impl Drop for Inlet {
    fn drop(&mut self) {
        // SAFETY: the handle is live and dropped once.
        unsafe { (self.lsl.api.destroy_inlet)(self.handle) };
    }
}

/// An LSL outlet of `float32` samples: what a recording program or an amplifier publishes (used to
/// replay recordings onto the network and in tests).
pub struct Outlet {
    lsl: Arc<Lsl>,
    handle: Handle,
    shape: StreamShape,
}

impl std::fmt::Debug for Outlet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet").field("shape", &self.shape).finish_non_exhaustive()
    }
}

// SAFETY: liblsl outlets may be used from any thread; pushes take `&self` and liblsl locks inside.
unsafe impl Send for Outlet {}

impl Outlet {
    /// Publishes a stream `name` of content type `kind` (`EEG`, `Audio`) with `channels` float32
    /// channels at `rate` samples per second.
    ///
    /// # Errors
    /// [`Error::Lsl`] when liblsl refuses it.
    pub fn new(lsl: &Arc<Lsl>, name: &str, kind: &str, channels: usize, rate: f64) -> Result<Self> {
        let (n, k) = (c_string("stream name", name)?, c_string("content type", kind)?);
        let id = c_string("source id", &format!("emofuse-{name}-{}", std::process::id()))?;
        let ch = c_int::try_from(channels).map_err(|_| lsl_error(format!("{channels} channels")))?;
        // SAFETY: the strings live through the calls; the info is destroyed after the outlet copied it.
        let handle = unsafe {
            let info = (lsl.api.create_streaminfo)(n.as_ptr(), k.as_ptr(), ch, rate, CF_FLOAT32, id.as_ptr());
            if info.is_null() {
                std::ptr::null_mut()
            } else {
                let outlet = (lsl.api.create_outlet)(info, 0, 360);
                (lsl.api.destroy_streaminfo)(info);
                outlet
            }
        };
        if handle.is_null() {
            return Err(lsl_error(format!(
                "cannot create LSL outlet {name:?} ({channels} channels at {rate} Hz)"
            )));
        }
        Ok(Self { lsl: Arc::clone(lsl), handle, shape: StreamShape { channels, rate, format: CF_FLOAT32 } })
    }

    /// Waits up to `timeout_s` for an inlet to connect; whether one did.
    #[must_use]
    pub fn wait_for_consumers(&self, timeout_s: f64) -> bool {
        // SAFETY: a live outlet handle.
        unsafe { (self.lsl.api.wait_for_consumers)(self.handle, timeout_s) != 0 }
    }

    /// Pushes frame-major `data` (whole frames), its first frame stamped `t` (local clock), the others
    /// `1 / rate` apart.
    ///
    /// # Errors
    /// [`Error::Ragged`] for a partial frame; [`Error::Lsl`] when liblsl refuses the chunk.
    pub fn push(&self, t: f64, data: &[f32]) -> Result<()> {
        let ch = self.shape.channels;
        if !data.len().is_multiple_of(ch) {
            return Err(Error::Ragged { stream: "lsl", len: data.len(), channels: ch });
        }
        let frames = data.len() / ch;
        if frames == 0 {
            return Ok(());
        }
        // liblsl stamps a chunk by its last frame.
        let last = t + (frames - 1) as f64 / self.shape.rate;
        // SAFETY: `data` holds `data.len()` values, as passed.
        let ec =
            unsafe { (self.lsl.api.push_chunk_ft)(self.handle, data.as_ptr(), data.len() as c_ulong, last) };
        if ec != 0 {
            return Err(lsl_error(format!("push to an LSL outlet: {}", code(ec))));
        }
        Ok(())
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        // SAFETY: the handle is live and dropped once.
        unsafe { (self.lsl.api.destroy_outlet)(self.handle) };
    }
}

/// Seconds of EEG pushed at a time by [`LiveSource::poll`], each piece followed by the audio up to its end.
const PIECE_S: f64 = 0.04;

/// Seconds of audio [`LiveSource`] holds back while no EEG arrives; beyond it the audio is pushed anyway.
const AUDIO_HOLD_S: f64 = 10.0;

/// An EEG inlet and an optional audio inlet feeding a [`Predictor`].
///
/// Pulled chunks can be long (whatever arrived since the last poll) and the two streams arrive
/// independently, but [`Predictor`] releases a hop without speech once the EEG runs more than
/// `max_skew_s` ahead of the audio. So the EEG is pushed in pieces of 40 ms, each followed by the audio
/// received up to the piece's end; audio that arrives before its EEG waits here (up to 10 s).
#[derive(Debug)]
pub struct LiveSource {
    eeg: Inlet,
    audio: Option<Inlet>,
    /// Frames received: EEG, audio.
    received: (usize, usize),
    /// Mono audio not pushed yet, and the stamp of its first sample.
    pending: Vec<f32>,
    pending_t: f64,
}

impl LiveSource {
    /// Opens the EEG stream `eeg` and, if given, the audio stream `audio` (waiting up to `timeout_s`
    /// for each).
    ///
    /// # Errors
    /// [`Error::Lsl`] when a stream does not answer or cannot be opened; [`Error::Config`] for an
    /// audio stream without a whole, regular rate.
    pub fn open(lsl: &Arc<Lsl>, eeg: &str, audio: Option<&str>, timeout_s: f64) -> Result<Self> {
        let eeg = Inlet::resolve(lsl, eeg, timeout_s)?;
        let audio = audio.map(|name| Inlet::resolve(lsl, name, timeout_s)).transpose()?;
        if let Some(a) = &audio {
            let rate = a.shape().rate;
            if !(rate >= 1.0 && rate.fract() == 0.0 && rate <= f64::from(u32::MAX)) {
                return Err(Error::Config(format!(
                    "LSL audio stream {:?} at {rate} Hz: a whole, regular sample rate is needed",
                    a.name()
                )));
            }
        }
        if !eeg.shape().rate.is_finite() || eeg.shape().rate <= 0.0 {
            return Err(Error::Config(format!("LSL EEG stream {:?} has no regular sample rate", eeg.name())));
        }
        Ok(Self { eeg, audio, received: (0, 0), pending: Vec::new(), pending_t: 0.0 })
    }

    /// The [`Source`] these streams are: the EEG stream's channels and rate, the audio stream's rate
    /// (16 kHz when there is none).
    #[must_use]
    pub fn source(&self) -> Source {
        let eeg = self.eeg.shape();
        Source { eeg_rate: eeg.rate, eeg_channels: eeg.channels, audio_rate: self.audio_rate() as u32 }
    }

    /// Frames received so far: EEG, audio.
    #[must_use]
    pub fn received(&self) -> (usize, usize) {
        self.received
    }

    fn audio_rate(&self) -> f64 {
        self.audio.as_ref().map_or(16_000.0, |a| a.shape().rate)
    }

    /// Pushes the held-back audio stamped before `until` (all of it for infinity).
    fn push_audio_until(&mut self, predictor: &mut Predictor, until: f64, out: &mut Vec<Result<Vec<Hop>>>) {
        let rate = self.audio_rate();
        let n = if until.is_finite() {
            (((until - self.pending_t) * rate).round().max(0.0) as usize).min(self.pending.len())
        } else {
            self.pending.len()
        };
        if n > 0 {
            out.push(predictor.push_audio(self.pending_t, &self.pending[..n]));
            self.pending.drain(..n);
            self.pending_t += n as f64 / rate;
        }
    }

    /// Pulls all the audio that has arrived and up to a second of EEG (waiting up to `timeout_s` for it)
    /// and pushes them into `predictor`: audio averaged to mono, the EEG in 40 ms pieces, each followed
    /// by the audio up to its end. Returns the hops completed.
    ///
    /// # Errors
    /// [`Error::Lsl`] for a lost stream; the predictor's errors for chunks it rejects (the others of
    /// this poll are still pushed; the first error is returned).
    pub fn poll(&mut self, predictor: &mut Predictor, timeout_s: f64) -> Result<Vec<Hop>> {
        let mut pushed = Vec::new();
        let rate = self.audio_rate();
        // Every audio sample that has arrived (without waiting), so that it is never behind the EEG.
        let channels = self.audio.as_ref().map_or(1, |a| a.shape().channels);
        while let Some(inlet) = &mut self.audio
            && let Some(chunk) = inlet.pull(0.0)?
        {
            let t = chunk.stamps[0];
            let mono: Vec<f32> =
                chunk.data.chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32).collect();
            self.received.1 += mono.len();
            // A chunk that does not continue the held-back audio (a gap): push that audio first.
            let expected = self.pending_t + self.pending.len() as f64 / rate;
            if !self.pending.is_empty() && (t - expected).abs() > predictor.config().tolerance_s {
                self.push_audio_until(predictor, f64::INFINITY, &mut pushed);
            }
            if self.pending.is_empty() {
                self.pending_t = t;
            }
            self.pending.extend_from_slice(&mono);
            if self.pending.len() as f64 > AUDIO_HOLD_S * rate {
                break;
            }
        }
        let eeg = self.eeg.shape();
        let piece = ((PIECE_S * eeg.rate).round() as usize).max(1);
        if let Some(chunk) = self.eeg.pull(timeout_s)? {
            let frames = chunk.stamps.len();
            self.received.0 += frames;
            // The chunk is copied out of the inlet's buffer so that the audio can be pushed in between.
            let (data, stamps) = (chunk.data.to_vec(), chunk.stamps.to_vec());
            for start in (0..frames).step_by(piece) {
                let end = (start + piece).min(frames);
                // Audio stamped before the piece goes first (the stream that is behind is pushed first).
                self.push_audio_until(predictor, stamps[start], &mut pushed);
                pushed.push(predictor.push_eeg(
                    stamps[start],
                    eeg.channels,
                    &data[start * eeg.channels..end * eeg.channels],
                ));
                self.push_audio_until(predictor, stamps[end - 1] + 1.0 / eeg.rate, &mut pushed);
            }
        }
        if self.pending.len() as f64 > AUDIO_HOLD_S * rate {
            self.push_audio_until(predictor, f64::INFINITY, &mut pushed);
        }
        let mut hops = Vec::new();
        let mut first_error = None;
        for r in pushed {
            match r {
                Ok(h) => hops.extend(h),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        first_error.map_or(Ok(hops), Err)
    }

    /// Pushes the audio still held back (at the end of a stream).
    ///
    /// # Errors
    /// The predictor's.
    pub fn flush(&mut self, predictor: &mut Predictor) -> Result<Vec<Hop>> {
        let mut pushed = Vec::new();
        self.push_audio_until(predictor, f64::INFINITY, &mut pushed);
        pushed.into_iter().try_fold(Vec::new(), |mut all, r| {
            all.extend(r?);
            Ok(all)
        })
    }
}
