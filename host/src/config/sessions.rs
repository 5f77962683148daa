//! `[sessions]`: client WebSockets: their queues, the tenant mailbox, pings
//! and idle time, and the host-wide session limit.

use std::num::NonZeroU32;
use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

/// Client session settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Frames queued to one client at most; a client that lets its queue fill
    /// up is closed with 1008. Default 1024.
    pub outbound_queue: NonZeroUsize,
    /// Payload bytes queued to one client at most (one frame always fits an
    /// empty queue); beyond it, 1008 as for `outbound_queue`. Default 4 MiB.
    pub outbound_queue_bytes: usize,
    /// Commands (frames, connects, requests) queued to one tenant instance at
    /// most; beyond it, sessions stop reading (backpressure). Default 1024.
    pub mailbox: NonZeroUsize,
    /// Payload bytes of client frames one tenant holds at most, waiting in
    /// its mailbox or being handled (a larger frame takes all of it); beyond
    /// it, sessions stop reading. Default 16 MiB.
    pub mailbox_bytes: NonZeroU32,
    /// How long a session waits to hand a frame to its tenant's instance
    /// (overloaded or backing off after crashes) before it is closed with
    /// 1013, in seconds. Default 30.
    pub mailbox_wait_secs: u64,
    /// Interval between server pings on a quiet session, in seconds. Default 30.
    pub ping_interval_secs: u64,
    /// A session that sends nothing (not even a pong) this long is closed
    /// with 1001, in seconds. Default 90.
    pub idle_timeout_secs: u64,
    /// Socket read buffer per session, in bytes. Default 4096.
    pub read_buffer_bytes: usize,
    /// Sessions the host holds at most (503 beyond). Default: the open-file
    /// limit less `reserved_descriptors`, so that at the limit the admin API,
    /// deploys and storage still have descriptors.
    pub max_sessions: Option<usize>,
    /// Open files kept free of sessions when `max_sessions` is not set.
    /// Default 500.
    pub reserved_descriptors: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            outbound_queue: NonZeroUsize::new(1024).expect("non-zero"),
            outbound_queue_bytes: 4 << 20,
            mailbox: NonZeroUsize::new(1024).expect("non-zero"),
            mailbox_bytes: NonZeroU32::new(16 << 20).expect("non-zero"),
            mailbox_wait_secs: 30,
            ping_interval_secs: 30,
            idle_timeout_secs: 90,
            read_buffer_bytes: 4096,
            max_sessions: None,
            reserved_descriptors: 500,
        }
    }
}
