//! The credential stage: what an allowed call carries to its upstream. A token minted for the
//! one call (for an HTTP API tool, naming the exact request it becomes), a token exchanged for
//! it at an authorization server, or nothing; and what that credential will name, for an
//! approver to see before it exists.

use std::{collections::HashMap, sync::Arc};

use tollgate_mint::{AccessKeys, CallCredential, Minted};
use tollgate_policy::{Decision, Grant};
use tollgate_proxy::{
    config::CredentialConfig,
    intercept::{Credential, PendingCredential, ToolCall},
};
use tracing::warn;

use super::CallArguments;

/// What allowed calls carry, by upstream, and the keys that sign it.
pub(crate) struct Credentials {
    /// The per-call signing keys, when some upstream takes minted credentials.
    pub(crate) minter: Option<AccessKeys>,
    pub(crate) issuer: String,
    /// What each upstream's allowed calls carry, by upstream name.
    pub(crate) by_upstream: HashMap<String, CredentialConfig>,
    /// The HTTP API upstreams: a call's credential names the exact request it becomes.
    pub(crate) apis: HashMap<String, Arc<tollgate_proxy::api::ApiSpec>>,
    /// The token-exchange client of each upstream that takes exchanged tokens.
    pub(crate) exchangers: HashMap<String, Arc<crate::exchange::Exchanger>>,
}

impl Credentials {
    /// The credential an allowed call carries to its upstream, if the upstream takes one.
    /// `Err` when one is needed and cannot be made: the call is then denied.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn carry(
        &self,
        ledger: &tollgate_mint::Ledger,
        call: &ToolCall<'_>,
        grant: Option<&Grant>,
        decision: &Decision,
        decision_id: &str,
        approval: Option<&str>,
        arguments: &CallArguments<'_>,
        now: i64,
    ) -> Result<Carried, NoCredential> {
        let (audience, lifetime_secs, exchanger) = match self.by_upstream.get(call.upstream) {
            Some(CredentialConfig::Mint {
                audience,
                lifetime_secs,
            }) => (audience.as_str(), *lifetime_secs, None),
            Some(CredentialConfig::Exchange(exchange)) => (
                exchange.subject_audience.as_str(),
                60,
                self.exchangers.get(call.upstream),
            ),
            _ => return Ok(Carried::Nothing),
        };
        let subject = grant
            .and_then(|g| g.user.as_deref().or(g.agent.as_deref()))
            .unwrap_or("anonymous");
        let scope = match exchanger.map(|e| &e.config().scopes) {
            Some(Some(scopes)) => match scopes.get(&decision.class) {
                Some(scope) => Some(scope.clone()),
                None => {
                    return Err(NoCredential::shown(format!(
                        "no scope is configured for {} calls to `{}`",
                        decision.class, call.upstream
                    )));
                }
            },
            _ => None,
        };
        if let Some(exchanger) = exchanger
            && let Some(cached) = exchanger.cached(subject, scope.as_deref())
        {
            return Ok(Carried::Cached(cached));
        }
        let minter = self
            .minter
            .as_ref()
            .ok_or_else(|| NoCredential::hidden("no signing keys are loaded"))?;
        if let Err(error) = minter.refresh(now) {
            warn!(%error, "the signing keyring cannot be reread; the keys in use keep signing");
        }
        let resources: Vec<String> = decision.resources.iter().map(ToString::to_string).collect();
        // A call Tollgate makes over HTTP itself: the token names that exact request.
        let request = match self.apis.get(call.upstream) {
            Some(spec) => {
                let tool = spec.tool(call.tool).ok_or_else(|| {
                    NoCredential::hidden(format!("`{}` is not one of this API's tools", call.tool))
                })?;
                Some(
                    tollgate_proxy::api::plan(spec, tool, arguments.object())
                        .map_err(NoCredential::shown)?,
                )
            }
            None => None,
        };
        let agent = grant.and_then(|g| g.agent.as_deref()).unwrap_or("agent");
        let session = call.session.to_string();
        let minted = minter
            .mint(&CallCredential {
                issuer_base: &self.issuer,
                subject,
                client_id: agent,
                audience,
                session: &session,
                tool: call.tool,
                class: decision.class,
                resources: &resources,
                arguments_sha256: arguments.digest(),
                decision_id,
                grant_id: grant.map(|g| g.id.as_str()),
                approval_id: approval,
                http: request.as_ref().map(|r| tollgate_mint::access::HttpCall {
                    method: r.method.as_str(),
                    path: &r.path,
                    body: &r.body,
                }),
                now,
                lifetime_secs,
            })
            .map_err(|e| NoCredential::hidden(e.to_string()))?;
        ledger.record(
            &minted.jti,
            minted.exp,
            grant.map(|g| g.id.as_str()),
            || {
                grant
                    .map(|g| g.lineage().map(str::to_owned).collect())
                    .unwrap_or_default()
            },
            now,
        );
        let Some(exchanger) = exchanger else {
            return Ok(Carried::Token(minted));
        };
        // The actor: Tollgate itself, on the same trust path as the subject token.
        let path = tollgate_mint::TrustPath::for_class(decision.class);
        let issuer = format!("{}/{}", self.issuer, path.as_str());
        let actor_jti =
            tollgate_mint::new_id("a").map_err(|e| NoCredential::hidden(e.to_string()))?;
        let actor_token = minter
            .sign_claims(
                path,
                "JWT",
                &serde_json::json!({
                    "iss": issuer,
                    "sub": "tollgate",
                    "aud": audience,
                    "iat": now,
                    "exp": now + 60,
                    "jti": actor_jti,
                }),
            )
            .map_err(|e| NoCredential::hidden(e.to_string()))?;
        let exchanger = exchanger.clone();
        let request = crate::exchange::Request {
            subject_token: minted.token.clone(),
            actor_token,
            subject: subject.to_owned(),
            scope,
        };
        Ok(Carried::Exchange {
            subject: minted,
            pending: PendingCredential(Box::pin(async move {
                exchanger
                    .exchange(request)
                    .await
                    .map(Some)
                    .map_err(|reason| {
                        format!("a credential for this call could not be obtained ({reason})")
                    })
            })),
        })
    }

    /// What the credential of `call` will name, for the approver to see: its audience and the
    /// one `authorization_details` entry (for an HTTP API tool, the exact request). `None` when
    /// the upstream takes no credential.
    pub(crate) fn preview(
        &self,
        call: &ToolCall<'_>,
        decision: &Decision,
        arguments: &serde_json::Value,
        arguments_sha256: &str,
    ) -> Option<serde_json::Value> {
        let audience = match self.by_upstream.get(call.upstream)? {
            CredentialConfig::Mint { audience, .. } => audience.clone(),
            CredentialConfig::Exchange(exchange) => exchange.audience.clone(),
            CredentialConfig::None | CredentialConfig::Secret { .. } => return None,
        };
        let mut details = serde_json::json!({
            "type": tollgate_mint::access::DETAILS_TYPE,
            "tool": call.tool,
            "action": decision.class.as_str(),
            "resources": decision.resources.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "arguments_sha256": arguments_sha256,
        });
        if let (Some(spec), Some(object)) = (self.apis.get(call.upstream), arguments.as_object())
            && let Some(tool) = spec.tool(call.tool)
            && let Ok(request) = tollgate_proxy::api::plan(spec, tool, object)
            && let Some(fields) = details.as_object_mut()
        {
            fields.insert("method".into(), request.method.as_str().into());
            fields.insert("path".into(), request.path.into());
            fields.insert(
                "body_sha256".into(),
                tollgate_mint::access::body_digest(&request.body).into(),
            );
        }
        Some(serde_json::json!({"aud": audience, "authorization_details": [details]}))
    }
}

/// What an allowed call carries.
pub(crate) enum Carried {
    Nothing,
    Token(Minted),
    /// A token exchange still to be made with `subject`, the token minted for the call.
    Exchange {
        subject: Minted,
        pending: PendingCredential,
    },
    /// A token exchanged earlier for the same subject, audience and scope.
    Cached(Credential),
}

/// Why no credential could be made: `shown` when the detail is the agent's to read (an
/// argument that does not fit the request), else it is only logged.
pub(crate) struct NoCredential {
    pub(crate) detail: String,
    pub(crate) shown: bool,
}

impl NoCredential {
    fn shown(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            shown: true,
        }
    }

    fn hidden(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            shown: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use rmcp::model::RequestMetaObject;
    use tollgate_policy::{ActionClass, Effect, Risk};
    use tollgate_proxy::intercept::Caller;

    use super::*;

    #[test]
    fn an_upstream_without_a_credential_carries_nothing_and_one_without_keys_is_refused_quietly() {
        let credentials = Credentials {
            minter: None,
            issuer: "https://tollgate.test".to_owned(),
            by_upstream: HashMap::from([(
                "api".to_owned(),
                CredentialConfig::Mint {
                    audience: "https://api.test".to_owned(),
                    lifetime_secs: 60,
                },
            )]),
            apis: HashMap::new(),
            exchangers: HashMap::new(),
        };
        let (meta, caller) = (RequestMetaObject::new(), Caller::stdio(None));
        let call = |upstream| ToolCall {
            session: 1,
            upstream,
            tool: "t",
            exposed_name: "t",
            arguments: None,
            meta: &meta,
            caller: &caller,
            facts: None,
            can_ask: false,
            number: 1,
        };
        let decision = Decision {
            effect: Effect::Allow,
            policies: vec!["reads".to_owned()],
            ..Decision::undecided("v", ActionClass::Read, Risk::Low)
        };
        let (ledger, arguments) = (tollgate_mint::Ledger::default(), CallArguments::new(None));
        let carry = |upstream| {
            credentials.carry(
                &ledger,
                &call(upstream),
                None,
                &decision,
                "d-1",
                None,
                &arguments,
                0,
            )
        };
        assert!(matches!(carry("plain"), Ok(Carried::Nothing)));
        match carry("api") {
            Err(NoCredential { detail, shown }) => {
                assert!(!shown, "the operator's detail is not the agent's: {detail}");
                assert!(detail.contains("no signing keys"), "{detail}");
            }
            Ok(_) => panic!("a credential without keys"),
        }
        assert!(
            credentials
                .preview(&call("api"), &decision, &serde_json::json!({}), "digest")
                .is_some_and(|p| p["aud"] == "https://api.test"),
            "an approver sees who the credential will be for"
        );
        assert!(
            credentials
                .preview(&call("plain"), &decision, &serde_json::json!({}), "digest")
                .is_none()
        );
    }
}
