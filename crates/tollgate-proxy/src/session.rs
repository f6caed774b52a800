//! The session table: every connected agent, its peer handle, log level and resource
//! subscriptions, so that notifications from upstreams reach the sessions they concern.

#![expect(
    deprecated,
    reason = "sampling, roots, logging and resource subscriptions are deprecated upstream but clients still use them; a faithful relay carries them"
)]

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use rmcp::{
    RoleServer,
    model::{LoggingLevel, LoggingMessageNotificationParam},
    service::Peer,
};

/// Identifies one agent connection inside this process.
pub type SessionId = u64;

#[derive(Debug)]
struct Entry {
    peer: Peer<RoleServer>,
    log_level: Option<LoggingLevel>,
    subscriptions: HashSet<String>,
}

/// All connected agent sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    entries: Mutex<HashMap<SessionId, Entry>>,
}

fn level_rank(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

impl Sessions {
    /// A fresh session id.
    pub fn allocate(&self) -> SessionId {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn with<R>(&self, f: impl FnOnce(&mut HashMap<SessionId, Entry>) -> R) -> R {
        // A poisoned lock only means another thread panicked mid-update of plain data;
        // the map is still usable.
        let mut guard = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Records the peer of a session that can receive notifications.
    pub fn register(&self, id: SessionId, peer: &Peer<RoleServer>) {
        self.with(|m| {
            m.entry(id).or_insert_with(|| Entry {
                peer: peer.clone(),
                log_level: None,
                subscriptions: HashSet::new(),
            });
        });
    }

    /// The peer of a session that has registered one.
    pub fn peer(&self, id: SessionId) -> Option<Peer<RoleServer>> {
        self.with(|m| m.get(&id).map(|e| e.peer.clone()))
    }

    /// Every registered session.
    pub fn ids(&self) -> Vec<SessionId> {
        self.with(|m| m.keys().copied().collect())
    }

    pub fn remove(&self, id: SessionId) {
        self.with(|m| m.remove(&id));
    }

    pub fn len(&self) -> usize {
        self.with(|m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn set_log_level(&self, id: SessionId, level: LoggingLevel) {
        self.with(|m| {
            if let Some(e) = m.get_mut(&id) {
                e.log_level = Some(level);
            }
        });
    }

    /// The most verbose log level any session asked for: shared upstreams log at that level
    /// and each session's own level is applied on the way out.
    pub fn most_verbose_level(&self) -> Option<LoggingLevel> {
        self.with(|m| {
            m.values()
                .filter_map(|e| e.log_level)
                .min_by_key(|l| level_rank(*l))
        })
    }

    pub fn subscribe(&self, id: SessionId, uri: &str) {
        self.with(|m| {
            if let Some(e) = m.get_mut(&id) {
                e.subscriptions.insert(uri.to_owned());
            }
        });
    }

    pub fn unsubscribe(&self, id: SessionId, uri: &str) {
        self.with(|m| {
            if let Some(e) = m.get_mut(&id) {
                e.subscriptions.remove(uri);
            }
        });
    }

    /// Peers of every session.
    pub fn all_peers(&self) -> Vec<Peer<RoleServer>> {
        self.with(|m| m.values().map(|e| e.peer.clone()).collect())
    }

    /// Peers of the sessions subscribed to `uri`.
    pub fn subscribers(&self, uri: &str) -> Vec<Peer<RoleServer>> {
        self.with(|m| {
            m.values()
                .filter(|e| e.subscriptions.contains(uri))
                .map(|e| e.peer.clone())
                .collect()
        })
    }

    /// Peers among `ids` (all sessions when `None`) whose log level lets `message` through
    /// (sessions that never set a level receive everything, as a direct connection would).
    pub fn log_receivers(
        &self,
        ids: Option<&HashSet<SessionId>>,
        message: &LoggingMessageNotificationParam,
    ) -> Vec<Peer<RoleServer>> {
        let rank = level_rank(message.level);
        self.with(|m| {
            m.iter()
                .filter(|(id, _)| ids.is_none_or(|ids| ids.contains(id)))
                .filter(|(_, e)| e.log_level.is_none_or(|l| rank >= level_rank(l)))
                .map(|(_, e)| e.peer.clone())
                .collect()
        })
    }
}
