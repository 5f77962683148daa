//! Who is in the cluster, and who owns what: the two JetStream key-value
//! buckets and this node's view of them.
//!
//! - `baton_nodes`: `{node}` → [`NodeInfo`], each node's liveness key,
//!   renewed every `cluster.renew_ms`. NATS 2.9 sends no event when a key
//!   expires, so every node keeps the time it last saw each key renewed
//!   ([`Members`]); one not renewed for `cluster.down_after_secs` is down.
//! - `baton_owners`: `{tenant}.{plugin}` → [`Owner`], written only when a
//!   tenant gets an owner or changes owner, by compare-and-set; the entry's
//!   revision is the owner's **fencing token**, which only grows (also
//!   across a deleted key), and which storage claims are ordered by.
//! - `baton_starts`: `{node}` → incarnation, written at every start: its
//!   revision, unique in the cluster, numbers that start's session ids.
//!
//! The buckets are made with `create_stream` in the shape of a key-value
//! bucket, then opened: async-nats 0.51's `create_key_value` fails against
//! nats-server 2.9, which does not send the account fields it expects.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

/// What a node says of itself in its liveness key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Drawn at random when the node starts: a node that restarts under the
    /// same name is a new incarnation, and the old one is down at once.
    pub incarnation: u64,
    /// Its client listener.
    pub client_addr: String,
    /// Its admin listener.
    pub admin_addr: String,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// Its process's start number (`baton_starts`).
    #[serde(default)]
    pub start: u64,
    /// Open sessions on it (as an edge).
    pub sessions: usize,
    /// Tenants it owns.
    pub owned: usize,
}

/// An ownership record: the node (and incarnation) whose task serves a
/// (tenant, plugin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The node.
    pub node: String,
    /// Its incarnation when it took the tenant.
    pub incarnation: u64,
    /// When (Unix ms).
    pub since_ms: u64,
}

/// An ownership record with its revision (the fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// The owner.
    pub owner: Owner,
    /// The record's revision.
    pub revision: u64,
}

/// Opens the bucket `name`, creating it if it does not exist.
pub async fn bucket(js: &jetstream::Context, name: &str, max_age: Duration) -> Result<kv::Store, async_nats::Error> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        storage: jetstream::stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    };
    if let Err(e) = js.create_stream(config).await {
        // Another node made it meanwhile.
        tracing::debug!("creating bucket {name}: {e}");
    }
    Ok(js.get_key_value(name).await?)
}

/// The key of a (tenant, plugin) in `baton_owners`.
pub fn owner_key(tenant: &str, plugin: &str) -> String {
    format!("{tenant}.{plugin}")
}

/// This node's view of the live nodes.
pub struct Members {
    seen: Mutex<HashMap<String, Seen>>,
    down_after: Duration,
    /// Until then a node not seen yet counts as live: this node has not
    /// had time to see every renewal.
    settling_until: Instant,
}

struct Seen {
    info: NodeInfo,
    at: Instant,
}

impl Members {
    /// No node seen yet.
    pub fn new(down_after: Duration) -> Members {
        Members {
            seen: Mutex::new(HashMap::new()),
            down_after,
            settling_until: Instant::now() + down_after,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A renewal of `node`'s key; returns the incarnation it replaced, which
    /// is down from now on.
    pub fn saw(&self, node: &str, info: NodeInfo) -> Option<u64> {
        let mut seen = self.seen();
        let replaced = seen
            .get(node)
            .map(|s| s.info.incarnation)
            .filter(|old| *old != info.incarnation);
        seen.insert(
            node.to_owned(),
            Seen {
                info,
                at: Instant::now(),
            },
        );
        replaced
    }

    /// Nodes whose key was not renewed for `down_after`: forgotten, and
    /// returned with their incarnations.
    pub fn expire(&self) -> Vec<(String, u64)> {
        let mut seen = self.seen();
        let down: Vec<(String, u64)> = seen
            .iter()
            .filter(|(_, s)| s.at.elapsed() >= self.down_after)
            .map(|(node, s)| (node.clone(), s.info.incarnation))
            .collect();
        for (node, _) in &down {
            seen.remove(node);
        }
        down
    }

    /// The start number of `node`'s live process, if seen.
    pub fn start_of(&self, node: &str) -> Option<u64> {
        self.seen().get(node).map(|s| s.info.start)
    }

    /// Forgets `node` at once (it said it leaves).
    pub fn left(&self, node: &str) -> Option<u64> {
        self.seen().remove(node).map(|s| s.info.incarnation)
    }

    /// Whether `node` in `incarnation` is live.
    pub fn is_live(&self, node: &str, incarnation: u64) -> bool {
        match self.seen().get(node) {
            Some(seen) => seen.info.incarnation == incarnation && seen.at.elapsed() < self.down_after,
            None => Instant::now() < self.settling_until,
        }
    }

    /// The live nodes and what they said of themselves, by name.
    pub fn live(&self) -> Vec<(String, NodeInfo)> {
        let mut live: Vec<(String, NodeInfo)> = self
            .seen()
            .iter()
            .filter(|(_, s)| s.at.elapsed() < self.down_after)
            .map(|(node, s)| (node.clone(), s.info.clone()))
            .collect();
        live.sort_by(|a, b| a.0.cmp(&b.0));
        live
    }
}

/// The ownership records as this node's watch has seen them.
#[derive(Default)]
pub struct OwnerMap {
    records: Mutex<HashMap<String, Owned>>,
}

impl OwnerMap {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Owned>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record of `key`, if seen.
    pub fn get(&self, key: &str) -> Option<Owned> {
        self.records().get(key).cloned()
    }

    /// A record read or written: kept unless a newer one is known.
    /// Returns whether it was kept.
    pub fn put(&self, key: &str, owned: Owned) -> bool {
        let mut records = self.records();
        match records.get(key) {
            Some(known) if known.revision >= owned.revision => false,
            _ => {
                records.insert(key.to_owned(), owned);
                true
            }
        }
    }

    /// A record deleted at `revision`; whether it was forgotten.
    pub fn remove(&self, key: &str, revision: u64) -> bool {
        let mut records = self.records();
        match records.get(key) {
            Some(known) if known.revision < revision => records.remove(key).is_some(),
            _ => false,
        }
    }

    /// How many tenants each node owns.
    pub fn owned_by(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for owned in self.records().values() {
            *counts.entry(owned.owner.node.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The keys of the records naming `node` in `incarnation`.
    pub fn keys_of(&self, node: &str, incarnation: u64) -> Vec<(String, u64)> {
        self.records()
            .iter()
            .filter(|(_, o)| o.owner.node == node && o.owner.incarnation == incarnation)
            .map(|(key, o)| (key.clone(), o.revision))
            .collect()
    }

    /// Every record, by key.
    pub fn all(&self) -> Vec<(String, Owned)> {
        let mut all: Vec<(String, Owned)> = self.records().iter().map(|(k, o)| (k.clone(), o.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(incarnation: u64) -> NodeInfo {
        NodeInfo {
            incarnation,
            client_addr: String::new(),
            admin_addr: String::new(),
            started_ms: 0,
            start: 0,
            sessions: 0,
            owned: 0,
        }
    }

    #[test]
    fn a_node_is_down_when_not_renewed_or_replaced() {
        let members = Members::new(Duration::from_millis(50));
        assert!(
            members.is_live("b", 9),
            "a node not seen yet counts as live while settling"
        );
        assert_eq!(members.saw("a", info(1)), None);
        assert!(members.is_live("a", 1) && !members.is_live("a", 2));
        assert_eq!(members.saw("a", info(2)), Some(1), "a restart is a new incarnation");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!members.is_live("a", 2) && !members.is_live("b", 9));
        assert_eq!(members.expire(), vec![("a".to_owned(), 2)]);
        assert!(members.expire().is_empty());
    }

    #[test]
    fn an_older_record_never_replaces_a_newer_one() {
        let map = OwnerMap::default();
        let owned = |node: &str, revision| Owned {
            owner: Owner {
                node: node.into(),
                incarnation: 1,
                since_ms: 0,
            },
            revision,
        };
        assert!(map.put("t.p", owned("a", 5)));
        assert!(!map.put("t.p", owned("b", 3)));
        assert_eq!(map.get("t.p").map(|o| o.revision), Some(5));
        assert!(!map.remove("t.p", 4), "a delete older than the record");
        assert!(map.remove("t.p", 6));
    }
}
