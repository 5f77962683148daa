//! What a deploy did ([`Outcome`]), or why it failed ([`DeployError`]), and
//! how a failure answers the admin API; what a dry run found ([`DryRun`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::instance::StartError;
use crate::runtime::LoadError;

/// Why a deploy, rollback or check failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The file or its settings could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The settings file is invalid.
    #[error("invalid settings {path}: {message}")]
    Settings {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The file is not a plugin for this host.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// `init` failed in a fresh instance.
    #[error(transparent)]
    Init(#[from] StartError),
    /// Nothing to do it to: no version to roll back to, no rollout to
    /// promote.
    #[error("{0}")]
    Rollback(String),
    /// No such plugin or version.
    #[error("{0}")]
    NotFound(String),
    /// A name or version that cannot be one.
    #[error("{0}")]
    Invalid(String),
    /// A file of the deploy folder is a symbolic link: links are not
    /// followed, so that nothing outside the folder is read.
    #[error("{path} is a symbolic link; copy or move the file into the deploy folder instead")]
    Link {
        /// The link.
        path: PathBuf,
    },
    /// The file is larger than `swap.max_file_mib`; it was not read.
    #[error("{path} has {size} bytes, more than swap.max_file_mib allows ({max} bytes); it was not read")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The data folder could not be written.
    #[error("cannot write to the data folder: {0}")]
    Data(std::io::Error),
}

impl DeployError {
    /// Whether the failure came from a resource of the host that may be back
    /// shortly (no file descriptor left), not from the file: worth a retry.
    pub fn is_transient(&self) -> bool {
        let io = match self {
            DeployError::Read { source, .. } => source,
            DeployError::Data(source) => source,
            DeployError::Load(LoadError::Spawn(source)) => source,
            _ => return false,
        };
        // EMFILE, ENFILE: the process's or the system's open-file limit;
        // EAGAIN, ENOMEM: no process could be started just now.
        matches!(io.raw_os_error(), Some(24 | 23 | 11 | 12))
    }
}

impl From<DeployError> for Rejection {
    fn from(error: DeployError) -> Rejection {
        match error {
            DeployError::Rollback(message) => Rejection::Conflict(message),
            DeployError::NotFound(message) => Rejection::NotFound(message),
            DeployError::Invalid(message) => Rejection::BadRequest(message),
            other => Rejection::Internal(other.to_string()),
        }
    }
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The version is now current.
    Activated {
        /// Its short hash.
        version: String,
        /// Its generation.
        generation: u64,
    },
    /// The version now runs for some tenants first (a rollout's canary).
    Canary {
        /// Its short hash.
        version: String,
        /// Its generation.
        generation: u64,
    },
    /// The file and settings are those of the current version (or of the
    /// canary): nothing to do.
    Unchanged,
}

/// A file the host checked for `baton deploy` ([`crate::deploy::Deployer::vet`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Vetted {
    /// The file's SHA-256 (hex).
    pub hash: String,
    /// Seats of the instance pool one of its instances takes.
    pub seats: u32,
    /// What it imports.
    pub imports: Vec<String>,
    /// What it exports.
    pub exports: Vec<String>,
}

/// What a dry run found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DryRun {
    /// The version tried (its hash).
    pub version: String,
    /// Each tenant tried, by name.
    pub tenants: Vec<TenantTrial>,
    /// How its interface differs from the current version's (a check).
    pub interface: Option<InterfaceDiff>,
}

/// One tenant's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantTrial {
    /// The tenant.
    pub tenant: String,
    /// `takes`, `refuses` (`import-state` refused), `traps` (in `init` or
    /// `import-state`), `fails` (`init` failed), or `skipped` (not tried:
    /// no room, or the live instance could not export its state).
    pub outcome: String,
    /// Why, when not `takes`.
    pub detail: String,
}

/// How a file's interface differs from the current version's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceDiff {
    /// Imports it has that the current version has not.
    pub imports_added: Vec<String>,
    /// Imports the current version has that it has not.
    pub imports_removed: Vec<String>,
    /// Exports it has that the current version has not.
    pub exports_added: Vec<String>,
    /// Exports the current version has that it has not.
    pub exports_removed: Vec<String>,
    /// Capabilities it needs that the plugin's settings do not grant.
    pub capabilities_missing: Vec<String>,
}

impl DryRun {
    /// The first tenant that would not take the version, and why.
    pub fn refusal(&self) -> Option<String> {
        self.tenants
            .iter()
            .find(|t| matches!(t.outcome.as_str(), "refuses" | "traps" | "fails"))
            .map(|t| {
                let what = match t.outcome.as_str() {
                    "refuses" => "refuses its state",
                    "traps" => "traps",
                    _ => "fails to start",
                };
                format!("tenant {} {what} on it: {}", t.tenant, t.detail)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lack_of_descriptors_is_worth_a_retry() {
        let read = |code: i32| DeployError::Read {
            path: PathBuf::from("x.wasm"),
            source: std::io::Error::from_raw_os_error(code),
        };
        assert!(read(24).is_transient(), "EMFILE");
        assert!(
            DeployError::Data(std::io::Error::from_raw_os_error(23)).is_transient(),
            "ENFILE"
        );
        assert!(!read(2).is_transient(), "ENOENT is the file's");
        assert!(!DeployError::Rollback("none".into()).is_transient());
    }
}
