//! Checkpoint files: `<pipeline>.checkpoint` (latest) and `<pipeline>.checkpoint.prev`
//! (the one before), each a 20-byte header followed by [`Checkpoint::encode`]'s bytes.
//! Every saved checkpoint is also hard-linked as `<pipeline>.history/<sequence>.checkpoint`
//! (20 digits, so names sort by sequence) for `list`, `load_at` and `prune`; a link costs
//! no copy, and a crash before it is made only leaves that checkpoint out of the history
//! (the listing adds the current checkpoint).
//!
//! ```text
//! offset 0   magic    b"SRXCKP\0\x01"   (format version 1)
//! offset 8   length   u64 little-endian  payload bytes
//! offset 16  crc32    u32 little-endian  CRC-32 (IEEE) of the payload
//! offset 20  payload  canonical Extended JSON of the checkpoint
//! ```

use super::error::FileStoreError;
use super::fsutil::{
    ensure_dir, fsync_dir, read_if_exists, remove_if_exists, rename, write_synced,
};
use std::fs;
use std::path::{Path, PathBuf};
use stream_core::streaming::Checkpoint;
use tracing::{info, warn};

const MAGIC: &[u8; 8] = b"SRXCKP\0\x01";
const HEADER_LEN: usize = 20;
/// Longest pipeline id: file names are limited to 255 bytes on most file systems.
pub(crate) const MAX_ID_LEN: usize = 200;

/// File-name suffixes.
pub(crate) const CURRENT_SUFFIX: &str = ".checkpoint";
pub(crate) const PREVIOUS_SUFFIX: &str = ".checkpoint.prev";
pub(crate) const TEMP_SUFFIX: &str = ".checkpoint.tmp";
const HISTORY_SUFFIX: &str = ".history";

/// Rejects ids that are not plain file names.
pub(crate) fn validate_pipeline_id(id: &str) -> Result<(), FileStoreError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(FileStoreError::InvalidPipelineId(id.to_string()))
    }
}

/// The file names of one pipeline's checkpoints.
pub(crate) struct CheckpointFiles {
    pub(crate) current: PathBuf,
    pub(crate) previous: PathBuf,
    pub(crate) temp: PathBuf,
    /// Directory of hard links, one per saved sequence.
    pub(crate) history: PathBuf,
}

impl CheckpointFiles {
    pub(crate) fn new(dir: &Path, pipeline_id: &str) -> Result<Self, FileStoreError> {
        validate_pipeline_id(pipeline_id)?;
        Ok(CheckpointFiles {
            current: dir.join(format!("{pipeline_id}{CURRENT_SUFFIX}")),
            previous: dir.join(format!("{pipeline_id}{PREVIOUS_SUFFIX}")),
            temp: dir.join(format!("{pipeline_id}{TEMP_SUFFIX}")),
            history: dir.join(format!("{pipeline_id}{HISTORY_SUFFIX}")),
        })
    }

    fn history_file(&self, sequence: u64) -> PathBuf {
        self.history.join(format!("{sequence:020}{CURRENT_SUFFIX}"))
    }

    /// Sequences in the history directory, ascending.
    fn history_sequences(&self) -> Result<Vec<u64>, FileStoreError> {
        let entries = match fs::read_dir(&self.history) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FileStoreError::io("list", &self.history, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| FileStoreError::io("list", &self.history, e))?;
            let name = entry.file_name();
            let sequence = name
                .to_str()
                .and_then(|n| n.strip_suffix(CURRENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(sequence) = sequence {
                out.push(sequence);
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// Header + payload of a checkpoint file.
fn frame(payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[16..20].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

/// Verifies a checkpoint file's frame and returns its payload.
fn unframe<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8], FileStoreError> {
    if bytes.len() < HEADER_LEN {
        return Err(FileStoreError::corrupt(
            path,
            None,
            format!(
                "truncated checkpoint: {} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            ),
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err(FileStoreError::corrupt(
            path,
            Some(0),
            "not a SrotaX checkpoint file (bad magic bytes)",
        ));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[16..20]);
    let crc = u32::from_le_bytes(crc);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() as u64 != len {
        return Err(FileStoreError::corrupt(
            path,
            None,
            format!("truncated or padded checkpoint: header announces {len} payload bytes, file holds {}", payload.len()),
        ));
    }
    let actual = crc32fast::hash(payload);
    if actual != crc {
        return Err(FileStoreError::corrupt(
            path,
            Some(HEADER_LEN as u64),
            format!("checksum mismatch (stored {crc:08x}, computed {actual:08x}): the file was damaged after it was written"),
        ));
    }
    Ok(payload)
}

/// Reads and verifies one checkpoint file; `None` when it does not exist.
fn read_checkpoint(path: &Path, pipeline_id: &str) -> Result<Option<Checkpoint>, FileStoreError> {
    let Some(bytes) = read_if_exists(path)? else {
        return Ok(None);
    };
    let payload = unframe(&bytes, path)?;
    let what = path.display().to_string();
    let cp = Checkpoint::decode(payload, &what)
        .map_err(|e| FileStoreError::corrupt(path, None, e.to_string()))?;
    if cp.pipeline_id != pipeline_id {
        return Err(FileStoreError::corrupt(
            path,
            None,
            format!(
                "holds a checkpoint of pipeline '{}', expected '{pipeline_id}'",
                cp.pipeline_id
            ),
        ));
    }
    Ok(Some(cp))
}

/// Writes a checkpoint so that a crash at any moment leaves a readable one:
/// temp file + fsync, `current` → `prev`, temp → `current`, fsync the directory.
///
/// Every intermediate state on disk holds a complete checkpoint: before the first rename
/// `current` is the old one; between the renames only `prev` (the old one) exists, which
/// [`load`] falls back to; afterwards `current` is the new one.
/// Then links the new `current` into the history.
pub(crate) fn save(
    dir: &Path,
    files: &CheckpointFiles,
    sequence: u64,
    payload: &[u8],
) -> Result<(), FileStoreError> {
    let header = frame(payload);
    write_synced(&files.temp, &[&header, payload])?;
    if files.current.exists() {
        rename(&files.current, &files.previous)?;
    }
    rename(&files.temp, &files.current)?;
    fsync_dir(dir)?;
    ensure_dir(&files.history)?;
    let link = files.history_file(sequence);
    remove_if_exists(&link)?;
    fs::hard_link(&files.current, &link).map_err(|e| FileStoreError::io("link", &link, e))?;
    fsync_dir(&files.history)
}

/// Sequences of the stored checkpoints, ascending: the history plus the latest (which a
/// crash may have left out of the history).
pub(crate) fn list(files: &CheckpointFiles, pipeline_id: &str) -> Result<Vec<u64>, FileStoreError> {
    let mut sequences = files.history_sequences()?;
    if let Some(latest) = load(files, pipeline_id)? {
        if let Err(at) = sequences.binary_search(&latest.sequence) {
            sequences.insert(at, latest.sequence);
        }
    }
    Ok(sequences)
}

/// The checkpoint with this sequence: from the history, else the latest if it matches.
pub(crate) fn load_at(
    files: &CheckpointFiles,
    pipeline_id: &str,
    sequence: u64,
) -> Result<Option<Checkpoint>, FileStoreError> {
    if let Some(cp) = read_checkpoint(&files.history_file(sequence), pipeline_id)? {
        return Ok(Some(cp));
    }
    Ok(load(files, pipeline_id)?.filter(|cp| cp.sequence == sequence))
}

/// Deletes history links of all but the newest `keep` checkpoints (`current` and `prev`
/// stay, being the latest two). Counts only the history (not reading `current`), so
/// after a crash that left the latest out of it one more is kept.
pub(crate) fn prune(files: &CheckpointFiles, keep: usize) -> Result<usize, FileStoreError> {
    let all = files.history_sequences()?;
    let doomed = stream_core::streaming::checkpoints_to_prune(&all, keep);
    let mut removed = 0;
    for &sequence in doomed {
        removed += usize::from(remove_if_exists(&files.history_file(sequence))?);
    }
    if removed > 0 {
        fsync_dir(&files.history)?;
    }
    Ok(doomed.len())
}

/// The latest checkpoint: `current`, or `prev` when a crash happened between the two
/// renames of [`save`]. A damaged `current` is an error (never silently an older or empty
/// state); the message says whether `prev` is intact and how to resume from it.
pub(crate) fn load(
    files: &CheckpointFiles,
    pipeline_id: &str,
) -> Result<Option<Checkpoint>, FileStoreError> {
    match read_checkpoint(&files.current, pipeline_id) {
        Ok(Some(cp)) => Ok(Some(cp)),
        Ok(None) => {
            let prev = read_checkpoint(&files.previous, pipeline_id)?;
            if let Some(cp) = &prev {
                info!(
                    file = %files.previous.display(),
                    sequence = cp.sequence,
                    "no current checkpoint (interrupted save); resuming from the previous one"
                );
            }
            Ok(prev)
        }
        Err(FileStoreError::Corrupt {
            path,
            offset,
            message,
        }) => {
            let hint = match read_checkpoint(&files.previous, pipeline_id) {
                Ok(Some(prev)) => format!(
                    "; the previous checkpoint {} (sequence {}) is intact: to resume from it (replaying more input), \
                     replace the damaged file with it, or run with --reset to start over",
                    files.previous.display(),
                    prev.sequence
                ),
                _ => "; no intact previous checkpoint: run with --reset to start over".to_string(),
            };
            warn!(file = %path.display(), "checkpoint is corrupt");
            Err(FileStoreError::Corrupt {
                path,
                offset,
                message: message + &hint,
            })
        }
        Err(other) => Err(other),
    }
}

/// Removes a pipeline's checkpoint files.
pub(crate) fn clear(dir: &Path, files: &CheckpointFiles) -> Result<(), FileStoreError> {
    let mut removed = false;
    for path in [&files.current, &files.previous, &files.temp] {
        removed |= remove_if_exists(path)?;
    }
    match fs::remove_dir_all(&files.history) {
        Ok(()) => removed = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(FileStoreError::io("remove", &files.history, e)),
    }
    if removed {
        fsync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_and_detects_damage() {
        let payload = b"{\"a\": 1}";
        let mut bytes = frame(payload).to_vec();
        bytes.extend_from_slice(payload);
        let path = Path::new("x.checkpoint");
        assert_eq!(unframe(&bytes, path).unwrap(), payload);
        let mut flipped = bytes.clone();
        flipped[HEADER_LEN + 2] ^= 0x01;
        assert!(unframe(&flipped, path)
            .unwrap_err()
            .to_string()
            .contains("checksum mismatch"));
        assert!(unframe(&bytes[..bytes.len() - 1], path)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        assert!(unframe(&bytes[..5], path)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }

    #[test]
    fn pipeline_ids_are_plain_file_names() {
        for ok in [
            "orders-ltv",
            "a",
            "A_1.v2",
            ".hidden",
            "..",
            &"x".repeat(MAX_ID_LEN),
        ] {
            validate_pipeline_id(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "a\\b",
            "a b",
            "ü",
            "a\0",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(validate_pipeline_id(bad).is_err(), "{bad}");
        }
    }
}
