//! Runs the fixture server: `tollgate-fixture stdio [NAME]` or `tollgate-fixture http ADDR [NAME]`.

use std::sync::Arc;

use tollgate_testkit::fixture::{Fixture, FixtureState};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let state = Arc::new(FixtureState::default());
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["stdio", rest @ ..] => {
            let name = rest
                .first()
                .copied()
                .unwrap_or("tollgate-fixture")
                .to_owned();
            tollgate_testkit::serve_stdio(Fixture::new(name, state)).await
        }
        ["http", addr, rest @ ..] => {
            let name = rest
                .first()
                .copied()
                .unwrap_or("tollgate-fixture")
                .to_owned();
            let addr = addr.parse().map_err(std::io::Error::other)?;
            let shutdown = tokio_util::sync::CancellationToken::new();
            let local = tollgate_testkit::serve_http(
                addr,
                move || Fixture::new(name.clone(), state.clone()),
                shutdown.clone(),
            )
            .await?;
            println!("listening on http://{local}/mcp");
            tokio::signal::ctrl_c().await?;
            shutdown.cancel();
            Ok(())
        }
        _ => {
            eprintln!("usage: tollgate-fixture stdio [NAME] | tollgate-fixture http ADDR [NAME]");
            std::process::exit(2);
        }
    }
}
