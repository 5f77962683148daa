//! Where a plugin's tenants run besides its current version
//! ([`Placement`]): a *canary*, a newer version that some tenants get first,
//! and *pins*, tenants held on a version whatever is deployed.
//!
//! A tenant's target is its pin, else the canary if the canary's selection
//! takes it, else the current version ([`Placement::target`]). A selection
//! by percent hashes the tenant's name (SHA-256, [`share_of`]), so the same
//! tenants stay in a canary through every step, every restart and on every
//! node; a tenant task computes its share once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::names::share_of;
use crate::version::Version;

/// Which tenants a canary takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// These tenants.
    Tenants(BTreeSet<String>),
    /// This percent of the tenants, by a stable hash of their names.
    Percent(u8),
    /// These tenants, and this percent of the others.
    Both(BTreeSet<String>, u8),
}

impl Selection {
    /// Whether the selection takes `tenant`.
    pub fn contains(&self, tenant: &str) -> bool {
        self.takes(tenant, share_of(tenant))
    }

    /// Whether the selection takes `tenant`, whose [`share_of`] is `share`.
    pub fn takes(&self, tenant: &str, share: u16) -> bool {
        let below = |percent: u8| u32::from(share) < u32::from(percent) * 100;
        match self {
            Selection::Tenants(tenants) => tenants.contains(tenant),
            Selection::Percent(percent) => below(*percent),
            Selection::Both(tenants, percent) => tenants.contains(tenant) || below(*percent),
        }
    }

    /// The same tenants and `percent` of all of them.
    pub fn widened(&self, percent: u8) -> Selection {
        match self {
            Selection::Tenants(tenants) | Selection::Both(tenants, _) => Selection::Both(tenants.clone(), percent),
            Selection::Percent(_) => Selection::Percent(percent),
        }
    }

    /// The percent of tenants it takes by hash (0 for named tenants only).
    pub fn percent(&self) -> u8 {
        match self {
            Selection::Tenants(_) => 0,
            Selection::Percent(percent) | Selection::Both(_, percent) => *percent,
        }
    }

    /// How it reads: `tenants a, b`, `5 %`, `tenants a, b and 25 %`.
    pub fn describe(&self) -> String {
        let named = |tenants: &BTreeSet<String>| {
            format!(
                "tenants {}",
                tenants.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
            )
        };
        match self {
            Selection::Tenants(tenants) => named(tenants),
            Selection::Percent(percent) => format!("{percent} %"),
            Selection::Both(tenants, percent) => format!("{} and {percent} %", named(tenants)),
        }
    }
}

/// A version some tenants get before the others.
#[derive(Clone)]
pub struct Canary {
    /// The version.
    pub version: Arc<Version>,
    /// The tenants it takes now.
    pub selection: Selection,
    /// When it was deployed (Unix ms).
    pub since_ms: u64,
}

/// Where tenants run besides the current version.
#[derive(Clone, Default)]
pub struct Placement {
    /// A canary, if a rollout runs.
    pub canary: Option<Canary>,
    /// Tenants held on a version (kept loaded while pinned).
    pub pins: BTreeMap<String, Arc<Version>>,
}

impl Placement {
    /// The version `tenant` (whose [`share_of`] is `share`) should run,
    /// given the plugin's `current` one: none when the plugin was removed
    /// (whatever the pins say).
    pub fn target(&self, tenant: &str, share: u16, current: Option<Arc<Version>>) -> Option<Arc<Version>> {
        let current = current?;
        if let Some(pinned) = self.pins.get(tenant) {
            return Some(pinned.clone());
        }
        match &self.canary {
            Some(canary) if canary.selection.takes(tenant, share) => Some(canary.version.clone()),
            _ => Some(current),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percent_takes_about_that_share_and_always_the_same_names() {
        let names: Vec<String> = (0..10_000).map(|i| format!("tenant-{i}")).collect();
        let in_percent = |name: &str, percent: u8| Selection::Percent(percent).contains(name);
        let five = names.iter().filter(|n| in_percent(n, 5)).count();
        assert!((400..600).contains(&five), "{five} of 10,000 at 5 %");
        // Widening keeps everyone already in.
        assert!(names.iter().filter(|n| in_percent(n, 5)).all(|n| in_percent(n, 25)));
        assert!(names.iter().all(|n| in_percent(n, 100)));
        assert!(!names.iter().any(|n| in_percent(n, 0)));
    }

    #[test]
    fn named_tenants_stay_in_when_widened() {
        let named = Selection::Tenants(BTreeSet::from(["a".to_owned()]));
        assert!(named.contains("a") && !named.contains("zz-not-named"));
        let wider = named.widened(100);
        assert!(wider.contains("a") && wider.contains("zz-not-named"));
        assert_eq!(wider.describe(), "tenants a and 100 %");
    }
}
