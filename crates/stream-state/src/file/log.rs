//! The keyed-entry log: `keyed.log`, an append-only sequence of records replayed at open
//! into an in-memory map, compacted by rewriting the live entries into a new file.
//!
//! ```text
//! file header   b"SRXLOG\0\x01"  (8 bytes, format version 1)
//! record        magic  u32 LE 0x4B525853 ("SXRK")
//!               len    u32 LE  body length
//!               crc32  u32 LE  CRC-32 (IEEE) of the 4 length bytes followed by the body
//!               body   op u8 (1 put, 2 delete) | expires_at i64 LE (epoch ms, 0 = never)
//!                      | key_len u32 LE | key (UTF-8) | value (rest of the body)
//! ```
//!
//! Reading stops at the first record that is incomplete or fails its checksum. If no
//! valid record follows it, it is the torn tail of an append interrupted by a crash and is
//! cut off; if a valid record follows, the damage is in the middle of the log and opening
//! fails with an error naming the file and offset.

use super::error::FileStoreError;
use super::fsutil::{fsync_dir, remove_if_exists, rename};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{debug, info, warn};

/// Name of the log inside a state directory.
pub(crate) const LOG_FILE: &str = "keyed.log";
/// Name of the compaction output before it replaces the log.
pub(crate) const LOG_TEMP_FILE: &str = "keyed.log.tmp";

const FILE_MAGIC: &[u8; 8] = b"SRXLOG\0\x01";
const RECORD_MAGIC: [u8; 4] = 0x4B52_5853u32.to_le_bytes();
const RECORD_HEADER: usize = 12;
/// op + expires_at + key_len.
const BODY_FIXED: usize = 13;
/// Largest record body accepted (keeps a damaged length field from asking for gigabytes).
const MAX_BODY: usize = 1 << 30;
/// Buffered appends are handed to the OS once they exceed this many bytes.
const WRITE_THRESHOLD: usize = 256 * 1024;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// Sizes of the keyed log, for monitoring and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Live (unexpired) keys.
    pub entries: usize,
    /// Bytes the live entries would take in a freshly compacted log.
    pub live_bytes: u64,
    /// Current length of the log, including appends not yet written to the file.
    pub log_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires_at: Option<i64>,
    /// Size of this entry's put record.
    record_len: u64,
}

/// One decoded record, borrowing from the file contents.
struct Record<'a> {
    op: u8,
    expires_at: Option<i64>,
    key: &'a str,
    value: &'a [u8],
}

/// Why a record could not be read.
enum BadRecord {
    /// The file ends inside the record.
    Incomplete(String),
    /// The record is complete but invalid.
    Invalid(String),
}

impl BadRecord {
    fn message(&self) -> &str {
        match self {
            BadRecord::Incomplete(m) | BadRecord::Invalid(m) => m,
        }
    }
}

fn record_len(key: &str, value: &[u8]) -> u64 {
    (RECORD_HEADER + BODY_FIXED + key.len() + value.len()) as u64
}

fn encode_record(out: &mut Vec<u8>, op: u8, expires_at: Option<i64>, key: &str, value: &[u8]) {
    let body_len = (BODY_FIXED + key.len() + value.len()) as u32;
    let start = out.len();
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in below
    out.push(op);
    out.extend_from_slice(&expires_at.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&out[start + 4..start + 8]);
    hasher.update(&out[start + RECORD_HEADER..]);
    let crc = hasher.finalize().to_le_bytes();
    out[start + 8..start + RECORD_HEADER].copy_from_slice(&crc);
}

fn u32_at(buf: &[u8], pos: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[pos..pos + 4]);
    u32::from_le_bytes(b)
}

/// Decodes the record at `pos`; returns it and the offset of the next one.
fn parse_record(buf: &[u8], pos: usize) -> Result<(Record<'_>, usize), BadRecord> {
    let rest = buf.len() - pos;
    if rest < RECORD_HEADER {
        return Err(BadRecord::Incomplete(format!(
            "{rest} bytes left, less than a record header"
        )));
    }
    if buf[pos..pos + 4] != RECORD_MAGIC {
        return Err(BadRecord::Invalid("bad record magic".into()));
    }
    let len = u32_at(buf, pos + 4) as usize;
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return Err(BadRecord::Invalid(format!(
            "impossible record length {len}"
        )));
    }
    let body_start = pos + RECORD_HEADER;
    if rest - RECORD_HEADER < len {
        return Err(BadRecord::Incomplete(format!(
            "record of {len} bytes extends past the end of the file ({} bytes left)",
            rest - RECORD_HEADER
        )));
    }
    let body = &buf[body_start..body_start + len];
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&buf[pos + 4..pos + 8]);
    hasher.update(body);
    if hasher.finalize() != u32_at(buf, pos + 8) {
        return Err(BadRecord::Invalid("record checksum mismatch".into()));
    }
    let op = body[0];
    if op != OP_PUT && op != OP_DELETE {
        return Err(BadRecord::Invalid(format!("unknown record type {op}")));
    }
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&body[1..9]);
    let expires_at = match i64::from_le_bytes(exp) {
        0 => None,
        ms => Some(ms),
    };
    let key_len = u32_at(body, 9) as usize;
    if key_len > len - BODY_FIXED {
        return Err(BadRecord::Invalid(format!(
            "key length {key_len} exceeds the record"
        )));
    }
    let key = std::str::from_utf8(&body[BODY_FIXED..BODY_FIXED + key_len])
        .map_err(|_| BadRecord::Invalid("key is not UTF-8".into()))?;
    let value = &body[BODY_FIXED + key_len..];
    Ok((
        Record {
            op,
            expires_at,
            key,
            value,
        },
        body_start + len,
    ))
}

/// The first offset at or after `from` where a valid record starts.
fn find_valid_record(buf: &[u8], from: usize) -> Option<usize> {
    let last = buf.len().checked_sub(RECORD_HEADER)?;
    (from..=last).find(|&i| buf[i..i + 4] == RECORD_MAGIC && parse_record(buf, i).is_ok())
}

fn is_expired(expires_at: Option<i64>, now_ms: i64) -> bool {
    expires_at.is_some_and(|t| t <= now_ms)
}

/// The keyed entries of one state directory.
#[derive(Debug)]
pub(crate) struct KeyedLog {
    dir: PathBuf,
    path: PathBuf,
    temp_path: PathBuf,
    /// Opened for appending.
    file: Arc<File>,
    /// Bytes handed to the OS (the file length, as far as this process is concerned).
    written: u64,
    /// Encoded records not yet written.
    pending: Vec<u8>,
    entries: BTreeMap<String, Entry>,
    /// `(expires_at, key)` of every entry with a TTL, for active expiry.
    expiries: BTreeSet<(i64, String)>,
    live_bytes: u64,
    compaction_min_bytes: u64,
    /// After a failed compaction, do not retry before the log reaches this length.
    retry_compaction_at: u64,
    /// Set when a write or fsync failed: the file may not match `entries` any more.
    failed: Option<String>,
}

impl KeyedLog {
    /// Opens (or creates) the log and replays it. A torn tail is cut off.
    pub(crate) fn open(
        dir: &Path,
        compaction_min_bytes: u64,
        now_ms: i64,
    ) -> Result<KeyedLog, FileStoreError> {
        let path = dir.join(LOG_FILE);
        let temp_path = dir.join(LOG_TEMP_FILE);
        if remove_if_exists(&temp_path)? {
            debug!(file = %temp_path.display(), "removed an unfinished compaction");
        }
        if !path.exists() {
            create_log_file(dir, &path, &temp_path)?;
        }
        let buf = fs::read(&path).map_err(|e| FileStoreError::io("read", &path, e))?;
        if buf.len() < FILE_MAGIC.len() || &buf[..FILE_MAGIC.len()] != FILE_MAGIC {
            return Err(FileStoreError::corrupt(
                &path,
                Some(0),
                "not a SrotaX state log (bad file header)",
            ));
        }
        let mut log = KeyedLog {
            dir: dir.to_path_buf(),
            path: path.clone(),
            temp_path,
            file: Arc::new(open_append(&path)?),
            written: 0,
            pending: Vec::new(),
            entries: BTreeMap::new(),
            expiries: BTreeSet::new(),
            live_bytes: 0,
            compaction_min_bytes,
            retry_compaction_at: 0,
            failed: None,
        };
        let mut pos = FILE_MAGIC.len();
        let mut records = 0u64;
        while pos < buf.len() {
            match parse_record(&buf, pos) {
                Ok((rec, next)) => {
                    match rec.op {
                        OP_PUT if !is_expired(rec.expires_at, now_ms) => {
                            log.insert(rec.key.to_string(), rec.value.to_vec(), rec.expires_at);
                        }
                        _ => log.remove(rec.key),
                    }
                    records += 1;
                    pos = next;
                }
                Err(bad) => {
                    if let Some(valid) = find_valid_record(&buf, pos + 1) {
                        return Err(FileStoreError::corrupt(
                            &path,
                            Some(pos as u64),
                            format!(
                                "{}, and a valid record follows at byte offset {valid}, so this is damage inside the \
                                 log, not an interrupted write at its end; restore the directory from a backup or \
                                 run with --reset",
                                bad.message()
                            ),
                        ));
                    }
                    warn!(
                        file = %path.display(),
                        offset = pos,
                        dropped_bytes = buf.len() - pos,
                        reason = bad.message(),
                        "cutting off the torn tail of the state log (a write interrupted by a crash)"
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| FileStoreError::io("open", &path, e))?;
                    f.set_len(pos as u64)
                        .map_err(|e| FileStoreError::io("truncate torn tail of", &path, e))?;
                    f.sync_all()
                        .map_err(|e| FileStoreError::io("fsync", &path, e))?;
                    break;
                }
            }
        }
        log.written = pos as u64;
        info!(
            file = %path.display(),
            records,
            live_entries = log.entries.len(),
            log_bytes = log.written,
            "replayed state log"
        );
        log.maybe_compact(now_ms);
        Ok(log)
    }

    /// The file, for an fsync outside the store's lock.
    pub(crate) fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub(crate) fn check_usable(&self) -> Result<(), FileStoreError> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(FileStoreError::Failed {
                dir: self.dir.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// Remembers a failure after which the file may not match memory.
    pub(crate) fn mark_failed(&mut self, reason: String) {
        warn!(dir = %self.dir.display(), %reason, "state store stops accepting writes");
        self.failed.get_or_insert(reason);
    }

    pub(crate) fn stats(&self) -> LogStats {
        LogStats {
            entries: self.entries.len(),
            live_bytes: self.live_bytes,
            log_bytes: self.len(),
        }
    }

    fn len(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    pub(crate) fn get(&self, key: &str, now_ms: i64) -> Option<Vec<u8>> {
        self.entries
            .get(key)
            .filter(|e| !is_expired(e.expires_at, now_ms))
            .map(|e| e.value.clone())
    }

    pub(crate) fn scan(&self, prefix: &str, now_ms: i64) -> Vec<(String, Vec<u8>)> {
        self.entries
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| !is_expired(e.expires_at, now_ms))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect()
    }

    pub(crate) fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        expires_at: Option<i64>,
        now_ms: i64,
    ) -> Result<(), FileStoreError> {
        self.check_usable()?;
        if BODY_FIXED + key.len() + value.len() > MAX_BODY {
            return Err(FileStoreError::TooLarge(format!(
                "state entry '{key}' is {} bytes; the file state store accepts at most {MAX_BODY} bytes per key and value",
                key.len() + value.len()
            )));
        }
        self.expire(now_ms);
        encode_record(&mut self.pending, OP_PUT, expires_at, key, &value);
        if is_expired(expires_at, now_ms) {
            self.remove(key);
        } else {
            self.insert(key.to_string(), value, expires_at);
        }
        self.write_if_large()
    }

    pub(crate) fn delete(&mut self, key: &str, now_ms: i64) -> Result<(), FileStoreError> {
        self.check_usable()?;
        self.expire(now_ms);
        if self.entries.contains_key(key) {
            encode_record(&mut self.pending, OP_DELETE, None, key, &[]);
            self.remove(key);
        }
        self.write_if_large()
    }

    fn insert(&mut self, key: String, value: Vec<u8>, expires_at: Option<i64>) {
        self.remove(&key);
        let record_len = record_len(&key, &value);
        self.live_bytes += record_len;
        if let Some(t) = expires_at {
            self.expiries.insert((t, key.clone()));
        }
        self.entries.insert(
            key,
            Entry {
                value,
                expires_at,
                record_len,
            },
        );
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.live_bytes -= old.record_len;
            if let Some(t) = old.expires_at {
                self.expiries.remove(&(t, key.to_string()));
            }
        }
    }

    /// Drops expired entries from memory (their records stay in the log until compaction,
    /// and replay skips them).
    pub(crate) fn expire(&mut self, now_ms: i64) {
        while let Some((t, _)) = self.expiries.first() {
            if *t > now_ms {
                break;
            }
            if let Some((_, key)) = self.expiries.pop_first() {
                if let Some(old) = self.entries.remove(&key) {
                    self.live_bytes -= old.record_len;
                }
            }
        }
    }

    fn write_if_large(&mut self) -> Result<(), FileStoreError> {
        if self.pending.len() >= WRITE_THRESHOLD {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Hands buffered records to the OS (no fsync). On failure the partial write is cut
    /// off again and the records stay buffered for the next attempt.
    pub(crate) fn write_pending(&mut self) -> Result<(), FileStoreError> {
        self.check_usable()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&*self.file).write_all(&self.pending) {
            if let Err(e2) = self.file.set_len(self.written) {
                self.mark_failed(format!(
                    "cannot undo a partial write to {}: {e2}",
                    self.path.display()
                ));
            }
            return Err(FileStoreError::io("append to", &self.path, e));
        }
        self.written += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Compacts when the log is over twice the live size and at least the minimum size.
    /// A failure is logged, not returned: the old log is still intact.
    pub(crate) fn maybe_compact(&mut self, now_ms: i64) {
        self.expire(now_ms);
        let len = self.len();
        if self.failed.is_some()
            || len < self.compaction_min_bytes
            || len <= 2 * self.live_bytes
            || len < self.retry_compaction_at
        {
            return;
        }
        if let Err(e) = self.compact(now_ms) {
            self.retry_compaction_at = len.saturating_add(self.compaction_min_bytes.max(1 << 20));
            warn!(error = %e, "state log compaction failed; the old log is kept and compaction is retried later");
        }
    }

    /// Rewrites the live entries into a new log: temp file + fsync + rename + fsync(dir).
    pub(crate) fn compact(&mut self, now_ms: i64) -> Result<(), FileStoreError> {
        self.check_usable()?;
        self.expire(now_ms);
        let before = self.len();
        remove_if_exists(&self.temp_path)?;
        let result = self.write_compacted();
        let file = match result {
            Ok(file) => file,
            Err(e) => {
                let _ = fs::remove_file(&self.temp_path);
                return Err(e);
            }
        };
        rename(&self.temp_path, &self.path)?;
        // From here the new log is in place: the pending records are in it.
        self.file = Arc::new(file);
        self.written = FILE_MAGIC.len() as u64 + self.live_bytes;
        self.pending.clear();
        self.retry_compaction_at = 0;
        if let Err(e) = fsync_dir(&self.dir) {
            self.mark_failed(format!("compaction could not make its rename durable: {e}"));
            return Err(e);
        }
        info!(file = %self.path.display(), before_bytes = before, after_bytes = self.written, "compacted state log");
        Ok(())
    }

    /// Writes header + live entries to the temp file, fsynced; returns it open for appending.
    fn write_compacted(&self) -> Result<File, FileStoreError> {
        let path = &self.temp_path;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(path)
            .map_err(|e| FileStoreError::io("create", path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, &file);
        let mut record = Vec::new();
        out.write_all(FILE_MAGIC)
            .map_err(|e| FileStoreError::io("write", path, e))?;
        for (key, entry) in &self.entries {
            record.clear();
            encode_record(&mut record, OP_PUT, entry.expires_at, key, &entry.value);
            out.write_all(&record)
                .map_err(|e| FileStoreError::io("write", path, e))?;
        }
        out.flush()
            .map_err(|e| FileStoreError::io("write", path, e))?;
        drop(out);
        file.sync_all()
            .map_err(|e| FileStoreError::io("fsync", path, e))?;
        Ok(file)
    }
}

fn open_append(path: &Path) -> Result<File, FileStoreError> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| FileStoreError::io("open", path, e))
}

/// Creates an empty log atomically (so a crash never leaves a log without its header).
fn create_log_file(dir: &Path, path: &Path, temp_path: &Path) -> Result<(), FileStoreError> {
    super::fsutil::write_synced(temp_path, &[FILE_MAGIC])?;
    rename(temp_path, path)?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        encode_record(&mut buf, OP_PUT, Some(42), "k€y", b"value");
        encode_record(&mut buf, OP_DELETE, None, "k", b"");
        let (r, next) = parse_record(&buf, 0).ok().unwrap();
        assert_eq!(
            (r.op, r.expires_at, r.key, r.value),
            (OP_PUT, Some(42), "k€y", &b"value"[..])
        );
        assert_eq!(next as u64, record_len("k€y", b"value"));
        let (r, end) = parse_record(&buf, next).ok().unwrap();
        assert_eq!((r.op, r.key), (OP_DELETE, "k"));
        assert_eq!(end, buf.len());
        assert!(matches!(
            parse_record(&buf[..end - 1], next),
            Err(BadRecord::Incomplete(_))
        ));
        let mut flipped = buf.clone();
        flipped[next - 1] ^= 0x40;
        assert!(matches!(
            parse_record(&flipped, 0),
            Err(BadRecord::Invalid(_))
        ));
        assert_eq!(find_valid_record(&flipped, 1), Some(next));
    }
}
