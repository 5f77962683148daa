//! Durable jobs, timers and webhooks through a real host and the
//! `jobs-probe` plugin: how many jobs a second one tenant's queue runs
//! against the same jobs spread over fifty tenants, how long a job waits
//! from its enqueue to its start, how late a named (durable) timer fires
//! next to an unnamed (in-memory) one, and how long a webhook takes from the
//! plugin's `send` to a receiver on loopback.
//!
//! Every time is the same machine's clock in Unix ms: the probe logs when
//! each job or timer ran (`GET /t/{tenant}/jobs-probe/log`), a job's log line
//! carries when it was due, the admin API says when a named timer is due,
//! the probe answers when an unnamed one is, and a webhook's body carries
//! when it was sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use super::Scale;
use crate::load;
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

const PLUGIN: &str = "jobs-probe";

/// Tenants sharing the jobs in the second throughput run.
const FAN_OUT: usize = 50;

/// Enqueue requests in flight at once.
const IN_FLIGHT: usize = 8;

/// A timer's delay, and the gap between two timers (or jobs, or webhooks)
/// of the latency runs: each is due alone, a few are pending at a time.
const TIMER_DELAY_MS: u64 = 200;
const STEP: Duration = Duration::from_millis(20);

/// Adds the jobs section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let jobs = if scale.full { 2000 } else { 400 };
    let samples = if scale.full { 200 } else { 50 };
    let receiver = Receiver::start().await?;
    let config = "[webhooks]\nallow = [\"http://127.0.0.1:*\"]\n";
    let server = Server::baton(&[(PLUGIN, baton_test_plugins::JOBS_PROBE)], config).await?;

    eprintln!("jobs: throughput, 1 tenant, {jobs} jobs");
    let one = throughput(&server, &["solo".to_owned()], jobs).await?;
    eprintln!("jobs: throughput, {FAN_OUT} tenants, {} jobs each", jobs / FAN_OUT);
    let fan: Vec<String> = (0..FAN_OUT).map(|t| format!("fan-{t}")).collect();
    let many = throughput(&server, &fan, jobs).await?;

    eprintln!("jobs: enqueue to start, {samples} jobs");
    let started = job_latency(&server, "lat-jobs", samples).await?;
    eprintln!("jobs: timer lateness, {samples} named and {samples} unnamed side by side");
    let (named, memory) = tokio::try_join!(
        timer_latency(&server, "lat-named", true, samples),
        timer_latency(&server, "lat-memory", false, samples)
    )?;
    eprintln!("jobs: webhooks, {samples} to a loopback receiver");
    let delivered = webhook_latency(&server, &receiver, "lat-hooks", samples).await?;
    drop(server);

    let latency = |what: &str, l: &Latency, vs: String| {
        Row::of([
            what.into(),
            l.count.to_string(),
            "–".into(),
            l.p50.to_string(),
            l.p99.to_string(),
            format!("{:.1}", l.mean),
            vs,
        ])
    };
    let rows = vec![
        Row::of([
            "throughput, 1 tenant".into(),
            jobs.to_string(),
            format!("{:.0}", one.rate),
            "–".into(),
            "–".into(),
            "–".into(),
            "1.00×".into(),
        ]),
        Row::of([
            format!("throughput, {FAN_OUT} tenants × {}", jobs / FAN_OUT),
            jobs.to_string(),
            format!("{:.0}", many.rate),
            "–".into(),
            "–".into(),
            "–".into(),
            ratio(many.rate, one.rate),
        ]),
        latency("job enqueue → start (no delay)", &started, "–".into()),
        latency("unnamed (in-memory) timer, lateness", &memory, "1.00×".into()),
        latency(
            "named (durable) timer, lateness",
            &named,
            ratio(named.mean, memory.mean),
        ),
        latency(
            "webhook send → delivered",
            &delivered,
            format!("{} job start", ratio(delivered.mean, started.mean)),
        ),
    ];
    report.section(
        "Durable jobs, timers and webhooks",
        &format!(
            "One host, the `jobs-probe` plugin, default `[jobs]` settings, every time read from the same \
             machine's clock in ms. Throughput: {jobs} jobs enqueued over HTTP ({IN_FLIGHT} requests at a \
             time) all due at one instant a little later, either by one tenant or round-robin by {FAN_OUT} \
             tenants; jobs/s from that instant to the last job's start as the probe logged it, the admin \
             API's job list read until empty; ratio against one tenant. On redb each job is three write \
             transactions, each synced to disk (start, the probe's log key, finish), and redb runs one \
             write transaction at a time, so more tenants add no parallelism there. \
             Latency ({samples} of each, one every {} ms, each due alone): a job enqueued with no delay, its \
             start minus when it was due (its enqueue); a timer set {TIMER_DELAY_MS} ms ahead, when \
             `on-timer` ran minus when it was due, named (a durable job; its due time from the admin API) \
             and unnamed (in memory) side by side on two tenants, ratio of the means; a webhook from the \
             plugin's `send` (the body's `timestamp`) to its arrival at a hyper receiver on loopback that \
             answers 200, ratio of the means against a job's start. Times are whole ms, so a mean is finer \
             than a percentile.",
            STEP.as_millis()
        ),
        &["measure", "count", "jobs/s", "p50 ms", "p99 ms", "mean ms", "ratio"],
        rows,
    );
    report.note(&format!(
        "Enqueued over HTTP: {:.0}/s to one tenant, {:.0}/s to {FAN_OUT}.{}",
        one.enqueued_rate,
        many.enqueued_rate,
        match one.late + many.late {
            0 => String::new(),
            late => format!(
                " {late} jobs were enqueued after the instant they were due (the enqueue ran late), \
                 so the rates above include some enqueueing."
            ),
        }
    ));
    Ok(())
}

/// A throughput run.
struct Throughput {
    /// Jobs started per second once due.
    rate: f64,
    /// Enqueue requests answered per second.
    enqueued_rate: f64,
    /// Jobs enqueued after the instant they were meant to be due.
    late: usize,
}

/// Enqueues `count` jobs round-robin over `tenants`, all due at one
/// instant, and times them from that instant to the last one's start.
async fn throughput(server: &Server, tenants: &[String], count: usize) -> Result<Throughput> {
    // Warm-up: every tenant's instance opened and one job of each run, and
    // the rate of enqueues measured, to put the common due time beyond the
    // enqueue of them all.
    let warm = tenants.len().max(100);
    let clock = Instant::now();
    enqueue(server, tenants, warm, "warm", |_| 0).await?;
    let per_enqueue = clock.elapsed().as_secs_f64() / warm as f64;
    wait_done(server, tenants, Duration::from_secs(60)).await?;

    let due = unix_ms() + 500 + (count as f64 * per_enqueue * 1500.0) as u64;
    let late = std::cell::Cell::new(0);
    let clock = Instant::now();
    enqueue(server, tenants, count, "bench", |_| {
        let now = unix_ms();
        late.set(late.get() + usize::from(now >= due));
        due.saturating_sub(now)
    })
    .await?;
    let enqueued_rate = count as f64 / clock.elapsed().as_secs_f64();
    wait_done(server, tenants, Duration::from_secs(300)).await?;

    // From the first job due (its enqueue adds a few ms to `due`) to the
    // last job's start.
    let (mut first_due, mut last_start, mut started) = (u64::MAX, 0, 0);
    for tenant in tenants {
        for line in log_of(server, tenant).await? {
            if let Some(job) = JobLine::parse(&line).filter(|j| j.kind == "bench") {
                first_due = first_due.min(job.scheduled_ms);
                last_start = last_start.max(job.ms);
                started += 1;
            }
        }
    }
    ensure!(started == count, "{started} of {count} jobs logged a start");
    Ok(Throughput {
        rate: count as f64 / (last_start.saturating_sub(first_due).max(1) as f64 / 1000.0),
        enqueued_rate,
        late: late.get(),
    })
}

/// Enqueues `count` jobs of `kind` round-robin over `tenants`, `IN_FLIGHT`
/// at a time, the `i`-th with `delay(i)`.
async fn enqueue(
    server: &Server,
    tenants: &[String],
    count: usize,
    kind: &str,
    delay: impl Fn(usize) -> u64,
) -> Result<()> {
    let answers = futures_util::stream::iter(0..count)
        .map(|i| {
            let body = json!({ "kind": kind, "payload": { "i": i }, "delay_ms": delay(i) });
            probe(server, &tenants[i % tenants.len()], "/enqueue", body)
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    for answer in answers {
        answer?["id"].as_u64().context("an enqueue answered no id")?;
    }
    Ok(())
}

/// Enqueue → start of `count` jobs with no delay, one every `STEP`.
async fn job_latency(server: &Server, tenant: &str, count: usize) -> Result<Latency> {
    let tenants = [tenant.to_owned()];
    enqueue(server, &tenants, 5, "warm", |_| 0).await?;
    wait_done(server, &tenants, Duration::from_secs(30)).await?;
    for i in 0..count {
        probe(
            server,
            tenant,
            "/enqueue",
            json!({ "kind": "lat", "payload": { "i": i } }),
        )
        .await?;
        tokio::time::sleep(STEP).await;
    }
    wait_done(server, &tenants, Duration::from_secs(60)).await?;
    let waits = log_of(server, tenant)
        .await?
        .iter()
        .filter_map(|line| JobLine::parse(line))
        .filter(|j| j.kind == "lat")
        .map(|j| j.ms as i64 - j.scheduled_ms as i64)
        .collect();
    Latency::of(waits, count)
}

/// Lateness of `count` timers set `TIMER_DELAY_MS` ahead, one every `STEP`:
/// named (durable) ones, or unnamed (in-memory) ones.
async fn timer_latency(server: &Server, tenant: &str, named: bool, count: usize) -> Result<Latency> {
    let mut due: HashMap<String, u64> = HashMap::new();
    // The first one warms the instance (and the tenant's job store) up.
    for i in 0..=count {
        let label = match i {
            0 => "warm".to_owned(),
            _ => format!("t{i}"),
        };
        let name = if named { Value::from(label.clone()) } else { Value::Null };
        let body = json!({ "name": name, "delay_ms": TIMER_DELAY_MS, "payload": label });
        let answer = probe(server, tenant, "/timer", body).await?;
        let at = if named {
            let view = server.admin_json(&format!("/api/tenants/{tenant}/jobs")).await?;
            view["jobs"]
                .as_array()
                .and_then(|jobs| {
                    jobs.iter()
                        .find(|j| j["class"] == "timer" && j["kind"] == label.as_str())
                })
                .and_then(|j| j["run_at_ms"].as_u64())
        } else {
            answer["due_ms"].as_u64()
        };
        // A named timer already gone from the list fired before it was
        // read: left out (a stall of 200 ms in the bench, not the host).
        if let Some(at) = at
            && i > 0
        {
            due.insert(label, at);
        }
        tokio::time::sleep(if i == 0 { Duration::from_millis(500) } else { STEP }).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fired: Vec<(String, u64)> = log_of(server, tenant)
            .await?
            .iter()
            .filter_map(|line| {
                // `timer <id> <payload> <ms>`
                let mut words = line.split(' ');
                (words.next()? == "timer").then_some(())?;
                let _id = words.next()?;
                Some((words.next()?.to_owned(), words.next()?.parse().ok()?))
            })
            .filter(|(label, _)| label != "warm")
            .collect();
        if fired.len() >= count || Instant::now() > deadline {
            let late = fired
                .iter()
                .filter_map(|(label, ms)| Some(*ms as i64 - *due.get(label)? as i64))
                .collect();
            return Latency::of(late, count);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Send → delivered of `count` webhooks, one every `STEP`.
async fn webhook_latency(server: &Server, receiver: &Receiver, tenant: &str, count: usize) -> Result<Latency> {
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(*b"baton-bench-webhook-secret-32byt")
    );
    let url = format!("http://{}/hook", receiver.addr);
    let admin = server.admin.context("not a baton host")?;
    let (status, body) = send(
        admin,
        http::Method::PUT,
        &format!("/api/tenants/{tenant}/webhooks/bench"),
        json!({ "url": url, "secret": secret }),
    )
    .await?;
    ensure!(
        status == 200,
        "setting the endpoint: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let webhook = |i: usize| json!({ "endpoint": "bench", "event": "bench.ping", "payload": { "i": i } });
    // Warm-up: the instance, and the host's client to the receiver.
    probe(server, tenant, "/webhook", webhook(usize::MAX)).await?;
    receiver.wait_for(1, Duration::from_secs(30)).await?;
    for i in 0..count {
        probe(server, tenant, "/webhook", webhook(i)).await?;
        tokio::time::sleep(STEP).await;
    }
    receiver.wait_for(count + 1, Duration::from_secs(30)).await?;
    let waits = receiver
        .arrivals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|(at, body)| {
            let body: Value = serde_json::from_slice(body).ok()?;
            (body["data"]["i"].as_u64()? < count as u64).then_some(())?;
            let sent = rfc3339_ms(body["timestamp"].as_str()?)?;
            Some(*at as i64 - sent as i64)
        })
        .collect();
    Latency::of(waits, count)
}

/// Whole-ms waits: percentiles and the mean.
struct Latency {
    count: usize,
    p50: i64,
    p99: i64,
    mean: f64,
}

impl Latency {
    fn of(mut ms: Vec<i64>, expected: usize) -> Result<Latency> {
        ensure!(
            ms.len() * 10 >= expected * 9,
            "only {} of {expected} measured",
            ms.len()
        );
        ms.sort_unstable();
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Ok(Latency {
            count: ms.len(),
            p50: at(0.5),
            p99: at(0.99),
            mean: ms.iter().sum::<i64>() as f64 / ms.len() as f64,
        })
    }
}

/// A job attempt's log line: `job <id> <kind> <attempt> <ms> <scheduled-ms>`.
struct JobLine {
    kind: String,
    ms: u64,
    scheduled_ms: u64,
}

impl JobLine {
    fn parse(line: &str) -> Option<JobLine> {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["job", _id, kind, _attempt, ms, scheduled] => Some(JobLine {
                kind: (*kind).to_owned(),
                ms: ms.parse().ok()?,
                scheduled_ms: scheduled.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// `POST /t/{tenant}/jobs-probe{route}`: its JSON answer, an error if it
/// answered one.
async fn probe(server: &Server, tenant: &str, route: &str, body: Value) -> Result<Value> {
    let path = format!("/t/{tenant}/{PLUGIN}{route}");
    let (status, bytes) = load::http_post(server.addr, &path, &body).await?;
    ensure!(
        status == 200,
        "POST {path}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    let answer: Value = serde_json::from_slice(&bytes)?;
    if let Some(err) = answer.get("err") {
        bail!("POST {path}: {err}");
    }
    Ok(answer)
}

/// The probe's log of `tenant`.
async fn log_of(server: &Server, tenant: &str) -> Result<Vec<String>> {
    let path = format!("/t/{tenant}/{PLUGIN}/log");
    let (status, bytes) = load::http_get(server.addr, &path).await?;
    ensure!(status == 200, "GET {path}: {status}");
    let answer: Value = serde_json::from_slice(&bytes)?;
    Ok(answer["log"]
        .as_array()
        .context("no log")?
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect())
}

/// Waits until the admin API lists no job of any of `tenants`.
async fn wait_done(server: &Server, tenants: &[String], within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    for tenant in tenants {
        loop {
            let view = server.admin_json(&format!("/api/tenants/{tenant}/jobs")).await?;
            if view["jobs"].as_array().is_some_and(Vec::is_empty) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{tenant}'s jobs did not finish within {within:?}");
            }
            // Seldom: a list of a thousand jobs costs the host some CPU.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// A request with a JSON body over a fresh connection: (status, body).
async fn send(addr: SocketAddr, method: http::Method, path: &str, body: Value) -> Result<(u16, Bytes)> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&body)?)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    Ok((status, response.into_body().collect().await?.to_bytes()))
}

/// A webhook receiver on loopback: answers every request 200 and keeps when
/// it arrived (Unix ms) with its body.
struct Receiver {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<(u64, Bytes)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let arrivals: Arc<Mutex<Vec<(u64, Bytes)>>> = Arc::default();
        let sink = arrivals.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let at = unix_ms();
                            let body = request.into_body().collect().await?.to_bytes();
                            sink.lock().unwrap_or_else(|p| p.into_inner()).push((at, body));
                            Ok::<_, hyper::Error>(http::Response::new(Empty::<Bytes>::new()))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, arrivals, task })
    }

    /// Waits until `count` requests arrived.
    async fn wait_for(&self, count: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let arrived = self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).len();
            if arrived >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{arrived} of {count} webhooks arrived within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-01-02T03:04:05.678Z` (as the host writes a webhook's `timestamp`)
/// in Unix ms.
fn rfc3339_ms(s: &str) -> Option<u64> {
    let number = |range: std::ops::Range<usize>| s.get(range)?.parse::<i64>().ok();
    if s.len() != 24 || !s.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, milli) = (number(11..13)?, number(14..16)?, number(17..19)?, number(20..23)?);
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
    // `days_from_civil`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + milli;
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_hosts_timestamps() {
        assert_eq!(super::rfc3339_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(super::rfc3339_ms("2000-03-01T00:00:01.250Z"), Some(951_868_801_250));
        assert_eq!(super::rfc3339_ms("2024-02-29T23:59:59.999Z"), Some(1_709_251_199_999));
        assert_eq!(super::rfc3339_ms("2024-02-29T23:59:59Z"), None);
    }
}
