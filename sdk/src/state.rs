//! Versioned state for hot swaps (OTP's `code_change`).
//!
//! During a hot swap the old version's [`crate::Plugin::export_state`] hands
//! bytes to the new version's [`crate::Plugin::import_state`]. Swaps go both
//! ways (a rollback hands a newer layout to an older version), so the bytes
//! carry the layout they were written with. Implement [`VersionedState`] on
//! your state type, bump [`VersionedState::LAYOUT`] whenever its shape
//! changes, and say in [`VersionedState::from_layout`] how to read the others:
//!
//! ```no_run
//! use baton_sdk::state::{Saved, VersionedState};
//! use serde::{Deserialize, Serialize};
//! use std::collections::BTreeMap;
//!
//! #[derive(Serialize, Deserialize)]
//! struct CountsV1 {
//!     counts: BTreeMap<u64, u64>,
//! }
//!
//! #[derive(Serialize, Deserialize)]
//! struct State {
//!     sessions: BTreeMap<u64, (u64, String)>,
//! }
//!
//! impl VersionedState for State {
//!     const LAYOUT: u32 = 2;
//!
//!     fn from_layout(saved: Saved) -> Result<Self, String> {
//!         match saved.layout() {
//!             1 => {
//!                 let v1: CountsV1 = saved.decode()?;
//!                 let sessions = v1.counts.into_iter().map(|(s, n)| (s, (n, String::new()))).collect();
//!                 Ok(State { sessions })
//!             }
//!             other => Err(format!("unknown state layout {other}")),
//!         }
//!     }
//! }
//! ```
//!
//! The encoding is JSON, `{"layout": N, "data": ...}`, so a plugin written in
//! another language can read and write it too.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// State saved by some version of the plugin, not yet decoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    layout: u32,
    data: serde_json::Value,
}

impl Saved {
    /// The layout version the state was written with.
    pub fn layout(&self) -> u32 {
        self.layout
    }

    /// Decodes the state as `T` (the type of the layout it was written with).
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, String> {
        serde_json::from_value(self.data).map_err(|e| format!("cannot read state layout {}: {e}", self.layout))
    }
}

/// A plugin state type that can be carried across versions of the plugin.
pub trait VersionedState: Serialize + DeserializeOwned {
    /// The layout this version writes. Change it whenever the type's shape
    /// changes.
    const LAYOUT: u32;

    /// Reads state written with another layout (older on upgrade, newer on a
    /// rollback). The default refuses, which keeps the tenant on its old
    /// version rather than losing its state.
    fn from_layout(saved: Saved) -> Result<Self, String> {
        Err(format!(
            "this version reads state layout {}, not {}",
            Self::LAYOUT,
            saved.layout
        ))
    }

    /// Encodes the state for [`crate::Plugin::export_state`].
    fn save(&self) -> Result<Vec<u8>, String> {
        let data = serde_json::to_value(self).map_err(|e| format!("cannot encode state: {e}"))?;
        let saved = Saved {
            layout: Self::LAYOUT,
            data,
        };
        serde_json::to_vec(&saved).map_err(|e| format!("cannot encode state: {e}"))
    }

    /// Replaces `self` with the state in `bytes` (as given to
    /// [`crate::Plugin::import_state`]); empty bytes leave `self` as it is.
    fn restore_into(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let Some(state) = Self::restore(bytes)? {
            *self = state;
        }
        Ok(())
    }

    /// Decodes the bytes given to [`crate::Plugin::import_state`]. `None` when
    /// the previous version had no state (empty bytes).
    fn restore(bytes: &[u8]) -> Result<Option<Self>, String> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let saved: Saved = serde_json::from_slice(bytes).map_err(|e| format!("not a baton state: {e}"))?;
        if saved.layout == Self::LAYOUT {
            saved.decode().map(Some)
        } else {
            Self::from_layout(saved).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Old {
        n: u64,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct New {
        count: u64,
        label: String,
    }

    impl VersionedState for Old {
        const LAYOUT: u32 = 1;
    }

    impl VersionedState for New {
        const LAYOUT: u32 = 2;

        fn from_layout(saved: Saved) -> Result<Self, String> {
            match saved.layout() {
                1 => {
                    let old: Old = saved.decode()?;
                    Ok(New {
                        count: old.n,
                        label: "migrated".into(),
                    })
                }
                other => Err(format!("unknown layout {other}")),
            }
        }
    }

    #[test]
    fn same_layout_round_trips() {
        let bytes = New {
            count: 3,
            label: "x".into(),
        }
        .save()
        .expect("save");
        assert_eq!(
            New::restore(&bytes).expect("restore"),
            Some(New {
                count: 3,
                label: "x".into()
            })
        );
    }

    #[test]
    fn an_older_layout_goes_through_from_layout() {
        let bytes = Old { n: 9 }.save().expect("save");
        assert_eq!(
            New::restore(&bytes).expect("restore"),
            Some(New {
                count: 9,
                label: "migrated".into()
            })
        );
    }

    #[test]
    fn an_unknown_layout_is_refused_not_dropped() {
        let bytes = New {
            count: 1,
            label: String::new(),
        }
        .save()
        .expect("save");
        let err = Old::restore(&bytes).expect_err("layout 2 is unknown to Old");
        assert!(err.contains("layout 1, not 2"), "{err}");
        assert!(Old::restore(b"not json").is_err());
    }

    #[test]
    fn empty_state_is_none() {
        assert_eq!(Old::restore(b"").expect("empty"), None);
        let mut kept = Old { n: 4 };
        kept.restore_into(b"").expect("empty");
        assert_eq!(kept, Old { n: 4 });
        kept.restore_into(&Old { n: 5 }.save().expect("save")).expect("restore");
        assert_eq!(kept, Old { n: 5 });
    }
}
