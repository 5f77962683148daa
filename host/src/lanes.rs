//! Where tenant tasks run: on the socket workers while their calls are
//! short, on low-priority threads while a call runs long.
//!
//! A tenant task lives on the runtime that serves the sockets (the *home*
//! lane). A frame read by a socket worker then wakes the tenant on that same
//! worker (tokio's LIFO slot), and the plugin's answer wakes the session the
//! same way: no hand-off between threads or runtimes per frame. Measured
//! here, the split runtimes of before cost 0.75× native echo throughput on
//! 2 cores, and 0.41× on a busy machine (ARCHITECTURE.md, "Where plugin code
//! runs").
//!
//! A call that outlives [`LONG_CALL_TICKS`] epoch ticks would hold a socket
//! worker, so its tenant's [`Lane`] says "away": at the call's next yield
//! (every tick) the whole task moves to the *slow* lane, a runtime whose
//! threads run at the lowest OS priority (nice 19). There a runaway tenant
//! gets only the CPU nobody else wants: sessions, other tenants and the rest
//! of the machine go first. Once the long call ends, the task comes home at
//! its next wait. A task is one future, moved whole (wasmtime's fibers resume
//! on any thread, as tokio's work stealing already does to them), so calls
//! still run one at a time, in order, under the same budget.
//!
//! The slow lane's workers are `SCHED_IDLE` (nice 19 where that is refused):
//! with one tenant spinning, another tenant's p99 was 1.23× alone at nice 19
//! and 0.92× at `SCHED_IDLE` (two spinning: 1.15× and 0.93×). The cost is
//! priority inversion: a slow-lane thread preempted inside a lock others
//! need holds them up until a core is free. Its own tenant's locks are the
//! ones it takes; blocking work (storage) runs on the lane's blocking
//! threads, which keep their normal priority.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// A call that has run this many epoch ticks (1 ms each by default) moves
/// its tenant to the slow lane. The first tick comes anywhere within the
/// call's first tick interval, so this is 1–2 ticks of running.
pub const LONG_CALL_TICKS: u64 = 2;

/// The nice value of the slow lane's workers where `SCHED_IDLE` is refused.
const SLOW_NICE: i32 = 19;

/// Whether one tenant's task wants to be away from the socket workers: set
/// by the epoch callback of a long call, cleared when the call ends.
#[derive(Debug, Default)]
pub struct Lane {
    away: AtomicBool,
}

impl Lane {
    /// The running call is long: move to the slow lane at its next yield.
    pub fn call_is_long(&self) {
        self.away.store(true, Ordering::Relaxed);
    }

    /// The call ended; whether it had been long (the task should then yield
    /// once, so that it comes home before it goes on).
    pub fn call_ended(&self) -> bool {
        self.away.load(Ordering::Relaxed) && self.away.swap(false, Ordering::Relaxed)
    }

    fn wants_away(&self) -> bool {
        self.away.load(Ordering::Relaxed)
    }
}

/// A tenant task: one boxed future, so it can move between runtimes.
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The two lanes tenant tasks run on.
#[derive(Debug, Clone)]
pub struct Lanes {
    home: tokio::runtime::Handle,
    slow: tokio::runtime::Handle,
}

impl Lanes {
    /// Lanes with `home` (the socket runtime) and `slow` (see [`slow_runtime`]).
    pub fn new(home: tokio::runtime::Handle, slow: tokio::runtime::Handle) -> Lanes {
        Lanes { home, slow }
    }

    /// Starts `task` on the home lane; it moves to the slow lane whenever
    /// `lane` says so, and back.
    pub fn spawn(&self, lane: std::sync::Arc<Lane>, task: impl Future<Output = ()> + Send + 'static) {
        let slow = self.slow.clone();
        self.home.spawn(async move {
            let mut task: Task = Box::pin(task);
            loop {
                if run_until(&mut task, || lane.wants_away(), || {}).await {
                    return;
                }
                let away = lane.clone();
                let handle = slow.spawn(async move {
                    let finished = run_until(&mut task, || !away.wants_away(), lower_once).await;
                    (!finished).then_some(task)
                });
                let mut guard = AbortOnDrop(handle);
                // Cancelled (the slow lane shut down): the task is gone.
                match (&mut guard.0).await {
                    Ok(Some(back)) => task = back,
                    Ok(None) | Err(_) => return,
                }
            }
        });
    }
}

/// Polls `task` until it finishes (`true`) or, between two polls, `leave`
/// says it should move (`false`); `before` runs before each poll. Moved, it
/// is polled at once by its new runtime, which registers that runtime's
/// waker wherever it waits.
async fn run_until(task: &mut Task, leave: impl Fn() -> bool, before: impl Fn()) -> bool {
    poll_fn(|cx| {
        before();
        match task.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(true),
            Poll::Pending if leave() => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

thread_local! {
    static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lowers the calling slow-lane worker, once.
fn lower_once() {
    if !LOWERED.replace(true) {
        lower_this_thread();
    }
}

/// The slow lane's task ends with its home task.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The slow lane: as many workers as cores, each at the lowest OS priority.
/// Lowering one's own priority needs no privilege (raising it would).
pub fn slow_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name("baton-slow")
        // Only workers are lowered (blocking threads never park, and a
        // task moved here lowers the worker that polls it).
        .on_thread_park(lower_once)
        .enable_all()
        .build()
}

/// Puts the calling thread in `SCHED_IDLE`, or at nice 19 if refused.
fn lower_this_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    #[expect(
        unsafe_code,
        reason = "sched_setscheduler is a plain system call libc exposes as unsafe"
    )]
    // SAFETY: `param` is a valid `sched_param` for the duration of the call,
    // which only reads it; pid 0 is the calling thread.
    let idle = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
    if idle {
        return;
    }
    // On Linux a nice value is per thread: no pid is this one.
    if let Err(e) = rustix::process::setpriority_process(None, SLOW_NICE) {
        tracing::warn!("cannot lower the priority of a slow-lane thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    #[test]
    fn a_task_moves_to_the_slow_lane_while_away_and_comes_home() {
        let home = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("home")
            .enable_all()
            .build()
            .expect("home");
        let slow = slow_runtime().expect("slow");
        let lanes = Lanes::new(home.handle().clone(), slow.handle().clone());
        let lane = Arc::new(Lane::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (go, mut wait) = tokio::sync::mpsc::channel::<()>(1);
        let task_lane = lane.clone();
        lanes.spawn(lane.clone(), async move {
            tx.send(thread_name()).expect("send");
            task_lane.call_is_long();
            tokio::task::yield_now().await;
            tx.send(thread_name()).expect("send");
            #[expect(unsafe_code, reason = "sched_getscheduler is a plain system call")]
            // SAFETY: no arguments but the calling thread's pid 0.
            let policy = unsafe { libc::sched_getscheduler(0) };
            tx.send(policy.to_string()).expect("send");
            // As `Instance::call` does: the call ended long, so yield once;
            // that is where the task goes home.
            assert!(task_lane.call_ended());
            tokio::task::yield_now().await;
            wait.recv().await;
            tx.send(thread_name()).expect("send");
        });
        let seen: Vec<String> = (0..3).map(|_| rx.recv().expect("recv")).collect();
        assert_eq!(seen, ["home", "baton-slow", libc::SCHED_IDLE.to_string().as_str()]);
        home.block_on(go.send(())).expect("go");
        assert_eq!(rx.recv().expect("recv"), "home");
    }
}
