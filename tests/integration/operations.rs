//! Operating a host: admin authentication, Prometheus metrics, graceful
//! shutdown of the real binary on SIGTERM, and the live dashboard in a real
//! headless Chromium.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton::admin::{EventKind, SeriesView};
use baton_test_plugins::{COUNTER_V1, COUNTER_V2, ECHO};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::browser::Browser;
use crate::hot_swap::stream_until;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_requires_its_token_when_one_is_set() {
    let host = TestHost::start_with(&[("echo", ECHO)], |c| c.admin_token = Some("s3cret".into())).await;
    for path in ["/api/plugins", "/api/status", "/metrics"] {
        let response = host.admin("GET", path, None).await;
        assert_eq!(response.status, 401, "{path}");
        assert!(response.json()["error"].is_string());
        assert_eq!(host.admin("GET", path, Some("wrong")).await.status, 401, "{path}");
        assert_eq!(host.admin("GET", path, Some("s3cret")).await.status, 200, "{path}");
    }
    let with = async |path: &str, authorization: &str| {
        let headers = [("authorization", authorization)];
        request_with(host.admin, "GET", path, b"", &headers)
            .await
            .expect("request")
            .status
    };
    assert_eq!(
        with("/api/status", "bearer s3cret").await,
        200,
        "the scheme in any case"
    );
    assert_eq!(with("/api/status", "Basic s3cret").await, 401);
    assert_eq!(
        host.admin("GET", "/api/status?token=s3cret", None).await.status,
        401,
        "never from the query string"
    );
    // The page holds no data; its script sends the token.
    assert_eq!(host.admin("GET", "/", None).await.status, 200);
    assert_eq!(host.admin("POST", "/api/plugins/echo/rollback", None).await.status, 401);
    // The client listener never asks for it.
    assert_eq!(host.http("GET", "/t/acme/echo", b"").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_other_hosts_and_cross_site_changes() {
    let host = TestHost::start(&[("echo", ECHO)]).await;
    let port = host.admin.port();
    let ask = async |method: &str, headers: &[(&str, &str)]| {
        let path = if method == "GET" {
            "/api/status"
        } else {
            "/api/plugins/echo/rollback"
        };
        request_with(host.admin, method, path, b"", headers)
            .await
            .expect("request")
            .status
    };
    // DNS rebinding: a page of another site whose name now points here.
    let evil = format!("evil.example:{port}");
    assert_eq!(ask("GET", &[("host", &evil)]).await, 421);
    let localhost = format!("localhost:{port}");
    assert_eq!(ask("GET", &[("host", &localhost)]).await, 200);
    // CSRF: a "simple" cross-site POST from a browser.
    let cross_site = [
        ("origin", "https://evil.example"),
        ("content-type", "text/plain"),
        ("sec-fetch-site", "cross-site"),
    ];
    assert_eq!(ask("POST", &cross_site).await, 403);
    assert_eq!(ask("POST", &[("origin", "https://evil.example")]).await, 403);
    // The CLI sends no Origin: it gets the rollback's own answer (nothing to
    // roll back to).
    assert_eq!(ask("POST", &[]).await, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exposed_and_move_with_traffic() {
    let host = TestHost::start(&[("metrics-echo", ECHO)]).await;
    let scrape = async || host.admin("GET", "/metrics", None).await.text();
    let frames_in = "baton_frames_in_total{plugin=\"metrics-echo\"}";
    let before = sample(&scrape().await, frames_in).unwrap_or(0.0);
    let mut client = host.connect("acme", "metrics-echo").await;
    for i in 0..10 {
        client.ask(&i.to_string()).await;
    }
    // A reply can reach the client a moment before its frame is counted on
    // the plugin's thread: wait for the counters rather than race them.
    let frames_out = "baton_frames_out_total{plugin=\"metrics-echo\"}";
    let metrics = wait_for("the frame counters move", async || {
        let metrics = scrape().await;
        sample(&metrics, frames_out)
            .is_some_and(|v| v >= 10.0)
            .then_some(metrics)
    })
    .await;
    assert_eq!(sample(&metrics, frames_in), Some(before + 10.0), "frames in moved");
    assert_eq!(
        sample(&metrics, "baton_sessions{plugin=\"metrics-echo\",tenant=\"acme\"}"),
        Some(1.0)
    );
    assert!(
        metrics.contains("baton_call_seconds_bucket{plugin=\"metrics-echo\""),
        "call latency histogram"
    );
    assert!(metrics.contains("baton_compile_seconds"), "compile time");
    assert!(
        metrics.contains("baton_activations_total{plugin=\"metrics-echo\",activation=\"deploy\"}"),
        "swaps"
    );
    assert!(metrics.contains("baton_live_versions{plugin=\"metrics-echo\"}"));
    assert!(metrics.contains("baton_mailbox_depth{plugin=\"metrics-echo\",tenant=\"acme\"}"));
    let _ = host.connect_path("/t/acme/nope").await;
    assert!(sample(&scrape().await, "baton_rejected_total{status=\"404\"}").is_some_and(|v| v >= 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_session_with_1001_and_exits_in_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deploy = dir.path().join("deploy");
    std::fs::create_dir_all(&deploy).expect("deploy dir");
    std::fs::copy(ECHO, deploy.join("echo.wasm")).expect("copy");
    let config = dir.path().join("baton.toml");
    std::fs::write(&config, "[shutdown]\ndeadline_secs = 10\nclose_per_second = 100\n").expect("config");
    // Relative folders, as `baton serve` run from a project directory has them.
    let mut host = HostProcess::start(dir.path());
    let clients = host.clients.clone();
    // Plugins load in the background: the first version, then a file dropped
    // into the (relative) deploy folder is picked up.
    host.wait_version("echo", |g| g == 1).await;
    let tmp = deploy.join(".echo.wasm.tmp");
    std::fs::write(&tmp, byte_different(&plugin_bytes(ECHO), 1)).expect("write");
    std::fs::rename(&tmp, deploy.join("echo.wasm")).expect("rename");
    host.wait_version("echo", |g| g == 2).await;

    let mut sessions = Vec::new();
    for i in 0..20 {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{clients}/t/t{}/echo", i % 3))
            .await
            .expect("connect");
        ws.send(Message::text("hi")).await.expect("send");
        assert_eq!(ws.next().await.expect("echo").expect("echo"), Message::text("hi"));
        sessions.push(ws);
    }
    let signalled = Instant::now();
    let pid = host.child.as_ref().expect("running").id();
    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    for mut ws in sessions {
        let close = tokio::time::timeout(DEADLINE, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    other => panic!("expected a close frame, got {other:?}"),
                }
            }
        })
        .await
        .expect("closed in time");
        assert_eq!(close, Some(1001));
    }
    let mut process = host.child.take().expect("running");
    let status = tokio::task::spawn_blocking(move || process.wait())
        .await
        .expect("wait")
        .expect("exit status");
    assert!(status.success(), "exit code 0: {status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "exits within its deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_plugins_and_updates_live_after_a_swap() {
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let mut client = host.connect("acme", "counter").await;
    client.ask("hello").await;
    let browser = Browser::launch();
    let mut tab = browser.open(&format!("http://{}/", host.admin)).await;

    let row = tab.wait_text("tr[data-plugin=counter]", "gen 1").await;
    assert!(row.contains("counter"), "{row}");
    tab.wait_text("#tenants", "acme").await;
    tab.wait_text("#events", "swap").await;
    let loaded_at = tab.eval("performance.timeOrigin").await;

    // A swap shows up without reloading the page.
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    host.wait_generation_above("counter", 1).await;
    tab.wait_text("tr[data-plugin=counter]", "gen 2").await;
    assert_eq!(
        tab.eval("performance.timeOrigin").await,
        loaded_at,
        "the same page, not reloaded"
    );
    let timeline = tab.wait_text("#events", "generation 2").await;
    assert!(timeline.matches("swap").count() >= 2, "{timeline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_charts_each_version_with_the_rollout_marked_and_shows_the_audit_log() {
    // Three streaming tenants, one of them in a canary.
    let host = TestHost::start(&[("counter", COUNTER_V1)]).await;
    let v1 = host.wait_current("counter").await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut running = Vec::new();
    for tenant in ["steady", "also", "early"] {
        let client = host.connect(tenant, "counter").await;
        running.push(tokio::spawn(stream_until(client, stop.clone(), 4)));
    }
    // A canary of v2 for one of the two tenants.
    host.write_settings("counter", "[rollout]\ntenants = [\"early\"]\n");
    host.drop_file("counter", &plugin_bytes(COUNTER_V2));
    wait_for("the canary runs", async || host.plugin("counter").await.rollout).await;

    let browser = Browser::launch();
    let mut tab = browser.open(&format!("http://{}/", host.admin)).await;
    let row = tab.wait_text("tr[data-plugin=counter]", "for tenants early").await;
    assert!(row.contains(&format!("gen {v1}")), "{row}");
    tab.wait_text("tr[data-tenant='counter/early']", "canary").await;
    tab.wait_text("#audit", "canary").await;
    // Two lines with points to draw, and the canary marked on the time axis.
    let drawn = "[...document.querySelectorAll('#chart-frames polyline')]\
        .filter((l) => l.getAttribute('points').split(' ').length >= 3).length";
    wait_for("both versions are charted", async || {
        (tab.eval(drawn).await.as_u64() >= Some(2)).then_some(())
    })
    .await;
    // The figures behind them: two sessions on v1, one on the canary, both
    // busy.
    let series: SeriesView = host.admin_view("/api/series").await;
    for (generation, sessions) in [(v1, 2), (v1 + 1, 1)] {
        let line = series
            .lines
            .iter()
            .find(|l| l.generation == generation)
            .expect("a line per version");
        let last = line.points.last().expect("points");
        assert_eq!(last.sessions, sessions, "{line:?}");
        assert!(
            last.frames_in_per_s > 0.0 && last.calls_per_s > 0.0 && last.p99_us > 0,
            "{line:?}"
        );
    }
    assert!(
        series.marks.iter().any(|m| m.kind == EventKind::Canary),
        "{:?}",
        series.marks
    );
    let marks = tab
        .eval("document.querySelectorAll('#chart-frames line.mark').length")
        .await;
    assert!(marks.as_u64() >= Some(1), "the canary is marked: {marks}");

    // What the browser really drew: each version's colour is on the chart
    // (of sessions: v1 has two, the canary one, so the lines do not cover
    // each other).
    let png = tab.screenshot("#chart-sessions").await;
    let found = tab
        .eval(&format!(
            "(async () => {{
                const image = new Image();
                image.src = 'data:image/png;base64,{png}';
                await image.decode();
                const canvas = document.createElement('canvas');
                [canvas.width, canvas.height] = [image.width, image.height];
                const context = canvas.getContext('2d');
                context.drawImage(image, 0, 0);
                const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
                const near = (hex, i) => [1, 3, 5].every((at, k) =>
                    Math.abs(parseInt(hex.slice(at, at + 2), 16) - pixels[i + k]) < 24);
                // Per line: the pixels of its colour, and how long it is.
                const found = {{}};
                for (const [line, hex] of colours) {{
                    let count = 0;
                    for (let i = 0; i < pixels.length; i += 4) if (near(hex, i)) count++;
                    const drawn = document.querySelector(`#chart-sessions polyline[data-line='${{line}}']`);
                    const xy = drawn.getAttribute('points').split(' ').map((p) => p.split(',').map(Number));
                    let length = 0;
                    for (let k = 1; k < xy.length; k++) length += Math.hypot(xy[k][0] - xy[k - 1][0], xy[k][1] - xy[k - 1][1]);
                    found[line] = [count, Math.round(length)];
                }}
                return found;
            }})()"
        ))
        .await;
    let lines = found.as_object().expect("pixels and length per line");
    assert!(lines.len() >= 2, "{found}");
    for (line, figures) in lines {
        let (pixels, length) = (figures[0].as_u64().unwrap_or(0), figures[1].as_u64().unwrap_or(0));
        // A line 2.5 px wide covers at least its length in pixels of its
        // own colour (its anti-aliased edges aside).
        assert!(length >= 10 && pixels >= length, "{line} is drawn: {found}");
    }

    stop.store(true, Ordering::Relaxed);
    for stream in running {
        let (answered, _) = stream.await.expect("stream");
        assert!(answered > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_sends_its_token_from_the_url_fragment() {
    let host = TestHost::start_with(&[("counter", COUNTER_V1)], |c| c.admin_token = Some("s3cret".into())).await;
    let browser = Browser::launch();
    let mut tab = browser.open(&format!("http://{}/#token=s3cret", host.admin)).await;
    let row = tab.wait_text("tr[data-plugin=counter]", "gen 1").await;
    assert!(row.contains("counter"), "{row}");
    assert_eq!(
        tab.eval("location.hash").await,
        serde_json::json!(""),
        "the token leaves the address bar"
    );
}
