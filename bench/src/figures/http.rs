//! Plain HTTP through a plugin versus `wasmtime serve` running an equivalent
//! `wasi:http` component.

use std::time::Duration;

use anyhow::Result;

use super::Scale;
use crate::load;
use crate::report::{Report, Row, ratio};
use crate::servers::Server;

/// Adds the HTTP section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    let seconds = Duration::from_secs(scale.seconds);
    eprintln!("http: baton, then wasmtime serve");
    let baton = Server::baton(&[("echo", baton_test_plugins::ECHO)], "").await?;
    let b = load::http_load(baton.addr, "/t/bench/echo", 32, Duration::from_secs(1), seconds).await?;
    drop(baton);
    let how = format!(
        "32 keep-alive HTTP/1.1 connections sending `GET` back to back for {} s after 1 s of warm-up. \
         baton: `GET /t/bench/echo` answered by the echo plugin's `on-http` (one tenant, so every request \
         goes through the same instance, one at a time). wasmtime: `wasmtime serve -S cli` running \
         `plugins/wasi-http-hello`, which answers the same JSON (a fresh instance per request).",
        scale.seconds
    );
    let w = match Server::wasmtime_serve(baton_test_plugins::WASI_HTTP_HELLO).await? {
        Some(wasmtime) => Some(load::http_load(wasmtime.addr, "/", 32, Duration::from_secs(1), seconds).await?),
        None => None,
    };
    let mut rows = vec![Row::of([
        "baton, echo plugin `GET`".into(),
        format!("{:.0}", b.rate),
        b.p50.to_string(),
        b.p99.to_string(),
        b.errors.to_string(),
        w.as_ref().map_or("–".into(), |w| ratio(b.rate, w.rate)),
    ])];
    if let Some(w) = &w {
        rows.push(Row::of([
            "wasmtime serve, wasi:http component".into(),
            format!("{:.0}", w.rate),
            w.p50.to_string(),
            w.p99.to_string(),
            w.errors.to_string(),
            "1.00×".into(),
        ]));
    }
    report.section(
        "HTTP through a plugin vs wasmtime serve",
        &how,
        &[
            "server",
            "requests/s",
            "p50 µs",
            "p99 µs",
            "errors",
            "requests/s vs wasmtime",
        ],
        rows,
    );
    if w.is_none() {
        report.note(
            "wasmtime serve: skipped, `wasmtime` is not installed. Install it with \
             `cargo install wasmtime-cli@48.0.8 --locked` (30-45 min here) and run the suite again.",
        );
    }
    Ok(())
}
