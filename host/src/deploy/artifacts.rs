//! The host's own copies of what it deployed, in the data folder:
//!
//! - `artifacts/<sha256>.wasm`: the bytes of every version ever activated, so
//!   a rollback does not depend on the deploy folder still holding them;
//! - `cache/<sha256>-<engine>.cwasm`: compiled code, keyed by the file's hash
//!   and the engine's compatibility hash, so a restart with unchanged plugins
//!   (or a rollback) loads in microseconds instead of recompiling;
//! - `history/<plugin>.json`: each plugin's activations, so generations keep
//!   growing and rollback works across host restarts.
//!
//! Every file is written to a temporary name and renamed into place, so a
//! crash never leaves a half-written artifact under a real name. Compiled code
//! is only ever loaded from here, never from the deploy folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::registry::VersionRecord;
use crate::version::VersionId;

/// The data folder's artifact store.
pub struct Artifacts {
    originals: PathBuf,
    cache: PathBuf,
    history: PathBuf,
    engine: String,
}

/// A plugin's persisted history, and what runs besides its current version.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct History {
    /// The last generation handed out.
    pub generation: u64,
    /// Activations, oldest first.
    pub records: Vec<VersionRecord>,
    /// The rollout running, if one.
    #[serde(default)]
    pub canary: Option<CanaryRecord>,
    /// Pinned tenants and their versions.
    #[serde(default)]
    pub pins: std::collections::BTreeMap<String, KeptVersion>,
}

/// A rollout as kept: its version and the tenants it takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// The canary.
    #[serde(flatten)]
    pub version: KeptVersion,
    /// The tenants it takes.
    pub selection: crate::registry::Selection,
}

/// A version kept running besides the current one: its hash and the
/// generation it ran as.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeptVersion {
    /// Its hash (hex).
    pub hash: String,
    /// Its generation.
    pub generation: u64,
}

impl KeptVersion {
    /// How `version` is kept.
    pub fn of(version: &crate::version::Version) -> KeptVersion {
        KeptVersion {
            hash: version.id.hex(),
            generation: version.generation,
        }
    }
}

impl Artifacts {
    /// Opens (creating) the store under `data_dir` for an engine whose
    /// compatibility hash is `engine`.
    pub fn open(data_dir: &Path, engine: String) -> std::io::Result<Artifacts> {
        let artifacts = Artifacts {
            originals: data_dir.join("artifacts"),
            cache: data_dir.join("cache"),
            history: data_dir.join("history"),
            engine,
        };
        for dir in [&artifacts.originals, &artifacts.cache, &artifacts.history] {
            std::fs::create_dir_all(dir)?;
        }
        Ok(artifacts)
    }

    /// Where the compiled code of `id` is cached for this engine.
    pub fn compiled_path(&self, id: &VersionId) -> PathBuf {
        self.cache.join(format!("{}-{}.cwasm", id.hex(), self.engine))
    }

    /// Where a compiler process writes the compiled code of `id` before it is
    /// known to be good (then [`Artifacts::commit_compiled`]). Each call gets
    /// a path of its own: two plugins of the same bytes may compile at once.
    pub fn compiling_path(&self, id: &VersionId) -> PathBuf {
        static COMPILES: AtomicU64 = AtomicU64::new(0);
        let n = COMPILES.fetch_add(1, Ordering::Relaxed);
        self.cache.join(format!(
            ".{}-{}.{}-{n}.compiling",
            id.hex(),
            self.engine,
            std::process::id()
        ))
    }

    /// Moves compiled code from [`Artifacts::compiling_path`] into the cache.
    pub fn commit_compiled(&self, id: &VersionId, compiling: &Path) -> std::io::Result<()> {
        std::fs::rename(compiling, self.compiled_path(id))
    }

    /// Forgets unusable compiled code.
    pub fn discard_compiled(&self, id: &VersionId) {
        let _ = std::fs::remove_file(self.compiled_path(id));
    }

    /// Stores the original bytes of a version (once).
    pub fn store_original(&self, id: &VersionId, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.originals.join(format!("{}.wasm", id.hex()));
        if path.exists() {
            return Ok(());
        }
        write_atomically(&path, bytes)
    }

    /// The original bytes of a version, if stored.
    pub fn original(&self, id: &VersionId) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.original_path(id))
    }

    /// Where the original bytes of a version are kept.
    pub fn original_path(&self, id: &VersionId) -> PathBuf {
        self.originals.join(format!("{}.wasm", id.hex()))
    }

    /// A plugin's history (empty when it has none or it is unreadable).
    pub fn history(&self, plugin: &str) -> History {
        let path = self.history.join(format!("{plugin}.json"));
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "ignoring unreadable history: {e}");
                History::default()
            }),
            Err(_) => History::default(),
        }
    }

    /// Saves a plugin's history.
    pub fn save_history(&self, plugin: &str, history: &History) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(history).map_err(std::io::Error::other)?;
        write_atomically(&self.history.join(format!("{plugin}.json")), &bytes)
    }
}

/// Writes `bytes` to a temporary file beside `path` and syncs it, renames it
/// into place and syncs the folder: after a crash, `path` holds either the
/// old bytes or the new ones, and once this returns, the new ones.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("artifact");
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{write}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn originals_and_history_round_trip() {
        let dir = std::env::temp_dir().join(format!("baton-artifacts-{}", std::process::id()));
        let store = Artifacts::open(&dir, "e1".into()).expect("open");
        let id = VersionId::of(b"abc");
        store.store_original(&id, b"abc").expect("store");
        assert_eq!(store.original(&id).expect("read"), b"abc");
        assert!(store.compiled_path(&id).ends_with(format!("{}-e1.cwasm", id.hex())));

        let mut history = store.history("echo");
        assert_eq!(history.generation, 0);
        history.generation = 7;
        store.save_history("echo", &history).expect("save");
        assert_eq!(store.history("echo").generation, 7);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
