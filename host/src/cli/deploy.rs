//! `baton check FILE` and `baton deploy FILE`: a file checked (by the
//! running host when one answers, which keeps the compile; here otherwise),
//! placed atomically in the deploy folder, and the wait for the host's
//! verdict (and, in a cluster, every node's).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::admin_client::{AdminArgs, AdminClient, error_text};
use super::{cluster, rollout};
use crate::admin::{PluginView, VersionView};
use crate::version::VersionId;

/// Compiles `file` and links it against the world; returns what it imports
/// and exports.
pub(super) fn check(file: &Path) -> Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let runtime = crate::runtime::Runtime::new(&crate::config::RuntimeConfig {
        max_instances: 4,
        ..Default::default()
    })?;
    let component = runtime
        .compile(&bytes)
        .and_then(|c| runtime.prepare(&c).map(|_| c))
        .with_context(|| format!("{} is not a valid baton plugin", file.display()))?;
    let ty = component.component_type();
    let engine = runtime.engine();
    let mut report = format!(
        "{}: a valid baton plugin (sha256 {})\nimports:\n",
        file.display(),
        VersionId::of(&bytes).hex()
    );
    for (name, _) in ty.imports(engine) {
        report.push_str(&format!("  {name}\n"));
    }
    report.push_str("exports:\n");
    for (name, _) in ty.exports(engine) {
        report.push_str(&format!("  {name}\n"));
    }
    Ok(report.trim_end().to_owned())
}

pub(super) async fn deploy(
    file: &Path,
    name: Option<String>,
    deploy_dir: &Path,
    wait: u64,
    rollout: Option<String>,
    admin: &AdminArgs,
) -> Result<()> {
    let name = match name {
        Some(name) => name,
        None => file
            .file_stem()
            .and_then(|s| s.to_str())
            .map(|s| s.replace('_', "-"))
            .context("cannot tell the plugin's name from the file: pass --name")?,
    };
    if !crate::names::is_plugin(&name) {
        bail!("{name:?} is not a plugin name: use [a-z0-9][a-z0-9_-]*, at most 63 bytes (pass --name)");
    }
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let hash = VersionId::of(&bytes).hex();
    let client = admin.client()?;
    let answer = client.request("GET", &format!("/api/plugins/{name}")).await;
    // Only a file that passes the deploy's checks reaches the folder. A
    // running host makes them (`POST /api/check`): it compiles the file once
    // (a Python plugin takes 10-20 s) into its artifact cache, where the
    // deploy then finds it. With no host to answer, they are made here.
    if answer.is_ok() {
        let (status, body) = client
            .send_bytes("POST", &format!("/api/check?name={name}"), bytes.clone())
            .await?;
        match status {
            200 => eprintln!(
                "{}: a valid baton plugin (sha256 {hash}), checked by the host",
                file.display()
            ),
            400 => bail!("{} is not a valid baton plugin: {}", file.display(), error_text(&body)),
            _ => bail!(
                "the host could not check {}: {status}: {}",
                file.display(),
                error_text(&body)
            ),
        }
    } else {
        let report = check(file)?;
        eprintln!("{}", report.lines().next().unwrap_or_default());
    }
    let before: Option<PluginView> = match answer {
        Ok((200, body)) => serde_json::from_value(body).ok(),
        _ => None,
    };
    let started_ms = crate::clock::unix_ms();
    std::fs::create_dir_all(deploy_dir)?;
    // The settings first: the host reads them with the file.
    let canary = rollout.is_some();
    rollout::write_rollout(deploy_dir, &name, rollout.as_deref())?;
    let target = deploy_dir.join(format!("{name}.wasm"));
    crate::deploy::artifacts::write_atomically(&target, &bytes)
        .with_context(|| format!("cannot write {}", target.display()))?;
    out!("placed {} as {}", file.display(), target.display());
    if wait == 0 {
        return Ok(());
    }
    let rollout_before = before.as_ref().and_then(|p| p.rollout.clone());
    let before = before.and_then(|p| p.current);
    if before.as_ref().is_some_and(|v| v.hash == hash) {
        out!("{name}: this file is already the current version");
        return Ok(());
    }
    let waited = Activation {
        name: &name,
        hash: &hash,
        after_generation: before
            .map_or(0, |v| v.generation)
            .max(rollout_before.map_or(0, |r| r.generation)),
        since_ms: started_ms,
        canary,
    };
    if waited.wait(&client, deploy_dir, Duration::from_secs(wait)).await? {
        let wait = Duration::from_secs(wait);
        cluster::wait_for_nodes(&client, admin.token.clone(), &name, &hash, started_ms, wait).await?;
    }
    Ok(())
}

/// A deploy the CLI waits for: the file of `hash` current (or the canary,
/// for a `canary` deploy) for `name` with a generation above
/// `after_generation`, or an error reported since `since_ms`.
struct Activation<'a> {
    name: &'a str,
    hash: &'a str,
    after_generation: u64,
    since_ms: u64,
    canary: bool,
}

impl Activation<'_> {
    /// Waits for the host's verdict: `true` once it runs the file, `false`
    /// when no host answers (the file waits for the next one to start).
    async fn wait(&self, client: &AdminClient, deploy_dir: &Path, wait: Duration) -> Result<bool> {
        let name = self.name;
        let deadline = Instant::now() + wait;
        loop {
            match client.request("GET", &format!("/api/plugins/{name}")).await {
                Err(e) => {
                    out!(
                        "no host confirmed it ({e:#}); the next host to start on {} loads it",
                        deploy_dir.display()
                    );
                    return Ok(false);
                }
                Ok((200, body)) => {
                    let plugin: PluginView = serde_json::from_value(body).context("admin API: unexpected answer")?;
                    let activated = |c: &VersionView| c.hash == self.hash && c.generation > self.after_generation;
                    if let Some(rollout) = plugin
                        .rollout
                        .filter(|r| self.canary && r.hash == self.hash && r.generation > self.after_generation)
                    {
                        out!(
                            "{name}: canary, version {} generation {} for {} ({} tenants now); `baton promote {name}` \
                             moves everyone, `baton rollback {name}` ends it",
                            rollout.short,
                            rollout.generation,
                            rollout.selection,
                            rollout.tenants.len()
                        );
                        return Ok(true);
                    }
                    if let Some(current) = plugin.current.filter(activated) {
                        out!(
                            "{name}: active, version {} generation {}",
                            current.short,
                            current.generation
                        );
                        return Ok(true);
                    }
                    if let Some(error) = plugin.last_error.filter(|e| e.at_ms >= self.since_ms) {
                        bail!("{name}: the host refused it: {}: {}", error.what, error.error);
                    }
                }
                Ok((404, _)) => {}
                Ok((status, body)) => bail!("admin API: {status}: {}", error_text(&body)),
            }
            if Instant::now() > deadline {
                bail!("{name}: not active after {}s; see `baton status`", wait.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
