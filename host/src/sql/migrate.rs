//! A version's schema migrations, applied to one tenant's schema in the
//! transaction that moves the tenant to that version.
//!
//! [`Sql::begin_migrations`] opens a transaction on one of the tenant's
//! connections and applies the version's migrations its schema has not had
//! (recorded in the schema's own `_baton_migrations` table, in the same
//! transaction). The instance's `init` and `import-state` then run their SQL
//! inside it ([`SchemaChange`], each call under a savepoint), and the slot
//! commits once the tenant is on the new version. Dropped uncommitted (a
//! refusal, a trap), the connection is closed instead of going back to the
//! pool, and PostgreSQL rolls the DDL back with everything else.

use std::collections::HashSet;

use std::sync::Arc;

use super::client::{TenantDb, collect, run_all};
use super::error::SqlError;
use crate::bindings::baton::plugin::sql::{Rows, Statement, Value};
use crate::bindings::baton::plugin::types::Migration;
use crate::storage::Namespace;

/// A tenant's schema change in progress: an open transaction.
pub struct SchemaChange {
    /// `None` once committed.
    client: Option<deadpool_postgres::Object>,
    limits: (usize, usize),
    /// What the commit adds to the tenant's record of applied migrations.
    applied: Vec<String>,
    db: Arc<TenantDb>,
}

/// Opens a schema change on one of `db`'s connections with the
/// `migrations` its schema has not had applied: `None` when it has had
/// them all. `limits` bound the results of the plugin's queries inside it.
pub(super) async fn begin(
    db: Arc<TenantDb>,
    limits: (usize, usize),
    ns: &Namespace,
    migrations: &[Migration],
) -> Result<Option<SchemaChange>, SqlError> {
    if let Some(applied) = &*db.applied.lock().unwrap_or_else(|p| p.into_inner())
        && migrations.iter().all(|m| applied.contains(&m.id))
    {
        return Ok(None);
    }
    let client = db.pool.get().await?;
    client
        .batch_execute(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS _baton_migrations (
                 id text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
    let mut change = SchemaChange {
        client: Some(client),
        limits,
        applied: Vec::new(),
        db: db.clone(),
    };
    let client = change.client()?;
    let mut newly = Vec::new();
    let applied: HashSet<String> = client
        .query("SELECT id FROM _baton_migrations", &[])
        .await?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    for migration in migrations.iter().filter(|m| !applied.contains(&m.id)) {
        client.batch_execute(&migration.sql).await.map_err(|e| {
            let e = SqlError::from(e);
            SqlError::Invalid(format!("migration {} failed: {e}", migration.id))
        })?;
        client
            .execute("INSERT INTO _baton_migrations (id) VALUES ($1)", &[&migration.id])
            .await?;
        tracing::info!(tenant = %ns.tenant, id = %migration.id, "applied a schema migration (not yet committed)");
        newly.push(migration.id.clone());
    }
    if newly.is_empty() {
        *db.applied.lock().unwrap_or_else(|p| p.into_inner()) = Some(applied);
        change.rollback().await;
        return Ok(None);
    }
    let mut known = applied;
    known.extend(newly);
    change.applied = known.into_iter().collect();
    Ok(Some(change))
}

impl SchemaChange {
    fn client(&self) -> Result<&deadpool_postgres::Object, SqlError> {
        self.client
            .as_ref()
            .ok_or_else(|| SqlError::Unavailable("the schema change has ended".into()))
    }

    /// Runs `work` under a savepoint: a failed call leaves the change as it
    /// was before the call, for the plugin to handle.
    async fn under_savepoint<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let client = self.client()?;
        client.batch_execute("SAVEPOINT baton_call").await?;
        match work(client).await {
            Ok(value) => {
                client.batch_execute("RELEASE SAVEPOINT baton_call").await?;
                Ok(value)
            }
            Err(e) => {
                client.batch_execute("ROLLBACK TO SAVEPOINT baton_call").await?;
                Err(e)
            }
        }
    }

    /// `query`, inside the change.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Rows, SqlError> {
        let limits = self.limits;
        self.under_savepoint(async |client| collect(client, sql, params, limits).await)
            .await
    }

    /// `execute` and `transaction`, inside the change.
    pub async fn run(&self, statements: &[Statement]) -> Result<Vec<u64>, SqlError> {
        self.under_savepoint(async |client| run_all(client, statements).await)
            .await
    }

    /// Makes the change durable.
    pub async fn commit(mut self) -> Result<(), SqlError> {
        let client = self.client()?;
        client.batch_execute("COMMIT").await?;
        self.client = None;
        let applied = std::mem::take(&mut self.applied).into_iter().collect();
        *self.db.applied.lock().unwrap_or_else(|p| p.into_inner()) = Some(applied);
        Ok(())
    }

    async fn rollback(mut self) {
        if let Some(client) = self.client.take()
            && client.batch_execute("ROLLBACK").await.is_err()
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Drop for SchemaChange {
    fn drop(&mut self) {
        // Not committed: closing the connection rolls everything back.
        if let Some(client) = self.client.take() {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}
