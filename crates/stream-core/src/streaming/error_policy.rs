//! Error policies: what happens to a failing document or sink write.
//!
//! Transient failures (I/O, an unavailable service) are retried with exponential
//! backoff and jitter when the policy has a `retry` section; permanent ones (bad data)
//! skip the retries. Once retries are exhausted the `then` policy decides: fail the
//! pipeline, skip the document, or send it to the dead-letter sink. A circuit breaker
//! pauses calls to a failing sink after N consecutive failures and lets one trial
//! through (half-open) after a cool-down.

use super::connector::ErrorKind;
use super::definition::{CircuitBreakerConfig, ErrorPolicyConfig, RetryConfig};
use rand::Rng;
use std::time::{Duration, Instant};

/// The policy's verdict on one failure.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Try again after the delay.
    Retry(Duration),
    /// Drop the document and continue (counted).
    Skip,
    /// Send the document to the dead-letter sink and continue.
    DeadLetter,
    /// Stop the pipeline.
    Fail,
}

/// A compiled error policy with its circuit-breaker state.
#[derive(Debug, Clone)]
pub struct ErrorPolicy {
    config: ErrorPolicyConfig,
    breaker: Option<Breaker>,
}

#[derive(Debug, Clone)]
struct Breaker {
    config: CircuitBreakerConfig,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// Circuit-breaker state, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are paused until the cool-down ends.
    Open,
    /// The cool-down ended: the next call is a trial.
    HalfOpen,
}

impl ErrorPolicy {
    /// Compiles a policy.
    pub fn new(config: &ErrorPolicyConfig) -> Self {
        let (breaker, config) = match config {
            ErrorPolicyConfig::CircuitBreaker { breaker, inner } => (
                Some(Breaker {
                    config: breaker.clone(),
                    consecutive_failures: 0,
                    open_until: None,
                }),
                (**inner).clone(),
            ),
            other => (None, other.clone()),
        };
        ErrorPolicy { config, breaker }
    }

    /// Decides what to do after attempt number `attempt` (1-based) failed.
    pub fn decide(&mut self, kind: ErrorKind, attempt: u32) -> Decision {
        if let Some(b) = &mut self.breaker {
            b.consecutive_failures += 1;
            if b.consecutive_failures >= b.config.failure_threshold {
                b.open_until = Some(Instant::now() + b.config.cool_down);
            }
        }
        decide(&self.config, kind, attempt)
    }

    /// Records a success: closes the breaker.
    pub fn record_success(&mut self) {
        if let Some(b) = &mut self.breaker {
            b.consecutive_failures = 0;
            b.open_until = None;
        }
    }

    /// How long calls must wait before the breaker lets a trial through (zero when closed
    /// or half-open).
    pub fn wait_before_call(&self) -> Duration {
        match self.breaker.as_ref().and_then(|b| b.open_until) {
            Some(t) => t.saturating_duration_since(Instant::now()),
            None => Duration::ZERO,
        }
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        match self.breaker.as_ref().and_then(|b| b.open_until) {
            None => BreakerState::Closed,
            Some(t) if t > Instant::now() => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// True when the policy can write to a dead-letter sink.
    pub fn has_dead_letter(&self) -> bool {
        self.config.dead_letter().is_some()
    }

    /// True when the policy retries transient failures.
    pub fn can_retry(&self) -> bool {
        matches!(self.config, ErrorPolicyConfig::Retry { .. })
    }

    /// True when a failing document must be kept (to retry it or dead-letter it).
    pub fn needs_original(&self) -> bool {
        self.can_retry() || self.has_dead_letter()
    }
}

fn decide(config: &ErrorPolicyConfig, kind: ErrorKind, attempt: u32) -> Decision {
    match config {
        ErrorPolicyConfig::FailFast => Decision::Fail,
        ErrorPolicyConfig::SkipAndContinue => Decision::Skip,
        ErrorPolicyConfig::DeadLetter(_) => Decision::DeadLetter,
        ErrorPolicyConfig::Retry { retry, then } => {
            if kind == ErrorKind::Transient && attempt < retry.max_attempts {
                Decision::Retry(backoff(retry, attempt))
            } else {
                decide(then, kind, attempt)
            }
        }
        ErrorPolicyConfig::CircuitBreaker { inner, .. } => decide(inner, kind, attempt),
    }
}

/// Delay before retry number `attempt` (1-based): `initialDelay * multiplier^(attempt-1)`,
/// capped at `maxDelay`, spread by ±`jitter`.
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let base =
        retry.initial_delay.as_secs_f64() * retry.multiplier.powi(attempt.saturating_sub(1) as i32);
    let capped = base.min(retry.max_delay.as_secs_f64());
    let spread = if retry.jitter > 0.0 {
        rand::thread_rng().gen_range(-retry.jitter..=retry.jitter)
    } else {
        0.0
    };
    Duration::from_secs_f64((capped * (1.0 + spread)).clamp(0.0, retry.max_delay.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::definition::ConnectorConfig;

    fn retry_then(then: ErrorPolicyConfig) -> ErrorPolicyConfig {
        ErrorPolicyConfig::Retry {
            retry: RetryConfig {
                max_attempts: 3,
                jitter: 0.0,
                ..RetryConfig::default()
            },
            then: Box::new(then),
        }
    }

    #[test]
    fn transient_failures_retry_then_dead_letter() {
        let mut p = ErrorPolicy::new(&retry_then(ErrorPolicyConfig::DeadLetter(
            ConnectorConfig::new("memory"),
        )));
        assert_eq!(
            p.decide(ErrorKind::Transient, 1),
            Decision::Retry(Duration::from_millis(100))
        );
        assert_eq!(
            p.decide(ErrorKind::Transient, 2),
            Decision::Retry(Duration::from_millis(200))
        );
        assert_eq!(p.decide(ErrorKind::Transient, 3), Decision::DeadLetter);
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let mut p = ErrorPolicy::new(&retry_then(ErrorPolicyConfig::SkipAndContinue));
        assert_eq!(p.decide(ErrorKind::Permanent, 1), Decision::Skip);
        let mut p = ErrorPolicy::new(&ErrorPolicyConfig::FailFast);
        assert_eq!(p.decide(ErrorKind::Transient, 1), Decision::Fail);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = RetryConfig {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: 0.0,
            max_attempts: 10,
        };
        let delays: Vec<u128> = (1..=5).map(|a| backoff(&r, a).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        let r = RetryConfig { jitter: 0.5, ..r };
        for _ in 0..100 {
            let d = backoff(&r, 1).as_millis();
            assert!((50..=150).contains(&d), "{d}");
        }
    }

    #[test]
    fn breaker_opens_after_threshold_and_half_opens_after_cool_down() {
        let cfg = ErrorPolicyConfig::CircuitBreaker {
            breaker: CircuitBreakerConfig {
                failure_threshold: 2,
                cool_down: Duration::from_millis(20),
            },
            inner: Box::new(ErrorPolicyConfig::SkipAndContinue),
        };
        let mut p = ErrorPolicy::new(&cfg);
        p.decide(ErrorKind::Transient, 1);
        assert_eq!(p.breaker_state(), BreakerState::Closed);
        p.decide(ErrorKind::Transient, 1);
        assert_eq!(p.breaker_state(), BreakerState::Open);
        assert!(p.wait_before_call() > Duration::ZERO);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(p.breaker_state(), BreakerState::HalfOpen);
        assert_eq!(p.wait_before_call(), Duration::ZERO);
        p.record_success();
        assert_eq!(p.breaker_state(), BreakerState::Closed);
    }
}
