//! The audit log: every change of what runs, who asked for it and how it
//! went (deploys, rollout steps, promotions, rollbacks manual or automatic,
//! withdrawals, pins, removals, host upgrades), appended to
//! `<data_dir>/audit.log`, one JSON object per line.
//!
//! Each entry is written and synced to disk before the change it records is
//! reported done, so a crash never loses an entry of a change that was
//! reported. The log is append-only through every interface: the admin API
//! and the CLI read it (`GET /api/audit`, `baton audit`), nothing rewrites or
//! deletes it, and `baton upgrade` hands it to the new process as a file
//! (the old one stops writing before the new one starts). A last line cut
//! short by a crash is skipped when reading, and the next entry starts on a
//! line of its own.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::clock::unix_ms;

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A version was deployed to every tenant.
    Deploy,
    /// A version was deployed to some tenants (a canary).
    Canary,
    /// A rollout moved on to more tenants.
    RolloutStep,
    /// A canary became the version of every tenant.
    Promote,
    /// An operator rolled back (a canary, or to the version before).
    Rollback,
    /// baton rolled back (a crash loop, or a canary that was unhealthy).
    AutoRollback,
    /// A version a tenant could not take was withdrawn.
    Withdrawal,
    /// A deployed file was refused; the version before serves on.
    DeployFailed,
    /// A tenant was pinned to a version.
    Pin,
    /// A tenant's pin was lifted.
    Unpin,
    /// A plugin was removed.
    Remove,
    /// baton itself was upgraded (`baton upgrade`).
    Upgrade,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its place in the log, from 1.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// Who asked: an admin token's name, `cli`, `deploy folder`,
    /// `baton` (a decision of the host's own), `cluster (node)`.
    pub who: String,
    /// What.
    pub action: Action,
    /// The plugin, if one.
    pub plugin: Option<String>,
    /// The version concerned (its hash), if one.
    pub version: Option<String>,
    /// The version before it, if one.
    pub from: Option<String>,
    /// The tenants concerned, if not all of them.
    pub tenants: Vec<String>,
    /// `ok`, or why not.
    pub outcome: String,
    /// Anything else worth knowing (the reason of an automatic rollback, with
    /// its figures; a rollout's step).
    pub detail: String,
}

/// What a caller says of a change; the log adds its number and time.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Who asked.
    pub who: String,
    /// The plugin.
    pub plugin: Option<String>,
    /// The version concerned.
    pub version: Option<String>,
    /// The version before it.
    pub from: Option<String>,
    /// The tenants concerned.
    pub tenants: Vec<String>,
    /// `ok` or why not (empty: `ok`).
    pub outcome: String,
    /// Anything else.
    pub detail: String,
}

/// The audit log of one host.
pub struct Audit {
    path: PathBuf,
    /// One append at a time in this process. (Another process appends only
    /// around `baton upgrade`, one after the other: each append reads the
    /// last number from the file itself.)
    appending: Mutex<()>,
}

impl Audit {
    /// The log in `data_dir`.
    pub fn new(data_dir: &Path) -> Audit {
        Audit {
            path: data_dir.join("audit.log"),
            appending: Mutex::new(()),
        }
    }

    /// Appends an entry and syncs it to disk; returns it. A log that cannot
    /// be written is reported (the change itself goes on: refusing a
    /// rollback because the disk is full would be worse).
    pub async fn record(&self, action: Action, record: Record) -> Option<Entry> {
        match tokio::task::block_in_place(|| self.append(action, record)) {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::error!(path = %self.path.display(), "cannot append to the audit log: {e}");
                metrics::counter!("baton_audit_errors_total").increment(1);
                None
            }
        }
    }

    fn append(&self, action: Action, record: Record) -> std::io::Result<Entry> {
        let _one = self.appending.lock().unwrap_or_else(|p| p.into_inner());
        let (last, whole) = last_entry(&self.path)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let entry = Entry {
            seq: last + 1,
            at_ms: unix_ms(),
            who: record.who,
            action,
            plugin: record.plugin,
            version: record.version,
            from: record.from,
            tenants: record.tenants,
            outcome: if record.outcome.is_empty() {
                "ok".into()
            } else {
                record.outcome
            },
            detail: record.detail,
        };
        let mut line = Vec::new();
        // A line a crash cut short ends here; this entry starts afresh.
        if !whole {
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, &entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        file.write_all(&line)?;
        file.sync_data()?;
        Ok(entry)
    }

    /// Entries after `since` (0: from the first), the last `limit` of them,
    /// oldest first.
    pub async fn entries(&self, since: u64, limit: usize) -> std::io::Result<Vec<Entry>> {
        let path = self.path.clone();
        let entries = tokio::task::spawn_blocking(move || read_entries(&path))
            .await
            .map_err(std::io::Error::other)??;
        let mut after: Vec<Entry> = entries.into_iter().filter(|e| e.seq > since).collect();
        let skip = after.len().saturating_sub(limit);
        after.drain(..skip);
        Ok(after)
    }
}

/// Every readable entry of the log at `path` (none when it does not exist).
fn read_entries(path: &Path) -> std::io::Result<Vec<Entry>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        if let Ok(entry) = serde_json::from_str::<Entry>(&line?) {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// The number of the last readable entry of the log at `path` (0 without
/// one), read from its end, and whether the file ends with a whole line.
fn last_entry(path: &Path) -> std::io::Result<(u64, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, true)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let tail = len.min(64 << 10);
    file.seek(SeekFrom::Start(len - tail))?;
    let mut bytes = Vec::with_capacity(tail as usize);
    file.read_to_end(&mut bytes)?;
    let whole = bytes.last().is_none_or(|b| *b == b'\n');
    let last = bytes
        .split(|b| *b == b'\n')
        .rev()
        .find_map(|line| serde_json::from_slice::<Entry>(line).ok())
        .map_or(0, |e| e.seq);
    Ok((last, whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn entries_are_numbered_kept_and_read_back_after_a_torn_line() {
        let dir = tempfile::tempdir().expect("dir");
        let audit = Audit::new(dir.path());
        let deploy = |who: &str| Record {
            who: who.into(),
            plugin: Some("echo".into()),
            version: Some("abc".into()),
            ..Record::default()
        };
        let first = audit.record(Action::Deploy, deploy("cli")).await.expect("written");
        assert_eq!((first.seq, first.outcome.as_str()), (1, "ok"));
        audit.record(Action::Pin, deploy("ops")).await.expect("written");

        // A crash cut a line short: it is skipped, and numbers go on.
        drop(audit);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.log"))
            .expect("open");
        file.write_all(b"{\"seq\":3,\"at_").expect("write");
        let audit = Audit::new(dir.path());
        let third = audit.record(Action::Promote, deploy("baton")).await.expect("written");
        assert_eq!(third.seq, 3);
        let all = audit.entries(0, 100).await.expect("read");
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[1].who, "ops");
        assert_eq!(audit.entries(1, 1).await.expect("read")[0].action, Action::Promote);
    }
}
