//! The new process's side of a handover: connecting to the old process,
//! loading what it runs, and installing its tenants and sessions (see the
//! module doc of `handover` for the order of things).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::message::{Message, PluginRecord, SessionRecord};
use super::wire::Channel;
use super::{FORMATS, Peer, fault_point};
use crate::config::Config;
use crate::deploy::Deployer;
use crate::listener::Listeners;
use crate::registry::EventKind;
use crate::server::{self, Clients, SessionTask};
use crate::session::link::{self, Outbox, QueueLimits, SessionId, SessionLink};
use crate::session::{Continuity, Inbound};
use crate::tenant::record::{StateRecord, TenantRecord};
use crate::tenant::{self, Command, TenantHandle};
use crate::version::Version;

/// A handover in progress, in the new process.
pub struct TakeOver {
    peer: Peer,
    /// The old process's effective configuration: this one's.
    pub config: Config,
    plugins: Vec<PluginRecord>,
    /// The old process's baton version and pid.
    from: (String, u32),
}

/// What the old process sent at the cut-over.
pub struct Received {
    tenants: Vec<TenantRecord>,
    sessions: Vec<(SessionRecord, OwnedFd)>,
    next_session: SessionId,
}

/// In a process started by `baton upgrade`: connects to the old process at
/// `socket` and takes its offer (configuration and listening sockets).
pub async fn connect(socket: &Path, token: String) -> Result<(TakeOver, Listeners), String> {
    let channel =
        Channel::connect(socket).map_err(|e| format!("cannot reach the old process at {}: {e}", socket.display()))?;
    let mut peer = Peer {
        channel,
        step: Duration::from_secs(crate::config::UpgradeConfig::default().timeout_secs),
    };
    let formats = match super::fault("unknown-format") {
        true => vec![u32::MAX],
        false => FORMATS.to_vec(),
    };
    let hello = Message::Hello {
        formats,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        token,
    };
    peer.send(&hello, &[]).await?;
    fault_point("after-hello");
    let (offer, fds) = peer.recv("the offer").await?;
    let Message::Offer {
        format,
        version,
        pid,
        config,
        plugins,
    } = offer
    else {
        return Err(format!("expected an offer, got {}", offer.name()));
    };
    if !FORMATS.contains(&format) {
        let reason = format!("handover format {format} is not one this baton reads ({FORMATS:?})");
        peer.abort(&reason).await;
        return Err(reason);
    }
    let config = parse_config(&config).map_err(|e| format!("the old process's configuration: {e}"))?;
    peer.step = Duration::from_secs(config.upgrade.timeout_secs);
    let [clients, admin]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|fds: Vec<OwnedFd>| format!("expected 2 listening sockets, got {}", fds.len()))?;
    let listeners = Listeners {
        clients: listener(clients).map_err(|e| format!("client listener: {e}"))?,
        admin: listener(admin).map_err(|e| format!("admin listener: {e}"))?,
    };
    let takeover = TakeOver {
        peer,
        config,
        plugins,
        from: (version, pid),
    };
    Ok((takeover, listeners))
}

fn parse_config(text: &str) -> Result<Config, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    Config::from_layers(vec![("the old process".into(), table)]).map_err(|e| e.to_string())
}

fn listener(fd: OwnedFd) -> std::io::Result<tokio::net::TcpListener> {
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

impl TakeOver {
    /// Loads the current version of every plugin of the old process, with
    /// its generation, events and last error, its pins and rollout, and says
    /// ready.
    pub async fn load_plugins(&self, deployer: &Deployer) -> Result<(), String> {
        let (old_version, old_pid) = &self.from;
        let detail = format!(
            "baton {old_version} (pid {old_pid}) handed over to baton {} (pid {})",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        );
        for plugin in &self.plugins {
            let entry = deployer.plugin(&plugin.name);
            entry.adopt(None, plugin.events.clone(), plugin.last_error.clone());
            let short = match &plugin.current {
                Some(current) => {
                    let version = deployer
                        .adopt(&plugin.name, &current.hash, current.generation, true)
                        .await
                        .map_err(|e| format!("cannot load {} version {}: {e}", plugin.name, current.hash))?;
                    Some(version.id.short())
                }
                None => None,
            };
            // Pins and a rollout, before any tenant arrives.
            deployer.restore_after_handover(&plugin.name).await;
            entry.record_event(EventKind::Upgrade, short, detail.clone());
        }
        self.peer.send(&Message::Ready, &[]).await
    }

    /// Receives every tenant and session.
    pub async fn receive(&self) -> Result<Received, String> {
        let (message, _) = self.peer.recv("the tenants").await?;
        let Message::Tenants { tenants } = message else {
            return Err(format!("expected the tenants, got {}", message.name()));
        };
        let mut sessions = Vec::new();
        loop {
            match self.peer.recv("the sessions").await? {
                (Message::Sessions { sessions: batch }, fds) => {
                    if batch.len() != fds.len() {
                        return Err(format!("{} sessions came with {} sockets", batch.len(), fds.len()));
                    }
                    sessions.extend(batch.into_iter().zip(fds));
                }
                (Message::Sent { next_session }, _) => {
                    fault_point("after-sessions");
                    return Ok(Received {
                        tenants,
                        sessions,
                        next_session,
                    });
                }
                (other, _) => return Err(format!("expected sessions, got {}", other.name())),
            }
        }
    }

    /// Tells the old process everything is installed, and waits for it to
    /// let go: only then may this process accept.
    pub async fn confirm(&self, sessions: usize, tenants: usize) -> Result<(), String> {
        let confirmation = Message::TookOver {
            sessions,
            tenants,
            started_ms: crate::clock::started_ms(),
        };
        self.peer.send(&confirmation, &[]).await?;
        match self.peer.recv("the old process's goodbye").await? {
            (Message::Bye, _) => Ok(()),
            (other, _) => Err(format!("expected bye, got {}", other.name())),
        }
    }

    /// Tells the old process this one gives up.
    pub async fn abort(&self, reason: &str) {
        self.peer.abort(reason).await;
    }
}

/// Starts every tenant and session the old process sent; returns how many
/// sessions and tenants.
pub async fn install(received: Received, clients: &Clients, deployer: &Deployer) -> Result<(usize, usize), String> {
    let Received {
        tenants,
        sessions,
        next_session,
    } = received;
    link::continue_from(next_session);
    let versions = versions_of(&tenants, clients, deployer).await?;
    let config = &clients.config.sessions;
    let limits = QueueLimits {
        frames: config.outbound_queue,
        bytes: config.outbound_queue_bytes,
    };
    let tenant_count = tenants.len();
    let mut outboxes: HashMap<SessionId, Outbox> = HashMap::new();
    let mut owners: HashMap<SessionId, (TenantHandle, u32)> = HashMap::new();
    for record in tenants {
        let entry = clients
            .opener
            .registry
            .get(&record.plugin)
            .unwrap_or_else(|| deployer.plugin(&record.plugin));
        let version = match &record.state {
            StateRecord::Live { version, .. } => versions.get(&(record.plugin.clone(), version.clone())).cloned(),
            _ => None,
        };
        // Sessions with a socket (which comes beside), and the number of it;
        // detached ones wait for their clients as they did.
        let ids: Vec<(SessionId, u32)> = record
            .sessions
            .iter()
            .filter(|(_, c)| c.resume.as_ref().is_none_or(|r| r.detached_ms_left.is_none()))
            .map(|(id, c)| (*id, c.resume.as_ref().map_or(0, |r| r.attachment)))
            .collect();
        let (plugin, name) = (record.plugin.clone(), record.tenant.clone());
        let env = clients.opener.env.clone();
        let mut link = |id| {
            let (link, outbox) = SessionLink::new(id, limits);
            outboxes.insert(id, outbox);
            link
        };
        // In a cluster, the ownership record this node holds (the new process
        // is the same incarnation of the node).
        let lease = clients.cluster.as_ref().map_or(0, |c| c.lease_of(&name, &plugin));
        let handle = clients
            .opener
            .tenants
            .get_or_spawn(&plugin, &name, || {
                Ok::<_, std::convert::Infallible>(tenant::adopt(entry, record, version, &mut link, env, lease))
            })
            .unwrap_or_else(|never| match never {});
        for (id, attachment) in ids {
            owners.insert(id, (handle.clone(), attachment));
        }
    }
    let session_count = sessions.len();
    for (record, fd) in sessions {
        let (Some(outbox), Some((owner, _))) = (outboxes.remove(&record.id), owners.remove(&record.id)) else {
            tracing::warn!(session = record.id, "a session came without its tenant; closing it");
            continue;
        };
        let tcp = tcp_stream(fd).map_err(|e| format!("session {}'s socket: {e}", record.id))?;
        let ws = server::adopted_socket(clients, tcp, &record.unread, &record.plugin, &record.tenant).await;
        let quiet = Duration::from_millis(record.quiet_ms);
        let task = SessionTask::adopted(clients, record.id, &record.plugin, &record.tenant, quiet);
        let continuity = record.continuity.as_ref().map(Continuity::from);
        tokio::spawn(task.run(ws, owner.session_mailbox(), outbox, continuity));
    }
    // Sessions that ended while the old process paused their tenant: the
    // tenant hears of it here, as it would have there (a resumable one
    // whose socket was lost then waits for its client).
    for (id, (owner, attachment)) in owners {
        drop(outboxes.remove(&id));
        let _ = owner
            .mailbox()
            .send(Command::from(Inbound::Disconnect {
                session: id,
                attachment,
            }))
            .await;
    }
    Ok((session_count, tenant_count))
}

/// The versions the tenants' live states were exported by: the current one
/// where it is that, else loaded as well (a tenant still on an older one).
async fn versions_of(
    tenants: &[TenantRecord],
    clients: &Clients,
    deployer: &Deployer,
) -> Result<HashMap<(String, String), Arc<Version>>, String> {
    let mut versions = HashMap::new();
    for record in tenants {
        let StateRecord::Live {
            version, generation, ..
        } = &record.state
        else {
            continue;
        };
        let key = (record.plugin.clone(), version.clone());
        if versions.contains_key(&key) {
            continue;
        }
        let current = clients
            .opener
            .registry
            .get(&record.plugin)
            .and_then(|e| e.current())
            .filter(|v| v.id.hex() == *version);
        let loaded = match current {
            Some(current) => current,
            None => deployer
                .adopt(&record.plugin, version, *generation, false)
                .await
                .map_err(|e| {
                    format!(
                        "cannot load {} version {version} for tenant {}: {e}",
                        record.plugin, record.tenant
                    )
                })?,
        };
        versions.insert(key, loaded);
    }
    Ok(versions)
}

fn tcp_stream(fd: OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}
