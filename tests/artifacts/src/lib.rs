//! Paths of the example plugins of `plugins/`, built for `wasm32-wasip2` by
//! this crate's build script (one nested `cargo build` of that workspace, in
//! its own target directory under `OUT_DIR`).
//!
//! Each plugin crate `foo-bar` becomes a constant `FOO_BAR` holding the path
//! of its `.wasm`; [`ALL`] lists them with their crate names. The host's own
//! build never depends on this crate: only tests and benches do.

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
