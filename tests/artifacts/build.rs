//! Builds the `plugins/` workspace for `wasm32-wasip2` and writes the paths of
//! the components as constants.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

const TARGET: &str = "wasm32-wasip2";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("../..").canonicalize()?;
    let plugins = root.join("plugins");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let target_dir = out.join("target");

    let manifest = std::fs::read_to_string(plugins.join("Cargo.toml"))?;
    let manifest: toml::Table = manifest.parse()?;
    let members: Vec<String> = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .context("plugins/Cargo.toml has no workspace.members")?
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();

    for path in [
        "plugins/Cargo.toml",
        "plugins/Cargo.lock",
        "sdk/Cargo.toml",
        "sdk/src",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    for member in &members {
        for path in ["Cargo.toml", "src", "wit"] {
            println!("cargo:rerun-if-changed={}", plugins.join(member).join(path).display());
        }
    }

    check_target()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&plugins)
        .args(["build", "--release", "--locked", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        // The outer build's flags and wrappers are for the host, not for wasm.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_MAKEFLAGS");
    let status = build.status().context("cannot run cargo for the plugins")?;
    if !status.success() {
        bail!("building the plugins of {} failed", plugins.display());
    }

    let release = target_dir.join(TARGET).join("release");
    let mut code = String::new();
    let mut all = String::from("/// Every plugin: (crate name, path).\npub const ALL: &[(&str, &str)] = &[\n");
    for member in &members {
        let name = crate_name(&plugins.join(member))?;
        // A library component is named after its crate with `_`, a command
        // after its binary (with `-`).
        let file = [name.replace('-', "_"), name.clone()]
            .into_iter()
            .map(|stem| release.join(format!("{stem}.wasm")))
            .find(|f| f.exists())
            .with_context(|| format!("plugin {name} was not built"))?;
        let constant = name.to_uppercase().replace('-', "_");
        code.push_str(&format!(
            "/// `plugins/{member}`, built.\npub const {constant}: &str = {:?};\n",
            file.display().to_string()
        ));
        all.push_str(&format!("    ({name:?}, {constant}),\n"));
    }
    all.push_str("];\n");
    code.push_str(&all);
    code.push_str(&scripted(&root, &out)?);
    std::fs::write(out.join("plugins.rs"), code)?;
    Ok(())
}

/// The plugins in Python and JavaScript: (constant, SDK folder, source,
/// file name). Each SDK's `build-plugin` installs its pinned tools once
/// (cached under `target/lang`) and rebuilds only what changed.
const SCRIPTED: &[(&str, &str, &str, &str)] = &[
    ("COUNTER_PY", "sdk-python", "plugins/counter-py", "counter_py.wasm"),
    ("COUNTER_JS", "sdk-js", "plugins/counter-js", "counter_js.wasm"),
    // Every wrapper of the JavaScript SDK, for sdk-js/test/e2e-sdk.mjs.
    (
        "JS_KITCHEN_SINK",
        "sdk-js",
        "sdk-js/test/fixtures/kitchen-sink.js",
        "kitchen_sink_js.wasm",
    ),
];

fn scripted(root: &Path, out: &Path) -> anyhow::Result<String> {
    let mut code = String::new();
    for (constant, sdk, source, file) in SCRIPTED {
        for path in [sdk, source] {
            println!("cargo:rerun-if-changed={}", root.join(path).display());
        }
        let wasm = out.join(file);
        let status = Command::new(root.join(sdk).join("build-plugin"))
            .arg(root.join(source))
            .arg(&wasm)
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .with_context(|| format!("cannot run {sdk}/build-plugin"))?;
        if !status.success() {
            bail!("building {source} with {sdk}/build-plugin failed");
        }
        code.push_str(&format!(
            "/// `{source}`, built with `{sdk}/build-plugin`.\npub const {constant}: &str = {:?};\n",
            wasm.display().to_string()
        ));
    }
    Ok(code)
}

fn crate_name(dir: &Path) -> anyhow::Result<String> {
    let manifest: toml::Table = std::fs::read_to_string(dir.join("Cargo.toml"))?.parse()?;
    manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no package name", dir.display()))
}

/// Fails with one clear line when the wasm target is not installed.
fn check_target() -> anyhow::Result<()> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc).args(["--print", "sysroot"]).output()?;
    let sysroot = String::from_utf8(output.stdout)?;
    let lib = Path::new(sysroot.trim()).join("lib/rustlib").join(TARGET);
    if !lib.exists() {
        bail!("the {TARGET} target is not installed: run `rustup target add {TARGET}`");
    }
    Ok(())
}
