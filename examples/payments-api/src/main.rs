//! `payments-api`: the example resource server. Start Tollgate with its admin endpoint first
//! (see `examples/payments-api/tollgate.toml`), then:
//!
//!     payments-api --listen 127.0.0.1:8085 --tollgate http://127.0.0.1:9090 \
//!         --issuer https://tollgate.local --audience https://payments.local

use std::time::Duration;

use clap::Parser;

/// A payments API that accepts only Tollgate's per-call tokens.
#[derive(Debug, Parser)]
#[command(name = "payments-api", version, about)]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8085")]
    listen: String,
    /// Tollgate's admin endpoint, for its JWKS and revocation list.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    tollgate: String,
    /// Tollgate's `mint.issuer`.
    #[arg(long, default_value = "https://tollgate.local")]
    issuer: String,
    /// This service's audience, as Tollgate's upstream `credential.audience` names it.
    #[arg(long, default_value = "https://payments.local")]
    audience: String,
    /// The longest a revocation list is trusted before it is fetched again.
    #[arg(long, default_value_t = 10)]
    revocations_max_age_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    let mut settings = payments_api::Settings::new(&args.tollgate, &args.issuer, &args.audience);
    settings.revocations_max_age = Duration::from_secs(args.revocations_max_age_secs);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "payments-api is serving");
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    payments_api::serve(listener, settings, stop).await
}
