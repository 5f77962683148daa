//! Planned moves of a tenant between nodes, with every socket left open
//! (`baton drain`, and rebalancing by the same step).
//!
//! The owner moves one tenant at a time:
//! 1. It asks every edge of the tenant to pause (`Pause`): an edge stops
//!    sending (its sessions' frames wait in order in its mailbox, as during a
//!    swap) and answers `Paused`, after everything it sent before.
//! 2. The tenant's task hands over as for `baton upgrade`: it exports its
//!    state once everything queued before is handled, and waits.
//! 3. The target is sent the tenant's record (state, sessions and which node
//!    holds each socket, topics, presence, timers) on `{prefix}.ctl.{node}`.
//!    It takes the ownership record by compare-and-set from the revision the
//!    owner holds (the new revision is the new fencing token), starts the
//!    tenant from the record (`init` + `import-state`), with a peer per edge,
//!    and answers.
//! 4. The old task ends without closing anything and its mailbox goes to a
//!    stand-in forwarding to the target, so the sessions on the old owner
//!    keep their sockets and their order; every other edge is told
//!    `MovedTo` and sends to the target from then on. Whatever the target
//!    sent meanwhile is held by the edges until then.
//!
//! If anything fails before the target took the record, the move is called
//! off: the task serves on and the edges resume (`Resume`).
//!

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::edge::{Proxy, Target};
use super::members::{Owned, Owner, owner_key};
use super::node::Cluster;
use super::owner::{Peer, PeerId, Relay};
use crate::session::link::{SessionId, SessionLink};
use crate::tenant::record::{StateRecord, TenantRecord};
use crate::tenant::{Command, Verdict};

/// How long the edges may take to pause.
const PAUSE_WITHIN: Duration = Duration::from_secs(5);

/// What the target of a move is sent.
#[derive(Serialize, Deserialize)]
pub struct Arrival {
    /// The tenant as its task handed it over.
    pub record: TenantRecord,
    /// The ownership record revision the old owner holds.
    pub from_revision: u64,
    /// The node (and incarnation) holding each session's socket.
    pub edges: Vec<(SessionId, String, u64)>,
}

/// Sessions whose sockets one edge holds, with each socket's number.
type Attachments = HashMap<SessionId, u32>;

/// What the target answers: its new revision, or why not.
pub type Arrived = Result<u64, String>;

/// How a drain went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DrainView {
    /// The node drained.
    pub node: String,
    /// Tenants moved, as `tenant.plugin` → node.
    pub moved: Vec<(String, String)>,
    /// Tenants that could not move, with why (they stay here).
    pub failed: Vec<(String, String)>,
}

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
            .flat_map(|((edge, inc, _, _), peer)| {
                peer.session_ids().into_iter().map(|(s, _)| (s, (edge.clone(), *inc)))
            })
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
        // The number of each resumable session's socket.
        let attachments: HashMap<SessionId, u32> = record
            .sessions
            .iter()
            .map(|(id, connect)| (*id, connect.resume.as_ref().map_or(0, |r| r.attachment)))
            .collect();
        // A relay per edge, which the sessions' links push into.
        let mut relays: HashMap<(String, u64), (Arc<Relay>, Attachments)> = HashMap::new();
        let mut edge_of: HashMap<SessionId, (String, u64)> = HashMap::new();
        for (session, node, incarnation) in edges {
            let relay = relays.entry((node.clone(), incarnation)).or_insert_with(|| {
                let id = PeerId {
                    edge: node.clone(),
                    tenant: tenant.clone(),
                    plugin: plugin.clone(),
                };
                (Relay::start(&id, self.relay_to(&node, owned.revision)), HashMap::new())
            });
            relay.1.insert(session, attachments.get(&session).copied().unwrap_or(0));
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
            let retain = self.config.resume.max_bytes;
            let peer = Arc::new(Peer::start(id, relay, handle.clone(), sessions, retain));
            self.lock_peers()
                .insert((node, incarnation, tenant.clone(), plugin.clone()), peer);
        }
        tracing::info!(tenant, plugin, revision = owned.revision, "a tenant moved here");
        Ok(owned.revision)
    }
}

/// Answers the moves other nodes send this one.
pub(super) async fn serve_moves(cluster: std::sync::Weak<Cluster>, mut requests: async_nats::Subscriber) {
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
    fn push(&self, _: &[(SessionId, u64)], _: crate::session::link::Outbound) -> bool {
        false
    }

    fn stop(&self, _: SessionId, _: u16, _: &str, _: bool) {}
}
