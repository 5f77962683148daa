//! Reading the client only once it can have something: the session loop
//! waits on several things at once, and polling the WebSocket codec when
//! nothing arrived is not free (tungstenite zero-fills its 4 KiB read buffer
//! before every read attempt: a third of a frame's instructions on the
//! native echo server, measured with callgrind).
//!
//! [`ReadWake`] is the waker the stream is polled with: it notes that the
//! stream woke, then wakes the session's task. The stream is polled again
//! only after such a wake, or after it gave an item (it may hold more).

use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use futures_util::{Stream, StreamExt};

/// Whether the client's stream may have something, and the task to wake.
#[derive(Debug)]
pub(super) struct ReadWake {
    ready: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// The stream of one session, polled as described in the module doc.
pub(super) struct Reader {
    wake: Arc<ReadWake>,
    waker: Waker,
}

impl Reader {
    /// A reader whose first poll reads.
    pub(super) fn new() -> Reader {
        let wake = Arc::new(ReadWake {
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Reader {
            waker: Waker::from(wake.clone()),
            wake,
        }
    }

    /// The next item of `stream`, polled only when it may have one.
    pub(super) fn next<'a, R>(&'a self, stream: &'a mut R) -> impl Future<Output = Option<R::Item>> + 'a
    where
        R: Stream + Unpin,
    {
        poll_fn(move |cx| {
            self.wake.task.register(cx.waker());
            if !self.wake.ready.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            match stream.poll_next_unpin(&mut Context::from_waker(&self.waker)) {
                Poll::Ready(item) => {
                    // It may hold more: look again next time.
                    self.wake.ready.store(true, Ordering::Release);
                    Poll::Ready(item)
                }
                Poll::Pending => Poll::Pending,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_stream_is_polled_again_only_after_it_woke_or_gave_an_item() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let mut rx = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let reader = Reader::new();
        assert!(reader.next(&mut rx).now_or_never().is_none(), "nothing sent");
        tx.send(1).expect("send");
        // The channel woke the reader's waker: the next poll reads.
        assert_eq!(reader.next(&mut rx).await, Some(1));
        tx.send(2).expect("send");
        tx.send(3).expect("send");
        assert_eq!(reader.next(&mut rx).await, Some(2));
        assert_eq!(reader.next(&mut rx).await, Some(3), "polled again after an item");
        drop(tx);
        assert_eq!(reader.next(&mut rx).await, None);
    }
}
