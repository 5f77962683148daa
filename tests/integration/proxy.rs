//! A loopback TCP proxy for the tests, whose connections can be cut (reset,
//! as a network that fails would) at any moment.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A loopback TCP proxy in front of the host whose connections can be cut
/// (reset, as a network that fails would) at any moment.
pub struct Proxy {
    pub addr: String,
    connections: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(to: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let connections: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let to = to.clone();
                    let pipe = tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&to).await else {
                            return;
                        };
                        // Reset, not closed, when the pipe is dropped (as a
                        // network that fails would); a zero linger does not
                        // block the thread that drops it.
                        let (mut client, mut server) = (reset_on_drop(client), reset_on_drop(server));
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    connections.lock().expect("lock").push(pipe);
                }
            })
        };
        Proxy {
            addr,
            connections,
            accept,
        }
    }

    /// Cuts every connection through the proxy now.
    pub fn cut(&self) {
        for pipe in self.connections.lock().expect("lock").drain(..) {
            pipe.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// The same socket with `SO_LINGER` zero: dropped, it is reset (tokio's
/// setter is deprecated for blocking on drop, which a zero linger does not).
fn reset_on_drop(stream: TcpStream) -> TcpStream {
    let std = stream.into_std().expect("std socket");
    let _ = rustix::net::sockopt::set_socket_linger(&std, Some(Duration::ZERO));
    TcpStream::from_std(std).expect("tokio socket")
}
