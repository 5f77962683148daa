//! Returning freed heap memory to the operating system after a burst.
//!
//! glibc's allocator keeps what it freed: after a client that asked for a
//! burst of large frames leaves, the host's resident memory stays at its peak
//! (1 GiB of frames of a slow consumer stayed resident after it left). Every
//! [`INTERVAL`] the host reads how many free bytes the allocator holds
//! (`mallinfo2`) and, when that grew by more than [`THRESHOLD`] since its
//! lowest point after the last trim (memory freed and not reused since), asks
//! it to give free pages back (`malloc_trim`, off the async runtime). A host
//! that is not bursting never trims: its free bytes do not grow.
//!
//! Only with glibc; elsewhere this does nothing.

use std::time::Duration;

use tokio::sync::watch;

use crate::shutdown::stopped;

/// How often the allocator's free bytes are read.
const INTERVAL: Duration = Duration::from_secs(2);
/// Free bytes beyond their low point that make a trim worth it.
const THRESHOLD: usize = 32 << 20;

/// Trims until `stop` says the host stops.
pub async fn run(mut stop: watch::Receiver<bool>) {
    let mut low = free_bytes();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
        let free = free_bytes();
        low = low.min(free);
        if free.saturating_sub(low) > THRESHOLD {
            let _ = tokio::task::spawn_blocking(release).await;
            metrics::counter!("baton_memory_trims_total").increment(1);
            low = free_bytes();
        }
    }
}

/// Bytes the allocator holds free (not returned to the system).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics; it takes the
    // allocator's own locks and has no preconditions.
    #[expect(unsafe_code, reason = "glibc's allocator statistics have no safe wrapper")]
    let info = unsafe { libc::mallinfo2() };
    info.fordblks
}

/// Gives the allocator's free pages back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() {
    // SAFETY: malloc_trim only returns unused pages of the allocator's free
    // lists to the kernel; it takes the allocator's own locks.
    #[expect(unsafe_code, reason = "glibc's allocator trim has no safe wrapper")]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn free_bytes() -> usize {
    0
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}
