//! The command line of safer deploys: `baton deploy --canary`, `baton
//! promote`, `baton pin` and `unpin`, `baton check --against`, `baton audit`.
//!
//! `baton deploy FILE --canary tenants=a,b` (or `percent=5`, both, and
//! `--auto`) writes a `[rollout]` table into the plugin's `<name>.toml`
//! before it places the file, so the host (and every node of a cluster,
//! which receive the settings with the file) starts a rollout; the table is
//! marked as the CLI's, and the next `baton deploy` without `--canary`
//! takes it out again (a table written by hand stays: it is a policy for
//! every file dropped in).

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::admin_client::{AdminArgs, error_text};
use crate::admin::{AuditEntry, DryRun, PinView, RollbackView};

/// The line that marks a `[rollout]` table the CLI wrote.
const MARK: &str = "# [rollout] written by `baton deploy --canary`; the next `baton deploy` without it removes it";

/// The `[rollout]` table of `--canary` specs (`tenants=a,b`, `percent=N`)
/// and `--auto`; `None` without specs.
pub(super) fn rollout_table(specs: &[String], auto: bool) -> Result<Option<String>> {
    if specs.is_empty() {
        if auto {
            bail!("--auto goes with --canary: which tenants get the new version first");
        }
        return Ok(None);
    }
    let mut tenants = Vec::new();
    let mut percent = None;
    for spec in specs {
        match spec.split_once('=') {
            Some(("tenants", list)) => {
                for tenant in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !crate::names::is_tenant(tenant) {
                        bail!("--canary tenants: {tenant:?} is not a tenant name");
                    }
                    tenants.push(format!("{tenant:?}"));
                }
            }
            Some(("percent", n)) => {
                let n: u8 = n
                    .trim()
                    .trim_end_matches('%')
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .with_context(|| format!("--canary percent: {n:?} is not a percent from 1 to 100"))?;
                percent = Some(n);
            }
            _ => bail!("--canary takes tenants=a,b or percent=N, not {spec:?}"),
        }
    }
    let mut table = format!("{MARK}\n[rollout]\n");
    if !tenants.is_empty() {
        table.push_str(&format!("tenants = [{}]\n", tenants.join(", ")));
    }
    if let Some(percent) = percent {
        table.push_str(&format!("percent = {percent}\n"));
    }
    if auto {
        table.push_str("auto = true\n");
    }
    Ok(Some(table))
}

/// `text` (a `<name>.toml`) with `table` as its `[rollout]` table: an old
/// one replaced; without `table`, a table the CLI wrote removed (one written
/// by hand stays).
pub(super) fn with_rollout(text: &str, table: Option<&str>) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.trim() == "[rollout]");
    let mut kept: Vec<&str> = Vec::new();
    match start {
        Some(start) => {
            let marked = start > 0 && lines[start - 1] == MARK;
            if table.is_none() && !marked {
                return text.to_owned();
            }
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.trim_start().starts_with('['))
                .map_or(lines.len(), |i| start + 1 + i);
            let from = if marked { start - 1 } else { start };
            kept.extend(&lines[..from]);
            kept.extend(&lines[end..]);
        }
        None if table.is_none() => return text.to_owned(),
        None => kept.extend(&lines),
    }
    let mut out = kept.join("\n").trim_end_matches('\n').to_owned();
    if let Some(table) = table {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(table);
    } else if !out.is_empty() {
        out.push('\n');
    }
    out
}

/// Writes `<deploy_dir>/<name>.toml` with the rollout `table` (or without
/// the CLI's), atomically; nothing when it would not change.
pub(super) fn write_rollout(deploy_dir: &Path, name: &str, table: Option<&str>) -> Result<()> {
    let path = deploy_dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let changed = with_rollout(&text, table);
    if changed == text || (changed.is_empty() && !path.exists()) {
        return Ok(());
    }
    crate::deploy::artifacts::write_atomically(&path, changed.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `baton promote NAME`.
pub(super) async fn promote(name: &str, admin: &AdminArgs) -> Result<()> {
    let (status, body) = admin
        .client()?
        .request("POST", &format!("/api/plugins/{name}/promote"))
        .await?;
    if status != 200 {
        bail!("cannot promote {name}: {}", error_text(&body));
    }
    let view: RollbackView = serde_json::from_value(body).context("admin API: unexpected answer")?;
    out!(
        "{name}: promoted, version {} generation {} for every tenant",
        view.version.as_deref().unwrap_or("?"),
        view.generation.map_or("?".into(), |g| g.to_string())
    );
    let path = format!("/api/plugins/{name}/promote");
    super::cluster::on_other_nodes(&admin.client()?, admin.token.clone(), "POST", &path, None).await
}

/// `baton pin NAME TENANT [VERSION]`.
pub(super) async fn pin(name: &str, tenant: &str, version: Option<String>, admin: &AdminArgs) -> Result<()> {
    let body = serde_json::json!({ "version": version });
    let (status, body) = admin
        .client()?
        .send("PUT", &format!("/api/plugins/{name}/pins/{tenant}"), Some(&body))
        .await?;
    if status != 200 {
        bail!("cannot pin {tenant} on {name}: {}", error_text(&body));
    }
    let pin: PinView = serde_json::from_value(body).context("admin API: unexpected answer")?;
    out!(
        "{name}: {tenant} pinned to version {} (generation {})",
        pin.short,
        pin.generation
    );
    // The same version (by hash) on every node: generations differ per node.
    let body = serde_json::json!({ "version": pin.hash });
    let path = format!("/api/plugins/{name}/pins/{tenant}");
    super::cluster::on_other_nodes(&admin.client()?, admin.token.clone(), "PUT", &path, Some(&body)).await
}

/// `baton unpin NAME TENANT`.
pub(super) async fn unpin(name: &str, tenant: &str, admin: &AdminArgs) -> Result<()> {
    let (status, body) = admin
        .client()?
        .request("DELETE", &format!("/api/plugins/{name}/pins/{tenant}"))
        .await?;
    if status != 200 {
        bail!("cannot unpin {tenant} on {name}: {}", error_text(&body));
    }
    out!("{name}: {tenant} follows deploys again");
    let path = format!("/api/plugins/{name}/pins/{tenant}");
    super::cluster::on_other_nodes(&admin.client()?, admin.token.clone(), "DELETE", &path, None).await
}

/// `baton check FILE --against NAME`: a dry run on the running host; fails
/// when a tenant would not take the file.
pub(super) async fn check_against(file: &Path, name: &str, admin: &AdminArgs) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (status, body) = admin
        .client()?
        .send_bytes("POST", &format!("/api/plugins/{name}/check"), bytes)
        .await?;
    if status != 200 {
        bail!("{}: {}", file.display(), error_text(&body));
    }
    let report: DryRun = serde_json::from_value(body).context("admin API: unexpected answer")?;
    out!(
        "{}: tried as {name} on the live state of {} tenants (nobody switched)",
        file.display(),
        report.tenants.len()
    );
    for trial in &report.tenants {
        match trial.detail.is_empty() {
            true => out!("  {:<24} {}", trial.tenant, trial.outcome),
            false => out!("  {:<24} {}: {}", trial.tenant, trial.outcome, trial.detail),
        }
    }
    if let Some(diff) = &report.interface {
        let lists = [
            ("imports added", &diff.imports_added),
            ("imports removed", &diff.imports_removed),
            ("exports added", &diff.exports_added),
            ("exports removed", &diff.exports_removed),
            ("capabilities needed, not granted", &diff.capabilities_missing),
        ];
        let changes: Vec<_> = lists.iter().filter(|(_, l)| !l.is_empty()).collect();
        match changes.is_empty() {
            true => out!("interface: as the current version's"),
            false => {
                for (what, list) in changes {
                    out!("{what}: {}", list.join(", "));
                }
            }
        }
    }
    let refusing = report
        .tenants
        .iter()
        .filter(|t| matches!(t.outcome.as_str(), "refuses" | "traps" | "fails"))
        .count();
    if refusing > 0 {
        bail!("{refusing} tenants would not take it");
    }
    Ok(())
}

/// `baton audit`.
pub(super) async fn audit(json: bool, since: Option<u64>, admin: &AdminArgs) -> Result<()> {
    let path = match since {
        Some(since) => format!("/api/audit?since={since}"),
        None => "/api/audit".to_owned(),
    };
    let entries: Vec<AuditEntry> = admin.client()?.get(&path).await?;
    if json {
        out!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    for e in &entries {
        let version = e
            .version
            .as_deref()
            .map_or("-".to_owned(), |v| v.chars().take(12).collect());
        let tenants = match e.tenants.is_empty() {
            true => String::new(),
            false => format!(" tenants {}", e.tenants.join(",")),
        };
        out!(
            "{:>5} {} {:<14} {:<12} {:<12} {:<12} {}{}{}",
            e.seq,
            super::clock(e.at_ms),
            serde_json::to_value(e.action)
                .ok()
                .and_then(|a| a.as_str().map(str::to_owned))
                .unwrap_or_default(),
            e.plugin.as_deref().unwrap_or("-"),
            version,
            e.who,
            e.outcome,
            tenants,
            if e.detail.is_empty() {
                String::new()
            } else {
                format!(" — {}", e.detail)
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_table_replaces_the_clis_and_goes_again() {
        let table = rollout_table(&["tenants=a,b".into(), "percent=5".into()], true)
            .expect("valid")
            .expect("a table");
        let settings = "[limits]\nmemory_mib = 32\n";
        let with = with_rollout(settings, Some(&table));
        let parsed = crate::config::PluginSettings::parse(&with).expect("valid settings");
        let rollout = parsed.rollout.expect("a rollout");
        assert_eq!((rollout.tenants.len(), rollout.percent, rollout.auto), (2, 5, true));
        assert_eq!(crate::config::Limits::default().with(&parsed.limits).memory_mib, 32);
        // Again: one table, not two.
        let again = with_rollout(&with, Some(&table));
        assert_eq!(again.lines().filter(|l| *l == "[rollout]").count(), 1);
        assert_eq!(again.matches(MARK).count(), 1);
        // Without --canary: the CLI's table goes, the rest stays.
        assert_eq!(with_rollout(&with, None), settings);
        // A table written by hand stays.
        let by_hand = "[rollout]\npercent = 10\n";
        assert_eq!(with_rollout(by_hand, None), by_hand);
        assert!(rollout_table(&["everyone".into()], false).is_err());
        assert!(rollout_table(&[], true).is_err());
    }
}
