//! The host's one binding site for the plugin world in `wit/`.
//!
//! The host binds the `plugin-core` world: every export a plugin must have.
//! Optional callbacks of the `plugin` world (`on-presence`) are looked up by
//! name on each instance, so plugins built before they existed still load
//! (see [`crate::instance`]).
//!
//! Exports are async (calls run on fibers so that guest code can yield at
//! epoch ticks). Imports are plain synchronous functions, implemented one file
//! per interface in [`crate::imports`], except those that wait for the disk,
//! the database or the network: storage, sql, timers (a named timer is
//! kept with the jobs), jobs, webhooks and outbound-http.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin-core",
    imports: {
        "baton:plugin/storage": async,
        "baton:plugin/sql": async,
        "baton:plugin/timers": async,
        "baton:plugin/jobs": async,
        "baton:plugin/webhooks": async,
        "baton:plugin/outbound-http": async,
    },
    exports: { default: async },
    additional_derives: [PartialEq],
});
