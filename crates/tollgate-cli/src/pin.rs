//! `tollgate pin`: connect to every upstream of a config, record each tool's definition in the
//! lock file, and say what changed since the last pin and which descriptions speak to the
//! model. `--check` changes nothing and fails when the lock file is out of date (for CI).

use std::path::PathBuf;

use anyhow::{Context, bail};
use tollgate_proxy::{
    Config,
    config::PolicyMode,
    pins::{Lock, Pin, definition_digest, instruction_like},
};

#[derive(Debug, clap::Args)]
pub(crate) struct PinArgs {
    /// The configuration whose upstreams are pinned.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// The lock file (default: the config's `pins.lock`, else `tollgate.lock` beside it).
    #[arg(long, value_name = "FILE")]
    lock: Option<PathBuf>,
    /// Write nothing; exit non-zero when the lock file differs from what the upstreams list.
    #[arg(long)]
    check: bool,
}

pub(crate) async fn run(args: PinArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    let lock_path = args
        .lock
        .or_else(|| config.pins.clone())
        .unwrap_or_else(|| {
            args.config.parent().map_or_else(
                || PathBuf::from("tollgate.lock"),
                |d| d.join("tollgate.lock"),
            )
        });
    // Pinning only lists tools: nothing is decided, no front is served, no call is made.
    config.policy.mode = PolicyMode::AllowAll;
    config.pins = None;
    let proxy = tollgate_guard::start(config).await;
    let report = proxy.report();
    let definitions = proxy.tool_definitions();
    proxy.shutdown().await;
    if !report.failed.is_empty() {
        bail!(
            "cannot pin: these upstreams did not connect: {} (a partial lock file would unpin their tools)",
            report.failed.join(", ")
        );
    }
    let new = Lock::from_pins(definitions.iter().map(|(upstream, tool)| Pin {
        upstream: upstream.clone(),
        name: tool.name.to_string(),
        digest: definition_digest(&tool.name, tool),
        description: tool.description.as_deref().unwrap_or_default().to_owned(),
    }));
    let old = if lock_path.exists() {
        Lock::load(&lock_path)?
    } else {
        Lock::default()
    };
    let mut changes = 0;
    for pin in new.pins() {
        match old.get(&pin.upstream, &pin.name) {
            None => {
                changes += 1;
                println!("+ {}/{}  new", pin.upstream, pin.name);
            }
            Some(before) if before.digest != pin.digest => {
                changes += 1;
                println!("~ {}/{}  definition changed", pin.upstream, pin.name);
                if before.description != pin.description {
                    println!("    was: {}", before.description);
                    println!("    now: {}", pin.description);
                }
            }
            Some(_) => {}
        }
    }
    for pin in old.pins() {
        if new.get(&pin.upstream, &pin.name).is_none() {
            changes += 1;
            println!("- {}/{}  no longer listed", pin.upstream, pin.name);
        }
    }
    let mut warnings = 0;
    for pin in new.pins() {
        let signs = instruction_like(&pin.description);
        if !signs.is_empty() {
            warnings += 1;
            println!(
                "warning: {}/{}: the description speaks to the model: {}",
                pin.upstream,
                pin.name,
                signs.join("; ")
            );
        }
    }
    let tools = new.pins().count();
    if args.check {
        if changes > 0 {
            bail!(
                "{} is out of date: {changes} change(s); review them and run `tollgate pin`",
                lock_path.display()
            );
        }
        println!("{}: {tools} tools, all as pinned", lock_path.display());
        return Ok(());
    }
    std::fs::write(&lock_path, new.render())
        .with_context(|| format!("writing {}", lock_path.display()))?;
    println!(
        "{}: {tools} tools pinned, {changes} change(s), {warnings} warning(s)",
        lock_path.display()
    );
    Ok(())
}
