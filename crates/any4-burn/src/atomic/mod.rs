//! Atomic writes. Files: a temporary file beside the target, fsync, rename over the target,
//! fsync of the folder — so an interrupted write (error, crash, kill, power loss) leaves the
//! previous file untouched and readers see the old file or the new one, never a mix. Folders
//! (a model folder of several files): [`folder`], the same idea one level up.

mod folder;

pub use folder::{CHECKPOINT_FILES, OutputDir, check_output_dir};

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Wraps the file being written; tests pass one that fails part-way.
pub(crate) type Sink<'a> = &'a dyn Fn(File) -> Box<dyn Write>;

/// A write refused before any byte was written, with the path and why.
pub(crate) fn refused(path: &Path, reason: &str) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason.to_string()),
    }
}

/// Write through `write(tmp)` into a temporary file beside `path`, fsync it, rename it over
/// `path` and fsync the folder: an interrupted save (error, crash, kill, power loss) leaves any
/// previous file at `path` untouched, and readers see the old file or the new one, never a mix.
///
/// Temporary files are named `.<name>.<pid>.<n>.tmp` (unique per process and call, so
/// concurrent saves to the same target cannot write into one file); ones left by a process
/// that no longer runs (killed mid-write) are removed first, where `/proc` says which runs.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| refused(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    if path.is_dir() {
        return Err(refused(path, "is a folder; expected a file path to write"));
    }
    remove_stale_temporaries(&dir, &name);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let outcome = write(&tmp).and_then(|()| {
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        // Make the rename itself durable.
        File::open(&dir).and_then(|d| d.sync_all()).map_err(io)
    });
    if outcome.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome
}

/// The writer's pid if `file` is one of [`write_atomically`]'s temporaries for `name`.
pub(crate) fn temporary_pid(file: &str, name: &str) -> Option<u32> {
    let rest = file
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?;
    let rest = rest.strip_suffix(".tmp")?;
    // `<pid>.<n>` (and `<pid>` from earlier versions).
    let pid = rest.split_once('.').map_or(rest, |(pid, _)| pid);
    pid.parse().ok()
}

/// Whether process `pid` runs, where `/proc` can say; `true` (keep its files) where it cannot.
pub(crate) fn process_runs(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Remove temporaries (files, or folders of [`folder`]) for `name` in `dir` whose writer is gone;
/// best effort, Linux only (other systems keep them: they are never read, only their disk space
/// is lost).
pub(crate) fn remove_stale_temporaries(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        if let Some(pid) = temporary_pid(&file.to_string_lossy(), name)
            && pid != std::process::id()
            && !process_runs(pid)
        {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
}

/// Convenience for small JSON/text files written next to a checkpoint, atomically.
pub fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    write_file_with(path, contents, &|file| Box::new(file))
}

pub(crate) fn write_file_with(path: &Path, contents: &[u8], sink: Sink<'_>) -> Result<()> {
    write_atomically(path, |tmp| {
        let io = |source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        };
        let mut w = sink(File::create(tmp).map_err(io)?);
        w.write_all(contents).and_then(|()| w.flush()).map_err(io)
    })
}
