//! Tenants: one task per (tenant, plugin) that owns the tenant's instance.
//!
//! Tenant tasks run on a runtime of their own (see [`crate::run`]): plugin
//! code never occupies a worker that accepts, reads or writes sockets, and a
//! running call yields to the other tenants at every epoch tick.
//!
//! Everything that reaches a tenant's plugin goes through its bounded mailbox
//! ([`mailbox::Command`]) and is handled by its one task, one command at a time: calls
//! into an instance are serialized, different tenants run in parallel, and a
//! session whose frame does not fit in the mailbox stops reading
//! (backpressure). The task is created on the tenant's first session or
//! request.
//!
//! Host-held state of the tenant ([`state::TenantShared`]: its sessions, topic
//! subscriptions, presence and timers) lives outside any instance and is
//! shared by every instance the tenant gets, so it survives swaps, crashes and
//! restarts. Timers fire from this task, on whatever instance is current;
//! presence changes are handed to the plugin's `on-presence` callback after
//! the call that caused them.
//!
//! Between commands the task compares its instance's version with the
//! plugin's current one. When they differ it **migrates** (OTP's
//! `code_change`): `export-state` on the old instance, `init` then
//! `import-state` on a new instance of the current version, then the old one
//! is dropped. Commands arriving meanwhile wait in the mailbox, in order. A
//! call in flight at swap time finishes first, on its old version. If the new
//! version cannot take the state (refuses or traps), the tenant stays on its
//! old version with its state, does not retry that generation, and reports it
//! ([`env::Report::MigrationFailed`]).
//!
//! **Supervision**: a trap in any call loses that call (the frame is not
//! retried), discards the instance, and starts a fresh one of the plugin's
//! current version (`init` only: the crashed instance's memory is gone), to
//! which every open session is re-announced (`on-connect` with `resumed`).
//! Sessions stay open. More than `supervision.max_restarts` restarts within
//! `supervision.window_secs` put the tenant in back-off (no instance; frames
//! wait; new sessions and requests get 503) and report a crash loop
//! ([`env::Report::CrashLoop`]), on which the deployer may roll the plugin back.
//!
//! **Hibernation**: an instance idle for `hibernation.idle_secs` exports its
//! state and is dropped; the next command or timer starts an instance of the
//! same version that imports it (then migrates as usual if the plugin moved
//! on meanwhile). Sessions stay open. At shutdown the state of every tenant
//! is exported to the data folder (`shutdown.persist_state`) and imported by
//! its first instance after the next start.
//!
//! **Resumable sessions** (`baton.v1`): a session whose socket is lost is
//! *detached*, not closed: it keeps its subscriptions and presence, its
//! link keeps numbering and retaining what the plugin sends, and the plugin
//! hears nothing. A client that comes back with the session's token
//! (`Command::Resume`) gets a new socket on the same session and what it
//! missed; the tenant takes each of the client's frames once, by number.
//! A session not resumed within `resume.window_secs` (or whose retained
//! frames outgrow `resume.max_bytes`) ends then, as a disconnect.
//!
//! **Removal**: when the plugin is removed, the tenant keeps serving its open
//! sessions for the drain deadline, then closes them with 1001 and ends once
//! they are gone. A redeploy within the deadline migrates it as usual.
//!
//! The files, each a type with its own state, bottom up:
//! - `state.rs`: [`TenantShared`], the host-held state, and the published
//!   [`Status`]; `usage.rs`: what the tenant used of each version;
//! - `mailbox.rs`: [`Command`] and [`TenantHandle`] (what sessions and
//!   requests send; a session's `Inbound` converts into a command);
//! - `directory.rs`: [`Tenants`], which tasks exist, by plugin and tenant;
//! - `env.rs`: [`TenantEnv`], what every task gets from the host, and the
//!   [`Report`]s it sends the deployer;
//! - `supervisor.rs`: restart intensity and back-off, a pure value;
//! - `slot/`: the instance, or its hibernated state, and how one is brought
//!   up, hibernated, migrated and kept across a restart;
//! - `incidents.rs`: how failures are reported and counted as restarts;
//! - `actor.rs`: the task: its loop, what it does next, and its lifecycle;
//! - `commands.rs`: the task's handler for each command;
//! - `resume.rs`: resumable sessions detached, resumed and expired;
//! - `ending.rs`: how the task ends or leaves (handover, a removed plugin's
//!   sessions closed, what is still queued answered);
//! - `lifecycle.rs`: a tenant's data as a whole, exported and deleted;
//! - `open.rs`: [`Opener`], finding or creating a tenant's task for a
//!   session or request.

mod actor;
mod commands;
mod directory;
mod ending;
mod env;
mod incidents;
mod jobs;
pub mod lifecycle;
mod mailbox;
mod open;
pub mod record;
mod resume;
mod slot;
pub mod state;
mod supervisor;
pub mod usage;

pub use actor::adopt;
pub use directory::Tenants;
pub use env::{Report, TenantEnv};
pub use mailbox::{Command, Resumed, TenantHandle, Trial, Verdict};
pub use open::Opener;
pub use state::{Status, TenantShared};
