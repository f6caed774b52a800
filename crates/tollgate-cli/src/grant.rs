//! `tollgate grant issue|inspect|narrow|revoke`: grants are made here, by whoever starts a
//! task, before the agent reads anything; the agent only ever holds the token.

use std::{
    collections::BTreeSet,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use tollgate_mint::{GrantSigner, GrantVerifier, RevocationList, new_grant_id, revoke};
use tollgate_policy::{
    ActionClass, Constraint, Grant, Limit, LimitKind, NarrowRequest, ResourcePattern,
    clock::utc_text, grant::ConstraintSyntax,
};

/// The longest a grant may live: grants are for one task, not for standing access.
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Subcommand)]
pub(crate) enum GrantCommand {
    /// Issue a grant for one task and print its token on stdout.
    ///
    ///     tollgate grant issue --purpose maintenance --task "fix the README" \
    ///         --action read --action write --tool 'fs.*' --resource 'path:/srv/app/**' --ttl 30m
    Issue {
        /// The intent's label, from the policy pack's `purposes`.
        #[arg(long)]
        purpose: String,
        /// The task in words.
        #[arg(long, default_value = "")]
        task: String,
        /// The agent the grant is for.
        #[arg(long)]
        agent: Option<String>,
        /// The user the agent acts for.
        #[arg(long)]
        user: Option<String>,
        /// How long it lives: `90s`, `15m`, `1h`, `2d` (at most 7 days).
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[command(flatten)]
        scope: ScopeArgs,
        #[command(flatten)]
        state: StateArg,
    },
    /// Show a grant's claims and whether this Tollgate would accept it.
    Inspect {
        /// The token, `-` for stdin, or a file holding it.
        #[arg(default_value = "-")]
        grant: String,
        #[command(flatten)]
        state: StateArg,
    },
    /// Make a child of a grant that can do no more than its parent, and print its token.
    Narrow {
        /// The parent's token, `-` for stdin, or a file holding it.
        parent: String,
        /// A new task text for the child.
        #[arg(long)]
        task: Option<String>,
        /// The agent the child is for (only if the parent names none).
        #[arg(long)]
        agent: Option<String>,
        /// How long it lives; never past the parent's expiry.
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        scope: ScopeArgs,
        #[command(flatten)]
        state: StateArg,
    },
    /// Revoke a grant, and with it every grant narrowed from it, from the next call on.
    Revoke {
        /// A grant id (`g-…`), a token, or a file holding one.
        grant: String,
        #[command(flatten)]
        state: StateArg,
    },
}

#[derive(Debug, Args)]
pub(crate) struct StateArg {
    /// The state folder holding the grant key and the revocation list.
    #[arg(long, value_name = "DIR", default_value_os_t = tollgate_proxy::config::default_state_dir(), env = "TOLLGATE_STATE")]
    state: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ScopeArgs {
    /// An action class allowed (repeat): read, write, egress, execute, payment, approve,
    /// revoke, admin. Narrowing keeps the parent's when none is given.
    #[arg(long = "action", value_name = "CLASS")]
    actions: Vec<String>,
    /// A glob over tool names allowed (repeat); `*` when issuing without one.
    #[arg(long = "tool", value_name = "GLOB")]
    tools: Vec<String>,
    /// A resource the task concerns (repeat): `path:/srv/app/**`, `customer:42`,
    /// `repo:acme/web`, `host:api.example.com`.
    #[arg(long = "resource", value_name = "KIND:PATTERN")]
    resources: Vec<String>,
    /// A resource the task concerns whose calls wait for a person even where policy allows
    /// them (repeat). Where `--resource` names a resource exactly, that entry decides, so
    /// `--resource recipient:alice@corp.example --approve recipient:*@corp.example` holds
    /// every recipient but Alice.
    #[arg(long = "approve", value_name = "KIND:PATTERN")]
    approve: Vec<String>,
    /// A rule on an argument (repeat): `TOOL:ARG<=N`, `TOOL:ARG>=N`, `TOOL:ARG=a|b`,
    /// `TOOL:ARG~GLOB`, `TOOL:ARG=absent`. `ARG?` lets an absent argument pass; `ARG[]` and
    /// `ARG[].FIELD` judge each element of an array.
    #[arg(long = "constraint", value_name = "RULE")]
    constraints: Vec<String>,
    /// At most this many calls in all.
    #[arg(long)]
    max_calls: Option<u64>,
    /// A total an argument may not exceed across calls (repeat): `TOOL:ARG=MAX`.
    #[arg(long = "budget", value_name = "TOOL:ARG=MAX")]
    budgets: Vec<String>,
}

fn now() -> i64 {
    tollgate_mint::unix_now()
}

pub(crate) fn run(command: GrantCommand) -> anyhow::Result<()> {
    match command {
        GrantCommand::Issue {
            purpose,
            task,
            agent,
            user,
            ttl,
            scope,
            state,
        } => {
            let signer = GrantSigner::load_or_create(&state.state)?;
            let now = now();
            let id = new_grant_id()?;
            let ttl = parse_ttl(&ttl)?;
            let actions = parse_actions(&scope.actions)?;
            if actions.is_empty() {
                bail!("`--action`: name at least one action class the task needs");
            }
            let mut tools: BTreeSet<String> = scope.tools.iter().cloned().collect();
            if tools.is_empty() {
                tools.insert("*".to_owned());
            }
            let grant = Grant {
                limits: parse_limits(&scope, &id)?,
                id,
                iss: "tollgate".to_owned(),
                iat: now,
                exp: now + i64::try_from(ttl).unwrap_or(i64::MAX),
                chain: Vec::new(),
                purpose,
                task,
                agent,
                user,
                resources: parse_resources(&scope.resources)?,
                approve: parse_resources(&scope.approve)?,
                actions,
                tools,
                constraints: parse_constraints(&scope.constraints)?,
            };
            let token = signer.sign(&grant)?;
            eprintln!("issued {} (expires {})", grant.id, utc_text(grant.exp));
            println!("{token}");
            Ok(())
        }
        GrantCommand::Inspect { grant, state } => {
            let token = read_token(&grant)?;
            let claims = unverified_claims(&token)?;
            println!("{}", serde_json::to_string_pretty(&claims)?);
            let verdict = match GrantVerifier::load(&state.state) {
                Err(e) => format!("cannot be checked here: {e}"),
                Ok(verifier) => match verifier.verify(&token, now()) {
                    Err(e) => format!("refused: {e}"),
                    Ok(grant) => {
                        let revocations = RevocationList::new(&state.state);
                        revocations.refresh()?;
                        match revocations.check(&grant) {
                            Err(e) => format!("refused: {e}"),
                            Ok(()) => format!(
                                "valid: signed by this Tollgate's key, expires {}",
                                utc_text(grant.exp)
                            ),
                        }
                    }
                },
            };
            eprintln!("{verdict}");
            if verdict.starts_with("valid") {
                Ok(())
            } else {
                bail!("the grant would not be accepted")
            }
        }
        GrantCommand::Narrow {
            parent,
            task,
            agent,
            ttl,
            scope,
            state,
        } => {
            let signer = GrantSigner::load_or_create(&state.state)?;
            let token = read_token(&parent)?;
            let now = now();
            let parent = signer
                .verifier()
                .verify(&token, now)
                .context("the parent grant is not accepted")?;
            let revocations = RevocationList::new(&state.state);
            revocations.refresh()?;
            revocations.check(&parent)?;
            let id = new_grant_id()?;
            let actions = parse_actions(&scope.actions)?;
            let request = NarrowRequest {
                ttl_secs: ttl.as_deref().map(parse_ttl).transpose()?,
                task,
                agent,
                actions: (!actions.is_empty()).then_some(actions),
                tools: (!scope.tools.is_empty()).then(|| scope.tools.iter().cloned().collect()),
                resources: if scope.resources.is_empty() {
                    None
                } else {
                    Some(parse_resources(&scope.resources)?)
                },
                approve: if scope.approve.is_empty() {
                    None
                } else {
                    Some(parse_resources(&scope.approve)?)
                },
                constraints: parse_constraints(&scope.constraints)?,
                limits: parse_limits(&scope, &id)?,
            };
            let child = parent.narrow(request, now, id)?;
            let token = signer.sign(&child)?;
            eprintln!(
                "narrowed {} into {} (expires {})",
                parent.id,
                child.id,
                utc_text(child.exp)
            );
            println!("{token}");
            Ok(())
        }
        GrantCommand::Revoke { grant, state } => {
            let id = if tollgate_policy::grant::is_grant_id(grant.trim()) {
                grant.trim().to_owned()
            } else {
                let token = read_token(&grant)?;
                unverified_claims(&token)?
                    .get("jti")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .context("the token names no grant id")?
            };
            revoke(&state.state, &id)?;
            eprintln!("revoked {id} and every grant narrowed from it");
            Ok(())
        }
    }
}

/// A token given inline, as `-` (stdin), or as a file's path.
pub(crate) fn read_token(given: &str) -> anyhow::Result<String> {
    let text = if given == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .context("reading the grant from stdin")?;
        text
    } else if given.matches('.').count() == 2 && !Path::new(given).exists() {
        given.to_owned()
    } else {
        std::fs::read_to_string(given)
            .with_context(|| format!("reading the grant from `{given}`"))?
    };
    let token = text.trim().to_owned();
    if token.is_empty() {
        bail!("no grant token in `{given}`");
    }
    Ok(token)
}

/// The claims of a token without checking its signature, to show them.
fn unverified_claims(token: &str) -> anyhow::Result<Value> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let payload = token
        .split('.')
        .nth(1)
        .context("not a grant token: expected three parts separated by `.`")?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .context("not a grant token: the payload is not base64url")?;
    serde_json::from_slice(&bytes).context("not a grant token: the payload is not JSON")
}

fn parse_ttl(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().with_context(|| {
        format!("`--ttl`: expected a duration such as `15m` or `1h`, not `{text}`")
    })?;
    let secs = match unit {
        "s" | "" => number,
        "m" => number.saturating_mul(60),
        "h" => number.saturating_mul(3600),
        "d" => number.saturating_mul(86_400),
        _ => bail!("`--ttl`: expected a unit of s, m, h or d, not `{unit}`"),
    };
    if secs == 0 || secs > MAX_TTL_SECS {
        bail!("`--ttl`: expected from 1s to 7d, not `{text}`");
    }
    Ok(secs)
}

fn parse_actions(given: &[String]) -> anyhow::Result<BTreeSet<ActionClass>> {
    given
        .iter()
        .map(|a| {
            serde_json::from_value(Value::String(a.clone())).map_err(|_| {
                anyhow::anyhow!(
                    "`--action`: expected read, write, egress, execute, payment, approve, revoke or admin, not `{a}`"
                )
            })
        })
        .collect()
}

fn parse_resources(given: &[String]) -> anyhow::Result<BTreeSet<ResourcePattern>> {
    given
        .iter()
        .map(|r| {
            r.parse()
                .map_err(|e: String| anyhow::anyhow!("`--resource`: {e}"))
        })
        .collect()
}

/// `TOOL:ARG<op>VALUE`, as [`Constraint`]'s text.
fn parse_constraints(given: &[String]) -> anyhow::Result<Vec<Constraint>> {
    given
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|e: ConstraintSyntax| anyhow::anyhow!("`--constraint`: {e}"))
        })
        .collect()
}

fn parse_limits(scope: &ScopeArgs, id: &str) -> anyhow::Result<Vec<Limit>> {
    let mut limits = Vec::new();
    if let Some(max) = scope.max_calls {
        limits.push(Limit {
            scope: id.to_owned(),
            tool: None,
            kind: LimitKind::MaxCalls(max),
        });
    }
    for text in &scope.budgets {
        let bad = || anyhow::anyhow!("`--budget`: expected `TOOL:ARG=MAX`, not `{text}`");
        let (tool, rest) = text.split_once(':').ok_or_else(bad)?;
        let (argument, max) = rest.split_once('=').ok_or_else(bad)?;
        let max_total: f64 = max.trim().parse().map_err(|_| bad())?;
        if !max_total.is_finite() || max_total < 0.0 || tool.is_empty() || argument.is_empty() {
            return Err(bad());
        }
        limits.push(Limit {
            scope: id.to_owned(),
            tool: Some(tool.to_owned()),
            kind: LimitKind::Budget {
                argument: argument.to_owned(),
                max_total,
            },
        });
    }
    Ok(limits)
}
