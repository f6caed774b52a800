//! Records written, read back and replayed.

use super::*;
use crate::catalog::Hints;

#[test]
fn arguments_with_a_placeholder_are_not_kept_whole() {
    let map = |v: Value| v.as_object().cloned();
    assert!(kept_whole(None));
    assert!(kept_whole(
        map(serde_json::json!({"a": 1, "b": ["x"]})).as_ref()
    ));
    assert!(!kept_whole(
        map(serde_json::json!({"a": {"card": [REDACTED]}})).as_ref()
    ));
    assert!(!kept_whole(
        map(serde_json::json!({ NOT_KEPT: "9000 bytes" })).as_ref()
    ));
}

/// The input of a stdio call at time 5 that the engine decided `decided` by `policy`.
fn plain_input(decided: Effect, policy: &str) -> InputRecord<'static> {
    InputRecord {
        tool: Text::from("tool:ab".to_owned()),
        grant: None,
        transport: "stdio".into(),
        address: String::new(),
        now: 5,
        env: "dev".into(),
        utc_offset_minutes: 0,
        stats: SessionStats::default(),
        usage: Vec::new(),
        taint: Vec::new(),
        pinned: false,
        resolved: Vec::new(),
        provenance: None,
        decided: Some(decided),
        policies: Some(vec![Text::from(policy.to_owned())]),
    }
}

#[test]
fn a_record_borrows_what_it_can_and_reads_escapes_too() {
    let line = r#"{"kind":"decision","decision_id":"d-1","version":"v\"2","reasons":["a \"quoted\" reason"],"input":{"tool":"tool:ab","grant":"grant:\u0067-1","transport":"stdio","now":5,"env":"dev","stats":{},"pinned":true,"decided":"deny","policies":["no-\"x\"","plain"]}}"#;
    let record: DecisionRecord<'_> = serde_json::from_str(line).unwrap();
    assert!(matches!(record.kind.0, Cow::Borrowed("decision")));
    assert!(matches!(
        record.decision_id.as_ref().unwrap().0,
        Cow::Borrowed("d-1")
    ));
    // Escaped text is read, copied, never refused.
    assert_eq!(record.version.as_deref(), Some("v\"2"));
    let input = record.input.unwrap();
    assert!(matches!(input.tool.0, Cow::Borrowed("tool:ab")));
    assert_eq!(input.grant.as_deref(), Some("grant:g-1"));
    assert!(matches!(input.grant.unwrap().0, Cow::Owned(_)));
    let policies: Vec<&str> = input.policies.iter().flatten().map(Text::as_str).collect();
    assert_eq!(policies, ["no-\"x\"", "plain"]);
    let reasons: Vec<String> = serde_json::from_str(record.reasons.unwrap().get()).unwrap();
    assert_eq!(reasons, ["a \"quoted\" reason"]);
    // What the writer writes reads back the same, less the grant's key (the record's own
    // `grant` names it).
    let written = serde_json::to_string(&InputRecord {
        grant: Some(Text::from("grant:g-1".to_owned())),
        ..plain_input(Effect::Allow, "p\"1")
    })
    .unwrap();
    assert!(!written.contains("grant"), "{written}");
    assert!(!written.contains("pinned"), "{written}");
    let read: InputRecord<'_> = serde_json::from_str(&written).unwrap();
    assert_eq!(
        read.policies.iter().flatten().next().map(Text::as_str),
        Some("p\"1")
    );
    assert_eq!(read.decided, Some(Effect::Allow));
    assert_eq!(read.tool.as_str(), "tool:ab");
}

#[test]
fn a_decision_the_engine_never_made_is_read_and_skipped_for_its_missing_input() {
    let hidden =
        r#"{"kind":"decision","decision_id":"d-2","tool":"pid","decision":"hide","policies":[]}"#;
    let record: DecisionRecord<'_> = serde_json::from_str(hidden).unwrap();
    assert_eq!(
        Definitions::default().recall(record).err(),
        Some(Skip::NoInput)
    );
}

#[test]
fn an_input_leaves_out_the_engine_decision_only_where_the_record_says_it_already() {
    let decision = |effect: Effect, policies: &[&str]| Decision {
        effect,
        policies: policies.iter().map(|p| (*p).to_owned()).collect(),
        ..Decision::undecided(
            "v1",
            crate::catalog::ActionClass::Write,
            crate::catalog::Risk::Low,
        )
    };
    let engine = decision(Effect::Allow, &["small-writes"]);
    let input = || plain_input(engine.effect, "small-writes");
    let mut unchanged = input();
    unchanged.settle(&engine);
    assert_eq!((unchanged.decided, unchanged.policies), (None, None));
    // A limit that denied after the engine allowed: both the engine's are kept.
    let mut limited = input();
    limited.settle(&decision(Effect::Deny, &["tollgate:limit:daily"]));
    assert_eq!(limited.decided, Some(Effect::Allow));
    assert_eq!(
        limited.policies.iter().flatten().next().map(Text::as_str),
        Some("small-writes")
    );
    // A pin change held what the engine allowed, its policies with one more.
    let mut held = input();
    held.settle(&decision(
        Effect::NeedsApproval,
        &["small-writes", "tollgate:pin-changed"],
    ));
    assert_eq!(held.decided, Some(Effect::Allow));
    assert!(held.policies.is_some());
    // An approval that let through what the engine held: the policies stay the record's.
    let mut approved = input();
    approved.decided = Some(Effect::NeedsApproval);
    approved.settle(&engine);
    assert_eq!(approved.decided, Some(Effect::NeedsApproval));
    assert_eq!(approved.policies, None);
}

#[test]
fn stats_round_trip() {
    let stats = SessionStats {
        calls: 7,
        calls_last_minute: 3,
        denials: 1,
        denials_last_minute: 1,
        calls_last_10s: 2,
        per_minute: 4,
        by_class: [5, 0, 1, 0, 0, 0, 0, 0],
    };
    let text = serde_json::to_string(&stats).unwrap_or_default();
    assert!(
        text.contains(r#""by_class":{"read":5,"egress":1}"#),
        "{text}"
    );
    let back: SessionStats = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(back, stats);
}

/// `fs.read` of upstream `fs` under `root`, and its schema.
fn read_tool(root: Option<&str>) -> (ToolFacts, Map<String, Value>) {
    let mut schema = Map::new();
    schema.insert("type".into(), Value::from("object"));
    let facts = ToolFacts::new(
        "fs.read",
        "fs",
        Hints::default(),
        root.map(str::to_owned),
        SchemaCache::default().compile(&schema),
    );
    (facts, schema)
}

#[test]
fn replay_sees_the_filesystem_as_the_call_did() {
    let (facts, schema) = read_tool(Some("/srv"));
    let (key, tool) = ToolRecord::of(&facts, &schema).entry();
    let mut known = Definitions::default();
    known.learn(TOOL_KIND, &tool).unwrap();
    let written = serde_json::to_string(&InputRecord {
        tool: Text::from(key),
        resolved: vec![("/srv/link".into(), "/private/secret".into())],
        ..plain_input(Effect::Deny, "tollgate:grant")
    })
    .unwrap();
    assert!(
        written.contains(r#""resolved":[["/srv/link","/private/secret"]]"#),
        "{written}"
    );
    let record = DecisionRecord {
        kind: Text::from("decision".to_owned()),
        input: Some(serde_json::from_str(&written).unwrap()),
        ..DecisionRecord::default()
    };
    let recalled = known.recall(record).unwrap();
    let paths = recalled.call().paths.unwrap();
    assert_eq!(paths.resolve("/srv/link").unwrap(), "/private/secret");
    assert_eq!(paths.resolve("/srv/plain").unwrap(), "/srv/plain");
    // A record without resolutions binds lexically, as the call did.
    let plain = serde_json::to_string(&plain_input(Effect::Deny, "x")).unwrap();
    assert!(!plain.contains("resolved"), "{plain}");
}

#[test]
fn a_tool_record_keys_its_content() {
    let (facts, schema) = read_tool(Some("/srv"));
    let (key, record) = ToolRecord::of(&facts, &schema).entry();
    let (again, _) = ToolRecord::of(&facts, &schema).entry();
    assert_eq!(key, again);
    let mut known = Definitions::default();
    assert_eq!(known.learn(TOOL_KIND, &record), Ok(true));
    assert_eq!(
        known.tools.get(&key).map(ToolFacts::root),
        Some(Some("/srv"))
    );
    let (other, _) = read_tool(Some("/elsewhere"));
    assert_ne!(ToolRecord::of(&other, &schema).entry().0, key);
}
