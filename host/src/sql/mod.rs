//! Plugins' own SQL (`baton:plugin/sql`), each (tenant, plugin) in a schema
//! of its own on the host's PostgreSQL.
//!
//! **Isolation** is PostgreSQL's own: every (tenant, plugin) has a login role
//! that owns one schema, both named `t_` and 16 random hex digits (opaque:
//! the catalogs list every schema's name, so a name must say nothing about
//! its tenant), recorded in `baton.sql_roles`, which only the host's role can
//! read. The role is not a member of any other role, cannot create roles or
//! databases, and its settings carry the limits: `search_path` (its schema),
//! `statement_timeout`, `idle_in_transaction_session_timeout`,
//! `temp_file_limit` (when the host's role may set it) and a connection
//! limit. `public` and temporary tables are revoked from everyone. A plugin
//! may `SET` what it likes: every connection is reset (`RESET ALL`, ...)
//! when it goes back to the pool, and a host-side deadline cancels a call
//! that outlives the statement timeout anyway.
//!
//! **Pools**: a small pool per role, opened at the tenant's first call and
//! closed after `idle_close_secs` unused. A call waits on the network inside
//! the tenant's call: it blocks that tenant only.
//!
//! **Quota**: PostgreSQL has none per schema. Every `quota_check_secs` the
//! host measures each schema (`pg_total_relation_size` of its relations); a
//! schema over `schema_quota_mib` then runs its calls in read-only
//! transactions, so writes fail with `quota-exceeded`, except statements
//! that start with `DELETE`, `TRUNCATE` or `DROP`, which free space.
//!
//! **Results** are bounded in rows (`max_rows`) and bytes
//! (`max_result_bytes`): a larger one is `too-many-rows`, never truncated.
//!
//! Files: `values.rs` (parameters and columns), `roles.rs` (creating and
//! dropping a tenant's role and schema, export), `migrate.rs` (a version's
//! migrations, applied in the transaction of a tenant's move to it).

mod migrate;
mod roles;
pub mod values;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::{StreamExt, pin_mut};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::config::SqlConfig;
use crate::storage::Namespace;
pub use crate::bindings::baton::plugin::sql::{Column, Rows, Statement, Value};
pub use migrate::SchemaChange;
pub use roles::TableExport;

/// Why a SQL call failed (the WIT `error`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SqlError {
    /// The statement or a parameter cannot be used as given.
    #[error("invalid: {0}")]
    Invalid(String),
    /// PostgreSQL refused the statement.
    #[error("{code}: {message}")]
    Db {
        /// SQLSTATE.
        code: String,
        /// Its message.
        message: String,
        /// Its detail, if any.
        detail: Option<String>,
    },
    /// Cancelled at the statement timeout.
    #[error("timeout")]
    Timeout,
    /// The result is over the row or byte limit.
    #[error("too many rows")]
    TooManyRows,
    /// The schema is over its disk quota.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// Serialization failure or deadlock: retryable.
    #[error("conflict")]
    Conflict,
    /// The database cannot be used now.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<tokio_postgres::Error> for SqlError {
    fn from(e: tokio_postgres::Error) -> SqlError {
        let Some(db) = e.as_db_error() else {
            if e.is_closed() {
                return SqlError::Unavailable("the database connection closed".into());
            }
            // A parameter that could not be converted, or a column that
            // cannot be read, is the caller's doing; the rest is the link.
            let text = match std::error::Error::source(&e) {
                Some(source) => source.to_string(),
                None => e.to_string(),
            };
            return if e.to_string().contains("error serializing") || e.to_string().contains("error deserializing") {
                SqlError::Invalid(text)
            } else {
                SqlError::Unavailable(text)
            };
        };
        match *db.code() {
            SqlState::QUERY_CANCELED => SqlError::Timeout,
            SqlState::T_R_SERIALIZATION_FAILURE | SqlState::T_R_DEADLOCK_DETECTED => SqlError::Conflict,
            SqlState::READ_ONLY_SQL_TRANSACTION => SqlError::QuotaExceeded,
            SqlState::TOO_MANY_CONNECTIONS => SqlError::Unavailable("too many connections".into()),
            _ => SqlError::Db {
                code: db.code().code().to_owned(),
                message: db.message().to_owned(),
                detail: db.detail().map(str::to_owned),
            },
        }
    }
}

impl From<deadpool_postgres::PoolError> for SqlError {
    fn from(e: deadpool_postgres::PoolError) -> SqlError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => SqlError::from(e),
            e => SqlError::Unavailable(format!("no database connection: {e}")),
        }
    }
}

/// Most statements in one `transaction` call.
pub const MAX_STATEMENTS: usize = 256;

/// Plugins' SQL on one PostgreSQL database.
pub struct Sql {
    /// The host's own connections (creating roles, measuring schemas).
    admin: Pool,
    /// The host's connection settings, which tenant roles' are made from.
    base: tokio_postgres::Config,
    config: SqlConfig,
    /// Open pools of tenant roles.
    tenants: Mutex<HashMap<Namespace, Arc<TenantDb>>>,
    /// Schemas over their quota at the last measure.
    over_quota: Mutex<HashSet<String>>,
    /// One provisioning at a time in this process (the database's advisory
    /// lock covers other hosts).
    provisioning: tokio::sync::Mutex<()>,
    /// Whether the host's role may set `temp_file_limit` on roles.
    may_limit_temp: std::sync::atomic::AtomicBool,
}

/// A tenant role's pool.
struct TenantDb {
    schema: String,
    pool: Pool,
    last_used: Mutex<Instant>,
    /// The migrations its schema has had, once read (see `migrate.rs`).
    applied: Mutex<Option<HashSet<String>>>,
}

impl Sql {
    /// Connects to `url` as the host's role and starts the quota and idle
    /// pool keepers (they end when the returned value is dropped).
    pub async fn open(url: &str, config: SqlConfig) -> Result<Arc<Sql>, SqlError> {
        let base: tokio_postgres::Config = url
            .parse()
            .map_err(|e| SqlError::Unavailable(format!("storage.postgres_url: {e}")))?;
        let admin = pool(base.clone(), 4)?;
        roles::prepare_database(&admin).await?;
        let sql = Arc::new(Sql {
            admin,
            base,
            config,
            tenants: Mutex::default(),
            over_quota: Mutex::default(),
            provisioning: tokio::sync::Mutex::new(()),
            may_limit_temp: std::sync::atomic::AtomicBool::new(true),
        });
        tokio::spawn(keep(Arc::downgrade(&sql)));
        Ok(sql)
    }

    /// The pool of `ns`'s role, creating the role and schema at first use.
    async fn tenant(&self, ns: &Namespace) -> Result<Arc<TenantDb>, SqlError> {
        if let Some(db) = self.lock_tenants().get(ns) {
            *db.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            return Ok(db.clone());
        }
        let _one = self.provisioning.lock().await;
        if let Some(db) = self.lock_tenants().get(ns) {
            return Ok(db.clone());
        }
        let login = roles::provision(self, ns).await?;
        let mut config = self.base.clone();
        config.user(&login.role).password(&login.password);
        let db = Arc::new(TenantDb {
            schema: login.role,
            pool: pool(config, self.config.connections_per_tenant.max(1))?,
            last_used: Mutex::new(Instant::now()),
            applied: Mutex::new(None),
        });
        self.lock_tenants().insert(ns.clone(), db.clone());
        Ok(db)
    }

    fn lock_tenants(&self) -> std::sync::MutexGuard<'_, HashMap<Namespace, Arc<TenantDb>>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_over_quota(&self, schema: &str) -> bool {
        self.over_quota.lock().unwrap_or_else(|p| p.into_inner()).contains(schema)
    }

    /// Every schema of `tenant` (plugin by plugin) with its tables and rows.
    pub async fn export(&self, tenant: &str) -> Result<Vec<(String, Vec<TableExport>)>, SqlError> {
        let mut out = Vec::new();
        for (plugin, role) in roles::roles_of(&self.admin, tenant).await? {
            out.push((plugin, roles::export_schema(&self.admin, &role).await?));
        }
        Ok(out)
    }

    /// The plugins that have a schema for `tenant`.
    pub async fn plugins_of(&self, tenant: &str) -> Result<Vec<String>, SqlError> {
        Ok(roles::roles_of(&self.admin, tenant)
            .await?
            .into_iter()
            .map(|(plugin, _)| plugin)
            .collect())
    }

    /// Drops every schema and role of `tenant`, closing their connections.
    pub async fn drop_tenant(&self, tenant: &str) -> Result<(), SqlError> {
        self.lock_tenants().retain(|ns, _| ns.tenant != tenant);
        roles::drop_tenant(&self.admin, tenant).await
    }

    /// The host-side deadline of one call: the statement timeout, and a
    /// margin for the network.
    fn deadline(&self, statements: usize) -> Duration {
        Duration::from_millis(self.config.statement_timeout_ms) * statements.max(1) as u32 + Duration::from_secs(2)
    }

    /// Runs one statement and returns its rows, within the result limits.
    pub async fn query(&self, ns: &Namespace, sql: &str, params: &[Value]) -> Result<Rows, SqlError> {
        let db = self.tenant(ns).await?;
        let read_only = self.is_over_quota(&db.schema) && !frees_space(sql);
        let limits = (self.config.max_rows, self.config.max_result_bytes);
        self.bounded(&db, 1, async |client| {
            if !read_only {
                return collect(&*client, sql, params, limits).await;
            }
            let txn = client.build_transaction().read_only(true).start().await?;
            let rows = collect(&txn, sql, params, limits).await;
            txn.rollback().await?;
            rows
        })
        .await
    }

    /// Runs one statement; the count of rows it changed.
    pub async fn execute(&self, ns: &Namespace, sql: String, params: Vec<Value>) -> Result<u64, SqlError> {
        let statement = Statement { sql, params };
        Ok(self.transaction(ns, &[statement]).await?.pop().unwrap_or(0))
    }

    /// Runs `statements` in one transaction, all or nothing.
    pub async fn transaction(&self, ns: &Namespace, statements: &[Statement]) -> Result<Vec<u64>, SqlError> {
        if statements.len() > MAX_STATEMENTS {
            return Err(SqlError::Invalid(format!("more than {MAX_STATEMENTS} statements")));
        }
        let db = self.tenant(ns).await?;
        let read_only = self.is_over_quota(&db.schema) && !statements.iter().all(|s| frees_space(&s.sql));
        self.bounded(&db, statements.len(), async |client| {
            let txn = client.build_transaction().read_only(read_only).start().await?;
            let counts = run_all(&txn, statements).await?;
            txn.commit().await?;
            Ok(counts)
        })
        .await
    }

    /// Runs `work` on a connection of `db` until the host-side deadline;
    /// past it the query is cancelled and the connection is not reused.
    async fn bounded<T>(
        &self,
        db: &TenantDb,
        statements: usize,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let mut client = db.pool.get().await?;
        let token = client.cancel_token();
        let outcome = tokio::time::timeout(self.deadline(statements), work(&mut client)).await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                let _ = token.cancel_query(NoTls).await;
                drop(deadpool_postgres::Object::take(client));
                Err(SqlError::Timeout)
            }
        }
    }
}

/// Runs each statement on `client` (in a transaction); their counts of
/// changed rows.
async fn run_all(
    client: &impl deadpool_postgres::GenericClient,
    statements: &[Statement],
) -> Result<Vec<u64>, SqlError> {
    let mut counts = Vec::with_capacity(statements.len());
    for statement in statements {
        counts.push(client.execute_raw(statement.sql.as_str(), params(&statement.params)).await?);
    }
    Ok(counts)
}

fn params(values: &[Value]) -> impl ExactSizeIterator<Item = &(dyn ToSql + Sync)> + Send {
    values.iter().map(|v| v as &(dyn ToSql + Sync))
}

/// Streams a query's rows, refusing a result over `(rows, bytes)`.
async fn collect(
    client: &impl deadpool_postgres::GenericClient,
    sql: &str,
    values: &[Value],
    (max_rows, max_bytes): (usize, usize),
) -> Result<Rows, SqlError> {
    let statement = client.prepare(sql).await?;
    let columns = statement
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            type_name: c.type_().name().to_owned(),
        })
        .collect();
    let stream = client.query_raw(&statement, params(values)).await?;
    pin_mut!(stream);
    let (mut rows, mut bytes) = (Vec::new(), 0usize);
    while let Some(row) = stream.next().await {
        let row = row?;
        if rows.len() == max_rows {
            return Err(SqlError::TooManyRows);
        }
        let mut values = Vec::with_capacity(row.len());
        for i in 0..row.len() {
            let value: Value = row.try_get(i).map_err(|e| {
                SqlError::Invalid(std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()))
            })?;
            bytes += value.size();
            values.push(value);
        }
        if bytes > max_bytes {
            return Err(SqlError::TooManyRows);
        }
        rows.push(values);
    }
    Ok(Rows { columns, rows })
}

/// Whether `sql` is a statement that frees space (allowed over quota).
fn frees_space(sql: &str) -> bool {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default();
    ["delete", "truncate", "drop"].iter().any(|k| first.eq_ignore_ascii_case(k))
}

fn pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, SqlError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // Whatever a plugin `SET` is undone before the next call.
            recycling_method: RecyclingMethod::Clean,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| SqlError::Unavailable(format!("sql pool: {e}")))
}

/// Measures schemas and closes idle pools, until the [`Sql`] is dropped.
async fn keep(sql: std::sync::Weak<Sql>) {
    let mut next_measure = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(sql) = sql.upgrade() else { return };
        let idle = Duration::from_secs(sql.config.idle_close_secs);
        sql.lock_tenants()
            .retain(|_, db| db.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < idle);
        if Instant::now() >= next_measure {
            next_measure = Instant::now() + Duration::from_secs(sql.config.quota_check_secs.max(1));
            match roles::over_quota(&sql.admin, sql.config.schema_quota_mib << 20).await {
                Ok(over) => *sql.over_quota.lock().unwrap_or_else(|p| p.into_inner()) = over,
                Err(e) => tracing::warn!("cannot measure the SQL schemas: {e}"),
            }
        }
    }
}
