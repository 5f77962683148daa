//! `baton new`: a plugin project that builds as is, in Rust, Python or
//! JavaScript, with the SDK and the WIT this binary was built with written
//! into it (no checkout of baton needed), and the build tools pinned.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The language of a new plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate on the Rust SDK (`cargo build --release`).
    Rust,
    /// Python with componentize-py (`./build.sh`).
    Python,
    /// JavaScript with componentize-js (`npm run build`).
    Js,
}

/// A file carried in this binary: its path in the project, its text.
type Carried = (&'static str, &'static str);

/// The plugin WIT, as this host provides it.
const WIT: Carried = ("wit/plugin.wit", include_str!("../../../wit/plugin.wit"));

/// The Rust SDK, written under `baton-sdk/` (its bindings read `../wit`).
const RUST_SDK: &[Carried] = &[
    ("baton-sdk/Cargo.toml", include_str!("../../../sdk/Cargo.toml")),
    ("baton-sdk/src/http.rs", include_str!("../../../sdk/src/http.rs")),
    ("baton-sdk/src/jobs.rs", include_str!("../../../sdk/src/jobs.rs")),
    ("baton-sdk/src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    ("baton-sdk/src/log.rs", include_str!("../../../sdk/src/log.rs")),
    (
        "baton-sdk/src/outbound.rs",
        include_str!("../../../sdk/src/outbound.rs"),
    ),
    (
        "baton-sdk/src/presence.rs",
        include_str!("../../../sdk/src/presence.rs"),
    ),
    ("baton-sdk/src/session.rs", include_str!("../../../sdk/src/session.rs")),
    ("baton-sdk/src/sql.rs", include_str!("../../../sdk/src/sql.rs")),
    ("baton-sdk/src/state.rs", include_str!("../../../sdk/src/state.rs")),
    ("baton-sdk/src/storage.rs", include_str!("../../../sdk/src/storage.rs")),
    ("baton-sdk/src/timers.rs", include_str!("../../../sdk/src/timers.rs")),
    ("baton-sdk/src/topics.rs", include_str!("../../../sdk/src/topics.rs")),
    (
        "baton-sdk/src/webhooks.rs",
        include_str!("../../../sdk/src/webhooks.rs"),
    ),
];

/// The Python SDK, written under `baton_sdk/` beside the app.
const PYTHON_SDK: &[Carried] = &[
    (
        "baton_sdk/__init__.py",
        include_str!("../../../sdk-python/src/baton_sdk/__init__.py"),
    ),
    (
        "baton_sdk/_plugin.py",
        include_str!("../../../sdk-python/src/baton_sdk/_plugin.py"),
    ),
    (
        "baton_sdk/_wit.py",
        include_str!("../../../sdk-python/src/baton_sdk/_wit.py"),
    ),
    (
        "baton_sdk/errors.py",
        include_str!("../../../sdk-python/src/baton_sdk/errors.py"),
    ),
    (
        "baton_sdk/frame.py",
        include_str!("../../../sdk-python/src/baton_sdk/frame.py"),
    ),
    (
        "baton_sdk/http.py",
        include_str!("../../../sdk-python/src/baton_sdk/http.py"),
    ),
    (
        "baton_sdk/jobs.py",
        include_str!("../../../sdk-python/src/baton_sdk/jobs.py"),
    ),
    (
        "baton_sdk/log.py",
        include_str!("../../../sdk-python/src/baton_sdk/log.py"),
    ),
    (
        "baton_sdk/presence.py",
        include_str!("../../../sdk-python/src/baton_sdk/presence.py"),
    ),
    (
        "baton_sdk/session.py",
        include_str!("../../../sdk-python/src/baton_sdk/session.py"),
    ),
    (
        "baton_sdk/sql.py",
        include_str!("../../../sdk-python/src/baton_sdk/sql.py"),
    ),
    (
        "baton_sdk/state.py",
        include_str!("../../../sdk-python/src/baton_sdk/state.py"),
    ),
    (
        "baton_sdk/storage.py",
        include_str!("../../../sdk-python/src/baton_sdk/storage.py"),
    ),
    (
        "baton_sdk/timers.py",
        include_str!("../../../sdk-python/src/baton_sdk/timers.py"),
    ),
    (
        "baton_sdk/topics.py",
        include_str!("../../../sdk-python/src/baton_sdk/topics.py"),
    ),
    (
        "baton_sdk/webhooks.py",
        include_str!("../../../sdk-python/src/baton_sdk/webhooks.py"),
    ),
];

/// The pinned Python build tools.
const PYTHON_REQUIREMENTS: Carried = (
    "requirements.txt",
    include_str!("../../../sdk-python/requirements-build.txt"),
);

/// The JavaScript SDK, written under `baton-sdk/` (the build bundles it in).
const JS_SDK: &[Carried] = &[
    ("baton-sdk/package.json", include_str!("../../../sdk-js/package.json")),
    ("baton-sdk/src/host.js", include_str!("../../../sdk-js/src/host.js")),
    (
        "baton-sdk/src/index.d.ts",
        include_str!("../../../sdk-js/src/index.d.ts"),
    ),
    ("baton-sdk/src/index.js", include_str!("../../../sdk-js/src/index.js")),
    ("baton-sdk/src/json.js", include_str!("../../../sdk-js/src/json.js")),
    (
        "baton-sdk/src/state.d.ts",
        include_str!("../../../sdk-js/src/state.d.ts"),
    ),
    ("baton-sdk/src/state.js", include_str!("../../../sdk-js/src/state.js")),
];

/// The JavaScript build: bundle with esbuild, then componentize-js.
const JS_BUILD: Carried = ("build.mjs", include_str!("../../../sdk-js/tools/build.mjs"));

/// The pinned JavaScript build tools and their lock.
const JS_TOOLS: &str = include_str!("../../../sdk-js/tools/package.json");
const JS_TOOLS_LOCK: &str = include_str!("../../../sdk-js/tools/package-lock.json");

/// Writes the project `name` into `dir/name`. A Rust project depends on
/// the SDK written into it, or on `sdk` (a checkout's `sdk/` folder) when
/// given.
pub fn create(name: &str, dir: &Path, lang: Lang, sdk: Option<PathBuf>) -> Result<PathBuf> {
    if !crate::names::is_plugin(name) {
        bail!("{name:?} is not a plugin name: use [a-z0-9][a-z0-9_-]*, at most 63 bytes");
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    let files = match lang {
        Lang::Rust => rust(name, sdk)?,
        Lang::Python => python(name),
        Lang::Js => js(name)?,
    };
    for (path, text) in files {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        if path.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(root)
}

/// What to tell the user once `lang`'s project is written.
pub fn next_step(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "build it with `cargo build --release` there",
        Lang::Python => "build it with `./build.sh` there (Python 3.10+; installs componentize-py in .venv)",
        Lang::Js => "build it with `npm ci && npm run build` there (Node.js 20+)",
    }
}

fn rust(name: &str, sdk: Option<PathBuf>) -> Result<Vec<(String, String)>> {
    let crate_ident = name.replace('-', "_");
    let carry_sdk = sdk.is_none();
    let sdk_dependency = match sdk {
        Some(path) => {
            let path = path
                .canonicalize()
                .ok()
                .filter(|p| p.join("Cargo.toml").exists())
                .with_context(|| {
                    format!(
                        "no baton SDK at {}: pass the sdk/ folder of a baton checkout",
                        path.display()
                    )
                })?;
            format!("{{ path = {:?} }}", path.display().to_string())
        }
        None => "{ path = \"baton-sdk\" }".to_owned(),
    };
    let mut files = vec![
        (
            "Cargo.toml".to_owned(),
            CARGO_TOML.replace("{name}", name).replace("{sdk}", &sdk_dependency),
        ),
        (".cargo/config.toml".to_owned(), CARGO_CONFIG.to_owned()),
        (".gitignore".to_owned(), "/target\n".to_owned()),
        ("src/lib.rs".to_owned(), LIB_RS.replace("{name}", name)),
        (
            "README.md".to_owned(),
            README.replace("{name}", name).replace("{crate}", &crate_ident),
        ),
    ];
    if carry_sdk {
        files.extend(carried(&[WIT]));
        files.extend(carried(RUST_SDK));
    }
    Ok(files)
}

fn python(name: &str) -> Vec<(String, String)> {
    let mut files = vec![
        ("app.py".to_owned(), APP_PY.replace("{name}", name)),
        ("build.sh".to_owned(), BUILD_SH.replace("{name}", name)),
        (
            ".gitignore".to_owned(),
            "/.venv/\n/.build/\n/*.wasm\n__pycache__/\n".to_owned(),
        ),
        ("README.md".to_owned(), PYTHON_README.replace("{name}", name)),
    ];
    files.extend(carried(&[WIT, PYTHON_REQUIREMENTS]));
    files.extend(carried(PYTHON_SDK));
    files
}

fn js(name: &str) -> Result<Vec<(String, String)>> {
    // The tools' manifest and lock, renamed: `npm ci` installs exactly the
    // versions this baton was tested with.
    let mut manifest: serde_json::Value = serde_json::from_str(JS_TOOLS)?;
    manifest["name"] = name.into();
    manifest["description"] = format!("The {name} baton plugin").into();
    manifest["private"] = true.into();
    manifest["type"] = "module".into();
    manifest["scripts"] = serde_json::json!({
        "build": format!(
            "mkdir -p .baton && node build.mjs --entry plugin.js --out {name}.wasm --world plugin-no-sql \
             --wit wit --sdk baton-sdk --deps .baton/deps.txt --tools ."
        ),
    });
    let mut lock: serde_json::Value = serde_json::from_str(JS_TOOLS_LOCK)?;
    lock["name"] = name.into();
    lock["packages"][""]["name"] = name.into();
    let mut files = vec![
        (
            "package.json".to_owned(),
            serde_json::to_string_pretty(&manifest)? + "\n",
        ),
        (
            "package-lock.json".to_owned(),
            serde_json::to_string_pretty(&lock)? + "\n",
        ),
        ("plugin.js".to_owned(), PLUGIN_JS.replace("{name}", name)),
        (
            ".gitignore".to_owned(),
            "/node_modules/\n/.baton/\n/*.wasm\n".to_owned(),
        ),
        ("README.md".to_owned(), JS_README.replace("{name}", name)),
    ];
    files.extend(carried(&[WIT, JS_BUILD]));
    files.extend(carried(JS_SDK));
    Ok(files)
}

fn carried(files: &[Carried]) -> impl Iterator<Item = (String, String)> + '_ {
    files
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
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
baton-sdk = {sdk}
serde = { version = "1", features = ["derive"] }
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = "debuginfo"

# A crate of its own, not part of an enclosing workspace; `baton-sdk/` is
# the SDK this project was created with (its bindings read `wit/`).
[workspace]
exclude = ["baton-sdk"]
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

const APP_PY: &str = r#"# The `{name}` baton plugin.

# Import everything at module level: the app is snapshotted at build time and
# a component has no files to import from later.
import baton_sdk
from baton_sdk import HttpResponse, Plugin, VersionedState


class State(VersionedState):
    """What the tenant keeps across hot swaps. Bump LAYOUT when its shape
    changes, and read older layouts in from_layout."""

    LAYOUT = 1

    def __init__(self):
        self.frames = 0


class App(Plugin):
    """One instance per tenant: `self` is that tenant's state."""

    def init(self, config):
        self.state = State()

    def on_connect(self, session, request):
        baton_sdk.log.info(f"session {session.id} connected to {request.path} of {baton_sdk.tenant_name()}")

    def on_frame(self, session, frame):
        self.state.frames += 1
        session.send(frame)

    def on_http(self, request):
        return HttpResponse.json(200, {"plugin": "{name}", "frames": self.state.frames})


WitWorld = baton_sdk.export(App)
"#;

const BUILD_SH: &str = r#"#!/usr/bin/env bash
# Builds {name}.wasm: componentize-py (pinned in requirements.txt, installed
# into .venv the first time) against the world `plugin-no-sql` of wit/ (pass
# `plugin-sql` to use SQL; the plugin then needs `[capabilities] sql = true`).
set -euo pipefail
cd "$(dirname "$0")"
world=${1:-plugin-no-sql}
if ! cmp -s requirements.txt .venv/.requirements 2>/dev/null; then
    rm -rf .venv
    "${PYTHON:-python3}" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt .venv/.requirements
fi
# componentize-py writes __pycache__ into what it reads: build from a copy
# (app.py and the modules beside it; the SDK apart).
rm -rf .build && mkdir -p .build/app .build/sdk
for f in *; do
    case $f in
        wit | baton_sdk | *.wasm) ;;
        *) cp -R "$f" .build/app/ ;;
    esac
done
cp -R baton_sdk .build/sdk/
(
    cd .build/app
    unset VIRTUAL_ENV PYTHONPATH
    ../../.venv/bin/componentize-py --quiet -d ../../wit -w "$world" componentize \
        -p . -p ../sdk app -o ../../{name}.wasm
)
rm -rf .build
echo "built {name}.wasm"
"#;

const PYTHON_README: &str = r#"# {name}

A [baton](https://github.com/baton) plugin in Python.

```sh
./build.sh                      # builds {name}.wasm (installs componentize-py into .venv once)
baton check {name}.wasm
baton deploy {name}.wasm
```

The first build installs the pinned componentize-py (a download from PyPI);
a build takes 10-20 s and makes an ~18 MB component, and a host's first load
of it compiles for another 10-20 s (then it is cached). `baton_sdk/` is the
SDK and `wit/` the plugin WIT of the baton that created this project.

Import every module at the top of `app.py` (also the standard library's):
the app is snapshotted at build time and cannot import anything later. An
exception in `on_frame`, `on_disconnect`, `on_timer`, `on_presence` or
`on_webhook_result` is logged and the instance keeps its state; in `on_job`
it is a failed attempt (retried per the job's policy); in a callback with an
error result (`init`, `on_connect`, `on_http`, `export_state`,
`import_state`) it becomes that error.
"#;

const PLUGIN_JS: &str = r#"// The `{name}` baton plugin. One instance per tenant: module state is that
// tenant's. The top level runs at build time (it is snapshotted): do not read
// the clock or call the host there.

import { definePlugin, http, log, tenantName, versionedState } from '@baton/sdk';

// What the tenant keeps across hot swaps. Bump `layout` when its shape
// changes, and read older layouts in `fromLayout`.
const state = versionedState({ layout: 1, initial: () => ({ frames: 0 }) });

export default definePlugin({
  state,

  onConnect(session, request) {
    log.info(`session ${session.id} connected to ${request.path} of ${tenantName()}`);
  },

  onFrame(session, frame) {
    state.value.frames += 1;
    session.send(frame);
  },

  onHttp(request) {
    return http.json(200, { plugin: '{name}', frames: state.value.frames });
  },
});
"#;

const JS_README: &str = r#"# {name}

A [baton](https://github.com/baton) plugin in JavaScript.

```sh
npm ci                          # the pinned build tools (componentize-js, esbuild), once
npm run build                   # builds {name}.wasm
baton check {name}.wasm
baton deploy {name}.wasm
```

A build takes ~10 s and makes a ~12 MB component; a host's first load of it
compiles for another 10-20 s (then it is cached). Give it room for its
garbage collector in `{name}.toml` beside the `.wasm` in the deploy folder:

```toml
[limits]
memory_mib = 128
```

`baton-sdk/` is the SDK and `wit/` the plugin WIT of the baton that created
this project. Session, timer and job ids are plain numbers. An exception in
`onFrame`, `onDisconnect`, `onTimer`, `onPresence` or `onWebhookResult` is
logged and the instance keeps its state; in `onJob` it is a failed attempt
(retried per the job's policy); in a callback with an error result (`init`,
`onConnect`, `onHttp`, `exportState`, `importState`) it becomes that error.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `carried` holds every file of `folder` (of this
    /// checkout) that `wanted` picks, each as `prefix` + its name.
    fn carries_all(folder: &str, prefix: &str, wanted: fn(&str) -> bool, carried: &[Carried]) {
        let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(folder);
        let mut on_disk: Vec<String> = std::fs::read_dir(&folder)
            .expect("the SDK's folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| wanted(name))
            .map(|name| format!("{prefix}{name}"))
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = carried
            .iter()
            .map(|(path, _)| (*path).to_owned())
            .filter(|path| path.starts_with(prefix))
            .collect();
        listed.sort();
        assert_eq!(listed, on_disk, "a new file of {} is not carried", folder.display());
    }

    #[test]
    fn every_file_of_each_sdk_is_carried() {
        carries_all("sdk/src", "baton-sdk/src/", |_| true, RUST_SDK);
        carries_all(
            "sdk-python/src/baton_sdk",
            "baton_sdk/",
            |name| name.ends_with(".py"),
            PYTHON_SDK,
        );
        carries_all("sdk-js/src", "baton-sdk/src/", |_| true, JS_SDK);
    }
}
