//! Keeping the guard current while it runs: the pack (and the lock file of pins) reloaded on
//! SIGHUP or when the pack's files change, the signing keys reread and rotated on schedule.

use std::sync::Arc;

use tracing::{info, warn};

use super::PolicyGuard;
use crate::pack_files;

/// Reloads `guard`'s pack on SIGHUP and, when `watch` is set and the pack is a folder, when
/// its files change (checked every `interval`). A pack that fails to compile is logged and
/// the current one keeps deciding.
pub async fn watch(
    guard: Arc<PolicyGuard>,
    watch: bool,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; reload on file change only");
            None
        }
    };
    let dir = guard.pack_dir().map(ToOwned::to_owned);
    let mut last = dir.as_deref().and_then(pack_files::stamp);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let reason = tokio::select! {
            () = stop.cancelled() => return,
            _ = hup => "SIGHUP",
            _ = tick.tick() => {
                guard.keep_keys(tollgate_mint::unix_now());
                if !watch {
                    continue;
                }
                let Some(dir) = dir.as_deref() else { continue };
                let now = pack_files::stamp(dir);
                if now == last {
                    continue;
                }
                last = now;
                "file change"
            }
        };
        if reason == "SIGHUP"
            && let Some(minter) = &guard.credentials.minter
            && let Err(error) = minter.refresh(tollgate_mint::unix_now() + 1)
        {
            warn!(%error, "the signing keyring cannot be reread; the keys in use keep signing");
        }
        match guard.reload() {
            Ok(version) => info!(%version, reason, "policy pack now deciding"),
            Err(error) => {
                warn!(%error, reason, "new policy pack rejected; the previous version keeps deciding")
            }
        }
    }
}
