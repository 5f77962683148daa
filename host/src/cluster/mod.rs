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
//! - `node.rs`: the [`Cluster`] itself and where tenants live (ownership,
//!   stand-ins, what `baton status` shows); `events.rs`: what reaches the
//!   node from NATS; this file: joining;
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
mod events;
pub mod members;
pub mod moves;
mod node;
pub mod owner;
pub mod wire;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::tenant::Opener;
use std::collections::HashMap;

use events::{dispatch, keep_alive, watch_nodes, watch_owners};
use members::{Members, OwnerMap, bucket};
use moves::serve_moves;
use node::rand_u64;
pub use node::{Cluster, ClusterView, NodeView};

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
}
