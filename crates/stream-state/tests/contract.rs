//! The state-store contract, run against every backend with the same test functions:
//! memory, file, Redis (`cargo xtask services up`), PostgreSQL (same), SQLite.
//!
//! Crash and concurrency tests use real processes: the test binary re-runs itself
//! (`child` below) as a writer or as a checkpoint saver that is killed with SIGKILL.

mod common;

use common::{checkpoint, child_args, open, spawn_child, wait_ok, Backend, Fixture};
use std::path::Path;
use std::time::Duration;
use stream_core::streaming::StateError;

fn entries(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// get / put / delete / scan / put_batch.
async fn keyed_entries(f: &Fixture) {
    let s = &f.store;
    assert_eq!(s.get("customer:1").await.unwrap(), None);
    s.put("customer:1", b"a".to_vec(), None).await.unwrap();
    s.put("customer:1", b"b".to_vec(), None).await.unwrap();
    assert_eq!(s.get("customer:1").await.unwrap(), Some(b"b".to_vec()));
    // Characters that are special in glob patterns and SQL LIKE must be plain here.
    let batch = entries(&[
        ("customer:2", "c"),
        ("customer:10", "d"),
        ("cust*mer:[x]", "e"),
        ("customer%_", "f"),
        ("order:1", "g"),
        ("customer:2", "c2"), // the last write of a key in a batch wins
        ("ü:1", "h"),
    ]);
    s.put_batch(batch, None).await.unwrap();
    assert_eq!(
        s.scan("customer:").await.unwrap(),
        entries(&[
            ("customer:1", "b"),
            ("customer:10", "d"),
            ("customer:2", "c2")
        ]),
        "sorted by key, only the prefix"
    );
    assert_eq!(
        s.scan("cust*").await.unwrap(),
        entries(&[("cust*mer:[x]", "e")])
    );
    assert_eq!(
        s.scan("customer%").await.unwrap(),
        entries(&[("customer%_", "f")])
    );
    assert_eq!(s.scan("ü").await.unwrap(), entries(&[("ü:1", "h")]));
    assert_eq!(s.scan("").await.unwrap().len(), 7);
    s.delete("customer:1").await.unwrap();
    s.delete("never-written").await.unwrap();
    assert_eq!(s.get("customer:1").await.unwrap(), None);
    assert_eq!(s.scan("customer:").await.unwrap().len(), 2);
    s.put_batch(Vec::new(), None).await.unwrap();
    // Binary values round-trip.
    let bytes: Vec<u8> = (0..=255).collect();
    s.put("bin", bytes.clone(), None).await.unwrap();
    assert_eq!(s.get("bin").await.unwrap(), Some(bytes));
}

/// Entries with a TTL vanish from get and scan; others stay.
async fn ttl_expiry(f: &Fixture) {
    let s = &f.store;
    // Long enough that a loaded machine still reads them back before they expire.
    let ttl = Duration::from_secs(2);
    s.put("t:short", b"x".to_vec(), Some(ttl)).await.unwrap();
    s.put_batch(entries(&[("t:batch", "y")]), Some(ttl))
        .await
        .unwrap();
    s.put("t:long", b"z".to_vec(), Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    s.put("t:none", b"w".to_vec(), None).await.unwrap();
    assert_eq!(s.scan("t:").await.unwrap().len(), 4);
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    assert_eq!(s.get("t:short").await.unwrap(), None);
    assert_eq!(s.get("t:batch").await.unwrap(), None);
    assert_eq!(
        s.scan("t:").await.unwrap(),
        entries(&[("t:long", "z"), ("t:none", "w")])
    );
    // Writing again without a TTL makes the key permanent.
    s.put("t:short", b"again".to_vec(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(s.get("t:short").await.unwrap(), Some(b"again".to_vec()));
}

/// save / load / load_at / list / prune / restore / clear.
async fn checkpoints(f: &Fixture) {
    let s = &f.store;
    let p = &f.pipeline;
    assert_eq!(s.load_checkpoint(p).await.unwrap(), None);
    assert_eq!(s.list_checkpoints(p).await.unwrap(), Vec::<u64>::new());
    for seq in 1..=5 {
        s.save_checkpoint(&checkpoint(p, seq, 10)).await.unwrap();
    }
    let other = format!("{p}-other");
    s.save_checkpoint(&checkpoint(&other, 42, 0)).await.unwrap();
    let latest = s.load_checkpoint(p).await.unwrap().unwrap();
    assert_eq!(latest.encode(), checkpoint(p, 5, 10).encode());
    assert_eq!(
        s.load_checkpoint_at(p, 3).await.unwrap().unwrap().encode(),
        checkpoint(p, 3, 10).encode()
    );
    assert_eq!(s.load_checkpoint_at(p, 99).await.unwrap(), None);
    assert_eq!(s.list_checkpoints(p).await.unwrap(), vec![1, 2, 3, 4, 5]);

    assert_eq!(s.prune_checkpoints(p, 2).await.unwrap(), 3);
    assert_eq!(s.list_checkpoints(p).await.unwrap(), vec![4, 5]);
    assert_eq!(s.load_checkpoint_at(p, 2).await.unwrap(), None);
    assert_eq!(
        s.prune_checkpoints(p, 0).await.unwrap(),
        1,
        "keeps the latest"
    );
    assert_eq!(s.list_checkpoints(p).await.unwrap(), vec![5]);
    s.save_checkpoint(&checkpoint(p, 6, 10)).await.unwrap();

    // Restoring 5 makes a copy of it the latest (sequence 7).
    let restored = s.restore_checkpoint(p, 5).await.unwrap();
    assert_eq!(restored.sequence, 7);
    assert_eq!(restored.positions, checkpoint(p, 5, 10).positions);
    let latest = s.load_checkpoint(p).await.unwrap().unwrap();
    assert_eq!(latest.sequence, 7);
    assert_eq!(latest.sink_position, checkpoint(p, 5, 10).sink_position);
    assert_eq!(s.list_checkpoints(p).await.unwrap(), vec![5, 6, 7]);
    match s.restore_checkpoint(p, 1).await {
        Err(StateError::NotFound(m)) => assert!(m.contains("checkpoint 1"), "{m}"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    s.clear_checkpoint(p).await.unwrap();
    assert_eq!(s.load_checkpoint(p).await.unwrap(), None);
    assert_eq!(s.list_checkpoints(p).await.unwrap(), Vec::<u64>::new());
    // Other pipelines are untouched.
    assert_eq!(s.list_checkpoints(&other).await.unwrap(), vec![42]);
    s.clear_checkpoint(&other).await.unwrap();
}

/// Checkpoints and entries are still there after the store is closed and reopened.
async fn survives_reopen(f: &mut Fixture) {
    let p = f.pipeline.clone();
    f.store.put("k", b"v".to_vec(), None).await.unwrap();
    f.store
        .save_checkpoint(&checkpoint(&p, 1, 0))
        .await
        .unwrap();
    f.store
        .save_checkpoint(&checkpoint(&p, 2, 0))
        .await
        .unwrap();
    f.reopen();
    assert_eq!(f.store.get("k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(
        f.store.load_checkpoint(&p).await.unwrap().unwrap().sequence,
        2
    );
    assert_eq!(f.store.list_checkpoints(&p).await.unwrap(), vec![1, 2]);
}

/// A process saving checkpoints as fast as it can is killed with SIGKILL, three times:
/// afterwards the latest checkpoint is always complete and readable, and is the newest
/// one the store lists.
async fn kill_9_while_saving_checkpoints(f: &mut Fixture) {
    use std::io::BufRead;
    let location = f.location.display().to_string();
    for round in 0..3 {
        let before = f.store.list_checkpoints(&f.pipeline).await.unwrap().len();
        // Release the file store's directory lock for the child.
        f.store = std::sync::Arc::new(stream_state::memory::MemoryStateStore::new());
        let mut child = spawn_child(
            "child",
            &["saver", f.backend.name(), &location, &f.pipeline],
        );
        // The child prints a line per saved checkpoint: kill it a few saves in, while
        // it is writing the next one.
        let stdout = child.stdout.take().unwrap();
        let saved = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("saved "))
            .take(3 + round)
            .count();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(saved, 3 + round, "the child stopped early: {status}");
        f.reopen();
        let listed = f.store.list_checkpoints(&f.pipeline).await.unwrap();
        assert!(listed.len() >= before + saved, "round {round}: {listed:?}");
        let latest = f
            .store
            .load_checkpoint(&f.pipeline)
            .await
            .unwrap_or_else(|e| panic!("round {round}: latest checkpoint unreadable: {e}"))
            .unwrap();
        assert_eq!(Some(&latest.sequence), listed.last());
        assert_eq!(
            latest.encode(),
            checkpoint(&f.pipeline, latest.sequence, 64 << 10).encode(),
            "round {round}: a complete checkpoint"
        );
        f.store.prune_checkpoints(&f.pipeline, 2).await.unwrap();
    }
}

/// Two processes write keys and checkpoints into the same store at the same time.
async fn two_process_writers(f: &Fixture) {
    let location = f.location.display().to_string();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|tag| {
            spawn_child(
                "child",
                &["writer", f.backend.name(), &location, &f.pipeline, tag],
            )
        })
        .collect();
    for (child, tag) in children.into_iter().zip(["a", "b"]) {
        wait_ok(child, &format!("writer {tag}"));
    }
    for tag in ["a", "b"] {
        let got = f.store.scan(&format!("{tag}:")).await.unwrap();
        assert_eq!(got.len(), WRITES, "writer {tag}: every key is there");
        assert!(got
            .iter()
            .all(|(k, v)| v == &format!("{k}-value").into_bytes()));
        let p = format!("{}-{tag}", f.pipeline);
        let listed = f.store.list_checkpoints(&p).await.unwrap();
        assert_eq!(listed, (1..=10).collect::<Vec<u64>>());
    }
}

const WRITES: usize = 600;

/// The child processes of the tests above (a no-op unless started by `spawn_child`).
#[tokio::test]
async fn child() {
    let Some(args) = child_args() else {
        return;
    };
    let backend = Backend::parse(&args[1]);
    let location = Path::new(&args[2]);
    let pipeline = &args[3];
    let store = open(backend, pipeline, location);
    match args[0].as_str() {
        "saver" => {
            let start = store
                .load_checkpoint(pipeline)
                .await
                .unwrap()
                .map_or(0, |c| c.sequence);
            for seq in start + 1.. {
                store
                    .save_checkpoint(&checkpoint(pipeline, seq, 64 << 10))
                    .await
                    .unwrap();
                println!("saved {seq}");
            }
        }
        "writer" => {
            let tag = &args[4];
            // Half as single puts, half as batches, interleaved with checkpoints.
            for i in 0..WRITES / 2 {
                let k = format!("{tag}:{i:04}");
                store
                    .put(&k, format!("{k}-value").into_bytes(), None)
                    .await
                    .unwrap();
            }
            for chunk in (WRITES / 2..WRITES).collect::<Vec<_>>().chunks(30) {
                let batch: Vec<(String, Vec<u8>)> = chunk
                    .iter()
                    .map(|i| {
                        let k = format!("{tag}:{i:04}");
                        let v = format!("{k}-value").into_bytes();
                        (k, v)
                    })
                    .collect();
                store.put_batch(batch, None).await.unwrap();
                let p = format!("{pipeline}-{tag}");
                let seq = (chunk[0] - WRITES / 2) as u64 / 30 + 1;
                store
                    .save_checkpoint(&checkpoint(&p, seq, 100))
                    .await
                    .unwrap();
            }
        }
        "sql-abort" => sql::abort_mid_transaction(backend, location, pipeline).await,
        other => panic!("unknown child role {other}"),
    }
}

macro_rules! contract {
    ($module:ident, $backend:expr, persistent: $persistent:tt, shared: $shared:tt) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn keyed_get_put_delete_scan() {
                keyed_entries(&Fixture::new($backend)).await;
            }

            #[tokio::test]
            async fn ttl_expires_entries() {
                ttl_expiry(&Fixture::new($backend)).await;
            }

            #[tokio::test]
            async fn checkpoint_save_load_list_prune_restore() {
                checkpoints(&Fixture::new($backend)).await;
            }

            contract!(@persistent $persistent);
            contract!(@shared $shared);
        }
    };
    (@persistent true) => {
        #[tokio::test]
        async fn state_survives_reopen() {
            survives_reopen(&mut Fixture::new(BACKEND)).await;
        }

        #[tokio::test]
        async fn kill_9_mid_checkpoint_leaves_a_complete_one() {
            kill_9_while_saving_checkpoints(&mut Fixture::new(BACKEND)).await;
        }
    };
    (@persistent false) => {};
    (@shared true) => {
        #[tokio::test]
        async fn concurrent_writers_from_two_processes() {
            two_process_writers(&Fixture::new(BACKEND)).await;
        }
    };
    (@shared false) => {};
}

mod memory_backend {
    use super::*;
    const BACKEND: Backend = Backend::Memory;
    contract!(contract, BACKEND, persistent: false, shared: false);
}

mod file_backend {
    use super::*;
    const BACKEND: Backend = Backend::File;
    contract!(contract, BACKEND, persistent: true, shared: false);

    /// One process owns a state directory: a second one is refused, naming it.
    #[tokio::test]
    async fn a_second_process_is_refused() {
        let f = Fixture::new(BACKEND);
        let child = spawn_child(
            "child",
            &[
                "writer",
                "file",
                &f.location.display().to_string(),
                "p",
                "a",
            ],
        );
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains(&f.location.display().to_string()),
            "the error names the directory: {text}"
        );
    }
}

mod redis_backend {
    use super::*;
    const BACKEND: Backend = Backend::Redis;
    contract!(contract, BACKEND, persistent: true, shared: true);
}

mod postgres_backend {
    use super::*;
    const BACKEND: Backend = Backend::Postgres;
    contract!(contract, BACKEND, persistent: true, shared: true);
}

mod sqlite_backend {
    use super::*;
    const BACKEND: Backend = Backend::Sqlite;
    contract!(contract, BACKEND, persistent: true, shared: true);
}

mod sql {
    use super::*;
    use sqlx::Connection;

    fn url(backend: Backend, location: &Path) -> String {
        match backend {
            Backend::Postgres => test_support::postgres_url(),
            _ => format!("sqlite://{}", location.display()),
        }
    }

    /// Child: begins a transaction writing checkpoint 3 and dies before COMMIT.
    pub async fn abort_mid_transaction(backend: Backend, location: &Path, pipeline: &str) {
        sqlx::any::install_default_drivers();
        let mut con = sqlx::AnyConnection::connect(&url(backend, location))
            .await
            .unwrap();
        let mut tx = con.begin().await.unwrap();
        let cp = checkpoint(pipeline, 3, 10);
        sqlx::query(
            "INSERT INTO srotax_checkpoints (pipeline, sequence, payload, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(pipeline)
        .bind(3i64)
        .bind(cp.encode())
        .bind(cp.created_at)
        .execute(&mut *tx)
        .await
        .unwrap();
        std::process::abort();
    }

    /// A checkpoint transaction interrupted by a crash leaves the previous one.
    async fn interrupted_transaction(backend: Backend) {
        let f = Fixture::new(backend);
        for seq in 1..=2 {
            f.store
                .save_checkpoint(&checkpoint(&f.pipeline, seq, 10))
                .await
                .unwrap();
        }
        let child = spawn_child(
            "child",
            &[
                "sql-abort",
                backend.name(),
                &f.location.display().to_string(),
                &f.pipeline,
            ],
        );
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "the child must die mid-transaction");
        assert_eq!(
            f.store.list_checkpoints(&f.pipeline).await.unwrap(),
            vec![1, 2]
        );
        let latest = f.store.load_checkpoint(&f.pipeline).await.unwrap().unwrap();
        assert_eq!(latest.encode(), checkpoint(&f.pipeline, 2, 10).encode());
    }

    /// Expired rows are deleted by the next checkpoint, not just hidden.
    async fn expired_rows_are_swept(backend: Backend) {
        let f = Fixture::new(backend);
        let store = stream_state::SqlStateStore::new(
            stream_state::SqlStateStoreOptions::new(
                match backend {
                    Backend::Postgres => stream_state::sql::SqlFlavor::Postgres,
                    _ => stream_state::sql::SqlFlavor::Sqlite,
                },
                match backend {
                    Backend::Postgres => url(backend, &f.location),
                    _ => format!("sqlite://{}?mode=rwc", f.location.display()),
                },
            ),
            &f.pipeline,
        );
        use stream_core::streaming::StateStore;
        store
            .put("gone", b"x".to_vec(), Some(Duration::from_millis(1)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        store
            .save_checkpoint(&checkpoint(&f.pipeline, 1, 0))
            .await
            .unwrap();
        assert_eq!(
            store.sweep_expired().await.unwrap(),
            0,
            "the checkpoint already deleted the expired row"
        );
    }

    #[tokio::test]
    async fn postgres_interrupted_checkpoint_transaction_keeps_the_previous() {
        interrupted_transaction(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn sqlite_interrupted_checkpoint_transaction_keeps_the_previous() {
        interrupted_transaction(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres_checkpoints_sweep_expired_rows() {
        expired_rows_are_swept(Backend::Postgres).await;
    }

    #[tokio::test]
    async fn sqlite_checkpoints_sweep_expired_rows() {
        expired_rows_are_swept(Backend::Sqlite).await;
    }
}
