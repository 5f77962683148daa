//! The cluster: several baton hosts serving as one, on NATS.
//!
//! Each (tenant, plugin) has one *owner* node, whose task runs its instance
//! exactly as on a single host; any node may hold its sessions (the node
//! that terminates a socket is its *edge*). An edge that is not the owner
//! runs a stand-in for the tenant ([`edge::Proxy`]) that forwards to the
//! owner, where a [`owner::Peer`] per edge hands everything to the tenant's
//! task and streams its sends back. A node that is both takes the local
//! path, unchanged. Files:
//!
//! - `wire.rs`: the messages between nodes, numbered;
//! - `members.rs`: the liveness and ownership buckets and this node's view
//!   of them;
//! - `edge.rs`, `owner.rs`: the two sides of a forwarded session;
//! - `deploys.rs`: a file deployed on one node reaching every node;
//! - `moves.rs`: moving a tenant to another node live (`baton drain`).
//!
//! Session ids are unique across the cluster (each start of a node draws
//! its own range, see [`Cluster::join`]), so a tenant's sessions keep the
//! ids the plugin knows wherever their sockets are, and after a failover.
//!
//! Subjects (under `cluster.subject_prefix`): `{prefix}.node.{node}` takes
//! everything sent to a node, so one subscription per node serves every
//! tenant, and the messages of one (tenant, plugin) from one node arrive in
//! the order they were sent (NATS keeps a publisher's order).
//!
//! Core NATS delivers at most once: a message can be dropped by a slow
//! subscription or across a reconnect while every publish succeeds. Every
//! message is numbered and checked; a reconnect or a slow-consumer event
//! (NATS dropped something this node did not see) ends every forwarded
//! session with 1012, so nothing is ever lost silently.

pub mod deploys;
pub mod edge;
pub mod members;
pub mod moves;
pub mod owner;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::error::{Rejection, close};
use crate::session::link::{SessionId, SessionLink};
use crate::tenant::Verdict;
use crate::tenant::record::StateRecord;
use crate::tenant::{Command, Opener, TenantHandle, TenantShared};
use edge::{News, Proxy, Target};
use members::{Members, NodeInfo, Owned, Owner, OwnerMap, bucket, owner_key};
use moves::{Arrival, Arrived, DrainView, PAUSE_WITHIN};
use owner::{Peer, PeerId, Relay, RelayTo};
use wire::{Body, Envelope};

/// A peer's key: the edge node, its incarnation, the tenant, the plugin.
type PeerKey = (String, u64, String, String);

/// This host as a node of a cluster.
pub struct Cluster {
    /// This node's name.
    pub node: String,
    /// This start of it.
    pub incarnation: u64,
    /// This process's start number (`baton_starts`).
    start: u64,
    prefix: String,
    client: async_nats::Client,
    nodes: kv::Store,
    owners: kv::Store,
    members: Members,
    records: OwnerMap,
    opener: Arc<Opener>,
    config: Arc<Config>,
    addrs: (String, String),
    proxies: Mutex<HashMap<(String, String), Proxy>>,
    peers: Mutex<HashMap<PeerKey, Arc<Peer>>>,
    /// NATS is reachable.
    connected: AtomicBool,
    /// This node could not renew its liveness key for long enough that
    /// others may take its tenants: it serves none of them.
    fenced: AtomicBool,
    /// Drained: new tenants go to other nodes.
    draining: AtomicBool,
    /// Handed over to a new process (`baton upgrade`): it reads nothing more.
    silenced: AtomicBool,
    /// Tenants (`tenant.plugin`) moving away from this node right now: the
    /// new ownership record is this node's own doing, not a loss.
    moving: Mutex<std::collections::HashSet<String>>,
    last_renewed: Mutex<Instant>,
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
    /// Joins the cluster `config.cluster` names: connects to NATS, opens
    /// the buckets, subscribes, and starts renewing this node's key.
    pub async fn join(
        config: Arc<Config>,
        opener: Arc<Opener>,
        deployer: &crate::deploy::Deployer,
        addrs: (String, String),
        sessions: impl Fn() -> usize + Send + Sync + 'static,
        taking_over: bool,
    ) -> anyhow::Result<Arc<Cluster>> {
        let settings = &config.cluster;
        let (Some(url), Some(node)) = (&settings.nats_url, &settings.node) else {
            anyhow::bail!("cluster.nats_url and cluster.node are both needed");
        };
        let (events, mut heard) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("baton {node}"))
            .subscription_capacity(settings.subscription_capacity)
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(1000)))
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event);
                }
            })
            .connect(url.as_str())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot reach NATS at {}: {e}",
                    settings.url_for_display().unwrap_or_default()
                )
            })?;
        let js = async_nats::jetstream::new(client.clone());
        let down_after = Duration::from_secs(settings.down_after_secs);
        let nodes = bucket(&js, "baton_nodes", down_after)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the NATS bucket baton_nodes (is JetStream on?): {e}"))?;
        let owners = bucket(&js, "baton_owners", Duration::ZERO)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the NATS bucket baton_owners: {e}"))?;
        // Session ids are unique in the whole cluster: each start of a node
        // takes a new revision of its key here, and its ids begin at that
        // revision times 2^32 (4 billion sessions per start; ids stay below
        // 2^53 for the first 2 million starts, so JavaScript reads them).
        let starts = bucket(&js, "baton_starts", Duration::ZERO)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the NATS bucket baton_starts: {e}"))?;
        // A process taking over from the old one by `baton upgrade` is the
        // same incarnation of the node: what it owns stays its own.
        let kept = config.data_dir.join("cluster-incarnation");
        let inherited = match taking_over {
            true => std::fs::read_to_string(&kept).ok().and_then(|s| s.trim().parse().ok()),
            false => None,
        };
        let incarnation = inherited.unwrap_or_else(rand_u64);
        std::fs::write(&kept, incarnation.to_string())?;
        let start = starts
            .put(node, incarnation.to_string().into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot record this node's start in NATS: {e}"))?;
        crate::session::link::continue_from(start << 32);
        let deploys = deploys::Deploys::open(&js, config.deploy_dir.clone(), node.clone()).await?;
        if let Err(e) = deploys.pull_all().await {
            tracing::warn!("cannot take the cluster's versions into the deploy folder: {e}");
        }
        let (published, changes) = mpsc::unbounded_channel();
        deployer.publish_to(published);
        tokio::spawn(deploys.run(changes));
        let prefix = settings.subject_prefix.clone();
        let inbox = client.subscribe(format!("{prefix}.node.{node}")).await?;
        let moves = client.subscribe(format!("{prefix}.ctl.{node}")).await?;
        let cluster = Arc::new(Cluster {
            node: node.clone(),
            incarnation,
            start,
            prefix,
            client,
            nodes,
            owners,
            members: Members::new(down_after),
            records: OwnerMap::default(),
            opener,
            config: config.clone(),
            addrs,
            proxies: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(true),
            fenced: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            silenced: AtomicBool::new(false),
            moving: Mutex::new(Default::default()),
            last_renewed: Mutex::new(Instant::now()),
        });
        if taking_over {
            // The tenants handed over keep the records this node holds: read
            // them before they are installed.
            cluster.load_records().await?;
        }
        cluster.renew(sessions()).await?;
        tracing::info!(node = %cluster.node, incarnation = cluster.incarnation, "joined the cluster");

        let weak = Arc::downgrade(&cluster);
        tokio::spawn(async move {
            while let Some(event) = heard.recv().await {
                let Some(cluster) = weak.upgrade() else { return };
                cluster.event(event);
            }
        });
        tokio::spawn(dispatch(Arc::downgrade(&cluster), inbox));
        tokio::spawn(serve_moves(Arc::downgrade(&cluster), moves));
        tokio::spawn(watch_nodes(Arc::downgrade(&cluster)));
        tokio::spawn(watch_owners(Arc::downgrade(&cluster)));
        tokio::spawn(keep_alive(Arc::downgrade(&cluster), Box::new(sessions)));
        Ok(cluster)
    }

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

    async fn load_records(&self) -> anyhow::Result<()> {
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

    fn is_me(&self, owner: &Owner) -> bool {
        owner.node == self.node && owner.incarnation == self.incarnation
    }

    fn subject(&self, node: &str) -> String {
        format!("{}.node.{node}", self.prefix)
    }

    /// The live owner of (tenant, plugin): the one recorded, or this node or
    /// the least-loaded one when none is (by compare-and-set), or this node
    /// when the recorded one is down (likewise).
    async fn owner_of(&self, tenant: &str, plugin: &str) -> Result<Owned, Rejection> {
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

    fn me(&self) -> Owner {
        Owner {
            node: self.node.clone(),
            incarnation: self.incarnation,
            since_ms: crate::clock::unix_ms(),
        }
    }

    /// Where a tenant nobody owns goes: this node, unless it owns more than
    /// `cluster.load_guard` times the average; then the live node owning the
    /// fewest.
    fn placement(&self) -> Owner {
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

    async fn fetch(&self, key: &str) -> Result<Option<Owned>, Rejection> {
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
    async fn write_owner(&self, key: &str, owner: Owner, revision: Option<u64>) -> Result<Option<Owned>, Rejection> {
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
    fn proxy(self: &Arc<Self>, tenant: &str, plugin: &str, owned: Owned) -> TenantHandle {
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

    fn lock_proxies(&self) -> MutexGuard<'_, HashMap<(String, String), Proxy>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_peers(&self) -> MutexGuard<'_, HashMap<PeerKey, Arc<Peer>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message to this node.
    async fn received(self: &Arc<Self>, envelope: Envelope) {
        match &envelope.body {
            Body::Connect { .. } | Body::Frame { .. } | Body::Disconnect { .. } | Body::Http { .. } | Body::Paused => {
                self.from_edge(envelope).await;
            }
            _ => {
                let key = (envelope.tenant.clone(), envelope.plugin.clone());
                if let Some(proxy) = self.lock_proxies().get(&key) {
                    let _ = proxy.news.send(News::Message(envelope));
                }
            }
        }
    }

    /// A message from an edge, for a tenant this node should own.
    async fn from_edge(self: &Arc<Self>, envelope: Envelope) {
        let key = (
            envelope.node.clone(),
            envelope.incarnation,
            envelope.tenant.clone(),
            envelope.plugin.clone(),
        );
        let peer = self.lock_peers().get(&key).filter(|p| !p.is_closed()).cloned();
        let peer = match peer {
            Some(peer) => peer,
            // Mid-stream from an edge this process has no stream with (it
            // took over from another process by `baton upgrade`, or lost
            // the peer): the edge's sessions end (1012) and connect again.
            None if !matches!(envelope.body, Body::Connect { .. } | Body::Http { .. }) => {
                self.moved(&envelope).await;
                return;
            }
            None => match self.new_peer(&envelope).await {
                Some(peer) => {
                    self.lock_peers().insert(key, peer.clone());
                    peer
                }
                None => {
                    self.moved(&envelope).await;
                    return;
                }
            },
        };
        peer.deliver(envelope);
    }

    /// The peer of the edge that sent `envelope`, if this node owns its
    /// tenant under the token the edge has.
    async fn new_peer(self: &Arc<Self>, envelope: &Envelope) -> Option<Arc<Peer>> {
        if self.fenced.load(Ordering::Relaxed) {
            return None;
        }
        let key = owner_key(&envelope.tenant, &envelope.plugin);
        let owned = match self.records.get(&key).filter(|o| o.revision >= envelope.token) {
            Some(owned) => owned,
            // Recorded for this node a moment ago by the edge: not seen yet.
            None => self.fetch(&key).await.ok().flatten()?,
        };
        if !self.is_me(&owned.owner) || owned.revision != envelope.token {
            return None;
        }
        self.records.put(&key, owned.clone());
        let handle = match self.opener.open(&envelope.tenant, &envelope.plugin, owned.revision) {
            Ok(handle) => handle,
            Err(rejection) => {
                if let Body::Connect { request, .. } | Body::Http { request, .. } = &envelope.body {
                    self.answer_now(envelope, *request, rejection, owned.revision).await;
                }
                return None;
            }
        };
        let id = PeerId {
            edge: envelope.node.clone(),
            tenant: envelope.tenant.clone(),
            plugin: envelope.plugin.clone(),
        };
        let relay = Relay::start(&id, self.relay_to(&envelope.node, owned.revision));
        Some(Arc::new(Peer::start(id, relay, handle, Default::default())))
    }

    fn relay_to(&self, edge: &str, token: u64) -> RelayTo {
        RelayTo {
            client: self.client.clone(),
            edge_subject: self.subject(edge),
            node: (self.node.clone(), self.incarnation, self.start),
            token,
        }
    }

    /// Tells the edge that sent `envelope` this node does not own its tenant.
    async fn moved(&self, envelope: &Envelope) {
        let reply = Envelope {
            tenant: envelope.tenant.clone(),
            plugin: envelope.plugin.clone(),
            node: self.node.clone(),
            incarnation: self.incarnation,
            start: self.start,
            token: 0,
            seq: 0,
            body: Body::Moved,
        };
        let _ = self.client.publish(self.subject(&envelope.node), reply.encode()).await;
    }

    /// Refuses a request outside any peer's stream (its tenant cannot open):
    /// the first message of the stream the edge expects.
    async fn answer_now(&self, envelope: &Envelope, request: u64, rejection: Rejection, token: u64) {
        let reply = Envelope {
            tenant: envelope.tenant.clone(),
            plugin: envelope.plugin.clone(),
            node: self.node.clone(),
            incarnation: self.incarnation,
            start: self.start,
            token,
            seq: 1,
            body: Body::Reply {
                request,
                answer: Err(rejection),
            },
        };
        let _ = self.client.publish(self.subject(&envelope.node), reply.encode()).await;
    }

    /// Something the NATS client saw.
    fn event(self: &Arc<Self>, event: async_nats::Event) {
        match event {
            async_nats::Event::Disconnected => {
                tracing::warn!("lost NATS: forwarded sessions wait, and end (1012) if it comes back");
                self.connected.store(false, Ordering::Relaxed);
            }
            async_nats::Event::Connected => {
                let was_down = !self.connected.swap(true, Ordering::Relaxed);
                if was_down {
                    tracing::warn!(
                        "NATS is back: forwarded sessions end (1012), messages may have been lost meanwhile"
                    );
                    metrics::counter!("baton_cluster_gaps_total", "direction" => "reconnect").increment(1);
                    self.gap_all();
                }
            }
            async_nats::Event::SlowConsumer(_) => {
                tracing::warn!("NATS dropped messages for this node (slow consumer): forwarded sessions end (1012)");
                metrics::counter!("baton_cluster_gaps_total", "direction" => "slow_consumer").increment(1);
                self.gap_all();
            }
            other => tracing::info!("NATS: {other}"),
        }
    }

    /// Ends every session that crosses nodes (messages may have been lost).
    fn gap_all(&self) {
        for proxy in self.lock_proxies().values() {
            let _ = proxy.news.send(News::Gap);
        }
        for peer in self.lock_peers().values() {
            peer.end_sessions(close::SERVICE_RESTART, "messages between cluster nodes were lost");
        }
    }

    /// Renews this node's liveness key.
    async fn renew(&self, sessions: usize) -> anyhow::Result<()> {
        let owned = self.records.keys_of(&self.node, self.incarnation).len();
        let info = NodeInfo {
            incarnation: self.incarnation,
            client_addr: self.addrs.0.clone(),
            admin_addr: self.addrs.1.clone(),
            started_ms: crate::clock::started_ms(),
            start: self.start,
            sessions,
            owned,
        };
        self.nodes
            .put(&self.node, serde_json::to_vec(&info)?.into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot renew this node's liveness key: {e}"))?;
        *self.last_renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if self.fenced.swap(false, Ordering::Relaxed) {
            tracing::info!("renewed this node's liveness key again: serving");
        }
        Ok(())
    }

    /// A node is down: its sessions here leave their tenants, and the
    /// tenants it owned move to whoever's edge takes them first.
    async fn down(self: &Arc<Self>, node: &str, incarnation: u64) {
        tracing::warn!(node, incarnation, "a cluster node is down");
        metrics::counter!("baton_cluster_nodes_down_total").increment(1);
        let peers: Vec<Arc<Peer>> = self
            .lock_peers()
            .iter()
            .filter(|((edge, inc, _, _), _)| edge == node && *inc == incarnation)
            .map(|(_, peer)| peer.clone())
            .collect();
        for peer in peers {
            if let Some(handle) = self.opener.tenants.get(&peer.id.plugin, &peer.id.tenant) {
                peer.edge_down(&handle).await;
            }
        }
        self.lock_peers()
            .retain(|(edge, inc, _, _), _| !(edge == node && *inc == incarnation));
        for proxy in self.lock_proxies().values() {
            let _ = proxy.news.send(News::NodeDown(node.to_owned(), incarnation));
        }
    }

    /// This node no longer owns `key`'s tenant (another node took it): its
    /// sessions end (1012) so that their clients reach the new owner.
    fn lost(&self, tenant: &str, plugin: &str) {
        if self
            .moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&owner_key(tenant, plugin))
        {
            return;
        }
        if let Some(handle) = self.opener.tenants.get(plugin, tenant) {
            tracing::warn!(
                tenant,
                plugin,
                "another node owns the tenant now: its sessions here end (1012)"
            );
            handle.shared().stop_sessions(
                close::SERVICE_RESTART,
                "the tenant moved to another node; connect again",
            );
            let (done, _) = tokio::sync::oneshot::channel();
            let _ = handle.mailbox().try_send(Command::Shutdown { done });
        }
        self.lock_peers()
            .retain(|(_, _, t, p), _| !(t == tenant && p == plugin));
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

// Moves (see `moves.rs`).
impl Cluster {
    /// Moves every tenant this node owns to the other live nodes, least
    /// loaded first; from now on, new tenants go elsewhere too.
    pub async fn drain(self: &Arc<Self>) -> DrainView {
        self.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut view = DrainView {
            node: self.node.clone(),
            ..DrainView::default()
        };
        for (key, _) in self.records.keys_of(&self.node, self.incarnation) {
            let Some((tenant, plugin)) = key.split_once('.') else {
                continue;
            };
            let Some(target) = self.elsewhere() else {
                view.failed.push((key.clone(), "no other live node".into()));
                continue;
            };
            match self.move_tenant(tenant, plugin, &target).await {
                Ok(()) => view.moved.push((key.clone(), target.0.clone())),
                Err(why) => {
                    tracing::warn!(tenant, plugin, to = %target.0, "the tenant could not move: {why}");
                    view.failed.push((key.clone(), why));
                }
            }
        }
        tracing::info!(moved = view.moved.len(), failed = view.failed.len(), "drained");
        view
    }

    /// The live node other than this one owning the fewest tenants.
    fn elsewhere(&self) -> Option<(String, u64)> {
        let counts = self.records.owned_by();
        self.members
            .live()
            .into_iter()
            .filter(|(node, _)| node != &self.node)
            .min_by_key(|(node, _)| counts.get(node).copied().unwrap_or(0))
            .map(|(node, info)| (node, info.incarnation))
    }

    /// Moves (tenant, plugin), owned here, to `target` live.
    pub async fn move_tenant(
        self: &Arc<Self>,
        tenant: &str,
        plugin: &str,
        target: &(String, u64),
    ) -> Result<(), String> {
        let key = owner_key(tenant, plugin);
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        let moved = self.move_now(tenant, plugin, target).await;
        self.moving.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        moved
    }

    async fn move_now(self: &Arc<Self>, tenant: &str, plugin: &str, target: &(String, u64)) -> Result<(), String> {
        let key = owner_key(tenant, plugin);
        let owned = self
            .records
            .get(&key)
            .filter(|o| self.is_me(&o.owner))
            .ok_or("this node does not own the tenant")?;
        let Some(handle) = self.opener.tenants.get(plugin, tenant) else {
            // No task: nothing to carry; the record goes, the next session
            // anywhere takes the tenant.
            let _ = self.owners.delete_expect_revision(&key, Some(owned.revision)).await;
            return Ok(());
        };
        let peers: Vec<Arc<Peer>> = self
            .lock_peers()
            .iter()
            .filter(|((_, _, t, p), _)| t == tenant && p == plugin)
            .map(|(_, peer)| peer.clone())
            .collect();
        let edge_of: HashMap<SessionId, (String, u64)> = self
            .lock_peers()
            .iter()
            .filter(|((_, _, t, p), _)| t == tenant && p == plugin)
            .flat_map(|((edge, inc, _, _), peer)| peer.session_ids().into_iter().map(|s| (s, (edge.clone(), *inc))))
            .collect();

        // 1. The edges pause.
        let pauses: Vec<_> = peers.iter().map(|peer| peer.pause()).collect();
        let paused = tokio::time::timeout(PAUSE_WITHIN, futures_util::future::join_all(pauses)).await;
        if paused.is_err() {
            for peer in &peers {
                peer.moved(None);
            }
            return Err("the tenant's edges did not pause in time".into());
        }

        // 2. The task hands over.
        let (reply, record) = oneshot::channel();
        let (verdict_tx, verdict) = oneshot::channel();
        if handle
            .mailbox()
            .send(Command::Handover { reply, verdict })
            .await
            .is_err()
        {
            return self.call_off(&peers, None, "the tenant's task ended").await;
        }
        let Ok(record) = record.await else {
            return self.call_off(&peers, None, "the tenant's task did not hand over").await;
        };
        let edges = record
            .sessions
            .iter()
            .map(|(id, _)| {
                let (node, incarnation) = edge_of
                    .get(id)
                    .cloned()
                    .unwrap_or((self.node.clone(), self.incarnation));
                (*id, node, incarnation)
            })
            .collect();
        let arrival = Arrival {
            record,
            from_revision: owned.revision,
            edges,
        };

        // 3. The target takes it.
        let payload = serde_json::to_vec(&arrival).map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(
            Duration::from_secs(30),
            self.client
                .request(format!("{}.ctl.{}", self.prefix, target.0), payload.into()),
        )
        .await;
        let arrived: Arrived = match answer {
            Ok(Ok(message)) => serde_json::from_slice(&message.payload).unwrap_or_else(|e| Err(e.to_string())),
            Ok(Err(e)) => Err(format!("cannot reach {}: {e}", target.0)),
            Err(_) => Err(format!("{} did not answer in time", target.0)),
        };
        let revision = match arrived {
            Ok(revision) => revision,
            Err(why) => return self.call_off(&peers, Some(verdict_tx), &why).await,
        };

        // 4. The old task's mailbox goes to a stand-in; the edges follow.
        let owned = Owned {
            owner: Owner {
                node: target.0.clone(),
                incarnation: target.1,
                since_ms: crate::clock::unix_ms(),
            },
            revision,
        };
        self.records.put(&key, owned.clone());
        let local = handle.shared().local_sessions();
        let (mailbox_tx, mailbox) = oneshot::channel();
        let _ = verdict_tx.send(Verdict::Moved(mailbox_tx));
        let mailbox = mailbox
            .await
            .map_err(|_| "the tenant's task ended before handing its mailbox on")?;
        let subject = self.subject(&target.0);
        let proxy = Proxy::take_over(self.clone(), handle, Target::Remote { owned, subject }, mailbox, local);
        self.lock_proxies()
            .insert((tenant.to_owned(), plugin.to_owned()), proxy);
        for peer in &peers {
            peer.moved(Some((target.0.clone(), target.1, revision)));
        }
        self.lock_peers()
            .retain(|(_, _, t, p), _| !(t == tenant && p == plugin));
        tracing::info!(tenant, plugin, to = %target.0, "moved the tenant");
        Ok(())
    }

    async fn call_off(
        &self,
        peers: &[Arc<Peer>],
        verdict: Option<oneshot::Sender<Verdict>>,
        why: &str,
    ) -> Result<(), String> {
        if let Some(verdict) = verdict {
            let _ = verdict.send(Verdict::CalledOff);
        }
        for peer in peers {
            peer.moved(None);
        }
        Err(why.to_owned())
    }

    /// Takes a tenant another node moves here.
    pub async fn arrive(self: &Arc<Self>, arrival: Arrival) -> Arrived {
        let Arrival {
            record,
            from_revision,
            edges,
        } = arrival;
        let (tenant, plugin) = (record.tenant.clone(), record.plugin.clone());
        let entry = self
            .opener
            .registry
            .deployed(&plugin)
            .ok_or_else(|| format!("{plugin} is not deployed here"))?;
        let version = match &record.state {
            StateRecord::Live { version, .. } => {
                let current = entry.current().filter(|v| v.id.hex() == *version);
                Some(current.ok_or_else(|| format!("the tenant runs a version of {plugin} that is not current here"))?)
            }
            _ => None,
        };
        if self.opener.tenants.get(&plugin, &tenant).is_some() {
            return Err("the tenant already runs here".into());
        }
        let with_edges: HashSet<SessionId> = edges.iter().map(|(session, _, _)| *session).collect();
        if record.sessions.iter().any(|(session, _)| !with_edges.contains(session)) {
            return Err("a session of the tenant came without the node that holds it".into());
        }
        let key = owner_key(&tenant, &plugin);
        let owned = self
            .write_owner(&key, self.me(), Some(from_revision))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the ownership record changed meanwhile")?;
        // A relay per edge, which the sessions' links push into.
        let mut relays: HashMap<(String, u64), (Arc<Relay>, HashSet<SessionId>)> = HashMap::new();
        let mut edge_of: HashMap<SessionId, (String, u64)> = HashMap::new();
        for (session, node, incarnation) in edges {
            let relay = relays.entry((node.clone(), incarnation)).or_insert_with(|| {
                let id = PeerId {
                    edge: node.clone(),
                    tenant: tenant.clone(),
                    plugin: plugin.clone(),
                };
                (Relay::start(&id, self.relay_to(&node, owned.revision)), HashSet::new())
            });
            relay.1.insert(session);
            edge_of.insert(session, (node, incarnation));
        }
        // Every session came with its edge (checked above).
        let link = |session: SessionId| -> SessionLink {
            let relay = edge_of
                .get(&session)
                .and_then(|edge| relays.get(edge))
                .map(|(relay, _)| relay.clone() as Arc<dyn crate::session::link::Remote>);
            match relay {
                Some(relay) => SessionLink::remote(session, relay),
                None => SessionLink::remote(session, Arc::new(Nowhere)),
            }
        };
        let env = self.opener.env.clone();
        let handle = self
            .opener
            .tenants
            .get_or_spawn(&plugin, &tenant, || {
                Ok::<_, std::convert::Infallible>(crate::tenant::adopt(
                    entry.clone(),
                    record,
                    version,
                    link,
                    env,
                    owned.revision,
                ))
            })
            .unwrap_or_else(|never| match never {});
        for ((node, incarnation), (relay, sessions)) in relays {
            let id = PeerId {
                edge: node.clone(),
                tenant: tenant.clone(),
                plugin: plugin.clone(),
            };
            let peer = Arc::new(Peer::start(id, relay, handle.clone(), sessions));
            self.lock_peers()
                .insert((node, incarnation, tenant.clone(), plugin.clone()), peer);
        }
        tracing::info!(tenant, plugin, revision = owned.revision, "a tenant moved here");
        Ok(owned.revision)
    }
}

/// Answers the moves other nodes send this one.
async fn serve_moves(cluster: std::sync::Weak<Cluster>, mut requests: async_nats::Subscriber) {
    while let Some(message) = requests.next().await {
        let Some(cluster) = cluster.upgrade() else { return };
        let Some(reply) = message.reply.clone() else { continue };
        let arrived: Arrived = match serde_json::from_slice::<Arrival>(&message.payload) {
            Ok(arrival) => cluster.arrive(arrival).await,
            Err(e) => Err(format!("malformed move: {e}")),
        };
        let answer = serde_json::to_vec(&arrived).unwrap_or_default();
        let _ = cluster.client.publish(reply, answer.into()).await;
    }
}

/// Where the link of a session with no known edge pushes: nowhere (never
/// used: a move's sessions all come with their edges).
#[derive(Debug)]
struct Nowhere;

impl crate::session::link::Remote for Nowhere {
    fn push(&self, _: &[SessionId], _: crate::session::link::Outbound) -> bool {
        false
    }

    fn stop(&self, _: SessionId, _: u16, _: &str) {}
}

/// Reads this node's subscription, in order.
async fn dispatch(cluster: std::sync::Weak<Cluster>, mut inbox: async_nats::Subscriber) {
    while let Some(message) = inbox.next().await {
        let Some(cluster) = cluster.upgrade() else { return };
        if cluster.silenced.load(Ordering::Relaxed) {
            continue;
        }
        match Envelope::decode(message.payload) {
            Ok(envelope) => cluster.received(envelope).await,
            Err(e) => tracing::warn!("ignored a message on the cluster subject: {e}"),
        }
    }
}

/// A watch of the bucket `of` picks (with each key's last entry first, when
/// `history`), retried until it opens; `None` once the cluster is gone. A
/// watch that ended is opened again after a pause.
async fn watch(cluster: &std::sync::Weak<Cluster>, of: fn(&Cluster) -> &kv::Store, history: bool) -> Option<kv::Watch> {
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let strong = cluster.upgrade()?;
        let opened = match history {
            true => of(&strong).watch_with_history(">").await,
            false => of(&strong).watch_all().await,
        };
        if let Ok(watch) = opened {
            return Some(watch);
        }
    }
}

/// Follows the liveness keys: renewals, restarts, departures.
async fn watch_nodes(cluster: std::sync::Weak<Cluster>) {
    while let Some(mut watch) = watch(&cluster, |c| &c.nodes, false).await {
        while let Some(entry) = watch.next().await {
            let Some(cluster) = cluster.upgrade() else { return };
            let Ok(entry) = entry else { break };
            match entry.operation {
                kv::Operation::Put => {
                    let Ok(info) = serde_json::from_slice::<NodeInfo>(&entry.value) else {
                        continue;
                    };
                    if let Some(old) = cluster.members.saw(&entry.key, info)
                        && !(entry.key == cluster.node && old == cluster.incarnation)
                    {
                        cluster.down(&entry.key, old).await;
                    }
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    if entry.key != cluster.node
                        && let Some(old) = cluster.members.left(&entry.key)
                    {
                        cluster.down(&entry.key, old).await;
                    }
                }
            }
        }
    }
}

/// Follows the ownership records.
async fn watch_owners(cluster: std::sync::Weak<Cluster>) {
    // With history: the records written before this node joined too.
    while let Some(mut watch) = watch(&cluster, |c| &c.owners, true).await {
        while let Some(entry) = watch.next().await {
            let Some(cluster) = cluster.upgrade() else { return };
            let Ok(entry) = entry else { break };
            let Some((tenant, plugin)) = entry.key.split_once('.') else {
                continue;
            };
            match entry.operation {
                kv::Operation::Put => {
                    let Ok(owner) = serde_json::from_slice::<Owner>(&entry.value) else {
                        continue;
                    };
                    let mine = cluster.is_me(&owner);
                    let owned = Owned {
                        owner,
                        revision: entry.revision,
                    };
                    if cluster.records.put(&entry.key, owned) && !mine {
                        cluster.lost(tenant, plugin);
                    }
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    cluster.records.remove(&entry.key, entry.revision);
                }
            }
        }
    }
}

/// Renews this node's key; finds nodes that stopped renewing; stops
/// serving tenants when this node itself could not renew for long.
async fn keep_alive(cluster: std::sync::Weak<Cluster>, sessions: Box<dyn Fn() -> usize + Send + Sync>) {
    let Some(strong) = cluster.upgrade() else { return };
    let every = Duration::from_millis(strong.config.cluster.renew_ms);
    let down_after = Duration::from_secs(strong.config.cluster.down_after_secs);
    drop(strong);
    // Others take this node's tenants after `down_after`; it stops serving
    // them with a margin before (7 s of the default 10).
    let fence_after = down_after.mul_f64(0.7).max(every);
    let mut tick = tokio::time::interval(every.min(Duration::from_millis(500)));
    let mut next_renewal = Instant::now() + every;
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else { return };
        if Instant::now() >= next_renewal {
            next_renewal = Instant::now() + every;
            if let Err(e) = cluster.renew(sessions()).await {
                tracing::warn!("{e}");
            }
        }
        let last = *cluster.last_renewed.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= fence_after && !cluster.fenced.swap(true, Ordering::Relaxed) {
            tracing::error!(
                "could not renew this node's liveness key for {:?}: it stops serving the tenants it owns",
                last.elapsed()
            );
            for (key, _) in cluster.records.keys_of(&cluster.node, cluster.incarnation) {
                if let Some((tenant, plugin)) = key.split_once('.') {
                    cluster.lost(tenant, plugin);
                }
            }
        }
        for (node, incarnation) in cluster.members.expire() {
            if node != cluster.node {
                cluster.down(&node, incarnation).await;
            }
        }
    }
}

fn unreachable_nats() -> Rejection {
    Rejection::Unavailable("the cluster cannot reach the tenant's node right now; try again".into())
}

fn nats_error(what: &str, e: impl std::fmt::Display) -> Rejection {
    tracing::warn!("cannot {what}: {e}");
    unreachable_nats()
}

/// 64 random bits (an incarnation), from the system's random source.
fn rand_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        return crate::clock::unix_ms() ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(bytes)
}
