//! Webhooks through a real host, the `jobs-probe` plugin and a receiver
//! written here in Python: the receiver checks every signature with
//! Python's own `hmac` (never the host's code), a 500 is retried and a 2xx
//! ends the message, the plugin hears the outcome, and a slow endpoint never
//! delays the tenant's frames.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_test_plugins::JOBS_PROBE;
use serde_json::{Value, json};

use crate::support::*;

const PROBE: &str = "/t/acme/jobs-probe";

/// The receiver: verifies each request's Standard Webhooks signature with
/// the secret in argv[1], prints one JSON line per request, and answers
/// `/flaky` with 500 the first time it sees a message id and 200 after, and
/// `/slow` with 200 after 3 s.
const RECEIVER: &str = r#"
import base64, hashlib, hmac, json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

key = base64.b64decode(sys.argv[1].removeprefix("whsec_"))
seen = set()
lock = threading.Lock()

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        msg_id = self.headers["webhook-id"]
        ts = self.headers["webhook-timestamp"]
        signed = f"{msg_id}.{ts}.".encode() + body
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        given = self.headers["webhook-signature"].split(" ")
        verified = any(hmac.compare_digest(expected, s) for s in given)
        fresh = abs(time.time() - int(ts)) < 300
        with lock:
            first = msg_id not in seen
            seen.add(msg_id)
        if self.path == "/slow":
            time.sleep(3)
        status = 500 if self.path == "/flaky" and first else 200
        print(json.dumps({"path": self.path, "id": msg_id, "verified": verified, "fresh": fresh,
                          "status": status, "body": json.loads(body), "at": time.time()}), flush=True)
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
"#;

/// The receiver process and what it printed.
struct Receiver {
    child: Child,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(secret: &str) -> Receiver {
        let mut child = Command::new("python3")
            .args(["-c", RECEIVER, secret])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("the receiver's port");
        let port = serde_json::from_str::<Value>(&first).expect("JSON")["port"]
            .as_u64()
            .expect("a port") as u16;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str(&line) {
                    sink.lock().expect("lines").push(value);
                }
            }
        });
        Receiver { child, port, lines }
    }

    fn requests(&self, id: &str) -> Vec<Value> {
        let lines = self.lines.lock().expect("lines");
        lines.iter().filter(|l| l["id"] == id).cloned().collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn probe(host: &TestHost, route: &str, body: Value) -> Value {
    let response = host
        .http("POST", &format!("{PROBE}{route}"), body.to_string().as_bytes())
        .await;
    assert_eq!(response.status, 200, "POST {route}: {}", response.text());
    response.json()
}

/// Sets `name` to `url` for tenant acme; the secret the host made.
async fn endpoint(host: &TestHost, name: &str, url: &str, secret: Option<&str>) -> Value {
    let body = json!({ "url": url, "secret": secret });
    let response = host
        .admin_body(
            "PUT",
            &format!("/api/tenants/acme/webhooks/{name}"),
            body.to_string().as_bytes(),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn quick_retries(config: &mut baton::config::Config) {
    config.webhooks.allow = vec!["http://127.0.0.1:*".into()];
    config.webhooks.retry_secs = vec![1, 1, 1];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_is_retried_after_a_500_and_ends_at_a_2xx() {
    let host = TestHost::start_with(&[("jobs-probe", JOBS_PROBE)], quick_retries).await;
    // The host makes the secret and shows it once.
    let made = endpoint(&host, "placeholder", "http://127.0.0.1:9/", None).await;
    let secret = made["secret"].as_str().expect("a new secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let listed = host.admin_json("/api/tenants/acme/webhooks").await;
    assert!(
        !listed.to_string().contains(&secret),
        "a secret is never listed: {listed}"
    );

    let receiver = Receiver::start(&secret);
    let url = format!("http://127.0.0.1:{}/flaky", receiver.port);
    endpoint(&host, "billing", &url, Some(&secret)).await;

    let payload = json!({"plan": "pro", "frames": 42});
    let send = json!({"endpoint": "billing", "event": "usage.reported", "payload": payload, "key": "2026-12-07"});
    let id = probe(&host, "/webhook", send.clone()).await["id"]
        .as_str()
        .expect("a message id")
        .to_owned();
    assert_eq!(
        probe(&host, "/webhook", send).await["id"],
        id.as_str(),
        "the idempotency key"
    );
    let unknown = probe(
        &host,
        "/webhook",
        json!({"endpoint": "nope", "event": "x", "payload": {}}),
    )
    .await;
    assert_eq!(unknown["err"], "Error::UnknownEndpoint", "{unknown}");

    let requests = wait_for("a 500, then a 200", async || {
        let r = receiver.requests(&id);
        (r.len() >= 2).then_some(r)
    })
    .await;
    assert_eq!(
        requests.iter().map(|r| r["status"].clone()).collect::<Vec<_>>(),
        [500, 200]
    );
    for r in &requests {
        assert_eq!(
            (r["verified"].as_bool(), r["fresh"].as_bool()),
            (Some(true), Some(true)),
            "{r}"
        );
        assert_eq!(r["body"]["type"], "usage.reported");
        assert_eq!(r["body"]["data"], payload);
        assert!(r["body"]["timestamp"].is_string(), "{r}");
    }
    // The plugin hears how it ended, and nothing more is sent.
    let line = format!("webhook {id} usage.reported delivered=true attempts=2 status=Some(200)");
    wait_for("the plugin heard the outcome", async || {
        let log = host.http("GET", &format!("{PROBE}/log"), b"").await.json();
        log["log"]
            .as_array()
            .and_then(|l| l.iter().any(|x| x == &json!(line)).then_some(()))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.requests(&id).len(), 2, "a 2xx ends the message");
    let log = host.admin_json("/api/tenants/acme/deliveries").await;
    let attempts: Vec<_> = log["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["message_id"] == id.as_str())
        .map(|d| (d["attempt"].clone(), d["status"].clone(), d["delivered"].clone()))
        .collect();
    assert_eq!(
        attempts,
        [
            (json!(2), json!(200), json!(true)),
            (json!(1), json!(500), json!(false))
        ]
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_never_delays_the_tenants_frames() {
    let host = TestHost::start_with(&[("jobs-probe", JOBS_PROBE)], quick_retries).await;
    let secret = baton_secret();
    let receiver = Receiver::start(&secret);
    endpoint(
        &host,
        "slow",
        &format!("http://127.0.0.1:{}/slow", receiver.port),
        Some(&secret),
    )
    .await;
    let mut client = host.connect("acme", "jobs-probe").await;
    assert_eq!(client.ask("warm").await, "warm");

    let sent = Instant::now();
    let send = json!({"endpoint": "slow", "event": "slow.test", "payload": {}});
    let id = probe(&host, "/webhook", send).await["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    // While the endpoint sits on the delivery for 3 s, frames go on.
    let mut echoes = 0;
    while sent.elapsed() < Duration::from_millis(2500) {
        let text = format!("frame {echoes}");
        assert_eq!(client.ask(&text).await, text);
        echoes += 1;
    }
    let echoed_until = sent.elapsed();
    let delivered = wait_for("the slow delivery", async || receiver.requests(&id).pop()).await;
    let answered_after = Duration::from_secs_f64(delivered["at"].as_f64().expect("at") - unix_secs(sent));
    assert!(echoes >= 10, "frames were answered during the delivery: {echoes}");
    assert!(
        answered_after > echoed_until,
        "the endpoint answered ({answered_after:?}) after the last echo ({echoed_until:?})"
    );
    client.close().await;
    host.stop().await;
}

/// A secret made the way operators' tools make one.
fn baton_secret() -> String {
    use base64::Engine;
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(b"0123456789abcdef0123456789abcdef")
    )
}

/// The Unix time of `at`, in seconds.
fn unix_secs(at: Instant) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    (now - at.elapsed()).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_reports_a_tenants_usage_as_a_signed_webhook() {
    let host = TestHost::start_with(&[("metering", baton_test_plugins::METERING)], quick_retries).await;
    let secret = baton_secret();
    let receiver = Receiver::start(&secret);
    endpoint(
        &host,
        "billing",
        &format!("http://127.0.0.1:{}/billing", receiver.port),
        Some(&secret),
    )
    .await;
    let mut client = host.connect_path("/t/acme/metering?user=ada").await.expect("connects");
    for text in ["one", "two", "three"] {
        assert_eq!(client.ask(text).await, text);
    }
    // The daily job is scheduled; billing now runs the same job.
    let jobs = host.admin_json("/api/tenants/acme/jobs").await;
    assert_eq!(jobs["schedules"][0]["name"], "daily-bill", "{jobs}");
    assert_eq!(jobs["schedules"][0]["cron"], "5 0 * * *");
    let billed = host.http("POST", "/t/acme/metering/bill", b"").await;
    assert_eq!(billed.status, 202, "{}", billed.text());
    let report = wait_for("a usage report", async || {
        let lines = receiver.lines.lock().expect("lines").clone();
        lines.into_iter().find(|l| l["body"]["type"] == "usage.reported")
    })
    .await;
    assert_eq!(report["verified"], true, "{report}");
    let data = &report["body"]["data"];
    assert_eq!(data["tenant"], "acme");
    assert_eq!(
        (
            data["usage"]["frames"].as_u64(),
            data["users"]["ada"]["frames"].as_u64()
        ),
        (Some(3), Some(3)),
        "{data}"
    );
    // The plugin heard it was delivered.
    wait_for("the delivery's outcome", async || {
        let last = host.http("GET", "/t/acme/metering/report", b"").await.json();
        (last["delivered"] == true).then_some(())
    })
    .await;
    client.close().await;
    host.stop().await;
}
