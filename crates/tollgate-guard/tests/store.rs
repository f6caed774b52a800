//! The guard and its store: the same call under the memory store and under a store that cannot
//! answer. A store that is down refuses; it never allows.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use rmcp::model::RequestMetaObject;
use serde_json::{Map, Value, json};
use tollgate_guard::{
    PolicyGuard,
    store::{
        Changed, Charged, Charges, Decided, HistoryKey, Pending, Quarantine, Standing, Store,
        StoreError,
    },
};
use tollgate_policy::{Grant, Hints, SchemaCache, ToolFacts};
use tollgate_proxy::{
    Caller, Config,
    intercept::{Interceptor, ToolCall, Verdict},
};

/// A store whose server is gone.
#[derive(Debug)]
struct Down;

fn down<'a, T: Send + 'a>() -> Pending<'a, T> {
    Box::pin(std::future::ready(Err(StoreError::Unavailable(
        "connection refused".to_owned(),
    ))))
}

impl Store for Down {
    fn standing<'a>(
        &'a self,
        _: HistoryKey,
        _: Option<&'a Grant>,
        _: i64,
        _: &'a [tollgate_policy::provenance::ValueKey],
    ) -> Pending<'a, Standing> {
        down()
    }
    fn note<'a>(
        &'a self,
        _: HistoryKey,
        _: &'a tollgate_policy::provenance::Observed,
    ) -> Pending<'a, ()> {
        down()
    }
    fn record<'a>(&'a self, _: Decided<'a>) -> Pending<'a, Changed> {
        down()
    }
    fn charge<'a>(&'a self, _: Charges<'a>) -> Pending<'a, Charged> {
        down()
    }
    fn quarantined(&self) -> Pending<'_, Vec<Quarantine>> {
        down()
    }
    fn release<'a>(&'a self, _: &'a str) -> Pending<'a, bool> {
        down()
    }
    fn forget(&self, _: HistoryKey) -> Pending<'_, ()> {
        down()
    }
}

fn facts() -> ToolFacts {
    let schema: Map<String, Value> = json!({
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"]
    })
    .as_object()
    .cloned()
    .unwrap();
    ToolFacts::new(
        "fs.read_text_file",
        "fs",
        Hints {
            read_only: Some(true),
            ..Hints::default()
        },
        Some("/srv/app".to_owned()),
        SchemaCache::default().compile(&schema),
    )
    .with_entry(&schema)
}

fn guard(dir: &std::path::Path) -> (PolicyGuard, Caller) {
    let pack = dir.join("pack");
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::write(pack.join("pack.toml"), "purposes = [\"maintenance\"]\n").unwrap();
    std::fs::write(
        pack.join("rules.cedar"),
        r#"@id("reads") permit (principal, action == Action::"read", resource) when { context.grant.present };"#,
    )
    .unwrap();
    let state = dir.join("state");
    let config = Config::parse(&format!(
        "[front]\nstdio = true\n[policy]\npack = {pack:?}\n[grants]\nstate_dir = {state:?}\n[audit]\nenabled = false\n[[policy.tool]]\ntool = \"fs.read_text_file\"\nclass = \"read\"\nresources = {{ path = \"path\" }}\n[[upstream]]\nname = \"fs\"\ncommand = \"true\"\nroot = \"/srv/app\"\n",
        pack = pack.display().to_string(),
        state = state.display().to_string(),
    ))
    .unwrap();
    let signer = tollgate_mint::GrantSigner::load_or_create(&state).unwrap();
    let grant = Grant {
        resources: ["path:/srv/app/**".parse().unwrap()].into(),
        ..Grant::root(
            tollgate_mint::new_grant_id().unwrap(),
            "maintenance",
            [tollgate_policy::ActionClass::Read],
            tollgate_mint::unix_now(),
            3600,
        )
    };
    (
        PolicyGuard::new(&config).unwrap(),
        Caller::stdio(Some(signer.sign(&grant).unwrap())),
    )
}

async fn verdict(guard: &PolicyGuard, caller: &Caller) -> Verdict {
    let facts = facts();
    let arguments = json!({"path": "docs/a.md"}).as_object().cloned().unwrap();
    let meta = RequestMetaObject::new();
    let call = ToolCall {
        session: 1,
        upstream: "fs",
        tool: "read_text_file",
        exposed_name: "fs.read_text_file",
        arguments: Some(&arguments),
        meta: &meta,
        caller,
        facts: Some(&facts),
        can_ask: false,
        number: 1,
    };
    guard.before_call(&call).await
}

#[tokio::test]
async fn a_call_the_memory_store_lets_through_is_refused_when_the_store_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, caller) = guard(dir.path());
    assert!(
        matches!(verdict(&memory, &caller).await, Verdict::Forward),
        "the call is allowed with a store that answers"
    );
    let (down, caller) = guard(dir.path());
    let down = down.with_store(Arc::new(Down));
    match verdict(&down, &caller).await {
        Verdict::Refuse(result) => {
            let text = serde_json::to_string(&result).unwrap();
            assert!(text.contains("cannot reach what it remembers"), "{text}");
            assert!(
                !text.contains("connection refused"),
                "the operator's detail stays in the log: {text}"
            );
        }
        other => panic!("a store that is down must refuse, not {other:?}"),
    }
    assert!(down.quarantined().await.is_err());
    assert!(down.release("1").await.is_err());
}
