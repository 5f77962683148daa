//! A throwaway NATS server for baton's cluster tests and benchmarks:
//! Debian's `nats-server` (installed by `scripts/test` when missing) with
//! JetStream, on a free loopback port, its store in a folder of its own.
//!
//! Each caller gets a server of its own, so that a test can stop and
//! restart it (on the same port and store) without touching another test.
//! The server runs under `setpriv --pdeathsig KILL`: it dies with the
//! process that started it, however that process ends; dropping the handle
//! stops it and removes its folder.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One NATS server.
pub struct Nats {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nats {
    /// Starts a server on a free loopback port.
    ///
    /// Panics with what to do when `nats-server` is not installed or does
    /// not start: a test that needs it cannot run without it.
    pub fn start() -> Nats {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("baton-nats-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("store")).expect("a folder for NATS");
        // 1 MiB frames plus the header of a cluster message.
        std::fs::write(dir.join("nats.conf"), "max_payload: 2MB\n").expect("NATS config");
        let mut nats = Nats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
            child: None,
        };
        nats.resume();
        nats
    }

    /// Stops the server (as a crash would: SIGKILL); `resume` starts it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the server runs already");
        let binary = which("nats-server").unwrap_or_else(|| {
            panic!("nats-server is not installed: run scripts/test, or `apt-get install -y nats-server`")
        });
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.join("store"))
            .arg("-c")
            .arg(self.dir.join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
