//! The shared backend: tables in PostgreSQL's schema `baton`, so that every
//! host that points at the same database sees the same tenants' data.
//!
//! Only host-written SQL runs here (plugins' own SQL is `crate::sql`, in
//! schemas of their own). Each namespace's rows carry `(tenant, plugin)`; on
//! top of the host's own scoping, row-level security is enabled and forced
//! on every table, with policies on the settings `baton.tenant` and
//! `baton.plugin`, and each transaction runs as `baton_kv`, a role without
//! `BYPASSRLS` that owns nothing: a query the host got wrong still cannot
//! reach another namespace's rows. The quota is kept as on redb, in a usage
//! table updated in the same transaction as the data, and every write first
//! checks the namespace's owner token (the fencing of [`super`]).
//!
//! Jobs, schedules and webhooks are `queue.rs`'s tables, created here too;
//! the dispatcher reads them across tenants, so they are not under
//! row-level security (see there).

mod queue;

use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::sync::RwLock;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::namespace::{Namespace, StorageError, StorageLimits, TenantData, check_key, size_after};

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> StorageError {
        StorageError::Unavailable(match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        })
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> StorageError {
        StorageError::Unavailable(format!("no database connection: {e}"))
    }
}

/// The host's tables, created (idempotently) at start under an advisory lock,
/// so that hosts starting together do not race.
const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS baton;
CREATE TABLE IF NOT EXISTS baton.kv (
    tenant text NOT NULL, plugin text NOT NULL, key bytea NOT NULL, value bytea NOT NULL,
    PRIMARY KEY (tenant, plugin, key));
CREATE TABLE IF NOT EXISTS baton.usage (
    tenant text NOT NULL, plugin text NOT NULL, bytes bigint NOT NULL, PRIMARY KEY (tenant, plugin));
CREATE TABLE IF NOT EXISTS baton.states (
    tenant text NOT NULL, plugin text NOT NULL, version text NOT NULL, state bytea NOT NULL,
    PRIMARY KEY (tenant, plugin));
CREATE TABLE IF NOT EXISTS baton.owners (
    tenant text NOT NULL, plugin text NOT NULL, token bigint NOT NULL, PRIMARY KEY (tenant, plugin));
-- The cluster's ownership record revision the last claim was made under.
ALTER TABLE baton.owners ADD COLUMN IF NOT EXISTS lease bigint NOT NULL DEFAULT 0;
DO $$ BEGIN
    -- Roles belong to the whole server: another database's host may be
    -- creating it at this moment.
    CREATE ROLE baton_kv NOLOGIN NOBYPASSRLS NOINHERIT;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
GRANT baton_kv TO CURRENT_USER;
GRANT USAGE ON SCHEMA baton TO baton_kv;
"#;

/// The tables under row-level security.
const TABLES: [&str; 4] = ["kv", "usage", "states", "owners"];

/// Settings of a transaction's namespace: `plugin` `*` is every plugin of
/// the tenant (the host's export and erase); the tenant is always one.
pub(super) fn scope_sql(tenant: &str, plugin: &str) -> String {
    format!(
        "SET LOCAL ROLE baton_kv; SELECT set_config('baton.tenant', {}, true), set_config('baton.plugin', {}, true)",
        literal(tenant),
        literal(plugin)
    )
}

/// A string literal (names are `[a-z0-9_-]` already; quotes doubled anyway).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The storage tables of one PostgreSQL database.
pub(super) struct Postgres {
    /// `None` once closed.
    pool: RwLock<Option<Pool>>,
    url: String,
    pool_size: usize,
}

impl Postgres {
    /// Connects to `url` with a pool of `pool_size` and creates the tables.
    pub(super) async fn open(url: &str, pool_size: usize) -> Result<Postgres, StorageError> {
        let pool = pool(url, pool_size)?;
        let mut client = pool.get().await?;
        let txn = client.transaction().await?;
        txn.execute("SELECT pg_advisory_xact_lock(7365206731)", &[]).await?;
        txn.batch_execute(SCHEMA).await?;
        txn.batch_execute(Postgres::JOB_SCHEMA).await?;
        for table in TABLES {
            let policy = format!(
                "DROP POLICY IF EXISTS scoped ON baton.{table};
                 CREATE POLICY scoped ON baton.{table} TO baton_kv
                     USING (tenant = current_setting('baton.tenant', true)
                            AND (plugin = current_setting('baton.plugin', true)
                                 OR current_setting('baton.plugin', true) = '*'))
                     WITH CHECK (tenant = current_setting('baton.tenant', true)
                            AND (plugin = current_setting('baton.plugin', true)
                                 OR current_setting('baton.plugin', true) = '*'));
                 ALTER TABLE baton.{table} ENABLE ROW LEVEL SECURITY;
                 ALTER TABLE baton.{table} FORCE ROW LEVEL SECURITY;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON baton.{table} TO baton_kv;"
            );
            txn.batch_execute(&policy).await?;
        }
        txn.commit().await?;
        drop(client);
        Ok(Postgres {
            pool: RwLock::new(Some(pool)),
            url: url.to_owned(),
            pool_size,
        })
    }

    /// Connects again after [`Postgres::close`].
    pub(super) fn reopen(&self) -> Result<(), StorageError> {
        *self.pool.write().unwrap_or_else(|p| p.into_inner()) = Some(pool(&self.url, self.pool_size)?);
        Ok(())
    }

    /// Closes the pool; later calls fail with `Unavailable`.
    pub(super) fn close(&self) {
        if let Some(pool) = self.pool.write().unwrap_or_else(|p| p.into_inner()).take() {
            pool.close();
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        let pool = self.pool.read().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(pool) = pool else {
            return Err(StorageError::Unavailable("the host is shutting down".into()));
        };
        Ok(pool.get().await?)
    }

    pub(super) async fn claim(&self, ns: &Namespace, lease: u64) -> Result<u64, StorageError> {
        let mut client = self.client().await?;
        let txn = scoped(&mut client, &ns.tenant, &ns.plugin).await?;
        let row = txn
            .query_opt(
                "INSERT INTO baton.owners (tenant, plugin, token, lease) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (tenant, plugin) DO UPDATE SET token = baton.owners.token + 1, lease = $3
                 WHERE baton.owners.lease <= $3
                 RETURNING token",
                &[&ns.tenant, &ns.plugin, &(lease as i64)],
            )
            .await?;
        let token = row.map(|row| row.get::<_, i64>(0) as u64);
        if let Some(token) = token {
            // What an older owner left running is due again, in the
            // claim's transaction (see `jobs.rs`).
            Postgres::rescue_jobs(&txn, ns, token).await?;
        }
        txn.commit().await?;
        token.ok_or(StorageError::Fenced)
    }

    /// Runs `statements` in a transaction scoped to `ns`, pipelined with
    /// its start and commit: one round trip once the statements are cached.
    async fn read(&self, ns: &Namespace, statements: &[(&str, Params<'_>)]) -> Result<Vec<Vec<Row>>, StorageError> {
        let client = self.client().await?;
        pipeline(&client, Some(&begin(ns)), statements, Some("COMMIT")).await
    }

    /// A write in a transaction scoped to `ns` and fenced by `token`, in two
    /// round trips: `first` pipelined with the start and the fence; then
    /// `decide` (on `first`'s rows) returns what to write, pipelined with the
    /// commit, or refuses (everything is rolled back).
    async fn write<T>(
        &self,
        ns: &Namespace,
        token: u64,
        first: &[(&str, Params<'_>)],
        decide: impl FnOnce(&[Vec<Row>]) -> Result<(T, Vec<(&'static str, Vec<Param>)>), StorageError>,
    ) -> Result<T, StorageError> {
        self.transact(ns, Some(token), first, decide).await
    }

    /// [`Postgres::write`], fenced only when there is a `token` (a
    /// schedule's slot, an operator's cancel or retry have none).
    async fn transact<T>(
        &self,
        ns: &Namespace,
        token: Option<u64>,
        first: &[(&str, Params<'_>)],
        decide: impl FnOnce(&[Vec<Row>]) -> Result<(T, Vec<(&'static str, Vec<Param>)>), StorageError>,
    ) -> Result<T, StorageError> {
        let client = self.client().await?;
        let fenced = token.is_some();
        let token = token.map(|t| t as i64);
        let fence: [&(dyn ToSql + Sync); 3] = [&ns.tenant, &ns.plugin, &token];
        let statements: Vec<(&str, Params<'_>)> = fenced
            .then_some((FENCE, &fence[..]))
            .into_iter()
            .chain(first.iter().copied())
            .collect();
        let decided = match pipeline(&client, Some(&begin(ns)), &statements, None).await {
            Ok(rows) if fenced && rows[0].is_empty() => Err(StorageError::Fenced),
            Ok(rows) => decide(&rows[usize::from(fenced)..]),
            Err(e) => Err(e),
        };
        let (value, writes) = match decided {
            Ok(decided) => decided,
            Err(e) => {
                rollback(client).await;
                return Err(e);
            }
        };
        let writes: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = writes
            .iter()
            .map(|(sql, params)| (*sql, params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()))
            .collect();
        let writes: Vec<(&str, Params<'_>)> = writes.iter().map(|(sql, p)| (*sql, p.as_slice())).collect();
        // A failed statement makes the COMMIT a rollback.
        pipeline(&client, None, &writes, Some("COMMIT")).await?;
        Ok(value)
    }

    pub(super) async fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_key(key)?;
        let rows = self
            .read(ns, &[(GET, &[&ns.tenant, &ns.plugin, &key.as_bytes()])])
            .await?;
        Ok(rows[0].first().map(|r| r.get(0)))
    }

    pub(super) async fn set(
        &self,
        ns: &Namespace,
        token: u64,
        key: &str,
        value: &[u8],
        limits: StorageLimits,
    ) -> Result<(), StorageError> {
        check_key(key)?;
        if value.len() > limits.max_value_bytes {
            return Err(StorageError::TooLarge);
        }
        let key_bytes = key.as_bytes();
        let first: [(&str, Params<'_>); 2] = [
            (USED_FOR_UPDATE, &[&ns.tenant, &ns.plugin]),
            (SIZE_OF_KEY, &[&ns.tenant, &ns.plugin, &key_bytes]),
        ];
        self.write(ns, token, &first, |rows| {
            let used = rows[0].first().map_or(0, |r| r.get::<_, i64>(0) as u64);
            let old = rows[1].first().map_or(0, |r| r.get::<_, i32>(0) as u64);
            let total = size_after(used, old, (key.len() + value.len()) as u64, limits)?;
            let (tenant, plugin) = (ns.tenant.clone(), ns.plugin.clone());
            let writes = vec![
                (
                    PUT,
                    params![tenant.clone(), plugin.clone(), key.as_bytes().to_vec(), value.to_vec()],
                ),
                (SET_USED, params![tenant, plugin, total as i64]),
            ];
            Ok(((), writes))
        })
        .await
    }

    pub(super) async fn delete(&self, ns: &Namespace, token: u64, key: &str) -> Result<bool, StorageError> {
        check_key(key)?;
        let key_bytes = key.as_bytes();
        let first: [(&str, Params<'_>); 2] = [
            (USED_FOR_UPDATE, &[&ns.tenant, &ns.plugin]),
            (SIZE_OF_KEY, &[&ns.tenant, &ns.plugin, &key_bytes]),
        ];
        self.write(ns, token, &first, |rows| {
            let used = rows[0].first().map_or(0, |r| r.get::<_, i64>(0) as u64);
            let Some(freed) = rows[1].first().map(|r| r.get::<_, i32>(0) as u64) else {
                return Ok((false, Vec::new()));
            };
            let (tenant, plugin) = (ns.tenant.clone(), ns.plugin.clone());
            let writes = vec![
                (DELETE, params![tenant.clone(), plugin.clone(), key.as_bytes().to_vec()]),
                (SET_USED, params![tenant, plugin, used.saturating_sub(freed) as i64]),
            ];
            Ok((true, writes))
        })
        .await
    }

    pub(super) async fn list(&self, ns: &Namespace, prefix: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        // Keys are bytes, in byte order: a prefix is the range from it to
        // the first byte string after every string that starts with it.
        let start = prefix.as_bytes();
        let end = after_prefix(start);
        let end = end.as_deref();
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .read(ns, &[(LIST, &[&ns.tenant, &ns.plugin, &start, &end, &limit])])
            .await?;
        Ok(rows[0]
            .iter()
            .map(|r| String::from_utf8_lossy(r.get::<_, &[u8]>(0)).into_owned())
            .collect())
    }

    pub(super) async fn save_state(
        &self,
        ns: &Namespace,
        token: u64,
        version: &str,
        state: &[u8],
    ) -> Result<(), StorageError> {
        self.write(ns, token, &[], |_| {
            let writes = vec![(
                SAVE_STATE,
                params![ns.tenant.clone(), ns.plugin.clone(), version.to_owned(), state.to_vec()],
            )];
            Ok(((), writes))
        })
        .await
    }

    pub(super) async fn kept_state(&self, ns: &Namespace) -> Result<Option<(String, Vec<u8>)>, StorageError> {
        let rows = self.read(ns, &[(KEPT_STATE, &[&ns.tenant, &ns.plugin])]).await?;
        Ok(rows[0].first().map(|r| (r.get(0), r.get(1))))
    }

    pub(super) async fn used(&self, ns: &Namespace) -> Result<u64, StorageError> {
        let rows = self.read(ns, &[(USED, &[&ns.tenant, &ns.plugin])]).await?;
        Ok(rows[0].first().map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    pub(super) async fn export(&self, tenant: &str) -> Result<Vec<TenantData>, StorageError> {
        let mut client = self.client().await?;
        let txn = scoped(&mut client, tenant, "*").await?;
        let mut out: Vec<TenantData> = Vec::new();
        let keys = txn
            .query(
                "SELECT plugin, key, value FROM baton.kv WHERE tenant = $1 ORDER BY plugin, key",
                &[&tenant],
            )
            .await?;
        for row in keys {
            let key = String::from_utf8_lossy(row.get::<_, &[u8]>(1)).into_owned();
            TenantData::of(&mut out, row.get(0)).keys.push((key, row.get(2)));
        }
        let states = txn
            .query(
                "SELECT plugin, version, state FROM baton.states WHERE tenant = $1",
                &[&tenant],
            )
            .await?;
        for row in states {
            TenantData::of(&mut out, row.get(0)).state = Some((row.get(1), row.get(2)));
        }
        txn.commit().await?;
        out.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        Ok(out)
    }

    pub(super) async fn erase(&self, tenant: &str) -> Result<(), StorageError> {
        let mut client = self.client().await?;
        let txn = scoped(&mut client, tenant, "*").await?;
        for table in ["kv", "usage", "states"] {
            txn.execute(&format!("DELETE FROM baton.{table} WHERE tenant = $1"), &[&tenant])
                .await?;
        }
        txn.execute(
            "UPDATE baton.owners SET token = token + 1 WHERE tenant = $1",
            &[&tenant],
        )
        .await?;
        Postgres::erase_jobs(&txn, tenant).await?;
        txn.commit().await?;
        Ok(())
    }
}

/// The least byte string greater than every one that starts with `prefix`;
/// `None` when there is none (empty, or all `0xff`).
fn after_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn pool(url: &str, size: usize) -> Result<Pool, StorageError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| StorageError::Unavailable(format!("storage.postgres_url: {e}")))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(5)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .build()
        .map_err(|e| StorageError::Unavailable(format!("storage pool: {e}")))
}

/// A transaction as `baton_kv`, scoped to one namespace (`plugin` `*`: the
/// whole tenant, for reading and deleting only).
async fn scoped<'a>(
    client: &'a mut deadpool_postgres::Object,
    tenant: &str,
    plugin: &str,
) -> Result<Transaction<'a>, StorageError> {
    let txn = client.transaction().await?;
    txn.batch_execute(&scope_sql(tenant, plugin)).await?;
    Ok(txn)
}

/// The parameters of one statement.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// An owned parameter, for statements a write decides on.
type Param = Box<dyn ToSql + Sync + Send>;

/// Owned parameters.
macro_rules! params {
    ($($value:expr),* $(,)?) => { vec![$(Box::new($value) as Param),*] };
}
use params;

/// Refuses a write by an owner older than the namespace's current one (see
/// `cluster.md`'s fencing): no row returned. The row stays locked until the
/// transaction ends.
const FENCE: &str =
    "UPDATE baton.owners SET token = $3 WHERE tenant = $1 AND plugin = $2 AND token <= $3 RETURNING token";
const GET: &str = "SELECT value FROM baton.kv WHERE tenant = $1 AND plugin = $2 AND key = $3";
const USED: &str = "SELECT bytes FROM baton.usage WHERE tenant = $1 AND plugin = $2";
const USED_FOR_UPDATE: &str = "SELECT bytes FROM baton.usage WHERE tenant = $1 AND plugin = $2 FOR UPDATE";
const SIZE_OF_KEY: &str =
    "SELECT octet_length(key) + octet_length(value) FROM baton.kv WHERE tenant = $1 AND plugin = $2 AND key = $3";
const PUT: &str = "INSERT INTO baton.kv (tenant, plugin, key, value) VALUES ($1, $2, $3, $4)
     ON CONFLICT (tenant, plugin, key) DO UPDATE SET value = EXCLUDED.value";
const DELETE: &str = "DELETE FROM baton.kv WHERE tenant = $1 AND plugin = $2 AND key = $3";
const SET_USED: &str = "INSERT INTO baton.usage (tenant, plugin, bytes) VALUES ($1, $2, $3)
     ON CONFLICT (tenant, plugin) DO UPDATE SET bytes = EXCLUDED.bytes";
const LIST: &str = "SELECT key FROM baton.kv WHERE tenant = $1 AND plugin = $2 AND key >= $3
     AND ($4::bytea IS NULL OR key < $4) ORDER BY key LIMIT $5";
const SAVE_STATE: &str = "INSERT INTO baton.states (tenant, plugin, version, state) VALUES ($1, $2, $3, $4)
     ON CONFLICT (tenant, plugin) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state";
const KEPT_STATE: &str = "SELECT version, state FROM baton.states WHERE tenant = $1 AND plugin = $2";

/// The start of a transaction scoped to `ns`.
fn begin(ns: &Namespace) -> String {
    format!("BEGIN; {}", scope_sql(&ns.tenant, &ns.plugin))
}

/// Sends `prelude` (a batch), `statements` and `epilogue` (a batch) at once,
/// in order, and waits for all of their answers: one round trip (the
/// statements are prepared once per connection, in one more). The first
/// error is returned; a statement after a failed one fails too, and a
/// `COMMIT` after it rolls back.
async fn pipeline(
    client: &Object,
    prelude: Option<&str>,
    statements: &[(&str, Params<'_>)],
    epilogue: Option<&str>,
) -> Result<Vec<Vec<Row>>, StorageError> {
    let prepared =
        futures_util::future::try_join_all(statements.iter().map(|(sql, _)| client.prepare_cached(sql))).await?;
    let batch = async |sql: Option<&str>| match sql {
        Some(sql) => client.batch_execute(sql).await,
        None => Ok(()),
    };
    let queries = prepared
        .iter()
        .zip(statements)
        .map(|(statement, (_, params))| client.query(statement, params));
    let (begun, rows, ended) = tokio::join!(batch(prelude), futures_util::future::join_all(queries), batch(epilogue));
    begun?;
    let rows = rows.into_iter().collect::<Result<Vec<_>, _>>()?;
    ended?;
    Ok(rows)
}

/// Ends a transaction that will not commit; a connection that cannot is
/// closed instead of going back to the pool.
async fn rollback(client: Object) {
    if client.batch_execute("ROLLBACK").await.is_err() {
        drop(Object::take(client));
    }
}
