//! Helpers of the network backends (Redis, SQL): retry with exponential backoff, so a
//! server that restarts makes operations wait and then succeed instead of failing the
//! pipeline, and URLs with the password hidden for logs and errors.

use std::future::Future;
use std::time::{Duration, Instant};
use stream_core::streaming::StateError;
use tracing::warn;

/// Default time an operation keeps retrying before it reports
/// [`StateError::Unavailable`] (option `retryFor`).
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);

/// Runs `op` until it succeeds, fails with an error `transient` rejects, or `budget` has
/// passed since the first attempt (then [`StateError::Unavailable`]; a non-transient
/// error is [`StateError::Rejected`] at once); waits 50 ms, 100 ms, ... (at most 2 s) in between.
/// `what` names the operation in logs and in the final error.
pub(crate) async fn retry<T, E, F, Fut>(
    what: &str,
    budget: Duration,
    transient: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, StateError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut attempt = 1u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if !transient(&e) => {
                return Err(StateError::Rejected(format!("{what}: {e}")));
            }
            Err(e) if started.elapsed() + delay > budget => {
                return Err(StateError::Unavailable(format!(
                    "{what}: {e} (gave up after {attempt} attempts in {:.1?})",
                    started.elapsed()
                )));
            }
            Err(e) => {
                warn!(operation = what, attempt, error = %e, "state store unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
        }
    }
}

/// The URL without a password, for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(super::redact("redis://host:6379"), "redis://host:6379");
    }
}
