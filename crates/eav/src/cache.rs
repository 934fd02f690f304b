//! A preprocessing cache: a subject's windows are stored once per (source files, settings) and reused.
//!
//! The key hashes the preprocessing settings, the subject's folder and, for every file of the subject's `EEG/` and `Audio/`
//! folders, its name, size and modification time; changing either gives a new key. A damaged or foreign
//! cache file is ignored (recomputed), never trusted.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::dataset::{PreprocessConfig, SubjectSamples, preprocess};
use crate::error::{Error, Result};
use crate::subject::{SubjectDir, load_subject};

const MAGIC: &[u8; 16] = b"EMOFUSE-CACHE-1\n";

/// Whether [`preprocess_cached`] found the windows in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Read from the cache.
    Hit,
    /// Computed (and stored, when a cache folder was given).
    Miss,
}

fn fnv(hash: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *hash ^= u64::from(b);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

/// The cache key of a subject under `cfg`.
///
/// # Errors
/// [`Error::Io`] when the subject's folders cannot be listed.
pub fn key(sd: &SubjectDir, cfg: &PreprocessConfig) -> Result<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    fnv(&mut h, MAGIC);
    fnv(&mut h, serde_json::to_string(cfg).unwrap_or_default().as_bytes());
    fnv(&mut h, sd.path.as_os_str().as_encoded_bytes());
    for sub in ["EEG", "Audio"] {
        let dir = sd.path.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let meta = std::fs::metadata(&f).map_err(|source| Error::Io { path: f.clone(), source })?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_default();
            fnv(&mut h, f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
            fnv(&mut h, &meta.len().to_le_bytes());
            fnv(&mut h, &mtime.as_nanos().to_le_bytes());
        }
    }
    Ok(h)
}

fn read(path: &Path) -> Option<SubjectSamples> {
    let mut f = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let mut magic = [0u8; 16];
    f.read_exact(&mut magic).ok()?;
    if &magic != MAGIC {
        return None;
    }
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let mut meta = vec![0u8; usize::try_from(u64::from_le_bytes(len)).ok()?];
    f.read_exact(&mut meta).ok()?;
    let mut s: SubjectSamples = serde_json::from_slice(&meta).ok()?;
    let mut floats = |n: usize| -> Option<Vec<f32>> {
        let mut b = vec![0u8; n * 4];
        f.read_exact(&mut b).ok()?;
        Some(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    };
    let (eeg_n, mfcc_n) = (s.channels.len() * s.eeg_len, 13 * s.mfcc_frames);
    for smp in &mut s.samples {
        smp.eeg = floats(eeg_n)?;
        if smp.mfcc.is_some() {
            smp.mfcc = Some(floats(mfcc_n)?);
        }
    }
    Some(s)
}

fn write(path: &Path, s: &SubjectSamples) -> Result<()> {
    let io = |source| Error::Io { path: path.into(), source };
    let mut meta = s.clone();
    for smp in &mut meta.samples {
        smp.eeg = Vec::new();
        if smp.mfcc.is_some() {
            smp.mfcc = Some(Vec::new());
        }
    }
    let json = serde_json::to_vec(&meta).map_err(|e| Error::dataset(path, e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    f.write_all(&json).map_err(io)?;
    for smp in &s.samples {
        for v in smp.eeg.iter().chain(smp.mfcc.iter().flatten()) {
            f.write_all(&v.to_le_bytes()).map_err(io)?;
        }
    }
    f.flush().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

/// [`preprocess`] of the subject in `sd`, through the cache folder `cache` when given.
///
/// # Errors
/// As [`load_subject`] and [`preprocess`]; [`Error::Io`] when the cache file cannot be written.
pub fn preprocess_cached(
    sd: &SubjectDir,
    cfg: &PreprocessConfig,
    cache: Option<&Path>,
) -> Result<(SubjectSamples, Outcome)> {
    let path = match cache {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.into(), source })?;
            Some(dir.join(format!("subject{}-{:016x}.bin", sd.id, key(sd, cfg)?)))
        }
        None => None,
    };
    if let Some(s) = path.as_deref().and_then(read).filter(|s| s.subject == sd.id) {
        return Ok((s, Outcome::Hit));
    }
    let s = preprocess(&load_subject(sd)?, cfg)?;
    if let Some(p) = &path {
        write(p, &s)?;
    }
    Ok((s, Outcome::Miss))
}
