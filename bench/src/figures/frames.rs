//! User-space instructions per echoed frame, baton versus native, counted by
//! `valgrind --tool=callgrind`: a figure shared, noisy cores cannot blur.
//!
//! Each server runs under callgrind with instrumentation off; the load (not
//! under valgrind) opens the connections and warms up, then instrumentation
//! is switched on and the counters zeroed, exactly N round trips are made,
//! and the counters are dumped. Everything the server process does for
//! those frames counts: its tokio workers, wakers, locks and the plugin
//! call; the kernel's share (syscalls, context switches) does not.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::Scale;
use crate::load::{self, Speaker};
use crate::report::{Report, Row, ratio};
use crate::servers::{Server as Process, which};

/// Concurrent connections (each with one frame in flight).
const CONNECTIONS: usize = 100;

/// Round trips per connection before counting.
const WARMUP: usize = 20;

/// How many of baton's functions to publish.
const TOP: usize = 15;

/// The host under callgrind: a small pool (valgrind cannot reserve a
/// thousand instances' address space), its compiles run by `compiler`, and
/// the default everything else.
fn baton_config(compiler: &Path) -> String {
    format!(
        "[runtime]\nmax_instances = 4\nmax_memory_mib = 64\ncompile_memory_mib = 65536\ncompile_timeout_secs = 600\n\
         compiler = {:?}\n",
        compiler.display().to_string()
    )
}

/// A compiler that runs baton's compile worker under valgrind, so that its
/// code targets the CPU valgrind shows the host (an artifact for the real
/// CPU would be refused). The host starts the worker with an empty
/// environment, which valgrind's own tracing of children does not survive.
fn valgrind_compiler(dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let valgrind = which("valgrind").context("valgrind")?;
    let exe = std::env::current_exe()?;
    let path = dir.join("compile-under-valgrind");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec {} --tool=none -q {} \"$@\"\n",
            valgrind.display(),
            exe.display()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Adds the instructions-per-frame section.
pub async fn run(report: &mut Report, scale: Scale) -> Result<()> {
    if which("valgrind").is_none() || which("callgrind_control").is_none() {
        report.section(
            "Instructions per echoed frame",
            "Skipped: valgrind is not installed (Debian package `valgrind`).",
            &["server"],
            Vec::new(),
        );
        return Ok(());
    }
    let frames = if scale.full { 20_000 } else { 5_000 };
    // `BATON_BENCH_CALLGRIND_DIR` keeps the dumps there, for
    // `callgrind_annotate` (ARCHITECTURE.md, "Measuring the frame path").
    let kept = std::env::var_os("BATON_BENCH_CALLGRIND_DIR").map(PathBuf::from);
    let scratch = tempfile::tempdir()?;
    let out = kept.as_deref().unwrap_or(scratch.path());
    std::fs::create_dir_all(out)?;
    let config = baton_config(&valgrind_compiler(out)?);
    let mut rows = Vec::new();
    let mut counts = Vec::new();
    for payload in [64usize, 4096] {
        eprintln!("frames: {payload} B, {frames} round trips under callgrind, native then baton");
        let native = count(out, Server::Native, payload, frames).await?;
        let baton = count(out, Server::Baton(&config), payload, frames).await?;
        rows.push(Row::of([
            format!("{payload} B"),
            format!("{:.0}", native.per_frame),
            format!("{:.0}", baton.per_frame),
            ratio(baton.per_frame, native.per_frame),
        ]));
        counts.push((payload, native, baton));
    }
    eprintln!("frames: 64 B, {frames} round trips under callgrind, baton with baton.v1");
    let numbered = count(out, Server::BatonV1(&config), 64, frames).await?;
    let plain = &counts[0].2;
    rows.push(Row::of([
        "64 B, baton.v1".to_owned(),
        format!("{:.0}", counts[0].1.per_frame),
        format!("{:.0}", numbered.per_frame),
        ratio(numbered.per_frame, counts[0].1.per_frame),
    ]));
    report.section(
        "Instructions per echoed frame",
        &format!(
            "User-space instructions the server process executes per echoed frame, counted by \
             `valgrind --tool=callgrind` over exactly {frames} round trips ({CONNECTIONS} connections, one frame in \
             flight each, after {WARMUP} unmeasured round trips per connection). Everything in the process counts \
             (tokio workers, wakers, locks, the plugin call); system calls and context switches do not. Counts are \
             repeatable whatever else the machine does. Target: baton ≤ 1.5× native."
        ),
        &["frame", "native instr/frame", "baton instr/frame", "baton vs native"],
        rows,
    );
    report.note(&format!(
        "The resume protocol (`baton.v1`: numbered frames acknowledged both ways, each kept until the client \
         acknowledges it) costs {:.0} instructions per echoed 64 B frame over plain frames ({:+.1} %).",
        numbered.per_frame - plain.per_frame,
        (numbered.per_frame / plain.per_frame - 1.0) * 100.0
    ));
    let worst = counts
        .iter()
        .map(|(_, n, b)| b.per_frame / n.per_frame)
        .fold(0.0, f64::max);
    report.note(&if worst <= 1.5 {
        format!("Target met: at most {worst:.2}× native.")
    } else {
        format!(
            "Target missed: {worst:.2}× native. The plugin call alone (wasmtime's entry and exit, the fiber \
             switch, lowering the frame into the guest and lifting its `send` out, the guest's code) is about \
             two thirds of native's whole frame at 64 B, and at 4 KiB the frame is copied three times more than \
             native does (out of the codec, into the guest, out of the guest) and its UTF-8 checked once more. \
             Within 1.5× would take a call path cheaper than wasmtime 48's typed component call, or \
             frames lowered from the codec's buffer without a copy."
        )
    });
    if let Some((payload, _, baton)) = counts.first() {
        let mut rows = Vec::new();
        for (share, function) in baton.top.iter().take(TOP) {
            rows.push(Row::of([format!("{share:.1} %"), format!("`{function}`")]));
        }
        report.section(
            &format!("baton's per-frame profile ({payload} B)"),
            "The functions with the most instructions of their own (self cost) in the baton run above, \
             as a share of its total.",
            &["share", "function"],
            rows,
        );
    }
    Ok(())
}

/// What one counted run gave.
struct Counted {
    per_frame: f64,
    /// (share of the total in %, function), the largest self costs first.
    top: Vec<(f64, String)>,
}

/// Which server a count runs, and how its clients speak.
enum Server<'a> {
    /// The native echo server.
    Native,
    /// baton with the echo plugin and this configuration, plain frames.
    Baton(&'a str),
    /// The same, the clients speaking `baton.v1`.
    BatonV1(&'a str),
}

/// Starts a server under callgrind, runs `frames` counted round trips of
/// `payload` bytes, and reads the dump.
async fn count(dir: &Path, server: Server<'_>, payload: usize, frames: usize) -> Result<Counted> {
    let name = match server {
        Server::Native => "native",
        Server::Baton(_) => "baton",
        Server::BatonV1(_) => "baton-v1",
    };
    let prefix = dir.join(format!("{name}-{payload}"));
    let out_file = format!("--callgrind-out-file={}.%p", prefix.display());
    let wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--fair-sched=yes",
        out_file.as_str(),
    ];
    let echo = [("echo", baton_test_plugins::ECHO)];
    let (process, path) = match server {
        Server::Native => (Process::native_under(&wrapper).await?, "/"),
        Server::Baton(config) | Server::BatonV1(config) => {
            (Process::baton_under(&wrapper, &echo, config).await?, "/t/bench/echo")
        }
    };
    let pid = process.pid()?;
    let url = process.url(path);
    let frame: fn(u64) -> String = match payload {
        64 => |_| "x".repeat(64),
        _ => |_| "x".repeat(4096),
    };
    match server {
        Server::BatonV1(_) => {
            let mut sessions = crate::v1::open(&url, CONNECTIONS, frame).await?;
            counted_round_trips(pid, &mut sessions, frames).await?;
        }
        _ => {
            let sessions = load::open(&url, CONNECTIONS, 1).await?;
            let mut sessions: Vec<_> = sessions.into_iter().map(|ws| (ws, load::Plain(frame))).collect();
            counted_round_trips(pid, &mut sessions, frames).await?;
        }
    }
    drop(process);
    let dump = newest_dump(dir, &prefix, pid)?;
    let total = totals(&dump)?;
    let top = profile(&dump, total)?;
    Ok(Counted {
        per_frame: total as f64 / (frames / CONNECTIONS * CONNECTIONS) as f64,
        top,
    })
}

/// Warms up, then counts exactly `frames` round trips (spread over the
/// sessions) in the server `pid`, and dumps the counters.
async fn counted_round_trips<S: Speaker>(pid: u32, sessions: &mut [(load::Ws, S)], frames: usize) -> Result<()> {
    round_trips(sessions, WARMUP).await?;
    control(pid, &["-i", "on"])?;
    control(pid, &["-z"])?;
    round_trips(sessions, frames / CONNECTIONS).await?;
    control(pid, &["-d", "frames"])
}

/// `rounds` round trips on every session, one frame in flight each.
async fn round_trips<S: Speaker>(sessions: &mut [(load::Ws, S)], rounds: usize) -> Result<()> {
    let all = sessions.iter_mut().map(|(ws, speaker)| async move {
        for i in 0..rounds {
            ws.send(speaker.frame(i as u64)).await?;
            loop {
                match ws.next().await {
                    Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                        if speaker.answers(&message) {
                            break;
                        }
                    }
                    other => bail!("no echo: {other:?}"),
                }
            }
        }
        Ok(())
    });
    for result in futures_util::future::join_all(all).await {
        result?;
    }
    Ok(())
}

fn control(pid: u32, args: &[&str]) -> Result<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("callgrind_control {args:?} {pid} failed: {status}");
    }
    Ok(())
}

/// The dump `callgrind_control -d` wrote for `pid` (the last one).
fn newest_dump(dir: &Path, prefix: &Path, pid: u32) -> Result<PathBuf> {
    let stem = format!(
        "{}.{pid}",
        prefix.file_name().and_then(|n| n.to_str()).unwrap_or_default()
    );
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{stem}.")))
        })
        .collect();
    dumps.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    dumps
        .pop()
        .with_context(|| format!("no callgrind dump {stem}.* in {}", dir.display()))
}

/// The dump's total instruction count.
fn totals(dump: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(dump)?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no totals in {}", dump.display()))
}

/// The largest self costs of the dump, from `callgrind_annotate`.
fn profile(dump: &Path, total: u64) -> Result<Vec<(f64, String)>> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100"])
        .arg(dump)
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut top = Vec::new();
    for line in text.lines() {
        // `1,234,567 (12.34%)  file:function [object]`
        let line = line.trim();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        let function = rest
            .trim()
            .trim_start_matches(|c: char| c == '(' || c.is_ascii_digit() || c == '.' || c == '%' || c == ')')
            .trim();
        let function = function.split_once(':').map_or(function, |(_, f)| f);
        let function = function.split(" [").next().unwrap_or(function);
        if function.is_empty() || function.starts_with("PROGRAM TOTALS") || count == total {
            continue;
        }
        top.push((count as f64 * 100.0 / total.max(1) as f64, shorten(function)));
        if top.len() == TOP {
            break;
        }
    }
    Ok(top)
}

/// A demangled Rust path without its generic arguments and hash.
fn shorten(function: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in function.chars() {
        match c {
            '<' => {
                depth += 1;
                if depth == 1 {
                    out.push_str("<…>");
                }
            }
            '>' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    // A legacy-mangled symbol's hash: `::h` and 16 hex digits.
    let out = match out.rsplit_once("::h") {
        Some((path, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => path,
        _ => out.as_str(),
    };
    let mut text: String = out.chars().take(110).collect();
    if out.chars().count() > 110 {
        text.push('…');
    }
    text
}
