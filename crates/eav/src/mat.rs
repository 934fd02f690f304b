//! MAT-file level 5 (MATLAB v5, v6 and v7) reading and writing.
//!
//! Reads little- and big-endian files, zlib-compressed (`miCOMPRESSED`, MATLAB's default since v7) and plain
//! (scipy's) elements, small-element tags, and numeric arrays of every class whose data is stored in any
//! numeric type (MATLAB narrows `double` arrays of integers to `uint8` and the like). Cells, structs, sparse
//! matrices, objects, function handles and char arrays are listed (name, class, dims) but their data is
//! skipped. Level 4 and v7.3 (HDF5) files are recognised and refused with a clear error.
//!
//! Data is streamed: a variable that is not asked for is never decompressed past its header, and one that is
//! asked for is decoded a block at a time straight into its values, so it costs its own size and no more.
//! [`read_mat`] gives `f64` values; [`read_mat_as`] also `f32`, half the memory for a large EEG array.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::ZlibDecoder;
use serde::Serialize;

use crate::error::{Error, Result};

const MI_INT8: u32 = 1;
const MI_UINT32: u32 = 6;
const MI_INT32: u32 = 5;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;

/// Byte order of a MAT file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endian {
    /// Written on x86 and ARM.
    Little,
    /// Written by old MATLAB on SPARC and similar machines.
    Big,
}

/// The MATLAB class of an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)] // the variant names are MATLAB's class names
pub enum MatClass {
    Cell,
    Struct,
    Object,
    Char,
    Sparse,
    Double,
    Single,
    Int8,
    Uint8,
    Int16,
    Uint16,
    Int32,
    Uint32,
    Int64,
    Uint64,
    FunctionHandle,
    Opaque,
    Logical,
    /// A class code this reader does not know.
    Unknown(u8),
}

impl MatClass {
    fn from_code(code: u8, logical: bool) -> Self {
        use MatClass::*;
        match code {
            _ if logical => Logical,
            1 => Cell,
            2 => Struct,
            3 => Object,
            4 => Char,
            5 => Sparse,
            6 => Double,
            7 => Single,
            8 => Int8,
            9 => Uint8,
            10 => Int16,
            11 => Uint16,
            12 => Int32,
            13 => Uint32,
            14 => Int64,
            15 => Uint64,
            16 => FunctionHandle,
            17 => Opaque,
            c => Unknown(c),
        }
    }

    /// MATLAB's name of the class (`double`, `uint8`, `cell`, …).
    #[must_use]
    pub fn name(self) -> String {
        match self {
            Self::Unknown(c) => format!("unknown({c})"),
            other => {
                let s = format!("{other:?}");
                let mut out = String::new();
                for (i, ch) in s.chars().enumerate() {
                    if ch.is_uppercase() && i > 0 {
                        out.push('_');
                    }
                    out.push(ch.to_ascii_lowercase());
                }
                out
            }
        }
    }

    /// Whether the array holds plain numbers this reader decodes.
    #[must_use]
    pub fn is_numeric(self) -> bool {
        use MatClass::*;
        matches!(
            self,
            Double | Single | Int8 | Uint8 | Int16 | Uint16 | Int32 | Uint32 | Int64 | Uint64 | Logical
        )
    }
}

/// One variable of a MAT file, its values as `T` (`f64` unless asked otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct Variable<T = f64> {
    /// Its name.
    pub name: String,
    /// Its MATLAB class.
    pub class: MatClass,
    /// Its dimensions, MATLAB order (column-major data).
    pub dims: Vec<usize>,
    /// Whether it has an imaginary part.
    pub complex: bool,
    /// Whether it was stored in a `miCOMPRESSED` element.
    pub compressed: bool,
    /// Byte offset of its element in the file.
    pub offset: u64,
    /// The real part in column-major order, when it was asked for and is numeric.
    pub data: Option<Vec<T>>,
}

/// What a MAT file holds, values as `T` (`f64` unless asked otherwise).
#[derive(Debug, Clone, PartialEq)]
pub struct MatFile<T = f64> {
    /// The 116-byte descriptive header text, trimmed.
    pub header: String,
    /// Byte order.
    pub endian: Endian,
    /// Every variable in file order.
    pub variables: Vec<Variable<T>>,
}

impl<T> MatFile<T> {
    /// The variable called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Variable<T>> {
        self.variables.iter().find(|v| v.name == name)
    }
}

/// A reader that counts its position and turns an early end into a "truncated" error.
struct Src<R> {
    inner: R,
    pos: u64,
    path: PathBuf,
    endian: Endian,
    variable: Option<String>,
}

impl<R: Read> Src<R> {
    fn fail(&self, reason: impl Into<String>) -> Error {
        Error::Mat {
            path: self.path.clone(),
            variable: self.variable.clone(),
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn bytes(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.fail(format!("truncated: {} more bytes expected", buf.len())))
            }
            Err(e) => Err(self.fail(format!("read error: {e}"))),
        }
    }

    fn u32(&mut self) -> Result<u32> {
        let mut b = [0u8; 4];
        self.bytes(&mut b)?;
        Ok(match self.endian {
            Endian::Little => u32::from_le_bytes(b),
            Endian::Big => u32::from_be_bytes(b),
        })
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| self.fail(format!("read error: {e}")))?;
        self.pos += copied;
        if copied < n {
            Err(self.fail(format!("truncated: {} more bytes expected", n - copied)))
        } else {
            Ok(())
        }
    }

    /// A data-element tag: `(type, byte count, small-element payload)`.
    fn tag(&mut self) -> Result<(u32, u32, Option<[u8; 4]>)> {
        let first = self.u32()?;
        if first >> 16 != 0 {
            // Small data element: size in the upper half, type in the lower, payload in the next 4 bytes.
            let mut payload = [0u8; 4];
            self.bytes(&mut payload)?;
            return Ok((first & 0xFFFF, first >> 16, Some(payload)));
        }
        Ok((first, self.u32()?, None))
    }

    /// The payload of a (possibly small) element of `n` bytes, with its padding consumed.
    fn payload(&mut self, n: u32, small: Option<[u8; 4]>) -> Result<Vec<u8>> {
        if let Some(p) = small {
            if n > 4 {
                return Err(self.fail(format!("small element claims {n} bytes")));
            }
            return Ok(p[..n as usize].to_vec());
        }
        let mut v = vec![0u8; n as usize];
        self.bytes(&mut v)?;
        self.skip(padding(n))?;
        Ok(v)
    }
}

fn padding(n: u32) -> u64 {
    u64::from((8 - n % 8) % 8)
}

/// Bytes per value of a numeric storage type, or `None` when it is not numeric.
fn storage_size(t: u32) -> Option<usize> {
    match t {
        1 | 2 => Some(1),
        3 | 4 => Some(2),
        5..=7 => Some(4),
        9 | 12 | 13 => Some(8),
        _ => None,
    }
}

/// A type MAT data is decoded into: `f64` (exact for every storage type but 64-bit integers beyond 2^53) or
/// `f32` (`double` data rounded to the nearest `f32`; values beyond its range become infinite).
pub trait MatValue: Copy + sealed::Sealed {
    /// The value nearest to `v`.
    fn from_f64(v: f64) -> Self;
}

impl MatValue for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
}

impl MatValue for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f64 {}
    impl Sealed for f32 {}
}

/// Appends the values of `bytes` (whole values of storage type `t`) to `out`.
fn decode_into<T: MatValue>(bytes: &[u8], t: u32, endian: Endian, out: &mut Vec<T>) {
    let size = storage_size(t).unwrap_or(1);
    out.extend(bytes.chunks_exact(size).map(|c| {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(c);
        if endian == Endian::Big {
            b[..size].reverse();
        }
        T::from_f64(match t {
            1 => f64::from(b[0] as i8),
            2 => f64::from(b[0]),
            3 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            4 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            5 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            6 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            7 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            9 => f64::from_le_bytes(b),
            12 => i64::from_le_bytes(b) as f64,
            _ => u64::from_le_bytes(b) as f64,
        })
    }));
}

/// Bytes read at a time while decoding a large variable (a multiple of every storage size).
const DECODE_BLOCK: usize = 1 << 16;

/// Parses one `miMATRIX` element body (after its tag) of `len` bytes.
fn matrix<R: Read, T: MatValue>(
    src: &mut Src<R>,
    len: u64,
    load: &dyn Fn(&str) -> bool,
) -> Result<Variable<T>> {
    let start = src.pos;
    let offset = start.saturating_sub(8);
    let (t, n, small) = src.tag()?;
    let flags = src.payload(n, small)?;
    if t != MI_UINT32 || flags.len() < 8 {
        return Err(src.fail(format!("array flags: expected 8 bytes of type 6, got {n} bytes of type {t}")));
    }
    let endian = src.endian;
    let word = move |b: &[u8]| match endian {
        Endian::Little => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Endian::Big => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
    };
    let f = word(&flags[..4]);
    let class = MatClass::from_code((f & 0xFF) as u8, f & 0x200 != 0);
    let complex = f & 0x800 != 0;

    let (t, n, small) = src.tag()?;
    let raw_dims = src.payload(n, small)?;
    if t != MI_INT32 || raw_dims.len() % 4 != 0 || raw_dims.len() < 8 {
        return Err(src.fail(format!("dimensions: expected ≥ 2 int32 values, got {n} bytes of type {t}")));
    }
    let mut dims = Vec::new();
    for c in raw_dims.chunks_exact(4) {
        let d = word(c) as i32;
        dims.push(usize::try_from(d).map_err(|_| src.fail(format!("negative dimension {d}")))?);
    }

    let (t, n, small) = src.tag()?;
    let name_bytes = src.payload(n, small)?;
    if t != MI_INT8 && t != 2 {
        return Err(src.fail(format!("array name: unexpected data type {t}")));
    }
    let name = String::from_utf8(name_bytes).map_err(|_| src.fail("array name is not valid UTF-8"))?;
    src.variable = Some(name.clone());

    let mut var = Variable { name, class, dims, complex, compressed: false, offset, data: None };
    if class.is_numeric() {
        let (t, n, small) = src.tag()?;
        let size = storage_size(t).ok_or_else(|| src.fail(format!("unknown numeric data type {t}")))?;
        let count: usize = var.dims.iter().product();
        if n as usize != count.saturating_mul(size) {
            return Err(src.fail(format!(
                "data holds {n} bytes, dims {:?} of {size}-byte values need {}",
                var.dims,
                count.saturating_mul(size)
            )));
        }
        if load(&var.name) {
            // Reserved up front up to 2^26 values (a whole EEG recording); a damaged header that claims more
            // than the file holds then costs no more than that before the read fails.
            let mut values = Vec::with_capacity(count.min(1 << 26));
            if small.is_some() {
                decode_into(&src.payload(n, small)?, t, src.endian, &mut values);
            } else {
                // A block at a time: the raw bytes of a large variable are never all in memory.
                let mut block = vec![0u8; DECODE_BLOCK.min(n as usize)];
                let mut left = n as usize;
                while left > 0 {
                    let b = &mut block[..left.min(DECODE_BLOCK)];
                    src.bytes(b)?;
                    decode_into(b, t, src.endian, &mut values);
                    left -= b.len();
                }
                src.skip(padding(n))?;
            }
            var.data = Some(values);
        } else if small.is_none() {
            src.skip(u64::from(n) + padding(n))?;
        }
    }
    // Whatever is left (imaginary part, or the body of a cell/struct/sparse/object) is skipped.
    let used = src.pos - start;
    let rest =
        len.checked_sub(used).ok_or_else(|| src.fail(format!("element overruns its declared size {len}")))?;
    src.skip(rest)?;
    src.variable = None;
    Ok(var)
}

/// Reads the header and the list of variables; the data of the variables for which `load(name)` is true
/// is decoded (as `f64`, column-major).
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened; [`Error::Mat`] naming the file, the variable and the byte
/// offset for anything malformed: not a MAT file, level 4, v7.3/HDF5, truncated, bad zlib data or checksum,
/// unknown data types, bad names, sizes that do not fit.
pub fn read_mat(path: &Path, load: &dyn Fn(&str) -> bool) -> Result<MatFile> {
    read_mat_as(path, load)
}

/// [`read_mat`] with the values decoded as `T` (`f32` or `f64`).
///
/// # Errors
/// As [`read_mat`].
pub fn read_mat_as<T: MatValue>(path: &Path, load: &dyn Fn(&str) -> bool) -> Result<MatFile<T>> {
    let file = File::open(path).map_err(|source| Error::Io { path: path.into(), source })?;
    let mut src = Src {
        inner: BufReader::with_capacity(1 << 20, file),
        pos: 0,
        path: path.into(),
        endian: Endian::Little,
        variable: None,
    };
    let mut first = Vec::with_capacity(128);
    (&mut src.inner).take(128).read_to_end(&mut first).map_err(|e| src.fail(format!("read error: {e}")))?;
    src.pos = first.len() as u64;
    let mut head = [0u8; 128];
    head[..first.len()].copy_from_slice(&first);
    if first.len() < 128 {
        let reason = if first.len() >= 20 && looks_like_level4(&head) {
            "MAT level 4 file: not supported; re-save it in MATLAB with save(..., '-v7')"
        } else {
            "not a MAT file: shorter than the 128-byte header"
        };
        return Err(Error::Mat { path: path.into(), variable: None, offset: 0, reason: reason.into() });
    }
    let text = String::from_utf8_lossy(&head[..116]).trim_end_matches(['\0', ' ']).to_string();
    let refuse = |offset: u64, reason: &str| Error::Mat {
        path: path.into(),
        variable: None,
        offset,
        reason: reason.into(),
    };
    if text.starts_with("MATLAB 7.3") {
        return Err(refuse(
            0,
            "MAT v7.3 (HDF5) file: not supported; re-save it in MATLAB with save(..., '-v7')",
        ));
    }
    src.endian = match &head[126..128] {
        b"IM" => Endian::Little,
        b"MI" => Endian::Big,
        _ if !text.starts_with("MATLAB") && looks_like_level4(&head) => {
            return Err(refuse(
                0,
                "MAT level 4 file: not supported; re-save it in MATLAB with save(..., '-v7')",
            ));
        }
        _ => return Err(refuse(126, "not a MAT level 5 file (no MATLAB header or endian indicator)")),
    };
    let mut variables = Vec::new();
    loop {
        let at_end = match std::io::BufRead::fill_buf(&mut src.inner) {
            Ok(buf) => buf.is_empty(),
            Err(e) => return Err(src.fail(format!("read error: {e}"))),
        };
        if at_end {
            break;
        }
        let at = src.pos;
        let (t, n, small) = src.tag()?;
        if small.is_some() {
            return Err(src.fail(format!("unexpected small element of type {t} at the top level")));
        }
        let var = match t {
            MI_MATRIX => {
                let v = matrix(&mut src, u64::from(n), load)?;
                src.skip(padding(n))?;
                v
            }
            MI_COMPRESSED => {
                let mut v = compressed(&mut src, at, u64::from(n), load)?;
                v.compressed = true;
                v
            }
            other => return Err(src.fail(format!("unknown data type {other} at the top level"))),
        };
        variables.push(var);
    }
    Ok(MatFile { header: text, endian: src.endian, variables })
}

/// Parses a `miCOMPRESSED` element of `n` bytes whose tag started at `at`.
fn compressed<T: MatValue>(
    src: &mut Src<BufReader<File>>,
    at: u64,
    n: u64,
    load: &dyn Fn(&str) -> bool,
) -> Result<Variable<T>> {
    let body = src.pos;
    let mut limited = (&mut src.inner).take(n);
    let mut z = Src {
        inner: ZlibDecoder::new(&mut limited),
        pos: 0,
        path: src.path.clone(),
        endian: src.endian,
        variable: None,
    };
    // Offsets inside compressed data are reported at the element's start.
    let relocate = |e: Error| match e {
        Error::Mat { path, variable, reason, .. } => {
            Error::Mat { path, variable, offset: at, reason: format!("in compressed element: {reason}") }
        }
        other => other,
    };
    let (t, inner_n, _) = z.tag().map_err(relocate)?;
    if t != MI_MATRIX {
        return Err(relocate(
            z.fail(format!("compressed element holds data type {t}, expected a matrix (14)")),
        ));
    }
    let mut v = matrix(&mut z, u64::from(inner_n), load).map_err(relocate)?;
    if v.data.is_some() {
        // Drain the stream so that the zlib checksum is verified.
        std::io::copy(&mut z.inner, &mut std::io::sink()).map_err(|e| Error::Mat {
            path: src.path.clone(),
            variable: Some(v.name.clone()),
            offset: at,
            reason: format!("bad compressed data: {e}"),
        })?;
    }
    drop(z);
    // The compressed bytes the decoder did not need are skipped without inflating them.
    let left = limited.limit();
    let skipped = std::io::copy(&mut limited, &mut std::io::sink())
        .map_err(|e| src.fail(format!("read error: {e}")))?;
    src.pos = body + n - (left - skipped);
    if skipped < left {
        return Err(src.fail(format!("truncated: compressed element needs {} more bytes", left - skipped)));
    }
    v.offset = at;
    Ok(v)
}

/// A level-4 file starts with a 20-byte header whose type code is a small integer (< 5000) in either order.
fn looks_like_level4(head: &[u8; 128]) -> bool {
    let le = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let be = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    (le < 5000 && le % 10 <= 4) || (be < 5000 && be % 10 <= 4)
}

/// Numbers to write: `f64` (class `double`) or `f32` (class `single`), column-major.
#[derive(Debug, Clone, Copy)]
pub enum MatData<'a> {
    /// A `double` array.
    F64(&'a [f64]),
    /// A `single` array.
    F32(&'a [f32]),
}

impl MatData<'_> {
    fn len(&self) -> usize {
        match self {
            Self::F64(v) => v.len(),
            Self::F32(v) => v.len(),
        }
    }
}

fn element(out: &mut Vec<u8>, t: u32, payload: &[u8]) {
    let n = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&t.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + padding(n) as usize, 0);
}

/// The bytes of one `miMATRIX` element (tag included).
fn matrix_bytes(name: &str, dims: &[usize], data: MatData<'_>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64 + data.len() * 8);
    let class: u32 = match data {
        MatData::F64(_) => 6,
        MatData::F32(_) => 7,
    };
    let mut flags = class.to_le_bytes().to_vec();
    flags.extend_from_slice(&0u32.to_le_bytes());
    element(&mut body, MI_UINT32, &flags);
    let dims: Vec<u8> =
        dims.iter().flat_map(|&d| i32::try_from(d).unwrap_or(i32::MAX).to_le_bytes()).collect();
    element(&mut body, MI_INT32, &dims);
    element(&mut body, MI_INT8, name.as_bytes());
    match data {
        MatData::F64(v) => {
            element(&mut body, MI_DOUBLE, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
        }
        MatData::F32(v) => {
            element(&mut body, MI_SINGLE, &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>())
        }
    }
    let mut out = Vec::with_capacity(body.len() + 8);
    element(&mut out, MI_MATRIX, &body);
    out
}

/// Writes a little-endian MAT level-5 file with the given variables, each `zlib`-compressed (as MATLAB's
/// default `save` does) or plain (as scipy's `savemat` does). The file is written to a temporary name and
/// renamed into place.
///
/// # Errors
/// [`Error::Io`] naming the file; [`Error::Mat`] when a variable's dims do not match its data.
pub fn write_mat(path: &Path, vars: &[(&str, &[usize], MatData<'_>)], compress: bool) -> Result<()> {
    let io = |source| Error::Io { path: path.into(), source };
    let tmp = path.with_extension("mat.tmp");
    let mut w = BufWriter::new(File::create(&tmp).map_err(|source| Error::Io { path: tmp.clone(), source })?);
    let mut head = b"MATLAB 5.0 MAT-file, Platform: emofuse, Created by: emofuse eav::mat".to_vec();
    head.resize(116, b' ');
    head.extend_from_slice(&[0u8; 8]);
    head.extend_from_slice(&0x0100u16.to_le_bytes());
    head.extend_from_slice(b"IM");
    w.write_all(&head).map_err(io)?;
    for &(name, dims, data) in vars {
        if dims.iter().product::<usize>() != data.len() {
            return Err(Error::Mat {
                path: path.into(),
                variable: Some(name.into()),
                offset: 0,
                reason: format!("dims {dims:?} do not match {} values", data.len()),
            });
        }
        let bytes = matrix_bytes(name, dims, data);
        if compress {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(&bytes).map_err(io)?;
            let packed = z.finish().map_err(io)?;
            w.write_all(&MI_COMPRESSED.to_le_bytes()).map_err(io)?;
            w.write_all(&u32::try_from(packed.len()).unwrap_or(u32::MAX).to_le_bytes()).map_err(io)?;
            w.write_all(&packed).map_err(io)?;
        } else {
            w.write_all(&bytes).map_err(io)?;
        }
    }
    w.flush().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, path).map_err(io)
}
