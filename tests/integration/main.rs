//! baton's integration tests, in one binary: each file proves one area
//! against a real host (in this process, on ephemeral loopback ports), real
//! WebSocket and HTTP clients, and the real plugins of `plugins/`.

mod browser;
mod capacity;
mod channels;
mod cli;
mod clients;
mod cluster;
mod compiling;
mod durability;
mod fixtures;
mod hot_swap;
mod isolation;
mod jobs;
mod languages;
mod layering;
mod limits;
mod operations;
mod outbound;
mod proxy;
mod resume;
mod rollouts;
mod sessions;
mod sql;
mod startup;
mod supervision;
mod support;
mod upgrade;
mod v1_client;
mod webhooks;
