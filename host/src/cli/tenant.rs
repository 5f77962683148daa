//! `baton tenant export|delete`: a tenant's data as a whole, through the
//! running host's admin API (see `crate::tenant::lifecycle`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::admin_client::{AdminArgs, error_text};
use crate::tenant::lifecycle::Deleted;

/// What to do with a tenant's data.
#[derive(Debug, Subcommand)]
pub(super) enum TenantCommand {
    /// Write everything kept for a tenant (key-value data, kept states, SQL
    /// tables with their rows) as one JSON document (`baton-tenant/1`).
    Export {
        /// The tenant.
        tenant: String,
        /// Where to write it [default: standard output].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Erase a tenant: end its tasks and delete its data, SQL schemas and
    /// roles. Refused while it has open sessions, unless --force.
    Delete {
        /// The tenant.
        tenant: String,
        /// Close its open sessions (1008) instead of refusing.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(super) async fn run(command: TenantCommand) -> Result<()> {
    match command {
        TenantCommand::Export { tenant, out, admin } => {
            let (status, body) = admin
                .client()?
                .request("GET", &format!("/api/tenants/{tenant}/export"))
                .await?;
            if status != 200 {
                bail!("cannot export {tenant}: {}", error_text(&body));
            }
            let text = serde_json::to_string_pretty(&body)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("{tenant}: exported to {}", path.display());
                }
                None => out!("{text}"),
            }
            Ok(())
        }
        TenantCommand::Delete { tenant, force, admin } => {
            let query = if force { "?force=true" } else { "" };
            let (status, body) = admin
                .client()?
                .request("DELETE", &format!("/api/tenants/{tenant}{query}"))
                .await?;
            if status != 200 {
                bail!("cannot delete {tenant}: {}", error_text(&body));
            }
            let deleted: Deleted = serde_json::from_value(body).context("admin API: unexpected answer")?;
            out!(
                "{tenant}: deleted ({} sessions closed; data of {})",
                deleted.sessions_closed,
                if deleted.plugins.is_empty() {
                    "no plugin".into()
                } else {
                    deleted.plugins.join(", ")
                }
            );
            Ok(())
        }
    }
}
