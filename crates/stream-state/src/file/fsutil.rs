//! Small file-system helpers: durable writes, directory fsync and the directory lock.

use super::error::FileStoreError;
use fs4::fs_std::FileExt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside a state directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Makes a directory's entries (created, renamed, removed files) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), FileStoreError> {
    // Directories cannot be opened as files on Windows; there renames are durable
    // once the call returns (NTFS journals metadata), so there is nothing to do.
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| FileStoreError::io("open directory", dir, e))?;
        d.sync_all()
            .map_err(|e| FileStoreError::io("fsync directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `dir` (and missing parents) unless it exists, durably: the parent directory is
/// fsynced so the new directory survives a power loss.
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), FileStoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| FileStoreError::io("create directory", dir, e))?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => fsync_dir(Path::new(".")),
    }
}

/// Creates (or truncates) `path`, writes `chunks` and fsyncs the file. On failure the
/// partial file is removed (best effort; leftovers are removed at the next open anyway).
pub(crate) fn write_synced(path: &Path, chunks: &[&[u8]]) -> Result<(), FileStoreError> {
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| FileStoreError::io("create", path, e))?;
        for chunk in chunks {
            f.write_all(chunk)
                .map_err(|e| FileStoreError::io("write", path, e))?;
        }
        f.sync_all()
            .map_err(|e| FileStoreError::io("fsync", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Renames `from` to `to` (replacing `to`); the caller fsyncs the directory.
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), FileStoreError> {
    fs::rename(from, to).map_err(|e| FileStoreError::io("rename", from, e))
}

/// Removes a file; a missing file is fine. Returns whether it existed.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, FileStoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FileStoreError::io("remove", path, e)),
    }
}

/// Reads a whole file; `None` when it does not exist.
pub(crate) fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, FileStoreError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileStoreError::io("read", path, e)),
    }
}

/// Exclusive ownership of a state directory, held until dropped.
///
/// Uses an OS file lock (`flock` on Unix, `LockFileEx` on Windows) on `LOCK`, so the lock
/// disappears with the process however it ends (even `kill -9`): no stale lock files. The
/// file also records the holder's PID for the error message.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<DirLock, FileStoreError> {
        let path: PathBuf = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| FileStoreError::io("open lock file", &path, e))?;
        let locked =
            FileExt::try_lock_exclusive(&file).map_err(|e| FileStoreError::io("lock", &path, e))?;
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                h => h.to_string(),
            };
            return Err(FileStoreError::Locked {
                dir: dir.to_path_buf(),
                holder,
            });
        }
        let record = format!("process {}\n", std::process::id());
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(record.as_bytes()))
            .map_err(|e| FileStoreError::io("write lock file", &path, e))?;
        Ok(DirLock { _file: file })
    }
}
