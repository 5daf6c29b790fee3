//! The `http` sink against a real HTTP server on 127.0.0.1 (hyper, started by each
//! test on a free port): JSON arrays and JSON Lines in order, headers, retries of 5xx,
//! permanent 4xx with status and body, refused connections and timeouts.

mod common;

use common::finish;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stream_connect::{builtin_registry, MemoryHub};
use stream_core::streaming::*;
use stream_core::value::{parse_document, Document, Value};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    authorization: String,
    body: String,
}

/// What the server answers to the n-th request (0-based) with this body: status, body,
/// and a delay before answering.
type Reply = dyn Fn(usize, &str) -> (u16, String, Duration) + Send + Sync;

/// A real HTTP/1.1 server on 127.0.0.1 that records every request.
struct Server {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    async fn start(
        reply: impl Fn(usize, &str) -> (u16, String, Duration) + Send + Sync + 'static,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let reply: Arc<Reply> = Arc::new(reply);
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, reply) = (log.clone(), reply.clone());
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (log, reply) = (log.clone(), reply.clone());
                    async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string()
                        };
                        let mut r = Received {
                            path: req.uri().to_string(),
                            content_type: header("content-type"),
                            authorization: header("authorization"),
                            body: String::new(),
                        };
                        let body = req.into_body().collect().await?.to_bytes();
                        r.body = String::from_utf8(body.to_vec()).unwrap();
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(r.clone());
                            log.len() - 1
                        };
                        let (status, text, delay) = reply(n, &r.body);
                        tokio::time::sleep(delay).await;
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, hyper::Error>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Server { url, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn ok(_: usize, _: &str) -> (u16, String, Duration) {
    (200, String::new(), Duration::ZERO)
}

/// A unique global-hub channel holding `n` documents `{"n": i}`, closed.
fn input(name: &str, n: usize) -> String {
    let name = format!("http-{name}-{}", std::process::id());
    let hub = MemoryHub::global();
    hub.remove(&name);
    for i in 1..=n {
        hub.push_json(&name, &format!(r#"{{"n": {i}}}"#)).unwrap();
    }
    hub.close(&name);
    name
}

/// Runs a bounded pipeline from `input` to the http sink with these sink options,
/// runtime and error policy (JSON fragments).
async fn run(
    input: &str,
    sink_options: &str,
    runtime: &str,
    error_policy: &str,
) -> Result<RunSummary, RunError> {
    let def = StreamingPipelineDefinition::from_json_str(&format!(
        r#"{{"pipelineId": "{input}",
            "source": {{"type": "memory", "options": {{"name": "{input}", "bounded": true}}}},
            "sink": {{"type": "http", "options": {sink_options}}},
            "runtime": {runtime},
            "errorPolicy": {error_policy}}}"#
    ))
    .unwrap();
    let orchestrator = StreamingPipelineOrchestrator::new(builtin_registry());
    finish(&orchestrator.run(def).unwrap()).await
}

fn numbers(docs: impl IntoIterator<Item = Document>) -> Vec<i64> {
    docs.into_iter()
        .map(|d| d.get("n").and_then(Value::as_i64_exact).unwrap())
        .collect()
}

/// The documents of a JSON-array body.
fn array(body: &str) -> Vec<Document> {
    let v = parse_document(&format!(r#"{{"a": {body}}}"#)).unwrap();
    match v.get("a") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::Document(d) => d.clone(),
                other => panic!("not a document: {other:?}"),
            })
            .collect(),
        other => panic!("not an array: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_batch_is_posted_as_a_json_array_in_order_with_the_headers() {
    let server = Server::start(ok).await;
    let input = input("array", 10);
    let summary = run(
        &input,
        &format!(
            r#"{{"url": "{}/ingest?source=srotax", "headers": {{"Authorization": "Bearer t0ken"}}, "timeout": "5 s"}}"#,
            server.url
        ),
        r#"{"microBatchSize": 4}"#,
        r#""failFast""#,
    )
    .await
    .unwrap();
    assert_eq!(summary.metrics.documents_out, 10);
    let received = server.received();
    assert_eq!(received.len(), 3, "batches of 4, 4 and 2: {received:?}");
    for r in &received {
        assert_eq!(r.path, "/ingest?source=srotax");
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.authorization, "Bearer t0ken");
    }
    let sizes: Vec<usize> = received.iter().map(|r| array(&r.body).len()).collect();
    assert_eq!(sizes, vec![4, 4, 2]);
    let all = received.iter().flat_map(|r| array(&r.body));
    assert_eq!(numbers(all), (1..=10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_bodies_respect_max_documents_per_request() {
    let server = Server::start(ok).await;
    let input = input("lines", 10);
    run(
        &input,
        &format!(
            r#"{{"url": "{}/lines", "format": "jsonl", "maxDocumentsPerRequest": 3}}"#,
            server.url
        ),
        r#"{"microBatchSize": 100}"#,
        r#""failFast""#,
    )
    .await
    .unwrap();
    let received = server.received();
    assert_eq!(
        received.len(),
        4,
        "10 documents, 3 per request: {received:?}"
    );
    let mut docs = Vec::new();
    for r in &received {
        assert_eq!(r.content_type, "application/x-ndjson");
        assert!(r.body.ends_with('\n'), "{:?}", r.body);
        docs.extend(r.body.lines().map(|l| parse_document(l).unwrap()));
    }
    assert_eq!(numbers(docs), (1..=10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_the_endpoint_accepts() {
    // 500, then 503, then 200.
    let server = Server::start(|n, _| match n {
        0 => (500, "database down".into(), Duration::ZERO),
        1 => (503, String::new(), Duration::ZERO),
        _ => (200, String::new(), Duration::ZERO),
    })
    .await;
    let input = input("retry", 5);
    let summary = run(
        &input,
        &format!(r#"{{"url": "{}/r"}}"#, server.url),
        r#"{"microBatchSize": 100}"#,
        r#"{"retry": {"maxAttempts": 5, "initialDelay": "10 ms", "jitter": 0}}"#,
    )
    .await
    .unwrap();
    assert_eq!(summary.metrics.retries, 2);
    assert_eq!(summary.metrics.documents_out, 5);
    let received = server.received();
    assert_eq!(received.len(), 3);
    for r in &received {
        assert_eq!(
            numbers(array(&r.body)),
            vec![1, 2, 3, 4, 5],
            "the same batch each time"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_permanent_and_names_the_status_and_body() {
    // The endpoint rejects any request holding document 3.
    let server = Server::start(|_, body| {
        if body.contains(r#""n":3"#) {
            (422, "n=3 is not allowed".into(), Duration::ZERO)
        } else {
            (204, String::new(), Duration::ZERO)
        }
    })
    .await;

    // failFast: the run fails at once (no retry for a 4xx), saying why.
    let input_a = input("reject-fail", 5);
    let err = run(
        &input_a,
        &format!(r#"{{"url": "{}/r"}}"#, server.url),
        r#"{"microBatchSize": 100}"#,
        r#"{"retry": {"maxAttempts": 5, "initialDelay": "10 ms"}}"#,
    )
    .await
    .unwrap_err();
    let RunError::Sink(e) = &err else {
        panic!("expected a sink error, got {err:?}")
    };
    assert_eq!(e.kind, ErrorKind::Permanent);
    let text = err.to_string();
    assert!(text.contains("422 Unprocessable Entity"), "{text}");
    assert!(text.contains("n=3 is not allowed"), "{text}");

    // Dead letter: the batch is split; only document 3 is dead-lettered.
    let before = server.received().len();
    let input_b = input("reject-dlq", 5);
    let dlq = format!("{input_b}-dlq");
    MemoryHub::global().remove(&dlq);
    let summary = run(
        &input_b,
        &format!(r#"{{"url": "{}/r"}}"#, server.url),
        r#"{"microBatchSize": 100}"#,
        &format!(r#"{{"deadLetter": {{"type": "memory", "options": {{"name": "{dlq}"}}}}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(summary.metrics.documents_out, 4);
    assert_eq!(summary.metrics.dead_lettered, 1);
    let accepted: Vec<i64> = server.received()[before..]
        .iter()
        .map(|r| array(&r.body))
        .filter(|docs| docs.len() == 1)
        .flat_map(numbers)
        .filter(|n| *n != 3)
        .collect();
    assert_eq!(accepted, vec![1, 2, 4, 5]);
    let letters = MemoryHub::global().documents(&dlq);
    assert_eq!(letters.len(), 1);
    let error = letters[0].get("error").and_then(Value::as_str).unwrap();
    assert!(
        error.contains("422") && error.contains("n=3 is not allowed"),
        "{error}"
    );
    assert_eq!(
        letters[0].get("document").map(Value::to_json).unwrap(),
        r#"{"n":3}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_and_timeouts_are_transient() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let input_a = input("refused", 2);
    let err = run(
        &input_a,
        &format!(r#"{{"url": "http://{closed}/r"}}"#),
        "{}",
        r#"{"retry": {"maxAttempts": 2, "initialDelay": "10 ms"}}"#,
    )
    .await
    .unwrap_err();
    let RunError::Sink(e) = &err else {
        panic!("expected a sink error, got {err:?}")
    };
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(
        e.message.contains(&format!("POST http://{closed}/r")),
        "{e}"
    );

    let server = Server::start(|n, _| {
        let delay = if n == 0 {
            Duration::from_secs(3)
        } else {
            Duration::ZERO
        };
        (200, String::new(), delay)
    })
    .await;
    let input_b = input("timeout", 2);
    let summary = run(
        &input_b,
        &format!(r#"{{"url": "{}/slow", "timeout": "300 ms"}}"#, server.url),
        "{}",
        r#"{"retry": {"maxAttempts": 3, "initialDelay": "10 ms"}}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        summary.metrics.retries, 1,
        "the timed-out request was retried"
    );
    assert_eq!(summary.metrics.documents_out, 2);
    assert_eq!(server.received().len(), 2);
}
