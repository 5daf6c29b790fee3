//! The file state store against real files: the `StateStore` contract, persistence across
//! reopen, torn-tail recovery, corruption detection, compaction, locking and the provider.

#![cfg(feature = "file")]

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream_core::streaming::{
    Checkpoint, ConnectorConfig, SourcePositions, StateError, StateStore, StateStoreProvider,
};
use stream_core::value::{parse_value, Value};
use stream_state::file::{
    FileStateStore, FileStateStoreOptions, FileStateStoreProvider, FileStoreError,
};

const LOG: &str = "keyed.log";

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Operator state covering every value type, including the ones JSON alone would lose.
fn rich_state(seq: u64) -> Vec<Value> {
    let typed = parse_value(
        r#"{
            "int": {"$numberInt": "7"}, "long": {"$numberLong": "9007199254740993"},
            "double": {"$numberDouble": "-0.0"}, "nan": {"$numberDouble": "NaN"}, "inf": {"$numberDouble": "-Infinity"},
            "decimal": {"$numberDecimal": "1.10"}, "date": {"$date": {"$numberLong": "-1000"}},
            "oid": {"$oid": "5f1d7f1c9d4b2a0012345678"},
            "bin": {"$binary": {"base64": "AAEC/w==", "subType": "04"}},
            "ts": {"$timestamp": {"t": 1700000000, "i": 3}},
            "re": {"$regularExpression": {"pattern": "^a.*", "options": "im"}},
            "min": {"$minKey": 1}, "max": {"$maxKey": 1}, "null": null, "bool": true,
            "str": "ünïcödé \"quoted\" \n line", "nested": {"a": [1, {"b": [[]]}], "empty": {}}
        }"#,
    )
    .expect("valid extended JSON");
    vec![
        Value::Null,
        typed,
        Value::Array(
            (0..200)
                .map(|i| Value::Int64(seq as i64 * 1000 + i))
                .collect(),
        ),
    ]
}

fn checkpoint(pipeline: &str, seq: u64) -> Checkpoint {
    let mut positions = SourcePositions::new();
    positions.insert("orders-0".into(), Value::Int64(seq as i64 * 10));
    positions.insert("orders-1".into(), Value::string(format!("token-{seq}")));
    Checkpoint {
        pipeline_id: pipeline.into(),
        sequence: seq,
        positions,
        operator_state: rich_state(seq).into(),
        sink_position: Value::Int64(seq as i64),
        created_at: 1_700_000_000_000 + seq as i64,
    }
}

fn assert_same(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.encode(), b.encode());
    assert_eq!(a.operator_state.len(), b.operator_state.len());
    for (x, y) in a.operator_state.iter().zip(b.operator_state.iter()) {
        assert!(x.identical(y), "{} != {}", x.to_json(), y.to_json());
    }
}

fn corrupt_message(e: StateError) -> String {
    match e {
        StateError::Corrupt(m) => m,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x20;
    fs::write(path, bytes).unwrap();
}

async fn wait_until_expired(store: &FileStateStore, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get(key).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "{key} did not expire");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn get_put_delete_scan() {
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
    store.put("user:2", b"two".to_vec(), None).await.unwrap();
    store.put("user:1", b"one".to_vec(), None).await.unwrap();
    store.put("user:10", vec![], None).await.unwrap();
    store
        .put("users", b"not in the user: prefix".to_vec(), None)
        .await
        .unwrap();
    store.put("t", vec![0, 255, 10], None).await.unwrap();
    assert_eq!(store.get("user:1").await.unwrap(), Some(b"one".to_vec()));
    assert_eq!(store.get("user:10").await.unwrap(), Some(vec![]));
    store.put("user:1", b"uno".to_vec(), None).await.unwrap();
    assert_eq!(
        store.scan("user:").await.unwrap(),
        vec![
            ("user:1".into(), b"uno".to_vec()),
            ("user:10".into(), vec![]),
            ("user:2".into(), b"two".to_vec())
        ]
    );
    store.delete("user:10").await.unwrap();
    store.delete("never-existed").await.unwrap();
    assert_eq!(store.get("user:10").await.unwrap(), None);
    assert_eq!(store.scan("").await.unwrap().len(), 4);
    assert_eq!(store.scan("zzz").await.unwrap(), vec![]);
}

#[tokio::test]
async fn ttl_hides_expired_entries_and_drops_them_actively() {
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    store
        .put("s:short", b"x".to_vec(), Some(Duration::from_millis(30)))
        .await
        .unwrap();
    store
        .put("s:long", b"y".to_vec(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    store.put("s:forever", b"z".to_vec(), None).await.unwrap();
    store
        .put("s:zero", b"gone".to_vec(), Some(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(store.get("s:zero").await.unwrap(), None);
    assert_eq!(store.get("s:short").await.unwrap(), Some(b"x".to_vec()));
    wait_until_expired(&store, "s:short").await;
    assert_eq!(
        store.scan("s:").await.unwrap(),
        vec![
            ("s:forever".into(), b"z".to_vec()),
            ("s:long".into(), b"y".to_vec())
        ]
    );
    // Still in memory until the next write removes it.
    assert_eq!(store.stats().unwrap().entries, 3);
    store.put("other", vec![], None).await.unwrap();
    assert_eq!(
        store.stats().unwrap().entries,
        3,
        "s:short removed, other added"
    );

    // Expiry is wall-clock: it holds across a reopen, and expired entries are not replayed.
    store
        .put("s:soon", b"w".to_vec(), Some(Duration::from_millis(30)))
        .await
        .unwrap();
    drop(store);
    let store = FileStateStore::open(dir.path()).unwrap();
    assert_eq!(store.get("s:long").await.unwrap(), Some(b"y".to_vec()));
    wait_until_expired(&store, "s:soon").await;
    drop(store);
    let store = FileStateStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().unwrap().entries, 3);
    assert_eq!(store.get("s:soon").await.unwrap(), None);
}

#[tokio::test]
async fn checkpoints_round_trip_with_every_value_type() {
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    assert!(store.load_checkpoint("orders").await.unwrap().is_none());
    for seq in 1..=3 {
        store
            .save_checkpoint(&checkpoint("orders", seq))
            .await
            .unwrap();
    }
    store
        .save_checkpoint(&checkpoint("payments", 9))
        .await
        .unwrap();
    assert_same(
        &store.load_checkpoint("orders").await.unwrap().unwrap(),
        &checkpoint("orders", 3),
    );
    assert_same(
        &store.load_checkpoint("payments").await.unwrap().unwrap(),
        &checkpoint("payments", 9),
    );
    assert!(dir.path().join("orders.checkpoint").is_file());
    assert!(dir.path().join("orders.checkpoint.prev").is_file());

    store.clear_checkpoint("orders").await.unwrap();
    assert!(store.load_checkpoint("orders").await.unwrap().is_none());
    assert!(!dir.path().join("orders.checkpoint.prev").exists());
    assert!(
        store.load_checkpoint("payments").await.unwrap().is_some(),
        "other pipelines keep theirs"
    );
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempdir();
    {
        let store = FileStateStore::open(dir.path()).unwrap();
        for i in 0..500 {
            store
                .put(&format!("k{i:03}"), format!("v{i}").into_bytes(), None)
                .await
                .unwrap();
        }
        for i in (0..500).step_by(2) {
            store.delete(&format!("k{i:03}")).await.unwrap();
        }
        store
            .put("k001", b"overwritten".to_vec(), None)
            .await
            .unwrap();
        store.save_checkpoint(&checkpoint("p", 5)).await.unwrap();
        // Written after the checkpoint: made durable by the clean close.
        store
            .put("late", b"after checkpoint".to_vec(), None)
            .await
            .unwrap();
    }
    let store = FileStateStore::open(dir.path()).unwrap();
    let all = store.scan("k").await.unwrap();
    assert_eq!(all.len(), 250);
    assert_eq!(all[0], ("k001".into(), b"overwritten".to_vec()));
    assert_eq!(all[1], ("k003".into(), b"v3".to_vec()));
    assert_eq!(
        store.get("late").await.unwrap(),
        Some(b"after checkpoint".to_vec())
    );
    assert_same(
        &store.load_checkpoint("p").await.unwrap().unwrap(),
        &checkpoint("p", 5),
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_at_open() {
    let dir = tempdir();
    {
        let store = FileStateStore::open(dir.path()).unwrap();
        for i in 0..10 {
            store
                .put(&format!("k{i}"), vec![i as u8; 100], None)
                .await
                .unwrap();
        }
        store.sync().unwrap();
    }
    let log = dir.path().join(LOG);
    let full = fs::metadata(&log).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(full - 3)
        .unwrap();

    let store = FileStateStore::open(dir.path()).unwrap();
    let keys: Vec<String> = store
        .scan("k")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        (0..9).map(|i| format!("k{i}")).collect::<Vec<_>>(),
        "only the torn last record is lost"
    );
    let record = (full - 8) / 10;
    assert_eq!(
        fs::metadata(&log).unwrap().len(),
        full - record,
        "truncated to the last whole record"
    );
    // The log stays appendable after the repair.
    store.put("k9", b"again".to_vec(), None).await.unwrap();
    drop(store);
    let store = FileStateStore::open(dir.path()).unwrap();
    assert_eq!(store.get("k9").await.unwrap(), Some(b"again".to_vec()));
    assert_eq!(store.stats().unwrap().entries, 10);
}

#[tokio::test]
async fn garbage_at_the_tail_is_a_torn_write_too() {
    let dir = tempdir();
    {
        let store = FileStateStore::open(dir.path()).unwrap();
        store.put("a", b"1".to_vec(), None).await.unwrap();
    }
    // A power loss can leave zeroes where the last appends were going.
    let log = dir.path().join(LOG);
    let mut bytes = fs::read(&log).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    fs::write(&log, bytes).unwrap();
    let store = FileStateStore::open(dir.path()).unwrap();
    assert_eq!(store.get("a").await.unwrap(), Some(b"1".to_vec()));
}

#[tokio::test]
async fn damage_inside_the_log_is_an_error_naming_file_and_offset() {
    let dir = tempdir();
    {
        let store = FileStateStore::open(dir.path()).unwrap();
        for i in 0..10 {
            store
                .put(&format!("k{i}"), vec![b'v'; 50], None)
                .await
                .unwrap();
        }
    }
    let log = dir.path().join(LOG);
    let len = fs::metadata(&log).unwrap().len();
    let record = (len - 8) / 10;
    let fifth = 8 + 4 * record;
    flip_byte(&log, fifth + 30);
    let err = FileStateStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, FileStoreError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&log.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("byte offset {fifth}")),
        "{message}"
    );
    assert!(message.contains("checksum"), "{message}");
    // As a StateError it stays a Corrupt error.
    assert!(matches!(StateError::from(err), StateError::Corrupt(_)));

    // A damaged length field is caught as well (the following records are still valid).
    flip_byte(&log, fifth + 30);
    flip_byte(&log, fifth + 5);
    let message = FileStateStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains(&format!("byte offset {fifth}")),
        "{message}"
    );
}

#[tokio::test]
async fn a_damaged_checkpoint_is_reported_never_replaced_by_an_empty_state() {
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    store.save_checkpoint(&checkpoint("p", 1)).await.unwrap();
    store.save_checkpoint(&checkpoint("p", 2)).await.unwrap();
    let current = dir.path().join("p.checkpoint");
    let len = fs::metadata(&current).unwrap().len();

    flip_byte(&current, len / 2);
    let message = corrupt_message(store.load_checkpoint("p").await.unwrap_err());
    assert!(
        message.contains(&current.display().to_string()),
        "{message}"
    );
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(
        message.contains("p.checkpoint.prev (sequence 1) is intact"),
        "{message}"
    );

    // Truncated.
    flip_byte(&current, len / 2);
    OpenOptions::new()
        .write(true)
        .open(&current)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let message = corrupt_message(store.load_checkpoint("p").await.unwrap_err());
    assert!(message.contains("truncated"), "{message}");

    // Both damaged: no hint to fall back to.
    flip_byte(&dir.path().join("p.checkpoint.prev"), 3);
    let message = corrupt_message(store.load_checkpoint("p").await.unwrap_err());
    assert!(
        message.contains("no intact previous checkpoint"),
        "{message}"
    );

    // A new save replaces the damaged file.
    store.save_checkpoint(&checkpoint("p", 3)).await.unwrap();
    assert_eq!(
        store.load_checkpoint("p").await.unwrap().unwrap().sequence,
        3
    );
}

#[tokio::test]
async fn an_interrupted_save_falls_back_to_the_previous_checkpoint() {
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    store.save_checkpoint(&checkpoint("p", 1)).await.unwrap();
    store.save_checkpoint(&checkpoint("p", 2)).await.unwrap();
    drop(store);
    // The state between the two renames of a save: `.checkpoint` moved to `.prev`, the
    // new one still in its temp file.
    fs::rename(
        dir.path().join("p.checkpoint"),
        dir.path().join("p.checkpoint.prev"),
    )
    .unwrap();
    fs::write(dir.path().join("p.checkpoint.tmp"), b"half written").unwrap();
    let store = FileStateStore::open(dir.path()).unwrap();
    assert!(
        !dir.path().join("p.checkpoint.tmp").exists(),
        "temp files are removed at open"
    );
    assert_same(
        &store.load_checkpoint("p").await.unwrap().unwrap(),
        &checkpoint("p", 2),
    );
}

#[tokio::test]
async fn a_checkpoint_file_of_another_pipeline_is_rejected() {
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    store.save_checkpoint(&checkpoint("a", 1)).await.unwrap();
    fs::copy(
        dir.path().join("a.checkpoint"),
        dir.path().join("b.checkpoint"),
    )
    .unwrap();
    let message = corrupt_message(store.load_checkpoint("b").await.unwrap_err());
    assert!(
        message.contains("holds a checkpoint of pipeline 'a'"),
        "{message}"
    );
}

#[tokio::test]
async fn pipeline_ids_must_be_plain_file_names() {
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    for bad in ["../escape", "a/b", ""] {
        let err = store
            .save_checkpoint(&checkpoint(bad, 1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid pipeline id"), "{err}");
        assert!(store.load_checkpoint(bad).await.is_err());
    }
    assert!(!dir
        .path()
        .parent()
        .unwrap()
        .join("escape.checkpoint")
        .exists());
}

#[tokio::test]
async fn compaction_keeps_exactly_the_live_entries() {
    let dir = tempdir();
    let mut options = FileStateStoreOptions::default();
    options.compaction_min_bytes = u64::MAX; // only explicit compaction in this test
    let store = FileStateStore::open_with(dir.path(), options).unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for round in 0..20 {
        for i in 0..100 {
            let key = format!("k{i:02}");
            let value = format!("{round}-{i}").into_bytes();
            store.put(&key, value.clone(), None).await.unwrap();
            expected.insert(key, value);
        }
    }
    for i in (0..100).step_by(3) {
        store.delete(&format!("k{i:02}")).await.unwrap();
        expected.remove(&format!("k{i:02}"));
    }
    store
        .put("ttl:gone", b"x".to_vec(), Some(Duration::from_millis(1)))
        .await
        .unwrap();
    store
        .put("ttl:kept", b"y".to_vec(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    expected.insert("ttl:kept".into(), b"y".to_vec());
    tokio::time::sleep(Duration::from_millis(5)).await;

    let before = store.stats().unwrap();
    store.compact().unwrap();
    let after = store.stats().unwrap();
    let log = dir.path().join(LOG);
    assert_eq!(after.entries, expected.len());
    assert_eq!(
        after.log_bytes,
        8 + after.live_bytes,
        "only the header and live records remain"
    );
    assert_eq!(fs::metadata(&log).unwrap().len(), after.log_bytes);
    assert!(
        after.log_bytes * 10 < before.log_bytes,
        "{before:?} -> {after:?}"
    );
    assert!(!dir.path().join("keyed.log.tmp").exists());

    let expected: Vec<(String, Vec<u8>)> = expected.into_iter().collect();
    assert_eq!(store.scan("").await.unwrap(), expected);
    // Writes after compaction go to the new log.
    store
        .put("after", b"compaction".to_vec(), None)
        .await
        .unwrap();
    drop(store);
    let store = FileStateStore::open(dir.path()).unwrap();
    let mut all = store.scan("").await.unwrap();
    assert_eq!(all.remove(0), ("after".to_string(), b"compaction".to_vec()));
    assert_eq!(all, expected);
}

#[tokio::test]
async fn checkpoints_compact_a_log_that_outgrew_its_live_entries() {
    let dir = tempdir();
    let mut options = FileStateStoreOptions::default();
    options.compaction_min_bytes = 64 * 1024;
    let store = FileStateStore::open_with(dir.path(), options).unwrap();
    for i in 0..2000u32 {
        store
            .put("counter", i.to_le_bytes().to_vec(), None)
            .await
            .unwrap();
    }
    assert!(store.stats().unwrap().log_bytes > 64 * 1024);
    store.save_checkpoint(&checkpoint("p", 1)).await.unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.log_bytes, 8 + stats.live_bytes);
    drop(store);
    let store = FileStateStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get("counter").await.unwrap(),
        Some(1999u32.to_le_bytes().to_vec())
    );
}

#[tokio::test]
async fn a_directory_has_one_owner_at_a_time() {
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    let err = FileStateStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, FileStoreError::Locked { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(
        message.contains(&format!("process {}", std::process::id())),
        "{message}"
    );
    drop(store);
    FileStateStore::open(dir.path()).expect("the lock is released on close");
}

#[tokio::test]
async fn the_provider_opens_shares_and_validates() {
    let dir = tempdir();
    let path = dir.path().join("state");
    let config = |p: &Path| {
        let mut c = ConnectorConfig::new("file").option("path", p.to_str().unwrap());
        c.path = "state".into();
        c
    };
    let provider = FileStateStoreProvider::new();
    assert_eq!(provider.store_type(), "file");
    let a = provider.create(&config(&path), "p").unwrap();
    // A second pipeline of the same process naming the same directory shares the store.
    let b = provider
        .create(&config(&dir.path().join("state/../state")), "p")
        .unwrap();
    a.put("shared", b"yes".to_vec(), None).await.unwrap();
    assert_eq!(b.get("shared").await.unwrap(), Some(b"yes".to_vec()));

    // Another provider (standing for another process) is refused, naming the option.
    let err = FileStateStoreProvider::new()
        .create(&config(&path), "p")
        .unwrap_err();
    assert_eq!(err.path, "state.options.path");
    assert!(err.message.contains("is in use by"), "{}", err.message);

    let err = provider
        .create(&ConnectorConfig::new("file"), "p")
        .unwrap_err();
    assert!(err.message.contains("needs option 'path'"), "{err:?}");
    let mut typo = config(&path).option("compactionMinByte", 5);
    typo.path = "state".into();
    let err = provider.create(&typo, "p").unwrap_err();
    assert_eq!(err.path, "state.options.compactionMinByte");

    drop((a, b));
    let again: Arc<dyn StateStore> = FileStateStoreProvider::new()
        .create(&config(&path), "p")
        .unwrap();
    assert_eq!(again.get("shared").await.unwrap(), Some(b"yes".to_vec()));
}

#[test]
fn works_without_a_tokio_runtime() {
    // The StateStore methods are async but do not need tokio: drive one by hand.
    let dir = tempdir();
    let store = FileStateStore::open(dir.path()).unwrap();
    let cp = checkpoint("p", 1);
    let fut = store.save_checkpoint(&cp);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut fut = std::pin::pin!(fut);
    assert!(matches!(
        fut.as_mut().poll(&mut cx),
        std::task::Poll::Ready(Ok(()))
    ));
    assert!(dir.path().join("p.checkpoint").is_file());
}
