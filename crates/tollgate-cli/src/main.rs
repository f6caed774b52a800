//! The `tollgate` binary: run the guard in front of MCP servers, or watch it work in the demo.

mod approvals;
mod audit;
#[cfg(feature = "demo")]
mod demo;
mod grant;
mod keys;
mod pin;
mod policy;
mod report;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tollgate_guard::guard::PolicyGuard;
use tollgate_proxy::{Caller, Config, Proxy, config::PolicyMode};
use tracing_subscriber::EnvFilter;

/// The allocator. The guard hands every record from the thread that decides to the trail's
/// writer thread, which frees it; and replay frees each parsed record between decisions.
/// Under glibc's malloc the first contends on its arena lock and the second fragments its
/// free lists; mimalloc frees across threads without a lock and keeps small sizes apart.
/// BENCHMARKS.md has the measurements.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tollgate: a guard between an AI agent and its MCP tools.
///
/// Every tool call the agent makes passes through Tollgate on its way to the tool server.
/// Start with `tollgate demo` to see a scripted session, then wrap your own server with
/// `tollgate run -- <command>` in your agent's MCP configuration.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run Tollgate in front of one or more MCP servers.
    ///
    /// With `--config FILE`, fronts and upstreams come from the file (see
    /// examples/tollgate.toml). With `-- <command> [args…]`, Tollgate starts that one stdio
    /// server and speaks MCP on its own stdin/stdout, which is the form to paste into an
    /// agent's MCP configuration:
    ///
    ///     tollgate run -- npx -y @modelcontextprotocol/server-filesystem /srv/app
    ///
    /// Logs go to stderr; set RUST_LOG (e.g. `RUST_LOG=tollgate=debug`) for more.
    Run {
        /// A TOML configuration file.
        #[arg(long, short, value_name = "FILE", conflicts_with = "command")]
        config: Option<PathBuf>,
        /// The stdio MCP server to wrap, after `--`.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
        /// The grant the stdio agent's session runs under: a file holding the token, or `-`
        /// to read it from the first line of stdin before the MCP stream.
        #[arg(
            long,
            value_name = "FILE|-",
            env = "TOLLGATE_GRANT",
            hide_env_values = true
        )]
        grant: Option<String>,
        /// The policy pack's folder (with `--`; a config file names its own).
        #[arg(long, value_name = "DIR", conflicts_with = "config")]
        pack: Option<PathBuf>,
        /// The state folder with the grant key and revocation list (with `--`).
        #[arg(
            long,
            value_name = "DIR",
            conflicts_with = "config",
            env = "TOLLGATE_STATE"
        )]
        state: Option<PathBuf>,
        /// Forward every tool call undecided: no grant, no policy. A relay only; say it by
        /// name or Tollgate decides every call.
        #[arg(long, conflicts_with_all = ["grant", "pack"])]
        allow_all: bool,
        /// Run the server (with `--`) inside a Landlock boundary derived from the grant: its
        /// `path:` folders (writable where the grant has `write`), its own install and the
        /// system's read-only, no TCP unless the grant has `egress`, never Tollgate's own
        /// files. `grant` refuses to start where the kernel cannot enforce all of it;
        /// `best-effort` says what it could not.
        #[arg(long, value_name = "MODE", conflicts_with = "config")]
        sandbox: Option<SandboxArg>,
    },
    /// Confine this process with the sandbox `--spec` describes, then run the command after
    /// `--` (how Tollgate starts a sandboxed server).
    #[command(hide = true)]
    SandboxExec {
        #[arg(long)]
        spec: String,
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Issue, inspect, narrow and revoke grants.
    Grant {
        #[command(subcommand)]
        command: grant::GrantCommand,
    },
    /// Record each upstream tool's definition in the lock file (`tollgate.lock`); a tool that
    /// later differs from its pin is hidden and refused.
    Pin(pin::PinArgs),
    /// List, show, approve and deny the calls a policy holds for a person's approval.
    Approvals {
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// Check the audit trail of decisions.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// List and rotate the per-call signing keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Check and test policy packs.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Start Tollgate in front of built-in demo servers and drive a scripted agent session
    /// through it, printing a transcript.
    Demo,
}

fn init_logging(default: &str) {
    let mut filter =
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // The MCP library traces whole messages at debug and trace level, and messages carry
    // per-call credentials and whatever an upstream echoes back. Whatever RUST_LOG asks for,
    // its level stops at info; Tollgate's own events say what a message did, never its body.
    // (Only when something above info is asked for: a cap must never raise a quieter level.)
    if filter
        .max_level_hint()
        .is_none_or(|level| level > tracing_subscriber::filter::LevelFilter::INFO)
    {
        for quiet in ["rmcp=info", "hyper=info", "h2=info", "reqwest=info"] {
            if let Ok(directive) = quiet.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    // stdout may be the MCP channel; logs always go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The sandbox modes `run --sandbox` takes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SandboxArg {
    Grant,
    BestEffort,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any runtime or thread exists: the boundary is put on this one thread, which then
    // becomes the server.
    if let Command::SandboxExec { spec, command } = &cli.command {
        return sandbox_exec(spec, command);
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(async_main(cli)),
        Err(e) => {
            eprintln!("tollgate: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Confines this process as `spec` says and executes `command` in its place.
fn sandbox_exec(spec: &str, command: &[std::ffi::OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    match tollgate_proxy::sandbox::restrict_self(spec) {
        Ok(described) => eprintln!("sandbox: {described}"),
        Err(e) => {
            eprintln!("sandbox: {e}");
            return ExitCode::from(126);
        }
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("sandbox: no command to run");
        return ExitCode::from(127);
    };
    let error = std::process::Command::new(program).args(args).exec();
    eprintln!(
        "sandbox: cannot run `{}`: {error}",
        program.to_string_lossy()
    );
    ExitCode::from(127)
}

async fn async_main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::SandboxExec { .. } => Ok(()),
        Command::Run {
            config,
            command,
            grant,
            pack,
            state,
            allow_all,
            sandbox,
        } => {
            init_logging("warn,tollgate=info,tollgate_proxy=info");
            run(config, command, grant, pack, state, allow_all, sandbox).await
        }
        Command::Grant { command } => grant::run(command),
        Command::Keys { command } => keys::run(command),
        Command::Audit { command } => audit::run(command),
        Command::Approvals { command } => {
            init_logging("warn");
            approvals::run(command).await
        }
        Command::Pin(args) => {
            init_logging("warn");
            pin::run(args).await
        }
        Command::Policy { command } => policy::run(command),
        #[cfg(feature = "demo")]
        Command::Demo => {
            // The transcript is the output; only real failures are logged beside it.
            init_logging("error");
            demo::run().await
        }
        #[cfg(not(feature = "demo"))]
        Command::Demo => Err(anyhow::anyhow!(
            "this build has no demo: it was built without the `demo` feature"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The wrapped server's boundary, from the stdio agent's grant: its `path:` folders (writable
/// where it grants `write`), TCP where it grants `egress`. A grant that does not verify gives
/// the server no folder of its own (its calls are all refused anyway).
fn sandbox_from_grant(config: &mut Config, mode: SandboxArg, token: Option<&str>) {
    use tollgate_policy::ActionClass;
    let verified = token.and_then(|token| {
        tollgate_mint::GrantVerifier::load(&config.grants.state_dir)
            .ok()
            .and_then(|verifier| verifier.verify(token, tollgate_mint::unix_now()).ok())
    });
    let mode = match mode {
        SandboxArg::Grant => tollgate_proxy::sandbox::SandboxMode::Grant,
        SandboxArg::BestEffort => tollgate_proxy::sandbox::SandboxMode::BestEffort,
    };
    let mut sandbox = tollgate_proxy::config::SandboxConfig {
        mode,
        paths: Vec::new(),
        read: Vec::new(),
        network: false,
    };
    if let Some(grant) = &verified {
        let writes = grant.actions.contains(&ActionClass::Write);
        for resource in &grant.resources {
            if resource.kind() != "path" {
                continue;
            }
            let text = resource.to_string();
            let base = tollgate_proxy::sandbox::pattern_base(text.trim_start_matches("path:"));
            if writes {
                sandbox.paths.push(base);
            } else {
                sandbox.read.push(base);
            }
        }
        sandbox.network = grant.actions.contains(&ActionClass::Egress);
    }
    for upstream in &mut config.upstreams {
        upstream.sandbox = Some(sandbox.clone());
    }
}

/// SIGINT and SIGTERM, registered before anything starts so that no signal can arrive while
/// its default action (ending the process without cleanup) still applies.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn register() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

async fn run(
    config: Option<PathBuf>,
    command: Vec<String>,
    grant: Option<String>,
    pack: Option<PathBuf>,
    state: Option<PathBuf>,
    allow_all: bool,
    sandbox: Option<SandboxArg>,
) -> anyhow::Result<()> {
    let mut signals = ShutdownSignals::register()?;
    let mut config = match (config, command.split_first()) {
        (Some(path), _) => Config::load(&path)?,
        (None, Some((program, args))) => Config::wrap_command(program.clone(), args.to_vec())?,
        (None, None) => anyhow::bail!(
            "nothing to run: give `--config FILE` or `-- <command> [args…]` (see `tollgate run --help`)"
        ),
    };
    if pack.is_some() {
        config.policy.pack = pack;
    }
    if let Some(state) = state {
        config.grants.state_dir = state;
    }
    if allow_all {
        config.policy.mode = PolicyMode::AllowAll;
    }
    // The stdio agent's grant is read before anything starts: from `-`, only its first line,
    // byte by byte, so that not one byte of the MCP stream behind it is taken.
    let (mut stdin, stdout) = rmcp::transport::stdio_pipes();
    let stdio_grant = match grant.as_deref() {
        None => None,
        Some("-") => Some(first_line(&mut stdin).await?),
        Some(file) => Some(grant::read_token(file)?),
    };
    if let Some(mode) = sandbox {
        sandbox_from_grant(&mut config, mode, stdio_grant.as_deref());
    }
    // A pack that does not compile stops Tollgate here rather than serving with no policy.
    let guard = match config.policy.mode {
        PolicyMode::AllowAll => None,
        PolicyMode::Enforce => Some(std::sync::Arc::new(PolicyGuard::new(&config)?)),
    };
    let proxy = match &guard {
        Some(guard) => Proxy::start_with(config, guard.clone()).await,
        None => tollgate_guard::start(config).await,
    };
    let mut admin = None;
    if let Some(admin_config) = proxy.config().admin.clone() {
        match &guard {
            Some(guard) => {
                let server = tollgate_guard::admin::serve(
                    admin_config.listen,
                    guard.clone(),
                    admin_config.token.clone(),
                    proxy.config().grants.state_dir.clone(),
                    proxy.shutdown_token(),
                )
                .await?;
                tracing::info!(url = %format!("http://{}/.well-known/jwks.json", server.local_addr), "serving the admin endpoint");
                admin = Some(server);
            }
            None => tracing::warn!(
                "the admin endpoint is not served in allow-all mode: no credentials are minted"
            ),
        }
    }
    if let Some(guard) = &guard {
        tracing::info!(version = %guard.version(), "policy pack deciding");
        tokio::spawn(tollgate_guard::guard::watch(
            guard.clone(),
            proxy.config().policy.watch,
            std::time::Duration::from_secs(1),
            proxy.shutdown_token(),
        ));
    }
    let report = proxy.report();
    for name in &report.failed {
        tracing::warn!(upstream = %name, "upstream is not connected yet; retrying in the background");
    }
    for collision in &report.collisions {
        tracing::warn!(%collision, "name collision");
    }
    tracing::info!(
        upstreams = report.connected.len(),
        tools = report.tools,
        "tollgate is ready"
    );

    let mut http = None;
    if let Some(front) = proxy.config().fronts.http.clone() {
        let server = proxy.serve_http(&front).await?;
        tracing::info!(url = %format!("http://{}{}", server.local_addr, front.path), "serving streamable HTTP");
        http = Some(server);
    }
    if proxy.config().fronts.stdio {
        tokio::select! {
            served = proxy.serve_lines(stdin, stdout, Caller::stdio(stdio_grant)) => {
                if let Err(e) = served {
                    tracing::warn!(error = %e, "stdio front ended");
                }
            }
            () = signals.recv() => tracing::info!("shutting down"),
        }
    } else {
        signals.recv().await;
        tracing::info!("shutting down");
    }
    proxy.shutdown().await;
    for server in [http, admin].into_iter().flatten() {
        let _ = server.task.await;
    }
    Ok(())
}

/// The first line of `read`, at most 64 KiB, read one byte at a time.
async fn first_line(read: &mut (impl tokio::io::AsyncRead + Unpin)) -> anyhow::Result<String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if read.read(&mut byte).await? == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > 64 * 1024 {
            anyhow::bail!("`--grant -`: the first line of stdin is longer than a grant can be");
        }
    }
    let token = String::from_utf8(line)?.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("`--grant -`: the first line of stdin holds no grant");
    }
    Ok(token)
}
