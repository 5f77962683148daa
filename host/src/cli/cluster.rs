//! The command line in a cluster: `baton drain` (a node's tenants moved to
//! the others, live), the verdict of a deploy or rollback waiting for every
//! live node, and the operator's rollout commands (`promote`, `pin`,
//! `unpin`, ending a rollout) asked of every live node: each node runs the
//! rollout for the tenants it owns.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::admin_client::{AdminArgs, AdminClient, error_text};
use crate::admin::PluginView;

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
    out!(
        "drained {}: {} tenants moved, {} stay",
        drained.node,
        drained.moved.len(),
        drained.failed.len()
    );
    for (tenant, to) in &drained.moved {
        out!("  {tenant} -> {to}");
    }
    for (tenant, why) in &drained.failed {
        out!("  {tenant} stays: {why}");
    }
    if !drained.failed.is_empty() {
        bail!("{} tenants could not move", drained.failed.len());
    }
    Ok(())
}

/// Sends `method path` (with `body`) to every live node of the cluster but
/// the one `client` talks to, and prints each node's answer; fails if one
/// refused. Nothing to do outside a cluster.
pub(super) async fn on_other_nodes(
    client: &AdminClient,
    token: Option<String>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<()> {
    let cluster: crate::admin::ClusterView = match client.request("GET", "/api/cluster").await? {
        (200, body) => serde_json::from_value(body).context("admin API: unexpected answer")?,
        _ => return Ok(()),
    };
    let mut failed = Vec::new();
    for node in cluster.nodes.iter().filter(|n| n.name != cluster.node) {
        let other = AdminClient::new(&format!("http://{}", node.admin_addr), token.clone())?;
        match other.send(method, path, body).await {
            Ok((200, _)) => out!("  node {}: done", node.name),
            Ok((_, answer)) => {
                out!("  node {}: {}", node.name, error_text(&answer));
                failed.push(node.name.clone());
            }
            Err(e) => {
                out!("  node {}: unreachable: {e:#}", node.name);
                failed.push(node.name.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "not done on {} of {} nodes ({})",
            failed.len(),
            cluster.nodes.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// After a deploy or rollback made `hash` the current version of `name` on
/// the node `client` talks to (since `since_ms`): waits until every other
/// live node of its cluster runs it too, or reports why a node does not (it
/// could not compile it, say, and keeps its previous version). Nothing to
/// wait for outside a cluster.
pub(super) async fn wait_for_nodes(
    client: &AdminClient,
    token: Option<String>,
    name: &str,
    hash: &str,
    since_ms: u64,
    wait: Duration,
) -> Result<()> {
    let cluster: crate::admin::ClusterView = match client.request("GET", "/api/cluster").await? {
        (200, body) => serde_json::from_value(body).context("admin API: unexpected answer")?,
        _ => return Ok(()),
    };
    let deadline = Instant::now() + wait;
    let mut failed = Vec::new();
    for node in cluster.nodes.iter().filter(|n| n.name != cluster.node) {
        let other = AdminClient::new(&format!("http://{}", node.admin_addr), token.clone())?;
        match node_verdict(&other, name, hash, since_ms, deadline).await {
            Ok(generation) => out!("  node {}: active, generation {generation}", node.name),
            Err(why) => {
                out!("  node {}: {why}", node.name);
                failed.push(node.name.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{name}: not current on {} of {} nodes ({}); they keep their previous version",
            failed.len(),
            cluster.nodes.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Waits until `client`'s node runs `hash` as `name`'s current version or
/// its rollout's canary (its generation there), or reports an error since
/// `since_ms`, until `deadline`.
async fn node_verdict(
    client: &AdminClient,
    name: &str,
    hash: &str,
    since_ms: u64,
    deadline: Instant,
) -> std::result::Result<u64, String> {
    loop {
        match client.request("GET", &format!("/api/plugins/{name}")).await {
            Ok((200, body)) => {
                let plugin: PluginView = serde_json::from_value(body).map_err(|e| format!("unexpected answer: {e}"))?;
                if let Some(current) = plugin.current.as_ref().filter(|c| c.hash == hash) {
                    return Ok(current.generation);
                }
                // A canary deploy: the file runs for the rollout's tenants.
                if let Some(rollout) = plugin.rollout.as_ref().filter(|r| r.hash == hash) {
                    return Ok(rollout.generation);
                }
                if let Some(error) = plugin.last_error.filter(|e| e.at_ms >= since_ms) {
                    return Err(format!("refused it: {}: {}", error.what, error.error));
                }
            }
            Ok(_) => {}
            Err(e) => return Err(format!("unreachable: {e:#}")),
        }
        if Instant::now() > deadline {
            return Err("did not take it in time; see `baton status` there".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
