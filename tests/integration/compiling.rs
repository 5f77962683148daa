//! Compile budget: a file whose compile needs too much memory or time is
//! refused with the limit it broke, in a compiler process that is gone
//! afterwards, and the host goes on serving and deploying.

use std::path::Path;

use baton_test_plugins::{COUNTER_V1, COUNTER_V2};

use crate::support::*;

fn leb(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(id);
    leb(body.len(), out);
    out.extend_from_slice(body);
}

/// A component holding only `module` (a core module's sections): valid, and
/// compiled whole before anything checks it against the world.
fn component_of(module_sections: &[u8]) -> Vec<u8> {
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    module.extend_from_slice(module_sections);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}

/// One function of `depth` nested blocks: Cranelift takes seconds on it.
fn nested_blocks(depth: usize) -> Vec<u8> {
    let mut body = vec![0u8];
    for _ in 0..depth {
        body.extend_from_slice(&[0x02, 0x40]);
    }
    body.extend(std::iter::repeat_n(0x0b, depth + 1));
    let mut code = Vec::new();
    leb(1, &mut code);
    leb(body.len(), &mut code);
    code.extend_from_slice(&body);
    let mut sections = Vec::new();
    section(1, &[0x01, 0x60, 0x00, 0x00], &mut sections);
    section(3, &[0x01, 0x00], &mut sections);
    section(10, &code, &mut sections);
    component_of(&sections)
}

/// A memory with one data segment of `mib` MiB: the compiler holds several
/// copies of it at once.
fn large_data(mib: usize) -> Vec<u8> {
    let size = mib << 20;
    let mut memory = vec![0x01, 0x00];
    leb((size >> 16) + 1, &mut memory);
    let mut data = vec![0x01, 0x00, 0x41, 0x00, 0x0b];
    leb(size, &mut data);
    data.resize(data.len() + size, 0x5a);
    let mut sections = Vec::new();
    section(5, &memory, &mut sections);
    section(11, &data, &mut sections);
    component_of(&sections)
}

/// Compiler processes still running for the host whose data folder is `data`.
fn compilers_of(data: &Path) -> usize {
    let needle = data.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains("compile-worker") && cmdline.contains(&needle))
        .count()
}

/// Files a compiler left half-written in the artifact cache.
fn leftovers(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("cache"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".compiling"))
                .collect()
        })
        .unwrap_or_default()
}

/// After a refused compile: the old version serves, nothing of the compile
/// is left, and the next good file deploys.
async fn still_deploys(host: &TestHost, generation: u64) {
    let view = host.plugin("counter").await;
    assert_eq!(
        view.current.as_ref().map(|c| c.generation),
        Some(generation),
        "the current version serves"
    );
    let mut client = host.connect("acme", "counter").await;
    assert!(!client.ask("hello").await.is_empty(), "and answers");
    let data = &host.config.data_dir;
    eventually("the compiler process is gone", async || compilers_of(data) == 0).await;
    assert_eq!(leftovers(data), Vec::<String>::new(), "no half-written artifact");
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    host.wait_generation_above("counter", generation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_over_its_memory_budget_is_refused_and_costs_the_host_nothing() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| {
        c.runtime.compile_memory_mib = 256;
        c.swap.max_file_mib = 128;
    })
    .await;
    let generation = host.wait_current("counter").await;
    // 96 MiB of data: the compiler's copies of it are more than 256 MiB.
    host.drop_file("counter", &large_data(96));
    let error = wait_for("the file is refused", async || host.plugin("counter").await.last_error).await;
    assert!(
        error.error.contains("runtime.compile_memory_mib (256 MiB)"),
        "{error:?}"
    );
    still_deploys(&host, generation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compile_over_its_time_budget_is_killed_and_refused() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| c.runtime.compile_timeout_secs = 1).await;
    let generation = host.wait_current("counter").await;
    // ~14 s of Cranelift alone on these machines.
    host.drop_file("counter", &nested_blocks(100_000));
    let error = wait_for("the file is refused", async || host.plugin("counter").await.last_error).await;
    assert!(error.error.contains("runtime.compile_timeout_secs (1 s)"), "{error:?}");
    still_deploys(&host, generation).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_component_is_refused_with_the_compilers_reason() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let generation = host.wait_current("counter").await;
    // A core module is wasm but not a component.
    host.drop_file("counter", b"\0asm\x01\0\0\0");
    let error = wait_for("the file is refused", async || host.plugin("counter").await.last_error).await;
    assert!(error.error.contains("not a valid WebAssembly component"), "{error:?}");
    still_deploys(&host, generation).await;
}
