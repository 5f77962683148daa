//! Where tenants' data is kept (`[storage]`), and plugins' own SQL
//! (`[storage.sql]`).

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

/// Which backend keeps tenants' data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// One embedded file in the data folder (`storage.redb`): nothing to run,
    /// one host only.
    #[default]
    Redb,
    /// Shared tables in a PostgreSQL database (`postgres_url`).
    Postgres,
}

/// `[storage]`: where tenants' data is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `redb` (default) or `postgres`.
    pub backend: StorageBackend,
    /// The database for `postgres` (and for plugins' `sql`), e.g.
    /// `postgres://baton:secret@db.internal:5432/baton`. Its role must be
    /// able to create schemas and roles (`CREATEROLE`, and `CREATE` on the
    /// database). Default: none.
    pub postgres_url: Option<String>,
    /// Connections the host keeps for key-value storage. Default 16.
    pub pool_size: NonZeroUsize,
    /// Plugins' own SQL.
    pub sql: SqlConfig,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            backend: StorageBackend::Redb,
            postgres_url: None,
            pool_size: NonZeroUsize::new(16).expect("not zero"),
            sql: SqlConfig::default(),
        }
    }
}

impl StorageConfig {
    /// `postgres_url` with its password replaced by `(redacted)`, for logs
    /// and `--print-config` (URL and `key=value` forms).
    pub fn url_for_display(&self) -> Option<String> {
        self.postgres_url.as_deref().map(redact_password)
    }

    /// What is wrong with these settings, if anything.
    pub fn problem(&self) -> Option<String> {
        match (self.backend, &self.postgres_url) {
            (StorageBackend::Postgres, None) => {
                Some("storage.backend = \"postgres\" needs storage.postgres_url".into())
            }
            (_, Some(url)) if url.parse::<tokio_postgres::Config>().is_err() => {
                Some("storage.postgres_url is not a PostgreSQL connection string".into())
            }
            _ => None,
        }
    }
}

/// `url` with its password replaced by `(redacted)`.
pub(super) fn redact_password(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let Some((credentials, host)) = rest.rsplit_once('@') else {
            return url.to_owned();
        };
        return match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:(redacted)@{host}"),
            None => url.to_owned(),
        };
    }
    url.split_whitespace()
        .map(|part| match part.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=(redacted)"),
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `[storage.sql]`: the limits of plugins' own SQL (granted per plugin with
/// `[capabilities] sql = true`; needs `storage.postgres_url`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// A statement running longer is cancelled (`statement_timeout` of each
    /// tenant's role). Default 2000.
    pub statement_timeout_ms: u64,
    /// Most rows one query returns. Default 1000.
    pub max_rows: usize,
    /// Most bytes of values one query returns. Default 4 MiB.
    pub max_result_bytes: usize,
    /// Disk one tenant's schema may use before its writes are refused. Default 64.
    pub schema_quota_mib: u64,
    /// How often schema sizes are measured, in seconds. Default 10.
    pub quota_check_secs: u64,
    /// Connections per (tenant, plugin) role, at most. Default 2.
    pub connections_per_tenant: usize,
    /// A tenant's connections are closed after this long unused, in seconds. Default 60.
    pub idle_close_secs: u64,
}

impl Default for SqlConfig {
    fn default() -> SqlConfig {
        SqlConfig {
            statement_timeout_ms: 2000,
            max_rows: 1000,
            max_result_bytes: 4 << 20,
            schema_quota_mib: 64,
            quota_check_secs: 10,
            connections_per_tenant: 2,
            idle_close_secs: 60,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        for (url, shown) in [
            (
                "postgres://baton:s3cret@db:5432/baton",
                "postgres://baton:(redacted)@db:5432/baton",
            ),
            ("postgres://baton@db/baton", "postgres://baton@db/baton"),
            (
                "host=db user=baton password=s3cret dbname=baton",
                "host=db user=baton password=(redacted) dbname=baton",
            ),
        ] {
            assert_eq!(redact_password(url), shown);
        }
    }
}
