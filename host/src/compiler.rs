//! Compiling plugin files in a child process, under a memory and a time
//! budget.
//!
//! Compiling untrusted WebAssembly is the one thing the host does whose cost
//! the file decides: a crafted module of nested blocks takes Cranelift to
//! gigabytes and many seconds, and the allocator keeps what it took. So the
//! host never compiles a file itself. It starts its own executable again
//! (`/proc/self/exe`, the very binary that is running, even if a newer one
//! has been installed over it since) as `baton compile-worker`, writes the
//! file to its stdin, and waits, at most `runtime.compile_timeout_secs`.
//!
//! The worker limits itself: its memory to `runtime.compile_memory_mib`
//! (`RLIMIT_DATA`, heap and private mappings, so that reserved but unused
//! address space such as the allocator's per-thread arenas does not count),
//! its CPU time (a backstop, should the host die before it can kill the
//! worker), and no core dump. It builds an engine with the host's code
//! settings ([`crate::runtime::engine_config`]), checks that it agrees with
//! the host's engine, and writes the compiled artifact to the path it was
//! given. A worker over its budget, crashing or hanging costs the host
//! nothing but a refused deploy that says why.
//!
//! The artifact is then loaded by the host like any cached one: it is code
//! this same binary compiled, written into the host's own data folder.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::RuntimeConfig;
use crate::runtime::LoadError;

/// The exit code of a worker that refused the file (its reason on stderr).
const REFUSED: i32 = 2;
/// The exit code of a worker whose engine does not match the host's.
const MISMATCH: i32 = 3;
/// Most of a worker's stderr that is kept for the error.
const STDERR_KEPT: u64 = 16 << 10;

/// Starts compiler processes for one host.
pub struct Compiler {
    exe: PathBuf,
    runtime: RuntimeConfig,
    /// The host engine's compatibility hash, which the worker's must equal.
    engine: String,
}

impl Compiler {
    /// A compiler for a host whose engine has compatibility hash `engine`.
    pub fn new(runtime: &RuntimeConfig, engine: String) -> Compiler {
        let exe = runtime
            .compiler
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        Compiler {
            exe,
            runtime: runtime.clone(),
            engine,
        }
    }

    /// Compiles `bytes` in a worker process into an artifact at `output`.
    /// On any error nothing is left at `output`.
    pub async fn compile(&self, bytes: &[u8], output: &Path) -> Result<(), LoadError> {
        let result = self.run_worker(bytes, output).await;
        if result.is_err() {
            let _ = std::fs::remove_file(output);
        }
        result
    }

    async fn run_worker(&self, bytes: &[u8], output: &Path) -> Result<(), LoadError> {
        let runtime = serde_json::to_string(&self.runtime).map_err(|e| LoadError::Compiler(e.to_string()))?;
        let mut child = tokio::process::Command::new(&self.exe)
            .arg("compile-worker")
            .arg("--runtime")
            .arg(runtime)
            .arg("--engine")
            .arg(&self.engine)
            .arg("--output")
            .arg(output)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(LoadError::Spawn)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let feed = async move {
            // A worker that dies early closes the pipe: its exit says why.
            let _ = stdin.write_all(bytes).await;
            drop(stdin);
        };
        let drain = async move {
            let mut text = Vec::new();
            let _ = (&mut stderr).take(STDERR_KEPT).read_to_end(&mut text).await;
            // Whatever is beyond what is kept is read and dropped, so that
            // the worker never blocks on a full pipe.
            let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
            String::from_utf8_lossy(&text).into_owned()
        };
        let timeout = Duration::from_secs(self.runtime.compile_timeout_secs);
        let waited = tokio::time::timeout(timeout, async {
            let ((), text, status) = tokio::join!(feed, drain, child.wait());
            (text, status)
        })
        .await;
        let Ok((text, status)) = waited else {
            let _ = child.kill().await;
            return Err(LoadError::Budget(format!(
                "compiling took longer than runtime.compile_timeout_secs ({} s)",
                self.runtime.compile_timeout_secs
            )));
        };
        let status = status.map_err(|e| LoadError::Compiler(format!("cannot wait for the compiler: {e}")))?;
        self.verdict(status, &text)
    }

    /// What a worker's exit means.
    fn verdict(&self, status: ExitStatus, stderr: &str) -> Result<(), LoadError> {
        let reason = stderr.trim().lines().last().unwrap_or("").to_owned();
        match (status.code(), status.signal()) {
            (Some(0), _) => Ok(()),
            (Some(REFUSED), _) => Err(LoadError::Compile(reason)),
            (Some(MISMATCH), _) => Err(LoadError::Compiler(reason)),
            _ if stderr.contains("memory allocation of") => Err(LoadError::Budget(format!(
                "compiling needed more than runtime.compile_memory_mib ({} MiB)",
                self.runtime.compile_memory_mib
            ))),
            // SIGXCPU: the worker's own CPU backstop.
            (_, Some(24)) => Err(LoadError::Budget(format!(
                "compiling used more CPU time than runtime.compile_timeout_secs allows ({} s per core)",
                self.runtime.compile_timeout_secs
            ))),
            (_, Some(signal)) => Err(LoadError::Compiler(format!(
                "the compiler process died of signal {signal}: {reason}"
            ))),
            (Some(code), None) => Err(LoadError::Compiler(format!(
                "the compiler process exited with {code}: {reason}"
            ))),
            (None, None) => Err(LoadError::Compiler(format!("the compiler process ended: {reason}"))),
        }
    }
}

/// The worker's side: `baton compile-worker`. Reads a component from stdin,
/// compiles it under the budget of `runtime` and writes the artifact to
/// `output`. Exit 0 on success, [`REFUSED`] with the reason on stderr for a
/// file that is not a component, [`MISMATCH`] if this binary's engine is not
/// the one the host expects.
pub fn worker(runtime: &str, engine: &str, output: &Path) -> ExitCode {
    let runtime: RuntimeConfig = match serde_json::from_str(runtime) {
        Ok(runtime) => runtime,
        Err(e) => return fail(MISMATCH, &format!("cannot read the runtime settings: {e}")),
    };
    if let Err(e) = limit_self(&runtime) {
        return fail(MISMATCH, &format!("cannot set the compile budget: {e}"));
    }
    let compiler = match crate::runtime::compile_engine(&runtime) {
        Ok(engine) => engine,
        Err(e) => return fail(MISMATCH, &format!("cannot build the engine: {e:#}")),
    };
    let ours = crate::runtime::compatibility_hash(&compiler);
    if ours != engine {
        return fail(
            MISMATCH,
            &format!("the compiler's engine ({ours}) is not the host's ({engine}): a different build of baton"),
        );
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut bytes) {
        return fail(MISMATCH, &format!("cannot read the file from the host: {e}"));
    }
    let artifact = match compile_artifact(&compiler, &bytes) {
        Ok(artifact) => artifact,
        Err(LoadError::Compile(reason)) => return fail(REFUSED, &reason),
        Err(e) => return fail(MISMATCH, &e.to_string()),
    };
    drop(bytes);
    let written = std::fs::File::create(output).and_then(|mut file| {
        file.write_all(&artifact)?;
        file.sync_all()
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(MISMATCH, &format!("cannot write {}: {e}", output.display())),
    }
}

/// Compiles a component with `engine` into an artifact the host's engine
/// loads: what the worker does with the file.
pub fn compile_artifact(engine: &wasmtime::Engine, bytes: &[u8]) -> Result<Vec<u8>, LoadError> {
    engine
        .precompile_component(bytes)
        .map_err(|e| LoadError::Compile(format!("{e:#}")))
}

/// The worker's own limits: memory, CPU time (a backstop for a host
/// that died before it could kill the worker), and no core dump.
fn limit_self(runtime: &RuntimeConfig) -> std::io::Result<()> {
    use rlimit::Resource;
    let memory = runtime.compile_memory_mib << 20;
    Resource::DATA.set(memory, memory)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let cpu = runtime.compile_timeout_secs.saturating_mul(cores).saturating_add(1);
    Resource::CPU.set(cpu, cpu)?;
    Resource::CORE.set(0, 0)
}

fn fail(code: i32, message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(code as u8)
}
