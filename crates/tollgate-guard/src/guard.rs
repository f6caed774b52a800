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
    sync::{Arc, RwLock},
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
    intercept::{Caller, Credential, Interceptor, Outcome, PendingVerdict, ToolCall, Verdict},
    pins::PinState,
    session::SessionId,
};

mod charge;
mod credential;
mod decide;
mod hold;
mod identify;
mod operations;
mod pin;
mod provenance;
mod record;
mod watch;

use credential::{Carried, NoCredential};
use identify::{Granted, Presented, STATELESS_KEY};
use record::{Recorded, durable_first};
pub use watch::watch;

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
    /// Where each argument's value came from.
    provenance: tollgate_policy::Provenance,
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
    /// Approval requests, and who may answer them (by their admin-endpoint token).
    approvals: Arc<tollgate_proxy::approvals::Approvals>,
    approval: tollgate_proxy::config::ApprovalsConfig,
    /// Stage 2: the lock file of pinned tool definitions.
    pins: pin::Pins,
    /// Stage 8: the audit trail, spans and the calls in flight until their outcome.
    trail: record::Trail,
    /// The forwarded calls whose results are to be noted in their history's index of values.
    noting: Arc<provenance::Noting>,
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

/// The answer of a stage that refuses a call: the pipeline stops there.
type Refused = Box<Verdict>;

/// A decided call, as the last stage records and answers it.
struct Decided<'a, 'i> {
    call: &'a ToolCall<'a>,
    arguments: &'a CallArguments<'a>,
    history: SessionId,
    shared: Option<&'a Arc<Granted>>,
    decision: &'a Decision,
    decision_id: &'a str,
    justification: Option<&'a str>,
    input: Option<&'a mut InputRecord<'i>>,
    facts: &'a ToolFacts,
    shadow: Option<&'a Decision>,
    carried: Carried,
    approval: Option<&'a str>,
    provenance: &'a tollgate_policy::Provenance,
    now: i64,
}

/// The id the trail, the call's outcome and its span know the decision by. Without one that
/// no other decision shares, the call is refused before anything is charged.
fn decision_id(call: &ToolCall<'_>) -> Result<String, Refused> {
    tollgate_mint::new_id("d").map_err(|e| {
        tracing::error!(error = %e, tool = call.exposed_name, "refused: no decision id can be made");
        Box::new(Verdict::Refuse(refusal(
            "denied: Tollgate cannot make an id for this decision right now".to_owned(),
        )))
    })
}

/// What the agent says of this call: untrusted, recorded with the decision, and only ever
/// able to narrow (a policy may require it; nothing grants more because of it).
fn justification(call: &ToolCall<'_>) -> Option<String> {
    call.meta
        .get(JUSTIFICATION_KEY)
        .and_then(|v| v.as_str())
        .map(|s| s.chars().take(MAX_JUSTIFICATION).collect())
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
            noting: Arc::default(),
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
            trail: record::Trail::new(
                crate::audit::open(&config.audit, &config.grants.state_dir)
                    .map_err(GuardError::Audit)?,
                config.telemetry.otlp_endpoint.as_deref().map(|endpoint| {
                    info!(%endpoint, "decided calls are exported as OpenTelemetry spans");
                    crate::otlp::Exporter::start(
                        endpoint,
                        &config.telemetry.service_name,
                        config.telemetry.export_every,
                    )
                }),
            ),
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

    /// Where the pack is read from, when it is not the embedded default.
    pub fn pack_dir(&self) -> Option<&std::path::Path> {
        self.pack_dir.as_deref()
    }

    /// What stands for a call of `facts` at `now` before it is decided, read under one lock:
    /// the history's statistics and taints, whether it (or its grant) is held for review, and
    /// the tool's pin.
    async fn standing(
        &self,
        call: &ToolCall<'_>,
        key: SessionId,
        shared: Option<&Arc<identify::Granted>>,
        facts: &ToolFacts,
        now: i64,
    ) -> Result<Standing, StoreError> {
        let probes = provenance::probes(call, shared.map(|g| &g.intent));
        let grant = shared.map(|g| &g.grant);
        let kept = self.store.standing(key, grant, now, &probes.keys).await?;
        Ok(Standing {
            now,
            provenance: provenance::origins(&probes, &kept, shared.map(|g| &g.intent)),
            kept,
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
        self.pipeline(call, approval)
            .await
            .unwrap_or_else(|refused| *refused)
    }

    /// The stages every call passes, in order; the first that refuses answers the call.
    async fn pipeline(
        &self,
        call: &ToolCall<'_>,
        approval: Option<(&str, &str)>,
    ) -> Result<Verdict, Refused> {
        let now = now();
        let down = |e: StoreError| Box::new(store_down(&e, call));
        // 1 identify: the grant, and where the call's history is kept.
        let presented = self.identify(call, now)?;
        let (shared, facts) = (presented.shared(), self.facts(call)?);
        let grant = shared.map(|g| &g.grant);
        let history = identify::history_key(call.session, call.caller, grant);
        // and where each argument's value came from, in the same read, once what the
        // history's earlier results carried is in the index.
        self.noting
            .settled(history)
            .await
            .map_err(|unnoted| Box::new(unnoted_refusal(unnoted, call)))?;
        let standing = self
            .standing(call, history, shared, facts, now)
            .await
            .map_err(down)?;
        hold::not_held(&standing.kept)?;
        // 2 pin: the tool's definition as reviewed.
        self.admit_pinned(call, standing.pin)?;
        let pack = self.current();
        self.shown(&pack, call, grant, facts, history, now)?;
        let (decision_id, justification) = (decision_id(call)?, justification(call));
        // 3 classify, validate, bind and 4 decide: the engine, then Tollgate's own files.
        let deciding = self.deciding(&pack);
        let (mut decision, mut input, shadow) =
            deciding.decide(call, grant, facts, justification.as_deref(), &standing);
        pin::vouch(call.exposed_name, standing.pin, &mut decision);
        let offset = self.env.offset;
        provenance::explain_refusal(&mut decision, call.arguments, &standing.provenance, offset);
        // 5 hold: an approval given counts for exactly this call.
        let arguments = CallArguments::new(call.arguments);
        let approvals = &self.approvals;
        hold::approved(
            approvals,
            approval,
            history,
            grant,
            call,
            &arguments,
            &mut decision,
        );
        // 6 charge: the session's and the grant's limits, atomically.
        if decision.is_allow() {
            charge::charge(&*self.store, history, &pack, call, grant, &mut decision)
                .await
                .map_err(down)?;
        }
        // 7 credential: minted or exchanged for this call alone.
        let carried = self.carry(
            call,
            grant,
            &mut decision,
            &decision_id,
            approval,
            &arguments,
            now,
        );
        // 8 record: the history, then the trail and the answer.
        self.record(history, now, &decision, grant)
            .await
            .map_err(down)?;
        if decision.is_allow() {
            self.noting.expect(call.number, history);
        }
        Ok(self.verdict(Decided {
            call,
            arguments: &arguments,
            history,
            shared,
            decision: &decision,
            decision_id: &decision_id,
            justification: justification.as_deref(),
            input: input.as_mut(),
            facts,
            shadow: shadow.as_ref(),
            carried,
            approval: approval.map(|a| a.0),
            provenance: &standing.provenance,
            now,
        }))
    }

    /// Stage 1: the trail can take the decision, the session is not revoked, and the grant it
    /// presents holds (or it may run anonymously).
    fn identify(&self, call: &ToolCall<'_>, now: i64) -> Result<Presented, Refused> {
        if let Some(failure) = self.trail.audit.as_ref().and_then(|a| a.failure()) {
            tracing::error!(%failure, tool = call.exposed_name, "refused: decisions cannot be recorded");
            return Err(Box::new(Verdict::Refuse(refusal(
                "denied: Tollgate cannot record its decisions right now, so no call goes ahead; the operator has been told why".to_owned(),
            ))));
        }
        if self.ledger.session_revoked(&call.session.to_string()) {
            return Err(Box::new(Verdict::Reject(
                "this session has been revoked".to_owned(),
            )));
        }
        self.grants
            .presented(call.session, call.caller, now)
            .map_err(|reason| {
                info!(session = call.session, tool = call.exposed_name, %reason, "grant refused");
                Box::new(Verdict::Reject(reason))
            })
    }

    /// The routed tool's facts; a routed tool always has them, and without them nothing can be
    /// checked.
    fn facts<'c>(&self, call: &ToolCall<'c>) -> Result<&'c ToolFacts, Refused> {
        call.facts.ok_or_else(|| {
            Box::new(Verdict::Refuse(refusal(
                "the tool's definition is not known yet; the call is denied".to_owned(),
            )))
        })
    }

    /// Stage 2: a tool whose definition left its pin, where that is refused.
    fn admit_pinned(&self, call: &ToolCall<'_>, state: PinState) -> Result<(), Refused> {
        self.pins
            .admit(call.exposed_name, state)
            .map_err(|pin::Unpinned(refused)| {
                warn!(
                    tool = call.exposed_name,
                    upstream = call.upstream,
                    "the tool's definition differs from its pin; refused"
                );
                Box::new(Verdict::Refuse(refusal(refused)))
            })
    }

    /// A tool this grant and pack can never allow is answered as unknown; calling what one
    /// cannot even see is worth a record: it is how probing looks.
    fn shown(
        &self,
        pack: &Pack,
        call: &ToolCall<'_>,
        grant: Option<&Grant>,
        facts: &ToolFacts,
        history: SessionId,
        now: i64,
    ) -> Result<(), Refused> {
        if pack.visible(grant, facts, now) {
            return Ok(());
        }
        if let Some(audit) = &self.trail.audit {
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
        Err(Box::new(Verdict::Hide))
    }

    /// What stage 4 decides with: the pack in use, the shadow pack beside it, the environment.
    fn deciding<'a>(&'a self, pack: &'a Pack) -> decide::Deciding<'a> {
        decide::Deciding {
            pack,
            shadow: self.shadow.as_ref().map(|(_, shadow)| {
                shadow
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
            }),
            env: &self.env,
            local: &self.local,
            protected: &self.protected,
            keep_input: self.trail.audit.is_some(),
            metrics: &self.metrics,
        }
    }

    /// Stage 7: the credential an allowed call carries; a call that needs one and cannot get
    /// one is denied.
    #[allow(clippy::too_many_arguments)]
    fn carry(
        &self,
        call: &ToolCall<'_>,
        grant: Option<&Grant>,
        decision: &mut Decision,
        decision_id: &str,
        approval: Option<(&str, &str)>,
        arguments: &CallArguments<'_>,
        now: i64,
    ) -> Carried {
        if !decision.is_allow() {
            return Carried::Nothing;
        }
        let carried = self.credentials.carry(
            &self.ledger,
            call,
            grant,
            decision,
            decision_id,
            approval.map(|a| a.0),
            arguments,
            now,
        );
        carried.unwrap_or_else(|NoCredential { detail, shown }| {
            warn!(tool = call.exposed_name, %detail, "no credential could be minted; denied");
            decision.effect = Effect::Deny;
            decision.policies = vec!["tollgate:mint".to_owned()];
            decision.reasons = vec![if shown {
                detail
            } else {
                "a credential for this call could not be made; it is denied".to_owned()
            }];
            Carried::Nothing
        })
    }

    /// Stage 8, and the answer: the decision logged and recorded in the trail; an allowed call
    /// forwarded once its record is written, a denied one refused, a held one waiting.
    fn verdict(&self, decided: Decided<'_, '_>) -> Verdict {
        let Decided {
            call,
            arguments,
            history,
            shared,
            decision,
            decision_id,
            justification,
            input,
            facts,
            shadow,
            carried,
            approval,
            provenance,
            now,
        } = decided;
        let grant = shared.map(|g| &g.grant);
        let minted = match &carried {
            Carried::Token(minted)
            | Carried::Exchange {
                subject: minted, ..
            } => Some(minted),
            Carried::Nothing | Carried::Cached(_) => None,
        };
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
        let input = input.map(|input| {
            input.settle(decision);
            &*input
        });
        let recorded = Recorded {
            call,
            arguments,
            history,
            grant: shared,
            decision,
            decision_id,
            justification,
            minted,
            input,
            facts,
            shadow,
        };
        match decision.effect {
            Effect::Allow => {
                let ticket = self.trail.decision(&recorded, approval, None);
                let span = self.trail.span(&recorded);
                let verdict = match carried {
                    Carried::Token(minted) => Verdict::ForwardWith(Credential::new(minted.token)),
                    Carried::Cached(credential) => Verdict::ForwardWith(credential),
                    Carried::Exchange { pending, .. } => Verdict::ForwardAfter(pending),
                    Carried::Nothing => Verdict::Forward,
                };
                self.trail.track(call.number, decision_id, span);
                match ticket {
                    Some(ticket) => durable_first(ticket, verdict),
                    None => verdict,
                }
            }
            Effect::Deny => {
                drop(self.trail.decision(&recorded, None, None));
                self.trail.export_now(&recorded);
                Verdict::Refuse(refusal(format!("denied: {}", decision.reason_text())))
            }
            Effect::NeedsApproval => {
                self.trail.export_now(&recorded);
                let origins =
                    provenance::for_people(decision, call.arguments, provenance, self.env.offset);
                hold::hold(
                    &self.approval,
                    &self.approvals,
                    &self.trail,
                    &self.credentials,
                    &recorded,
                    origins,
                    now,
                )
            }
        }
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

fn unnoted_refusal(unnoted: provenance::Unnoted, call: &ToolCall<'_>) -> Verdict {
    tracing::warn!(
        tool = call.exposed_name,
        session = call.session,
        ?unnoted,
        "refused: an earlier result of the session is not in its index of values"
    );
    Verdict::Refuse(refusal(unnoted.reason().to_owned()))
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
        self.noting.done(call.number);
        self.trail.outcome(&self.metrics, call, outcome);
    }

    fn wants_results(&self) -> bool {
        true
    }

    fn note_result<'a>(
        &'a self,
        call: &'a ToolCall<'a>,
        result: tollgate_proxy::intercept::ResultJson,
    ) -> tollgate_proxy::intercept::PendingNote<'a> {
        Box::pin(async move {
            let (Some(history), Some(facts)) = (self.noting.done(call.number), call.facts) else {
                // A call the guard did not let through has no result to note.
                return Ok(());
            };
            // Begun before the agent has the result: the history's next decision waits for it.
            let ticket = self.noting.begin(history);
            let output = self.current().output_of(facts);
            tokio::spawn(provenance::note(
                Arc::clone(&self.store),
                facts.name().to_owned(),
                output,
                (history, ticket),
                result,
                now(),
            ));
            Ok(())
        })
    }

    fn note_read<'a>(
        &'a self,
        session: SessionId,
        caller: &'a Caller,
        uri: &'a str,
        result: serde_json::Value,
    ) -> tollgate_proxy::intercept::PendingNote<'a> {
        Box::pin(async move {
            let now = now();
            // A session without a usable grant has no call that could act on what it read.
            let Ok(presented) = self.grants.presented(session, caller, now) else {
                return Ok(());
            };
            let grant = presented.shared().map(|g| &g.grant);
            let history = identify::history_key(session, caller, grant);
            let ticket = self.noting.begin(history);
            tokio::spawn(provenance::note_read(
                Arc::clone(&self.store),
                (history, ticket),
                uri.to_owned(),
                result,
                now,
            ));
            Ok(())
        })
    }

    fn shutdown(&self) {
        self.trail.close();
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
        self.noting.forget(session);
        let store = Arc::clone(&self.store);
        // Outside a runtime (a session ended as Tollgate stops) nothing waits on the store.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = store.forget(session).await {
                    warn!(session, %error, "an ended session's history could not be forgotten");
                }
            });
        } else {
            // A store that forgets as it is asked (the memory store) still does.
            drop(store.forget(session));
        }
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

#[cfg(test)]
mod tests;
