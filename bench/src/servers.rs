//! The servers under test, each in its own process: this binary re-executed
//! in a server role. A server prints `LISTENING <addr>` once it accepts, and
//! is killed when its [`Server`] is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A server process.
pub struct Server {
    addr: SocketAddr,
    _child: Child,
    _dirs: Option<tempfile::TempDir>,
}

impl Server {
    /// A native tokio-tungstenite echo server.
    pub async fn native() -> Result<Server> {
        Server::spawn(&["serve-native"], None).await
    }

    /// A baton host with `plugins` (name, built file) deployed.
    pub async fn baton(plugins: &[(&str, &str)]) -> Result<Server> {
        let dirs = tempfile::tempdir()?;
        let deploy = dirs.path().join("deploy");
        std::fs::create_dir_all(&deploy)?;
        for (name, file) in plugins {
            std::fs::copy(file, deploy.join(format!("{name}.wasm")))?;
        }
        let data = dirs.path().join("data");
        let args = ["serve-baton", &deploy.display().to_string(), &data.display().to_string()];
        Server::spawn(&args, Some(dirs)).await
    }

    async fn spawn(args: &[&str], dirs: Option<tempfile::TempDir>) -> Result<Server> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await? {
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                return Ok(Server {
                    addr: addr.parse()?,
                    _child: child,
                    _dirs: dirs,
                });
            }
        }
        bail!("server {args:?} exited before listening")
    }

    /// A WebSocket URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

/// The socket settings both servers use.
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

/// Role `serve-baton`: a host on an ephemeral port.
pub async fn serve_baton(deploy: PathBuf, data: PathBuf) -> Result<()> {
    let mut config = baton::config::Config::default();
    config.deploy_dir = deploy;
    config.data_dir = data;
    config.listen = "127.0.0.1:0".parse()?;
    config.admin_listen = "127.0.0.1:0".parse()?;
    let listeners = baton::Listeners::bind(&config).await?;
    let addr = listeners.clients.local_addr()?;
    let host = tokio::spawn(baton::run(listeners, config, async {
        let _ = tokio::signal::ctrl_c().await;
    }));
    // The host loads its deploy folder before it serves; connections made
    // meanwhile wait in the listen backlog.
    println!("LISTENING {addr}");
    host.await??;
    Ok(())
}
