//! This node of the cluster ([`Cluster`]): its parts, and where tenants
//! live: the ownership records it knows, who owns a tenant (taking it when
//! nobody live does), the stand-ins for tenants owned elsewhere, and what
//! `baton status` shows. What arrives from NATS is handled in `events.rs`,
//! moves in `moves.rs`, joining in `mod.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::Serialize;

use super::edge::{self, News, Proxy, Target};
use super::members::{Members, Owned, Owner, OwnerMap, owner_key};
use super::owner::{Peer, RelayTo};
use crate::config::Config;
use crate::error::{Rejection, close};
use crate::tenant::{Opener, TenantHandle, TenantShared};

/// A peer's key: the edge node, its incarnation, the tenant, the plugin.
type PeerKey = (String, u64, String, String);

/// This host as a node of a cluster.
pub struct Cluster {
    /// This node's name.
    pub node: String,
    /// This start of it.
    pub incarnation: u64,
    /// This process's start number (`baton_starts`).
    pub(super) start: u64,
    pub(super) prefix: String,
    pub(super) client: async_nats::Client,
    pub(super) nodes: kv::Store,
    pub(super) owners: kv::Store,
    pub(super) members: Members,
    pub(super) records: OwnerMap,
    pub(super) opener: Arc<Opener>,
    pub(super) config: Arc<Config>,
    pub(super) addrs: (String, String),
    pub(super) proxies: Mutex<HashMap<(String, String), Proxy>>,
    pub(super) peers: Mutex<HashMap<PeerKey, Arc<Peer>>>,
    /// NATS is reachable.
    pub(super) connected: AtomicBool,
    /// This node could not renew its liveness key for long enough that
    /// others may take its tenants: it serves none of them.
    pub(super) fenced: AtomicBool,
    /// Drained: new tenants go to other nodes.
    pub(super) draining: AtomicBool,
    /// Handed over to a new process (`baton upgrade`): it reads nothing more.
    pub(super) silenced: AtomicBool,
    /// Tenants (`tenant.plugin`) moving away from this node right now: the
    /// new ownership record is this node's own doing, not a loss.
    pub(super) moving: Mutex<std::collections::HashSet<String>>,
    pub(super) last_renewed: Mutex<Instant>,
}

/// What `baton status` and the dashboard show of the cluster.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ClusterView {
    /// This node.
    pub node: String,
    /// Whether NATS is reachable.
    pub connected: bool,
    /// Whether this node stopped serving its tenants (it could not renew).
    pub fenced: bool,
    /// The live nodes.
    pub nodes: Vec<NodeView>,
    /// Where each tenant lives: `tenant.plugin` → node.
    pub owners: Vec<(String, String)>,
}

/// One live node.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Its client listener.
    pub client_addr: String,
    /// Its admin listener.
    pub admin_addr: String,
    /// Open sessions on it.
    pub sessions: usize,
    /// Tenants it owns.
    pub owned: usize,
}

impl Cluster {
    /// The tenant's task for `plugin`: here when this node owns it (taking it
    /// when it has no live owner), else a stand-in forwarding to its owner.
    pub async fn open(self: &Arc<Self>, tenant: &str, plugin: &str) -> Result<TenantHandle, Rejection> {
        if self.opener.registry.deployed(plugin).is_none() {
            return self.opener.open(tenant, plugin, 0);
        }
        self.opener.allowed(tenant)?;
        if self.fenced.load(Ordering::Relaxed) {
            return Err(unreachable_nats());
        }
        let key = owner_key(tenant, plugin);
        if let Some(owned) = self.records.get(&key)
            && self.is_me(&owned.owner)
        {
            return self.opener.open(tenant, plugin, owned.revision);
        }
        if !self.connected.load(Ordering::Relaxed) {
            return Err(unreachable_nats());
        }
        if let Some(proxy) = self.lock_proxies().get(&(tenant.to_owned(), plugin.to_owned()))
            && !proxy.handle.is_closed()
        {
            return Ok(proxy.handle.clone());
        }
        match self.owner_of(tenant, plugin).await? {
            owned if self.is_me(&owned.owner) => self.opener.open(tenant, plugin, owned.revision),
            owned => Ok(self.proxy(tenant, plugin, owned)),
        }
    }

    /// The tenant's task for `plugin` if this node owns it (taking it when
    /// it has no live owner, as [`Cluster::open`] does), else `None`: for
    /// work of the tenant's own (its jobs) that only its owner runs, so no
    /// forwarding stand-in is made.
    pub async fn open_owned(self: &Arc<Self>, tenant: &str, plugin: &str) -> Result<Option<TenantHandle>, Rejection> {
        if self.opener.registry.deployed(plugin).is_none()
            || self.fenced.load(Ordering::Relaxed)
            || !self.connected.load(Ordering::Relaxed)
        {
            return Ok(None);
        }
        self.opener.allowed(tenant)?;
        let owned = self.owner_of(tenant, plugin).await?;
        match self.is_me(&owned.owner) {
            true => self.opener.open(tenant, plugin, owned.revision).map(Some),
            false => Ok(None),
        }
    }

    pub(super) async fn load_records(&self) -> anyhow::Result<()> {
        let mut keys = self.owners.keys().await?;
        while let Some(key) = keys.next().await {
            let key = key?;
            if let Some(owned) = self.fetch(&key).await.map_err(|e| anyhow::anyhow!("{e}"))? {
                self.records.put(&key, owned);
            }
        }
        Ok(())
    }

    /// The ownership record revision this node holds for (tenant, plugin),
    /// or 0.
    pub fn lease_of(&self, tenant: &str, plugin: &str) -> u64 {
        self.records
            .get(&owner_key(tenant, plugin))
            .filter(|o| self.is_me(&o.owner))
            .map_or(0, |o| o.revision)
    }

    pub(super) fn is_me(&self, owner: &Owner) -> bool {
        owner.node == self.node && owner.incarnation == self.incarnation
    }

    pub(super) fn subject(&self, node: &str) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    /// The live owner of (tenant, plugin): the one recorded, or this node or
    /// the least-loaded one when none is (by compare-and-set), or this node
    /// when the recorded one is down (likewise).
    pub(super) async fn owner_of(&self, tenant: &str, plugin: &str) -> Result<Owned, Rejection> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err(unreachable_nats());
        }
        let key = owner_key(tenant, plugin);
        for _ in 0..5 {
            let known = match self.records.get(&key) {
                Some(owned) => Some(owned),
                None => {
                    let fetched = self.fetch(&key).await?;
                    if let Some(owned) = &fetched {
                        self.records.put(&key, owned.clone());
                    }
                    fetched
                }
            };
            match known {
                Some(owned)
                    if self.is_me(&owned.owner) || self.members.is_live(&owned.owner.node, owned.owner.incarnation) =>
                {
                    return Ok(owned);
                }
                Some(dead) => {
                    if let Some(owned) = self.write_owner(&key, self.me(), Some(dead.revision)).await? {
                        tracing::info!(tenant, plugin, from = %dead.owner.node, "took the tenant over from a node that is down");
                        return Ok(owned);
                    }
                }
                None => {
                    if let Some(owned) = self.write_owner(&key, self.placement(), None).await? {
                        return Ok(owned);
                    }
                }
            }
            // Another node wrote first: read what it wrote.
            let fresh = self.fetch(&key).await?;
            if let Some(owned) = fresh {
                self.records.put(&key, owned);
            }
        }
        Err(Rejection::Unavailable(
            "the tenant's owner keeps changing; try again".into(),
        ))
    }

    pub(super) fn me(&self) -> Owner {
        Owner {
            node: self.node.clone(),
            incarnation: self.incarnation,
            since_ms: crate::clock::unix_ms(),
        }
    }

    /// Where a tenant nobody owns goes: this node, unless it owns more than
    /// `cluster.load_guard` times the average; then the live node owning the
    /// fewest.
    pub(super) fn placement(&self) -> Owner {
        let live = self.members.live();
        let counts = self.records.owned_by();
        let owned = |node: &str| counts.get(node).copied().unwrap_or(0);
        let mine = owned(&self.node);
        if self.draining.load(Ordering::Relaxed)
            && let Some((node, info)) = live
                .iter()
                .filter(|(n, _)| n != &self.node)
                .min_by_key(|(n, _)| owned(n))
        {
            return Owner {
                node: node.clone(),
                incarnation: info.incarnation,
                since_ms: crate::clock::unix_ms(),
            };
        }
        if live.len() > 1 {
            let average = live.iter().map(|(n, _)| owned(n)).sum::<usize>() as f64 / live.len() as f64;
            if mine >= 4
                && mine as f64 > self.config.cluster.load_guard * average
                && let Some((node, info)) = live.iter().min_by_key(|(n, _)| owned(n))
                && node != &self.node
            {
                return Owner {
                    node: node.clone(),
                    incarnation: info.incarnation,
                    since_ms: crate::clock::unix_ms(),
                };
            }
        }
        self.me()
    }

    pub(super) async fn fetch(&self, key: &str) -> Result<Option<Owned>, Rejection> {
        let entry = self
            .owners
            .entry(key)
            .await
            .map_err(|e| nats_error("read an ownership record", e))?;
        Ok(entry.and_then(|entry| {
            let owner = (entry.operation == kv::Operation::Put)
                .then(|| serde_json::from_slice::<Owner>(&entry.value).ok())
                .flatten()?;
            Some(Owned {
                owner,
                revision: entry.revision,
            })
        }))
    }

    /// Writes `owner` as the record of `key` if it is still at `revision`
    /// (`None`: if there is none); `None` when another write came first.
    pub(super) async fn write_owner(
        &self,
        key: &str,
        owner: Owner,
        revision: Option<u64>,
    ) -> Result<Option<Owned>, Rejection> {
        let value: bytes::Bytes = serde_json::to_vec(&owner).unwrap_or_default().into();
        let written = match revision {
            Some(revision) => self
                .owners
                .update(key, value, revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(nats_error("write an ownership record", e)),
                }),
            None => self.owners.create(key, value).await.map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => None,
                _ => Some(nats_error("write an ownership record", e)),
            }),
        };
        match written {
            Ok(revision) => {
                let owned = Owned { owner, revision };
                self.records.put(key, owned.clone());
                Ok(Some(owned))
            }
            Err(None) => Ok(None),
            Err(Some(rejection)) => Err(rejection),
        }
    }

    /// The stand-in for (tenant, plugin) forwarding to `owned`.
    pub(super) fn proxy(self: &Arc<Self>, tenant: &str, plugin: &str, owned: Owned) -> TenantHandle {
        let mut proxies = self.lock_proxies();
        let key = (tenant.to_owned(), plugin.to_owned());
        if let Some(proxy) = proxies.get(&key)
            && !proxy.handle.is_closed()
        {
            return proxy.handle.clone();
        }
        let subject = self.subject(&owned.owner.node);
        let sessions = &self.config.sessions;
        let proxy = Proxy::start(
            self.clone(),
            tenant,
            plugin,
            Target::Remote { owned, subject },
            (sessions.mailbox.get(), sessions.mailbox_bytes.get()),
        );
        let handle = proxy.handle.clone();
        proxies.insert(key, proxy);
        handle
    }

    pub(super) fn lock_proxies(&self) -> MutexGuard<'_, HashMap<(String, String), Proxy>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn lock_peers(&self) -> MutexGuard<'_, HashMap<PeerKey, Arc<Peer>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn relay_to(&self, edge: &str, token: u64) -> RelayTo {
        RelayTo {
            client: self.client.clone(),
            edge_subject: self.subject(edge),
            node: (self.node.clone(), self.incarnation, self.start),
            token,
        }
    }

    /// Leaving the cluster at shutdown: the tenants this node owned are
    /// released (after their state was kept), and its key deleted, so that
    /// others take over at once.
    pub async fn leave(&self) {
        for (key, revision) in self.records.keys_of(&self.node, self.incarnation) {
            let _ = self.owners.delete_expect_revision(&key, Some(revision)).await;
        }
        let _ = self.nodes.delete(&self.node).await;
        let _ = self.client.flush().await;
        tracing::info!("left the cluster");
    }

    /// This process handed everything to a new one (`baton upgrade`), which
    /// reads the same subject: this one takes no message any more.
    pub fn silence(&self) {
        self.silenced.store(true, Ordering::Relaxed);
    }

    /// Stops every forwarded session (shutdown); the owners hear them leave.
    pub fn close_forwarded(&self) {
        for proxy in self.lock_proxies().values() {
            proxy
                .handle
                .shared()
                .stop_sessions(close::GOING_AWAY, "the host is shutting down");
            let _ = proxy.news.send(News::Gap);
        }
    }

    /// What `baton status` shows.
    pub fn view(&self) -> ClusterView {
        let counts = self.records.owned_by();
        ClusterView {
            node: self.node.clone(),
            connected: self.connected.load(Ordering::Relaxed),
            fenced: self.fenced.load(Ordering::Relaxed),
            nodes: self
                .members
                .live()
                .into_iter()
                .map(|(name, info)| NodeView {
                    owned: counts.get(&name).copied().unwrap_or(0),
                    name,
                    client_addr: info.client_addr,
                    admin_addr: info.admin_addr,
                    sessions: info.sessions,
                })
                .collect(),
            owners: self
                .records
                .all()
                .into_iter()
                .map(|(key, owned)| (key, owned.owner.node))
                .collect(),
        }
    }
}

impl edge::Node for Cluster {
    async fn after_owner_down(&self, tenant: &str, plugin: &str, dead: Owned) -> Result<Target, Rejection> {
        let key = owner_key(tenant, plugin);
        let owned = match self.write_owner(&key, self.me(), Some(dead.revision)).await? {
            Some(owned) => {
                tracing::info!(tenant, plugin, from = %dead.owner.node, "took the tenant over from a node that is down");
                owned
            }
            None => self
                .fetch(&key)
                .await?
                .ok_or_else(|| Rejection::Unavailable("the tenant has no owner; connect again".into()))?,
        };
        if self.is_me(&owned.owner) {
            return self.opener.open(tenant, plugin, owned.revision).map(Target::Local);
        }
        let subject = self.subject(&owned.owner.node);
        Ok(Target::Remote { owned, subject })
    }

    fn client(&self) -> (&async_nats::Client, &str, u64, u64) {
        (&self.client, &self.node, self.incarnation, self.start)
    }

    fn start_of(&self, node: &str) -> u64 {
        self.members.start_of(node).unwrap_or(0)
    }

    fn subject_of(&self, node: &str) -> String {
        self.subject(node)
    }

    fn forget(&self, tenant: &str, plugin: &str, shared: &Arc<TenantShared>) {
        let mut proxies = self.lock_proxies();
        let key = (tenant.to_owned(), plugin.to_owned());
        if proxies
            .get(&key)
            .is_some_and(|p| Arc::ptr_eq(p.handle.shared(), shared))
        {
            proxies.remove(&key);
        }
    }
}

pub(super) fn unreachable_nats() -> Rejection {
    Rejection::Unavailable("the cluster cannot reach the tenant's node right now; try again".into())
}

pub(super) fn nats_error(what: &str, e: impl std::fmt::Display) -> Rejection {
    tracing::warn!("cannot {what}: {e}");
    unreachable_nats()
}

/// 64 random bits (an incarnation), from the system's random source.
pub(super) fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        return crate::clock::unix_ms() ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(bytes)
}
