//! The operations endpoint of `srotax run --metrics-addr`: `/metrics` in Prometheus text
//! format, `/health` (the process is alive) and `/ready` (every pipeline is running or
//! has completed). GET only; a deliberately small HTTP/1.1 responder, so the CLI needs
//! no web framework.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::Arc;
use stream_core::streaming::{PipelineStatus, StreamingPipelineHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

/// Installs the Prometheus recorder behind the `metrics` facade. Call once, before the
/// pipelines start, so their metrics are recorded.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// Serves the endpoints on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    prometheus: PrometheusHandle,
    pipelines: Arc<Vec<StreamingPipelineHandle>>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    // Histograms are summarised lazily; the exporter asks its owner to drain them.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let bound = listener.local_addr()?;
    info!(addr = %bound, "serving /metrics, /health and /ready");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let prometheus = prometheus.clone();
            let pipelines = pipelines.clone();
            tokio::spawn(async move {
                if let Err(e) = respond(stream, &prometheus, &pipelines).await {
                    debug!(%peer, error = %e, "metrics request failed");
                }
            });
        }
    });
    Ok((bound, task))
}

async fn respond(
    mut stream: TcpStream,
    prometheus: &PrometheusHandle,
    pipelines: &[StreamingPipelineHandle],
) -> std::io::Result<()> {
    // The request line is all we need; read until the end of the headers (or 8 KiB).
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = String::from_utf8_lossy(&buf);
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", prometheus.render()),
        ("GET", "/health") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", "/ready") => {
            let not_ready: Vec<String> = pipelines
                .iter()
                .filter(|h| {
                    !matches!(
                        h.status(),
                        PipelineStatus::Running | PipelineStatus::Completed
                    )
                })
                .map(|h| format!("{}: {:?}\n", h.pipeline_id(), h.status()))
                .collect();
            if not_ready.is_empty() {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                ("503 Service Unavailable", "text/plain", not_ready.concat())
            }
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /health or /ready\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
