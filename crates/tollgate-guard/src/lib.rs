//! The guard at Tollgate's interception point: it checks each call's grant, decides it with the
//! policy pack, holds it for approval, mints or exchanges its credential and records it in the
//! audit trail; and the admin endpoint over the same state. It knows no MCP framing: the proxy
//! hands it calls through the `Interceptor` seam.

pub mod admin;
pub mod audit;
pub mod exchange;
pub mod guard;
pub mod metrics;
pub mod otlp;
pub mod pack_files;
pub mod store;

use std::sync::Arc;

use tollgate_proxy::{Config, Proxy, intercept::Interceptor};

pub use guard::{Closed, GuardError, PolicyGuard, from_config, watch};

/// The interceptor `config` asks for; a policy that cannot be loaded refuses every call (use
/// [`from_config`] first to stop on it instead).
pub fn interceptor(config: &Config) -> Arc<dyn Interceptor> {
    from_config(config).unwrap_or_else(|error| {
        tracing::error!(%error, "policy cannot be loaded; every tool call is refused");
        Arc::new(Closed {
            reason: "Tollgate's policy could not be loaded".to_owned(),
        })
    })
}

/// Starts Tollgate as `config` says, with the guard it asks for at the interception point.
pub async fn start(config: Config) -> Proxy {
    let interceptor = interceptor(&config);
    Proxy::start_with(config, interceptor).await
}
