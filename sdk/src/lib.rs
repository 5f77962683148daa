//! Write [baton](https://github.com/baton) plugins in Rust.
//!
//! A plugin is a type that implements [`Plugin`], exported with [`export!`].
//! The host creates one instance per tenant, so `self` is that tenant's state;
//! every method runs to completion before the next one starts. Build it with
//! `cargo build --release --target wasm32-wasip2` and drop the `.wasm` into the
//! host's deploy folder.
//!
//! ```no_run
//! use baton_sdk::{Config, ConnectRequest, Frame, Plugin, Session};
//!
//! /// Echoes every frame back and counts the frames of this tenant.
//! struct Echo {
//!     frames: u64,
//! }
//!
//! impl Plugin for Echo {
//!     fn init(_config: Config) -> Result<Self, String> {
//!         Ok(Echo { frames: 0 })
//!     }
//!
//!     fn on_connect(&mut self, session: Session, request: &ConnectRequest) -> Result<(), String> {
//!         baton_sdk::log::info(&format!("{session} joined {}", request.path));
//!         Ok(())
//!     }
//!
//!     fn on_frame(&mut self, session: Session, frame: Frame) {
//!         self.frames += 1;
//!         // The session may have closed meanwhile: nothing to do then.
//!         let _ = session.send(&frame);
//!     }
//! }
//!
//! baton_sdk::export!(Echo);
//! ```
//!
//! What the host offers, all scoped to the instance's tenant:
//! [`Session`] (send, close), [`topics`] (pub/sub with host fan-out),
//! [`presence`] (who is where, with [`Plugin::on_presence`]), [`timers`],
//! [`storage`] (durable key-value), [`jobs`] (durable background work, with
//! [`Plugin::on_job`]), [`webhooks`] (signed, host-delivered), [`sql`] (the
//! tenant's own PostgreSQL schema, when granted), [`outbound`] (HTTP out,
//! within an allow-list, when granted), [`log`] and [`now_ms`].
//!
//! State across hot swaps: a new version of the plugin receives the state of
//! the old one through [`Plugin::export_state`] and [`Plugin::import_state`];
//! the [`state`] module encodes it with a layout version so that reading an
//! older layout takes a few lines.

// Lets the generated bindings name this crate as `::baton_sdk` from inside it too.
extern crate self as baton_sdk;

mod http;
pub mod jobs;
pub mod log;
pub mod outbound;
pub mod presence;
mod session;
pub mod sql;
pub mod state;
pub mod storage;
pub mod timers;
pub mod topics;
pub mod webhooks;

pub use http::{HttpRequest, HttpResponse, query_param};
pub use session::{CloseError, SendError, Session};

use serde::de::DeserializeOwned;

/// The bindings generated from the WIT world; not part of the SDK's API.
#[doc(hidden)]
pub mod __private {
    wit_bindgen::generate!({
        path: "../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "baton_sdk::__private",
        runtime_path: "::baton_sdk::__private::wit_bindgen::rt",
    });

    pub use wit_bindgen;

    use std::cell::RefCell;
    use std::thread::LocalKey;

    use crate::Plugin;

    /// The slot that holds the plugin value of this instance.
    pub type Slot<P> = LocalKey<RefCell<Option<P>>>;

    fn with<P: Plugin, R>(slot: &'static Slot<P>, f: impl FnOnce(&mut P) -> R) -> R {
        slot.with(|cell| {
            let mut plugin = cell.borrow_mut();
            let plugin = plugin
                .as_mut()
                .expect("baton called the plugin before `init` succeeded");
            f(plugin)
        })
    }

    pub fn init<P: Plugin>(slot: &'static Slot<P>, config: String) -> Result<(), String> {
        let plugin = P::init(crate::Config { json: config })?;
        slot.with(|cell| *cell.borrow_mut() = Some(plugin));
        Ok(())
    }

    pub fn on_connect<P: Plugin>(
        slot: &'static Slot<P>,
        session: u64,
        request: crate::ConnectRequest,
    ) -> Result<(), String> {
        with(slot, |p| p.on_connect(crate::Session::from_id(session), &request))
    }

    pub fn on_frame<P: Plugin>(slot: &'static Slot<P>, session: u64, frame: crate::Frame) {
        with(slot, |p| p.on_frame(crate::Session::from_id(session), frame))
    }

    pub fn on_disconnect<P: Plugin>(slot: &'static Slot<P>, session: u64) {
        with(slot, |p| p.on_disconnect(crate::Session::from_id(session)))
    }

    pub fn on_http<P: Plugin>(
        slot: &'static Slot<P>,
        request: baton::plugin::types::HttpRequest,
    ) -> Result<baton::plugin::types::HttpResponse, String> {
        with(slot, |p| p.on_http(request.into())).map(Into::into)
    }

    pub fn on_timer<P: Plugin>(slot: &'static Slot<P>, timer: u64, payload: Vec<u8>) {
        with(slot, |p| p.on_timer(timer, payload))
    }

    pub fn on_presence<P: Plugin>(
        slot: &'static Slot<P>,
        topic: String,
        joins: Vec<crate::presence::Entry>,
        leaves: Vec<crate::presence::Entry>,
    ) {
        with(slot, |p| p.on_presence(&topic, &joins, &leaves))
    }

    pub fn on_job<P: Plugin>(
        slot: &'static Slot<P>,
        job: crate::jobs::Info,
        payload: Vec<u8>,
    ) -> crate::jobs::Outcome {
        with(slot, |p| p.on_job(&job, payload))
    }

    pub fn on_webhook_result<P: Plugin>(slot: &'static Slot<P>, delivery: crate::webhooks::Delivery) {
        with(slot, |p| p.on_webhook_result(&delivery))
    }

    pub fn export_state<P: Plugin>(slot: &'static Slot<P>) -> Result<Vec<u8>, String> {
        with(slot, |p| p.export_state())
    }

    pub fn import_state<P: Plugin>(slot: &'static Slot<P>, from_version: String, state: Vec<u8>) -> Result<(), String> {
        with(slot, |p| p.import_state(&from_version, &state))
    }
}

/// One WebSocket message: text or binary.
pub type Frame = __private::baton::plugin::types::Frame;

/// A client opening a session, as passed to [`Plugin::on_connect`].
pub type ConnectRequest = __private::baton::plugin::types::ConnectRequest;

/// Wall-clock time in milliseconds since the Unix epoch, from the host.
pub fn now_ms() -> u64 {
    __private::baton::plugin::clock::now_ms()
}

/// The name of the tenant this instance serves (`/t/{tenant}/...`), the
/// same for the instance's whole life; empty in an instance the host runs
/// only to check a deploy. Needs a host of `baton:plugin@0.1.3` or later: a
/// plugin that calls it is refused by older hosts.
pub fn tenant_name() -> String {
    __private::baton::plugin::tenant::name()
}

/// Identifies a timer.
pub type TimerId = u64;

/// The plugin's configuration: the `[config]` table of `<name>.toml` in the
/// deploy folder, handed to [`Plugin::init`].
#[derive(Debug, Clone)]
pub struct Config {
    json: String,
}

impl Config {
    /// The configuration as JSON text (`{}` when the plugin has none).
    pub fn as_json(&self) -> &str {
        &self.json
    }

    /// Deserializes the configuration into the plugin's own type.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.json).map_err(|e| format!("invalid plugin config: {e}"))
    }
}

/// A baton plugin: one value of this type per tenant.
///
/// Only [`Plugin::init`] is required; every other method has a default that
/// does nothing (or refuses, for HTTP). The host never calls two methods of
/// one instance at once, and calls `init` before any other method.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a baton plugin",
    label = "`baton_sdk::export!` needs a type that implements `baton_sdk::Plugin`",
    note = "add `impl baton_sdk::Plugin for {Self} {{ fn init(config: baton_sdk::Config) -> Result<Self, String> {{ .. }} }}`"
)]
pub trait Plugin: Sized + 'static {
    /// Creates the tenant's instance. An error fails the deploy of this
    /// version; the previous version keeps serving.
    fn init(config: Config) -> Result<Self, String>;

    /// A client opens a session. Return `Err(reason)` to refuse it: the client
    /// then gets HTTP 403 with the reason. `request.resumed` is `true` when the
    /// host re-announces an already open session to a fresh instance after a
    /// crash.
    fn on_connect(&mut self, session: Session, request: &ConnectRequest) -> Result<(), String> {
        let _ = (session, request);
        Ok(())
    }

    /// A frame from a session, in the order the client sent it.
    fn on_frame(&mut self, session: Session, frame: Frame) {
        let _ = (session, frame);
    }

    /// A session closed. Nothing arrives for it afterwards.
    fn on_disconnect(&mut self, session: Session) {
        let _ = session;
    }

    /// An HTTP request under `/t/{tenant}/{plugin}/...`. `Err` becomes a 500.
    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        let _ = request;
        Ok(HttpResponse::text(404, "not found"))
    }

    /// A timer set with [`timers::set`] or [`timers::set_named`] fired.
    fn on_timer(&mut self, timer: TimerId, payload: Vec<u8>) {
        let _ = (timer, payload);
    }

    /// Presence changed in `topic` (see [`presence`]): `joins` arrived,
    /// `leaves` left. Called after the call that changed it, and after
    /// [`Plugin::on_disconnect`] for a closed session, which leaves everything.
    fn on_presence(&mut self, topic: &str, joins: &[presence::Entry], leaves: &[presence::Entry]) {
        let _ = (topic, joins, leaves);
    }

    /// Runs a job (see [`jobs`]): return [`jobs::Outcome::Done`], or
    /// `Failed(error)` to have it retried per its policy. The default
    /// discards jobs: a plugin that enqueues them implements this.
    fn on_job(&mut self, job: &jobs::Info, payload: Vec<u8>) -> jobs::Outcome {
        let _ = payload;
        jobs::Outcome::Discard(format!("this plugin has no on_job for jobs of kind {:?}", job.kind))
    }

    /// A webhook queued with [`webhooks::send`] was delivered, or its
    /// attempts are used up. Called at least once per message.
    fn on_webhook_result(&mut self, delivery: &webhooks::Delivery) {
        let _ = delivery;
    }

    /// The schema migrations of this version, oldest first (plugins granted
    /// [`sql`]): each tenant's pending ones are applied in the transaction
    /// that moves it to this version, with `init` and `import-state`. Keep
    /// them expand-only (add columns and tables; drop in a later version),
    /// so that the previous version still runs on the new schema after a
    /// rollback. Called before `init`.
    fn migrations() -> Vec<sql::Migration> {
        Vec::new()
    }

    /// A hot swap is moving this tenant to a new version: return the state it
    /// needs. See [`state`] for a versioned encoding.
    fn export_state(&mut self) -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    /// A hot swap moved this tenant here from version `from_version` (the hex
    /// SHA-256 of its file): take over `state`, produced by that version's
    /// [`Plugin::export_state`]. `Err` keeps the tenant on its old version.
    ///
    /// The default accepts only an empty state, so that a stateful plugin that
    /// forgets to implement this never silently drops its predecessor's state.
    fn import_state(&mut self, from_version: &str, state: &[u8]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "this version cannot read the state of version {from_version} \
                 (it does not implement Plugin::import_state)"
            ))
        }
    }
}

/// Exports a type implementing [`Plugin`] as this component's plugin.
///
/// Use it once per plugin crate, at the crate root: `baton_sdk::export!(MyPlugin);`
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            use $crate::__private as __baton;

            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct BatonPlugin;

            impl __baton::Guest for BatonPlugin {
                fn init(config: String) -> Result<(), String> {
                    __baton::init::<$plugin>(&PLUGIN, config)
                }
                fn on_connect(session: u64, request: $crate::ConnectRequest) -> Result<(), String> {
                    __baton::on_connect::<$plugin>(&PLUGIN, session, request)
                }
                fn on_frame(session: u64, frame: $crate::Frame) {
                    __baton::on_frame::<$plugin>(&PLUGIN, session, frame)
                }
                fn on_disconnect(session: u64) {
                    __baton::on_disconnect::<$plugin>(&PLUGIN, session)
                }
                fn on_http(
                    request: __baton::baton::plugin::types::HttpRequest,
                ) -> Result<__baton::baton::plugin::types::HttpResponse, String> {
                    __baton::on_http::<$plugin>(&PLUGIN, request)
                }
                fn on_timer(timer: u64, payload: Vec<u8>) {
                    __baton::on_timer::<$plugin>(&PLUGIN, timer, payload)
                }
                fn export_state() -> Result<Vec<u8>, String> {
                    __baton::export_state::<$plugin>(&PLUGIN)
                }
                fn import_state(from_version: String, state: Vec<u8>) -> Result<(), String> {
                    __baton::import_state::<$plugin>(&PLUGIN, from_version, state)
                }
                fn on_presence(
                    topic: String,
                    joins: Vec<$crate::presence::Entry>,
                    leaves: Vec<$crate::presence::Entry>,
                ) {
                    __baton::on_presence::<$plugin>(&PLUGIN, topic, joins, leaves)
                }
                fn migrations() -> Vec<$crate::sql::Migration> {
                    <$plugin as $crate::Plugin>::migrations()
                }
                fn on_job(job: $crate::jobs::Info, payload: Vec<u8>) -> $crate::jobs::Outcome {
                    __baton::on_job::<$plugin>(&PLUGIN, job, payload)
                }
                fn on_webhook_result(delivery: $crate::webhooks::Delivery) {
                    __baton::on_webhook_result::<$plugin>(&PLUGIN, delivery)
                }
            }

            __baton::__export_world!(BatonPlugin);
        };
    };
}
