//! `samples/streaming-kafka` runs as its README says, against the broker of
//! `cargo xtask services up` (127.0.0.1:19092, or `SROTAX_TEST_KAFKA_BOOTSTRAP`), on
//! topics of its own: the totals published to the output topic, and in the HTTP variant
//! posted to the sample's receiver (`receive-http.py`, run with `python3`), equal those
//! computed from the orders.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stream_core::value::{parse_document, Value};
use test_support::kafka::{bootstrap, read_topic};
use test_support::{unique, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_srotax");

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every committed message of `topic` as documents, in order per partition.
fn read_committed(bootstrap: &str, topic: &str) -> Vec<stream_core::Document> {
    read_topic(bootstrap, topic, 0, Duration::from_secs(2))
        .iter()
        .map(|r| parse_document(&r.payload).unwrap())
        .collect()
}

/// (orderCount, lifetimeValue) per customer.
type Totals = BTreeMap<String, (i64, f64)>;

fn expected_totals(orders: &[stream_core::Document]) -> Totals {
    let mut t = Totals::new();
    for o in orders {
        if o.get("status").and_then(Value::as_str) == Some("PAID") {
            let e = t
                .entry(o.get("customerId").and_then(Value::as_str).unwrap().into())
                .or_default();
            e.0 += 1;
            e.1 += o.get("orderValue").and_then(Value::as_f64).unwrap();
        }
    }
    t
}

fn published_totals(updates: &[stream_core::Document]) -> Totals {
    let mut t = Totals::new();
    for u in updates {
        t.insert(
            u.get("_id").and_then(Value::as_str).unwrap().into(),
            (
                u.get("orderCount").and_then(Value::as_i64_exact).unwrap(),
                u.get("lifetimeValue").and_then(Value::as_f64).unwrap(),
            ),
        );
    }
    t
}

/// The sample's environment for one test: topics, group and state directory of its own.
struct Sample {
    bootstrap: String,
    orders_topic: String,
    ltv_topic: String,
    _out_dir: TempDir,
    env: Vec<(&'static str, String)>,
}

impl Sample {
    fn new() -> Sample {
        let bootstrap = bootstrap();
        let run_id = unique("run");
        let orders_topic = format!("sample-orders-{run_id}");
        let ltv_topic = format!("sample-ltv-{run_id}");
        let out_dir = TempDir::new("sample-kafka");
        let env = vec![
            ("KAFKA_BOOTSTRAP", bootstrap.clone()),
            ("ORDERS_TOPIC", orders_topic.clone()),
            ("LTV_TOPIC", ltv_topic.clone()),
            ("GROUP_ID", format!("sample-ltv-{run_id}")),
            ("ORDERS", "3000".into()),
            ("OUT_DIR", out_dir.path().display().to_string()),
        ];
        Sample {
            bootstrap,
            orders_topic,
            ltv_topic,
            _out_dir: out_dir,
            env,
        }
    }

    /// `srotax run DEFINITION` from the repository root, with the sample's environment.
    fn command(&self, def: &str) -> Command {
        let mut c = Command::new(BIN);
        c.args(["run", def])
            .current_dir(repo_root())
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("RUST_LOG");
        c
    }

    /// Runs the producer definition; returns the totals its orders should give.
    fn produce(&self) -> Totals {
        let produced = self
            .command("samples/streaming-kafka/produce-orders.json")
            .output()
            .unwrap();
        assert!(
            produced.status.success(),
            "{}",
            String::from_utf8_lossy(&produced.stderr)
        );
        let expected = expected_totals(&read_committed(&self.bootstrap, &self.orders_topic));
        assert!(
            expected.values().map(|e| e.0).sum::<i64>() > 1000,
            "{expected:?}"
        );
        expected
    }
}

/// Polls `published` every 500 ms until it gives `expected` (60 s at most) while
/// `pipeline` runs, then stops the pipeline with SIGTERM: it must exit cleanly.
fn await_totals(pipeline: &mut Child, expected: &Totals, mut published: impl FnMut() -> Totals) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Totals::new();
    while &got != expected {
        assert!(
            pipeline.try_wait().unwrap().is_none(),
            "the pipeline exited early"
        );
        assert!(
            Instant::now() < deadline,
            "after 60 s, {} of {} customers have their final totals",
            got.iter()
                .filter(|(k, v)| expected.get(*k) == Some(v))
                .count(),
            expected.len()
        );
        std::thread::sleep(Duration::from_millis(500));
        got = published();
    }
    let term = Command::new("kill")
        .args(["-TERM", &pipeline.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(pipeline.wait().unwrap().success(), "graceful stop");
}

#[test]
fn the_kafka_sample_publishes_exact_totals() {
    let sample = Sample::new();
    let expected = sample.produce();
    let mut pipeline = sample
        .command("samples/streaming-kafka/orders-ltv.json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    await_totals(&mut pipeline, &expected, || {
        published_totals(&read_committed(&sample.bootstrap, &sample.ltv_topic))
    });
}

/// Stops the child (a receiver this test started) by its PID when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_http_variant_posts_exact_totals_to_the_sample_receiver() {
    let sample = Sample::new();
    let expected = sample.produce();
    // The sample's receiver, as its README runs it, on a free port (0).
    let mut receiver = KillOnDrop(
        Command::new("python3")
            .arg(repo_root().join("samples/streaming-kafka/receive-http.py"))
            .arg("0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the sample's receiver"),
    );
    let mut lines = BufReader::new(receiver.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the receiver: {first}"))
        .to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(parse_document(&line).unwrap());
        }
    });
    let mut pipeline = sample
        .command("samples/streaming-kafka/orders-ltv-http.json")
        .env("LTV_URL", format!("{url}customer-ltv"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    await_totals(&mut pipeline, &expected, || {
        published_totals(&received.lock().unwrap())
    });
}
