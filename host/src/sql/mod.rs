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
//! Files: `error.rs` (why a call failed), `values.rs` (parameters and
//! columns), `client.rs` (a tenant's pool, statements on a connection),
//! `roles.rs` (creating, measuring, exporting and dropping a tenant's role
//! and schema), `migrate.rs` (a version's migrations, applied in the
//! transaction of a tenant's move to it).

mod client;
mod error;
mod migrate;
mod roles;
mod values;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio_postgres::NoTls;

pub use crate::bindings::baton::plugin::sql::{Rows, Statement, Value};
use crate::config::SqlConfig;
use crate::storage::Namespace;
use client::{TenantDb, collect, pool, run_all};
pub use error::SqlError;
pub use migrate::SchemaChange;
pub use roles::TableExport;

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
        let login = roles::provision(&self.admin, &self.config, &self.may_limit_temp, ns).await?;
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
        self.over_quota
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(schema)
    }

    /// Starts applying `migrations` to `ns`'s schema (see `migrate.rs`):
    /// `None` when it has had them all.
    pub async fn begin_migrations(
        &self,
        ns: &Namespace,
        migrations: &[crate::bindings::baton::plugin::types::Migration],
    ) -> Result<Option<SchemaChange>, SqlError> {
        if migrations.is_empty() {
            return Ok(None);
        }
        let db = self.tenant(ns).await?;
        let limits = (self.config.max_rows, self.config.max_result_bytes);
        migrate::begin(db, limits, ns, migrations).await
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

/// Whether `sql` is a statement that frees space (allowed over quota).
fn frees_space(sql: &str) -> bool {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default();
    ["delete", "truncate", "drop"]
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
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
