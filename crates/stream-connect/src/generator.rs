//! The `generator` connector: deterministic synthetic events, for demos, tests and
//! benchmarks.
//!
//! `kind: "orders"` (default) produces order events:
//!
//! ```json
//! {"orderId": "ord-000000001", "customerId": "cust-5413", "status": "CANCELLED", "orderValue": 48.5,
//!  "currency": "SGD", "region": "APAC", "items": 5, "ts": {"$date": "2024-03-01T00:00:00.050Z"}}
//! ```
//!
//! Event `i` (from 0) is a pure function of `(seed, i, customers)` ([`order`]): `status`
//! is PAID 60 %, NEW 25 %, CANCELLED 10 %, REFUNDED 5 %; `orderValue` is a double, a
//! multiple of 0.25 in [1, 2000) (so sums are exact); each customer has one `region`
//! and its `currency`; `items` is 1–5; `ts` advances 100 ms per event from
//! 2024-03-01T00:00:00Z with up to 99 ms of jitter (never decreasing).
//!
//! `kind: "nexmark"` produces the Nexmark benchmark's person, auction and bid events
//! (the `nexmark` crate), as documents with a `type` field; they are a function of the
//! event index alone (`seed` does not apply), with the base time fixed at
//! 2024-03-01T00:00:00Z.
//!
//! Positions are event indexes (partition `orders` or `nexmark`): a restart continues
//! with exactly the next event. With `count` the source is bounded; `ratePerSecond`
//! throttles it.

use crate::options::{check_known, positive_u64};
use async_trait::async_trait;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use stream_core::streaming::{
    ConnectorConfig, ConnectorContext, ConnectorError, ConnectorProvider, DefinitionError, Payload,
    Progress, Record, Sink, Source, SourceBatch, SourcePositions,
};
use stream_core::value::{Document, ExtJsonMode, Value};
use tokio::time::Instant;

const NAME: &str = "generator";
const OPTIONS: &[&str] = &["kind", "seed", "count", "customers", "ratePerSecond"];
/// Seed used when the `seed` option is absent.
pub const DEFAULT_SEED: u64 = 42;
/// Number of distinct customers when the `customers` option is absent.
pub const DEFAULT_CUSTOMERS: u64 = 10_000;
/// 2024-03-01T00:00:00Z: time of the first event.
pub const BASE_TIME_MILLIS: i64 = 1_709_251_200_000;
const STEP_MILLIS: i64 = 100;

const STATUSES: [(&str, u64); 4] = [
    ("PAID", 60),
    ("NEW", 25),
    ("CANCELLED", 10),
    ("REFUNDED", 5),
];
const REGIONS: [(&str, &str); 6] = [
    ("US-EAST", "USD"),
    ("US-WEST", "USD"),
    ("EU-CENTRAL", "EUR"),
    ("EU-WEST", "GBP"),
    ("APAC", "SGD"),
    ("LATAM", "BRL"),
];

/// SplitMix64: a tiny, well-mixed generator whose output never changes between
/// versions or platforms (unlike `rand`'s algorithms), so datasets stay reproducible.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Order event number `index` (from 0) for `seed` and `customers` (at least 1): what the
/// `orders` generator emits at that index and what [`write_orders_jsonl`] writes.
pub fn order(index: u64, seed: u64, customers: u64) -> Document {
    let customers = customers.max(1);
    let mut state = seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let customer = splitmix(&mut state) % customers;
    let status_roll = splitmix(&mut state) % 100;
    let quarters = 4 + splitmix(&mut state) % 7996;
    let items = 1 + splitmix(&mut state) % 5;
    let jitter = splitmix(&mut state) % STEP_MILLIS as u64;
    let mut region_state = seed ^ customer.wrapping_mul(0xA076_1D64_78BD_642F);
    let (region, currency) = REGIONS[(splitmix(&mut region_state) % REGIONS.len() as u64) as usize];
    let mut acc = 0;
    let status = STATUSES
        .iter()
        .find(|(_, weight)| {
            acc += weight;
            status_roll < acc
        })
        .map_or("PAID", |(s, _)| s);
    let width = digits(customers - 1).max(4);
    let mut d = Document::with_capacity(8);
    d.push_unchecked("orderId", Value::string(format!("ord-{:09}", index + 1)));
    d.push_unchecked(
        "customerId",
        Value::string(format!("cust-{customer:0width$}")),
    );
    d.push_unchecked("status", Value::string(status));
    d.push_unchecked("orderValue", Value::Double(quarters as f64 * 0.25));
    d.push_unchecked("currency", Value::string(currency));
    d.push_unchecked("region", Value::string(region));
    d.push_unchecked("items", Value::Int32(items as i32));
    d.push_unchecked(
        "ts",
        Value::Date(BASE_TIME_MILLIS + index as i64 * STEP_MILLIS + jitter as i64),
    );
    d
}

/// Writes `count` orders (the `orders` generator with `seed` and the default
/// [`DEFAULT_CUSTOMERS`]) to `path` as JSON Lines (relaxed Extended JSON, `ts` as
/// `{"$date": ...}`), creating parent directories and replacing an existing file.
/// Returns the bytes written. Lines are rendered on all cores in chunks and written in
/// order. Blocking: call it from a plain thread or `spawn_blocking`.
pub fn write_orders_jsonl(path: impl AsRef<Path>, count: u64, seed: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 32_768;
    let path = path.as_ref();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(16) as u64;
    let render = |start: u64, end: u64| {
        let mut buf = String::with_capacity(((end - start) * 200) as usize);
        for i in start..end {
            order(i, seed, DEFAULT_CUSTOMERS).write_json(&mut buf, ExtJsonMode::Relaxed);
            buf.push('\n');
        }
        buf
    };
    let mut written = 0u64;
    let mut next = 0u64;
    while next < count {
        let chunks = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let start = (next + t * CHUNK).min(count);
                    let end = (start + CHUNK).min(count);
                    scope.spawn(move || render(start, end))
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .map_err(|_| std::io::Error::other("a thread rendering orders panicked"))
                })
                .collect::<std::io::Result<Vec<String>>>()
        })?;
        for chunk in chunks {
            file.write_all(chunk.as_bytes())?;
            written += chunk.len() as u64;
        }
        next = (next + threads * CHUNK).min(count);
    }
    file.flush()?;
    Ok(written)
}

/// A Nexmark event as a document: `type` (`person`, `auction` or `bid`) then the
/// event's fields in camelCase, times as dates.
pub fn nexmark_document(event: &nexmark::event::Event) -> Document {
    use nexmark::event::Event;
    let int = |n: usize| Value::Int64(n as i64);
    let date = |ms: u64| Value::Date(ms as i64);
    let text = |s: &str| Value::string(s);
    let mut d = Document::with_capacity(11);
    match event {
        Event::Person(p) => {
            d.push_unchecked("type", text("person"));
            d.push_unchecked("id", int(p.id));
            d.push_unchecked("name", text(&p.name));
            d.push_unchecked("emailAddress", text(&p.email_address));
            d.push_unchecked("creditCard", text(&p.credit_card));
            d.push_unchecked("city", text(&p.city));
            d.push_unchecked("state", text(&p.state));
            d.push_unchecked("dateTime", date(p.date_time));
            d.push_unchecked("extra", text(&p.extra));
        }
        Event::Auction(a) => {
            d.push_unchecked("type", text("auction"));
            d.push_unchecked("id", int(a.id));
            d.push_unchecked("itemName", text(&a.item_name));
            d.push_unchecked("description", text(&a.description));
            d.push_unchecked("initialBid", int(a.initial_bid));
            d.push_unchecked("reserve", int(a.reserve));
            d.push_unchecked("dateTime", date(a.date_time));
            d.push_unchecked("expires", date(a.expires));
            d.push_unchecked("seller", int(a.seller));
            d.push_unchecked("category", int(a.category));
            d.push_unchecked("extra", text(&a.extra));
        }
        Event::Bid(b) => {
            d.push_unchecked("type", text("bid"));
            d.push_unchecked("auction", int(b.auction));
            d.push_unchecked("bidder", int(b.bidder));
            d.push_unchecked("price", int(b.price));
            d.push_unchecked("channel", text(&b.channel));
            d.push_unchecked("url", text(&b.url));
            d.push_unchecked("dateTime", date(b.date_time));
            d.push_unchecked("extra", text(&b.extra));
        }
    }
    d
}

fn nexmark_generator(offset: u64) -> nexmark::EventGenerator {
    let config = nexmark::config::NexmarkConfig {
        base_time: BASE_TIME_MILLIS as u64,
        ..Default::default()
    };
    nexmark::EventGenerator::new(config).with_offset(offset)
}

/// Provider of the `generator` source (it has no sink).
#[derive(Debug, Clone, Copy, Default)]
pub struct GeneratorConnectorProvider;

impl ConnectorProvider for GeneratorConnectorProvider {
    fn connector_type(&self) -> &str {
        NAME
    }

    fn create_source(
        &self,
        config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Source>>, DefinitionError> {
        check_known(config, OPTIONS)?;
        let seed = config.u64_option("seed")?.unwrap_or(DEFAULT_SEED);
        let count = config.u64_option("count")?;
        let rate = match config.options.get("ratePerSecond") {
            None | Some(Value::Null) => None,
            Some(v) => match v
                .as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            {
                Some(r) if r > 0.0 && r.is_finite() => Some(r),
                _ => {
                    return Err(config.option_error(
                        "ratePerSecond",
                        format!(
                            "expected a positive number of events per second, found {}",
                            v.to_json()
                        ),
                    ))
                }
            },
        };
        let kind = match config.str_option("kind")?.unwrap_or("orders") {
            "orders" => Kind::Orders {
                customers: positive_u64(config, "customers")?.unwrap_or(DEFAULT_CUSTOMERS),
            },
            "nexmark" => {
                for key in ["customers", "seed"] {
                    if config.options.contains_key(key) {
                        return Err(config.option_error(key, format!("'{key}' applies to kind \"orders\" only; Nexmark events depend on their index alone")));
                    }
                }
                Kind::Nexmark(Box::new(nexmark_generator(0)))
            }
            other => {
                return Err(config.option_error(
                    "kind",
                    format!(
                        "unknown generator kind '{other}' (expected \"orders\" or \"nexmark\")"
                    ),
                ))
            }
        };
        let partition = Arc::<str>::from(match kind {
            Kind::Orders { .. } => "orders",
            Kind::Nexmark(_) => "nexmark",
        });
        Ok(Some(Box::new(GeneratorSource {
            kind,
            seed,
            count,
            rate,
            partition,
            next: 0,
            pace: None,
        })))
    }

    fn create_sink(
        &self,
        _config: &ConnectorConfig,
        _ctx: &ConnectorContext,
    ) -> Result<Option<Box<dyn Sink>>, DefinitionError> {
        Ok(None)
    }
}

enum Kind {
    Orders { customers: u64 },
    Nexmark(Box<nexmark::EventGenerator>),
}

struct GeneratorSource {
    kind: Kind,
    seed: u64,
    count: Option<u64>,
    rate: Option<f64>,
    partition: Arc<str>,
    /// Index of the next event.
    next: u64,
    /// Throttling reference: when pacing started and the index at that moment.
    pace: Option<(Instant, u64)>,
}

impl GeneratorSource {
    fn event(&mut self, index: u64) -> (Document, i64) {
        match &mut self.kind {
            Kind::Orders { customers } => {
                let d = order(index, self.seed, *customers);
                let ts = match d.get("ts") {
                    Some(Value::Date(ms)) => *ms,
                    _ => BASE_TIME_MILLIS,
                };
                (d, ts)
            }
            Kind::Nexmark(generator) => match generator.next() {
                Some(e) => (nexmark_document(&e), e.timestamp() as i64),
                None => (Document::new(), BASE_TIME_MILLIS), // the generator is endless
            },
        }
    }

    /// How many events the rate allows now, waiting (up to `deadline`) for the next slot.
    async fn allowed(&mut self, deadline: Instant) -> u64 {
        let Some(rate) = self.rate else {
            return u64::MAX;
        };
        let (start, first) = *self.pace.get_or_insert((Instant::now(), self.next));
        let due = start + Duration::from_secs_f64((self.next - first) as f64 / rate);
        if due > Instant::now() {
            if due > deadline {
                tokio::time::sleep_until(deadline).await;
                return 0;
            }
            tokio::time::sleep_until(due).await;
        }
        let earned = (start.elapsed().as_secs_f64() * rate).floor() as u64 + 1;
        earned.saturating_sub(self.next - first).max(1)
    }
}

#[async_trait]
impl Source for GeneratorSource {
    async fn next_batch(
        &mut self,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<SourceBatch, ConnectorError> {
        let deadline = Instant::now() + max_wait;
        let remaining = self.count.map_or(u64::MAX, |c| c.saturating_sub(self.next));
        let mut n = remaining.min(max_records.max(1) as u64);
        if n > 0 {
            n = n.min(self.allowed(deadline).await);
        }
        let mut records = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let index = self.next;
            let (doc, ts) = self.event(index);
            self.next += 1;
            records.push(Record {
                payload: Payload::Document(doc),
                partition: self.partition.clone(),
                position: Value::Int64(self.next as i64),
                event_time: Some(ts),
            });
        }
        let end_of_input = self.count.is_some_and(|c| self.next >= c);
        Ok(SourceBatch {
            records,
            end_of_input,
        })
    }

    async fn seek(&mut self, positions: &SourcePositions) -> Result<(), ConnectorError> {
        let Some(p) = positions.get(&*self.partition) else {
            return Ok(());
        };
        let next = p
            .as_i64_exact()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                ConnectorError::permanent(
                    NAME,
                    format!(
                        "invalid checkpoint position {} for partition '{}'",
                        p.to_json(),
                        self.partition
                    ),
                )
            })?;
        self.next = next;
        self.pace = None;
        if let Kind::Nexmark(generator) = &mut self.kind {
            **generator = nexmark_generator(next);
        }
        Ok(())
    }

    fn is_bounded(&self) -> bool {
        self.count.is_some()
    }

    /// Events generated out of `count`, when given.
    fn progress(&self) -> Option<Progress> {
        self.count.map(|total| Progress {
            done: self.next,
            total,
            unit: "records",
        })
    }
}
