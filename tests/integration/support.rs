//! What every integration test uses: a real host on ephemeral loopback ports
//! with its own temporary deploy and data folders, real WebSocket and HTTP
//! clients, and waiting on conditions with a deadline (never a bare sleep).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use baton::admin::PluginView;
pub use baton::config::Config;

/// How long any single expectation may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// How long a deploy may take: a Python or JavaScript component (12-18 MB)
/// compiles for 10-30 s on two busy cores.
pub const COMPILE_DEADLINE: Duration = Duration::from_secs(240);

/// A host running in this process.
pub struct TestHost {
    pub clients: SocketAddr,
    pub admin: SocketAddr,
    pub config: Config,
    dirs: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

/// The configuration tests start from: small pools, quick settling.
pub fn test_config(root: &Path) -> Config {
    let mut config = Config {
        deploy_dir: root.join("deploy"),
        data_dir: root.join("data"),
        ..Config::default()
    };
    config.runtime.max_instances = 64;
    config.runtime.max_memory_mib = 256;
    config.swap.settle_ms = 50;
    config.limits.max_frame_bytes = 64 << 10;
    // The host runs inside this test binary, which has no `compile-worker`
    // command: compiles run in the real `baton` binary, as in production.
    config.runtime.compiler = Some(PathBuf::from(env!("CARGO_BIN_EXE_baton")));
    config
}

impl TestHost {
    /// Starts a host with `plugins` (deployed name, built file) in its deploy
    /// folder, waiting until they are current.
    pub async fn start(plugins: &[(&str, &str)]) -> TestHost {
        TestHost::start_with(plugins, |_| {}).await
    }

    /// Like [`TestHost::start`], with changes to the test configuration.
    pub async fn start_with(plugins: &[(&str, &str)], configure: impl FnOnce(&mut Config)) -> TestHost {
        let dirs = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dirs.path());
        configure(&mut config);
        std::fs::create_dir_all(&config.deploy_dir).expect("deploy dir");
        for (name, file) in plugins {
            std::fs::copy(file, config.deploy_dir.join(format!("{name}.wasm"))).expect("copy plugin");
        }
        let host = TestHost::launch(config, dirs).await;
        for (name, _) in plugins {
            host.wait_current(name).await;
        }
        host
    }

    async fn launch(config: Config, dirs: tempfile::TempDir) -> TestHost {
        init_logging();
        let clients = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (clients_addr, admin_addr) = (clients.local_addr().expect("addr"), admin.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = baton::Listeners { clients, admin };
        let run_config = config.clone();
        let task = tokio::spawn(async move {
            baton::run(listeners, run_config, async {
                let _ = stopped.await;
            })
            .await
        });
        TestHost {
            clients: clients_addr,
            admin: admin_addr,
            config,
            dirs,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(DEADLINE, task).await;
            result
                .expect("host stops in time")
                .expect("host task")
                .expect("host runs cleanly");
        }
    }

    /// Stops the host gracefully (as SIGTERM does) and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    /// Stops the host and starts a new one on the same folders.
    pub async fn restart(mut self) -> TestHost {
        self.shutdown().await;
        let config = self.config.clone();
        let dirs = std::mem::replace(&mut self.dirs, tempfile::tempdir().expect("temp dir"));
        TestHost::launch(config, dirs).await
    }

    pub fn deploy_dir(&self) -> PathBuf {
        self.config.deploy_dir.clone()
    }

    /// Writes `bytes` as `<name>.wasm` atomically (temporary file + rename).
    pub fn drop_file(&self, name: &str, bytes: &[u8]) {
        let dir = self.deploy_dir();
        let tmp = dir.join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, bytes).expect("write");
        std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).expect("rename");
    }

    /// Writes `<name>.toml`.
    pub fn write_settings(&self, name: &str, text: &str) {
        std::fs::write(self.deploy_dir().join(format!("{name}.toml")), text).expect("write settings");
    }

    /// Opens a session.
    pub async fn connect(&self, tenant: &str, plugin: &str) -> Client {
        self.connect_path(&format!("/t/{tenant}/{plugin}"))
            .await
            .expect("session opens")
    }

    /// Opens a session on any path (with query), or returns the HTTP
    /// rejection as `(status, body)`.
    pub async fn connect_path(&self, path_and_query: &str) -> std::result::Result<Client, (u16, String)> {
        connect_at(&self.clients.to_string(), path_and_query).await
    }

    /// A plain HTTP request to the client listener.
    pub async fn http(&self, method: &str, path: &str, body: &[u8]) -> Response {
        request(self.clients, method, path, body, None)
            .await
            .expect("HTTP request")
    }

    /// `GET` on the admin API, as JSON.
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        let token = self.config.admin_token.as_deref();
        let response = request(self.admin, "GET", path, b"", token)
            .await
            .expect("admin request");
        assert_eq!(response.status, 200, "GET {path}: {}", response.text());
        response.json()
    }

    /// `GET` on the admin API, read as one of its typed views (e.g.
    /// [`PluginView`]).
    pub async fn admin_view<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        let json = self.admin_json(path).await;
        serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("GET {path}: not a {} ({e}): {json}", std::any::type_name::<T>()))
    }

    /// A request to the admin listener.
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> Response {
        request(self.admin, method, path, b"", token)
            .await
            .expect("admin request")
    }

    /// A request with a body to the admin listener, with the admin token.
    pub async fn admin_body(&self, method: &str, path: &str, body: &[u8]) -> Response {
        request(self.admin, method, path, body, self.config.admin_token.as_deref())
            .await
            .expect("admin request")
    }

    /// The admin view of one plugin.
    pub async fn plugin(&self, name: &str) -> PluginView {
        self.admin_view(&format!("/api/plugins/{name}")).await
    }

    /// Waits until `name` has a current version; returns its generation.
    pub async fn wait_current(&self, name: &str) -> u64 {
        wait_for_within(COMPILE_DEADLINE, &format!("{name} is deployed"), async || {
            assert!(
                !self.task.as_ref().is_some_and(JoinHandle::is_finished),
                "the host exited while starting"
            );
            let token = self.config.admin_token.as_deref();
            let response = request(self.admin, "GET", &format!("/api/plugins/{name}"), b"", token).await;
            match response {
                Ok(r) if r.status == 200 => r.view::<PluginView>().current.map(|c| c.generation),
                _ => None,
            }
        })
        .await
    }

    /// Waits until the current generation of `name` is above `generation`.
    pub async fn wait_generation_above(&self, name: &str, generation: u64) -> PluginView {
        wait_for_within(
            COMPILE_DEADLINE,
            &format!("{name} gets a generation above {generation}"),
            async || {
                let plugin = self.plugin(name).await;
                plugin
                    .current
                    .as_ref()
                    .is_some_and(|c| c.generation > generation)
                    .then_some(plugin)
            },
        )
        .await
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Logs to the test output when `BATON_TEST_LOG` is set (an `EnvFilter`,
/// e.g. `BATON_TEST_LOG=baton=debug`).
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("BATON_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// Waits until `condition` holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    wait_for(what, async || condition().await.then_some(())).await
}

/// Waits until `probe` returns something, failing the test after [`DEADLINE`].
pub async fn wait_for<T>(what: &str, probe: impl AsyncFnMut() -> Option<T>) -> T {
    wait_for_within(DEADLINE, what, probe).await
}

/// Waits until `probe` returns something, failing the test after `limit`.
pub async fn wait_for_within<T>(limit: Duration, what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send text");
    }

    pub async fn send_binary(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::binary(bytes.to_vec()))
            .await
            .expect("send binary");
    }

    /// The next data or close message (pings and pongs skipped).
    pub async fn recv(&mut self) -> Result<Message> {
        self.recv_within(DEADLINE).await
    }

    /// The next data or close message, within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Message> {
        loop {
            let next = tokio::time::timeout(limit, self.ws.next())
                .await
                .map_err(|_| anyhow!("no message within {limit:?}"))?;
            match next {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Ok(message),
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("socket closed without a close frame"),
            }
        }
    }

    /// The next message, which must be text.
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await.expect("a message") {
            Message::Text(text) => text.as_str().to_owned(),
            other => panic!("expected text, got {other:?}"),
        }
    }

    /// The next message, which must be text and JSON.
    pub async fn recv_json(&mut self) -> serde_json::Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Sends `text` and returns the text reply.
    pub async fn ask(&mut self, text: &str) -> String {
        self.send_text(text).await;
        self.recv_text().await
    }

    /// Sends `text` and returns the reply, which must be JSON.
    pub async fn ask_json(&mut self, text: &str) -> serde_json::Value {
        self.send_text(text).await;
        self.recv_json().await
    }

    /// This session's id, as the `chaos` plugin reports it.
    pub async fn session_id(&mut self) -> u64 {
        let reply = self.ask("session").await;
        reply
            .trim_start_matches("session:")
            .parse()
            .unwrap_or_else(|_| panic!("not a session id: {reply}"))
    }

    /// Waits for the server's close frame.
    pub async fn expect_close(&mut self) -> CloseFrame {
        match self.recv().await.expect("a close frame") {
            Message::Close(Some(frame)) => frame,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Closes from the client side and waits for the server's answer.
    pub async fn close(mut self) {
        self.ws.close(None).await.expect("close");
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DEADLINE, self.ws.next()).await {}
    }
}

/// An HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body read as a typed view of the admin API (e.g. [`PluginView`]).
    pub fn view<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not a {} ({e}): {}", std::any::type_name::<T>(), self.text()))
    }
}

/// One HTTP/1.1 request over a fresh connection.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8], token: Option<&str>) -> Result<Response> {
    let authorization = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("authorization", a.as_str())).collect();
    request_with(addr, method, path, body, &headers).await
}

/// One HTTP/1.1 request with these headers (a `host` among them replaces
/// the default one, the address).
pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<Response> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut builder = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        builder = builder.header(http::header::HOST, addr.to_string());
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::copy_from_slice(body)))?;
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .context("no response in time")??;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await?.to_bytes();
    Ok(Response { status, headers, body })
}

/// A host run as a child process (`baton serve` in `dir`, with its relative
/// `baton.toml`, `deploy` and `data`), for tests about processes: signals,
/// `kill -9`. Killed when dropped.
pub struct HostProcess {
    pub clients: String,
    pub admin: SocketAddr,
    pub child: Option<std::process::Child>,
    /// The process serving now: after `baton upgrade`, no longer the child.
    pub pid: u32,
}

impl HostProcess {
    /// Starts the binary and waits until it logs where it listens.
    pub fn start(dir: &Path) -> HostProcess {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-json",
            ])
            .args(["--config", "baton.toml", "--deploy-dir", "deploy", "--data-dir", "data"])
            .current_dir(dir)
            // The tests' own log filter is not a setting of the host.
            .env_remove("BATON_TEST_LOG")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start baton");
        let stdout = child.stdout.take().expect("stdout");
        let (lines_tx, lines) = std::sync::mpsc::channel::<serde_json::Value>();
        std::thread::spawn(move || {
            // With the tests' log filter set, the child's log is shown too.
            let show = std::env::var_os("BATON_TEST_LOG").is_some();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if show {
                    eprintln!("[child] {line}");
                }
                if let Ok(json) = serde_json::from_str(&line) {
                    let _ = lines_tx.send(json);
                }
            }
        });
        let mut process = HostProcess {
            clients: String::new(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid: child.id(),
            child: Some(child),
        };
        loop {
            let line = lines.recv_timeout(DEADLINE).expect("the host logs where it listens");
            let fields = &line["fields"];
            if let (Some(clients), Some(admin)) = (fields["clients"].as_str(), fields["admin"].as_str()) {
                process.clients = clients.to_owned();
                process.admin = admin.parse().expect("admin address");
                return process;
            }
        }
    }

    /// Waits until plugin `name` has a current version whose generation
    /// `wanted` accepts; returns that generation.
    pub async fn wait_version(&self, name: &str, wanted: impl Fn(u64) -> bool) -> u64 {
        wait_for(&format!("{name} has the version wanted"), async || {
            let response = request(self.admin, "GET", &format!("/api/plugins/{name}"), b"", None)
                .await
                .ok()?;
            let current = (response.status == 200).then(|| response.view::<PluginView>().current)??;
            wanted(current.generation).then_some(current.generation)
        })
        .await
    }

    /// Kills the process with SIGKILL: no shutdown runs. A process that
    /// took over from the child (`baton upgrade`) is killed too.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.id() != self.pid {
                kill_pid(self.pid, "KILL");
            }
            let _ = child.kill();
            let _ = child.wait();
        } else {
            kill_pid(self.pid, "KILL");
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends `signal` (`KILL`, `USR2`, ...) to process `pid`, if it still
/// exists; whether it did.
pub fn kill_pid(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether process `pid` exists (and is not a zombie).
pub fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// The value of a Prometheus sample whose line starts with `prefix`.
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A copy of a component that differs in bytes but not in behaviour: a custom
/// section appended (a valid component still, with another hash).
pub fn byte_different(bytes: &[u8], tag: u32) -> Vec<u8> {
    let name = b"baton-test";
    let payload = tag.to_le_bytes();
    let size = 1 + name.len() + payload.len();
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.push(u8::try_from(size).expect("small section"));
    out.push(u8::try_from(name.len()).expect("short name"));
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

/// Reads a built plugin.
pub fn plugin_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Opens a session on the client listener at `clients` (`host:port`), or
/// returns the HTTP rejection as `(status, body)`.
pub async fn connect_at(clients: &str, path_and_query: &str) -> std::result::Result<Client, (u16, String)> {
    let url = format!("ws://{clients}{path_and_query}");
    match tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Ok(Client { ws }),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Ok(Err(e)) => Err((0, e.to_string())),
        Err(_) => Err((0, "timed out".into())),
    }
}
