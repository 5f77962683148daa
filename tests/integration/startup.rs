//! Start-up: every plugin of the deploy folder is loaded, in the background
//! while the host already answers, and a file written meanwhile is not
//! missed; a file that is not a valid plugin is reported (which file, why)
//! and skipped while the others serve.

use baton::admin::PluginView;
use baton_test_plugins::{CHAT, COUNTER_V1, ECHO, METERING, WASI_HTTP_HELLO, WRONG_WORLD};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_are_reported_and_skipped() {
    let echo = plugin_bytes(ECHO);
    let dirs = tempfile::tempdir().expect("temp dir");
    let deploy = dirs.path().join("deploy");
    std::fs::create_dir_all(&deploy).expect("deploy dir");
    std::fs::write(deploy.join("garbage.wasm"), b"this is not wasm").expect("write");
    std::fs::write(deploy.join("truncated.wasm"), &echo[..echo.len() / 2]).expect("write");
    std::fs::copy(WRONG_WORLD, deploy.join("command.wasm")).expect("copy");
    std::fs::copy(WASI_HTTP_HELLO, deploy.join("proxy.wasm")).expect("copy");
    std::fs::copy(ECHO, deploy.join("echo.wasm")).expect("copy");

    let host = TestHost::start_with(&[], |c| {
        c.deploy_dir = deploy.clone();
        c.data_dir = dirs.path().join("data");
    })
    .await;
    host.wait_current("echo").await;

    for (name, why) in [
        ("garbage", "not a valid WebAssembly component"),
        ("truncated", "not a valid WebAssembly component"),
        ("command", "does not match the baton:plugin world"),
        ("proxy", "does not match the baton:plugin world"),
    ] {
        // Plugins load in the background: one may not be known yet.
        let plugin = wait_for(&format!("{name} is reported"), async || {
            let response = host.admin("GET", &format!("/api/plugins/{name}"), None).await;
            let plugin = (response.status == 200).then(|| response.view::<PluginView>())?;
            plugin.last_error.is_some().then_some(plugin)
        })
        .await;
        assert!(plugin.current.is_none(), "{name} must not be current");
        let error = plugin
            .last_error
            .as_ref()
            .map(|e| e.error.as_str())
            .expect("error text");
        assert!(error.contains(why), "{name}: {error}");
        if name == "proxy" {
            assert!(
                error.contains("it imports wasi:http/") && error.contains("which baton does not provide"),
                "the refusal names the interface: {error}"
            );
        }
        assert!(
            plugin
                .last_error
                .as_ref()
                .map(|e| e.what.as_str())
                .expect("file")
                .ends_with(&format!("{name}.wasm"))
        );
        let (status, _) = host
            .connect_path(&format!("/t/acme/{name}"))
            .await
            .err()
            .expect("no such plugin");
        assert_eq!(status, 404);
    }
    let mut client = host.connect("acme", "echo").await;
    assert_eq!(client.ask("hello").await, "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_written_while_the_folder_is_scanned_is_deployed() {
    let dirs = tempfile::tempdir().expect("temp dir");
    let deploy = dirs.path().join("deploy");
    std::fs::create_dir_all(&deploy).expect("deploy dir");
    // Several plugins to compile keep the first scan busy for a while.
    let first = [
        ("echo", ECHO),
        ("chat", CHAT),
        ("metering", METERING),
        ("counter", COUNTER_V1),
    ];
    for (name, file) in first {
        std::fs::copy(file, deploy.join(format!("{name}.wasm"))).expect("copy");
    }
    let data = dirs.path().join("data");
    let host = TestHost::start_with(&[], |c| {
        c.deploy_dir = deploy.clone();
        c.data_dir = data.clone();
    })
    .await;
    // Once a first plugin has compiled, the folder was listed and the scan
    // goes on: a file written now must be seen.
    eventually("a first plugin has compiled", async || {
        std::fs::read_dir(data.join("cache")).is_ok_and(|mut entries| entries.next().is_some())
    })
    .await;
    host.drop_file("late", &plugin_bytes(ECHO));
    host.wait_current("late").await;
    for (name, _) in first {
        host.wait_current(name).await;
    }
}
