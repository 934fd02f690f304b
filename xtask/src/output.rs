//! Result files: parent folders created, the bytes written beside the target under a temporary name and
//! renamed into place (a killed command leaves neither a half-written file nor a lost earlier one), and
//! errors that name the file.

use std::path::Path;

use anyhow::Context as _;

/// Writes `bytes` to `path` as described in the module docs ([`experiments::write_atomic`] once the
/// folder exists).
///
/// # Errors
/// When a folder cannot be created or the file cannot be written; the message names the path.
pub fn write(path: &Path, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("writing {}: creating {}", path.display(), dir.display()))?;
    }
    Ok(experiments::write_atomic(path, bytes.as_ref())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_folders_replaces_files_and_leaves_no_temporary() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a/b/out.json");
        write(&path, "first")?;
        write(&path, b"second")?;
        assert_eq!(std::fs::read_to_string(&path)?, "second");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, ["out.json"]);
        Ok(())
    }

    #[test]
    fn a_failure_names_the_file_and_keeps_what_was_there() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("plain");
        write(&file, "kept")?;
        let inside = file.join("out.json");
        let err = write(&inside, "x").expect_err("a file cannot hold a folder");
        assert!(format!("{err:#}").contains(&inside.display().to_string()), "{err:#}");
        assert_eq!(std::fs::read_to_string(&file)?, "kept");
        Ok(())
    }
}
