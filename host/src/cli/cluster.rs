//! `baton drain`: a cluster node's tenants moved to the others, live.

use anyhow::{Context, Result, bail};

use super::admin_client::{AdminArgs, AdminClient, error_text};

/// Drains the node `node` names (the one whose admin API `admin` is, by
/// default): every tenant it owns moves to the other nodes.
pub(super) async fn drain(node: Option<String>, admin: &AdminArgs) -> Result<()> {
    let mut client = admin.client()?;
    if let Some(node) = &node {
        let cluster: crate::admin::ClusterView = client.get("/api/cluster").await?;
        let Some(found) = cluster.nodes.iter().find(|n| &n.name == node) else {
            bail!(
                "no live node named {node:?} (live: {})",
                cluster
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        client = AdminClient::new(&format!("http://{}", found.admin_addr), admin.token.clone())?;
    }
    let (status, body) = client.request("POST", "/api/cluster/drain").await?;
    if status != 200 {
        bail!("cannot drain: {}", error_text(&body));
    }
    let drained: crate::admin::DrainView = serde_json::from_value(body).context("admin API: unexpected answer")?;
    println!(
        "drained {}: {} tenants moved, {} stay",
        drained.node,
        drained.moved.len(),
        drained.failed.len()
    );
    for (tenant, to) in &drained.moved {
        println!("  {tenant} -> {to}");
    }
    for (tenant, why) in &drained.failed {
        println!("  {tenant} stays: {why}");
    }
    if !drained.failed.is_empty() {
        bail!("{} tenants could not move", drained.failed.len());
    }
    Ok(())
}
