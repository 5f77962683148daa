//! A tenant's role and schema: created at its first SQL call, measured for
//! the quota, dropped with the tenant's data.

use std::collections::HashSet;

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;

use super::error::SqlError;
use crate::config::SqlConfig;
use crate::storage::Namespace;

/// The role and password of a tenant's connections.
pub(super) struct Login {
    /// Role and schema name, `t_` and 16 hex digits.
    pub role: String,
    pub password: String,
}

/// Once per database: the table of roles, and nothing for everyone in
/// `public` or in temporary tables.
pub(super) async fn prepare_database(admin: &Pool) -> Result<(), SqlError> {
    let mut client = admin.get().await?;
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock(7365206732)", &[]).await?;
    txn.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS baton;
         REVOKE ALL ON SCHEMA baton FROM PUBLIC;
         CREATE TABLE IF NOT EXISTS baton.sql_roles (
             tenant text NOT NULL, plugin text NOT NULL, role text NOT NULL UNIQUE,
             password text NOT NULL, PRIMARY KEY (tenant, plugin));
         CREATE TABLE IF NOT EXISTS baton.sql_migrations (
             role text NOT NULL, id text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (role, id));
         REVOKE ALL ON SCHEMA public FROM PUBLIC;",
    )
    .await?;
    let database: String = txn.query_one("SELECT current_database()", &[]).await?.get(0);
    txn.batch_execute(&format!(
        "REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC",
        ident(&database)
    ))
    .await?;
    txn.commit().await?;
    Ok(())
}

/// `ns`'s role and password, creating role and schema if it has none.
pub(super) async fn provision(
    admin: &Pool,
    config: &SqlConfig,
    may_limit_temp: &std::sync::atomic::AtomicBool,
    ns: &Namespace,
) -> Result<Login, SqlError> {
    let mut client = admin.get().await?;
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock(7365206733)", &[]).await?;
    let found = txn
        .query_opt(
            "SELECT role, password FROM baton.sql_roles WHERE tenant = $1 AND plugin = $2",
            &[&ns.tenant, &ns.plugin],
        )
        .await?;
    if let Some(row) = found {
        txn.commit().await?;
        return Ok(Login {
            role: row.get(0),
            password: row.get(1),
        });
    }
    let role = format!("t_{}", random_hex(8)?);
    let password = random_hex(24)?;
    let connections = config.connections_per_tenant.max(1) + 1;
    txn.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{password}' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
             NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {connections};
         GRANT {role} TO CURRENT_USER;
         CREATE SCHEMA {role} AUTHORIZATION {role};
         ALTER ROLE {role} SET search_path = {role};
         ALTER ROLE {role} SET statement_timeout = {timeout};
         ALTER ROLE {role} SET idle_in_transaction_session_timeout = {idle};
         ALTER ROLE {role} SET lock_timeout = {timeout};",
        timeout = config.statement_timeout_ms,
        idle = config.statement_timeout_ms * 2,
    ))
    .await?;
    if may_limit_temp.load(std::sync::atomic::Ordering::Relaxed) {
        // A superuser-only setting: a host role that may not set it leaves it
        // at the server's default, and says so once.
        txn.batch_execute("SAVEPOINT temp_limit").await?;
        let limit = (config.schema_quota_mib << 10).max(1024);
        match txn
            .batch_execute(&format!("ALTER ROLE {role} SET temp_file_limit = {limit}"))
            .await
        {
            Ok(()) => txn.batch_execute("RELEASE SAVEPOINT temp_limit").await?,
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                txn.batch_execute("ROLLBACK TO SAVEPOINT temp_limit").await?;
                may_limit_temp.store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    "the database role may not set temp_file_limit: plugins' sorts and hashes may spill to disk without a limit"
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    txn.execute(
        "INSERT INTO baton.sql_roles (tenant, plugin, role, password) VALUES ($1, $2, $3, $4)",
        &[&ns.tenant, &ns.plugin, &role, &password],
    )
    .await?;
    txn.commit().await?;
    tracing::info!(tenant = %ns.tenant, plugin = %ns.plugin, %role, "created the tenant's SQL schema");
    Ok(Login { role, password })
}

/// Schemas larger than `quota` bytes.
pub(super) async fn over_quota(admin: &Pool, quota: u64) -> Result<HashSet<String>, SqlError> {
    let client = admin.get().await?;
    let rows = client
        .query(
            "SELECT r.role FROM baton.sql_roles r
             JOIN pg_namespace n ON n.nspname = r.role
             JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm', 'p')
             GROUP BY r.role HAVING sum(pg_total_relation_size(c.oid))::bigint > $1",
            &[&(quota.min(i64::MAX as u64) as i64)],
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// The roles (and schemas) of `tenant`'s plugins.
pub(super) async fn roles_of(admin: &Pool, tenant: &str) -> Result<Vec<(String, String)>, SqlError> {
    let client = admin.get().await?;
    let rows = client
        .query(
            "SELECT plugin, role FROM baton.sql_roles WHERE tenant = $1 ORDER BY plugin",
            &[&tenant],
        )
        .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// One table of a tenant's schema, for an export.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TableExport {
    /// Its name.
    pub name: String,
    /// (name, type) of each column, in order.
    pub columns: Vec<(String, String)>,
    /// Each row as a JSON object (PostgreSQL's `to_jsonb`).
    pub rows: Vec<serde_json::Value>,
}

/// Every table of `schema` with its rows, read as the host's role (a member
/// of the tenant's).
pub(super) async fn export_schema(admin: &Pool, schema: &str) -> Result<Vec<TableExport>, SqlError> {
    let client = admin.get().await?;
    let tables = client
        .query(
            "SELECT table_name FROM information_schema.tables
             WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY table_name",
            &[&schema],
        )
        .await?;
    let mut out = Vec::new();
    for table in tables {
        let name: String = table.get(0);
        let columns = client
            .query(
                "SELECT column_name, data_type FROM information_schema.columns
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[&schema, &name],
            )
            .await?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let rows = client
            .query(
                &format!("SELECT to_jsonb(t)::text FROM {}.{} t", ident(schema), ident(&name)),
                &[],
            )
            .await?
            .into_iter()
            .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap_or(serde_json::Value::Null))
            .collect();
        out.push(TableExport { name, columns, rows });
    }
    Ok(out)
}

/// Drops `tenant`'s schemas and roles (their connections are ended first).
pub(super) async fn drop_tenant(admin: &Pool, tenant: &str) -> Result<(), SqlError> {
    let roles = roles_of(admin, tenant).await?;
    let mut client = admin.get().await?;
    for (_, role) in roles {
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await?;
        let txn = client.transaction().await?;
        txn.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {role} CASCADE; DROP ROLE IF EXISTS {role}"
        ))
        .await?;
        txn.execute("DELETE FROM baton.sql_migrations WHERE role = $1", &[&role])
            .await?;
        txn.execute("DELETE FROM baton.sql_roles WHERE role = $1", &[&role])
            .await?;
        txn.commit().await?;
    }
    Ok(())
}

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `bytes` random bytes from the kernel, in hex.
fn random_hex(bytes: usize) -> Result<String, SqlError> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| SqlError::Unavailable(format!("no randomness for a role name: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
