//! The servers under test, each in its own process: this binary re-executed
//! in a server role. A server prints `LISTENING <addr>` (and a baton host
//! `ADMIN <addr>`) once it accepts, and is killed when its [`Server`] is
//! dropped. Its resident memory is read from `/proc`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A server process.
pub struct Server {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// A baton host's admin API.
    pub admin: Option<SocketAddr>,
    child: Child,
    dirs: Option<tempfile::TempDir>,
}

impl Server {
    /// A native tokio-tungstenite echo server.
    pub async fn native() -> Result<Server> {
        Server::spawn(&[], &["serve-native"], None, "").await
    }

    /// The native echo server, started through `wrapper` (e.g. valgrind).
    pub async fn native_under(wrapper: &[&str]) -> Result<Server> {
        Server::spawn(wrapper, &["serve-native"], None, "").await
    }

    /// A native server that broadcasts each frame it receives to every other
    /// connection (the baseline of the fan-out figures).
    pub async fn native_broadcast() -> Result<Server> {
        Server::spawn(&[], &["serve-native-broadcast"], None, "").await
    }

    /// A baton host with `plugins` (name, built file) deployed and `config`
    /// (TOML) over the defaults.
    pub async fn baton(plugins: &[(&str, &str)], config: &str) -> Result<Server> {
        Server::baton_under(&[], plugins, config).await
    }

    /// A baton host as [`Server::baton`], started through `wrapper` (e.g. valgrind).
    pub async fn baton_under(wrapper: &[&str], plugins: &[(&str, &str)], config: &str) -> Result<Server> {
        Server::baton_with(wrapper, plugins, "", config).await
    }

    /// A baton host as [`Server::baton_under`], each plugin with `settings`
    /// as its `<name>.toml`.
    pub async fn baton_with(
        wrapper: &[&str],
        plugins: &[(&str, &str)],
        settings: &str,
        config: &str,
    ) -> Result<Server> {
        let dirs = tempfile::tempdir()?;
        let deploy = dirs.path().join("deploy");
        std::fs::create_dir_all(&deploy)?;
        for (name, file) in plugins {
            std::fs::write(deploy.join(format!("{name}.toml")), settings)?;
            std::fs::copy(file, deploy.join(format!("{name}.wasm")))?;
        }
        let data = dirs.path().join("data");
        let args = [
            "serve-baton",
            &deploy.display().to_string(),
            &data.display().to_string(),
        ];
        let server = Server::spawn(wrapper, &args, Some(dirs), config).await?;
        for (name, _) in plugins {
            server.wait_current(name).await?;
        }
        Ok(server)
    }

    /// `wasmtime serve` running a `wasi:http` component, if `wasmtime` is installed.
    pub async fn wasmtime_serve(component: &str) -> Result<Option<Server>> {
        let Some(wasmtime) = which("wasmtime") else {
            return Ok(None);
        };
        let port = free_port()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let child = Command::new(wasmtime)
            .args(["serve", "-S", "cli", "--addr", &addr.to_string(), component])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Some(Server {
                    addr,
                    admin: None,
                    child,
                    dirs: None,
                }));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("wasmtime serve did not start")
    }

    /// The Node.js `ws` echo server of `bench/node`, installed (`npm ci`)
    /// into `target/bench-node` once; `None` without Node.js and npm.
    pub async fn node_ws() -> Result<Option<Server>> {
        let (Some(node), Some(npm)) = (which("node"), which("npm")) else {
            return Ok(None);
        };
        let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-node");
        std::fs::create_dir_all(&dir)?;
        for file in ["package.json", "package-lock.json", "echo.js"] {
            std::fs::copy(source.join(file), dir.join(file))?;
        }
        if !dir.join("node_modules/ws/package.json").is_file() {
            let status = Command::new(npm)
                .args(["ci", "--no-audit", "--no-fund", "--silent"])
                .current_dir(&dir)
                .status()
                .await?;
            if !status.success() {
                bail!("npm ci in {} failed: {status}", dir.display());
            }
        }
        let mut command = Command::new(node);
        command.arg(dir.join("echo.js"));
        Server::start(command, None).await.map(Some)
    }

    async fn spawn(wrapper: &[&str], args: &[&str], dirs: Option<tempfile::TempDir>, config: &str) -> Result<Server> {
        let exe = std::env::current_exe()?;
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        command.args(args).env("BATON_BENCH_CONFIG", config);
        Server::start(command, dirs).await
    }

    async fn start(mut command: Command, dirs: Option<tempfile::TempDir>) -> Result<Server> {
        let args = format!("{command:?}");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut admin = None;
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("ADMIN ") {
                admin = Some(addr.parse()?);
            }
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                // Keep draining its stdout so it never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Ok(Server {
                    addr: addr.parse()?,
                    admin,
                    child,
                    dirs,
                });
            }
        }
        bail!("server {args} exited before listening")
    }

    /// A WebSocket URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The server's process id.
    pub fn pid(&self) -> Result<u32> {
        self.child.id().context("server exited")
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.id().context("server exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")
    }

    /// The host's deploy folder.
    pub fn deploy_dir(&self) -> PathBuf {
        self.dirs.as_ref().map(|d| d.path().join("deploy")).unwrap_or_default()
    }

    /// Writes `<name>.wasm` atomically into the deploy folder.
    pub fn drop_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.deploy_dir();
        let tmp = dir.join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(format!("{name}.wasm")))?;
        Ok(())
    }

    /// `GET` on the admin API as JSON.
    pub async fn admin_json(&self, path: &str) -> Result<serde_json::Value> {
        let admin = self.admin.context("not a baton host")?;
        let (status, body) = crate::load::http_get(admin, path).await?;
        if status != 200 {
            bail!("{path}: {status}");
        }
        Ok(serde_json::from_slice(&body)?)
    }

    async fn wait_current(&self, name: &str) -> Result<u64> {
        // Long enough for a compile under valgrind (the frames figure).
        for _ in 0..3600 {
            if let Ok(view) = self.admin_json(&format!("/api/plugins/{name}")).await
                && let Some(generation) = view["current"]["generation"].as_u64()
            {
                return Ok(generation);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{name} never became current")
    }
}

/// A program on the `PATH` (or where `cargo install` puts wasmtime here).
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| PathBuf::from(dir).join(program))
        .chain([PathBuf::from("/opt/wasmtime-cli/bin").join(program)])
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The socket settings both the native servers and the host use.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096)
        .max_frame_size(Some(1 << 20))
        .max_message_size(Some(1 << 20))
}

/// Role `serve-native`: echoes every data frame, one task per connection.
pub async fn serve_native() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("LISTENING {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Role `serve-native-broadcast`: every text frame goes to every other
/// connection, through a tokio broadcast channel.
pub async fn serve_native_broadcast() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("LISTENING {}", listener.local_addr()?);
    let (tx, _) = broadcast::channel::<(u64, Message)>(1024);
    let mut next = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        next += 1;
        let me = next;
        let tx = tx.clone();
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(ws_config())).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(Ok(message)) if message.is_text() => {
                            let _ = tx.send((me, message));
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    sent = rx.recv() => match sent {
                        Ok((from, message)) if from != me => {
                            if sink.send(message).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                }
            }
        });
    }
}

/// Role `serve-baton`: a host on ephemeral ports, configured by the TOML of
/// `BATON_BENCH_CONFIG`.
pub async fn serve_baton(deploy: PathBuf, data: PathBuf) -> Result<()> {
    let extra: toml::Table = std::env::var("BATON_BENCH_CONFIG").unwrap_or_default().parse()?;
    let mut config = baton::config::Config::from_layers(vec![("bench".into(), extra)])?;
    config.deploy_dir = deploy;
    config.data_dir = data;
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_listen = "127.0.0.1:0".parse()?;
    let listeners = baton::Listeners::bind(&config).await?;
    let addr = listeners.clients.local_addr()?;
    let admin = listeners.admin.local_addr()?;
    let host = tokio::spawn(baton::run(listeners, config, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    println!("ADMIN {admin}");
    println!("LISTENING {addr}");
    host.await??;
    Ok(())
}
