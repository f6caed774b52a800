//! `tollgate keys list|rotate`: the per-call signing keys in the state folder. A running
//! Tollgate on the same folder signs with a rotated key from its next call on.

use std::path::PathBuf;

use clap::Subcommand;
use tollgate_mint::{AccessKeys, Algorithm, KeyState};

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Show every signing key: its trust path, algorithm, `kid` and state.
    List {
        #[command(flatten)]
        keys: KeysArgs,
    },
    /// Rotate now: on every path the published next key starts signing, the current one
    /// retires (still published until the tokens it signed have expired), and a new next
    /// key is published.
    Rotate {
        #[command(flatten)]
        keys: KeysArgs,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct KeysArgs {
    /// The state folder holding the keys.
    #[arg(long, value_name = "DIR", default_value_os_t = tollgate_proxy::config::default_state_dir(), env = "TOLLGATE_STATE")]
    state: PathBuf,
    /// The algorithm the keys are for, as in `mint.algorithm`: ES256 or EdDSA.
    #[arg(long, default_value = "ES256", value_parser = parse_algorithm)]
    algorithm: Algorithm,
}

fn parse_algorithm(text: &str) -> Result<Algorithm, String> {
    match text {
        "ES256" => Ok(Algorithm::Es256),
        "EdDSA" => Ok(Algorithm::EdDsa),
        other => Err(format!("`ES256` or `EdDSA`, not `{other}`")),
    }
}

pub(crate) fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::List { keys } => {
            let ring = AccessKeys::load_or_create(&keys.state, keys.algorithm)?;
            print_entries(&ring);
        }
        KeysCommand::Rotate { keys } => {
            let ring = AccessKeys::load_or_create(&keys.state, keys.algorithm)?;
            for rotated in ring.rotate_now(tollgate_mint::unix_now())? {
                println!(
                    "{:<8} now signs with {} (retired {})",
                    rotated.path.as_str(),
                    rotated.current,
                    rotated.retired
                );
            }
        }
    }
    Ok(())
}

fn print_entries(ring: &AccessKeys) {
    let mut entries = ring.entries();
    entries.sort_by_key(|e| {
        (
            e.path,
            e.state != KeyState::Current,
            e.state != KeyState::Next,
        )
    });
    println!(
        "{:<8} {:<6} {:<8} {:<44} SINCE",
        "PATH", "ALG", "STATE", "KID"
    );
    for e in entries {
        let state = match e.state {
            KeyState::Current => "current",
            KeyState::Next => "next",
            KeyState::Retired => "retired",
        };
        let since = tollgate_policy::clock::utc_text(e.since);
        println!(
            "{:<8} {:<6} {:<8} {:<44} {since}",
            e.path.as_str(),
            e.alg.as_str(),
            state,
            e.kid
        );
    }
}
