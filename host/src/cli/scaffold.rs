//! `baton new`: a plugin crate that uses the SDK and builds as is.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Where this binary's SDK sources were when it was built.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

/// The SDK to depend on: `explicit`, else `BATON_SDK`, else the one next to
/// the sources this binary was built from.
pub fn sdk_path(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = explicit
        .or_else(|| std::env::var_os("BATON_SDK").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(BUILT_SDK));
    path.canonicalize()
        .ok()
        .filter(|p| p.join("Cargo.toml").exists())
        .with_context(|| {
            format!(
                "no baton SDK at {}: pass --sdk PATH (the sdk/ folder of a baton checkout)",
                path.display()
            )
        })
}

/// Writes the crate `name` into `dir/name`.
pub fn create(name: &str, dir: &Path, sdk: &Path) -> Result<PathBuf> {
    if !crate::names::is_plugin(name) {
        bail!("{name:?} is not a plugin name: use [a-z0-9][a-z0-9_-]*, at most 63 bytes");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let crate_ident = name.replace('-', "_");
    let files: [(&str, String); 5] = [
        (
            "Cargo.toml",
            CARGO_TOML
                .replace("{name}", name)
                .replace("{sdk}", &sdk.display().to_string()),
        ),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
        (".gitignore", "/target\n".to_owned()),
        ("src/lib.rs", LIB_RS.replace("{name}", name)),
        (
            "README.md",
            README.replace("{name}", name).replace("{crate}", &crate_ident),
        ),
    ];
    for (path, text) in files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

# A baton plugin is a WebAssembly component: a cdylib built for wasm32-wasip2.
[lib]
crate-type = ["cdylib"]

[dependencies]
baton-sdk = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = "debuginfo"

# A crate of its own, not part of an enclosing workspace.
[workspace]
"#;

const CARGO_CONFIG: &str = r#"# `cargo build` builds the component.
[build]
target = "wasm32-wasip2"
"#;

const LIB_RS: &str = r#"//! The `{name}` baton plugin.

use baton_sdk::{Config, ConnectRequest, Frame, HttpRequest, HttpResponse, Plugin, Session};

/// One value per tenant: this tenant's state.
struct App {
    frames: u64,
}

impl Plugin for App {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(App { frames: 0 })
    }

    fn on_connect(&mut self, session: Session, request: &ConnectRequest) -> Result<(), String> {
        baton_sdk::log::info(&format!("{session} connected to {} of tenant {}", request.path, request.tenant));
        Ok(())
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        self.frames += 1;
        let _ = session.send(&frame);
    }

    fn on_http(&mut self, _request: HttpRequest) -> Result<HttpResponse, String> {
        HttpResponse::json(200, &serde_json::json!({ "plugin": "{name}", "frames": self.frames }))
    }
}

baton_sdk::export!(App);
"#;

const README: &str = r#"# {name}

A [baton](https://github.com/baton) plugin.

```sh
rustup target add wasm32-wasip2        # once
cargo build --release                  # builds target/wasm32-wasip2/release/{crate}.wasm
baton check target/wasm32-wasip2/release/{crate}.wasm
baton deploy target/wasm32-wasip2/release/{crate}.wasm --name {name}
```

`baton deploy` places the file in the host's deploy folder (`--deploy-dir`,
default `./deploy`) and waits until the host has activated it. Clients then
connect to `ws://HOST/t/{tenant}/{name}`; HTTP requests under
`/t/{tenant}/{name}/...` reach `on_http`.

Settings (limits, the config passed to `init`, capabilities) go in
`{name}.toml` beside the `.wasm` in the deploy folder.
"#;
