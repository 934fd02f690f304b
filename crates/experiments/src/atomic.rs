//! The one home of atomic writes: every file a run writes goes to a temporary name and is renamed into
//! place.

use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to a temporary name beside `path`, then renames it into place: a killed run leaves neither
/// a half-written file nor a lost earlier one.
///
/// # Errors
/// [`Error::Io`] naming the file.
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|source| Error::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io { path: path.into(), source })
}
