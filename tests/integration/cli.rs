//! The `baton` binary: every command, on success and failure paths, through
//! the built executable (exit codes, stdout, stderr).

use std::path::Path;
use std::process::{Command, Output};

use baton_test_plugins::{COUNTER_V1, COUNTER_V2, ECHO};

use crate::support::*;

fn baton(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(args)
        .env_remove("BATON_ADMIN")
        .env_remove("BATON_ADMIN_TOKEN")
        .env_remove("BATON_DEPLOY_DIR")
        .output()
        .expect("run baton")
}

/// Runs `baton` off the async runtime (the command may call back into a host
/// running on it).
pub(crate) async fn baton_async(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || baton(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .expect("baton task")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn every_command_has_help() {
    for command in [
        &[][..],
        &["serve"],
        &["check"],
        &["deploy"],
        &["status"],
        &["rollback"],
        &["promote"],
        &["pin"],
        &["unpin"],
        &["audit"],
        &["new"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let output = baton(&args);
        assert!(output.status.success(), "{args:?}");
        assert!(text(&output.stdout).contains("Usage"), "{args:?}");
    }
    let output = baton(&["frobnicate"]);
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("frobnicate"));
}

#[test]
fn check_says_what_a_plugin_is_or_why_not() {
    let output = baton(&["check", ECHO]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(stdout.contains("a valid baton plugin"), "{stdout}");
    assert!(
        stdout.contains("on-frame") && stdout.contains("baton:plugin/session"),
        "{stdout}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"nope").expect("write");
    let output = baton(&["check", garbage.to_str().expect("path")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("not a valid"), "{}", text(&output.stderr));
    let output = baton(&["check", baton_test_plugins::WRONG_WORLD]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("does not match the baton:plugin world"));
    let output = baton(&["check", "/no/such/file.wasm"]);
    assert_eq!(output.status.code(), Some(1));

    // `baton check FILE | head -0`: the reader is gone before the report.
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["check", ECHO])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    let stderr = text(&output.stderr);
    assert!(
        !stderr.contains("panicked"),
        "a closed stdout ends it quietly: {stderr}"
    );
    assert_eq!(
        output.status.code(),
        Some(141),
        "the shell's code for a closed pipe: {stderr}"
    );
}

#[test]
fn serve_layers_its_configuration_and_rejects_unknown_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("baton.toml");
    std::fs::write(
        &file,
        "listen = '127.0.0.1:9000'\n[limits]\nmemory_mib = 48\ncall_timeout_ms = 700\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "serve",
            "--config",
            file.to_str().expect("path"),
            "--listen",
            "127.0.0.1:9999",
            "--print-config",
        ])
        .env("BATON_LIMITS__MEMORY_MIB", "32")
        .output()
        .expect("run");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed: toml::Table = text(&output.stdout).parse().expect("TOML");
    assert_eq!(printed["listen"].as_str(), Some("127.0.0.1:9999"), "flags win");
    assert_eq!(
        printed["limits"]["memory_mib"].as_integer(),
        Some(32),
        "environment beats the file"
    );
    assert_eq!(
        printed["limits"]["call_timeout_ms"].as_integer(),
        Some(700),
        "the file beats defaults"
    );

    std::fs::write(&file, "[limits]\nmemroy_mib = 1\n").expect("write");
    let output = baton(&["serve", "--config", file.to_str().expect("path"), "--print-config"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("memroy_mib"), "{}", text(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_status_and_rollback_against_a_running_host() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let admin = format!("http://{}", host.admin);
    let deploy_dir = host.deploy_dir();
    let deploy_dir = deploy_dir.to_str().expect("path");
    let deploy = async |file: &str, name: &str| {
        baton_async(&[
            "deploy",
            file,
            "--name",
            name,
            "--deploy-dir",
            deploy_dir,
            "--admin",
            &admin,
        ])
        .await
    };

    let output = deploy(COUNTER_V2, "counter").await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("counter: active"),
        "{}",
        text(&output.stdout)
    );
    let current = host.plugin("counter").await.current.expect("current");
    assert_eq!(current.generation, 2);
    // Compiled once: by the host's check before the file was placed (no
    // local compile), then loaded from its artifact cache.
    assert_eq!(current.origin, baton::admin::Origin::Cache, "{current:?}");
    assert!(
        text(&output.stderr).contains("checked by the host"),
        "{}",
        text(&output.stderr)
    );

    let output = baton_async(&["status", "--admin", &admin]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(
        table.contains("PLUGIN") && table.contains("counter") && table.contains("swap"),
        "{table}"
    );
    // Which baton answers: the host runs in this test process.
    let which = format!("baton {} (pid {})", env!("CARGO_PKG_VERSION"), std::process::id());
    assert!(table.contains(&which), "{table}");
    let output = baton_async(&["status", "--json", "--admin", &admin]).await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["plugins"][0]["name"], "counter");
    assert_eq!(json["host"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(json["host"]["started_ms"].as_u64().is_some_and(|ms| ms > 0), "{json}");
    let metrics = host.admin("GET", "/metrics", None).await.text();
    let started = sample(&metrics, "baton_process_start_time_seconds").expect("the start time gauge");
    assert_eq!(
        (started * 1000.0).round() as u64,
        json["host"]["started_ms"].as_u64().unwrap_or(0)
    );

    let output = baton_async(&["rollback", "counter", "--admin", &admin]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("rolled back"));
    let output = baton_async(&["rollback", "nope", "--admin", &admin]).await;
    assert_eq!(output.status.code(), Some(1));

    // A file the host refuses (its init fails) is reported as such.
    host.write_settings("counter", "[config]\nfail_init = \"broken on purpose\"\n");
    let output = deploy(COUNTER_V2, "counter").await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    assert!(
        text(&output.stderr).contains("broken on purpose"),
        "{}",
        text(&output.stderr)
    );
    // A file that is not a plugin never reaches the folder.
    let output = deploy(baton_test_plugins::WRONG_WORLD, "other").await;
    assert_eq!(output.status.code(), Some(1));
    assert!(!Path::new(deploy_dir).join("other.wasm").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_pin_dry_run_promote_and_audit_through_the_binary() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    host.wait_current("counter").await;
    let admin = format!("http://{}", host.admin);
    let deploy_dir = host.deploy_dir();
    let deploy_dir = deploy_dir.to_str().expect("path");
    let mut clients = Vec::new();
    for tenant in ["early", "held", "late"] {
        let mut client = host.connect(tenant, "counter").await;
        client.ask("hi").await;
        clients.push(client);
    }

    // A file the CLI checks against the live tenants: all take it.
    let output = baton_async(&["check", COUNTER_V2, "--against", "counter", "--admin", &admin]).await;
    let said = text(&output.stdout);
    assert!(output.status.success(), "{said}{}", text(&output.stderr));
    assert!(
        said.contains("3 tenants (nobody switched)") && said.contains("held"),
        "{said}"
    );
    let output = baton_async(&["check", COUNTER_V2, "--against", "nope", "--admin", &admin]).await;
    assert_eq!(output.status.code(), Some(1));

    // Pin one, deploy a canary for another.
    let output = baton_async(&["pin", "counter", "held", "--admin", &admin]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("held pinned to version"),
        "{}",
        text(&output.stdout)
    );
    let output = baton_async(&[
        "deploy",
        COUNTER_V2,
        "--name",
        "counter",
        "--deploy-dir",
        deploy_dir,
        "--canary",
        "tenants=early",
        "--admin",
        &admin,
    ])
    .await;
    let said = text(&output.stdout);
    assert!(output.status.success(), "{said}{}", text(&output.stderr));
    assert!(said.contains("counter: canary"), "{said}");
    let settings = std::fs::read_to_string(host.deploy_dir().join("counter.toml")).expect("settings");
    assert!(settings.contains("tenants = [\"early\"]"), "{settings}");
    let answers: Vec<String> = futures_util::future::join_all(clients.iter_mut().map(|c| c.ask("x"))).await;
    assert!(
        answers[0].contains("\"v\":2") && answers[1].contains("\"v\":1") && answers[2].contains("\"v\":1"),
        "{answers:?}"
    );

    let output = baton_async(&["status", "--admin", &admin]).await;
    let table = text(&output.stdout);
    assert!(
        table.contains("rollout of version") && table.contains("held pinned to version"),
        "{table}"
    );

    // Promote: everyone but the pinned tenant; unpin: it follows.
    let output = baton_async(&["promote", "counter", "--admin", &admin]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("promoted"), "{}", text(&output.stdout));
    let answers: Vec<String> = futures_util::future::join_all(clients.iter_mut().map(|c| c.ask("y"))).await;
    assert!(
        answers[1].contains("\"v\":1") && answers[2].contains("\"v\":2"),
        "{answers:?}"
    );
    let output = baton_async(&["unpin", "counter", "held", "--admin", &admin]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let output = baton_async(&["unpin", "counter", "held", "--admin", &admin]).await;
    assert_eq!(output.status.code(), Some(1), "not pinned any more");
    let output = baton_async(&["promote", "counter", "--admin", &admin]).await;
    assert_eq!(output.status.code(), Some(1), "no rollout to promote");

    // The audit log names the CLI and lists it all, in order.
    let output = baton_async(&["audit", "--admin", &admin]).await;
    let log = text(&output.stdout);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let order = ["deploy", "pin", "canary", "promote", "unpin"];
    let mut at = 0;
    for line in log.lines() {
        if at < order.len() && line.contains(&format!(" {} ", order[at])) {
            at += 1;
        }
    }
    assert_eq!(at, order.len(), "{log}");
    assert!(log.contains("cli"), "{log}");
    let output = baton_async(&["audit", "--json", "--since", "1", "--admin", &admin]).await;
    let entries: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(
        entries.as_array().is_some_and(|e| e.len() >= 4 && e[0]["seq"] == 2),
        "{entries}"
    );
}

#[test]
fn deploy_without_a_host_places_the_file_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deploy_dir = dir.path().join("deploy");
    let output = baton(&[
        "deploy",
        ECHO,
        "--deploy-dir",
        deploy_dir.to_str().expect("path"),
        "--admin",
        "http://127.0.0.1:1",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains("no host confirmed it"),
        "{}",
        text(&output.stdout)
    );
    assert_eq!(
        std::fs::read(deploy_dir.join("echo.wasm")).expect("placed"),
        plugin_bytes(ECHO)
    );
    let output = baton(&["status", "--admin", "http://127.0.0.1:1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("no baton admin API"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn new_scaffolds_a_plugin_that_builds_and_checks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = baton(&["new", "hello-world", "--dir", dir.path().to_str().expect("path")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let root = dir.path().join("hello-world");
    assert!(root.join("README.md").exists() && root.join("src/lib.rs").exists());
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let checkout = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("checkout");
    assert!(
        !manifest.contains(checkout.to_str().expect("path")) && root.join("baton-sdk/src/lib.rs").exists(),
        "the SDK is written into the crate, not taken from this checkout: {manifest}"
    );
    let output = baton(&["new", "hello-world", "--dir", dir.path().to_str().expect("path")]);
    assert_eq!(output.status.code(), Some(1), "refuses to overwrite");
    assert_eq!(baton(&["new", "Bad Name"]).status.code(), Some(1));

    let build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--offline"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("cargo");
    assert!(
        build.status.success(),
        "the scaffold builds as is: {}",
        text(&build.stderr)
    );
    let wasm = root.join("target/wasm32-wasip2/release/hello_world.wasm");
    let output = baton(&["check", wasm.to_str().expect("path")]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn new_scaffolds_python_and_javascript_plugins_that_build_and_check() {
    // The pinned tools the tests' own plugins were built with (tests/artifacts
    // runs each SDK's build-plugin): the same versions the templates pin, so
    // the templates' builds run offline here.
    let _built = (baton_test_plugins::COUNTER_PY, baton_test_plugins::COUNTER_JS);
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lang");
    let dir = tempfile::tempdir().expect("temp dir");
    let at = dir.path().to_str().expect("path");
    for (lang, name, tool_link, build) in [
        ("python", "hello-py", (".venv", "python/venv"), vec!["./build.sh"]),
        (
            "js",
            "hello-js",
            ("node_modules", "js/node_modules"),
            vec!["npm", "run", "build"],
        ),
    ] {
        let output = baton(&["new", name, "--lang", lang, "--dir", at]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let root = dir.path().join(name);
        assert!(
            root.join("wit/plugin.wit").exists(),
            "{lang}: the WIT is written into the project"
        );
        std::os::unix::fs::symlink(tools.join(tool_link.1), root.join(tool_link.0)).expect("link the tools");
        let output = Command::new(build[0])
            .args(&build[1..])
            .current_dir(&root)
            .output()
            .expect("build");
        assert!(
            output.status.success(),
            "the {lang} scaffold builds as is: {}{}",
            text(&output.stdout),
            text(&output.stderr)
        );
        let wasm = root.join(format!("{name}.wasm"));
        let output = baton(&["check", wasm.to_str().expect("path")]);
        assert!(output.status.success(), "{lang}: {}", text(&output.stderr));
        let report = text(&output.stdout);
        assert!(
            report.contains("baton:plugin/tenant") && !report.contains("baton:plugin/sql"),
            "{lang}: built against plugin-no-sql: {report}"
        );
    }
    assert_eq!(
        baton(&["new", "x", "--lang", "python", "--sdk", "/tmp", "--dir", at])
            .status
            .code(),
        Some(1),
        "--sdk is for Rust"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_webhooks_through_the_binary() {
    let host = TestHost::start(&[("jobs-probe", baton_test_plugins::JOBS_PROBE)]).await;
    let admin = format!("http://{}", host.admin);
    let enqueue = |body: serde_json::Value| {
        let host = &host;
        async move {
            let answer = host
                .http("POST", "/t/acme/jobs-probe/enqueue", body.to_string().as_bytes())
                .await
                .json();
            answer["id"].as_u64().unwrap_or_else(|| panic!("an id: {answer}"))
        }
    };
    let dead = enqueue(serde_json::json!({"kind": "flaky", "payload": {"fails": 9}, "attempts": 1})).await;
    let later = enqueue(serde_json::json!({"kind": "monthly", "delay_ms": 3_600_000})).await;
    let listed = wait_for("the dead job is listed", async || {
        let output = baton_async(&["jobs", "acme", "--admin", &admin]).await;
        let said = text(&output.stdout);
        said.contains("dead").then_some(said)
    })
    .await;
    assert!(
        listed.contains("attempt 1 fails on purpose") && listed.contains("monthly"),
        "{listed}"
    );

    let output = baton_async(&["jobs", "acme", "--retry", &dead.to_string(), "--admin", &admin]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("due again"), "{}", text(&output.stdout));
    let output = baton_async(&["jobs", "acme", "--cancel", &later.to_string(), "--admin", &admin]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let output = baton_async(&["jobs", "acme", "--cancel", "424242", "--admin", &admin]).await;
    assert_eq!(output.status.code(), Some(1), "an unknown job");
    assert!(
        text(&output.stderr).contains("no job 424242"),
        "{}",
        text(&output.stderr)
    );
    let json = baton_async(&["jobs", "acme", "--json", "--admin", &admin]).await;
    let view: baton::admin::JobsView = serde_json::from_slice(&json.stdout).expect("the admin API's JSON");
    assert!(view.jobs.iter().all(|j| j.id != later), "cancelled: {:?}", view.jobs);

    let output = baton_async(&[
        "webhooks",
        "set",
        "acme",
        "billing",
        "https://billing.example/hooks",
        "--admin",
        &admin,
    ])
    .await;
    let said = text(&output.stdout);
    assert!(output.status.success(), "{said}{}", text(&output.stderr));
    let secret = said
        .split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .unwrap_or_else(|| panic!("a new secret: {said}"));
    let output = baton_async(&["webhooks", "list", "acme", "--admin", &admin]).await;
    let said = text(&output.stdout);
    assert!(
        said.contains("billing") && said.contains("enabled") && !said.contains(secret),
        "{said}"
    );
    let output = baton_async(&["webhooks", "set", "acme", "bad", "ftp://x", "--admin", &admin]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("http:// or https://"),
        "{}",
        text(&output.stderr)
    );
    let output = baton_async(&["webhooks", "remove", "acme", "billing", "--admin", &admin]).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    host.stop().await;
}
