//! What the host does with the files of its deploy folder: classify the
//! name, read `<name>.toml`, compile `<name>.wasm` as the compiler process
//! does, load the artifact into the host's engine and link it against the
//! world. Any input is accepted or refused with an error, never a panic; an
//! artifact the compiler produced always loads into the host.
//!
//! Input: a name length byte and the name, a settings length (two bytes,
//! little-endian) and the settings text, then the file's bytes.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use baton::config::{Config, PluginSettings, RuntimeConfig};
use baton::fuzz_api::{Engine, Runtime, classify, compile_artifact, compile_engine};
use libfuzzer_sys::fuzz_target;

struct Engines {
    runtime: std::sync::Arc<Runtime>,
    compiler: Engine,
    config: Config,
    dir: tempfile::TempDir,
}

fn engines() -> &'static Engines {
    static ENGINES: OnceLock<Engines> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let runtime = RuntimeConfig {
            max_instances: 4,
            ..RuntimeConfig::default()
        };
        Engines {
            runtime: Runtime::new(&runtime).expect("host engine"),
            compiler: compile_engine(&runtime).expect("compiler engine"),
            config: Config {
                runtime,
                ..Config::default()
            },
            dir: tempfile::tempdir().expect("temp dir"),
        }
    })
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = data.split_at(n.min(data.len()));
    *data = rest;
    head
}

fuzz_target!(|data: &[u8]| {
    let engines = engines();
    let mut data = data;
    let name_len = take(&mut data, 1).first().copied().unwrap_or(0) as usize;
    let name = String::from_utf8_lossy(take(&mut data, name_len)).into_owned();
    let _ = classify(&Path::new("deploy").join(&name));
    let settings_len = match take(&mut data, 2) {
        [lo, hi] => u16::from_le_bytes([*lo, *hi]) as usize,
        _ => 0,
    };
    let settings = String::from_utf8_lossy(take(&mut data, settings_len)).into_owned();
    if let Ok(settings) = PluginSettings::parse(&settings) {
        let _ = engines.config.plugin_limits(&settings);
    }
    let Ok(artifact) = compile_artifact(&engines.compiler, data) else {
        return;
    };
    let path = engines.dir.path().join("artifact.cwasm");
    std::fs::write(&path, &artifact).expect("write the artifact");
    let component = engines
        .runtime
        .deserialize(&path)
        .unwrap_or_else(|e| panic!("an artifact the compiler made does not load: {e}"));
    let _ = engines.runtime.prepare(&component);
});
