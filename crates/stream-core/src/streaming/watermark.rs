//! Event time and watermarks for window stages.
//!
//! A source's `timeField` expression gives each record's event time (default: the
//! record's own timestamp, e.g. the Kafka message time or the generator's `ts`; the
//! arrival time when the source has none). The `watermark` settings turn event times
//! into a watermark, the runtime's claim that no record with an earlier event time will
//! come:
//!
//! ```json
//! "source": {"type": "kafka", "options": {...}, "timeField": {"$toDate": "$ts"},
//!            "watermark": {"boundedOutOfOrderness": "5 seconds", "emitInterval": "200 ms",
//!                          "partitionIdleTimeout": "30 seconds"}}
//! ```
//!
//! Each source partition has its own watermark, the highest event time seen there minus
//! `boundedOutOfOrderness` (zero with `"monotonicAscending": true`); the pipeline's
//! watermark is the minimum over partitions, leaving out partitions idle for
//! `partitionIdleTimeout` so one quiet partition does not hold every window open. It
//! never goes back, and it is part of every checkpoint.

use super::definition::{check_keys, duration_setting, ConnectorConfig, DefinitionError};
use crate::error::path_key;
use crate::expr::{compile_expr, CompileCtx, Expr};
use crate::value::{Document, Str, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The source's event-time settings (`timeField`, `watermark`).
#[derive(Debug, Clone)]
pub struct EventTimeConfig {
    /// The compiled `timeField`, when set.
    pub time_field: Option<Expr>,
    /// The top-level fields `timeField` reads (`None`: any), so parsers keep them.
    pub time_fields: Option<Vec<Str>>,
    /// Watermark generation.
    pub watermark: WatermarkConfig,
}

/// Watermark generation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// How far behind the highest event time seen a record may arrive and still be on
    /// time (`boundedOutOfOrderness`; zero for `monotonicAscending`). Default 0.
    pub out_of_orderness_ms: i64,
    /// Least processing time between two watermark advances (`emitInterval`; default
    /// 0: after every micro-batch).
    pub emit_interval: Duration,
    /// A partition without records for this long no longer holds the watermark back
    /// (`partitionIdleTimeout`; default: never).
    pub partition_idle_timeout: Option<Duration>,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        WatermarkConfig {
            out_of_orderness_ms: 0,
            emit_interval: Duration::ZERO,
            partition_idle_timeout: None,
        }
    }
}

impl EventTimeConfig {
    /// Reads `timeField` and `watermark` from the source config.
    pub fn parse(source: &ConnectorConfig) -> Result<EventTimeConfig, DefinitionError> {
        let (time_field, time_fields) = match &source.time_field {
            None => (None, Some(Vec::new())),
            Some(v) => {
                let path = path_key(&source.path, "timeField");
                let expr = compile_expr(v, &path, &mut CompileCtx::default())?;
                (Some(expr), crate::deps::expression_fields(v))
            }
        };
        let watermark = match &source.watermark {
            None => WatermarkConfig::default(),
            Some(v) => WatermarkConfig::parse(v, &path_key(&source.path, "watermark"))?,
        };
        Ok(EventTimeConfig {
            time_field,
            time_fields,
            watermark,
        })
    }
}

impl WatermarkConfig {
    fn parse(v: &Value, path: &str) -> Result<WatermarkConfig, DefinitionError> {
        let d = v.as_document().ok_or_else(|| {
            DefinitionError::new(
                path,
                format!(
                    "expected an object like {{\"boundedOutOfOrderness\": \"5 seconds\"}}, found {}",
                    v.to_json()
                ),
            )
        })?;
        check_keys(
            d,
            path,
            &[
                "boundedOutOfOrderness",
                "monotonicAscending",
                "emitInterval",
                "partitionIdleTimeout",
            ],
        )?;
        let duration = |key: &str| -> Result<Option<Duration>, DefinitionError> {
            d.get(key)
                .map(|v| {
                    duration_setting(v).map_err(|m| DefinitionError::new(path_key(path, key), m))
                })
                .transpose()
        };
        let mut config = WatermarkConfig::default();
        match (d.get("boundedOutOfOrderness"), d.get("monotonicAscending")) {
            (Some(_), Some(_)) => {
                return Err(DefinitionError::new(
                    path,
                    "set either boundedOutOfOrderness or monotonicAscending, not both",
                ))
            }
            (Some(_), None) => {
                let max = duration("boundedOutOfOrderness")?.unwrap_or_default();
                config.out_of_orderness_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
            }
            (None, Some(Value::Bool(true)) | None) => {}
            (None, Some(other)) => {
                return Err(DefinitionError::new(
                    path_key(path, "monotonicAscending"),
                    format!("expected true, found {}", other.to_json()),
                ))
            }
        }
        config.emit_interval = duration("emitInterval")?.unwrap_or_default();
        config.partition_idle_timeout = duration("partitionIdleTimeout")?;
        Ok(config)
    }
}

/// Per-partition event-time progress and the combined watermark.
#[derive(Debug)]
pub struct WatermarkTracker {
    config: WatermarkConfig,
    /// Partitions in first-seen order: few, and found by pointer first (every record of
    /// a partition shares its name's `Arc`).
    partitions: Vec<PartitionClock>,
    current: Option<i64>,
}

#[derive(Debug)]
struct PartitionClock {
    name: Arc<str>,
    max_event_time: i64,
    last_record: Instant,
}

impl WatermarkTracker {
    /// A tracker with no partitions seen yet.
    pub fn new(config: WatermarkConfig) -> Self {
        WatermarkTracker {
            config,
            partitions: Vec::new(),
            current: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &WatermarkConfig {
        &self.config
    }

    /// A record of `partition` with event time `t` arrived at `now`.
    pub fn observe(&mut self, partition: &Arc<str>, t: i64, now: Instant) {
        let found = match self
            .partitions
            .iter()
            .position(|c| Arc::ptr_eq(&c.name, partition))
        {
            Some(i) => Some(i),
            None => self.partitions.iter().position(|c| c.name == *partition),
        };
        match found {
            Some(i) => {
                let c = &mut self.partitions[i];
                c.max_event_time = c.max_event_time.max(t);
                c.last_record = now;
            }
            None => self.partitions.push(PartitionClock {
                name: partition.clone(),
                max_event_time: t,
                last_record: now,
            }),
        }
    }

    /// The watermark at `now`: the minimum of the active partitions' watermarks (all
    /// partitions when every one is idle), never lower than before. `None` before any
    /// record.
    pub fn watermark(&mut self, now: Instant) -> Option<i64> {
        let own = |c: &PartitionClock| {
            c.max_event_time
                .saturating_sub(self.config.out_of_orderness_ms)
        };
        let active = self.partitions.iter().filter(|c| {
            self.config
                .partition_idle_timeout
                .is_none_or(|idle| now.duration_since(c.last_record) < idle)
        });
        let combined = active
            .map(own)
            .min()
            .or_else(|| self.partitions.iter().map(own).max());
        self.current = match (self.current, combined) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.current
    }

    /// `{current, partitions: {name: highest event time}}` for a checkpoint.
    pub fn checkpoint_state(&self) -> Value {
        let mut partitions = Document::with_capacity(self.partitions.len());
        for c in &self.partitions {
            partitions.push_unchecked(&*c.name, Value::Int64(c.max_event_time));
        }
        let mut d = Document::with_capacity(2);
        d.push_unchecked("current", self.current.map_or(Value::Null, Value::Int64));
        d.push_unchecked("partitions", Value::Document(partitions));
        Value::Document(d)
    }

    /// Restores [`WatermarkTracker::checkpoint_state`]; restored partitions count as
    /// active from `now`.
    pub fn restore_state(&mut self, state: &Value, now: Instant) -> Result<(), String> {
        let bad = || {
            format!(
                "invalid watermark state in the checkpoint: {}",
                state.to_json()
            )
        };
        let d = state.as_document().ok_or_else(bad)?;
        self.current = match d.get("current") {
            Some(Value::Int64(n)) => Some(*n),
            Some(Value::Null) | None => None,
            Some(_) => return Err(bad()),
        };
        self.partitions.clear();
        for (p, v) in d
            .get("partitions")
            .and_then(Value::as_document)
            .ok_or_else(bad)?
            .iter()
        {
            let Value::Int64(t) = v else {
                return Err(bad());
            };
            self.observe(&Arc::from(p.as_str()), *t, now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(ooo: i64, idle: Option<u64>) -> WatermarkTracker {
        WatermarkTracker::new(WatermarkConfig {
            out_of_orderness_ms: ooo,
            emit_interval: Duration::ZERO,
            partition_idle_timeout: idle.map(Duration::from_millis),
        })
    }

    #[test]
    fn minimum_over_partitions_minus_out_of_orderness() {
        let mut t = tracker(5, None);
        let now = Instant::now();
        assert_eq!(t.watermark(now), None);
        t.observe(&Arc::<str>::from("p0"), 100, now);
        t.observe(&Arc::<str>::from("p1"), 40, now);
        t.observe(&Arc::<str>::from("p0"), 90, now);
        assert_eq!(t.watermark(now), Some(35));
        t.observe(&Arc::<str>::from("p1"), 200, now);
        assert_eq!(t.watermark(now), Some(95));
        // Never goes back, even if the out-of-order event is old.
        t.observe(&Arc::<str>::from("p2"), 10, now);
        assert_eq!(t.watermark(now), Some(95));
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark() {
        let mut t = tracker(0, Some(50));
        let start = Instant::now();
        t.observe(&Arc::<str>::from("busy"), 1_000, start);
        t.observe(&Arc::<str>::from("quiet"), 10, start);
        assert_eq!(t.watermark(start), Some(10));
        let later = start + Duration::from_millis(60);
        t.observe(&Arc::<str>::from("busy"), 2_000, later);
        assert_eq!(t.watermark(later), Some(2_000));
        // When every partition is idle the watermark is the highest of them.
        let much_later = later + Duration::from_millis(100);
        assert_eq!(t.watermark(much_later), Some(2_000));
    }

    #[test]
    fn state_round_trips() {
        let mut t = tracker(0, None);
        let now = Instant::now();
        t.observe(&Arc::<str>::from("a"), 7, now);
        t.observe(&Arc::<str>::from("b"), 9, now);
        t.watermark(now);
        let mut u = tracker(0, None);
        u.restore_state(&t.checkpoint_state(), now).unwrap();
        assert_eq!(u.watermark(now), Some(7));
        assert_eq!(
            u.checkpoint_state().to_json(),
            t.checkpoint_state().to_json()
        );
    }
}
