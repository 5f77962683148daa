//! A tenant's data as a whole: handed to its owner (`baton tenant export`,
//! `GET /api/tenants/{tenant}/export`) and erased on request (`baton tenant
//! delete`, `DELETE /api/tenants/{tenant}`), as a B2B platform must.
//!
//! An export is one JSON document (format `baton-tenant/1`, see
//! README.md): for each plugin, its key-value data, its kept state and, with
//! SQL, every table of its schema with its rows. Deleting ends the tenant's
//! tasks (closing its sessions with 1008, keeping nothing), erases its
//! storage (its owner tokens go up, so that no task that owned it before can
//! write it back) and drops its SQL schemas and roles. A tenant with open
//! sessions is refused unless forced. The tenant may be used again at once:
//! it starts empty.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::sql::{Sql, TableExport};
use crate::storage::Storage;
use crate::tenant::{Command, Tenants};

/// The export document's format name.
pub const FORMAT: &str = "baton-tenant/1";

/// Everything kept for one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantExport {
    /// `baton-tenant/1`.
    pub format: String,
    /// The tenant.
    pub tenant: String,
    /// When it was read (Unix ms).
    pub exported_at_ms: u64,
    /// What each plugin keeps for it, by plugin name.
    pub plugins: Vec<PluginExport>,
}

/// What one plugin keeps for the tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginExport {
    /// The plugin.
    pub plugin: String,
    /// Its key-value data, in key order.
    pub keys: Vec<KeyExport>,
    /// Its state kept at the last checkpoint or shutdown.
    pub state: Option<StateExport>,
    /// The tables of its SQL schema, if it has one.
    pub tables: Option<Vec<TableExport>>,
}

/// One key and its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyExport {
    /// The key.
    pub key: String,
    /// The value, in base64.
    pub value_base64: String,
}

/// A kept plugin state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateExport {
    /// The SHA-256 of the version that exported it.
    pub version: String,
    /// The state, in base64.
    pub state_base64: String,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    /// The tenant.
    pub tenant: String,
    /// Its sessions that were closed.
    pub sessions_closed: usize,
    /// The plugins whose data was erased.
    pub plugins: Vec<String>,
}

/// Why a lifecycle request failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The tenant has open sessions and the delete was not forced.
    #[error("tenant {tenant} has {sessions} open sessions: delete it with force to close them")]
    Busy {
        /// The tenant.
        tenant: String,
        /// Its open sessions.
        sessions: usize,
    },
    /// Storage or SQL failed.
    #[error("{0}")]
    Unavailable(String),
}

/// Reads everything kept for `tenant`.
pub async fn export(storage: &Storage, sql: Option<&Arc<Sql>>, tenant: &str) -> Result<TenantExport, LifecycleError> {
    let unavailable = |e: &dyn std::fmt::Display| LifecycleError::Unavailable(e.to_string());
    let mut plugins: Vec<PluginExport> = storage
        .export(tenant)
        .await
        .map_err(|e| unavailable(&e))?
        .into_iter()
        .map(|data| PluginExport {
            plugin: data.plugin,
            keys: data
                .keys
                .into_iter()
                .map(|(key, value)| KeyExport {
                    key,
                    value_base64: BASE64.encode(value),
                })
                .collect(),
            state: data.state.map(|(version, state)| StateExport {
                version,
                state_base64: BASE64.encode(state),
            }),
            tables: None,
        })
        .collect();
    if let Some(sql) = sql {
        for (plugin, tables) in sql.export(tenant).await.map_err(|e| unavailable(&e))? {
            match plugins.iter_mut().find(|p| p.plugin == plugin) {
                Some(export) => export.tables = Some(tables),
                None => plugins.push(PluginExport {
                    plugin,
                    keys: Vec::new(),
                    state: None,
                    tables: Some(tables),
                }),
            }
        }
    }
    plugins.sort_by(|a, b| a.plugin.cmp(&b.plugin));
    Ok(TenantExport {
        format: FORMAT.into(),
        tenant: tenant.into(),
        exported_at_ms: crate::clock::unix_ms(),
        plugins,
    })
}

/// Ends `tenant`'s tasks and erases everything kept for it; refused while
/// it has sessions unless `force`.
pub async fn delete(
    tenants: &Tenants,
    storage: &Storage,
    sql: Option<&Arc<Sql>>,
    tenant: &str,
    force: bool,
) -> Result<Deleted, LifecycleError> {
    let handles: Vec<_> = tenants
        .all()
        .into_iter()
        .filter(|h| h.shared().name == tenant)
        .collect();
    let sessions: usize = handles.iter().map(|h| h.shared().session_count()).sum();
    if sessions > 0 && !force {
        return Err(LifecycleError::Busy {
            tenant: tenant.into(),
            sessions,
        });
    }
    let mut ended = Vec::new();
    for handle in &handles {
        let (done, finished) = tokio::sync::oneshot::channel();
        if handle.mailbox().send(Command::Erase { done }).await.is_ok() {
            ended.push(finished);
        }
    }
    futures_util::future::join_all(ended).await;
    let mut plugins: Vec<String> = storage
        .export(tenant)
        .await
        .map_err(|e| LifecycleError::Unavailable(e.to_string()))?
        .into_iter()
        .map(|d| d.plugin)
        .collect();
    storage
        .erase(tenant)
        .await
        .map_err(|e| LifecycleError::Unavailable(e.to_string()))?;
    if let Some(sql) = sql {
        let with_sql = sql
            .plugins_of(tenant)
            .await
            .map_err(|e| LifecycleError::Unavailable(e.to_string()))?;
        plugins.extend(with_sql);
        sql.drop_tenant(tenant)
            .await
            .map_err(|e| LifecycleError::Unavailable(e.to_string()))?;
    }
    plugins.sort();
    plugins.dedup();
    tracing::info!(tenant, sessions, ?plugins, "deleted the tenant's data");
    Ok(Deleted {
        tenant: tenant.into(),
        sessions_closed: sessions,
        plugins,
    })
}
