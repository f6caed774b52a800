//! A call's arguments as an agent sends them, decided by the filesystem-sandbox pack: schema
//! validation, binding every path-like argument, the grant, the path labels and the Cedar
//! context. Never a panic, and a path the grant does not cover is never allowed. The same
//! arguments, returned first as an untrusted result, are looked up again: a string a result
//! carried whole is never `unseen`, however it is spelled.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use tollgate_policy::{
    CallInput, Effect, Environment, Grant, Hints, Pack, PackSource, SchemaCache, SessionFacts,
    SessionStats, ToolFacts, Trust, Usage,
    provenance::{Index, Intent, OutputTrust, Probes, Provenance, observe, tokens},
};

static PACK: LazyLock<Pack> = LazyLock::new(|| {
    Pack::compile(&PackSource {
        name: "filesystem-sandbox".into(),
        manifest: include_str!("../../policies/filesystem-sandbox/pack.toml").into(),
        schema: None,
        policies: vec![(
            "policies.cedar".into(),
            include_str!("../../policies/filesystem-sandbox/policies.cedar").into(),
        )],
        extra_tools: Vec::new(),
    })
    .unwrap()
});

static TOOLS: LazyLock<Vec<ToolFacts>> = LazyLock::new(|| {
    let schemas = SchemaCache::default();
    [
        "read_text_file",
        "read_multiple_files",
        "write_file",
        "move_file",
    ]
    .into_iter()
    .map(|name| {
        let schema = serde_json::json!({"type": "object"});
        ToolFacts::new(
            name,
            "fs",
            Hints::default(),
            Some("/srv/app".into()),
            schemas.compile(schema.as_object().unwrap()),
        )
    })
    .collect()
});

static GRANT: LazyLock<Grant> = LazyLock::new(|| {
    let mut grant = Grant::root(
        "g-fuzz".into(),
        "maintenance",
        [
            tollgate_policy::ActionClass::Read,
            tollgate_policy::ActionClass::Write,
        ],
        0,
        3_600,
    );
    grant.resources.insert("path:/srv/app/**".parse().unwrap());
    grant
});

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(serde_json::Value::Object(arguments)) = serde_json::from_slice(rest) else {
        return;
    };
    let tool = &TOOLS[usize::from(which) % TOOLS.len()];
    let mut index = Index::default();
    let result = serde_json::json!({ "structuredContent": serde_json::Value::Object(arguments.clone()) });
    let observed = observe(&result, "fuzz.read", &OutputTrust::default(), &[], 0);
    index.add(&observed);
    let probes = Probes::of(Some(&arguments));
    let seen = index.look_up(&probes.keys);
    let provenance = Provenance::of(&probes, &seen, &Intent::of(Some(&GRANT)), index.complete());
    if !observed.truncated {
        for (name, value) in &arguments {
            if let serde_json::Value::String(text) = value
                && tokens::whole(text).is_some()
            {
                let origin = provenance.arg(name);
                assert!(
                    origin.is_some_and(|o| o.trust != Trust::Unseen),
                    "{name}: {text:?} was in a result but reads as unseen: {origin:?}"
                );
            }
        }
    }
    let call = CallInput {
        session: &SessionFacts::default(),
        grant: Some(&GRANT),
        tool,
        arguments: Some(&arguments),
        justification: None,
        now: 60,
        env: &Environment::default(),
        stats: &SessionStats::default(),
        usage: &Usage::new(),
        taint: &[],
        pinned: true,
        paths: None,
        provenance: Some(&provenance),
    };
    let decision = PACK.decide(&call);
    if decision.effect != Effect::Deny {
        for resource in &decision.resources {
            if resource.kind == "path" {
                assert!(
                    resource.value == "/srv/app" || resource.value.starts_with("/srv/app/"),
                    "{resource} allowed outside the grant"
                );
            }
        }
    }
});
