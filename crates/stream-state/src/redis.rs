//! The `redis` state store: keyed state and checkpoints in a Redis server, shared by
//! every process that points at it (cargo feature `redis`).
//!
//! Key layout (`<prefix>` is option `keyPrefix`, `srotax` by default). Every key of a
//! pipeline carries the hash tag `{<pipeline>}`, so on Redis Cluster a pipeline's keys
//! share one slot and the multi-key commands below (MULTI/EXEC, MGET) stay valid:
//!
//! ```text
//! <prefix>:{<pipeline>}:kv:<key>        keyed entry (string; native expiry, PX)
//! <prefix>:{<pipeline>}:kv-index        sorted set of the entry keys (score 0): scan by
//!                                       prefix is ZRANGEBYLEX + MGET
//! <prefix>:{<pipeline>}:cp:<sequence>   a checkpoint (sequence as 20 digits)
//! <prefix>:{<pipeline>}:cps             sorted set of the checkpoint sequences
//! ```
//!
//! Entry writes and checkpoint writes are MULTI/EXEC transactions (value + index in one
//! step), so a crash of the client or the server never leaves one without the other;
//! batches go as one pipelined transaction (one round trip) of MSET + ZADD commands of
//! 1,000 entries each (SET ... PX per entry when they expire). Index members whose value
//! expired are removed by the next `scan` that meets them.
//!
//! Connections go through `redis`'s [`ConnectionManager`], which reconnects after a
//! failure; each operation retries with backoff for up to `retryFor` (30 s by default)
//! before reporting the store unavailable. Every operation is idempotent, so a retry
//! after a lost reply is harmless.

use crate::remote::{redact, retry, DEFAULT_RETRY_FOR};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RetryMethod};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use stream_core::streaming::{
    checkpoints_to_prune, Checkpoint, ConnectorConfig, DefinitionError, StateError, StateStore,
    StateStoreProvider,
};
use tokio::sync::OnceCell;

/// What [`RedisStateStore::run`] sends.
#[derive(Clone, Copy)]
enum Query<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

/// Settings of a [`RedisStateStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisStateStoreOptions {
    /// Server URL, e.g. `redis://127.0.0.1:6379/0` (option `url`).
    pub url: String,
    /// First part of every key (option `keyPrefix`, default `srotax`).
    pub key_prefix: String,
    /// Expiry of keyed entries written without one (option `ttl`; default none).
    pub default_ttl: Option<Duration>,
    /// How long an operation retries while the server is unreachable (option
    /// `retryFor`, default 30 s).
    pub retry_for: Duration,
}

impl RedisStateStoreOptions {
    /// Defaults for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisStateStoreOptions {
            url: url.into(),
            key_prefix: "srotax".into(),
            default_ttl: None,
            retry_for: DEFAULT_RETRY_FOR,
        }
    }
}

/// A state store in Redis for one pipeline's keyed entries (checkpoints of any pipeline).
/// Cheap to clone; the connection is opened on first use.
#[derive(Clone)]
pub struct RedisStateStore {
    client: Client,
    connection: Arc<OnceCell<ConnectionManager>>,
    options: Arc<RedisStateStoreOptions>,
    /// `<prefix>:{<pipeline>}:kv:` — the keyed entries' namespace.
    entry_prefix: String,
    /// `<prefix>:{<pipeline>}:kv-index`.
    index_key: String,
}

impl fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("url", &redact(&self.options.url))
            .field("entry_prefix", &self.entry_prefix)
            .finish()
    }
}

/// Errors worth retrying: the connection failed or the server is (re)starting.
fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || !matches!(e.retry_method(), RetryMethod::NoRetry)
}

impl RedisStateStore {
    /// A store for `pipeline_id`'s keyed entries. Fails only on a malformed URL; the
    /// server is contacted on first use.
    pub fn new(options: RedisStateStoreOptions, pipeline_id: &str) -> Result<Self, StateError> {
        let client = Client::open(options.url.as_str()).map_err(|e| {
            StateError::Rejected(format!("invalid Redis URL '{}': {e}", redact(&options.url)))
        })?;
        let tag = format!("{}:{{{pipeline_id}}}", options.key_prefix);
        Ok(RedisStateStore {
            client,
            connection: Arc::new(OnceCell::new()),
            entry_prefix: format!("{tag}:kv:"),
            index_key: format!("{tag}:kv-index"),
            options: Arc::new(options),
        })
    }

    /// The Redis key holding keyed entry `key`.
    pub fn entry_key(&self, key: &str) -> String {
        format!("{}{key}", self.entry_prefix)
    }

    fn checkpoint_index(&self, pipeline_id: &str) -> String {
        format!("{}:{{{pipeline_id}}}:cps", self.options.key_prefix)
    }

    fn checkpoint_key(&self, pipeline_id: &str, sequence: u64) -> String {
        format!(
            "{}:{{{pipeline_id}}}:cp:{sequence:020}",
            self.options.key_prefix
        )
    }

    async fn connection(&self) -> Result<ConnectionManager, StateError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let what = format!("connecting to Redis at {}", redact(&self.options.url));
        let con = self
            .connection
            .get_or_try_init(|| {
                retry(&what, self.options.retry_for, transient, || {
                    ConnectionManager::new_with_config(self.client.clone(), config.clone())
                })
            })
            .await?;
        Ok(con.clone())
    }

    /// Runs one command or pipeline with retries; `what` names it in errors.
    async fn run<T: redis::FromRedisValue>(
        &self,
        what: &str,
        query: Query<'_>,
    ) -> Result<T, StateError> {
        let con = self.connection().await?;
        let what = format!("{what} (Redis at {})", redact(&self.options.url));
        retry(&what, self.options.retry_for, transient, || {
            let mut con = con.clone();
            async move {
                match query {
                    Query::Cmd(c) => c.query_async(&mut con).await,
                    Query::Pipe(p) => p.query_async(&mut con).await,
                }
            }
        })
        .await
    }

    fn ttl(&self, ttl: Option<Duration>) -> Option<u64> {
        ttl.or(self.options.default_ttl)
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    /// One MULTI/EXEC writing `entries` and their index members. Without expiry the
    /// values go as MSET and the index as ZADD, 1,000 entries per command, which Redis
    /// executes far faster than a SET and a ZADD per entry; with expiry each value needs
    /// its own `SET ... PX`.
    fn put_transaction(&self, entries: &[(String, Vec<u8>)], ttl: Option<u64>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for chunk in entries.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|(k, _)| self.entry_key(k)).collect();
            match ttl {
                None => {
                    let mset = pipe.cmd("MSET");
                    for (full, (_, value)) in keys.iter().zip(chunk) {
                        mset.arg(full).arg(value);
                    }
                    mset.ignore();
                }
                Some(ms) => {
                    for (full, (_, value)) in keys.iter().zip(chunk) {
                        pipe.cmd("SET")
                            .arg(full)
                            .arg(value)
                            .arg("PX")
                            .arg(ms)
                            .ignore();
                    }
                }
            }
            let zadd = pipe.cmd("ZADD").arg(&self.index_key);
            for full in &keys {
                zadd.arg(0).arg(full);
            }
            zadd.ignore();
        }
        pipe
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStateStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let cmd = redis::Cmd::get(self.entry_key(key));
        self.run(&format!("GET {key}"), Query::Cmd(&cmd)).await
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let pipe = self.put_transaction(&[(key.to_string(), value)], self.ttl(ttl));
        self.run(&format!("SET {key}"), Query::Pipe(&pipe)).await
    }

    async fn put_batch(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let pipe = self.put_transaction(&entries, self.ttl(ttl));
        let what = format!("writing {} entries", entries.len());
        self.run(&what, Query::Pipe(&pipe)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        let full = self.entry_key(key);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(&full)
            .ignore()
            .cmd("ZREM")
            .arg(&self.index_key)
            .arg(&full)
            .ignore();
        self.run(&format!("DEL {key}"), Query::Pipe(&pipe)).await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        // Keys are UTF-8, so no key byte is 0xFF: `[p` .. `[p\xff` is every key
        // starting with p.
        let start = format!("[{}", self.entry_key(prefix)).into_bytes();
        let mut end = format!("[{}", self.entry_key(prefix)).into_bytes();
        end.push(0xFF);
        let mut cmd = redis::cmd("ZRANGEBYLEX");
        cmd.arg(&self.index_key).arg(start).arg(end);
        let keys: Vec<String> = self
            .run(&format!("scanning prefix {prefix}"), Query::Cmd(&cmd))
            .await?;
        let mut out = Vec::with_capacity(keys.len());
        let mut expired = Vec::new();
        for chunk in keys.chunks(1000) {
            let mut mget = redis::cmd("MGET");
            mget.arg(chunk);
            let values: Vec<Option<Vec<u8>>> = self
                .run(&format!("reading prefix {prefix}"), Query::Cmd(&mget))
                .await?;
            for (full, value) in chunk.iter().zip(values) {
                match value {
                    Some(v) => out.push((full[self.entry_prefix.len()..].to_string(), v)),
                    None => expired.push(full.clone()),
                }
            }
        }
        if !expired.is_empty() {
            let mut zrem = redis::cmd("ZREM");
            zrem.arg(&self.index_key).arg(&expired);
            self.run::<()>("dropping expired keys from the index", Query::Cmd(&zrem))
                .await?;
        }
        Ok(out)
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let id = &checkpoint.pipeline_id;
        let key = self.checkpoint_key(id, checkpoint.sequence);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&key)
            .arg(checkpoint.encode())
            .ignore()
            .cmd("ZADD")
            .arg(self.checkpoint_index(id))
            .arg(checkpoint.sequence)
            .arg(checkpoint.sequence)
            .ignore();
        self.run(&format!("saving checkpoint {key}"), Query::Pipe(&pipe))
            .await
    }

    async fn load_checkpoint(&self, pipeline_id: &str) -> Result<Option<Checkpoint>, StateError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.checkpoint_index(pipeline_id)).arg(-1).arg(-1);
        let latest: Vec<u64> = self
            .run(
                &format!("finding the latest checkpoint of {pipeline_id}"),
                Query::Cmd(&cmd),
            )
            .await?;
        let Some(&sequence) = latest.first() else {
            return Ok(None);
        };
        match self.load_checkpoint_at(pipeline_id, sequence).await? {
            Some(cp) => Ok(Some(cp)),
            None => Err(StateError::Corrupt(format!(
                "Redis key {} is listed in {} but missing (deleted outside SrotaX?)",
                self.checkpoint_key(pipeline_id, sequence),
                self.checkpoint_index(pipeline_id)
            ))),
        }
    }

    async fn load_checkpoint_at(
        &self,
        pipeline_id: &str,
        sequence: u64,
    ) -> Result<Option<Checkpoint>, StateError> {
        let key = self.checkpoint_key(pipeline_id, sequence);
        let cmd = redis::Cmd::get(&key);
        let bytes: Option<Vec<u8>> = self
            .run(&format!("reading checkpoint {key}"), Query::Cmd(&cmd))
            .await?;
        bytes
            .map(|b| Checkpoint::decode(&b, &format!("Redis key {key}")))
            .transpose()
    }

    async fn list_checkpoints(&self, pipeline_id: &str) -> Result<Vec<u64>, StateError> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.checkpoint_index(pipeline_id)).arg(0).arg(-1);
        self.run(
            &format!("listing checkpoints of {pipeline_id}"),
            Query::Cmd(&cmd),
        )
        .await
    }

    async fn prune_checkpoints(&self, pipeline_id: &str, keep: usize) -> Result<usize, StateError> {
        let all = self.list_checkpoints(pipeline_id).await?;
        let doomed = checkpoints_to_prune(&all, keep);
        if doomed.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = doomed
            .iter()
            .map(|&s| self.checkpoint_key(pipeline_id, s))
            .collect();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(&keys)
            .ignore()
            .cmd("ZREM")
            .arg(self.checkpoint_index(pipeline_id))
            .arg(doomed)
            .ignore();
        self.run::<()>(
            &format!("pruning checkpoints of {pipeline_id}"),
            Query::Pipe(&pipe),
        )
        .await?;
        Ok(doomed.len())
    }

    async fn clear_checkpoint(&self, pipeline_id: &str) -> Result<(), StateError> {
        let all = self.list_checkpoints(pipeline_id).await?;
        let mut keys: Vec<String> = all
            .iter()
            .map(|&s| self.checkpoint_key(pipeline_id, s))
            .collect();
        keys.push(self.checkpoint_index(pipeline_id));
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&keys);
        self.run(
            &format!("clearing checkpoints of {pipeline_id}"),
            Query::Cmd(&cmd),
        )
        .await
    }
}

/// The `redis` state-store provider. Options: `url` (required), `keyPrefix`, `ttl` (a
/// duration such as `"7d"`: default expiry of keyed entries), `retryFor` (a duration).
#[derive(Debug, Default)]
pub struct RedisStateStoreProvider;

const OPTIONS: [&str; 4] = ["url", "keyPrefix", "ttl", "retryFor"];

impl StateStoreProvider for RedisStateStoreProvider {
    fn store_type(&self) -> &str {
        "redis"
    }

    fn create(
        &self,
        config: &ConnectorConfig,
        pipeline_id: &str,
    ) -> Result<Arc<dyn StateStore>, DefinitionError> {
        crate::check_options(config, "redis", &OPTIONS)?;
        let mut options = RedisStateStoreOptions::new(config.required_str("url")?);
        if let Some(prefix) = config.str_option("keyPrefix")? {
            if prefix.is_empty() || prefix.contains(['{', '}']) {
                return Err(config.option_error(
                    "keyPrefix",
                    "must be non-empty and contain no '{' or '}' (they delimit the hash tag)",
                ));
            }
            options.key_prefix = prefix.to_string();
        }
        options.default_ttl = config.duration_option("ttl")?;
        if let Some(d) = config.duration_option("retryFor")? {
            options.retry_for = d;
        }
        let store = RedisStateStore::new(options, pipeline_id)
            .map_err(|e| config.option_error("url", e.to_string()))?;
        Ok(Arc::new(store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_pipeline_hash_tag() {
        let store =
            RedisStateStore::new(RedisStateStoreOptions::new("redis://h"), "orders").unwrap();
        assert_eq!(store.entry_key("c:1"), "srotax:{orders}:kv:c:1");
        assert_eq!(store.index_key, "srotax:{orders}:kv-index");
        assert_eq!(
            store.checkpoint_key("orders", 7),
            "srotax:{orders}:cp:00000000000000000007"
        );
        assert_eq!(store.checkpoint_index("orders"), "srotax:{orders}:cps");
    }
}
