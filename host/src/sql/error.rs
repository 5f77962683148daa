//! Why a SQL call failed, as the WIT `error` has it, from what PostgreSQL
//! and the pool report.

use tokio_postgres::error::SqlState;

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
