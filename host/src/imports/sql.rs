//! `baton:plugin/sql`: SQL in the tenant's own schema (see [`crate::sql`]).
//! A call waits on the network while the guest's fiber is suspended, so it
//! holds up this tenant only.

use crate::bindings::baton::plugin::sql::{DbError, Error, Host, Rows, Statement, Value};
use crate::instance::state::InstanceState;
use crate::sql::SqlError;

impl From<SqlError> for Error {
    fn from(e: SqlError) -> Error {
        match e {
            SqlError::Invalid(why) => Error::Invalid(why),
            SqlError::Db { code, message, detail } => Error::Db(DbError { code, message, detail }),
            SqlError::Timeout => Error::Timeout,
            SqlError::TooManyRows => Error::TooManyRows,
            SqlError::QuotaExceeded => Error::QuotaExceeded,
            SqlError::Conflict => Error::Conflict,
            SqlError::Unavailable(why) => Error::Unavailable(why),
        }
    }
}

impl InstanceState {
    fn sql(&self) -> Result<std::sync::Arc<crate::sql::Sql>, Error> {
        self.tenant
            .sql
            .clone()
            .ok_or_else(|| Error::Unavailable("SQL is not available while a deploy is checked".into()))
    }
}

/// Inside a schema change (the `init` and `import-state` of a move to a
/// version with migrations) every call runs in its transaction.
impl Host for InstanceState {
    async fn query(&mut self, sql: String, params: Vec<Value>) -> Result<Rows, Error> {
        if let Some(change) = &self.schema_change {
            return Ok(change.query(&sql, &params).await?);
        }
        Ok(self.sql()?.query(&self.tenant.namespace, &sql, &params).await?)
    }

    async fn execute(&mut self, sql: String, params: Vec<Value>) -> Result<u64, Error> {
        if let Some(change) = &self.schema_change {
            let counts = change.run(&[Statement { sql, params }]).await?;
            return Ok(counts.into_iter().next().unwrap_or(0));
        }
        Ok(self.sql()?.execute(&self.tenant.namespace, sql, params).await?)
    }

    async fn transaction(&mut self, statements: Vec<Statement>) -> Result<Vec<u64>, Error> {
        if statements.len() > crate::sql::MAX_STATEMENTS {
            return Err(Error::Invalid(format!(
                "more than {} statements",
                crate::sql::MAX_STATEMENTS
            )));
        }
        if let Some(change) = &self.schema_change {
            return Ok(change.run(&statements).await?);
        }
        Ok(self.sql()?.transaction(&self.tenant.namespace, &statements).await?)
    }
}
