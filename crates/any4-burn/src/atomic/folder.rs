//! Output folders that never cost the user a file: checked before any work, written beside the
//! target and swapped in whole.
//!
//! Rules ([`check_output_dir`]), for every command and API that writes a model folder:
//! 1. the output, with symbolic links followed, must not be an input nor a folder containing one
//!    (the new folder replaces the old one whole, which would delete the input);
//! 2. an existing folder must be empty or an any4 checkpoint folder (only `model.safetensors`
//!    in the any4 format, `config.json`, `tokenizer.json`); anything else is refused unless
//!    forced, and a forced write replaces only the files it writes, keeping the others;
//! 3. the folder is written as a sibling temporary folder `.<name>.<pid>.<n>.tmp`, then swapped
//!    in: `rename` onto a path that does not exist, or, onto an existing folder, an atomic
//!    exchange (`renameat2(RENAME_EXCHANGE)`, Linux) followed by removing the old folder, now at
//!    the temporary name. A kill at any moment leaves the old folder or the new one whole at
//!    the output path.
//!
//! Where the exchange is not available (other systems, file systems without it) two renames
//! are used: the old folder to `.<name>.<pid>.<n>.old`, the new one into place. A kill between
//! the two leaves no folder at the output path but the old one whole under that name; the next
//! write to the same path puts it back before doing anything else.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{refused, remove_stale_temporaries};
use crate::checkpoint::is_any4_checkpoint;
use crate::error::{Error, Result};

/// The files an any4 checkpoint folder holds (`model.safetensors` in the any4 format).
pub const CHECKPOINT_FILES: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];

/// A checked output folder: where a model folder will be written, and how.
///
/// Made by [`check_output_dir`] before any long work (so a bad output fails in a second) and
/// consumed by [`OutputDir::write`], which checks again (the folder may have changed since).
#[derive(Debug, Clone)]
pub struct OutputDir {
    /// As given, for messages.
    given: PathBuf,
    /// Absolute, symbolic links of the existing part followed.
    resolved: PathBuf,
    /// Canonical paths of the inputs that exist.
    inputs: Vec<PathBuf>,
    force: bool,
}

/// What is at the output path now.
#[derive(Debug, PartialEq)]
enum State {
    Absent,
    /// Empty, or holding only temporaries of this module.
    Empty,
    Checkpoint,
    /// Names of (up to three of) the entries that are not a checkpoint's.
    Foreign(Vec<String>),
}

/// Check that a model folder may be written at `out` for a run reading `inputs`: see the module
/// docs for the rules. `force` allows writing into an existing folder that is not an any4
/// checkpoint (its other files are kept). Nothing is created or changed.
///
/// Errors name `out` and say what to do: the output is an input or contains one, `out` or a
/// parent is a file, a symbolic link points nowhere, the folder holds other files (without
/// `force`), or its parent cannot be written.
pub fn check_output_dir(out: &Path, inputs: &[&Path], force: bool) -> Result<OutputDir> {
    let resolved = resolve(out)?;
    let inputs = inputs
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let dir = OutputDir {
        given: out.to_path_buf(),
        resolved,
        inputs,
        force,
    };
    dir.check()?;
    dir.probe_parent()?;
    Ok(dir)
}

impl OutputDir {
    /// The output folder as given.
    pub fn path(&self) -> &Path {
        &self.given
    }

    /// Whether writing will replace an existing any4 checkpoint folder.
    pub fn replaces_checkpoint(&self) -> bool {
        state(&self.resolved) == State::Checkpoint
    }

    /// Write the folder: `fill(dir)` writes the files into `dir` (a fresh sibling temporary
    /// folder, or the output folder itself when a foreign folder is forced), then the new folder
    /// is swapped in. On error nothing at the output path has changed and the temporary folder
    /// is gone. `fill` may fail with the caller's own error type.
    pub fn write<T, E: From<Error>>(
        &self,
        fill: impl FnOnce(&Path) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let st = self.check()?;
        if let State::Foreign(_) = st {
            // Forced: the files are replaced one by one (each atomically), the rest is kept.
            return fill(&self.resolved);
        }
        let (parent, name) = split(&self.resolved)?;
        std::fs::create_dir_all(&parent).map_err(|e| self.io_err("cannot create the folder", e))?;
        restore_backup(&parent, &name, &self.resolved);
        remove_stale_temporaries(&parent, &name);
        let tmp = parent.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
        let value = match fill(&tmp).and_then(|v| sync_dir(&tmp).map(|()| v).map_err(E::from)) {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let swapped = if self.resolved.exists() {
            exchange(&tmp, &self.resolved, &parent, &name)
        } else {
            std::fs::rename(&tmp, &self.resolved).map_err(|e| io(&self.resolved, e))
        };
        if let Err(e) = swapped {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
        // After an exchange `tmp` holds the old folder; after a plain rename it is gone.
        let _ = std::fs::remove_dir_all(&tmp);
        sync_dir(&parent)?;
        Ok(value)
    }

    /// Rules 1 and 2 against what is at the output path now.
    fn check(&self) -> Result<State> {
        for input in &self.inputs {
            if *input == self.resolved {
                return Err(self.refuse(format!(
                    "is the input {}: write the output to another folder",
                    input.display()
                )));
            }
            if input.starts_with(&self.resolved) {
                return Err(self.refuse(format!(
                    "contains the input {}: writing here would replace it; write the output to \
                     another folder",
                    input.display()
                )));
            }
        }
        let st = state(&self.resolved);
        match &st {
            State::Foreign(names) if !self.force => Err(self.refuse(format!(
                "the folder exists and is not an any4 checkpoint folder (it holds {}); choose \
                 another folder, or force the write (`--force`) to put {} into it (other files \
                 are kept)",
                names.join(", "),
                CHECKPOINT_FILES.join(", ")
            ))),
            _ => Ok(st),
        }
    }

    /// The nearest existing ancestor must be a writable folder (a temporary folder is made and
    /// removed there), so a bad output fails before the work, not after it.
    fn probe_parent(&self) -> Result<()> {
        let mut dir = self.resolved.parent();
        while let Some(d) = dir {
            if d.exists() {
                break;
            }
            dir = d.parent();
        }
        let Some(dir) = dir else { return Ok(()) };
        if !dir.is_dir() {
            return Err(self.refuse(format!(
                "cannot create the output folder: {} is not a folder",
                dir.display()
            )));
        }
        let probe = dir.join(format!(".any4-write-probe.{}", std::process::id()));
        std::fs::create_dir(&probe)
            .and_then(|()| std::fs::remove_dir(&probe))
            .map_err(|e| self.io_err("the output folder cannot be created here", e))
    }

    fn refuse(&self, reason: String) -> Error {
        refused(&self.given, &reason)
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> Error {
        refused(&self.given, &format!("{what}: {e}"))
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `out` made absolute with symbolic links followed: the whole path when it exists, else its
/// nearest existing ancestor's, with the rest appended (`..` taken lexically: those parts are
/// folders this module will create, not links).
fn resolve(out: &Path) -> Result<PathBuf> {
    let is_link = std::fs::symlink_metadata(out).is_ok_and(|m| m.file_type().is_symlink());
    if out.exists() {
        let real = std::fs::canonicalize(out).map_err(|e| io(out, e))?;
        if !real.is_dir() {
            return Err(refused(out, "is a file; the output must be a folder"));
        }
        return Ok(real);
    }
    if is_link {
        return Err(refused(
            out,
            "is a symbolic link to a path that does not exist",
        ));
    }
    let abs = std::path::absolute(out).map_err(|e| io(out, e))?;
    let mut base = abs.clone();
    let mut rest = Vec::new();
    while !base.exists() {
        match (base.file_name(), base.parent()) {
            (Some(n), Some(p)) => {
                rest.push(n.to_os_string());
                base = p.to_path_buf();
            }
            _ => break,
        }
    }
    let mut real = std::fs::canonicalize(&base).unwrap_or(base);
    for part in rest.iter().rev() {
        match Path::new(part).components().next() {
            Some(Component::ParentDir) => {
                real.pop();
            }
            Some(Component::CurDir) | None => {}
            Some(_) => real.push(part),
        }
    }
    Ok(real)
}

fn split(path: &Path) -> Result<(PathBuf, String)> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => Ok((p.to_path_buf(), n.to_string_lossy().into_owned())),
        _ => Err(refused(path, "cannot write a model folder at the root")),
    }
}

fn state(dir: &Path) -> State {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return State::Absent;
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !is_own_temporary(n))
        .collect();
    if names.is_empty() {
        return State::Empty;
    }
    let foreign: Vec<String> = names
        .iter()
        .filter(|n| !CHECKPOINT_FILES.contains(&n.as_str()))
        .take(3)
        .cloned()
        .collect();
    if !foreign.is_empty() {
        return State::Foreign(foreign);
    }
    let weights = dir.join(CHECKPOINT_FILES[0]);
    if weights.is_file() && is_any4_checkpoint(&weights) {
        State::Checkpoint
    } else if names.iter().any(|n| n == CHECKPOINT_FILES[0]) {
        State::Foreign(vec![format!(
            "{} that is not an any4 checkpoint",
            CHECKPOINT_FILES[0]
        )])
    } else {
        State::Foreign(names.into_iter().take(3).collect())
    }
}

/// A temporary of [`super::write_atomically`] for one of the checkpoint's files
/// (`.<file>.<pid>.<n>.tmp`), or a write probe.
fn is_own_temporary(name: &str) -> bool {
    name.starts_with(".any4-write-probe.")
        || CHECKPOINT_FILES
            .iter()
            .any(|f| super::temporary_pid(name, f).is_some())
}

/// Swap the complete folder `new` with the existing `target` (both in `parent`).
fn exchange(new: &Path, target: &Path, parent: &Path, name: &str) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        match rename_exchange(new, target) {
            Ok(()) => return Ok(()),
            // No exchange on this file system: fall back to two renames.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) => {}
            Err(e) => return Err(io(target, e)),
        }
    }
    let backup = parent.join(format!(".{name}.{}.old", std::process::id()));
    std::fs::rename(target, &backup).map_err(|e| io(target, e))?;
    if let Err(e) = std::fs::rename(new, target) {
        let _ = std::fs::rename(&backup, target);
        return Err(io(target, e));
    }
    let _ = std::fs::remove_dir_all(&backup);
    Ok(())
}

/// `renameat2(a, b, RENAME_EXCHANGE)`: both paths exist and trade places atomically.
#[cfg(target_os = "linux")]
fn rename_exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (cstr(a)?, cstr(b)?);
    // SAFETY: two valid NUL-terminated paths; AT_FDCWD as both directory descriptors (the paths
    // are absolute); the call reads the strings and touches no other memory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// After a killed two-rename swap: if nothing is at `target` and a dead writer's backup
/// `.<name>.<pid>.old` exists, put it back; if `target` exists, a dead writer's backup is stale
/// and removed.
fn restore_backup(parent: &Path, name: &str, target: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix('.')
            .and_then(|r| r.strip_prefix(name))
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(".old"))
            .and_then(|r| r.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || super::process_runs(pid) {
            continue;
        }
        if target.exists() {
            let _ = std::fs::remove_dir_all(e.path());
        } else {
            let _ = std::fs::rename(e.path(), target);
        }
    }
}

/// fsync a folder, so the renames in it are durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

#[cfg(test)]
mod tests;
