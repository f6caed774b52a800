//! What the guard remembers between calls, behind one trait: each history's statistics,
//! minute windows and taints, the pack's session limits it used, the grants' limits spent, and
//! the sessions and grants held for review. [`MemoryStore`] keeps it in this process; a shared
//! store (many replicas) implements the same trait, and [`conformance`] is the behaviour every
//! implementation must show.
//!
//! Every method returns a future, because a shared store is a network hop away; one decision
//! reads what it needs in one call ([`Store::standing`]) and charges its limits in one call
//! ([`Store::charge`]), atomically with their check. A store that cannot answer makes the
//! guard refuse the call, never allow it.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Mutex};

use serde_json::{Map, Value};
use tollgate_policy::{
    ActionClass, Charge, Effect, Grant, LimitUse, SessionLimit, SessionStats, Usage,
    pack::CLASSES,
    provenance::{Index, Observed, Seen, ValueKey},
};

pub mod conformance;

/// Where a call's history is kept: its session's id, or for stateless requests a key of its
/// grant's (the guard chooses it).
pub type HistoryKey = u64;

/// What a store answers, later.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The store could not answer; the call it was asked for is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the guard's store cannot be reached: {0}")]
    Unavailable(String),
}

/// Why and since when a session is held for review.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Quarantine {
    /// The history key (the session, or for stateless requests the grant's).
    pub session: String,
    pub grant: Option<String>,
    pub since: i64,
    pub policies: Vec<String>,
    pub reason: String,
}

/// Everything one decision reads of a history, as of its time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Standing {
    pub stats: SessionStats,
    /// The labels the history picked up (sorted, each once).
    pub taint: Vec<String>,
    /// The history, or the grant it runs under, is held for review.
    pub held: Option<Quarantine>,
    /// What the grant's limits have spent so far (only this grant's).
    pub usage: Usage,
    /// What the history's index of values knows of each value the call was asked about, in
    /// the order asked.
    pub seen: Vec<Option<Seen>>,
    /// The index had to drop a value untrusted content carried: an unseen value may be one.
    pub index_incomplete: bool,
}

/// A decided call, as its history keeps it.
#[derive(Debug, Clone)]
pub struct Decided<'a> {
    pub key: HistoryKey,
    pub now: i64,
    pub grant: Option<&'a str>,
    pub effect: Effect,
    pub class: ActionClass,
    /// Labels an allowed call marks its history with.
    pub taints: &'a [String],
    /// A denial that holds the history (and its grant) for review.
    pub quarantine: Option<Quarantine>,
    /// When a history kept for stateless requests may be forgotten; none for a session's,
    /// which is forgotten when the session ends.
    pub forget_after: Option<i64>,
}

/// What recording a call changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changed {
    /// Labels the history did not have before.
    pub tainted: Vec<String>,
    /// The history was held for review by this call.
    pub quarantined: bool,
}

/// What an allowed call spends: the pack's session limits that apply to it, and its grant's.
#[derive(Debug, Clone, Copy)]
pub struct Charges<'a> {
    pub key: HistoryKey,
    pub session: &'a [&'a SessionLimit],
    pub arguments: Option<&'a Map<String, Value>>,
    pub grant: Option<(&'a Grant, &'a [Charge])>,
    /// Unix seconds, fractional (token buckets refill by it).
    pub now: f64,
}

/// The answer to [`Store::charge`].
#[derive(Debug, Clone, PartialEq)]
pub enum Charged {
    /// Everything was charged.
    Done,
    /// Nothing was charged: the limit `policy` refuses the call, for `reason`.
    Refused { policy: String, reason: String },
}

/// What the guard remembers between calls.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// What stands for a call of `key`'s history under `grant` at `now`: its statistics, its
    /// taints, whether it or `grant` is held for review, and what `grant`'s limits have spent.
    /// With it, what the history's index of values knows of each of `values` (the call's
    /// arguments' values), read in the same step.
    fn standing<'a>(
        &'a self,
        key: HistoryKey,
        grant: Option<&'a Grant>,
        now: i64,
        values: &'a [ValueKey],
    ) -> Pending<'a, Standing>;

    /// Adds the values a result carried to the history's index (bounded; it drops the values
    /// used least recently, trusted ones first). Done before the agent sees the result.
    fn note<'a>(&'a self, key: HistoryKey, observed: &'a Observed) -> Pending<'a, ()>;

    /// Records a decided call in its history.
    fn record<'a>(&'a self, decided: Decided<'a>) -> Pending<'a, Changed>;

    /// Charges an allowed call to the session limits that apply to it and then to its grant's
    /// limits, atomically with their check, so that two calls at once cannot both spend the
    /// last of a budget; when any refuses, nothing is charged.
    fn charge<'a>(&'a self, charges: Charges<'a>) -> Pending<'a, Charged>;

    /// The sessions and grants held for review, oldest first.
    fn quarantined(&self) -> Pending<'_, Vec<Quarantine>>;

    /// Releases the history held for review that [`Quarantine::session`] names: its recent
    /// denials are forgotten and its calls decided again. False when it is not held.
    fn release<'a>(&'a self, session: &'a str) -> Pending<'a, bool>;

    /// Forgets a history (its session ended).
    fn forget(&self, key: HistoryKey) -> Pending<'_, ()>;
}

/// Calls counted per second over the last 60 seconds: a fixed 248 bytes however many calls a
/// session makes.
#[derive(Debug, Clone)]
pub struct MinuteWindow {
    counts: [u32; 60],
    /// The second the newest count belongs to.
    last: i64,
}

impl Default for MinuteWindow {
    fn default() -> Self {
        Self {
            counts: [0; 60],
            last: 0,
        }
    }
}

impl MinuteWindow {
    /// Forgets the seconds that have left the window by `now`.
    fn advance(&mut self, now: i64) {
        if now <= self.last {
            return;
        }
        let gone = (now - self.last).min(60);
        for step in 1..=gone {
            let slot = usize::try_from((self.last + step).rem_euclid(60)).unwrap_or(0);
            if let Some(count) = self.counts.get_mut(slot) {
                *count = 0;
            }
        }
        self.last = now;
    }

    pub fn add(&mut self, now: i64) {
        self.advance(now);
        let slot = usize::try_from(now.rem_euclid(60)).unwrap_or(0);
        if let Some(count) = self.counts.get_mut(slot) {
            *count = count.saturating_add(1);
        }
    }

    /// Calls in the 60 seconds up to `now` (the current second included).
    pub fn total(&mut self, now: i64) -> u64 {
        self.advance(now);
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }

    /// Calls in the `seconds` (at most 60) up to `now`, the current second included.
    pub fn last(&mut self, now: i64, seconds: i64) -> u64 {
        self.advance(now);
        (0..seconds.clamp(0, 60))
            .filter_map(|back| {
                let slot = usize::try_from((now - back).rem_euclid(60)).ok()?;
                self.counts.get(slot).map(|c| u64::from(*c))
            })
            .sum()
    }
}

/// One history, in memory.
#[derive(Debug, Default)]
struct History {
    stats: SessionStats,
    recent: MinuteWindow,
    denied_recent: MinuteWindow,
    quarantined: Option<Quarantine>,
    /// Its use of the pack's session limits, by limit id.
    limits: HashMap<String, LimitUse>,
    taint: Vec<String>,
    forget_after: Option<i64>,
    /// When its first call came, for its average rate.
    started: Option<i64>,
    /// The values its results carried, and where from.
    index: Index,
}

/// Histories kept for stateless requests before the expired ones are swept.
const SWEEP_AT: usize = 4096;

/// The embedded default: everything in this process's memory, gone when it stops.
#[derive(Debug, Default)]
pub struct MemoryStore {
    histories: Mutex<HashMap<HistoryKey, History>>,
    held_grants: Mutex<HashMap<String, Quarantine>>,
    usage: Mutex<Usage>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ready<'a, T: Send + 'a>(value: T) -> Pending<'a, T> {
    Box::pin(std::future::ready(Ok(value)))
}

impl MemoryStore {
    /// Histories kept, for metrics.
    pub fn histories(&self) -> usize {
        locked(&self.histories).len()
    }

    fn read(
        &self,
        key: HistoryKey,
        grant: Option<&Grant>,
        now: i64,
        values: &[ValueKey],
    ) -> Standing {
        let (stats, taint, mut held, seen, index_incomplete) = {
            let mut histories = locked(&self.histories);
            let history = histories.entry(key).or_default();
            let mut stats = history.stats.clone();
            stats.calls_last_minute = history.recent.total(now);
            stats.calls_last_10s = history.recent.last(now, 10);
            stats.denials_last_minute = history.denied_recent.total(now);
            let age = now - *history.started.get_or_insert(now);
            stats.per_minute = stats.calls * 60 / u64::try_from(age.max(60)).unwrap_or(60);
            let seen = if values.is_empty() || history.index.is_empty() {
                vec![None; values.len()]
            } else {
                history.index.look_up(values)
            };
            (
                stats,
                history.taint.clone(),
                history.quarantined.clone(),
                seen,
                !history.index.complete(),
            )
        };
        if held.is_none()
            && let Some(grant) = grant
        {
            held = locked(&self.held_grants).get(&grant.id).cloned();
        }
        // Only this grant's limits are read; the rest of the usage (every grant's) stays put.
        let usage = match grant {
            Some(grant) if !grant.limits.is_empty() => {
                let all = locked(&self.usage);
                grant
                    .limits
                    .iter()
                    .filter_map(|limit| {
                        let key = (limit.scope.clone(), limit.key());
                        all.get(&key).map(|spent| (key, *spent))
                    })
                    .collect()
            }
            _ => Usage::new(),
        };
        Standing {
            stats,
            taint,
            held,
            usage,
            seen,
            index_incomplete,
        }
    }

    fn write(&self, decided: &Decided<'_>) -> Changed {
        let mut changed = Changed::default();
        let mut histories = locked(&self.histories);
        if decided.forget_after.is_some() && histories.len() >= SWEEP_AT {
            histories.retain(|_, h| h.forget_after.is_none_or(|t| t > decided.now));
        }
        let history = histories.entry(decided.key).or_default();
        if decided.forget_after.is_some() {
            history.forget_after = decided.forget_after;
        }
        history.stats.calls += 1;
        history.recent.add(decided.now);
        match decided.effect {
            Effect::Allow => {
                if let Some(slot) = CLASSES
                    .iter()
                    .position(|c| *c == decided.class)
                    .and_then(|i| history.stats.by_class.get_mut(i))
                {
                    *slot += 1;
                }
                // A call that goes ahead marks the history with what it touches, whatever it
                // returns: a failed read of untrusted content may still have shown some of it.
                for label in decided.taints {
                    if let Err(at) = history.taint.binary_search(label) {
                        history.taint.insert(at, label.clone());
                        changed.tainted.push(label.clone());
                    }
                }
            }
            Effect::Deny => {
                history.stats.denials += 1;
                history.denied_recent.add(decided.now);
                if let Some(held) = &decided.quarantine
                    && history.quarantined.is_none()
                {
                    // A new session under the same grant must not escape it.
                    if let Some(grant) = &held.grant {
                        locked(&self.held_grants).insert(grant.clone(), held.clone());
                    }
                    history.quarantined = Some(held.clone());
                    changed.quarantined = true;
                }
            }
            // A call held for approval is not a denial (its answer is recorded when it comes).
            Effect::NeedsApproval => {}
        }
        changed
    }

    fn spend(&self, charges: &Charges<'_>) -> Charged {
        // Both locks for the whole charge: the session limits and the grant's are one step.
        let mut histories = locked(&self.histories);
        let mut usage = locked(&self.usage);
        let history = histories.entry(charges.key).or_default();
        let mut next: Vec<(String, LimitUse)> = Vec::with_capacity(charges.session.len());
        for limit in charges.session {
            let mut used = history.limits.get(&limit.id).cloned().unwrap_or_default();
            if let Err(reason) = limit.charge(&mut used, charges.arguments, charges.now) {
                return Charged::Refused {
                    policy: format!("tollgate:limit:{}", limit.id),
                    reason,
                };
            }
            next.push((limit.id.clone(), used));
        }
        if let Some((grant, spent)) = charges.grant
            && !spent.is_empty()
        {
            if let Err(e) = grant.check_limits(&usage, spent) {
                return Charged::Refused {
                    policy: tollgate_policy::decide::step::GRANT.to_owned(),
                    reason: e.to_string(),
                };
            }
            for charge in spent {
                *usage
                    .entry((charge.scope.clone(), charge.key.clone()))
                    .or_insert(0.0) += charge.amount;
            }
        }
        history.limits.extend(next);
        Charged::Done
    }

    fn held(&self) -> Vec<Quarantine> {
        let mut held: Vec<Quarantine> = locked(&self.held_grants).values().cloned().collect();
        for q in locked(&self.histories)
            .values()
            .filter_map(|h| h.quarantined.clone())
        {
            if !held.iter().any(|h| h.session == q.session) {
                held.push(q);
            }
        }
        held.sort_by(|a, b| {
            a.since
                .cmp(&b.since)
                .then_with(|| a.session.cmp(&b.session))
        });
        held
    }

    fn let_go(&self, session: &str) -> bool {
        let mut released = false;
        if let Ok(key) = session.parse::<HistoryKey>()
            && let Some(history) = locked(&self.histories).get_mut(&key)
            && history.quarantined.take().is_some()
        {
            history.denied_recent = MinuteWindow::default();
            released = true;
        }
        let mut grants = locked(&self.held_grants);
        let before = grants.len();
        grants.retain(|_, held| held.session != session);
        released || grants.len() != before
    }
}

impl Store for MemoryStore {
    fn standing<'a>(
        &'a self,
        key: HistoryKey,
        grant: Option<&'a Grant>,
        now: i64,
        values: &'a [ValueKey],
    ) -> Pending<'a, Standing> {
        ready(self.read(key, grant, now, values))
    }

    fn note<'a>(&'a self, key: HistoryKey, observed: &'a Observed) -> Pending<'a, ()> {
        if !observed.values.is_empty() || observed.truncated {
            locked(&self.histories)
                .entry(key)
                .or_default()
                .index
                .add(observed);
        }
        ready(())
    }

    fn record<'a>(&'a self, decided: Decided<'a>) -> Pending<'a, Changed> {
        ready(self.write(&decided))
    }

    fn charge<'a>(&'a self, charges: Charges<'a>) -> Pending<'a, Charged> {
        ready(self.spend(&charges))
    }

    fn quarantined(&self) -> Pending<'_, Vec<Quarantine>> {
        ready(self.held())
    }

    fn release<'a>(&'a self, session: &'a str) -> Pending<'a, bool> {
        ready(self.let_go(session))
    }

    fn forget(&self, key: HistoryKey) -> Pending<'_, ()> {
        locked(&self.histories).remove(&key);
        ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_passes_the_conformance_suite() {
        conformance::run(&|| Box::new(MemoryStore::default()) as Box<dyn Store>).await;
    }

    #[test]
    fn the_minute_window_counts_the_last_sixty_seconds() {
        let mut w = MinuteWindow::default();
        for t in 1000..1010 {
            w.add(t);
            w.add(t);
        }
        assert_eq!(w.total(1009), 20);
        assert_eq!(w.total(1059), 20, "all ten seconds are still inside");
        assert_eq!(w.total(1064), 10, "the first five seconds left");
        assert_eq!(w.total(2000), 0, "long idle");
        w.add(2000);
        assert_eq!(w.total(2000), 1);
        assert!(std::mem::size_of::<MinuteWindow>() <= 256);
    }

    #[test]
    fn the_last_ten_seconds_are_a_part_of_the_window() {
        let mut w = MinuteWindow::default();
        for t in 1000..1030 {
            w.add(t);
        }
        assert_eq!(w.last(1029, 10), 10, "1020..=1029");
        assert_eq!(w.last(1035, 10), 4, "1026..=1029, nothing since");
        assert_eq!(w.total(1035), 30);
        assert_eq!(w.last(1100, 10), 0, "long idle");
    }
}
