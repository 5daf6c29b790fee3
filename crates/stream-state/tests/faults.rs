//! Faults of the network backends: a private Redis or PostgreSQL server is killed and
//! restarted while a writer keeps checkpointing (operations wait, retry and go on; no
//! checkpoint is lost), and a Redis transaction is cut off before EXEC.

mod common;

use common::checkpoint;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stream_core::streaming::{ConnectorConfig, StateStore, StateStoreProvider};
use stream_state::sql::SqlFlavor;
use stream_state::{
    RedisStateStore, RedisStateStoreOptions, RedisStateStoreProvider, SqlStateStore,
    SqlStateStoreOptions,
};
use test_support::{free_port, init_postgres, redis_url, start_postgres, start_redis, unique};

const CHECKPOINTS: u64 = 120;

/// Saves checkpoints 1..=CHECKPOINTS with 10 keyed entries each, as a pipeline does,
/// counting progress in `done`.
async fn checkpoint_loop(store: Arc<dyn StateStore>, pipeline: String, done: Arc<AtomicU64>) {
    for seq in 1..=CHECKPOINTS {
        let batch: Vec<(String, Vec<u8>)> = (0..10)
            .map(|i| (format!("k:{seq:04}:{i}"), seq.to_string().into_bytes()))
            .collect();
        store.put_batch(batch, None).await.unwrap();
        store
            .save_checkpoint(&checkpoint(&pipeline, seq, 100))
            .await
            .unwrap_or_else(|e| panic!("checkpoint {seq}: {e}"));
        done.store(seq, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs the loop, calling `restart` once it is a third of the way through; then checks
/// that every checkpoint and entry is there.
async fn survives_restart(store: Arc<dyn StateStore>, pipeline: &str, restart: impl FnOnce()) {
    let done = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(checkpoint_loop(
        store.clone(),
        pipeline.to_string(),
        done.clone(),
    ));
    while done.load(Ordering::SeqCst) < CHECKPOINTS / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at_restart = done.load(Ordering::SeqCst);
    tokio::task::block_in_place(restart);
    writer.await.unwrap();
    assert!(at_restart < CHECKPOINTS, "the server restarted mid-run");
    assert_eq!(
        store.list_checkpoints(pipeline).await.unwrap(),
        (1..=CHECKPOINTS).collect::<Vec<_>>(),
        "no checkpoint lost"
    );
    assert_eq!(
        store
            .load_checkpoint(pipeline)
            .await
            .unwrap()
            .unwrap()
            .encode(),
        checkpoint(pipeline, CHECKPOINTS, 100).encode()
    );
    assert_eq!(
        store.scan("k:").await.unwrap().len(),
        CHECKPOINTS as usize * 10
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_run_loses_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start_redis(dir.path(), port);
    let mut options = RedisStateStoreOptions::new(format!("redis://127.0.0.1:{port}"));
    options.retry_for = Duration::from_secs(30);
    let pipeline = unique("redis-restart");
    let store = Arc::new(RedisStateStore::new(options, &pipeline).unwrap());
    survives_restart(store, &pipeline, || {
        server.kill(); // SIGKILL: the append-only file has every acknowledged write
        std::thread::sleep(Duration::from_millis(800));
        server = start_redis(dir.path(), port);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_and_restarted_mid_run_loses_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pg");
    init_postgres(&data);
    let port = free_port();
    let mut server = start_postgres(&data, port);
    let mut options = SqlStateStoreOptions::new(
        SqlFlavor::Postgres,
        format!("postgres://srotax@127.0.0.1:{port}/postgres"),
    );
    options.retry_for = Duration::from_secs(60);
    let pipeline = unique("pg-restart");
    let store = Arc::new(SqlStateStore::new(options, &pipeline));
    survives_restart(store, &pipeline, || {
        // SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, WAL replay at start.
        server.stop_with(libc::SIGQUIT);
        std::thread::sleep(Duration::from_millis(800));
        server = start_postgres(&data, port);
    })
    .await;
}

/// Sends one command in RESP and returns the first reply line.
fn redis_command(stream: &mut TcpStream, args: &[&str]) -> String {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(out.as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim_end().to_string()
}

fn redis_connection() -> TcpStream {
    let url = redis_url();
    let addr = url.trim_start_matches("redis://").trim_end_matches('/');
    TcpStream::connect(addr).unwrap()
}

/// A client that dies between MULTI and EXEC leaves the previous checkpoint.
#[tokio::test]
async fn redis_transaction_cut_before_exec_keeps_the_previous_checkpoint() {
    let pipeline = unique("redis-multi");
    let store = RedisStateStore::new(RedisStateStoreOptions::new(redis_url()), &pipeline).unwrap();
    for seq in 1..=2 {
        store
            .save_checkpoint(&checkpoint(&pipeline, seq, 10))
            .await
            .unwrap();
    }
    {
        // What the store sends for checkpoint 3, minus the EXEC.
        let mut con = redis_connection();
        assert_eq!(redis_command(&mut con, &["MULTI"]), "+OK");
        let key = format!("srotax:{{{pipeline}}}:cp:{:020}", 3);
        let payload = String::from_utf8(checkpoint(&pipeline, 3, 10).encode()).unwrap();
        assert_eq!(redis_command(&mut con, &["SET", &key, &payload]), "+QUEUED");
        let index = format!("srotax:{{{pipeline}}}:cps");
        assert_eq!(
            redis_command(&mut con, &["ZADD", &index, "3", "3"]),
            "+QUEUED"
        );
    } // connection dropped: Redis discards the queued transaction
    assert_eq!(store.list_checkpoints(&pipeline).await.unwrap(), vec![1, 2]);
    assert_eq!(
        store
            .load_checkpoint(&pipeline)
            .await
            .unwrap()
            .unwrap()
            .encode(),
        checkpoint(&pipeline, 2, 10).encode()
    );
    store.clear_checkpoint(&pipeline).await.unwrap();
}

/// TTLs are Redis's own (PX), including the `ttl` option's default, and keys carry the
/// pipeline's hash tag.
#[tokio::test]
async fn redis_uses_native_expiry_and_hash_tagged_keys() {
    let pipeline = unique("redis-ttl");
    let config = ConnectorConfig::new("redis")
        .option("url", redis_url())
        .option("ttl", "7d");
    let store = RedisStateStoreProvider.create(&config, &pipeline).unwrap();
    store.put("default", b"x".to_vec(), None).await.unwrap();
    store
        .put("explicit", b"y".to_vec(), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let mut con = redis_connection();
    let pttl = |con: &mut TcpStream, key: &str| -> i64 {
        let full = format!("srotax:{{{pipeline}}}:kv:{key}");
        redis_command(con, &["PTTL", &full])
            .trim_start_matches(':')
            .parse()
            .unwrap()
    };
    let week = 7 * 24 * 3600 * 1000;
    let d = pttl(&mut con, "default");
    assert!(d > week - 60_000 && d <= week, "PTTL {d}");
    let e = pttl(&mut con, "explicit");
    assert!(e > 50_000 && e <= 60_000, "PTTL {e}");

    let err = RedisStateStoreProvider
        .create(&config.clone().option("tll", "1d"), &pipeline)
        .unwrap_err();
    assert!(err.to_string().contains("tll"), "{err}");
    let err = RedisStateStoreProvider
        .create(
            &ConnectorConfig::new("redis").option("url", "http://x"),
            &pipeline,
        )
        .unwrap_err();
    assert!(err.to_string().contains("url"), "{err}");
}
