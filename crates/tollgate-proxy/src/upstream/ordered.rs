//! Keeps an upstream's progress notifications ahead of the response they precede.
//!
//! rmcp hands each incoming notification to a task of its own but resolves responses in its
//! read loop, so a call's last progress notification can lose the race against the call's
//! response and reach the agent after it (agents drop progress for finished requests). This
//! transport wrapper counts progress notifications in wire order as they are read; the relay
//! waits for a call's count to drain before it answers the agent.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rmcp::{
    RoleClient,
    model::{JsonRpcMessage, JsonRpcNotification, ProgressToken, ServerNotification},
    service::{RxJsonRpcMessage, TxJsonRpcMessage},
    transport::Transport,
};
use tokio::sync::Notify;

/// Progress notifications read from the wire but not yet relayed, per upstream progress token.
#[derive(Debug, Default)]
pub(crate) struct PendingProgress {
    counts: std::sync::Mutex<HashMap<ProgressToken, usize>>,
    drained: Notify,
}

impl PendingProgress {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<ProgressToken, usize>> {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self, token: &ProgressToken) {
        *self.counts().entry(token.clone()).or_default() += 1;
    }

    /// One notification for `token` has been relayed (or deliberately dropped).
    pub(crate) fn relayed(&self, token: &ProgressToken) {
        let mut counts = self.counts();
        if let Some(n) = counts.get_mut(token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(token);
            }
        }
        drop(counts);
        self.drained.notify_waiters();
    }

    /// Waits until every notification read for `token` has been relayed, at most `limit`.
    pub(crate) async fn drain(&self, token: &ProgressToken, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.drained.notified();
                if !self.counts().contains_key(token) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

/// Wraps an upstream transport to count progress notifications in the order they arrive.
pub(crate) struct Ordered<T> {
    inner: T,
    pending: Arc<PendingProgress>,
}

impl<T> Ordered<T> {
    pub(crate) fn new(inner: T, pending: Arc<PendingProgress>) -> Self {
        Self { inner, pending }
    }
}

impl<T: Transport<RoleClient>> Transport<RoleClient> for Ordered<T> {
    type Error = T::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let message = self.inner.receive().await;
        if let Some(JsonRpcMessage::Notification(JsonRpcNotification {
            notification: ServerNotification::ProgressNotification(progress),
            ..
        })) = &message
        {
            self.pending.read(&progress.params.progress_token);
        }
        message
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}
