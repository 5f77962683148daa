//! The old process's side of a handover: starting the new binary, the
//! cut-over, and calling it all off when anything goes wrong (see the
//! module doc of `handover` for the order of things).

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::message::{ContinuityRecord, Message, PluginRecord, SessionRecord, VersionRef};
use super::wire::{Listener, MAX_FDS};
use super::{FORMATS, Peer, SOCKET_VAR, TOKEN_VAR, socket_path};
use crate::admin::{HostView, UpgradeRequest, UpgradeView};
use crate::config::Config;
use crate::deploy::Deployer;
use crate::registry::Registry;
use crate::server::{Clients, ParkedSession, Parking};
use crate::session::link::{self, Handover, SessionId};
use crate::storage::Storage;
use crate::tenant::Verdict;
use crate::tenant::record::TenantRecord;
use crate::tenant::{Command, Tenants};

/// Sessions per message (below the kernel's 253 descriptors).
const BATCH: usize = 200;

/// How often the sessions still to pause are checked against those open.
const RECHECK: Duration = Duration::from_millis(20);

/// How long a session may take to pause before it is closed instead.
const LAGGARDS_AFTER: Duration = Duration::from_secs(5);

/// What the old process hands over, and the switches it turns.
pub struct Giver {
    /// The host's configuration.
    pub config: Arc<Config>,
    /// The client listener's state (gate, accepting, parking).
    pub clients: Arc<Clients>,
    /// Frozen for the handover.
    pub deployer: Arc<Deployer>,
    /// The plugins.
    pub registry: Arc<Registry>,
    /// The tenants.
    pub tenants: Arc<Tenants>,
    /// Closed for the new process, reopened if the handover is called off.
    pub storage: Arc<Storage>,
    /// Whether the admin listener accepts.
    pub admin_accepting: watch::Sender<bool>,
    /// The client and admin listening sockets (duplicates).
    pub listeners: [OwnedFd; 2],
    /// Turned true once another process took over: the host then ends
    /// without closing anything.
    pub handed_over: watch::Sender<bool>,
    /// Where the upgrade is recorded.
    pub audit: Arc<crate::audit::Audit>,
}

/// Serves upgrade requests, one at a time, until one succeeds (or the host
/// stops).
pub async fn serve(giver: Arc<Giver>, mut requests: mpsc::Receiver<UpgradeRequest>) {
    while let Some(request) = requests.recv().await {
        let result = giver.upgrade(request.binary).await;
        match &result {
            Ok(view) => tracing::info!(
                to_pid = view.to.pid,
                to_version = %view.to.version,
                sessions = view.sessions,
                tenants = view.tenants,
                took_ms = view.took_ms,
                cutover_ms = view.cutover_ms,
                "handed over to the new process; exiting"
            ),
            Err(reason) => tracing::error!("upgrade failed, this process serves on: {reason}"),
        }
        let record = crate::audit::Record {
            who: request.who.clone(),
            outcome: result
                .as_ref()
                .err()
                .map(|e| format!("failed, this process serves on: {e}"))
                .unwrap_or_default(),
            detail: match &result {
                Ok(view) => format!(
                    "baton {} (pid {}) to baton {} (pid {}): {} sessions, {} tenants",
                    view.from.version, view.from.pid, view.to.version, view.to.pid, view.sessions, view.tenants
                ),
                Err(_) => String::new(),
            },
            ..crate::audit::Record::default()
        };
        giver.audit.record(crate::audit::Action::Upgrade, record).await;
        let handed = result.is_ok();
        let _ = request.reply.send(result);
        if handed {
            // Time for the answer to reach the caller.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = giver.handed_over.send(true);
            return;
        }
    }
}

impl Giver {
    /// Starts `binary` (this process's own path by default) and hands
    /// everything over to it; on any failure this process serves on.
    async fn upgrade(&self, binary: Option<PathBuf>) -> Result<UpgradeView, String> {
        let started = Instant::now();
        let binary = binary.unwrap_or_else(super::own_binary);
        let step = Duration::from_secs(self.config.upgrade.timeout_secs);
        let path = socket_path(&self.config.data_dir);
        let listener = Listener::bind(&path).map_err(|e| format!("cannot listen at {}: {e}", path.display()))?;
        let token = token().map_err(|e| format!("no random token: {e}"))?;
        tracing::info!(binary = %binary.display(), "upgrading: starting the new process");
        let mut child = tokio::process::Command::new(&binary)
            .arg("serve")
            .env(SOCKET_VAR, &path)
            .env(TOKEN_VAR, &token)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let result = self
            .hand_over(&listener, &mut child, &binary, &token, step, started)
            .await;
        if result.is_err() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        result
    }

    async fn hand_over(
        &self,
        listener: &Listener,
        child: &mut tokio::process::Child,
        binary: &std::path::Path,
        token: &str,
        step: Duration,
        started: Instant,
    ) -> Result<UpgradeView, String> {
        let channel = tokio::select! {
            accepted = listener.accept() => accepted.map_err(|e| format!("handover socket: {e}"))?,
            status = child.wait() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                return Err(format!("{} exited ({status}) before it connected: is it baton?", binary.display()));
            }
            () = tokio::time::sleep(step) => {
                return Err(format!(
                    "{} did not connect within {} s (upgrade.timeout_secs): is it baton?",
                    binary.display(),
                    step.as_secs()
                ));
            }
        };
        let peer = Peer { channel, step };
        let (hello, _) = peer.recv("hello").await?;
        let Message::Hello {
            formats,
            version,
            pid,
            token: theirs,
        } = hello
        else {
            return Err(format!("expected hello, got {}", hello.name()));
        };
        if theirs != token {
            peer.abort("wrong handover token").await;
            return Err("the new process did not present the handover token".into());
        }
        let Some(&format) = FORMATS.iter().rev().find(|f| formats.contains(f)) else {
            let reason = format!(
                "no common handover format: this baton writes {FORMATS:?}, the new one ({version}) reads {formats:?}"
            );
            peer.abort(&reason).await;
            return Err(reason);
        };
        // No deploy, rollback or removal changes what is handed over.
        let _frozen = self.deployer.freeze().await;
        let offer = Message::Offer {
            format,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            config: self.config.to_toml(),
            plugins: self.plugin_records(),
        };
        peer.send(&offer, &[self.listeners[0].as_fd(), self.listeners[1].as_fd()])
            .await?;
        match peer.recv("ready (the new process loads every plugin)").await? {
            (Message::Ready, _) => {}
            (other, _) => return Err(format!("expected ready, got {}", other.name())),
        }

        let cut = Instant::now();
        let mut cutover = Cutover::new(self);
        match cutover.run(&peer, step).await {
            Ok((sessions, tenants, to_started_ms)) => {
                cutover.commit();
                super::notify_systemd(&format!("MAINPID={pid}"));
                Ok(UpgradeView {
                    from: HostView::of_this_process(),
                    to: HostView {
                        version,
                        pid,
                        started_ms: to_started_ms,
                    },
                    sessions,
                    tenants,
                    took_ms: millis(started.elapsed()),
                    cutover_ms: millis(cut.elapsed()),
                })
            }
            Err(reason) => {
                peer.abort(&reason).await;
                // The new process goes first, so that the storage is free.
                let _ = child.start_kill();
                let _ = child.wait().await;
                cutover.call_off();
                Err(reason)
            }
        }
    }

    fn plugin_records(&self) -> Vec<PluginRecord> {
        self.registry
            .all()
            .iter()
            .map(|entry| PluginRecord {
                name: entry.name.clone(),
                current: entry.current().map(|v| VersionRef {
                    hash: v.id.hex(),
                    generation: v.generation,
                }),
                events: entry.events(),
                last_error: entry.last_error(),
            })
            .collect()
    }
}

/// The cut-over in the old process: what it paused, so that it can all be
/// resumed.
struct Cutover<'a> {
    giver: &'a Giver,
    gate: Option<tokio::sync::OwnedRwLockWriteGuard<()>>,
    parking: Option<mpsc::UnboundedReceiver<Parking>>,
    /// Sessions that ended meanwhile.
    gone: HashSet<SessionId>,
    tenants: Vec<oneshot::Sender<Verdict>>,
    parked: Vec<ParkedSession>,
    storage_closed: bool,
}

impl<'a> Cutover<'a> {
    fn new(giver: &'a Giver) -> Cutover<'a> {
        Cutover {
            giver,
            gate: None,
            parking: None,
            gone: HashSet::new(),
            tenants: Vec::new(),
            parked: Vec::new(),
            storage_closed: false,
        }
    }

    /// Everything up to the new process's confirmation; returns the sessions
    /// and tenants it took, and when it started.
    async fn run(&mut self, peer: &Peer, step: Duration) -> Result<(usize, usize, u64), String> {
        let handover = &self.giver.clients.handover;
        let deadline = tokio::time::Instant::now() + step;
        // 1. No new connection here (the new process will accept them), and
        //    no request half done.
        handover.accepting.send_replace(false);
        self.giver.admin_accepting.send_replace(false);
        let header_timeout = Duration::from_millis(self.giver.config.http.header_read_timeout_ms);
        let fresh_until = tokio::time::Instant::now() + header_timeout;
        // A connection the listener accepted just as it was told to stop is
        // counted only once the listener has looked again.
        while !handover.paused.load(Ordering::SeqCst) && tokio::time::Instant::now() < fresh_until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while handover.fresh.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < fresh_until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let gate = tokio::time::timeout_at(deadline, handover.gate.clone().write_owned())
            .await
            .map_err(|_| "requests in flight did not finish in time".to_owned())?;
        self.gate = Some(gate);
        let (parking, parked) = mpsc::unbounded_channel();
        handover.park_into(Some(parking));
        self.parking = Some(parked);

        // 2. Every session stops reading, its last frame with the tenant.
        let (quiet, mut quieted) = mpsc::unbounded_channel();
        let mut waiting: HashSet<SessionId> = HashSet::new();
        for tenant in self.giver.tenants.all() {
            for link in tenant.shared().local_links() {
                waiting.insert(link.id());
                link.hand_over(Handover::Quiesce(quiet.clone()));
            }
        }
        // `quiet` stays open: sessions may all go before they answer.
        // A session stuck writing to a client that does not read cannot
        // pause: after a while it is closed (1012), as at a restart.
        let laggards_at = tokio::time::Instant::now() + LAGGARDS_AFTER;
        let mut laggards_closed = false;
        while !waiting.is_empty() {
            waiting.retain(|id| !self.gone.contains(id));
            if waiting.is_empty() {
                break;
            }
            let parking = self.parking.as_mut().expect("set above");
            tokio::select! {
                id = quieted.recv() => match id {
                    Some(id) => { waiting.remove(&id); }
                    None => return Err("sessions stopped answering".into()),
                },
                report = parking.recv() => if let Some(Parking::Gone(id)) = report {
                    self.gone.insert(id);
                },
                // A session that ended before the parking was set up told
                // nobody here: it is gone once its tenant has seen it go.
                () = tokio::time::sleep(RECHECK) => {
                    let open = self.open_sessions();
                    waiting.retain(|id| open.contains(id));
                }
                () = tokio::time::sleep_until(laggards_at), if !laggards_closed => {
                    laggards_closed = true;
                    self.close_laggards(&waiting);
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(format!("{} sessions did not pause in time", waiting.len()));
                }
            }
        }

        // 3. Every tenant handles what it was sent, exports its state and
        //    waits.
        let mut records = Vec::new();
        for tenant in self.giver.tenants.all() {
            let (reply, record) = oneshot::channel();
            let (verdict, decided) = oneshot::channel();
            let command = Command::Handover {
                reply,
                verdict: decided,
            };
            let name = format!("{}/{}", tenant.shared().plugin, tenant.shared().name);
            tokio::time::timeout_at(deadline, tenant.mailbox().send(command))
                .await
                .map_err(|_| format!("tenant {name} did not take the handover in time"))?
                .map_err(|_| format!("tenant {name} ended during the handover"))?;
            self.tenants.push(verdict);
            records.push((name, record));
        }
        let mut tenants: Vec<TenantRecord> = Vec::new();
        for (name, record) in records {
            let record = tokio::time::timeout_at(deadline, record)
                .await
                .map_err(|_| format!("tenant {name} did not pause in time (busy, or backing off after crashes?)"))?
                .map_err(|_| format!("tenant {name} could not be handed over (it is closing)"))?;
            tenants.push(record);
        }

        // 4. Every session writes what is queued and parks.
        // (Sessions whose sockets other nodes of a cluster hold have no
        // socket here to hand over.)
        let local = self.open_sessions();
        let mut waiting: HashSet<SessionId> = tenants
            .iter()
            .flat_map(|t| t.sessions.iter().map(|(id, _)| *id))
            .filter(|id| !self.gone.contains(id) && local.contains(id))
            .collect();
        for tenant in self.giver.tenants.all() {
            for link in tenant.shared().local_links() {
                link.hand_over(Handover::Yield);
            }
        }
        while !waiting.is_empty() {
            let parking = self.parking.as_mut().expect("set above");
            tokio::select! {
                report = parking.recv() => match report {
                    Some(Parking::Parked(session)) => {
                        waiting.remove(&session.id);
                        self.parked.push(*session);
                    }
                    Some(Parking::Gone(id)) => {
                        waiting.remove(&id);
                        self.gone.insert(id);
                    }
                    None => return Err("sessions stopped answering".into()),
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Err(format!("{} sessions did not park in time", waiting.len()));
                }
            }
        }

        // 5. The storage is the new process's from here.
        self.giver.storage.close();
        self.storage_closed = true;
        let records: Vec<SessionRecord> = self
            .parked
            .iter()
            .map(|s| SessionRecord {
                id: s.id,
                plugin: s.plugin.clone(),
                tenant: s.tenant.clone(),
                unread: s.unread().to_vec(),
                quiet_ms: millis(s.quiet),
                continuity: s.continuity.as_ref().map(ContinuityRecord::from),
            })
            .collect();
        let tenant_count = tenants.len();
        peer.send(&Message::Tenants { tenants }, &[]).await?;
        for (sessions, parked) in records.chunks(BATCH).zip(self.parked.chunks(BATCH)) {
            debug_assert!(parked.len() <= MAX_FDS);
            let fds: Vec<BorrowedFd<'_>> = parked.iter().map(ParkedSession::fd).collect();
            let message = Message::Sessions {
                sessions: sessions.to_vec(),
            };
            peer.send(&message, &fds).await?;
        }
        peer.send(
            &Message::Sent {
                next_session: link::next_id(),
            },
            &[],
        )
        .await?;

        // 6. The new process confirms; from the goodbye on, it serves.
        let (confirmed, _) = peer.recv("the new process's confirmation").await?;
        let Message::TookOver {
            sessions,
            tenants,
            started_ms,
        } = confirmed
        else {
            return Err(format!("expected took_over, got {}", confirmed.name()));
        };
        debug_assert_eq!(tenants, tenant_count);
        peer.send(&Message::Bye, &[]).await?;
        Ok((sessions, tenants, started_ms))
    }

    /// The ids of every session a tenant holds open.
    fn open_sessions(&self) -> HashSet<SessionId> {
        let tenants = self.giver.tenants.all();
        tenants
            .iter()
            .flat_map(|t| t.shared().local_links())
            .map(|l| l.id())
            .collect()
    }

    /// Closes the sessions in `ids` with 1012 (they then report gone).
    fn close_laggards(&self, ids: &HashSet<SessionId>) {
        tracing::warn!(
            sessions = ids.len(),
            "sessions whose clients do not read could not pause; closing them with 1012"
        );
        for tenant in self.giver.tenants.all() {
            for link in tenant.shared().local_links().iter().filter(|l| ids.contains(&l.id())) {
                link.stop(crate::error::close::SERVICE_RESTART, "server restarting");
            }
        }
    }

    /// The new process serves: tenants end without a word, sessions drop
    /// their copy of the socket, waiting requests are told to come again.
    fn commit(&mut self) {
        for verdict in self.tenants.drain(..) {
            let _ = verdict.send(Verdict::TookOver);
        }
        for session in self.parked.drain(..) {
            session.took_over();
        }
        let handover = &self.giver.clients.handover;
        handover.gone.store(true, Ordering::Relaxed);
        handover.park_into(None);
        self.gate = None;
    }

    /// Resumes everything where it was paused.
    fn call_off(&mut self) {
        if self.storage_closed
            && let Err(e) = self.giver.storage.reopen()
        {
            tracing::error!("cannot reopen the storage after the handover was called off: {e}");
        }
        for tenant in self.giver.tenants.all() {
            for link in tenant.shared().local_links() {
                link.hand_over(Handover::Off);
            }
        }
        for verdict in self.tenants.drain(..) {
            let _ = verdict.send(Verdict::CalledOff);
        }
        for session in self.parked.drain(..) {
            session.resume();
        }
        let handover = &self.giver.clients.handover;
        handover.park_into(None);
        self.gate = None;
        handover.accepting.send_replace(true);
        self.giver.admin_accepting.send_replace(true);
    }
}

impl Drop for Cutover<'_> {
    fn drop(&mut self) {
        // Neither committed nor called off (the caller went away): serve on.
        if self.gate.is_some() || !self.tenants.is_empty() || !self.parked.is_empty() {
            self.call_off();
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// 128 random bits, hex.
fn token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
