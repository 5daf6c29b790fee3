//! The `postgres` and `sqlite` state stores: keyed state and checkpoints in SQL tables
//! through `sqlx` (cargo features `postgres` and `sqlite`).
//!
//! Schema (created on first use, in one transaction; `<p>` is option `tablePrefix`,
//! `srotax_` by default):
//!
//! ```text
//! <p>schema       (version)                                 one row: the schema version
//! <p>state        (pipeline, key, value, expires_at)         keyed entries, PK (pipeline, key)
//! <p>checkpoints  (pipeline, sequence, payload, created_at)  PK (pipeline, sequence)
//! ```
//!
//! Keys compare byte-wise (`COLLATE "C"` on PostgreSQL, SQLite's default), so `scan` by
//! prefix is an index range read. `expires_at` is epoch milliseconds: expired rows are
//! never returned and are deleted by every checkpoint save (and by
//! [`SqlStateStore::sweep_expired`]). A checkpoint is one upsert in its own transaction;
//! a batch of puts is one transaction of multi-row upserts.
//!
//! Operations retry with backoff while the server is unreachable or restarting (and,
//! for SQLite, while another process holds the write lock) for up to `retryFor`.

use crate::now_ms;
use crate::remote::{redact, retry, DEFAULT_RETRY_FOR};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use stream_core::streaming::{
    checkpoints_to_prune, Checkpoint, ConnectorConfig, DefinitionError, StateError, StateStore,
    StateStoreProvider,
};
use tokio::sync::OnceCell;
use tracing::debug;

/// The schema version this code writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Which SQL database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlFlavor {
    /// PostgreSQL (`postgres://...`).
    Postgres,
    /// SQLite (`sqlite://path` or option `path`).
    Sqlite,
}

impl SqlFlavor {
    fn name(self) -> &'static str {
        match self {
            SqlFlavor::Postgres => "postgres",
            SqlFlavor::Sqlite => "sqlite",
        }
    }
}

/// Settings of a [`SqlStateStore`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqlStateStoreOptions {
    /// The database.
    pub flavor: SqlFlavor,
    /// Connection URL (option `url`; for SQLite also built from option `path`).
    pub url: String,
    /// Prefix of the table names (option `tablePrefix`, default `srotax_`).
    pub table_prefix: String,
    /// Expiry of keyed entries written without one (option `ttl`; default none).
    pub default_ttl: Option<Duration>,
    /// How long an operation retries while the database is unreachable (option
    /// `retryFor`, default 30 s).
    pub retry_for: Duration,
    /// Connections in the pool (option `maxConnections`, default 4).
    pub max_connections: u32,
}

impl SqlStateStoreOptions {
    /// Defaults for the database at `url`.
    pub fn new(flavor: SqlFlavor, url: impl Into<String>) -> Self {
        SqlStateStoreOptions {
            flavor,
            url: url.into(),
            table_prefix: "srotax_".into(),
            default_ttl: None,
            retry_for: DEFAULT_RETRY_FOR,
            max_connections: 4,
        }
    }
}

/// A state store in PostgreSQL or SQLite for one pipeline's keyed entries (checkpoints of
/// any pipeline). Cheap to clone; connects and creates the schema on first use.
#[derive(Clone)]
pub struct SqlStateStore {
    pool: Arc<OnceCell<AnyPool>>,
    options: Arc<SqlStateStoreOptions>,
    pipeline_id: String,
    sql: Arc<Statements>,
}

impl fmt::Debug for SqlStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStateStore")
            .field("flavor", &self.options.flavor)
            .field("url", &redact(&self.options.url))
            .field("pipeline_id", &self.pipeline_id)
            .finish()
    }
}

/// Rows per multi-row upsert: 4,000 parameters, under PostgreSQL's 65,535 and SQLite's
/// 32,766; fewer, larger statements mean fewer round trips.
const BATCH_ROWS: usize = 1000;

/// The SQL text, built once per store from the table prefix.
struct Statements {
    schema: Vec<String>,
    version_table: String,
    get: String,
    scan: String,
    scan_from: String,
    delete: String,
    sweep: String,
    state_table: String,
    save_checkpoint: String,
    load_latest: String,
    load_at: String,
    list: String,
    delete_checkpoint: String,
    clear: String,
}

impl Statements {
    fn new(flavor: SqlFlavor, p: &str) -> Statements {
        let (blob, key_type) = match flavor {
            SqlFlavor::Postgres => ("BYTEA", "TEXT COLLATE \"C\""),
            SqlFlavor::Sqlite => ("BLOB", "TEXT"),
        };
        let live = "(expires_at IS NULL OR expires_at > $2)";
        Statements {
            schema: vec![
                format!(
                    "CREATE TABLE IF NOT EXISTS {p}state (pipeline TEXT NOT NULL, key {key_type} NOT NULL, \
                     value {blob} NOT NULL, expires_at BIGINT, PRIMARY KEY (pipeline, key))"
                ),
                format!("CREATE INDEX IF NOT EXISTS {p}state_expiry ON {p}state (expires_at)"),
                format!(
                    "CREATE TABLE IF NOT EXISTS {p}checkpoints (pipeline TEXT NOT NULL, sequence BIGINT NOT NULL, \
                     payload {blob} NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (pipeline, sequence))"
                ),
            ],
            version_table: format!("{p}schema"),
            get: format!("SELECT value FROM {p}state WHERE pipeline = $1 AND {live} AND key = $3"),
            scan: format!(
                "SELECT key, value FROM {p}state WHERE pipeline = $1 AND {live} AND key >= $3 AND key < $4 ORDER BY key"
            ),
            scan_from: format!(
                "SELECT key, value FROM {p}state WHERE pipeline = $1 AND {live} AND key >= $3 ORDER BY key"
            ),
            delete: format!("DELETE FROM {p}state WHERE pipeline = $1 AND key = $2"),
            sweep: format!("DELETE FROM {p}state WHERE expires_at <= $1"),
            state_table: format!("{p}state"),
            save_checkpoint: format!(
                "INSERT INTO {p}checkpoints (pipeline, sequence, payload, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (pipeline, sequence) DO UPDATE SET payload = excluded.payload, created_at = excluded.created_at"
            ),
            load_latest: format!(
                "SELECT sequence, payload FROM {p}checkpoints WHERE pipeline = $1 ORDER BY sequence DESC LIMIT 1"
            ),
            load_at: format!(
                "SELECT sequence, payload FROM {p}checkpoints WHERE pipeline = $1 AND sequence = $2"
            ),
            list: format!(
                "SELECT sequence FROM {p}checkpoints WHERE pipeline = $1 ORDER BY sequence"
            ),
            delete_checkpoint: format!(
                "DELETE FROM {p}checkpoints WHERE pipeline = $1 AND sequence = $2"
            ),
            clear: format!("DELETE FROM {p}checkpoints WHERE pipeline = $1"),
        }
    }

    /// `INSERT ... VALUES (...), (...) ON CONFLICT DO UPDATE` for `rows` entries.
    fn upsert(&self, rows: usize) -> String {
        let mut sql = format!(
            "INSERT INTO {} (pipeline, key, value, expires_at) VALUES ",
            self.state_table
        );
        for r in 0..rows {
            let b = r * 4;
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4));
        }
        sql.push_str(
            " ON CONFLICT (pipeline, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
        );
        sql
    }
}

/// Errors worth retrying: connection failures, a server shutting down or starting up,
/// SQLite's busy/locked (another process writes).
fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("57P")
                || code.parse::<u32>().is_ok_and(|c| matches!(c & 0xFF, 5 | 6))
        }),
        _ => false,
    }
}

/// The smallest string greater than every string starting with `prefix`, if any.
fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (last as u32 + 1..=char::MAX as u32).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

fn u64_to_i64(n: u64, what: &str) -> Result<i64, StateError> {
    i64::try_from(n).map_err(|_| StateError::Rejected(format!("{what} {n} exceeds i64::MAX")))
}

impl SqlStateStore {
    /// A store for `pipeline_id`'s keyed entries. The database is contacted on first use.
    pub fn new(options: SqlStateStoreOptions, pipeline_id: &str) -> Self {
        sqlx::any::install_default_drivers();
        SqlStateStore {
            pool: Arc::new(OnceCell::new()),
            sql: Arc::new(Statements::new(options.flavor, &options.table_prefix)),
            options: Arc::new(options),
            pipeline_id: pipeline_id.to_string(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} at {}",
            self.options.flavor.name(),
            redact(&self.options.url)
        )
    }

    /// The connection pool, connecting and creating the schema the first time.
    async fn pool(&self) -> Result<&AnyPool, StateError> {
        self.pool
            .get_or_try_init(|| async {
                let what = format!("connecting to {}", self.describe());
                let pool = retry(&what, self.options.retry_for, transient, || {
                    AnyPoolOptions::new()
                        .max_connections(self.options.max_connections)
                        .acquire_timeout(Duration::from_secs(5))
                        .connect(&self.options.url)
                })
                .await?;
                let what = format!("creating the state schema in {}", self.describe());
                retry(&what, self.options.retry_for, transient, || {
                    self.create_schema(&pool)
                })
                .await?;
                Ok(pool)
            })
            .await
    }

    /// Creates the tables and records the version, or checks the recorded version.
    async fn create_schema(&self, pool: &AnyPool) -> Result<(), sqlx::Error> {
        if self.options.flavor == SqlFlavor::Sqlite {
            // Lets readers run while another process writes; persistent, and only
            // possible outside a transaction.
            sqlx::query("PRAGMA journal_mode=WAL").execute(pool).await?;
        }
        let mut tx = pool.begin().await?;
        if self.options.flavor == SqlFlavor::Postgres {
            // Serialises concurrent first uses (CREATE IF NOT EXISTS can race).
            sqlx::query("SELECT pg_advisory_xact_lock(5372746178)")
                .execute(&mut *tx)
                .await?;
        }
        let table = &self.sql.version_table;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (version BIGINT NOT NULL)"
        ))
        .execute(&mut *tx)
        .await?;
        let version: Option<i64> = sqlx::query(&format!("SELECT MAX(version) FROM {table}"))
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        match version {
            None => {
                for ddl in &self.sql.schema {
                    sqlx::query(ddl).execute(&mut *tx).await?;
                }
                sqlx::query(&format!("INSERT INTO {table} (version) VALUES ($1)"))
                    .bind(SCHEMA_VERSION)
                    .execute(&mut *tx)
                    .await?;
                debug!(database = %self.describe(), "created the state schema");
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) => {
                // Not transient: reported as a rejection.
                return Err(sqlx::Error::Configuration(
                    format!(
                        "table {table} says schema version {v}, this SrotaX knows {SCHEMA_VERSION}: \
                         use a SrotaX that knows it, or another tablePrefix"
                    )
                    .into(),
                ));
            }
        }
        tx.commit().await
    }

    /// Runs `op` on the pool with retries; `what` names it in errors.
    async fn run<'s, T, F, Fut>(&'s self, what: &str, op: F) -> Result<T, StateError>
    where
        F: Fn(&'s AnyPool) -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let pool = self.pool().await?;
        let what = format!("{what} ({})", self.describe());
        retry(&what, self.options.retry_for, transient, || op(pool)).await
    }

    fn expiry(&self, ttl: Option<Duration>, now: i64) -> Option<i64> {
        ttl.or(self.options.default_ttl)
            .map(|t| now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Deletes expired entries of every pipeline now; returns how many.
    pub async fn sweep_expired(&self) -> Result<u64, StateError> {
        let now = now_ms();
        self.run("deleting expired entries", |pool| async move {
            Ok(sqlx::query(&self.sql.sweep)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected())
        })
        .await
    }

    fn decode(&self, pipeline_id: &str, row: AnyRow) -> Result<Checkpoint, StateError> {
        let sequence: i64 = row.try_get(0).map_err(|e| self.corrupt(pipeline_id, e))?;
        let payload: Vec<u8> = row.try_get(1).map_err(|e| self.corrupt(pipeline_id, e))?;
        let what = format!(
            "checkpoint {sequence} of '{pipeline_id}' in table {}checkpoints ({})",
            self.options.table_prefix,
            self.describe()
        );
        Checkpoint::decode(&payload, &what)
    }

    fn corrupt(&self, pipeline_id: &str, e: sqlx::Error) -> StateError {
        StateError::Corrupt(format!(
            "checkpoint row of '{pipeline_id}' in table {}checkpoints ({}): {e}",
            self.options.table_prefix,
            self.describe()
        ))
    }
}

#[async_trait::async_trait]
impl StateStore for SqlStateStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let now = now_ms();
        let row = self
            .run(&format!("reading key {key}"), |pool| async move {
                sqlx::query(&self.sql.get)
                    .bind(&self.pipeline_id)
                    .bind(now)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            })
            .await?;
        row.map(|r| r.try_get::<Vec<u8>, _>(0))
            .transpose()
            .map_err(|e| StateError::Corrupt(format!("value of key {key}: {e}")))
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        self.put_batch(vec![(key.to_string(), value)], ttl).await
    }

    async fn put_batch(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        // One row per key (last wins): an upsert may not touch a row twice.
        let rows: BTreeMap<&str, &[u8]> = entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let rows: Vec<(&str, &[u8])> = rows.into_iter().collect();
        if rows.is_empty() {
            return Ok(());
        }
        let expires_at = self.expiry(ttl, now_ms());
        let rows = &rows;
        self.run(
            &format!("writing {} entries", rows.len()),
            |pool| async move {
                let mut tx = pool.begin().await?;
                for chunk in rows.chunks(BATCH_ROWS) {
                    let sql = self.sql.upsert(chunk.len());
                    let mut q = sqlx::query(&sql);
                    for (key, value) in chunk {
                        q = q
                            .bind(&self.pipeline_id)
                            .bind(*key)
                            .bind(*value)
                            .bind(expires_at);
                    }
                    q.execute(&mut *tx).await?;
                }
                tx.commit().await
            },
        )
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StateError> {
        self.run(&format!("deleting key {key}"), |pool| async move {
            sqlx::query(&self.sql.delete)
                .bind(&self.pipeline_id)
                .bind(key)
                .execute(pool)
                .await
                .map(drop)
        })
        .await
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let now = now_ms();
        let end = prefix_successor(prefix);
        let end = &end;
        let rows = self
            .run(&format!("scanning prefix {prefix}"), |pool| async move {
                let q = match end {
                    Some(end) => sqlx::query(&self.sql.scan)
                        .bind(&self.pipeline_id)
                        .bind(now)
                        .bind(prefix)
                        .bind(end.as_str()),
                    None => sqlx::query(&self.sql.scan_from)
                        .bind(&self.pipeline_id)
                        .bind(now)
                        .bind(prefix),
                };
                q.fetch_all(pool).await
            })
            .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<Vec<u8>, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(|e| StateError::Corrupt(format!("entries under prefix {prefix}: {e}")))
    }

    async fn save_checkpoint(&self, checkpoint: &Checkpoint) -> Result<(), StateError> {
        let sequence = u64_to_i64(checkpoint.sequence, "checkpoint sequence")?;
        let payload = checkpoint.encode();
        let (payload, now) = (&payload, now_ms());
        let what = format!(
            "saving checkpoint {} of '{}'",
            checkpoint.sequence, checkpoint.pipeline_id
        );
        self.run(&what, |pool| async move {
            let mut tx = pool.begin().await?;
            sqlx::query(&self.sql.save_checkpoint)
                .bind(&checkpoint.pipeline_id)
                .bind(sequence)
                .bind(payload.as_slice())
                .bind(checkpoint.created_at)
                .execute(&mut *tx)
                .await?;
            // Active expiry: checkpoints come regularly, so expired rows do not pile up.
            sqlx::query(&self.sql.sweep)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        })
        .await
    }

    async fn load_checkpoint(&self, pipeline_id: &str) -> Result<Option<Checkpoint>, StateError> {
        let row = self
            .run(
                &format!("reading the latest checkpoint of '{pipeline_id}'"),
                |pool| async move {
                    sqlx::query(&self.sql.load_latest)
                        .bind(pipeline_id)
                        .fetch_optional(pool)
                        .await
                },
            )
            .await?;
        row.map(|r| self.decode(pipeline_id, r)).transpose()
    }

    async fn load_checkpoint_at(
        &self,
        pipeline_id: &str,
        sequence: u64,
    ) -> Result<Option<Checkpoint>, StateError> {
        let seq = u64_to_i64(sequence, "checkpoint sequence")?;
        let row = self
            .run(
                &format!("reading checkpoint {sequence} of '{pipeline_id}'"),
                |pool| async move {
                    sqlx::query(&self.sql.load_at)
                        .bind(pipeline_id)
                        .bind(seq)
                        .fetch_optional(pool)
                        .await
                },
            )
            .await?;
        row.map(|r| self.decode(pipeline_id, r)).transpose()
    }

    async fn list_checkpoints(&self, pipeline_id: &str) -> Result<Vec<u64>, StateError> {
        let rows = self
            .run(
                &format!("listing checkpoints of '{pipeline_id}'"),
                |pool| async move {
                    sqlx::query(&self.sql.list)
                        .bind(pipeline_id)
                        .fetch_all(pool)
                        .await
                },
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                let s: i64 = r.try_get(0).map_err(|e| self.corrupt(pipeline_id, e))?;
                u64::try_from(s).map_err(|_| {
                    StateError::Corrupt(format!(
                        "negative checkpoint sequence {s} of '{pipeline_id}' ({})",
                        self.describe()
                    ))
                })
            })
            .collect()
    }

    async fn prune_checkpoints(&self, pipeline_id: &str, keep: usize) -> Result<usize, StateError> {
        let all = self.list_checkpoints(pipeline_id).await?;
        let doomed = checkpoints_to_prune(&all, keep);
        if doomed.is_empty() {
            return Ok(0);
        }
        self.run(
            &format!("pruning checkpoints of '{pipeline_id}'"),
            |pool| async move {
                let mut tx = pool.begin().await?;
                for &s in doomed {
                    sqlx::query(&self.sql.delete_checkpoint)
                        .bind(pipeline_id)
                        .bind(s as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            },
        )
        .await?;
        Ok(doomed.len())
    }

    async fn clear_checkpoint(&self, pipeline_id: &str) -> Result<(), StateError> {
        self.run(
            &format!("clearing checkpoints of '{pipeline_id}'"),
            |pool| async move {
                sqlx::query(&self.sql.clear)
                    .bind(pipeline_id)
                    .execute(pool)
                    .await
                    .map(drop)
            },
        )
        .await
    }
}

/// The `postgres` / `sqlite` state-store provider. Options: `url` (required for
/// `postgres`; for `sqlite` either `url` or `path`, a database file created if missing),
/// `tablePrefix`, `ttl` (default expiry of keyed entries, e.g. `"7d"`), `retryFor`,
/// `maxConnections`.
#[derive(Debug)]
pub struct SqlStateStoreProvider {
    flavor: SqlFlavor,
}

impl SqlStateStoreProvider {
    /// The `postgres` provider.
    #[cfg(feature = "postgres")]
    pub fn postgres() -> Self {
        SqlStateStoreProvider {
            flavor: SqlFlavor::Postgres,
        }
    }

    /// The `sqlite` provider.
    #[cfg(feature = "sqlite")]
    pub fn sqlite() -> Self {
        SqlStateStoreProvider {
            flavor: SqlFlavor::Sqlite,
        }
    }
}

const POSTGRES_OPTIONS: [&str; 5] = ["url", "tablePrefix", "ttl", "retryFor", "maxConnections"];
const SQLITE_OPTIONS: [&str; 6] = [
    "url",
    "path",
    "tablePrefix",
    "ttl",
    "retryFor",
    "maxConnections",
];

impl StateStoreProvider for SqlStateStoreProvider {
    fn store_type(&self) -> &str {
        self.flavor.name()
    }

    fn create(
        &self,
        config: &ConnectorConfig,
        pipeline_id: &str,
    ) -> Result<Arc<dyn StateStore>, DefinitionError> {
        let flavor = self.flavor;
        let known: &[&str] = match flavor {
            SqlFlavor::Postgres => &POSTGRES_OPTIONS,
            SqlFlavor::Sqlite => &SQLITE_OPTIONS,
        };
        crate::check_options(config, flavor.name(), known)?;
        let url = match (
            flavor,
            config.str_option("url")?,
            config.str_option("path")?,
        ) {
            (SqlFlavor::Sqlite, Some(_), Some(_)) => {
                return Err(config.option_error("path", "give either url or path, not both"))
            }
            (SqlFlavor::Sqlite, None, Some(path)) => format!("sqlite://{path}?mode=rwc"),
            (SqlFlavor::Sqlite, None, None) => {
                return Err(config.option_error(
                    "path",
                    "required: the SQLite database file (or give url: sqlite://...)",
                ))
            }
            _ => config.required_str("url")?.to_string(),
        };
        let scheme_ok = match flavor {
            SqlFlavor::Postgres => {
                url.starts_with("postgres://") || url.starts_with("postgresql://")
            }
            SqlFlavor::Sqlite => url.starts_with("sqlite:"),
        };
        if !scheme_ok {
            return Err(config.option_error(
                "url",
                format!(
                    "'{}' is not a {} URL",
                    redact(&url),
                    match flavor {
                        SqlFlavor::Postgres => "postgres://user@host:port/database",
                        SqlFlavor::Sqlite => "sqlite://path",
                    }
                ),
            ));
        }
        let mut options = SqlStateStoreOptions::new(flavor, url);
        if let Some(prefix) = config.str_option("tablePrefix")? {
            let ok = !prefix.is_empty()
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !prefix.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(config.option_error(
                    "tablePrefix",
                    "use lowercase letters, digits and '_', not starting with a digit",
                ));
            }
            options.table_prefix = prefix.to_string();
        }
        options.default_ttl = config.duration_option("ttl")?;
        if let Some(d) = config.duration_option("retryFor")? {
            options.retry_for = d;
        }
        if let Some(n) = config.u64_option("maxConnections")? {
            options.max_connections = u32::try_from(n)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| config.option_error("maxConnections", "must be 1 or more"))?;
        }
        Ok(Arc::new(SqlStateStore::new(options, pipeline_id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_successors_bound_every_key_with_the_prefix() {
        assert_eq!(prefix_successor("a:"), Some("a;".to_string()));
        assert_eq!(prefix_successor(""), None);
        let max = char::MAX.to_string();
        assert_eq!(prefix_successor(&format!("a{max}")), Some("b".to_string()));
        assert_eq!(prefix_successor("\u{D7FF}"), Some("\u{E000}".to_string()));
    }

    #[test]
    fn upserts_number_their_parameters() {
        let s = Statements::new(SqlFlavor::Postgres, "srotax_");
        assert_eq!(
            s.upsert(2),
            "INSERT INTO srotax_state (pipeline, key, value, expires_at) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) \
             ON CONFLICT (pipeline, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
        );
    }
}
