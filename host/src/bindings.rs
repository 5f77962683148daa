//! The host's one binding site for the plugin world in `wit/`.
//!
//! Exports are async (calls run on fibers so that guest code can yield at
//! epoch ticks); imports are plain synchronous functions, implemented one file
//! per interface in [`crate::imports`].

#![expect(missing_docs, reason = "generated bindings carry the WIT's docs, not Rust ones")]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    exports: { default: async },
    additional_derives: [PartialEq, Eq],
});
