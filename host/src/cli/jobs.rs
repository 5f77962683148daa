//! `baton jobs TENANT` (list; `--retry ID`, `--cancel ID`) and `baton
//! webhooks` (a tenant's endpoints and delivery log): durable jobs and
//! webhooks through the running host's admin API (see `crate::jobs`).

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::admin_client::{AdminArgs, error_text};
use crate::admin::{DeliveriesView, EndpointView, EndpointsView, JobsView};

/// Lists a tenant's jobs and schedules, or acts on one job.
pub(super) async fn jobs(
    tenant: &str,
    plugin: Option<String>,
    retry: Option<u64>,
    cancel: Option<u64>,
    json: bool,
    admin: &AdminArgs,
) -> Result<()> {
    let client = admin.client()?;
    let act = |id: u64| {
        let plugin = plugin.clone();
        async move {
            let plugin = match plugin {
                Some(plugin) => plugin,
                None => plugin_of(admin, tenant, id).await?,
            };
            anyhow::Ok(format!("{id}?plugin={plugin}"))
        }
    };
    if let Some(id) = retry {
        let path = format!("/api/tenants/{tenant}/jobs/{}", act(id).await?).replacen('?', "/retry?", 1);
        let (status, body) = client.request("POST", &path).await?;
        if status != 200 {
            bail!("cannot retry job {id}: {}", error_text(&body));
        }
        out!("job {id}: due again, with fresh attempts");
        return Ok(());
    }
    if let Some(id) = cancel {
        let path = format!("/api/tenants/{tenant}/jobs/{}", act(id).await?);
        let (status, body) = client.request("DELETE", &path).await?;
        if status != 200 {
            bail!("cannot cancel job {id}: {}", error_text(&body));
        }
        out!("job {id}: cancelled");
        return Ok(());
    }
    let view: JobsView = client.get(&format!("/api/tenants/{tenant}/jobs")).await?;
    if json {
        out!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let now = crate::clock::unix_ms();
    if view.jobs.is_empty() {
        out!("{tenant}: no jobs");
    } else {
        out!(
            "{:>8}  {:<14} {:<14} {:<20} {:<10} {:>7}  {:<12} LAST ERROR",
            "ID",
            "PLUGIN",
            "CLASS",
            "KIND",
            "STATE",
            "ATTEMPT",
            "DUE"
        );
        for job in view
            .jobs
            .iter()
            .filter(|j| plugin.as_ref().is_none_or(|p| *p == j.plugin))
        {
            out!(
                "{:>8}  {:<14} {:<14} {:<20} {:<10} {:>3}/{:<3}  {:<12} {}",
                job.id,
                job.plugin,
                job.class,
                job.kind,
                job.state,
                job.attempt,
                job.max_attempts,
                due(job.run_at_ms, now),
                job.last_error.as_deref().unwrap_or("")
            );
        }
    }
    for s in &view.schedules {
        out!(
            "schedule {} of {}: {:?} runs {} next {}",
            s.name,
            s.plugin,
            s.cron,
            s.kind,
            due(s.next_ms, now)
        );
    }
    Ok(())
}

/// When something is due, from now: `in 5s`, `3s ago`.
fn due(at_ms: u64, now_ms: u64) -> String {
    match at_ms.checked_sub(now_ms) {
        Some(ms) => format!("in {}s", ms.div_ceil(1000)),
        None => format!("{}s ago", (now_ms - at_ms) / 1000),
    }
}

/// The plugin job `id` of `tenant` belongs to.
async fn plugin_of(admin: &AdminArgs, tenant: &str, id: u64) -> Result<String> {
    let view: JobsView = admin.client()?.get(&format!("/api/tenants/{tenant}/jobs")).await?;
    view.jobs
        .into_iter()
        .find(|j| j.id == id)
        .map(|j| j.plugin)
        .with_context(|| format!("{tenant} has no job {id}"))
}

/// What to do with a tenant's webhooks.
#[derive(Debug, Subcommand)]
pub(super) enum WebhooksCommand {
    /// The tenant's endpoints (never their secrets).
    List {
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Adds or replaces an endpoint; without --secret a new one is made and
    /// printed once (give it to the receiver: it verifies the signatures).
    Set {
        /// The tenant.
        tenant: String,
        /// The endpoint's name, as plugins name it.
        name: String,
        /// Where deliveries go.
        url: String,
        /// The signing secret (`whsec_` + base64).
        #[arg(long)]
        secret: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Removes an endpoint.
    Remove {
        /// The tenant.
        tenant: String,
        /// The endpoint's name.
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The tenant's delivery log, newest first.
    Log {
        /// The tenant.
        tenant: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub(super) async fn webhooks(command: WebhooksCommand) -> Result<()> {
    match command {
        WebhooksCommand::List { tenant, admin } => {
            let view: EndpointsView = admin.client()?.get(&format!("/api/tenants/{tenant}/webhooks")).await?;
            if view.endpoints.is_empty() {
                out!("{tenant}: no webhook endpoints");
            }
            for e in view.endpoints {
                let state = match (&e.disabled_reason, e.enabled) {
                    (Some(why), false) => format!("disabled: {why}"),
                    (None, false) => "disabled".into(),
                    _ if e.failing_since_ms.is_some() => "failing".into(),
                    _ => "enabled".into(),
                };
                out!("{:<16} {:<50} {state}", e.name, e.url);
            }
        }
        WebhooksCommand::Set {
            tenant,
            name,
            url,
            secret,
            admin,
        } => {
            let body = serde_json::json!({ "url": url, "secret": secret });
            let (status, answer) = admin
                .client()?
                .send("PUT", &format!("/api/tenants/{tenant}/webhooks/{name}"), Some(&body))
                .await?;
            if status != 200 {
                bail!("cannot set the endpoint: {}", error_text(&answer));
            }
            let view: EndpointView = serde_json::from_value(answer).context("admin API: unexpected answer")?;
            out!("{tenant}: endpoint {} → {}", view.name, view.url);
            if let Some(secret) = view.secret {
                out!("signing secret (shown once): {secret}");
            }
        }
        WebhooksCommand::Remove { tenant, name, admin } => {
            let (status, answer) = admin
                .client()?
                .request("DELETE", &format!("/api/tenants/{tenant}/webhooks/{name}"))
                .await?;
            if status != 200 {
                bail!("cannot remove the endpoint: {}", error_text(&answer));
            }
            out!("{tenant}: endpoint {name} removed");
        }
        WebhooksCommand::Log { tenant, admin } => {
            let view: DeliveriesView = admin
                .client()?
                .get(&format!("/api/tenants/{tenant}/deliveries"))
                .await?;
            if view.deliveries.is_empty() {
                out!("{tenant}: no deliveries");
            }
            for d in view.deliveries {
                let result = match (d.delivered, d.status, &d.error) {
                    (true, Some(status), _) => format!("delivered ({status})"),
                    (_, _, Some(error)) => format!("failed: {error}"),
                    _ => "failed".into(),
                };
                out!(
                    "{} {} #{} {} → {} in {} ms: {result}",
                    d.message_id,
                    d.event_type,
                    d.attempt,
                    d.plugin,
                    d.endpoint,
                    d.took_ms
                );
            }
        }
    }
    Ok(())
}
