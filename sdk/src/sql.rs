//! SQL in this tenant's own PostgreSQL schema (granted per plugin:
//! `[capabilities] sql = true` in `<name>.toml`). Unqualified table names
//! are the tenant's; another tenant's schema cannot be named or reached, and
//! no transaction outlives a call.
//!
//! ```no_run
//! use baton_sdk::sql::{self, Value};
//!
//! fn add_task(title: &str) -> Result<i64, sql::Error> {
//!     let rows = sql::query(
//!         "INSERT INTO tasks (title) VALUES ($1) RETURNING id",
//!         &[Value::Text(title.into())],
//!     )?;
//!     Ok(rows.rows[0][0].as_i64().unwrap_or_default())
//! }
//! ```
//!
//! Schema changes ship with the plugin version as [`Migration`]s
//! ([`crate::Plugin::migrations`]): the host applies a tenant's pending ones
//! in the transaction that moves it to the version, with `init` and
//! `import-state`, so a refusal rolls both back.

use crate::__private::baton::plugin::sql as host;

pub use crate::__private::baton::plugin::types::Migration;
pub use host::{Column, DbError, Error, Rows, Statement, Value};

/// Runs one statement and returns its rows.
pub fn query(sql: &str, params: &[Value]) -> Result<Rows, Error> {
    host::query(sql, params)
}

/// Runs one statement; the count of rows it changed.
pub fn execute(sql: &str, params: &[Value]) -> Result<u64, Error> {
    host::execute(sql, params)
}

/// Runs the statements in one transaction, all or nothing; each one's count
/// of changed rows.
pub fn transaction(statements: &[Statement]) -> Result<Vec<u64>, Error> {
    host::transaction(statements)
}

/// A statement for [`transaction`].
pub fn statement(sql: &str, params: Vec<Value>) -> Statement {
    Statement {
        sql: sql.to_owned(),
        params,
    }
}

/// A migration for [`crate::Plugin::migrations`].
pub fn migration(id: &str, sql: &str) -> Migration {
    Migration {
        id: id.to_owned(),
        sql: sql.to_owned(),
    }
}

impl Value {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int64(n) => Some(*n),
            _ => None,
        }
    }

    /// The text (also of `json`, `uuid` and `decimal`), if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Json(s) | Value::Uuid(s) | Value::Decimal(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(n: i64) -> Value {
        Value::Int64(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Boolean(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
