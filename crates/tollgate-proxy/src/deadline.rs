//! Call deadlines kept by one task instead of a timer per call.
//!
//! Arming a runtime timer for every call costs a wake of the IO driver per call (the timer
//! wheel has to be told of a new entry), which on the fast path is a syscall and a spurious
//! poll of every ready source. Calls to one upstream share a timeout, so their deadlines
//! arrive in order: one task sleeps until the earliest, and is woken early only when a new
//! deadline comes before the time it sleeps until, which calls in order never do.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct Armed {
    by_time: BTreeMap<(Instant, u64), CancellationToken>,
    /// When the task wakes next by itself; `None` while it is awake.
    wakes_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Shared {
    armed: Mutex<Armed>,
    /// Wakes the task: a deadline earlier than all others was armed.
    sooner: Notify,
    next: AtomicU64,
    /// The `Deadlines` is gone: the task ends.
    closed: AtomicBool,
}

impl Shared {
    fn armed(&self) -> MutexGuard<'_, Armed> {
        self.armed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The deadlines of the calls in flight; the task that fires them starts with the first.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    shared: Arc<Shared>,
    task: OnceLock<()>,
}

/// One armed deadline: `expired` resolves when it passes; dropping it disarms it.
#[derive(Debug)]
pub(crate) struct Deadline {
    shared: Arc<Shared>,
    key: (Instant, u64),
    token: CancellationToken,
}

impl Deadline {
    /// Resolves once the deadline has passed.
    pub(crate) async fn expired(&self) {
        self.token.cancelled().await;
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        self.shared.armed().by_time.remove(&self.key);
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.sooner.notify_one();
    }
}

impl Deadlines {
    /// Arms a deadline `after` from now. Must be called inside the runtime.
    pub(crate) fn arm(&self, after: Duration) -> Deadline {
        self.task.get_or_init(|| {
            tokio::spawn(fire(self.shared.clone()));
        });
        let at = Instant::now() + after;
        let key = (at, self.shared.next.fetch_add(1, Ordering::Relaxed));
        let token = CancellationToken::new();
        let sooner = {
            let mut armed = self.shared.armed();
            armed.by_time.insert(key, token.clone());
            armed.wakes_at.is_some_and(|wakes| at < wakes)
        };
        if sooner {
            self.shared.sooner.notify_one();
        }
        Deadline {
            shared: self.shared.clone(),
            key,
            token,
        }
    }
}

/// Fires deadlines as they pass, sleeping until the earliest; ends with its `Deadlines`.
async fn fire(shared: Arc<Shared>) {
    /// How long the task sleeps with nothing armed before it looks again.
    const IDLE: Duration = Duration::from_secs(3600);
    while !shared.closed.load(Ordering::Relaxed) {
        let sooner = shared.sooner.notified();
        let now = Instant::now();
        let next = {
            let mut armed = shared.armed();
            while let Some(entry) = armed.by_time.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                entry.remove().cancel();
            }
            let next = armed
                .by_time
                .first_key_value()
                .map_or(now + IDLE, |((at, _), _)| *at);
            armed.wakes_at = Some(next);
            next
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = sooner => {}
        }
        shared.armed().wakes_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_fire_in_order_and_only_once_passed() {
        let deadlines = Deadlines::default();
        let late = deadlines.arm(Duration::from_millis(300));
        let early = deadlines.arm(Duration::from_millis(100));
        let started = Instant::now();
        early.expired().await;
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert!(!late.token.is_cancelled(), "a later deadline fired early");
        late.expired().await;
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_deadline_is_disarmed() {
        let deadlines = Deadlines::default();
        let gone = deadlines.arm(Duration::from_millis(50));
        drop(gone);
        assert!(deadlines.shared.armed().by_time.is_empty());
        let kept = deadlines.arm(Duration::from_millis(80));
        kept.expired().await;
        assert!(deadlines.shared.armed().by_time.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ends_with_its_deadlines() {
        let deadlines = Deadlines::default();
        let _armed = deadlines.arm(Duration::from_secs(60));
        let shared = Arc::downgrade(&deadlines.shared);
        drop(deadlines);
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        // The armed deadline still holds the state; the task does not.
        assert_eq!(shared.strong_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sooner_deadline_wakes_the_sleeping_task() {
        let deadlines = Deadlines::default();
        let _long = deadlines.arm(Duration::from_secs(60));
        tokio::task::yield_now().await;
        let started = Instant::now();
        let short = deadlines.arm(Duration::from_millis(20));
        short.expired().await;
        assert_eq!(started.elapsed(), Duration::from_millis(20));
    }
}
