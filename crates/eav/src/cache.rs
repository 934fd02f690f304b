//! A preprocessing cache: a subject's windows are stored once per (source files, settings) and reused.
//!
//! An entry is named `subject<id>-<setting>-<files>.bin`: `setting` hashes the preprocessing settings and
//! the subject's folder, `files` the name, size and modification time of every file in the subject's `EEG/`
//! and `Audio/` folders (and `Video/` when video is read); changing either gives a new entry. When an entry is written, the entries of the
//! same subject and setting for other file states are removed: they can never be read again, so the cache
//! holds one entry per (subject, setting). A damaged or foreign cache file is ignored (recomputed), never
//! trusted.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::dataset::{PreprocessConfig, SubjectSamples, preprocess};
use crate::error::{Error, Result};
use crate::subject::{SubjectDir, load_subject};

/// The cache files' format and the version of what the loader and preprocessing make of a subject's files;
/// part of every key, so a change to either (2: trial numbers of four digits in file names) misses every
/// older entry instead of returning windows the current code would not compute.
const MAGIC: &[u8; 16] = b"EMOFUSE-CACHE-2\n";

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

/// The cache key of a subject under `cfg`: its setting and file-state hashes, combined.
///
/// # Errors
/// [`Error::Io`] when the subject's folders cannot be listed.
pub fn key(sd: &SubjectDir, cfg: &PreprocessConfig) -> Result<u64> {
    let mut h = setting_key(sd, cfg);
    fnv(&mut h, &files_key(sd, cfg)?.to_le_bytes());
    Ok(h)
}

/// Hash of the preprocessing settings and the subject's folder.
fn setting_key(sd: &SubjectDir, cfg: &PreprocessConfig) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    fnv(&mut h, MAGIC);
    fnv(&mut h, serde_json::to_string(cfg).unwrap_or_default().as_bytes());
    fnv(&mut h, sd.path.as_os_str().as_encoded_bytes());
    h
}

/// Hash of the name, size and modification time of every file in the subject's `EEG/` and `Audio/`
/// (and `Video/` when the settings read video).
fn files_key(sd: &SubjectDir, cfg: &PreprocessConfig) -> Result<u64> {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    let folders: &[&str] = if cfg.video.is_some() { &["EEG", "Audio", "Video"] } else { &["EEG", "Audio"] };
    for sub in folders {
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

/// Removes the entries in `dir` for the same subject and setting as `keep` (`subject<id>-<setting>-`),
/// other than `keep` itself. Best effort: an entry another process removed first is fine.
fn remove_stale(dir: &Path, keep: &Path) {
    let Some(name) = keep.file_name().and_then(|n| n.to_str()) else { return };
    let Some(prefix) = name.rfind('-').map(|i| &name[..=i]) else { return };
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with(prefix) && n.ends_with(".bin") && *n != *name {
            let _ = std::fs::remove_file(e.path());
        }
    }
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
        if smp.video.is_some() {
            smp.video = Some(floats(s.video_len)?);
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
        if smp.video.is_some() {
            smp.video = Some(Vec::new());
        }
    }
    let json = serde_json::to_vec(&meta).map_err(|e| Error::dataset(path, e.to_string()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    f.write_all(MAGIC).map_err(io)?;
    f.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
    f.write_all(&json).map_err(io)?;
    for smp in &s.samples {
        for v in smp.eeg.iter().chain(smp.mfcc.iter().flatten()).chain(smp.video.iter().flatten()) {
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
            let name =
                format!("subject{}-{:016x}-{:016x}.bin", sd.id, setting_key(sd, cfg), files_key(sd, cfg)?);
            Some(dir.join(name))
        }
        None => None,
    };
    if let Some(s) = path.as_deref().and_then(read).filter(|s| s.subject == sd.id) {
        return Ok((s, Outcome::Hit));
    }
    let s = preprocess(&load_subject(sd)?, cfg)?;
    if let (Some(p), Some(dir)) = (&path, cache) {
        write(p, &s)?;
        remove_stale(dir, p);
    }
    Ok((s, Outcome::Miss))
}
