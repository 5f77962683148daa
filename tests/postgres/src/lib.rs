//! A throwaway PostgreSQL server for baton's tests and benchmarks: Debian's
//! PostgreSQL (installed by `scripts/test` when missing), one server per test
//! process on a free loopback port, and a fresh database for every caller.
//!
//! `initdb` refuses to run as root, and these machines run as root: then the
//! server runs as the `postgres` user (`setpriv`). The server is started from
//! a thread that lives as long as the process and dies with it
//! (`--pdeathsig`), so a test process that ends, however it ends, leaves no
//! server running; its data folder is removed by the next start.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The server of this process.
pub struct Server {
    port: u16,
    bin: PathBuf,
}

/// A database of its own on the server, dropped when this is.
pub struct Database {
    /// `postgres://postgres@127.0.0.1:PORT/NAME`: the superuser, trusted on loopback.
    pub url: String,
    /// Its name.
    pub name: String,
    server: &'static Server,
}

/// The server of this process, started on first use.
///
/// Panics with what to do when PostgreSQL is not installed or does not start:
/// a test that needs it cannot run without it.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| Server::start().unwrap_or_else(|e| panic!("cannot start a test PostgreSQL: {e}")))
}

/// A fresh database on this process's server.
pub fn database() -> Database {
    server().database()
}

impl Server {
    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new database, empty.
    pub fn database(&'static self) -> Database {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        Database {
            url: format!("postgres://postgres@127.0.0.1:{}/{name}", self.port),
            name,
            server: self,
        }
    }

    /// Runs `sql` with psql as the superuser on `database`.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), "-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn start() -> Result<Server, String> {
        let bin = bin_dir()?;
        remove_stale_folders();
        let dir = std::env::temp_dir().join(format!("baton-pg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let as_root = is_root();
        if as_root {
            chown_to_postgres(&dir)?;
        }
        let initdb = as_server_user(as_root, &bin.join("initdb"), &[])
            .args([
                "-D",
                &dir.join("data").to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ])
            .args(["--no-sync", "--no-instructions"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !initdb.status.success() {
            return Err(format!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr)));
        }
        for _ in 0..5 {
            let port = free_port()?;
            if let Some(server) = Server::launch(&bin, &dir, port, as_root)? {
                return Ok(server);
            }
        }
        Err("the server did not start on five free ports".into())
    }

    /// Starts the server on `port`; `None` if it exited (the port was taken
    /// meanwhile).
    fn launch(bin: &Path, dir: &Path, port: u16, as_root: bool) -> Result<Option<Server>, String> {
        let mut command = as_server_user(as_root, &bin.join("postgres"), &["--pdeathsig", "KILL"]);
        command
            .args(["-D", &dir.join("data").to_string_lossy(), "-p", &port.to_string()])
            .args(["-k", &dir.to_string_lossy(), "-c", "listen_addresses=127.0.0.1"])
            // Throwaway data: no need to survive a power cut.
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .args(["-c", "max_connections=300", "-c", "log_min_messages=warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("server.log")).map_err(|e| format!("server.log: {e}"))?,
            ));
        // The thread that spawns the server waits on it for the life of the
        // process: the server's parent-death signal fires when it ends.
        let (started, exited) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("baton-test-postgres".into())
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = started.send(Ok(()));
                    let _ = child.wait();
                    let _ = started.send(Err("exited".to_owned()));
                }
                Err(e) => {
                    let _ = started.send(Err(format!("cannot run postgres: {e}")));
                }
            })
            .map_err(|e| e.to_string())?;
        exited.recv().map_err(|e| e.to_string())??;
        let server = Server {
            port,
            bin: bin.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if exited.try_recv().is_ok() {
                return Ok(None);
            }
            if server.psql("postgres", "SELECT 1").is_ok() {
                return Ok(Some(server));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        Err(format!("the server did not answer within 30 s:\n{log}"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.server.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// `postgres` and `initdb` of the newest PostgreSQL installed.
fn bin_dir() -> Result<PathBuf, String> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/test does it)")?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| "no server under /usr/lib/postgresql".to_owned())
}

/// The command to run `program` as the user that owns the data folder.
fn as_server_user(as_root: bool, program: &Path, extra: &[&str]) -> Command {
    if as_root {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
            .args(extra)
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

fn chown_to_postgres(dir: &Path) -> Result<(), String> {
    let status = Command::new("chown")
        .args(["postgres:postgres", &dir.to_string_lossy()])
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "there is no postgres user to run the server as".to_owned())
}

/// Data folders of test processes that are gone.
fn remove_stale_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("baton-pg-")) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
}
