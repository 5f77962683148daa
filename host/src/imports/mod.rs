//! The host side of the plugin's imports, one file per WIT interface.
//!
//! Each is implemented on `InstanceState` (`instance::state`), the data of the
//! calling instance's store, so everything a plugin reaches is reached through
//! its own tenant (`TenantShared`): there is no global table
//! a plugin could index into with another tenant's ids. Errors a plugin can
//! handle are WIT `result` values; none of these functions traps.

mod clock;
mod jobs;
mod log;
mod outbound_http;
mod presence;
mod session;
mod sql;
mod storage;
mod tenant;
mod timers;
mod topics;
mod webhooks;

impl crate::bindings::baton::plugin::types::Host for crate::instance::state::InstanceState {}
