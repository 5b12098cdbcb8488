//! A worker's inbox of QoS 0 messages published on other workers for the sessions of its
//! connections (the core's side and the reason: `tern_broker`'s `worker_post`). Posting
//! takes a lock and, when the inbox was empty, wakes the worker's inbox task once; the task
//! takes everything waiting in one swap and routes it on its own thread.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};

use tern_broker::{Broker, Posted, Wakeup, WorkerInbox};

use crate::connection::TaskWakeup;

/// Messages waiting in one inbox beyond which posts are refused (then dropped for that
/// worker's sessions, counted as a full queue): a worker that cannot keep up does not make the
/// others hold memory for it without end.
const MAX_MESSAGES: usize = 16 * 1024;
/// The same for their payload bytes.
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// Messages routed per turn of the inbox task before it lets the worker's connections run.
const TURN: usize = 256;

/// What waits; the bounds count it alone, not the batch the task is routing (so a worker
/// holds at most twice them).
#[derive(Default)]
struct Waiting {
    messages: Vec<Posted>,
    bytes: usize,
}

/// One worker's inbox.
#[derive(Default)]
pub(crate) struct Inbox {
    waiting: Mutex<Waiting>,
    wakeup: TaskWakeup,
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl WorkerInbox for Inbox {
    fn post(&self, posted: Posted) -> bool {
        let mut waiting = self.lock();
        let size = posted.message.payload.len();
        let was_empty = waiting.messages.is_empty();
        // An empty inbox takes any message (the largest packet allowed may be larger than the
        // byte bound): where a subscriber is must not decide whether it gets it.
        if !was_empty
            && (waiting.messages.len() >= MAX_MESSAGES || waiting.bytes + size > MAX_BYTES)
        {
            return false;
        }
        waiting.messages.push(posted);
        waiting.bytes += size;
        drop(waiting);
        if was_empty {
            self.wakeup.wake();
        }
        true
    }
}

/// The inbox task of worker `worker`: runs on that worker's event loop for as long as it runs.
pub(crate) async fn run(inbox: Arc<Inbox>, broker: Arc<Broker>, worker: u16) {
    let mut batch: Vec<Posted> = Vec::new();
    loop {
        poll_fn(|cx| inbox.wakeup.poll_woken(cx)).await;
        {
            let mut waiting = inbox.lock();
            std::mem::swap(&mut batch, &mut waiting.messages);
            waiting.bytes = 0;
        }
        let mut routed = 0;
        let now = std::time::Instant::now();
        for posted in batch.drain(..) {
            broker.deliver_posted(posted, worker, now);
            routed += 1;
            if routed % TURN == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
}
