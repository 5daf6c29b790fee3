//! The state-store contract: keyed bytes with TTL, plus atomic checkpoints of source
//! positions and operator state. [`MemoryStateStore`] serves tests and embedding;
//! durable stores live in `stream-state`.

use super::connector::SourcePositions;
use super::definition::{ConnectorConfig, DefinitionError};
use crate::value::{parse_document, Document, ExtJsonMode, Value};
use async_trait::async_trait;
use compact_str::CompactString;
use hashbrown::HashTable;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A state-store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The backend could not be reached or failed; retrying may help.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// Stored data is unreadable (corrupt or truncated); names what is broken.
    #[error("state store data is corrupt: {0}")]
    Corrupt(String),
    /// A named thing (e.g. a checkpoint sequence asked for by `restore`) does not exist.
    #[error("not found in the state store: {0}")]
    NotFound(String),
    /// The backend rejected the operation (wrong type, permission, schema); retrying
    /// will not help.
    #[error("state store rejected the operation: {0}")]
    Rejected(String),
}

/// What a checkpoint holds: everything needed to resume after a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The pipeline it belongs to.
    pub pipeline_id: String,
    /// Increases by one per checkpoint.
    pub sequence: u64,
    /// Source positions covered (every record up to these was processed and delivered).
    pub positions: SourcePositions,
    /// Operator state, one entry per stage (`null` for stateless stages). Shared, so
    /// that a store keeping checkpoints in memory holds one without copying it.
    pub operator_state: Arc<[Value]>,
    /// The sink's committed position ([`super::Sink::committed_position`]), or null.
    pub sink_position: Value,
    /// Wall-clock time of the checkpoint, epoch millis.
    pub created_at: i64,
}

/// Appends `,"operatorState":[...]` in canonical Extended JSON. Written in place: a
/// document holding the state would copy all of it.
pub(super) fn write_operator_state(out: &mut String, states: &[Value]) {
    out.push_str(",\"operatorState\":[");
    for (i, state) in states.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        state.write_json(out, ExtJsonMode::Canonical);
    }
    out.push(']');
}

impl Checkpoint {
    /// Canonical Extended JSON bytes (types survive the round trip).
    pub fn encode(&self) -> Vec<u8> {
        let mode = ExtJsonMode::Canonical;
        let mut positions = Document::new();
        for (k, v) in &self.positions {
            positions.insert(k.as_str(), v.clone());
        }
        let mut d = Document::new();
        d.insert("pipelineId", Value::string(self.pipeline_id.as_str()));
        d.insert("sequence", Value::Int64(self.sequence as i64));
        d.insert("positions", Value::Document(positions));
        d.insert("sinkPosition", self.sink_position.clone());
        d.insert("createdAt", Value::Date(self.created_at));
        let mut out = d.to_json_mode(mode);
        out.pop(); // the closing brace
        write_operator_state(&mut out, &self.operator_state);
        out.push('}');
        out.into_bytes()
    }

    /// Reads [`Checkpoint::encode`]'s output; `what` names the origin in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Checkpoint, StateError> {
        let corrupt = |m: String| StateError::Corrupt(format!("{what}: {m}"));
        let text = std::str::from_utf8(bytes).map_err(|e| corrupt(format!("not UTF-8: {e}")))?;
        let d = parse_document(text).map_err(|e| corrupt(e.to_string()))?;
        let pipeline_id = d
            .get("pipelineId")
            .and_then(Value::as_str)
            .ok_or_else(|| corrupt("missing pipelineId".into()))?
            .to_string();
        let sequence = d
            .get("sequence")
            .and_then(Value::as_i64_exact)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| corrupt("missing sequence".into()))?;
        let positions = d
            .get("positions")
            .and_then(Value::as_document)
            .ok_or_else(|| corrupt("missing positions".into()))?
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let operator_state: Arc<[Value]> = d
            .get("operatorState")
            .and_then(Value::as_array)
            .ok_or_else(|| corrupt("missing operatorState".into()))?
            .into();
        let sink_position = d.get("sinkPosition").cloned().unwrap_or(Value::Null);
        let created_at = match d.get("createdAt") {
            Some(Value::Date(ms)) => *ms,
            _ => return Err(corrupt("missing createdAt".into())),
        };
        Ok(Checkpoint {
            pipeline_id,
            sequence,
            positions,
            operator_state,
            sink_position,
            created_at,
        })
    }
}

/// Keyed state and checkpoints.
#[async_trait]
pub trait StateStore: Send + Sync + fmt::Debug {
    /// The value under `key`, unless absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// Stores `value` under `key`, expiring after `ttl` when given.
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>)
        -> Result<(), StateError>;
    /// Removes `key`.
    async fn delete(&self, key: &str) -> Result<(), StateError>;
    /// Every live `(key, value)` whose key starts with `prefix`, sorted by key.
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError>;
    /// Stores every `(key, value)` of `entries`, all with the same `ttl`, in as few round
    /// trips as the backend allows (one pipeline, transaction or lock). Saving a
    /// partition's keyed state on rebalance is one call. Entries are moved in, so
    /// in-process stores keep them without copying. The default calls `put` per entry.
    async fn put_batch(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        for (key, value) in entries {
            self.put(&key, value, ttl).await?;
        }
        Ok(())
    }
    /// Makes every keyed write so far durable, for stores that buffer them until the
    /// next checkpoint (file); the network stores write through. Partition state
    /// ([`super::partition_state`]) is saved as keyed entries followed by this call.
    async fn sync(&self) -> Result<(), StateError> {
        Ok(())
    }
    /// Stores a checkpoint atomically: after a crash at any moment, `load_checkpoint`
    /// returns either this checkpoint or the previous one, never a mix. Its id is its
    /// `sequence`; saving the same sequence again replaces that checkpoint.
    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StateError>;
    /// The latest checkpoint of a pipeline (the one with the highest sequence).
    async fn load_checkpoint(&self, pipeline_id: &str) -> Result<Option<Checkpoint>, StateError>;
    /// The checkpoint of a pipeline with this sequence, if it is still stored.
    async fn load_checkpoint_at(
        &self,
        pipeline_id: &str,
        sequence: u64,
    ) -> Result<Option<Checkpoint>, StateError>;
    /// The sequences of a pipeline's stored checkpoints, oldest first.
    async fn list_checkpoints(&self, pipeline_id: &str) -> Result<Vec<u64>, StateError>;
    /// Deletes all but the newest `keep` checkpoints of a pipeline (the latest is always
    /// kept, even with `keep == 0`); returns how many were deleted.
    async fn prune_checkpoints(&self, pipeline_id: &str, keep: usize) -> Result<usize, StateError>;
    /// Forgets a pipeline's checkpoints (`srotax run --reset`).
    async fn clear_checkpoint(&self, pipeline_id: &str) -> Result<(), StateError>;
    /// Makes checkpoint `sequence` the one the next run resumes from, by saving a copy of
    /// it as a new latest checkpoint (older and newer ones stay listed). Returns the copy.
    async fn restore_checkpoint(
        &self,
        pipeline_id: &str,
        sequence: u64,
    ) -> Result<Checkpoint, StateError> {
        let old = self
            .load_checkpoint_at(pipeline_id, sequence)
            .await?
            .ok_or_else(|| {
                StateError::NotFound(format!(
                    "checkpoint {sequence} of pipeline '{pipeline_id}' (see list_checkpoints)"
                ))
            })?;
        let latest = self.list_checkpoints(pipeline_id).await?.last().copied();
        let restored = Checkpoint {
            sequence: latest.unwrap_or(sequence) + 1,
            created_at: chrono::Utc::now().timestamp_millis(),
            ..old
        };
        self.save_checkpoint(&restored).await?;
        Ok(restored)
    }
}

/// The sequences to delete so that only the newest `keep` (at least one) of `sequences`
/// (sorted ascending) remain: a helper for [`StateStore::prune_checkpoints`].
pub fn checkpoints_to_prune(sequences: &[u64], keep: usize) -> &[u64] {
    &sequences[..sequences.len().saturating_sub(keep.max(1))]
}

/// In-process state: fast, shared by clones, gone when the process ends.
#[derive(Debug, Clone, Default)]
pub struct MemoryStateStore {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// The keyed entries, found by `hasher`'s hash of the key. A table of slots rather
    /// than a `HashMap`: overwriting a key then changes its value in place.
    entries: HashTable<Slot>,
    /// foldhash: several times faster than SipHash on short keys; keys come from the
    /// pipeline's own operators, not from an attacker choosing collisions.
    hasher: foldhash::fast::RandomState,
    /// Per pipeline: sequence → checkpoint (kept as given: nothing reads its encoding).
    checkpoints: HashMap<String, BTreeMap<u64, Checkpoint>>,
    /// Writes since expired entries were last removed.
    writes_since_sweep: usize,
    /// Whether an entry with an expiry may be stored (else there is nothing to sweep).
    may_expire: bool,
}

/// A keyed entry: one table slot, one cache line. A batch write is bound by cache
/// misses, so a key of up to 24 bytes is stored in the slot (`CompactString`): finding
/// it follows no pointer and storing it allocates nothing; an overwrite then touches
/// only the slot and the value it replaces.
#[derive(Debug)]
#[repr(align(64))]
struct Slot {
    key: CompactString,
    value: Vec<u8>,
    expires: Option<Instant>,
}

const _: () = assert!(
    std::mem::size_of::<Slot>() == 64,
    "a slot is one cache line"
);

impl Slot {
    /// Live at `now`; the clock is read only for entries that expire.
    fn live(&self, now: impl FnOnce() -> Instant) -> bool {
        self.expires.is_none_or(|t| t > now())
    }
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock cannot leave the maps half-updated (every
        // update is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl MemoryInner {
    /// The live entry under `key`.
    fn get(&self, key: &str) -> Option<&Slot> {
        self.entries
            .find(self.hasher.hash_one(key), |s| s.key == key)
            .filter(|s| s.live(Instant::now))
    }

    /// Stores `entries` (under one lock: the caller's). No `reserve`: a batch that
    /// overwrites existing keys would double the table for nothing.
    fn insert(
        &mut self,
        entries: impl ExactSizeIterator<Item = (String, Vec<u8>)>,
        ttl: Option<Duration>,
    ) {
        let expires = ttl.map(|t| Instant::now() + t);
        self.may_expire |= expires.is_some();
        self.writes_since_sweep += entries.len();
        let hasher = &self.hasher;
        for (key, value) in entries {
            let hash = hasher.hash_one(key.as_str());
            match self.entries.find_mut(hash, |s| s.key == key) {
                Some(slot) => {
                    slot.value = value;
                    slot.expires = expires;
                }
                None => {
                    let slot = Slot {
                        key: CompactString::from(key),
                        value,
                        expires,
                    };
                    self.entries
                        .insert_unique(hash, slot, |s| hasher.hash_one(s.key.as_str()));
                }
            }
        }
        // Expire actively so keys that are never read again do not accumulate; one pass
        // per `len` writes keeps the cost per write constant.
        if self.may_expire && self.writes_since_sweep >= self.entries.len().max(1024) {
            let now = Instant::now();
            self.entries.retain(|s| s.live(|| now));
            self.may_expire = self.entries.iter().any(|s| s.expires.is_some());
            self.writes_since_sweep = 0;
        }
    }
}

#[async_trait]
impl StateStore for MemoryStateStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.lock().get(key).map(|s| s.value.clone()))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        self.lock()
            .insert(std::iter::once((key.to_string(), value)), ttl);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        let mut inner = self.lock();
        let hash = inner.hasher.hash_one(key);
        if let Ok(slot) = inner.entries.find_entry(hash, |s| s.key == key) {
            slot.remove();
        }
        Ok(())
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let now = Instant::now();
        let mut out: Vec<(String, Vec<u8>)> = self
            .lock()
            .entries
            .iter()
            .filter(|s| s.key.starts_with(prefix) && s.live(|| now))
            .map(|s| (s.key.to_string(), s.value.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn put_batch(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        self.lock().insert(entries.into_iter(), ttl);
        Ok(())
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        self.lock()
            .checkpoints
            .entry(checkpoint.pipeline_id.clone())
            .or_default()
            .insert(checkpoint.sequence, checkpoint.clone());
        Ok(())
    }

    async fn load_checkpoint(&self, pipeline_id: &str) -> Result<Option<Checkpoint>, StateError> {
        Ok(self
            .lock()
            .checkpoints
            .get(pipeline_id)
            .and_then(|h| h.last_key_value())
            .map(|(_, c)| c.clone()))
    }

    async fn load_checkpoint_at(
        &self,
        pipeline_id: &str,
        sequence: u64,
    ) -> Result<Option<Checkpoint>, StateError> {
        Ok(self
            .lock()
            .checkpoints
            .get(pipeline_id)
            .and_then(|h| h.get(&sequence))
            .cloned())
    }

    async fn list_checkpoints(&self, pipeline_id: &str) -> Result<Vec<u64>, StateError> {
        Ok(self
            .lock()
            .checkpoints
            .get(pipeline_id)
            .map(|h| h.keys().copied().collect())
            .unwrap_or_default())
    }

    async fn prune_checkpoints(&self, pipeline_id: &str, keep: usize) -> Result<usize, StateError> {
        let mut inner = self.lock();
        let Some(history) = inner.checkpoints.get_mut(pipeline_id) else {
            return Ok(0);
        };
        let sequences: Vec<u64> = history.keys().copied().collect();
        let doomed = checkpoints_to_prune(&sequences, keep);
        for s in doomed {
            history.remove(s);
        }
        Ok(doomed.len())
    }

    async fn clear_checkpoint(&self, pipeline_id: &str) -> Result<(), StateError> {
        self.lock().checkpoints.remove(pipeline_id);
        Ok(())
    }
}

/// Builds state stores of one `type`.
pub trait StateStoreProvider: Send + Sync {
    /// The `type` this provider answers to, e.g. `file`.
    fn store_type(&self) -> &str;
    /// Builds the store described by `config` for pipeline `pipeline_id` (backends shared
    /// by several pipelines use it to keep each pipeline's keyed entries apart).
    fn create(
        &self,
        config: &ConnectorConfig,
        pipeline_id: &str,
    ) -> Result<Arc<dyn StateStore>, DefinitionError>;
}

/// The `memory` state store provider.
#[derive(Debug, Default)]
pub struct MemoryStateStoreProvider {
    store: MemoryStateStore,
}

impl StateStoreProvider for MemoryStateStoreProvider {
    fn store_type(&self) -> &str {
        "memory"
    }
    fn create(
        &self,
        _config: &ConnectorConfig,
        _pipeline_id: &str,
    ) -> Result<Arc<dyn StateStore>, DefinitionError> {
        // Pipelines in one process share the provider's store, so a pipeline restarted
        // in-process resumes from its checkpoint.
        Ok(Arc::new(self.store.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checkpoint_round_trips_with_types() {
        let store = MemoryStateStore::new();
        let mut positions = SourcePositions::new();
        positions.insert("orders.jsonl".into(), Value::Int64(42));
        let cp = Checkpoint {
            pipeline_id: "p".into(),
            sequence: 3,
            positions,
            operator_state: vec![
                Value::Null,
                Value::Array(vec![Value::Int32(1), Value::Double(2.0)]),
            ]
            .into(),
            sink_position: Value::Int64(99),
            created_at: 1_700_000_000_000,
        };
        store.save_checkpoint(&cp).await.unwrap();
        let back = store.load_checkpoint("p").await.unwrap().unwrap();
        assert_eq!(back.encode(), cp.encode());
        assert!(back.operator_state[1].identical(&cp.operator_state[1]));
        assert!(back.sink_position.identical(&Value::Int64(99)));
        store.clear_checkpoint("p").await.unwrap();
        assert!(store.load_checkpoint("p").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn ttl_expires_entries() {
        let store = MemoryStateStore::new();
        store
            .put("a:1", b"x".to_vec(), Some(Duration::from_millis(1)))
            .await
            .unwrap();
        store.put("a:2", b"y".to_vec(), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(store.get("a:1").await.unwrap(), None);
        assert_eq!(
            store.scan("a:").await.unwrap(),
            vec![("a:2".to_string(), b"y".to_vec())]
        );
    }

    #[tokio::test]
    async fn expired_batch_entries_are_swept_out_by_later_writes() {
        let store = MemoryStateStore::new();
        let batch = |prefix: &str| {
            (0..1024)
                .map(|i| (format!("{prefix}:{i}"), vec![1]))
                .collect::<Vec<_>>()
        };
        store
            .put_batch(batch("old"), Some(Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.put_batch(batch("new"), None).await.unwrap();
        assert_eq!(
            store.lock().entries.len(),
            1024,
            "the expired batch is gone"
        );
        assert!(!store.lock().may_expire);
        assert_eq!(store.get("new:7").await.unwrap(), Some(vec![1]));
    }

    #[tokio::test]
    async fn keys_inline_or_on_the_heap_round_trip() {
        let store = MemoryStateStore::new();
        let keys = [
            String::new(),
            "k".to_string(),
            "x".repeat(24),
            "y".repeat(25),
            "ü:€".to_string(),
            format!("p/{}", "ü".repeat(24)),
        ];
        for (i, k) in keys.iter().enumerate() {
            store.put(k, vec![i as u8], None).await.unwrap();
        }
        store.put(&keys[3], vec![9], None).await.unwrap();
        for (i, k) in keys.iter().enumerate() {
            let want = if i == 3 { 9 } else { i as u8 };
            assert_eq!(store.get(k).await.unwrap(), Some(vec![want]), "{k}");
        }
        let mut sorted = keys.to_vec();
        sorted.sort();
        let scanned: Vec<String> = store
            .scan("")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(scanned, sorted);
        store.delete(&keys[2]).await.unwrap();
        store.delete(&keys[3]).await.unwrap();
        assert_eq!(store.get(&keys[2]).await.unwrap(), None);
        assert_eq!(store.scan("").await.unwrap().len(), keys.len() - 2);
    }

    #[test]
    fn corrupt_checkpoints_are_named() {
        let e = Checkpoint::decode(b"{\"pipelineId\": \"p\"", "state/p.checkpoint").unwrap_err();
        assert!(e.to_string().contains("state/p.checkpoint"), "{e}");
    }
}
