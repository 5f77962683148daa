//! The host side of the plugin's imports, one file per WIT interface.
//!
//! Each is implemented on [`crate::instance::InstanceState`], the data of the
//! calling instance's store, so everything a plugin reaches is reached through
//! its own tenant ([`crate::tenant::TenantShared`]): there is no global table
//! a plugin could index into with another tenant's ids. Errors a plugin can
//! handle are WIT `result` values; none of these functions traps.

pub mod clock;
pub mod log;
pub mod presence;
pub mod session;
pub mod storage;
pub mod timers;
pub mod topics;

impl crate::bindings::baton::plugin::types::Host for crate::instance::InstanceState {}
