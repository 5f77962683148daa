//! A headless Chromium driven over the DevTools protocol, for the tests
//! that run pages: the dashboard, and the JavaScript client in a browser.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{DEADLINE, request};

/// A headless Chromium driven over the DevTools protocol.
pub struct Browser {
    child: std::process::Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn launch() -> Browser {
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("Chromium is needed for the browser tests: `apt-get install chromium` (scripts/test installs it)");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or("").to_owned());
                }
            }
        });
        let port = rx
            .recv_timeout(DEADLINE)
            .expect("Chromium's DevTools port")
            .parse()
            .expect("port");
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab and returns the tab's DevTools socket.
    pub async fn open(&self, url: &str) -> Tab {
        let addr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        // The page's URL is the DevTools request's whole query: a fragment
        // or an `&` of its own would end it, so they go encoded.
        let url = url.replace('#', "%23").replace('&', "%26");
        let response = request(addr, "PUT", &format!("/json/new?{url}"), b"", None)
            .await
            .expect("new tab");
        let target = response.json();
        let socket = target["webSocketDebuggerUrl"].as_str().expect("tab socket").to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(socket).await.expect("DevTools socket");
        Tab { ws, next: 0 }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Tab {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next: u64,
}

impl Tab {
    /// Evaluates a JavaScript expression in the page (a promise is awaited)
    /// and returns its value.
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        self.call("Runtime.evaluate", params).await["result"]["value"].clone()
    }

    /// A PNG of what the page shows of `selector`'s element, base64.
    pub async fn screenshot(&mut self, selector: &str) -> String {
        let rect = self
            .eval(&format!(
                "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
                 return [r.left + scrollX, r.top + scrollY, r.width, r.height]; }})()"
            ))
            .await;
        let [x, y, width, height] = [0, 1, 2, 3].map(|i| rect[i].as_f64().expect("a rectangle"));
        let params = serde_json::json!({
            "format": "png",
            "captureBeyondViewport": true,
            "clip": { "x": x, "y": y, "width": width, "height": height, "scale": 1 },
        });
        let shot = self.call("Page.captureScreenshot", params).await;
        shot["data"].as_str().expect("a PNG").to_owned()
    }

    /// Sends one DevTools command and returns its result.
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let command = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let message = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("open")
                .expect("ok");
            let reply: serde_json::Value = serde_json::from_str(message.to_text().expect("text")).expect("JSON");
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {}", reply["error"]);
                return reply["result"].clone();
            }
        }
    }

    /// Waits until the page's text for `selector` contains `needle`.
    pub async fn wait_text(&mut self, selector: &str, needle: &str) -> String {
        let expression = format!("document.querySelector({selector:?})?.innerText ?? ''");
        let deadline = Instant::now() + DEADLINE;
        loop {
            let text = self.eval(&expression).await.as_str().unwrap_or("").to_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{selector} never showed {needle:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
