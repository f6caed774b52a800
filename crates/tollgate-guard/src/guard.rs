//! The policy guard: the interceptor that decides every tool call. It checks the session's
//! grant (signature, revocation, one grant per session), hands the call to the decision engine
//! with the session's history, keeps the grants' limits and the session statistics, and turns
//! each decision into what the agent sees.
//!
//! Nothing here fails open: no pack, a pack that does not compile, a grant that cannot be
//! checked or a tool with no facts all deny.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
};

use rmcp::model::{CallToolResult, ContentBlock};
use tollgate_policy::{
    Decision, Effect, Environment, Grant, Pack, ToolFacts, recorded::InputRecord,
};
use tracing::{info, warn};

use tollgate_mint::AccessKeys;

use crate::{
    pack_files,
    store::{MemoryStore, Store, StoreError},
};
use tollgate_proxy::{
    config::{Config, CredentialConfig, PolicyMode},
    intercept::{
        Caller, Credential, Interceptor, Outcome, PendingCredential, PendingVerdict, ToolCall,
        Verdict,
    },
    pins::PinState,
    session::SessionId,
};

mod charge;
mod credential;
mod decide;
mod identify;
mod pin;

use credential::{Carried, NoCredential};
use identify::{Granted, Presented, STATELESS_KEY};

/// The `_meta` key an agent puts its justification for one call under.
pub const JUSTIFICATION_KEY: &str = "tollgate/justification";
/// The W3C trace context an agent may send in a call's `_meta`: the call's span joins its trace.
pub const TRACEPARENT_KEY: &str = "traceparent";
/// Longest justification kept; the rest is cut.
const MAX_JUSTIFICATION: usize = 1024;
/// Why the guard could not be built; Tollgate does not start with it.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Read(#[from] pack_files::PackReadError),
    #[error("policy pack `{name}` is not valid: {source}")]
    Pack {
        name: String,
        #[source]
        source: tollgate_policy::PackError,
    },
    #[error("policy pack `{name}` fails `policy check`:\n{}", .findings.join("\n"))]
    Check { name: String, findings: Vec<String> },
    #[error("per-call credentials cannot be minted: {0}")]
    Mint(#[from] tollgate_mint::MintError),
    #[error("token exchange cannot be set up: {0}")]
    Exchange(String),
    #[error(transparent)]
    Pins(#[from] tollgate_proxy::pins::LockError),
    #[error("{0}")]
    Audit(String),
}

pub use crate::store::Quarantine;

/// What stands for one call before it is decided.
struct Standing {
    now: i64,
    /// What the store keeps of the call's history.
    kept: crate::store::Standing,
    pin: PinState,
}

/// Decides every tool call by grant and policy.
pub struct PolicyGuard {
    pack: RwLock<Arc<Pack>>,
    /// A candidate pack decided beside the live one, never enforced, and its folder.
    shadow: Option<(PathBuf, RwLock<Arc<Pack>>)>,
    /// Where the pack is read from on reload; the embedded default when none.
    pack_dir: Option<PathBuf>,
    extra_tools: Vec<tollgate_policy::EntryConfig>,
    /// Stage 1: the grants calls present, and the sessions they bind.
    grants: identify::Grants,
    env: Environment,
    /// The upstreams Tollgate runs on this machine: their paths are bound as this filesystem
    /// resolves them.
    local: std::collections::HashSet<String>,
    /// Tollgate's own folders and files, which no call reaches.
    protected: tollgate_proxy::paths::Protected,
    /// What the guard remembers between calls.
    store: Arc<dyn Store>,
    /// Stage 6: what allowed calls carry, and the keys that sign it.
    credentials: credential::Credentials,
    /// What was minted and what was revoked, for introspection and the revocation list.
    ledger: tollgate_mint::Ledger,
    /// Scheduled rotation: how long a key signs and how long its successor is published first.
    rotation: (Option<i64>, i64),
    /// When the schedule was last looked at.
    rotation_checked: std::sync::atomic::AtomicI64,
    /// Grants whose session was quarantined: a new session under them is held too.
    /// Approval requests, and who may answer them (by their admin-endpoint token).
    approvals: Arc<tollgate_proxy::approvals::Approvals>,
    approval: tollgate_proxy::config::ApprovalsConfig,
    /// Stage 2: the lock file of pinned tool definitions.
    pins: pin::Pins,
    /// The audit trail, unless turned off by name.
    audit: Option<Arc<tollgate_audit::Audit>>,
    /// Forwarded calls by number: their decision id and when they were decided, for the
    /// outcome record and the call's latency.
    in_flight: Mutex<HashMap<u64, InFlight>>,
    /// Where decided calls go as OpenTelemetry spans, when configured.
    otlp: Option<Arc<crate::otlp::Exporter>>,
    metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for PolicyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyGuard")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

/// A call's arguments as one JSON value and their RFC 8785 digest, each made at most once per
/// decision: the credential, an approval and the audit record all need them.
struct CallArguments<'a> {
    raw: Option<&'a serde_json::Map<String, serde_json::Value>>,
    value: std::cell::OnceCell<serde_json::Value>,
    digest: std::cell::OnceCell<String>,
}

impl<'a> CallArguments<'a> {
    fn new(raw: Option<&'a serde_json::Map<String, serde_json::Value>>) -> Self {
        Self {
            raw,
            value: std::cell::OnceCell::new(),
            digest: std::cell::OnceCell::new(),
        }
    }

    fn value(&self) -> &serde_json::Value {
        self.value
            .get_or_init(|| serde_json::Value::Object(self.raw.cloned().unwrap_or_default()))
    }

    /// The arguments as they came, borrowed: none is an empty object.
    fn object(&self) -> &serde_json::Map<String, serde_json::Value> {
        static EMPTY: std::sync::OnceLock<serde_json::Map<String, serde_json::Value>> =
            std::sync::OnceLock::new();
        self.raw
            .unwrap_or_else(|| EMPTY.get_or_init(serde_json::Map::new))
    }

    fn digest(&self) -> &str {
        self.digest
            .get_or_init(|| tollgate_mint::jcs::digest_object(self.object()))
    }
}

/// Forwarded calls remembered for their outcome record before old ones are swept.
const IN_FLIGHT_LIMIT: usize = 65_536;

/// A forwarded call until its outcome: its decision, when it was decided, and its span.
struct InFlight {
    decision_id: String,
    decided: std::time::Instant,
    span: Option<Box<crate::otlp::CallSpan>>,
}

/// What a decision's audit record is made of.
#[derive(Clone, Copy)]
struct Recorded<'a> {
    call: &'a ToolCall<'a>,
    arguments: &'a CallArguments<'a>,
    history: u64,
    /// Shared, so that the trail's record of the grant is built from it only when written.
    grant: Option<&'a Arc<Granted>>,
    decision: &'a Decision,
    decision_id: &'a str,
    justification: Option<&'a str>,
    minted: Option<&'a tollgate_mint::Minted>,
    /// What the engine was handed, for replay; none without a trail.
    input: Option<&'a InputRecord<'a>>,
    facts: &'a ToolFacts,
    /// The shadow pack's decision, when it differs from the live pack's.
    shadow: Option<&'a Decision>,
}

thread_local! {
    /// Where this thread serializes the trail's records; the trail copies each into its queue.
    static LINE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A record's line above this size is not kept as this thread's buffer once handed over.
const KEPT_LINE: usize = 16 * 1024;

/// `then` with `record` serialized as JSON, in a buffer this thread keeps for it, so that a
/// record allocates nothing of its own. The buffer is taken out while in use: a call made
/// meanwhile on this thread (or as it ends) serializes into a fresh one instead.
fn serialized<T>(
    record: &impl serde::Serialize,
    then: impl FnOnce(Result<&[u8], serde_json::Error>) -> T,
) -> T {
    let mut bytes = LINE.try_with(std::cell::Cell::take).unwrap_or_default();
    bytes.clear();
    let answer = then(serde_json::to_writer(&mut bytes, record).map(|()| bytes.as_slice()));
    if bytes.capacity() <= KEPT_LINE {
        let _ = LINE.try_with(|line| line.set(bytes));
    }
    answer
}

/// `verdict`, forwarded only once its decision's record is as durable as configured.
fn durable_first(ticket: tollgate_audit::Ticket, verdict: Verdict) -> Verdict {
    if ticket.is_settled() {
        return verdict;
    }
    let then: PendingCredential = match verdict {
        Verdict::Forward => PendingCredential(Box::pin(async { Ok(None) })),
        Verdict::ForwardWith(credential) => {
            PendingCredential(Box::pin(async move { Ok(Some(credential)) }))
        }
        Verdict::ForwardAfter(pending) => pending,
        other => return other,
    };
    Verdict::ForwardAfter(PendingCredential(Box::pin(async move {
        if let Err(e) = ticket.durable().await {
            tracing::error!(error = %e, "a decision could not be recorded; its call is refused");
            return Err(
                "Tollgate could not record this decision, so the call does not go ahead".to_owned(),
            );
        }
        then.0.await
    })))
}

fn now() -> i64 {
    tollgate_mint::unix_now()
}

/// The interceptor `config` asks for: the policy guard, or (only when the config says
/// `mode = "allow-all"`) nothing at all.
pub fn from_config(config: &Config) -> Result<Arc<dyn Interceptor>, GuardError> {
    match config.policy.mode {
        PolicyMode::AllowAll => {
            warn!("policy mode is allow-all: every tool call is forwarded undecided");
            Ok(Arc::new(tollgate_proxy::intercept::AllowAll))
        }
        PolicyMode::Enforce => Ok(Arc::new(PolicyGuard::new(config)?)),
    }
}

impl PolicyGuard {
    /// Loads the pack the config names (or the embedded default) and the grant key's public
    /// half from the state folder.
    pub fn new(config: &Config) -> Result<Self, GuardError> {
        let pack_dir = config.policy.pack.clone();
        let pack = load(pack_dir.as_deref(), &config.policy.tools)?;
        info!(version = pack.version(), "policy pack loaded");
        let credentials: HashMap<String, CredentialConfig> = config
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), u.credential.clone()))
            .collect();
        let apis = config
            .upstreams
            .iter()
            .filter_map(|u| match &u.transport {
                tollgate_proxy::config::UpstreamTransport::Api(spec) => {
                    Some((u.name.clone(), spec.clone()))
                }
                _ => None,
            })
            .collect();
        let mut exchangers = HashMap::new();
        for upstream in &config.upstreams {
            if let CredentialConfig::Exchange(exchange) = &upstream.credential {
                let exchanger = crate::exchange::Exchanger::new(
                    (**exchange).clone(),
                    config.limits.request_timeout,
                )
                .map_err(GuardError::Exchange)?;
                exchangers.insert(upstream.name.clone(), Arc::new(exchanger));
            }
        }
        let minter = if credentials.values().any(|c| {
            matches!(
                c,
                CredentialConfig::Mint { .. } | CredentialConfig::Exchange(_)
            )
        }) {
            Some(AccessKeys::load_or_create(
                &config.grants.state_dir,
                config.mint.algorithm,
            )?)
        } else {
            None
        };
        Ok(Self {
            credentials: credential::Credentials {
                minter,
                issuer: config.mint.issuer.clone(),
                by_upstream: credentials,
                apis,
                exchangers,
            },
            ledger: tollgate_mint::Ledger::default(),
            rotation: (
                config.mint.rotate_every_secs,
                config.mint.publish_ahead_secs,
            ),
            rotation_checked: std::sync::atomic::AtomicI64::new(0),
            approvals: Arc::default(),
            approval: config.approvals.clone(),
            audit: crate::audit::open(&config.audit, &config.grants.state_dir)
                .map_err(GuardError::Audit)?,
            in_flight: Mutex::new(HashMap::new()),
            otlp: config.telemetry.otlp_endpoint.as_deref().map(|endpoint| {
                info!(%endpoint, "decided calls are exported as OpenTelemetry spans");
                crate::otlp::Exporter::start(
                    endpoint,
                    &config.telemetry.service_name,
                    config.telemetry.export_every,
                )
            }),
            metrics: crate::metrics::Metrics::default(),
            pins: pin::Pins::load(config.pins.as_ref(), config.pin_changed)?,
            pack: RwLock::new(Arc::new(pack)),
            shadow: match &config.policy.shadow {
                None => None,
                Some(dir) => {
                    let shadow = load(Some(dir), &config.policy.tools)?;
                    info!(
                        shadow = shadow.version(),
                        "a shadow pack decides beside the live one; it enforces nothing"
                    );
                    Some((dir.clone(), RwLock::new(Arc::new(shadow))))
                }
            },
            pack_dir,
            extra_tools: config.policy.tools.clone(),
            grants: identify::Grants::new(&config.grants.state_dir, config.grants.anonymous),
            env: Environment {
                label: config.policy.environment.clone(),
                offset: config.policy.time_zone,
            },
            local: config
                .upstreams
                .iter()
                .filter(|u| {
                    matches!(
                        u.transport,
                        tollgate_proxy::config::UpstreamTransport::Stdio { .. }
                    )
                })
                .map(|u| u.name.clone())
                .collect(),
            protected: tollgate_proxy::paths::Protected::new(
                config.own_files().iter().map(PathBuf::as_path),
            ),
            store: Arc::new(MemoryStore::default()),
        })
    }

    /// The version id of the pack deciding now.
    pub fn version(&self) -> String {
        self.current().version().to_owned()
    }

    fn current(&self) -> Arc<Pack> {
        self.pack
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads and compiles the pack again. A version that does not compile is rejected whole
    /// and the current one keeps deciding. Returns the version now deciding.
    pub fn reload(&self) -> Result<String, GuardError> {
        // The lock file is reread with the pack: re-pinning takes effect on the same signal.
        self.pins.reload()?;
        let pack = load(self.pack_dir.as_deref(), &self.extra_tools)?;
        let version = pack.version().to_owned();
        let previous = std::mem::replace(
            &mut *self
                .pack
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            Arc::new(pack),
        );
        if previous.version() != version {
            info!(from = previous.version(), to = %version, "policy pack reloaded");
        }
        // A shadow that does not compile keeps its previous version; it never stops the live
        // pack from reloading.
        if let Some((dir, current)) = &self.shadow {
            match load(Some(dir), &self.extra_tools) {
                Ok(shadow) => {
                    *current
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(shadow);
                }
                Err(e) => {
                    warn!(error = %e, "the shadow pack was not reloaded; its previous version stays")
                }
            }
        }
        Ok(version)
    }

    /// The JWKS of the per-call signing keys (empty when no upstream takes minted credentials).
    pub fn jwks(&self) -> serde_json::Value {
        self.credentials
            .minter
            .as_ref()
            .map_or_else(|| serde_json::json!({"keys": []}), AccessKeys::jwks)
    }

    /// The base every trust path's issuer is named from.
    pub fn issuer(&self) -> &str {
        &self.credentials.issuer
    }

    /// Where the pack is read from, when it is not the embedded default.
    pub fn pack_dir(&self) -> Option<&std::path::Path> {
        self.pack_dir.as_deref()
    }

    /// What stands for a call of `facts` at `now` before it is decided, read under one lock:
    /// the history's statistics and taints, whether it (or its grant) is held for review, and
    /// the tool's pin.
    async fn standing(
        &self,
        key: SessionId,
        grant: Option<&Grant>,
        facts: &ToolFacts,
        now: i64,
    ) -> Result<Standing, StoreError> {
        Ok(Standing {
            now,
            kept: self.store.standing(key, grant, now).await?,
            pin: self.pins.state(facts),
        })
    }

    /// Records a decided call in its history.
    async fn record(
        &self,
        history: SessionId,
        now: i64,
        decision: &Decision,
        grant: Option<&Grant>,
    ) -> Result<(), StoreError> {
        let stateless = history & STATELESS_KEY != 0;
        let changed = self
            .store
            .record(crate::store::Decided {
                key: history,
                now,
                grant: grant.map(|g| g.id.as_str()),
                effect: decision.effect,
                class: decision.class,
                taints: &decision.taints,
                quarantine: (decision.effect == Effect::Deny && decision.quarantine).then(|| {
                    Quarantine {
                        session: history.to_string(),
                        grant: grant.map(|g| g.id.clone()),
                        since: now,
                        policies: decision.policies.clone(),
                        reason: decision.reason_text(),
                    }
                }),
                // Kept while its grant lives (an hour at most without one).
                forget_after: stateless.then(|| grant.map_or(now + 3600, |g| g.exp)),
            })
            .await?;
        for label in &changed.tainted {
            info!(session = history, label = %label, "session tainted");
        }
        if changed.quarantined {
            warn!(session = history, policies = ?decision.policies, "session quarantined for review");
        }
        Ok(())
    }
}

impl PolicyGuard {
    /// The verdict on `call`; with `approval`, once that approval was given by its approver.
    async fn judge(&self, call: &ToolCall<'_>, approval: Option<(&str, &str)>) -> Verdict {
        let now = now();
        if let Some(failure) = self.audit.as_ref().and_then(|a| a.failure()) {
            tracing::error!(%failure, tool = call.exposed_name, "refused: decisions cannot be recorded");
            return Verdict::Refuse(refusal(
                "denied: Tollgate cannot record its decisions right now, so no call goes ahead; the operator has been told why".to_owned(),
            ));
        }
        if self.ledger.session_revoked(&call.session.to_string()) {
            return Verdict::Reject("this session has been revoked".to_owned());
        }
        let presented = match self.grants.presented(call.session, call.caller, now) {
            Ok(p) => p,
            Err(reason) => {
                info!(session = call.session, tool = call.exposed_name, %reason, "grant refused");
                return Verdict::Reject(reason);
            }
        };
        let shared = match &presented {
            Presented::Grant(g) => Some(g),
            Presented::Anonymous => None,
        };
        let grant = shared.map(|g| &g.grant);
        let Some(facts) = call.facts else {
            // A routed tool always has facts; without them nothing can be checked.
            return Verdict::Refuse(refusal(
                "the tool's definition is not known yet; the call is denied".to_owned(),
            ));
        };
        let history = identify::history_key(call, grant);
        let standing = match self.standing(history, grant, facts, now).await {
            Ok(standing) => standing,
            Err(e) => return store_down(&e, call),
        };
        if let Some(held) = &standing.kept.held {
            return Verdict::Refuse(refusal(format!(
                "denied: this session is held for review ({}); an approver can release it",
                held.reason
            )));
        }
        if let Err(pin::Unpinned(refused)) = self.pins.admit(call.exposed_name, standing.pin) {
            warn!(
                tool = call.exposed_name,
                upstream = call.upstream,
                "the tool's definition differs from its pin; refused"
            );
            return Verdict::Refuse(refusal(refused));
        }
        let pack = self.current();
        if !pack.visible(grant, facts, now) {
            // Calling what one cannot even see is worth a record: it is how probing looks.
            if let Some(audit) = &self.audit {
                drop(audit.append(crate::audit::record([
                    ("kind", "decision".into()),
                    ("session", history.to_string().into()),
                    ("grant", grant.map(|g| g.id.clone()).into()),
                    ("upstream", call.upstream.into()),
                    ("tool", call.tool.into()),
                    ("decision", "hide".into()),
                    ("version", pack.version().into()),
                    (
                        "reasons",
                        serde_json::json!(["no policy could ever allow this tool to this session"]),
                    ),
                ])));
            }
            return Verdict::Hide;
        }
        // The id the trail, the call's outcome and its span know the decision by. Without one
        // that no other decision shares, the call is refused before anything is charged, as a
        // call whose credential cannot be given an id is.
        let decision_id = match tollgate_mint::new_id("d") {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, tool = call.exposed_name, "refused: no decision id can be made");
                return Verdict::Refuse(refusal(
                    "denied: Tollgate cannot make an id for this decision right now".to_owned(),
                ));
            }
        };
        // What the agent says of this call: untrusted, recorded with the decision, and only
        // ever able to narrow (a policy may require it; nothing grants more because of it).
        let justification: Option<String> = call
            .meta
            .get(JUSTIFICATION_KEY)
            .and_then(|v| v.as_str())
            .map(|s| s.chars().take(MAX_JUSTIFICATION).collect());
        let shadow_pack = self.shadow.as_ref().map(|(_, shadow)| {
            shadow
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        });
        let (mut decision, mut input, shadow) = decide::Deciding {
            pack: &pack,
            shadow: shadow_pack.as_deref(),
            env: &self.env,
            local: &self.local,
            protected: &self.protected,
            keep_input: self.audit.is_some(),
            metrics: &self.metrics,
        }
        .decide(call, grant, facts, justification.as_deref(), &standing);
        pin::vouch(call.exposed_name, standing.pin, &mut decision);
        // The call's arguments as one value and their digest: what an approval is bound to and
        // a credential and the audit record name, made once and only when needed.
        let arguments = CallArguments::new(call.arguments);
        if let (Some((id, approver)), Effect::NeedsApproval) = (approval, decision.effect) {
            // The approval counts only for exactly the call it was asked for, under the same
            // policy version; a newer pack that denies has denied above.
            let session = history.to_string();
            let approved = self.approvals.approved_for(
                id,
                &tollgate_proxy::approvals::Binding {
                    session: &session,
                    grant: grant.map(|g| g.id.as_str()),
                    upstream: call.upstream,
                    tool: call.tool,
                    arguments_sha256: arguments.digest(),
                    policy_version: &decision.version,
                },
            );
            if approved.as_deref() == Some(approver) {
                decision.effect = Effect::Allow;
                decision
                    .reasons
                    .push(format!("approved by {approver} ({id})"));
            } else {
                decision.effect = Effect::Deny;
                decision.policies = vec!["tollgate:approval".to_owned()];
                decision.reasons = vec![format!(
                    "approval {id} does not match this call or the policy deciding it now"
                )];
            }
        }
        // The pack's session limits and the grant's, in one step: a call either limit
        // refuses spends nothing.
        if decision.is_allow()
            && let Err(e) =
                charge::charge(&*self.store, history, &pack, call, grant, &mut decision).await
        {
            return store_down(&e, call);
        }
        let mut carried = Carried::Nothing;
        if decision.is_allow() {
            match self.credentials.carry(
                &self.ledger,
                call,
                grant,
                &decision,
                &decision_id,
                approval.map(|a| a.0),
                &arguments,
                now,
            ) {
                Ok(credential) => carried = credential,
                Err(NoCredential { detail, shown }) => {
                    warn!(tool = call.exposed_name, %detail, "no credential could be minted; denied");
                    decision.effect = Effect::Deny;
                    decision.policies = vec!["tollgate:mint".to_owned()];
                    decision.reasons = vec![if shown {
                        detail
                    } else {
                        "a credential for this call could not be made; it is denied".to_owned()
                    }];
                }
            }
        }
        let minted = match &carried {
            Carried::Token(minted)
            | Carried::Exchange {
                subject: minted, ..
            } => Some(minted),
            Carried::Nothing | Carried::Cached(_) => None,
        };
        if let Err(e) = self.record(history, now, &decision, grant).await {
            return store_down(&e, call);
        }
        // A denial is news for the operator; an allowed call is the normal case, logged at
        // debug level (at info, formatting and writing it cost more than the decision).
        macro_rules! decision_event {
            ($level:ident) => {
                tracing::$level!(
                    decision_id = %decision_id,
                    session = call.session,
                    tool = call.exposed_name,
                    grant = grant.map_or("anonymous", |g| g.id.as_str()),
                    decision = decision.effect.as_str(),
                    policies = ?decision.policies,
                    version = %decision.version,
                    justification = ?justification,
                    // What the audit keeps of a minted credential: never the token.
                    jti = minted.map(|m| m.jti.as_str()),
                    kid = minted.map(|m| m.kid.as_str()),
                    aud = minted.map(|m| m.aud.as_str()),
                    exp = minted.map(|m| m.exp),
                    exchanged = matches!(carried, Carried::Exchange { .. } | Carried::Cached(_)),
                    "decision"
                )
            };
        }
        if decision.is_allow() {
            decision_event!(debug);
        } else {
            decision_event!(info);
        }
        if let Some(detail) = &decision.detail {
            warn!(tool = call.exposed_name, %detail, "policy evaluation failed; denied");
        }
        // The replay input keeps the engine's decision only where the record's differs.
        if let Some(input) = input.as_mut() {
            input.settle(&decision);
        }
        let recorded = Recorded {
            call,
            arguments: &arguments,
            history,
            grant: shared,
            decision: &decision,
            decision_id: &decision_id,
            justification: justification.as_deref(),
            minted,
            input: input.as_ref(),
            facts,
            shadow: shadow.as_ref(),
        };
        match decision.effect {
            Effect::Allow => {
                let ticket = self.audit_decision(&recorded, approval.map(|a| a.0), None);
                let span = self.span(&recorded);
                let verdict = match carried {
                    Carried::Token(minted) => Verdict::ForwardWith(Credential::new(minted.token)),
                    Carried::Cached(credential) => Verdict::ForwardWith(credential),
                    Carried::Exchange { pending, .. } => Verdict::ForwardAfter(pending),
                    Carried::Nothing => Verdict::Forward,
                };
                self.track(call.number, &decision_id, span);
                match ticket {
                    Some(ticket) => durable_first(ticket, verdict),
                    None => verdict,
                }
            }
            Effect::Deny => {
                drop(self.audit_decision(&recorded, None, None));
                self.export_now(&recorded);
                Verdict::Refuse(refusal(format!("denied: {}", decision.reason_text())))
            }
            Effect::NeedsApproval => {
                self.export_now(&recorded);
                self.hold(&recorded, now)
            }
        }
    }

    /// Appends the record of a decision to the trail: who, what, what it touches, the
    /// arguments' digest and redacted arguments, the decision and what determined it, the
    /// approval, what the credential says (never the token).
    fn audit_decision(
        &self,
        recorded: &Recorded<'_>,
        approval: Option<&str>,
        unanswerable: Option<&str>,
    ) -> Option<tollgate_audit::Ticket> {
        let audit = self.audit.as_ref()?;
        let Recorded {
            call,
            arguments,
            history,
            grant,
            decision,
            decision_id,
            justification,
            minted,
            input,
            facts,
            shadow,
        } = *recorded;
        // The definitions the decision names go first, once per trail file.
        let tool = facts
            .entry()
            .map(|entry| Arc::clone(entry) as tollgate_audit::Definition);
        let granted = grant.map(|grant| Arc::clone(grant) as tollgate_audit::Definition);
        // Nothing to hide: the arguments are written as they came, not copied first.
        let kept = if decision.redact.is_empty() {
            crate::audit::kept_arguments(arguments.object())
        } else {
            crate::audit::kept_arguments(&decision.redacted(arguments.value()))
        };
        let line = crate::audit::DecisionLine {
            kind: "decision",
            decision_id,
            session: history,
            agent: grant.and_then(|g| g.agent.as_deref()),
            user: grant.and_then(|g| g.user.as_deref()),
            grant: grant.map(|g| g.id.as_str()),
            upstream: call.upstream,
            tool: call.tool,
            class: decision.class.as_str(),
            resources: crate::audit::AsText(&decision.resources),
            arguments_sha256: arguments.digest(),
            arguments: kept.as_deref(),
            decision: decision.effect.as_str(),
            policies: &decision.policies,
            reasons: &decision.reasons,
            version: &decision.version,
            approval_id: approval,
            unanswerable,
            justification,
            jti: minted.map(|m| m.jti.as_str()),
            kid: minted.map(|m| m.kid.as_str()),
            aud: minted.map(|m| m.aud.as_str()),
            exp: minted.map(|m| m.exp),
            input,
            shadow: shadow.map(|s| crate::audit::ShadowLine {
                version: &s.version,
                decision: s.effect.as_str(),
                policies: &s.policies,
                reasons: &s.reasons,
            }),
        };
        Some(serialized(&line, |bytes| match bytes {
            Ok(bytes) => audit.append_line_after(tool.into_iter().chain(granted), bytes),
            // Nothing in a decision fails to serialize; if it ever did, the call is refused.
            Err(e) => tollgate_audit::Ticket::unrecordable(e.to_string()),
        }))
    }

    /// Remembers a forwarded call's decision for its outcome record and span.
    fn track(&self, number: u64, decision_id: &str, span: Option<crate::otlp::CallSpan>) {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Calls whose end never came (a connection gone mid-call) are forgotten after an hour.
        if in_flight.len() >= IN_FLIGHT_LIMIT {
            in_flight.retain(|_, f| f.decided.elapsed() < std::time::Duration::from_secs(3600));
        }
        in_flight.insert(
            number,
            InFlight {
                decision_id: decision_id.to_owned(),
                decided: std::time::Instant::now(),
                span: span.map(Box::new),
            },
        );
    }

    /// The span of a decided call, when spans are exported: what it decided and why, never
    /// its arguments.
    fn span(&self, recorded: &Recorded<'_>) -> Option<crate::otlp::CallSpan> {
        use crate::otlp::Attr;
        self.otlp.as_ref()?;
        let Recorded {
            call,
            history,
            grant,
            decision,
            decision_id,
            ..
        } = *recorded;
        let start =
            crate::otlp::SpanStart::now(call.meta.get(TRACEPARENT_KEY).and_then(|v| v.as_str()));
        let mut attributes = vec![
            ("tollgate.session", Attr::Text(history.to_string())),
            ("tollgate.tool", Attr::Text(call.exposed_name.to_owned())),
            ("tollgate.upstream", Attr::Text(call.upstream.to_owned())),
            (
                "tollgate.class",
                Attr::Text(decision.class.as_str().to_owned()),
            ),
            (
                "tollgate.decision",
                Attr::Text(decision.effect.as_str().to_owned()),
            ),
            ("tollgate.policies", Attr::List(decision.policies.clone())),
            (
                "tollgate.policy_version",
                Attr::Text(decision.version.clone()),
            ),
            ("tollgate.decision_id", Attr::Text(decision_id.to_owned())),
        ];
        if let Some(grant) = grant {
            attributes.push(("tollgate.grant", Attr::Text(grant.id.clone())));
        }
        Some(crate::otlp::CallSpan {
            name: format!("tools/call {}", call.exposed_name),
            trace_id: start.trace_id,
            span_id: start.span_id,
            parent_span_id: start.parent_span_id,
            start_unix_nanos: start.start_unix_nanos,
            end_unix_nanos: start.start_unix_nanos,
            attributes,
            error: (decision.effect == Effect::Deny).then(|| "denied".to_owned()),
        })
    }

    /// Exports the span of a call that ends at its decision (refused, or held).
    fn export_now(&self, recorded: &Recorded<'_>) {
        if let (Some(otlp), Some(mut span)) = (&self.otlp, self.span(recorded)) {
            span.end_unix_nanos = crate::otlp::unix_nanos();
            otlp.export(span);
        }
    }

    /// A call a policy holds for approval: the request approvers and the user at the agent see,
    /// or a denial when nobody who may approve it can be reached.
    fn hold(&self, recorded: &Recorded<'_>, now: i64) -> Verdict {
        let Recorded {
            call,
            arguments,
            history,
            grant,
            decision,
            justification,
            ..
        } = *recorded;
        let settings = &self.approval;
        // The user at the agent may answer only where every gating policy says so, the
        // configuration allows it for this class, and the agent can be asked.
        let at_agent = if !decision.in_band {
            Err("policy does not let the user at the agent approve it".to_owned())
        } else if !settings.in_band {
            Err("approval at the agent is turned off here".to_owned())
        } else if settings.never_in_band.contains(&decision.class) {
            Err(format!(
                "`{}` calls are never approved at the agent",
                decision.class
            ))
        } else if !call.can_ask {
            Err(
                "the agent did not declare elicitation, so the user at it cannot be asked"
                    .to_owned(),
            )
        } else {
            Ok(())
        };
        let out_of_band = !settings.approvers.is_empty();
        if let (Err(why), false) = (&at_agent, out_of_band) {
            drop(self.audit_decision(recorded, None, Some(why)));
            return Verdict::Refuse(refusal(format!(
                "needs approval: {}; no approvers are configured on this Tollgate and {why}, so the call is denied",
                decision.reason_text()
            )));
        }
        let Ok(id) = tollgate_mint::new_id("ap") else {
            return Verdict::Refuse(refusal(
                "needs approval, and no approval request could be made; denied".to_owned(),
            ));
        };
        info!(approval = %id, session = call.session, tool = call.exposed_name, approvers = ?decision.approvers, in_band = at_agent.is_ok(), "approval requested");
        let timeout = i64::try_from(settings.timeout.as_secs()).unwrap_or(300);
        let credential =
            self.credentials
                .preview(call, decision, arguments.value(), arguments.digest());
        let request = tollgate_proxy::approvals::Request {
            id,
            created: now,
            expires: now + timeout,
            session: history.to_string(),
            grant: grant.map(|g| g.id.clone()),
            agent: grant.and_then(|g| g.agent.clone()),
            user: grant.and_then(|g| g.user.clone()),
            upstream: call.upstream.to_owned(),
            tool: call.tool.to_owned(),
            class: decision.class.to_string(),
            resources: decision.resources.iter().map(ToString::to_string).collect(),
            arguments: decision.redacted(arguments.value()).into_owned(),
            arguments_sha256: arguments.digest().to_owned(),
            policy_version: decision.version.clone(),
            policies: decision.policies.clone(),
            reasons: decision.reasons.clone(),
            approvers: decision.approvers.clone(),
            justification: justification.map(str::to_owned),
            credential,
            state: tollgate_proxy::approvals::State::Pending,
        };
        drop(self.audit_decision(recorded, Some(&request.id), None));
        let in_band = at_agent.is_ok().then(|| tollgate_proxy::approvals::InBand {
            message: request.summary(),
            who: format!(
                "{} (at the agent)",
                grant.and_then(|g| g.user.as_deref()).unwrap_or("the user")
            ),
        });
        Verdict::AwaitApproval(self.approvals.open(
            request,
            in_band,
            out_of_band,
            settings.progress_every,
        ))
    }

    /// The approver whose admin-endpoint token this is. Compared as digests, so the time
    /// taken says nothing about a guess.
    pub fn approver(&self, token: &str) -> Option<tollgate_proxy::approvals::Approver> {
        use sha2::{Digest, Sha256};
        let presented = Sha256::digest(token.as_bytes());
        self.approval
            .approvers
            .iter()
            .find(|(secret, _)| Sha256::digest(secret.expose().as_bytes()) == presented)
            .map(|(_, approver)| approver.clone())
    }

    /// The sessions held for review; none when the store cannot say.
    pub async fn quarantined(&self) -> Result<Vec<Quarantine>, StoreError> {
        self.store.quarantined().await
    }

    /// Releases a session held for review (`session` as [`Quarantine::session`] names it):
    /// its recent denials are forgotten and its calls are decided again. False when it is
    /// not held.
    pub async fn release(&self, session: &str) -> Result<bool, StoreError> {
        self.store.release(session).await
    }

    /// This guard, remembering what it must between calls in `store` instead of in memory.
    #[must_use]
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = store;
        self
    }

    /// The verdict on `call`, counted and timed for `/metrics`.
    async fn measured(&self, call: &ToolCall<'_>, approval: Option<(&str, &str)>) -> Verdict {
        let started = std::time::Instant::now();
        let verdict = self.judge(call, approval).await;
        self.metrics.decision_latency.observe(started.elapsed());
        // Indexes into `metrics::EFFECTS`.
        let effect = match &verdict {
            Verdict::Forward | Verdict::ForwardWith(_) | Verdict::ForwardAfter(_) => 0,
            Verdict::Refuse(_) => 1,
            Verdict::AwaitApproval(_) => 2,
            Verdict::Hide => 3,
            Verdict::Reject(_) => 4,
        };
        self.metrics.decided(effect, call.upstream, call.tool);
        verdict
    }

    /// What `/metrics` shows, as of now.
    pub fn metrics_text(&self) -> String {
        let gauges = crate::metrics::Gauges {
            approvals_pending: self.approvals.pending(),
            sessions: self.grants.sessions_served(),
            audit: self.audit.as_ref().map(|audit| {
                let stats = audit.stats();
                crate::metrics::AuditGauges {
                    records: stats.records.load(std::sync::atomic::Ordering::Relaxed),
                    syncs: stats.syncs.load(std::sync::atomic::Ordering::Relaxed),
                    batches: stats.batch.snapshot(),
                    failed: audit.failure().is_some(),
                }
            }),
        };
        self.metrics.render(&gauges)
    }

    /// The approval requests: what approvers list, show and answer.
    pub fn approvals(&self) -> &tollgate_proxy::approvals::Approvals {
        &self.approvals
    }

    /// Keeps the signing keys current: rereads a keyring rotated by another process and, once a
    /// minute, rotates the paths whose key is due.
    pub fn keep_keys(&self, now: i64) {
        let Some(minter) = &self.credentials.minter else {
            return;
        };
        if let Err(error) = minter.refresh(now) {
            warn!(%error, "the signing keyring cannot be reread; the keys in use keep signing");
        }
        let (Some(every), ahead) = self.rotation else {
            return;
        };
        let checked = self
            .rotation_checked
            .load(std::sync::atomic::Ordering::Relaxed);
        if now - checked < 60 {
            return;
        }
        self.rotation_checked
            .store(now, std::sync::atomic::Ordering::Relaxed);
        match minter.rotate_due(every, ahead, now) {
            Ok(rotated) => {
                for r in rotated {
                    info!(path = r.path.as_str(), retired = %r.retired, current = %r.current, "signing key rotated on schedule");
                }
            }
            Err(error) => {
                warn!(%error, "scheduled key rotation failed; the keys in use keep signing")
            }
        }
    }

    /// Rotates every path's signing key now. `None` when no upstream takes minted credentials.
    pub fn rotate_keys(&self) -> Option<Result<Vec<tollgate_mint::Rotated>, GuardError>> {
        let minter = self.credentials.minter.as_ref()?;
        let result = minter.rotate_now(now()).map_err(GuardError::from);
        if let Ok(rotated) = &result {
            for r in rotated {
                info!(path = r.path.as_str(), retired = %r.retired, current = %r.current, "signing key rotated on demand");
            }
        }
        Some(result)
    }

    /// Introspection (RFC 7662): the claims of `token` while it is live, `None` otherwise.
    pub fn introspect(&self, token: &str) -> Option<tollgate_mint::Issued> {
        let claims = self.credentials.minter.as_ref()?.signed_by_us(token)?;
        let text = |name: &str| claims.get(name).and_then(|v| v.as_str()).map(str::to_owned);
        let grant = claims
            .pointer("/authorization_details/0/grant_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let issued = tollgate_mint::Issued {
            jti: text("jti")?,
            iss: text("iss")?,
            sub: text("sub")?,
            client_id: text("client_id")?,
            aud: text("aud")?,
            scope: text("scope")?,
            sid: text("sid")?,
            iat: claims.get("iat")?.as_i64()?,
            exp: claims.get("exp")?.as_i64()?,
            grants: grant.into_iter().collect(),
        };
        // A grant revoked since keeps the tokens minted under it from being active.
        let _ = self.grants.revocations().refresh();
        self.ledger.active(issued, now(), |grants| {
            self.grants
                .revocations()
                .any_revoked(grants.iter().map(String::as_str))
        })
    }

    /// Revokes one minted token; false when no live token has that id.
    pub fn revoke_token(&self, jti: &str) -> bool {
        self.ledger.revoke_token(jti)
    }

    /// Revokes a session: its tokens stop being active and its next call is refused.
    pub fn revoke_session(&self, session: &str) {
        self.ledger.revoke_session(session, now());
    }

    /// The revocation list, signed on the revoke path.
    pub fn revocation_list(&self) -> Option<String> {
        let minter = self.credentials.minter.as_ref()?;
        let now = now();
        let (jtis, sessions) = self.ledger.revocations(now);
        let claims = serde_json::json!({
            "iss": format!("{}/revoke", self.credentials.issuer),
            "iat": now,
            "exp": now + 60,
            "revoked_jtis": jtis,
            "sessions_issued_before": sessions,
        });
        minter
            .sign_claims(
                tollgate_mint::TrustPath::Revoke,
                "tollgate-revocations+jwt",
                &claims,
            )
            .ok()
    }
}

fn load(
    dir: Option<&std::path::Path>,
    tools: &[tollgate_policy::EntryConfig],
) -> Result<Pack, GuardError> {
    let source = match dir {
        Some(dir) => pack_files::read_pack(dir)?,
        None => pack_files::embedded_default(),
    };
    let source = pack_files::with_tools(source, tools);
    let pack = Pack::compile(&source).map_err(|source_error| GuardError::Pack {
        name: source.name.clone(),
        source: source_error,
    })?;
    // What `tollgate policy check` calls an error keeps a version from serving, too.
    let errors: Vec<String> = tollgate_policy::check::findings(&pack)
        .into_iter()
        .filter(|f| f.severity == tollgate_policy::check::Severity::Error)
        .map(|f| f.to_string())
        .collect();
    if !errors.is_empty() {
        return Err(GuardError::Check {
            name: source.name,
            findings: errors,
        });
    }
    Ok(pack)
}

/// The answer when the store cannot answer: what a decision needs is unknown, so the call is
/// refused.
fn store_down(error: &StoreError, call: &ToolCall<'_>) -> Verdict {
    tracing::error!(%error, tool = call.exposed_name, "refused: the guard's store did not answer");
    Verdict::Refuse(refusal(
        "denied: Tollgate cannot reach what it remembers of this session right now, so no call goes ahead; the operator has been told why".to_owned(),
    ))
}

fn refusal(text: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text)])
}

impl Interceptor for PolicyGuard {
    fn before_call<'a>(&'a self, call: &'a ToolCall<'a>) -> PendingVerdict<'a> {
        Box::pin(self.measured(call, None))
    }

    fn resume<'a>(
        &'a self,
        call: &'a ToolCall<'a>,
        approval: &'a str,
        approver: &'a str,
    ) -> PendingVerdict<'a> {
        Box::pin(self.measured(call, Some((approval, approver))))
    }

    fn after_call(&self, call: &ToolCall<'_>, outcome: &Outcome<'_>) {
        let Some(InFlight {
            decision_id,
            decided,
            span,
        }) = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&call.number)
        else {
            return;
        };
        let latency = decided.elapsed();
        self.metrics.call_latency.observe(latency);
        let (result, error) = match outcome {
            Outcome::Completed { is_error: false } => ("ok", None),
            Outcome::Completed { is_error: true } => ("tool_error", None),
            Outcome::Pending => ("pending", None),
            Outcome::Failed(e) => (
                "failed",
                Some(e.to_string().chars().take(300).collect::<String>()),
            ),
        };
        if let (Some(otlp), Some(mut span)) = (&self.otlp, span) {
            span.end_unix_nanos = crate::otlp::unix_nanos();
            span.attributes.push((
                "tollgate.outcome",
                crate::otlp::Attr::Text(result.to_owned()),
            ));
            span.attributes.push((
                "tollgate.latency_us",
                crate::otlp::Attr::Int(i64::try_from(latency.as_micros()).unwrap_or(i64::MAX)),
            ));
            span.error = match result {
                "ok" | "pending" => None,
                other => Some(other.to_owned()),
            };
            otlp.export(*span);
        }
        let Some(audit) = &self.audit else {
            return;
        };
        let line = crate::audit::OutcomeLine {
            kind: "outcome",
            decision_id: &decision_id,
            session: call.session,
            upstream: call.upstream,
            tool: call.tool,
            outcome: result,
            error: error.as_deref(),
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
        };
        serialized(&line, |bytes| match bytes {
            // The call went ahead already: its outcome waits for no sync of its own.
            Ok(bytes) => audit.note_line(bytes),
            Err(e) => tracing::error!(error = %e, "an outcome could not be recorded"),
        });
    }

    fn shutdown(&self) {
        if let Some(audit) = &self.audit {
            audit.close();
        }
        if let Some(otlp) = &self.otlp {
            otlp.shutdown();
        }
    }

    fn visible(&self, session: SessionId, caller: &Caller, tool: &ToolFacts) -> bool {
        if self.pins.state(tool) == PinState::Changed {
            return false;
        }
        let now = now();
        match self.grants.presented(session, caller, now) {
            Ok(Presented::Grant(grant)) => self.current().visible(Some(&grant), tool, now),
            Ok(Presented::Anonymous) => self.current().visible(None, tool, now),
            Err(_) => false,
        }
    }

    fn session_ended(&self, session: SessionId) {
        self.grants.ended(session);
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.forget(session).await {
                warn!(session, %error, "an ended session's history could not be forgotten");
            }
        });
    }
}

/// Refuses every call: what serves when the configured policy could not be loaded, so that a
/// broken pack never means an open door.
#[derive(Debug)]
pub struct Closed {
    pub reason: String,
}

impl Interceptor for Closed {
    fn before_call<'a>(&'a self, _call: &'a ToolCall<'a>) -> PendingVerdict<'a> {
        Box::pin(std::future::ready(Verdict::Refuse(refusal(format!(
            "denied: {}",
            self.reason
        )))))
    }

    fn after_call(&self, _call: &ToolCall<'_>, _outcome: &Outcome<'_>) {}

    fn visible(&self, _session: SessionId, _caller: &Caller, _tool: &ToolFacts) -> bool {
        false
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_serialized_while_another_is_being_handed_over_gets_its_own_buffer() {
        let outer = serialized(&serde_json::json!({"n": 1}), |outer| {
            let inner = serialized(&serde_json::json!({"n": 2}), |inner| {
                inner.map(<[u8]>::to_vec).unwrap_or_default()
            });
            (outer.map(<[u8]>::to_vec).unwrap_or_default(), inner)
        });
        assert_eq!(outer, (br#"{"n":1}"#.to_vec(), br#"{"n":2}"#.to_vec()));
        // And the thread's buffer is used again afterwards.
        let again = serialized(&"x", |bytes| bytes.map(<[u8]>::to_vec).unwrap_or_default());
        assert_eq!(again, br#""x""#.to_vec());
    }

    fn config(pack: &std::path::Path, state: &std::path::Path) -> Config {
        Config::parse(&format!(
            "[front]\nstdio = true\n[policy]\npack = \"{}\"\n[grants]\nstate_dir = \"{}\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/mcp\"\n",
            pack.display(),
            state.display()
        ))
        .unwrap()
    }

    fn write(pack: &std::path::Path, policies: &str) {
        std::fs::create_dir_all(pack).unwrap();
        std::fs::write(
            pack.join("pack.toml"),
            "purposes = [\"p\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n",
        )
        .unwrap();
        std::fs::write(pack.join("rules.cedar"), policies).unwrap();
    }

    const GOOD: &str = "@id(\"reads\") permit (principal, action == Action::\"read\", resource);";
    const SHADOWED: &str = "@id(\"reads\") permit (principal, action == Action::\"read\", resource);\n@id(\"nothing\") forbid (principal, action, resource);";

    #[tokio::test]
    async fn an_allowed_call_goes_ahead_only_once_its_decision_is_recorded() {
        let forwarded = |verdict: Verdict| match verdict {
            Verdict::ForwardAfter(pending) => pending,
            other => panic!("{other:?}"),
        };
        // Not yet durable: the call waits.
        let (record, ticket) = tokio::sync::oneshot::channel();
        let mut pending = forwarded(durable_first(
            tollgate_audit::Ticket::from_receiver(ticket),
            Verdict::ForwardWith(Credential::new("t")),
        ));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut pending.0)
                .await
                .is_err(),
            "forwarded before its record was written"
        );
        record.send(Ok(7)).unwrap();
        let credential = pending.0.await.unwrap().unwrap();
        assert_eq!(credential.expose(), "t");
        // Never written: refused.
        let (record, ticket) = tokio::sync::oneshot::channel();
        let pending = forwarded(durable_first(
            tollgate_audit::Ticket::from_receiver(ticket),
            Verdict::Forward,
        ));
        record
            .send(Err(tollgate_audit::AuditError::Failed {
                dir: "d".into(),
                reason: "disk full".into(),
            }))
            .unwrap();
        let refused = pending.0.await.unwrap_err();
        assert!(refused.contains("could not record"), "{refused}");
        assert!(
            !refused.contains("disk full"),
            "the agent is not told the operator's detail"
        );
        // Refusals are not held.
        assert!(matches!(
            durable_first(
                tollgate_audit::Ticket::from_receiver(tokio::sync::oneshot::channel().1),
                Verdict::Hide
            ),
            Verdict::Hide
        ));
    }

    #[test]
    fn a_version_that_fails_policy_check_is_rejected_whole_at_start_and_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (pack, state) = (dir.path().join("pack"), dir.path().join("state"));
        write(&pack, SHADOWED);
        let err = PolicyGuard::new(&config(&pack, &state))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fails `policy check`") && err.contains("shadowed"),
            "{err}"
        );

        write(&pack, GOOD);
        let guard = PolicyGuard::new(&config(&pack, &state)).unwrap();
        let serving = guard.version();
        for broken in [
            SHADOWED,
            "permit (principal, action, resource) when { context.nope };",
            "",
        ] {
            write(&pack, broken);
            assert!(guard.reload().is_err(), "{broken}");
            assert_eq!(guard.version(), serving, "the old version keeps deciding");
        }
        write(
            &pack,
            &format!("{GOOD}\n// a comment changes the version\n"),
        );
        let reloaded = guard.reload().unwrap();
        assert_ne!(reloaded, serving);
        assert_eq!(guard.version(), reloaded);
    }
}
