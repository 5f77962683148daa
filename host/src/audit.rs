//! The audit log: every change of what runs, who asked for it and how it
//! went (deploys, rollout steps, promotions, rollbacks manual or automatic,
//! withdrawals, pins, removals, host upgrades), appended to
//! `<data_dir>/audit.log`, one JSON object per line.
//!
//! Each entry is written and synced to disk before the change it records is
//! reported done, so a crash never loses an entry of a change that was
//! reported. (A log that cannot be written, a full disk say, is reported in
//! the log and `baton_audit_errors_total`; the change itself goes on.) The
//! log is append-only through every interface: the admin API and the CLI
//! read it (`GET /api/audit`, `baton audit`), nothing rewrites or deletes
//! it. Around `baton upgrade` both processes append: each append holds a
//! lock on the file and numbers its entry after the last one in the file,
//! so numbers stay unique and in order. A last line cut short by a crash is
//! skipped when reading, and the next entry starts on a line of its own.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// At most this many tenants are named in one entry (a step of a rollout
/// over many tenants says how many more).
const MAX_TENANTS: usize = 1_000;

/// The audit log of one host.
pub struct Audit {
    path: PathBuf,
    /// One append at a time in this process. (Another process appends only
    /// around `baton upgrade`, one after the other: each append reads the
    /// last number from the file itself.)
    appending: Arc<Mutex<()>>,
}

impl Audit {
    /// The log in `data_dir`.
    pub fn new(data_dir: &Path) -> Audit {
        Audit {
            path: data_dir.join("audit.log"),
            appending: Arc::default(),
        }
    }

    /// Appends an entry and syncs it to disk; returns it. A log that cannot
    /// be written is reported (the change itself goes on: refusing a
    /// rollback because the disk is full would be worse).
    pub async fn record(&self, action: Action, record: Record) -> Option<Entry> {
        let (path, appending) = (self.path.clone(), self.appending.clone());
        let appended = tokio::task::spawn_blocking(move || append(&path, &appending, action, record))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match appended {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::error!(path = %self.path.display(), "cannot append to the audit log: {e}");
                metrics::counter!("baton_audit_errors_total").increment(1);
                None
            }
        }
    }

    /// Oldest first: with `since`, the first `limit` entries after it (to
    /// page forward from the last one read); without, the last `limit`.
    pub async fn entries(&self, since: Option<u64>, limit: usize) -> std::io::Result<Vec<Entry>> {
        let path = self.path.clone();
        let mut entries = tokio::task::spawn_blocking(move || read_entries(&path))
            .await
            .map_err(std::io::Error::other)??;
        match since {
            Some(since) => {
                entries.retain(|e| e.seq > since);
                entries.truncate(limit);
            }
            None => {
                let skip = entries.len().saturating_sub(limit);
                entries.drain(..skip);
            }
        }
        Ok(entries)
    }
}

/// Appends an entry to the log at `path`, one at a time (`appending` in
/// this process, a lock on the file between the two processes of a
/// handover), and syncs it to disk.
fn append(path: &Path, appending: &Mutex<()>, action: Action, mut record: Record) -> std::io::Result<Entry> {
    let _one = appending.lock().unwrap_or_else(|p| p.into_inner());
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.lock()?;
    let (last, whole) = last_entry(path)?;
    if record.tenants.len() > MAX_TENANTS {
        let more = record.tenants.len() - MAX_TENANTS;
        record.tenants.truncate(MAX_TENANTS);
        let sep = if record.detail.is_empty() { "" } else { "; " };
        record.detail = format!("{}{sep}and {more} more tenants", record.detail);
    }
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
    file.unlock()?;
    Ok(entry)
}

/// Every readable entry of the log at `path` (none when it does not exist).
fn read_entries(path: &Path) -> std::io::Result<Vec<Entry>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // Lines as bytes: a line a crash cut in the middle of a character is
    // skipped like any other torn line.
    let mut entries = Vec::new();
    for line in std::io::BufReader::new(file).split(b'\n') {
        if let Ok(entry) = serde_json::from_slice::<Entry>(&line?) {
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
    // The tail, four times longer each time it holds no whole entry.
    let mut tail = len.min(64 << 10);
    loop {
        file.seek(SeekFrom::Start(len - tail))?;
        let mut bytes = Vec::with_capacity(tail as usize);
        file.read_to_end(&mut bytes)?;
        let whole = bytes.last().is_none_or(|b| *b == b'\n');
        let mut lines = bytes.split(|b| *b == b'\n');
        if tail < len {
            lines.next(); // Cut by the window: not a whole line.
        }
        let last = lines
            .rev()
            .find_map(|line| serde_json::from_slice::<Entry>(line).ok())
            .map(|e| e.seq);
        match last {
            Some(seq) => return Ok((seq, whole)),
            None if tail == len => return Ok((0, whole)),
            None => tail = len.min(tail * 4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
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
        let all = audit.entries(None, 100).await.expect("read");
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[1].who, "ops");
        // Paging forward, and the last ones.
        assert_eq!(audit.entries(Some(1), 1).await.expect("read")[0].action, Action::Pin);
        assert_eq!(audit.entries(None, 1).await.expect("read")[0].action, Action::Promote);

        // An entry longer than the tail read at first, and a torn character.
        let many = Record {
            tenants: (0..5_000).map(|i| format!("tenant-with-a-long-name-{i:05}")).collect(),
            detail: "x".repeat(100_000),
            ..deploy("baton")
        };
        let long = audit.record(Action::RolloutStep, many).await.expect("written");
        assert_eq!(long.tenants.len(), MAX_TENANTS);
        assert!(long.detail.ends_with("and 4000 more tenants"), "{}", long.detail);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("audit.log"))
            .expect("open");
        file.write_all(b"{\"seq\":5,\"who\":\"\xc3").expect("write");
        let next = audit.record(Action::Unpin, deploy("ops")).await.expect("written");
        assert_eq!(next.seq, 5);
        let all = audit.entries(None, 100).await.expect("read");
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    }
}
