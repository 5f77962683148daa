//! Client bytes on the frame → plugin path: a real host on loopback with the
//! `echo` plugin; each input is one WebSocket session, opened with a valid
//! handshake, then fed the input's frames (or its raw bytes), then ended by
//! the client (FIN). Whatever it sent, the host must end the session and
//! close the socket, never panic anywhere (a panic on any thread aborts the
//! fuzzer), and keep answering: every 64 inputs a fresh session must get its
//! echo back.
//!
//! Input: the first byte's low bit picks raw bytes (1) or frames (0), and
//! its second bit opens the session speaking `baton.v1` (its messages, and
//! the session detached rather than ended when the client goes: a window of
//! one second, so they do not pile up). A
//! frame is a header byte (FIN, RSV, opcode as sent), a length byte (high bit:
//! send unmasked; 126: a two-byte length follows) and the payload. The host
//! compiles through `$BATON_COMPILER` (a `baton` binary of the same build of
//! wasmtime), as a host would through itself.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use baton::config::Config;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the host may take to end a session its client has ended.
const DEADLINE: Duration = Duration::from_secs(10);
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

struct Host {
    clients: SocketAddr,
    runtime: tokio::runtime::Runtime,
    _dirs: tempfile::TempDir,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let dirs = tempfile::tempdir().expect("temp dir");
        let deploy = dirs.path().join("deploy");
        std::fs::create_dir_all(&deploy).expect("deploy dir");
        std::fs::copy(baton_test_plugins::ECHO, deploy.join("echo.wasm")).expect("copy echo");
        let mut config = Config {
            deploy_dir: deploy,
            data_dir: dirs.path().join("data"),
            listen: "127.0.0.1:0".parse().expect("address"),
            admin_listen: "127.0.0.1:0".parse().expect("address"),
            ..Config::default()
        };
        let compiler = std::env::var_os("BATON_COMPILER").expect("BATON_COMPILER names a baton binary");
        config.runtime.compiler = Some(compiler.into());
        config.runtime.max_instances = 16;
        // Small frames, so that inputs reach the size limit (1009) too.
        config.limits.max_frame_bytes = 4096;
        config.resume.window_secs = 1;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listeners = runtime.block_on(baton::Listeners::bind(&config)).expect("bind");
        let clients = listeners.clients.local_addr().expect("address");
        runtime.spawn(baton::run(listeners, config, std::future::pending()));
        let host = Host {
            clients,
            runtime,
            _dirs: dirs,
        };
        host.runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !echoes(clients).await {
                assert!(tokio::time::Instant::now() < deadline, "echo never came up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        host
    })
}

/// Opens a session: the upgrade, answered 101 (asking for `baton.v1`
/// when `v1`).
async fn open(clients: SocketAddr, v1: bool) -> Option<TcpStream> {
    let mut socket = TcpStream::connect(clients).await.ok()?;
    let protocol = if v1 { "Sec-WebSocket-Protocol: baton.v1\r\n" } else { "" };
    let request = format!(
        "GET /t/fuzz/echo HTTP/1.1\r\nHost: {clients}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    );
    socket.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        if socket.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    head.starts_with(b"HTTP/1.1 101").then_some(socket)
}

/// A client frame: masked unless `unmasked`.
fn frame(out: &mut Vec<u8>, head: u8, payload: &[u8], declared: usize, unmasked: bool) {
    out.push(head);
    let mask_bit = if unmasked { 0 } else { 0x80 };
    if declared < 126 {
        out.push(mask_bit | declared as u8);
    } else {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(declared as u16).to_be_bytes());
    }
    if !unmasked {
        out.extend_from_slice(&MASK);
    }
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
}

/// The bytes to send for an input.
fn wire(data: &[u8]) -> Vec<u8> {
    let Some((&mode, mut data)) = data.split_first() else {
        return Vec::new();
    };
    if mode & 1 == 1 {
        return data.to_vec();
    }
    let mut out = Vec::new();
    while let [head, length, rest @ ..] = data {
        let unmasked = length & 0x80 != 0;
        let (declared, rest) = match (length & 0x7f, rest) {
            (126, [hi, lo, rest @ ..]) => (u16::from_be_bytes([*hi, *lo]) as usize, rest),
            (126, rest) => (0, rest),
            (n, rest) => (n as usize, rest),
        };
        let (payload, rest) = rest.split_at(declared.min(rest.len()));
        frame(&mut out, *head, payload, declared, unmasked);
        data = rest;
    }
    out
}

/// Whether a fresh session gets its echo back.
async fn echoes(clients: SocketAddr) -> bool {
    let Some(mut socket) = open(clients, false).await else {
        return false;
    };
    let mut out = Vec::new();
    frame(&mut out, 0x81, b"ping", 4, false);
    if socket.write_all(&out).await.is_err() {
        return false;
    }
    let mut answer = [0u8; 6];
    let read = tokio::time::timeout(DEADLINE, socket.read_exact(&mut answer)).await;
    matches!(read, Ok(Ok(_))) && answer == [0x81, 4, b'p', b'i', b'n', b'g']
}

fuzz_target!(|data: &[u8]| {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let host = host();
    let bytes = wire(data);
    let v1 = data.first().is_some_and(|mode| mode & 2 == 2);
    host.runtime.block_on(async {
        let mut socket = open(host.clients, v1).await.expect("the host accepts a valid upgrade");
        // The host may close early (a protocol error): then writing fails.
        let _ = socket.write_all(&bytes).await;
        let _ = socket.shutdown().await;
        let mut sink = Vec::new();
        let ended = tokio::time::timeout(DEADLINE, socket.read_to_end(&mut sink)).await;
        assert!(ended.is_ok(), "the host did not end a session its client ended");
        if RUNS.fetch_add(1, Ordering::Relaxed) % 64 == 0 {
            assert!(echoes(host.clients).await, "the host stopped echoing");
        }
    });
});
