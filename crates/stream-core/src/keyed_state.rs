//! Keyed operator state with time-to-live, for custom operators (the fluent API's
//! [`crate::fluent::KeyedStream::process`] and `reduce`).
//!
//! Entries are values under a key (MongoDB equality: `1` and `1.0` are one key). With a
//! TTL, each write sets the entry's expiry to `now + ttl`; expiry is **active**: an index
//! ordered by expiry lets [`KeyedState::expire`] remove every expired entry, read again
//! or not, so state of keys that stopped appearing does not grow forever. A read never
//! returns an expired entry even before it is removed. The whole state is exported by
//! [`KeyedState::checkpoint_state`], so an operator holding it is part of every
//! checkpoint; [`KeyedState::len`] is its size metric.

use crate::error::EvalError;
use crate::value::{HashableValue, Value, ValueHashMap};
use std::collections::BTreeMap;

/// Values per key, with optional TTL.
#[derive(Debug, Clone, Default)]
pub struct KeyedState {
    ttl_ms: Option<i64>,
    entries: ValueHashMap<Entry>,
    /// `(expires_at, sequence)` → key, for active expiry in time order.
    expiry: BTreeMap<(i64, u64), HashableValue>,
    sequence: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    /// `(expires_at, sequence)` when a TTL applies.
    expires: Option<(i64, u64)>,
}

impl KeyedState {
    /// Empty state whose entries never expire.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty state whose entries expire `ttl_ms` milliseconds after their last write.
    pub fn with_ttl(ttl_ms: i64) -> Self {
        KeyedState {
            ttl_ms: Some(ttl_ms),
            ..Self::default()
        }
    }

    /// The value under `key` at time `now` (epoch ms), unless absent or expired.
    pub fn get(&self, key: &Value, now: i64) -> Option<&Value> {
        let e = self.entries.get(&HashableValue(key.clone()))?;
        match e.expires {
            Some((at, _)) if at <= now => None,
            _ => Some(&e.value),
        }
    }

    /// Stores `value` under `key` at time `now`, restarting its TTL.
    pub fn put(&mut self, key: Value, value: Value, now: i64) {
        let key = HashableValue(key);
        if let Some(old) = self.entries.get(&key).and_then(|e| e.expires) {
            self.expiry.remove(&old);
        }
        let expires = self.ttl_ms.map(|ttl| {
            self.sequence += 1;
            let slot = (now.saturating_add(ttl), self.sequence);
            self.expiry.insert(slot, key.clone());
            slot
        });
        self.entries.insert(key, Entry { value, expires });
    }

    /// Replaces the value under `key` by `f(current)`; `None` deletes it.
    pub fn update(
        &mut self,
        key: Value,
        now: i64,
        f: impl FnOnce(Option<&Value>) -> Option<Value>,
    ) {
        match f(self.get(&key, now)) {
            Some(v) => self.put(key, v, now),
            None => {
                self.delete(&key);
            }
        }
    }

    /// Removes `key`; returns its value if it was present.
    pub fn delete(&mut self, key: &Value) -> Option<Value> {
        let e = self.entries.remove(&HashableValue(key.clone()))?;
        if let Some(slot) = e.expires {
            self.expiry.remove(&slot);
        }
        Some(e.value)
    }

    /// Removes every entry expired at `now`; returns how many.
    pub fn expire(&mut self, now: i64) -> usize {
        let mut removed = 0;
        while let Some(entry) = self.expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
            removed += 1;
        }
        removed
    }

    /// Number of entries held (including expired ones not yet removed).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `[[key, value, expiresAt or null], ...]` in expiry order, then keys without TTL.
    pub fn checkpoint_state(&self) -> Value {
        let mut items = Vec::with_capacity(self.entries.len());
        let row = |k: &HashableValue, e: &Entry| {
            let at = e.expires.map_or(Value::Null, |(at, _)| Value::Int64(at));
            Value::Array(vec![k.0.clone(), e.value.clone(), at])
        };
        for key in self.expiry.values() {
            if let Some(e) = self.entries.get(key) {
                items.push(row(key, e));
            }
        }
        for (k, e) in &self.entries {
            if e.expires.is_none() {
                items.push(row(k, e));
            }
        }
        Value::Array(items)
    }

    /// Restores [`KeyedState::checkpoint_state`], keeping this state's TTL setting.
    pub fn restore_state(&mut self, state: &Value) -> Result<(), EvalError> {
        let bad = || {
            EvalError::new(format!(
                "invalid keyed state in the checkpoint: {}",
                state.to_json()
            ))
        };
        let mut restored = KeyedState {
            ttl_ms: self.ttl_ms,
            ..KeyedState::default()
        };
        for item in state.as_array().ok_or_else(bad)? {
            let Some([key, value, at]) = item.as_array() else {
                return Err(bad());
            };
            let key = HashableValue(key.clone());
            let expires = match at {
                Value::Int64(at) => {
                    restored.sequence += 1;
                    let slot = (*at, restored.sequence);
                    restored.expiry.insert(slot, key.clone());
                    Some(slot)
                }
                Value::Null => None,
                _ => return Err(bad()),
            };
            restored.entries.insert(
                key,
                Entry {
                    value: value.clone(),
                    expires,
                },
            );
        }
        *self = restored;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_update_delete() {
        let mut s = KeyedState::new();
        s.put(Value::Int32(1), Value::string("a"), 0);
        // Numeric keys follow MongoDB equality.
        assert_eq!(
            s.get(&Value::Double(1.0), 0).and_then(Value::as_str),
            Some("a")
        );
        s.update(Value::Int32(1), 0, |v| {
            Some(Value::string(format!(
                "{}b",
                v.and_then(Value::as_str).unwrap_or("")
            )))
        });
        assert_eq!(
            s.get(&Value::Int32(1), 5).and_then(Value::as_str),
            Some("ab")
        );
        assert!(s.delete(&Value::Int32(1)).is_some());
        assert!(s.is_empty());
    }

    #[test]
    fn expired_entries_are_removed_without_being_read() {
        let mut s = KeyedState::with_ttl(100);
        s.put(Value::string("old"), Value::Int32(1), 0);
        s.put(Value::string("new"), Value::Int32(2), 50);
        s.put(Value::string("old"), Value::Int32(3), 60); // a write restarts the TTL
        assert_eq!(s.expire(150), 1, "only 'new' (written at 50) expired");
        assert!(s.get(&Value::string("new"), 150).is_none());
        assert_eq!(
            s.get(&Value::string("old"), 150)
                .and_then(Value::as_i64_exact),
            Some(3)
        );
        // Expired but not yet removed: never returned.
        assert!(s.get(&Value::string("old"), 160).is_none());
        assert_eq!(s.len(), 1);
        assert_eq!(s.expire(1_000), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn state_round_trips_with_expiry() {
        let mut s = KeyedState::with_ttl(10);
        s.put(Value::string("a"), Value::Int32(1), 0);
        s.put(Value::string("b"), Value::Int32(2), 5);
        let mut r = KeyedState::with_ttl(10);
        r.restore_state(&s.checkpoint_state()).unwrap();
        assert_eq!(
            r.checkpoint_state().to_json(),
            s.checkpoint_state().to_json()
        );
        assert_eq!(r.expire(10), 1);
        assert_eq!(r.len(), 1);
    }
}
