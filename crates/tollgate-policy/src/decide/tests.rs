use std::collections::BTreeSet;

use serde_json::json;

use super::*;
use crate::{PackSource, SchemaCache, catalog::Hints};

fn pack(policies: &str) -> Pack {
    Pack::compile(&PackSource {
        name: "t".into(),
        manifest: "purposes = [\"p\"]\n[[tool]]\ntool = \"*\"\nclass = \"read\"\n".into(),
        schema: None,
        policies: vec![("t.cedar".into(), policies.into())],
        extra_tools: Vec::new(),
    })
    .unwrap()
}

fn tool(name: &str) -> ToolFacts {
    let open = json!({"type": "object"}).as_object().cloned().unwrap();
    ToolFacts::new(
        name,
        "up",
        Hints::default(),
        None,
        SchemaCache::default().compile(&open),
    )
}

/// A grant for `read` calls of any tool until t=10,000.
fn reader() -> Grant {
    Grant {
        id: "g-00000000000000000000aaaa".into(),
        iss: "tollgate".into(),
        iat: 0,
        exp: 10_000,
        chain: Vec::new(),
        purpose: "p".into(),
        task: String::new(),
        agent: None,
        user: None,
        resources: BTreeSet::new(),
        approve: BTreeSet::new(),
        actions: BTreeSet::from([ActionClass::Read]),
        tools: BTreeSet::from(["*".to_owned()]),
        constraints: Vec::new(),
        limits: Vec::new(),
    }
}

fn decide(pack: &Pack, tool: &ToolFacts, stats: &SessionStats) -> Decision {
    let grant = reader();
    pack.decide(&CallInput {
        session: &SessionFacts::default(),
        grant: Some(&grant),
        tool,
        arguments: None,
        justification: None,
        now: 100,
        env: &Environment::default(),
        stats,
        usage: &Usage::new(),
        taint: &[],
        pinned: false,
        paths: None,
        provenance: None,
    })
}

#[test]
fn only_fields_the_slice_names_are_built_and_the_rest_still_decide() {
    let pack = pack(
        r#"
        @id("all") permit (principal, action, resource);
        @id("busy") forbid (principal, action, resource == Tool::"b")
          when { context.stats.calls_last_minute > 5 };
        "#,
    );
    let (a, b) = (tool("a"), tool("b"));
    let a_plan = pack.plan(&a);
    let b_plan = pack.plan(&b);
    assert!(!a_plan.reads("stats") && !a_plan.reads("args"));
    assert!(b_plan.reads("stats"));
    let busy = SessionStats {
        calls_last_minute: 9,
        ..SessionStats::default()
    };
    assert_eq!(decide(&pack, &a, &busy).effect, Effect::Allow);
    let d = decide(&pack, &b, &busy);
    assert_eq!(
        (d.effect, d.policies.as_slice()),
        (Effect::Deny, ["busy".to_owned()].as_slice())
    );
    assert_eq!(
        decide(&pack, &b, &SessionStats::default()).effect,
        Effect::Allow
    );
}

#[test]
fn the_user_at_the_agent_may_approve_only_when_every_gate_says_so() {
    let open = pack(
        r#"
        @id("gate") @needs_approval @in_band permit (principal, action, resource);
        "#,
    );
    let d = decide(&open, &tool("a"), &SessionStats::default());
    assert_eq!((d.effect, d.in_band), (Effect::NeedsApproval, true));
    let mixed = pack(
        r#"
        @id("gate") @needs_approval @in_band permit (principal, action, resource);
        @id("finance") @needs_approval @approvers("finance") permit (principal, action, resource == Tool::"b");
        "#,
    );
    let a = decide(&mixed, &tool("a"), &SessionStats::default());
    assert!(a.in_band, "only the in-band gate holds `a`");
    let b = decide(&mixed, &tool("b"), &SessionStats::default());
    assert_eq!(
        (b.effect, b.in_band, b.approvers.as_slice()),
        (
            Effect::NeedsApproval,
            false,
            ["finance".to_owned()].as_slice()
        ),
        "a gate naming approvers keeps the call out of the agent's hands"
    );
    let plain = pack(r#"@id("all") permit (principal, action, resource);"#);
    assert!(!decide(&plain, &tool("a"), &SessionStats::default()).in_band);
}

#[test]
fn an_evaluation_error_denies_even_when_a_permit_holds() {
    // `context.args.amount` is a string here, so `<` fails to evaluate.
    let pack = pack(
        r#"
        @id("all") permit (principal, action, resource);
        @id("cap") forbid (principal, action, resource)
          when { context.args has amount && context.args.amount > 100 };
        "#,
    );
    let t = tool("t");
    let grant_args = json!({"amount": "lots"}).as_object().cloned().unwrap();
    let grant = reader();
    let d = pack.decide(&CallInput {
        session: &SessionFacts::default(),
        grant: Some(&grant),
        tool: &t,
        arguments: Some(&grant_args),
        justification: None,
        now: 100,
        env: &Environment::default(),
        stats: &SessionStats::default(),
        usage: &Usage::new(),
        taint: &[],
        pinned: false,
        paths: None,
        provenance: None,
    });
    assert_eq!(d.effect, Effect::Deny);
    assert_eq!(d.policies, ["tollgate:evaluation-error", "cap"]);
    assert!(d.detail.is_some());
    assert!(
        !d.reason_text().contains("context"),
        "no policy text reaches the agent"
    );
}
