//! The load generator: WebSocket and HTTP clients, bounded in count and time,
//! on loopback only.
//!
//! Many sessions are spread over source addresses in 127.0.0.0/8 (one address
//! pair allows ~28,000 ephemeral ports) and over several processes
//! ([`Holders`], this binary in the `hold` role) when one process's
//! file-descriptor limit is too small.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Latency percentiles and a rate.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Operations per second.
    pub rate: f64,
    /// Median, µs.
    pub p50: u64,
    /// 99th percentile, µs.
    pub p99: u64,
    /// The slowest, µs.
    pub max: u64,
    /// Failed clients or requests.
    pub errors: usize,
}

impl Stats {
    fn of(histogram: &Histogram<u64>, count: u64, seconds: f64, errors: usize) -> Stats {
        Stats {
            rate: count as f64 / seconds,
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            max: histogram.max(),
            errors,
        }
    }
}

fn check_loopback(url: &str) -> Result<()> {
    if !url.starts_with("ws://127.") && !url.starts_with("http://127.") {
        bail!("the load generator targets loopback only, not {url}");
    }
    Ok(())
}

/// Opens one session from the source address `source`, retrying a refused
/// or reset connection twice (a listen backlog overflows under a burst of
/// connects; that is the load generator's doing, not the server's answer).
pub async fn connect_from(url: &str, source: Ipv4Addr) -> Result<Ws> {
    connect_asking(url, source, None).await
}

/// As [`connect_from`], asking for the WebSocket subprotocols `protocols`.
pub async fn connect_asking(url: &str, source: Ipv4Addr, protocols: Option<&str>) -> Result<Ws> {
    let mut attempt = 0;
    loop {
        match connect_once(url, source, protocols).await {
            Ok(ws) => return Ok(ws),
            Err(_) if attempt < 2 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn connect_once(url: &str, source: Ipv4Addr, protocols: Option<&str>) -> Result<Ws> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    check_loopback(url)?;
    let authority = url.trim_start_matches("ws://").split('/').next().unwrap_or_default();
    let server: SocketAddr = authority.parse()?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let mut request = url.into_client_request()?;
    if let Some(protocols) = protocols {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse()?);
    }
    let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// Opens `count` sessions, 100 at a time, from source addresses
/// `127.0.0.<first_source>` upwards (a new address every 20,000 sessions).
pub async fn open(url: &str, count: usize, first_source: u8) -> Result<Vec<Ws>> {
    let mut sessions = Vec::with_capacity(count);
    while sessions.len() < count {
        let batch = (sessions.len()..count.min(sessions.len() + 100)).map(|i| {
            let source = Ipv4Addr::new(127, 0, 0, first_source.saturating_add((i / 20_000) as u8));
            connect_from(url, source)
        });
        for result in futures_util::future::join_all(batch).await {
            sessions.push(result.with_context(|| format!("opening session {} to {url}", sessions.len()))?);
        }
    }
    Ok(sessions)
}

/// Sends `text` on every session and waits for one text answer on each;
/// returns how many answered.
pub async fn ping_all(sessions: &mut [Ws], text: &str) -> usize {
    let pings = sessions.iter_mut().map(|ws| async move {
        if ws.send(Message::text(text)).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(30), ws.next()).await,
            Ok(Some(Ok(Message::Text(_))))
        )
    });
    let mut answered = 0;
    for chunk in futures_util::stream::iter(pings)
        .buffer_unordered(512)
        .collect::<Vec<_>>()
        .await
    {
        answered += usize::from(chunk);
    }
    answered
}

/// An echo load.
#[derive(Debug, Clone)]
pub struct EchoLoad {
    /// Concurrent connections.
    pub connections: usize,
    /// Frame size in bytes.
    pub payload: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before it.
    pub warmup: Duration,
}

/// How a load session speaks: the frames it sends, and which message
/// answers one.
pub trait Speaker: Send + 'static {
    /// The `i`-th frame of the session.
    fn frame(&mut self, i: u64) -> Message;
    /// Whether `message` answers the last frame (others, such as a
    /// protocol's acknowledgements, are skipped).
    fn answers(&mut self, message: &Message) -> bool;
}

/// Plain text frames; any text message answers.
pub struct Plain(pub fn(u64) -> String);

impl Speaker for Plain {
    fn frame(&mut self, i: u64) -> Message {
        Message::text((self.0)(i))
    }

    fn answers(&mut self, message: &Message) -> bool {
        matches!(message, Message::Text(_))
    }
}

/// Round trips on already open sessions: each sends a frame and waits for
/// the answer, in a loop. `frame(i)` makes the i-th frame of a session.
pub async fn round_trips(
    sessions: Vec<Ws>,
    frame: fn(u64) -> String,
    warmup: Duration,
    duration: Duration,
) -> Result<(Stats, Vec<Ws>)> {
    let sessions = sessions.into_iter().map(|ws| (ws, Plain(frame))).collect();
    let (stats, sessions) = round_trips_with(sessions, warmup, duration).await?;
    Ok((stats, sessions.into_iter().map(|(ws, _)| ws).collect()))
}

/// Round trips as [`round_trips`], each session speaking as its [`Speaker`].
pub async fn round_trips_with<S: Speaker>(
    sessions: Vec<(Ws, S)>,
    warmup: Duration,
    duration: Duration,
) -> Result<(Stats, Vec<(Ws, S)>)> {
    let barrier = std::sync::Arc::new(Barrier::new(sessions.len() + 1));
    let mut tasks = Vec::with_capacity(sessions.len());
    for (mut ws, mut speaker) in sessions {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let mut count = 0u64;
            barrier.wait().await;
            let start = Instant::now();
            let (measure_from, end) = (start + warmup, start + warmup + duration);
            let mut i = 0;
            let mut failed = false;
            'trips: loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                if ws.send(speaker.frame(i)).await.is_err() {
                    failed = true;
                    break;
                }
                i += 1;
                loop {
                    match ws.next().await {
                        Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                            if speaker.answers(&message) {
                                break;
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        _ => {
                            failed = true;
                            break 'trips;
                        }
                    }
                }
                if sent >= measure_from {
                    count += 1;
                    histogram.record(sent.elapsed().as_micros() as u64).ok();
                }
            }
            (count, histogram, failed, ws, speaker)
        }));
    }
    barrier.wait().await;
    let mut total = Histogram::<u64>::new(3).expect("histogram");
    let (mut count, mut errors) = (0, 0);
    let mut sessions = Vec::new();
    for task in tasks {
        let (n, h, failed, ws, speaker) = task.await?;
        count += n;
        total.add(&h).ok();
        errors += usize::from(failed);
        sessions.push((ws, speaker));
    }
    Ok((Stats::of(&total, count, duration.as_secs_f64(), errors), sessions))
}

/// Runs `load` against the echo at `url`.
pub async fn echo(url: &str, load: &EchoLoad) -> Result<Stats> {
    let sessions = open(url, load.connections, 1).await?;
    let payload = load.payload;
    let frame: fn(u64) -> String = match payload {
        64 => |_| "x".repeat(64),
        _ => |_| "x".repeat(4096),
    };
    let (stats, sessions) = round_trips(sessions, frame, load.warmup, load.duration).await?;
    for mut ws in sessions {
        let _ = ws.close(None).await;
    }
    Ok(stats)
}

/// One `GET` over a fresh connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, Bytes)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// One `POST` of a JSON body over a fresh connection: (status, body).
pub async fn http_post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Result<(u16, Bytes)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// `connections` keep-alive HTTP/1.1 clients sending `GET path` back to back.
pub async fn http_load(
    addr: SocketAddr,
    path: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Stats> {
    check_loopback(&format!("http://{addr}"))?;
    let barrier = std::sync::Arc::new(Barrier::new(connections + 1));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let barrier = barrier.clone();
        let path = path.to_owned();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut histogram = Histogram::<u64>::new(3).expect("histogram");
            let (mut count, mut errors) = (0u64, 0usize);
            barrier.wait().await;
            let start = Instant::now();
            let (measure_from, end) = (start + warmup, start + warmup + duration);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let request = http::Request::get(path.as_str())
                    .header(http::header::HOST, addr.to_string())
                    .body(Empty::<Bytes>::new())?;
                let ok = match sender.send_request(request).await {
                    Ok(response) => response.status() == 200 && response.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    errors += 1;
                    break;
                }
                if sent >= measure_from {
                    count += 1;
                    histogram.record(sent.elapsed().as_micros() as u64).ok();
                }
            }
            Ok::<_, anyhow::Error>((count, histogram, errors))
        }));
    }
    barrier.wait().await;
    let mut total = Histogram::<u64>::new(3).expect("histogram");
    let (mut count, mut errors) = (0, 0);
    for task in tasks {
        match task.await? {
            Ok((n, h, e)) => {
                count += n;
                total.add(&h).ok();
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    Ok(Stats::of(&total, count, duration.as_secs_f64(), errors))
}

/// Idle sessions held by child processes (this binary in the `hold` role),
/// each opening its share from its own source address.
pub struct Holders {
    children: Vec<(
        Child,
        ChildStdin,
        tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    )>,
}

impl Holders {
    /// Opens `count` sessions to `url` from `processes` processes.
    pub async fn open(url: &str, count: usize, processes: usize) -> Result<Holders> {
        let mut children = Vec::new();
        let per = count.div_ceil(processes);
        for p in 0..processes {
            let share = per.min(count - (p * per).min(count));
            if share == 0 {
                break;
            }
            let mut child = Command::new(std::env::current_exe()?)
                .args(["hold", url, &share.to_string(), &format!("127.0.0.{}", 10 + p)])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let stdin = child.stdin.take().context("stdin")?;
            let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
            children.push((child, stdin, lines));
        }
        let mut holders = Holders { children };
        let ready = holders.each("READY", None).await?;
        if ready != count {
            bail!("only {ready} of {count} sessions opened");
        }
        Ok(holders)
    }

    /// Pings every held session; returns how many answered.
    pub async fn check(&mut self) -> Result<usize> {
        self.each("CHECKED", Some("CHECK\n")).await
    }

    /// Sends `command` to each holder and sums the number after `answer`.
    async fn each(&mut self, answer: &str, command: Option<&str>) -> Result<usize> {
        let mut total = 0;
        for (_, stdin, _) in &mut self.children {
            if let Some(command) = command {
                stdin.write_all(command.as_bytes()).await?;
                stdin.flush().await?;
            }
        }
        for (_, _, lines) in &mut self.children {
            loop {
                let line = lines.next_line().await?.context("a holder exited")?;
                if let Some(n) = line.strip_prefix(answer) {
                    total += n.trim().parse::<usize>()?;
                    break;
                }
            }
        }
        Ok(total)
    }
}

/// Role `hold`: opens `count` sessions from `source`, prints `READY <n>`, then
/// answers `CHECK` with `CHECKED <sessions that answered a ping>` until stdin
/// closes.
pub async fn hold(url: String, count: usize, source: Ipv4Addr) -> Result<()> {
    let mut sessions = Vec::with_capacity(count);
    while sessions.len() < count {
        let batch = (sessions.len()..count.min(sessions.len() + 100)).map(|_| connect_from(&url, source));
        for result in futures_util::future::join_all(batch).await {
            sessions.push(result?);
        }
    }
    println!("READY {}", sessions.len());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "CHECK" {
            println!("CHECKED {}", ping_all(&mut sessions, "ping").await);
        }
    }
    Ok(())
}
