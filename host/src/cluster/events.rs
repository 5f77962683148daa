//! What reaches this node: messages on its subject (from edges, for the
//! tenants it owns; from owners, for its stand-ins), the NATS client's
//! events (a reconnect or a drop is a gap), the buckets' watches (nodes
//! renewing, restarting, leaving; ownership records), and the timer that
//! renews this node's key and finds the nodes that stopped renewing.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::edge::News;
use super::members::{NodeInfo, Owned, Owner, owner_key};
use super::node::Cluster;
use super::owner::{Peer, PeerId, Relay};
use super::wire::{Body, Envelope};
use crate::error::close;
use crate::session::resumable::Refusal;
use crate::tenant::Command;

impl Cluster {
    /// A message to this node.
    pub(super) async fn received(self: &Arc<Self>, envelope: Envelope) {
        match &envelope.body {
            Body::Connect { .. }
            | Body::Frame { .. }
            | Body::Disconnect { .. }
            | Body::Detached { .. }
            | Body::Ack { .. }
            | Body::ResumeSession { .. }
            | Body::Http { .. }
            | Body::Paused => {
                self.from_edge(envelope).await;
            }
            _ => {
                let key = (envelope.tenant.clone(), envelope.plugin.clone());
                if let Some(proxy) = self.lock_proxies().get(&key) {
                    let _ = proxy.news.send(News::Message(Box::new(envelope)));
                }
            }
        }
    }

    /// A message from an edge, for a tenant this node should own.
    pub(super) async fn from_edge(self: &Arc<Self>, envelope: Envelope) {
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
            None if !matches!(
                envelope.body,
                Body::Connect { .. } | Body::Http { .. } | Body::ResumeSession { .. }
            ) =>
            {
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
    pub(super) async fn new_peer(self: &Arc<Self>, envelope: &Envelope) -> Option<Arc<Peer>> {
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
                let answer = match &envelope.body {
                    Body::Connect { request, .. } | Body::Http { request, .. } => Body::Reply {
                        request: *request,
                        answer: Err(rejection),
                    },
                    Body::ResumeSession { request, .. } => Body::SessionResumed {
                        request: *request,
                        answer: Err((Refusal::Unavailable, rejection.to_string())),
                    },
                    _ => return None,
                };
                self.answer_now(envelope, answer, owned.revision).await;
                return None;
            }
        };
        let id = PeerId {
            edge: envelope.node.clone(),
            tenant: envelope.tenant.clone(),
            plugin: envelope.plugin.clone(),
        };
        let relay = Relay::start(&id, self.relay_to(&envelope.node, owned.revision));
        let retain = self.config.resume.max_bytes;
        Some(Arc::new(Peer::start(id, relay, handle, Default::default(), retain)))
    }

    /// Tells the edge that sent `envelope` this node does not own its tenant.
    pub(super) async fn moved(&self, envelope: &Envelope) {
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
    pub(super) async fn answer_now(&self, envelope: &Envelope, answer: Body, token: u64) {
        let reply = Envelope {
            tenant: envelope.tenant.clone(),
            plugin: envelope.plugin.clone(),
            node: self.node.clone(),
            incarnation: self.incarnation,
            start: self.start,
            token,
            seq: 1,
            body: answer,
        };
        let _ = self.client.publish(self.subject(&envelope.node), reply.encode()).await;
    }

    /// Something the NATS client saw.
    pub(super) fn event(self: &Arc<Self>, event: async_nats::Event) {
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
    pub(super) fn gap_all(&self) {
        for proxy in self.lock_proxies().values() {
            let _ = proxy.news.send(News::Gap);
        }
        for peer in self.lock_peers().values() {
            peer.end_sessions(close::SERVICE_RESTART, "messages between cluster nodes were lost");
        }
    }

    /// Renews this node's liveness key.
    pub(super) async fn renew(&self, sessions: usize) -> anyhow::Result<()> {
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
    pub(super) async fn down(self: &Arc<Self>, node: &str, incarnation: u64) {
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
    pub(super) fn lost(&self, tenant: &str, plugin: &str) {
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
}

/// Reads this node's subscription, in order.
pub(super) async fn dispatch(cluster: std::sync::Weak<Cluster>, mut inbox: async_nats::Subscriber) {
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
pub(super) async fn watch_nodes(cluster: std::sync::Weak<Cluster>) {
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
pub(super) async fn watch_owners(cluster: std::sync::Weak<Cluster>) {
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
pub(super) async fn keep_alive(cluster: std::sync::Weak<Cluster>, sessions: Box<dyn Fn() -> usize + Send + Sync>) {
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
