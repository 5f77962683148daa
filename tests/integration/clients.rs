//! The client libraries of `clients/`, against a real host: the JavaScript
//! one in Node's test runner and in headless Chromium (a page using it while
//! a proxy cuts its connection), the Python one under pytest. Their own
//! tests run a loopback proxy of their own; this file gives them a host.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use baton_test_plugins::{CHAOS, ECHO};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::browser::Browser;
use crate::proxy::Proxy;
use crate::support::*;

/// How long a client library's whole suite may take.
const SUITE: Duration = Duration::from_secs(240);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program` with `args` in `dir` against `host`, within [`SUITE`];
/// panics with its output when it fails.
async fn run_suite(what: &str, program: &Path, args: &[&str], dir: &Path, host: &TestHost, env: &[(&str, String)]) {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .current_dir(dir)
        .env("BATON_TEST_HOST", host.clients.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::time::timeout(SUITE, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {SUITE:?}"))
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed ({}):\n{said}", output.status);
    eprintln!("{what}:\n{said}");
}

async fn client_host() -> TestHost {
    TestHost::start(&[("chaos", CHAOS), ("echo", ECHO)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_client_passes_its_tests_in_node() {
    let node = which("node").expect("Node.js (20 or later) is needed for the JavaScript client's tests");
    let host = client_host().await;
    let dir = repository().join("clients/js");
    let args = ["--experimental-websocket", "--test", "test/"];
    run_suite("the JavaScript client's tests", &node, &args, &dir, &host, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_passes_its_tests() {
    let python = repository().join("target/python-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/test creates it (a venv with clients/python/requirements-dev.txt)",
        python.display()
    );
    let host = client_host().await;
    let dir = repository();
    let package = dir.join("clients/python").display().to_string();
    let args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "clients/python/tests"];
    run_suite(
        "the Python client's tests",
        &python,
        &args,
        &dir,
        &host,
        &[("PYTHONPATH", package)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_client_resumes_in_chromium_across_cuts() {
    let host = client_host().await;
    let proxy = Arc::new(Proxy::start(host.clients.to_string()).await);
    let pages = serve_folder(repository().join("clients/js")).await;
    let browser = Browser::launch();
    let tenant = "browser";
    // Paced (an echo every 5 ms at most), so that the cuts fall mid-stream.
    let url = format!(
        "http://{pages}/test/browser.html?host={}&tenant={tenant}&pace=5",
        proxy.addr
    );
    let mut tab = browser.open(&url).await;

    // Once the page streams, the server's side publishes to its feed and
    // the network fails three times.
    wait_for("the page subscribed", async || {
        let events = host.http("GET", &format!("/t/{tenant}/chaos/events"), b"").await.json();
        if events["frames"].as_u64().is_some_and(|n| n >= 3) {
            return Some(());
        }
        let page = tab.eval("document.title + ': ' + document.body.innerText").await;
        assert!(!page.as_str().is_some_and(|p| p.starts_with("failed")), "{page}");
        None
    })
    .await;
    let publisher = {
        let mut other = host.connect(tenant, "chaos").await;
        tokio::spawn(async move {
            for j in 0..100 {
                assert!(other.ask(&format!("pub:feed:s{j}")).await.starts_with("published:"));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        proxy.cut();
    }
    publisher.await.expect("publisher");

    // Done, and every frame of the feed in (it was published after the page
    // subscribed), through every cut.
    let result = wait_for("the page has every echo and the whole feed", async || {
        let title = tab.eval("document.title").await;
        let text = tab.eval("document.getElementById('result').textContent").await;
        let result: Value = serde_json::from_str(text.as_str().unwrap_or("")).unwrap_or(Value::Null);
        assert_ne!(title, "failed", "the page failed: {result}");
        let whole = result["feed"].as_array().is_some_and(|f| f.len() == 100);
        (title == "done" && whole).then_some(result)
    })
    .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["echoes"], 200, "every echo once, in order: {result}");
    let feed: Vec<u64> = result["feed"]
        .as_array()
        .expect("feed")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(feed, (0..100).collect::<Vec<u64>>(), "the feed once, in order");
    assert!(
        result["resumes"].as_u64().is_some_and(|n| n >= 1),
        "it resumed: {result}"
    );

    // The plugin saw one session of the page throughout: two connects (the
    // page's and the publisher's), and one disconnect, the publisher's.
    let events = async || host.http("GET", &format!("/t/{tenant}/chaos/events"), b"").await.json();
    eventually("the publisher's session ends", async || {
        events().await["disconnects"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    let seen = events().await;
    assert_eq!(seen["connects"].as_array().expect("connects").len(), 2, "{seen}");
    assert_eq!(seen["disconnects"].as_array().expect("disconnects").len(), 1, "{seen}");
}

/// Serves the files under `root` over HTTP on a loopback port (GET only);
/// returns its address.
async fn serve_folder(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let root = root.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("/").trim_start_matches('/');
                let file = root.join(path);
                let (status, kind, body) = match std::fs::read(&file) {
                    Ok(body) if !path.contains("..") => {
                        let kind = match file.extension().and_then(|e| e.to_str()) {
                            Some("html") => "text/html; charset=utf-8",
                            Some("js") => "text/javascript; charset=utf-8",
                            Some("json") => "application/json",
                            _ => "application/octet-stream",
                        };
                        ("200 OK", kind, body)
                    }
                    _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    addr
}

/// The path of `program` on `PATH`.
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}
