//! `srotax run DEF.json [DEF2.json ...]`: runs streaming pipeline definitions until
//! their bounded inputs end, or until SIGINT/SIGTERM stops them gracefully (stop
//! fetching, drain what is in flight, write a final checkpoint). A second signal exits
//! at once; the last checkpoint still holds.

use crate::serve;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream_core::streaming::{
    DefinitionError, MetricsSnapshot, PipelineStatus, RunOptions, RunSummary,
    StreamingPipelineDefinition, StreamingPipelineHandle, StreamingPipelineOrchestrator,
};
use tracing::info;

/// Settings of one `srotax run`.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Definition files.
    pub definitions: Vec<PathBuf>,
    /// Ignore stored checkpoints.
    pub reset: bool,
    /// Where to serve `/metrics`, `/health` and `/ready`.
    pub metrics_addr: Option<SocketAddr>,
}

/// Why `srotax run` could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunCommandError {
    /// A definition file cannot be read.
    #[error("cannot read definition file '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A definition is invalid (the error names the JSON path inside the file).
    #[error("invalid definition '{path}': {source}")]
    Definition {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        source: DefinitionError,
    },
    /// Two definitions use the same `pipelineId`.
    #[error("pipelineId '{0}' is used by more than one definition; ids name checkpoints and must be unique")]
    DuplicateId(String),
    /// The runtime or the metrics endpoint could not start.
    #[error("{0}")]
    Startup(String),
    /// At least one pipeline failed (each failure was reported).
    #[error("{0} pipeline(s) failed")]
    Failed(usize),
}

/// Runs the definitions to completion.
pub fn run(settings: RunSettings) -> Result<(), RunCommandError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunCommandError::Startup(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(settings))
}

fn load(path: &PathBuf) -> Result<StreamingPipelineDefinition, RunCommandError> {
    let text = std::fs::read_to_string(path).map_err(|source| RunCommandError::Read {
        path: path.clone(),
        source,
    })?;
    StreamingPipelineDefinition::from_json_str(&text).map_err(|source| {
        RunCommandError::Definition {
            path: path.clone(),
            source,
        }
    })
}

async fn run_async(settings: RunSettings) -> Result<(), RunCommandError> {
    let mut definitions = Vec::new();
    for path in &settings.definitions {
        let def = load(path)?;
        if definitions
            .iter()
            .any(|(_, d): &(PathBuf, StreamingPipelineDefinition)| d.pipeline_id == def.pipeline_id)
        {
            return Err(RunCommandError::DuplicateId(def.pipeline_id));
        }
        definitions.push((path.clone(), def));
    }
    // The recorder must be in place before pipelines record their first metric.
    let prometheus = match settings.metrics_addr {
        Some(_) => Some(serve::install_recorder().map_err(RunCommandError::Startup)?),
        None => None,
    };

    let mut orchestrator = StreamingPipelineOrchestrator::new(stream_connect::builtin_registry());
    stream_state::register_builtin(&mut orchestrator);
    let mut handles = Vec::new();
    for (path, def) in definitions {
        let options = RunOptions {
            reset: settings.reset,
        };
        match orchestrator.run_with(def, options) {
            Ok(handle) => handles.push(handle),
            Err(source) => {
                // Pipelines already started stop cleanly, with a final checkpoint.
                for h in &handles {
                    h.stop();
                }
                for h in &handles {
                    let _ = h.await_termination(None).await;
                }
                return Err(RunCommandError::Definition { path, source });
            }
        }
    }
    let handles = Arc::new(handles);

    if let (Some(addr), Some(prometheus)) = (settings.metrics_addr, prometheus) {
        serve::serve(addr, prometheus, handles.clone())
            .await
            .map_err(|e| {
                RunCommandError::Startup(format!("cannot serve metrics on {addr}: {e}"))
            })?;
    }
    tokio::spawn(stop_on_signals(handles.clone()));
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(handles.clone())));

    let mut failures = 0;
    let mut summaries = Vec::new();
    for handle in handles.iter() {
        match handle.await_termination(None).await {
            Some(Ok(summary)) => summaries.push(summary),
            Some(Err(e)) => {
                failures += 1;
                clear_progress_line(progress.is_some());
                eprintln!("error: pipeline '{}' failed: {e}", handle.pipeline_id());
                eprintln!(
                    "{}",
                    summary_line(handle.pipeline_id(), "failed", &handle.metrics(), None)
                );
            }
            None => {}
        }
    }
    if let Some(task) = progress {
        task.abort();
        clear_progress_line(true);
    }
    for s in &summaries {
        eprintln!("{}", summary_of(s));
    }
    if failures > 0 {
        return Err(RunCommandError::Failed(failures));
    }
    Ok(())
}

/// First SIGINT/SIGTERM: graceful stop of every pipeline. Second: exit at once.
async fn stop_on_signals(handles: Arc<Vec<StreamingPipelineHandle>>) {
    wait_for_signal().await;
    eprintln!("stopping: draining in-flight batches and writing final checkpoints (signal again to exit at once)");
    info!("stop requested by signal");
    for h in handles.iter() {
        h.stop();
    }
    wait_for_signal().await;
    eprintln!(
        "exiting without a final checkpoint; the previous checkpoint will be used on restart"
    );
    std::process::exit(130);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One line on stderr, rewritten in place twice a second: only on a terminal.
async fn show_progress(handles: Arc<Vec<StreamingPipelineHandle>>) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let parts: Vec<String> = handles
            .iter()
            .filter(|h| {
                matches!(
                    h.status(),
                    PipelineStatus::Running | PipelineStatus::Stopping
                )
            })
            .map(|h| {
                let m = h.metrics();
                let mut s = format!(
                    "{}: {} events, {}/s",
                    h.pipeline_id(),
                    m.records_in,
                    human(m.records_in as f64 / secs)
                );
                if let Some(p) = m.progress.filter(|p| p.total > 0) {
                    s.push_str(&format!(
                        ", {:.0}% ({}/{} {})",
                        100.0 * p.done as f64 / p.total as f64,
                        human(p.done as f64),
                        human(p.total as f64),
                        p.unit
                    ));
                }
                s
            })
            .collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", parts.join(" | "));
        let _ = err.flush();
    }
}

fn clear_progress_line(on_terminal: bool) {
    if on_terminal {
        eprint!("\r\x1b[2K");
    }
}

fn summary_of(s: &RunSummary) -> String {
    let status = match s.status {
        PipelineStatus::Completed => "completed",
        PipelineStatus::Stopped => "stopped",
        _ => "ended",
    };
    summary_line(&s.pipeline_id, status, &s.metrics, Some(s.duration))
}

fn summary_line(id: &str, status: &str, m: &MetricsSnapshot, duration: Option<Duration>) -> String {
    let mut line = format!(
        "{id}: {status}: in {}, out {}, failed {}, dead-lettered {}",
        m.records_in, m.documents_out, m.failed, m.dead_lettered
    );
    if let Some(d) = duration {
        let secs = d.as_secs_f64();
        line.push_str(&format!(
            ", {:.2} s ({} events/s)",
            secs,
            human(m.records_in as f64 / secs.max(1e-3))
        ));
    }
    line
}

/// 1234567 → "1.23M".
fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn numbers_are_short() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1234.0), "1.2k");
        assert_eq!(human(2_500_000.0), "2.50M");
    }
}
