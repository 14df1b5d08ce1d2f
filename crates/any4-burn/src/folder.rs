//! Atomic folders: a model folder (checkpoint, config, tokenizer) is built in a sibling temporary
//! folder and swapped in only when complete, so a reader — or a process killed at any moment —
//! sees the old folder or the new one, whole, never a mix or a partial one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::atomic::temporary_pid;
use crate::error::{Error, Result};

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn refused(path: &Path, reason: String) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason),
    }
}

/// Build the folder `dir` through `fill(tmp)`, which writes its files into a fresh temporary
/// folder beside `dir`; then every file and the folder are synced and the folder is renamed to
/// `dir`.
///
/// An existing `dir` is replaced only if it is empty or holds nothing but an any4 folder's
/// files (`model.safetensors` — an any4 checkpoint —, `config.json`, `tokenizer.json`), each
/// of which the new folder also has (an earlier output of this tool): then the two folders are exchanged in one `renameat2(RENAME_EXCHANGE)` on Linux (two
/// renames elsewhere) and the old one is deleted. Any other existing `dir` is refused before
/// `fill` runs, naming what is in the way, so no user file is ever deleted. On error the
/// temporary folder is removed and `dir` is untouched. Temporary folders of killed writers
/// (`.<name>.<pid>.<n>.tmp`) are removed by the next write.
pub fn write_folder_atomically<E: From<Error>>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dir
        .file_name()
        .ok_or_else(|| refused(dir, "not a folder path".into()))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(refused(&parent, "the output's parent folder does not exist".into()).into());
    }
    if dir.exists() {
        replaceable(dir, None)?;
    }
    remove_stale(&parent, &name);
    let tmp = parent.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let outcome = fill(&tmp).and_then(|()| swap_in(&tmp, dir, &parent).map_err(E::from));
    if outcome.is_err() && tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    outcome
}

/// Sync the finished folder `tmp` and put it at `dir`.
fn swap_in(tmp: &Path, dir: &Path, parent: &Path) -> Result<()> {
    sync_folder(tmp)?;
    if dir.exists() {
        replaceable(dir, Some(tmp))?;
        exchange(tmp, dir)?;
        // `tmp` now holds the old folder.
        std::fs::remove_dir_all(tmp).map_err(io(tmp))?;
    } else {
        std::fs::rename(tmp, dir).map_err(io(dir))?;
    }
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io(parent))
}

/// The files of an any4 model folder: all an existing output folder may hold to be replaced.
const FOLDER_FILES: [&str; 3] = ["model.safetensors", "config.json", "tokenizer.json"];

/// Whether the existing folder `dir` may be replaced: a folder (not a file or a link to one),
/// empty, or an earlier any4 output — only the files of an any4 folder, each also in `new`
/// when given, with an any4 `model.safetensors`.
fn replaceable(dir: &Path, new: Option<&Path>) -> Result<()> {
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(refused(
            dir,
            "exists and is not a folder; choose a new output folder".into(),
        ));
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        entries.push((entry.file_name(), entry.file_type().map_err(io(dir))?));
    }
    if entries.is_empty() {
        return Ok(());
    }
    let weights = dir.join("model.safetensors");
    if !is_any4_checkpoint(&weights) {
        return Err(refused(
            dir,
            "exists and is not an any4 model folder (no any4 model.safetensors); refusing to \
             replace it: choose a new or empty output folder"
                .into(),
        ));
    }
    for (file, kind) in entries {
        let known = FOLDER_FILES.iter().any(|f| file == *f);
        let other = !kind.is_file() || !known || new.is_some_and(|n| !n.join(&file).is_file());
        if other {
            return Err(refused(
                dir,
                format!(
                    "holds `{}`, which is not part of an any4 model folder; refusing to replace \
                     it: move it away or choose another output folder",
                    file.to_string_lossy()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `path` is a safetensors file whose metadata says `format = any4` (reads the header
/// only; says nothing of whether the rest is valid).
pub fn is_any4_checkpoint(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let mut len = [0u8; 8];
    if file.read_exact(&mut len).is_err() {
        return false;
    }
    let len = u64::from_le_bytes(len);
    if len > crate::checkpoint::MAX_HEADER_BYTES as u64 {
        return false;
    }
    let mut header = vec![0u8; len as usize];
    if file.read_exact(&mut header).is_err() {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .and_then(|h| {
            h.get("__metadata__")?
                .get("format")?
                .as_str()
                .map(|f| f == crate::CHECKPOINT_FORMAT)
        })
        .unwrap_or(false)
}

/// fsync every file of `dir`, then `dir` itself.
fn sync_folder(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(&path))?;
        }
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Swap the folders `a` and `b` (both exist).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| refused(p, "path contains a NUL byte".into()))
        };
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        // Filesystems without RENAME_EXCHANGE fall through to the two-rename swap.
        if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(io(b)(err));
        }
    }
    // Two renames: a kill between them leaves the new folder at `a` and the old one at the
    // backup name, both whole; `dir` is briefly absent.
    let backup = a.with_extension("old");
    std::fs::rename(b, &backup).map_err(io(b))?;
    std::fs::rename(a, b).map_err(io(b))?;
    std::fs::rename(&backup, a).map_err(io(a))
}

/// Remove temporary folders for `name` in `parent` whose writer is gone (Linux; best effort).
fn remove_stale(parent: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name();
        if let Some(pid) = temporary_pid(&file.to_string_lossy(), name)
            && pid != std::process::id()
            && !Path::new("/proc").join(pid.to_string()).exists()
            && entry.path().is_dir()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("any4-folder-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch");
        d
    }

    fn any4_file(path: &Path) {
        let header = br#"{"__metadata__":{"format":"any4"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        std::fs::write(path, bytes).expect("write");
    }

    #[test]
    fn creates_replaces_and_refuses() {
        let root = scratch("basic");
        let out = root.join("out");
        write_folder_atomically(&out, |tmp| {
            any4_file(&tmp.join("model.safetensors"));
            std::fs::write(tmp.join("config.json"), "1").map_err(io(tmp))
        })
        .expect("create");
        assert_eq!(
            std::fs::read_to_string(out.join("config.json")).unwrap(),
            "1"
        );
        // Replacing an earlier output swaps it whole.
        write_folder_atomically(&out, |tmp| {
            any4_file(&tmp.join("model.safetensors"));
            std::fs::write(tmp.join("config.json"), "2").map_err(io(tmp))
        })
        .expect("replace");
        assert_eq!(
            std::fs::read_to_string(out.join("config.json")).unwrap(),
            "2"
        );
        // A failing fill leaves the old folder and no temporary behind.
        let err = write_folder_atomically(&out, |_| Err(Error::Data("injected".into())));
        assert!(err.is_err());
        assert_eq!(
            std::fs::read_to_string(out.join("config.json")).unwrap(),
            "2"
        );
        let left: Vec<_> = std::fs::read_dir(&root).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only `out` remains: {left:?}");
        // A user file in the folder: refused before anything is written, file kept.
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let e = write_folder_atomically::<Error>(&out, |_| panic!("must not run"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("notes.txt"), "{e}");
        // A folder that is not an any4 output (a dense HF model): refused.
        let hf = root.join("hf");
        std::fs::create_dir(&hf).unwrap();
        std::fs::write(hf.join("model.safetensors"), b"\x02\0\0\0\0\0\0\0{}").unwrap();
        let e = write_folder_atomically::<Error>(&hf, |_| panic!("must not run"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an any4 model folder"), "{e}");
        assert!(hf.join("model.safetensors").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
