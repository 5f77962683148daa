//! Watching the deploy folder.
//!
//! Any change that touches `<name>.wasm` or `<name>.toml` (written in place,
//! copied, renamed in or out, deleted) makes the watcher examine plugin
//! `<name>` again: if `<name>.wasm` exists, it waits until the file's size and
//! modification time have not changed for `swap.settle_ms`, then hands it to
//! the [`Deployer`], which ignores it if it is identical to the current
//! version; if it is gone, the plugin is removed. A copy slower than that
//! (pausing longer than `settle_ms`) can be read half-written: its failure is
//! reported only once the file has not changed for ten `settle_ms`, and the
//! next write examines it afresh. A newer change to the same plugin supersedes an examination still
//! waiting. Hidden files, temporary files and names that are not plugin names
//! are ignored. If the watcher loses events (an overflow), the whole folder is
//! examined again.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Deployer;
use super::folder::{classify, plugin_files};

/// A deploy that failed on a resource of the host (no file descriptor left)
/// is tried this many times, waiting a little longer each time.
const TRANSIENT_ATTEMPTS: u32 = 5;
const TRANSIENT_RETRY: Duration = Duration::from_secs(1);

/// A failed file is reported once it has not changed for this many `settle`
/// periods.
const REPORT_AFTER_SETTLES: u32 = 10;

/// Watches `dir` in a task until `shutdown` turns true; the task then ends
/// its pending examinations before it finishes. Returns once the watch is set
/// up, so changes made after this call are seen.
pub fn spawn(
    deployer: Arc<Deployer>,
    dir: PathBuf,
    settle: Duration,
    shutdown: watch::Receiver<bool>,
) -> notify::Result<JoinHandle<()>> {
    std::fs::create_dir_all(&dir).map_err(notify::Error::io)?;
    // Events carry the watched path as given; an absolute one makes them
    // comparable whatever the working directory was.
    let dir = dir.canonicalize().map_err(notify::Error::io)?;
    let (tx, rx) = mpsc::unbounded_channel::<Option<Vec<PathBuf>>>();
    let mut debouncer = new_debouncer(Duration::from_millis(50), None, move |result: DebounceEventResult| {
        let message = match result {
            // Reads (ours included) are not changes.
            Ok(events) => Some(
                events
                    .into_iter()
                    .filter(|e| !matches!(e.event.kind, notify::EventKind::Access(_)))
                    .flat_map(|e| e.event.paths)
                    .collect(),
            ),
            Err(errors) => {
                tracing::warn!(?errors, "deploy folder watch lost events; rescanning");
                None
            }
        };
        let _ = tx.send(message);
    })?;
    debouncer.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(tokio::spawn(async move {
        // Keeps the OS watch alive as long as this task runs.
        let _debouncer = debouncer;
        examine_changes(deployer, dir, settle, rx, shutdown).await;
    }))
}

/// Turns each batch of changed paths (`None`: events were lost) into
/// examinations of the plugins they touch, until `shutdown`; then ends the
/// examinations still pending.
async fn examine_changes(
    deployer: Arc<Deployer>,
    dir: PathBuf,
    settle: Duration,
    mut changes: mpsc::UnboundedReceiver<Option<Vec<PathBuf>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        let message = tokio::select! {
            message = changes.recv() => match message {
                Some(message) => message,
                None => break,
            },
            () = crate::shutdown::stopped(&mut shutdown) => break,
        };
        let names: BTreeSet<String> = match message {
            Some(paths) if paths.is_empty() => continue,
            Some(paths) => paths
                .iter()
                .filter(|p| p.parent() == Some(dir.as_path()) || p.parent().is_none())
                .filter_map(|p| classify(p))
                .map(|f| f.name().to_owned())
                .collect(),
            None => all_names(&deployer, &dir),
        };
        pending.retain(|_, task| !task.is_finished());
        for name in names {
            if let Some(previous) = pending.remove(&name) {
                previous.abort();
            }
            let deployer = deployer.clone();
            let wasm = dir.join(format!("{name}.wasm"));
            let task_name = name.clone();
            pending.insert(
                name,
                tokio::spawn(async move { examine(&deployer, &task_name, &wasm, settle).await }),
            );
        }
    }
    for task in pending.into_values() {
        task.abort();
        let _ = task.await;
    }
}

/// Every plugin that has a file or is deployed.
fn all_names(deployer: &Deployer, dir: &Path) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = plugin_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.extend(
        deployer
            .registry
            .all()
            .into_iter()
            .filter(|e| e.current().is_some())
            .map(|e| e.name.clone()),
    );
    names
}

/// Deploys `wasm` once it is stable, or removes the plugin if it is gone.
async fn examine(deployer: &Deployer, name: &str, wasm: &Path, settle: Duration) {
    if !wait_stable(wasm, settle).await {
        return deployer.remove(name).await;
    }
    let mut attempts = 1;
    let result = loop {
        match deployer.try_deploy_file(name, wasm).await {
            Err(error) if error.is_transient() && attempts < TRANSIENT_ATTEMPTS => {
                tracing::warn!(plugin = name, "deploy failed for now, retrying: {error}");
                tokio::time::sleep(TRANSIENT_RETRY * attempts).await;
                attempts += 1;
            }
            result => break result,
        }
    };
    if let Err(error) = result {
        // A slow copy pauses longer than `settle` and its half-written file
        // fails: report only once the file has stopped changing for longer
        // (a change meanwhile starts a new examination, which aborts this).
        if wait_stable(wasm, settle * REPORT_AFTER_SETTLES).await {
            deployer.report_failure(name, wasm, &error).await;
        }
    }
}

/// Waits until `path` has kept its size and modification time for `settle`.
/// `false` if the file does not exist.
async fn wait_stable(path: &Path, settle: Duration) -> bool {
    let mut last = stamp(path);
    loop {
        let Some(seen) = last else {
            return false;
        };
        tokio::time::sleep(settle).await;
        let now = stamp(path);
        if now == Some(seen) {
            return true;
        }
        last = now;
    }
}

fn stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let meta = std::fs::metadata(path).ok().filter(|m| m.is_file())?;
    Some((meta.len(), meta.modified().ok()))
}
