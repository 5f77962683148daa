//! A tenant role's pool, and how statements run on one of its connections:
//! parameters in, rows out within the result limits.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::{StreamExt, pin_mut};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::error::SqlError;
use crate::bindings::baton::plugin::sql::{Column, Rows, Statement, Value};

/// A tenant role's pool.
pub(super) struct TenantDb {
    pub(super) schema: String,
    pub(super) pool: Pool,
    pub(super) last_used: Mutex<Instant>,
    /// The migrations its schema has had, once read (see `migrate.rs`).
    pub(super) applied: Mutex<Option<HashSet<String>>>,
}

/// Runs each statement on `client` (in a transaction); their counts of
/// changed rows.
pub(super) async fn run_all(
    client: &impl deadpool_postgres::GenericClient,
    statements: &[Statement],
) -> Result<Vec<u64>, SqlError> {
    let mut counts = Vec::with_capacity(statements.len());
    for statement in statements {
        counts.push(
            client
                .execute_raw(statement.sql.as_str(), params(&statement.params))
                .await?,
        );
    }
    Ok(counts)
}

pub(super) fn params(values: &[Value]) -> impl ExactSizeIterator<Item = &(dyn ToSql + Sync)> + Send {
    values.iter().map(|v| v as &(dyn ToSql + Sync))
}

/// Streams a query's rows, refusing a result over `(rows, bytes)`.
pub(super) async fn collect(
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

pub(super) fn pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, SqlError> {
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
