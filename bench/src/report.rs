//! The report: the machine, the versions, then one table per figure.

use std::fmt::Write;

/// A table row.
pub struct Row(Vec<String>);

impl Row {
    /// A row of cells.
    pub fn of<const N: usize>(cells: [String; N]) -> Row {
        Row(cells.to_vec())
    }
}

/// `a / b` as `1.23×`.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "–".into()
    } else {
        format!("{:.2}×", a / b)
    }
}

/// A markdown report.
pub struct Report {
    mode: String,
    sections: String,
}

impl Report {
    /// An empty report of a `quick` or `full` run.
    pub fn new(mode: &str) -> Report {
        Report {
            mode: mode.into(),
            sections: String::new(),
        }
    }

    /// Adds a section with a table.
    pub fn section(&mut self, title: &str, how: &str, header: &[&str], rows: Vec<Row>) {
        let s = &mut self.sections;
        let _ = writeln!(s, "## {title}\n\n{how}\n");
        let _ = writeln!(s, "| {} |", header.join(" | "));
        let _ = writeln!(s, "|{}|", header.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
        for Row(cells) in rows {
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        s.push('\n');
    }

    /// Adds a paragraph to the last section (targets met or missed, and why).
    pub fn note(&mut self, text: &str) {
        let _ = writeln!(self.sections, "{text}\n");
    }

    /// The whole report.
    pub fn render(&self) -> String {
        let mut out = String::from("# baton benchmarks\n\n");
        let _ = writeln!(
            out,
            "Made by `scripts/bench` (`cargo run --release -p baton-bench -- --write BENCHMARKS.md`), \
             a {} run. Every table compares figures measured side by side in the same run, servers \
             each in their own process and the load generator in another, all on loopback. Absolute \
             numbers on shared cores are noisy; ratios less so.\n",
            self.mode
        );
        let _ = writeln!(out, "Machine: {}\n", machine());
        out.push_str(&self.sections);
        out
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
                    .unwrap_or(0)
            })
        })
        .map(|kib| format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(0);
    format!(
        "{cpus} vCPU ({model}), {memory}, Linux {}, {rustc}, wasmtime 48.0.8, tokio-tungstenite 0.30, \
         file descriptors per process: {files}",
        kernel.trim()
    )
}
