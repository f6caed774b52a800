//! Property: a narrowed grant never allows a call its parent denies, whatever the parent, the
//! narrowing asked for, the call or the time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tollgate_policy::{
    ActionClass, Constraint, Grant, Limit, LimitKind, NarrowRequest, Resource, ResourcePattern,
    Rule, Usage, grant::CallScope, pack::CLASSES,
};

const NOW: i64 = 1_800_000_000;
const TOOL_PATTERNS: &[&str] = &[
    "*",
    "fs.*",
    "fs.read_*",
    "fs.read_file",
    "fs.write_file",
    "git.*",
    "git.log",
    "?s.*",
    "*_file",
];
const RESOURCE_PATTERNS: &[&str] = &[
    "path:/**",
    "path:/srv/**",
    "path:/srv/app/**",
    "path:/srv/app/a.txt",
    "path:/srv/*/logs/**",
    "path:/srv/app/*.txt",
    "customer:*",
    "customer:4?",
    "customer:42",
    "customer:from(crm.search.id)",
    "customer:from(crm.*/results/*/id)",
    "host:*.example.com",
    "host:api.example.com",
];
const TOOLS: &[&str] = &[
    "fs.read_file",
    "fs.write_file",
    "fs.read_dir",
    "git.log",
    "gs.x",
    "x_file",
];
const RESOURCES: &[(&str, &str)] = &[
    ("path", "/srv/app/a.txt"),
    ("path", "/srv/app/b/c"),
    ("path", "/srv/x/logs/y"),
    ("path", "/srv"),
    ("path", "/etc/passwd"),
    ("customer", "42"),
    ("customer", "43"),
    ("customer", "4"),
    ("host", "api.example.com"),
    ("host", "evil.com"),
];

/// What the calls' values are taken to have come from: `42` and `4` from the CRM search's
/// ids, which both source entries above take.
fn provenance() -> tollgate_policy::Provenance {
    let sourced = |entry: &str, value: &str| tollgate_policy::provenance::Sourced {
        entry: entry.into(),
        value: value.into(),
    };
    tollgate_policy::Provenance {
        sourced: vec![
            sourced("customer:from(crm.search.id)", "42"),
            sourced("customer:from(crm.search.id)", "4"),
            sourced("customer:from(crm.*/results/*/id)", "42"),
        ],
        ..tollgate_policy::Provenance::default()
    }
}

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = BTreeSet<String>> {
    proptest::sample::subsequence(items.to_vec(), 0..=items.len())
        .prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

fn classes() -> impl Strategy<Value = BTreeSet<ActionClass>> {
    proptest::sample::subsequence(CLASSES.to_vec(), 1..=CLASSES.len())
        .prop_map(|v| v.into_iter().collect())
}

fn resource_patterns() -> impl Strategy<Value = BTreeSet<ResourcePattern>> {
    pick(RESOURCE_PATTERNS).prop_map(|s| s.iter().map(|p| p.parse().unwrap()).collect())
}

fn constraints() -> impl Strategy<Value = Vec<Constraint>> {
    proptest::option::of((
        proptest::sample::select(TOOL_PATTERNS),
        0u32..200,
        any::<bool>(),
    ))
    .prop_map(|c| {
        c.into_iter()
            .map(|(tool, max, optional)| Constraint {
                tool: tool.to_owned(),
                argument: "amount".to_owned(),
                each: None,
                optional,
                rule: Rule::Max(f64::from(max)),
            })
            .collect()
    })
}

fn limits() -> impl Strategy<Value = Vec<Limit>> {
    proptest::option::of((
        1u64..5,
        proptest::option::of(proptest::sample::select(TOOL_PATTERNS)),
    ))
    .prop_map(|l| {
        l.into_iter()
            .map(|(max, tool)| Limit {
                scope: String::new(),
                tool: tool.map(str::to_owned),
                kind: LimitKind::MaxCalls(max),
            })
            .collect()
    })
}

prop_compose! {
    fn parent()(
        actions in classes(),
        tools in pick(TOOL_PATTERNS),
        resources in resource_patterns(),
        approve in resource_patterns(),
        constraints in constraints(),
        limits in limits(),
        ttl in 1i64..10_000,
    ) -> Grant {
        let id = "g-00000000000000000000aaaa".to_owned();
        Grant {
            limits: limits.into_iter().map(|mut l| { l.scope = id.clone(); l }).collect(),
            id,
            iss: "tollgate".into(),
            iat: NOW,
            exp: NOW + ttl,
            chain: Vec::new(),
            purpose: "support".into(),
            task: String::new(),
            agent: None,
            user: None,
            resources,
            approve,
            actions,
            tools,
            constraints,
        }
    }
}

prop_compose! {
    fn request()(
        ttl in proptest::option::of(1u64..20_000),
        actions in proptest::option::of(classes()),
        tools in proptest::option::of(pick(TOOL_PATTERNS)),
        resources in proptest::option::of(resource_patterns()),
        approve in proptest::option::of(resource_patterns()),
        constraints in constraints(),
        limits in limits(),
    ) -> NarrowRequest {
        NarrowRequest { ttl_secs: ttl, task: None, agent: None, actions, tools, resources, approve, constraints, limits }
    }
}

prop_compose! {
    fn call()(
        tool in proptest::sample::select(TOOLS),
        class in proptest::sample::select(CLASSES.to_vec()),
        resources in proptest::sample::subsequence(RESOURCES, 0..=3),
        amount in proptest::option::of(0u32..300),
        at in 0i64..20_000,
        used in 0u64..6,
    ) -> (String, ActionClass, Vec<Resource>, Option<Map<String, Value>>, i64, u64) {
        let resources = resources.into_iter().map(|(k, v)| Resource { kind: k.into(), value: v.into() }).collect();
        let args = amount.map(|a| json!({"amount": a}).as_object().cloned().unwrap());
        (tool.to_owned(), class, resources, args, NOW + at, used)
    }
}

/// `None` when the grant refuses the call; whether it holds the call for a person otherwise.
fn admits(grant: &Grant, scope: &CallScope<'_>, at: i64, usage: &Usage) -> Option<bool> {
    grant
        .admits(scope, at)
        .and_then(|admitted| {
            grant
                .check_limits(usage, &admitted.charges)
                .map(|()| admitted.matched.approve())
        })
        .ok()
}

fn allows(grant: &Grant, scope: &CallScope<'_>, at: i64, usage: &Usage) -> bool {
    admits(grant, scope, at, usage).is_some()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_child_never_allows_what_its_parent_denies(
        parent in parent(),
        request in request(),
        calls in proptest::collection::vec(call(), 1..8),
    ) {
        let Ok(child) = parent.narrow(request, NOW, "g-00000000000000000000bbbb".into()) else {
            return Ok(());
        };
        prop_assert!(child.exp <= parent.exp);
        let seen = provenance();
        for (tool, class, resources, args, at, used) in &calls {
            let scope = CallScope { tool, class: *class, resources, arguments: args.as_ref(), provenance: Some(&seen) };
            // The same usage, counted against every scope: what the parent's and the child's
            // calls have spent together.
            let mut usage = Usage::new();
            for limit in child.limits.iter().chain(&parent.limits) {
                usage.insert((limit.scope.clone(), limit.key()), *used as f64);
            }
            if let Some(child_holds) = admits(&child, &scope, *at, &usage) {
                let parent_holds = admits(&parent, &scope, *at, &usage);
                prop_assert!(
                    parent_holds.is_some(),
                    "child {child:?} allows {tool} {class} {resources:?} {args:?} at +{} that parent {parent:?} denies",
                    at - NOW
                );
                prop_assert!(
                    child_holds || parent_holds == Some(false),
                    "child {child:?} lets {tool} {class} {resources:?} go ahead that parent {parent:?} holds for a person"
                );
            }
        }
    }

    #[test]
    fn a_child_of_a_child_is_still_within_the_root(
        root in parent(),
        first in request(),
        second in request(),
        calls in proptest::collection::vec(call(), 1..8),
    ) {
        let Ok(child) = root.narrow(first, NOW, "g-00000000000000000000bbbb".into()) else {
            return Ok(());
        };
        let Ok(grandchild) = child.narrow(second, NOW, "g-00000000000000000000cccc".into()) else {
            return Ok(());
        };
        prop_assert_eq!(grandchild.chain.clone(), vec![root.id.clone(), child.id.clone()]);
        let seen = provenance();
        let usage = Usage::new();
        for (tool, class, resources, args, at, _) in &calls {
            let scope = CallScope { tool, class: *class, resources, arguments: args.as_ref(), provenance: Some(&seen) };
            if allows(&grandchild, &scope, *at, &usage) {
                prop_assert!(allows(&root, &scope, *at, &usage));
            }
        }
    }
}

#[test]
fn widening_is_refused_with_the_reason() {
    let mut parent = Grant {
        id: "g-00000000000000000000aaaa".into(),
        iss: "tollgate".into(),
        iat: NOW,
        exp: NOW + 600,
        chain: Vec::new(),
        purpose: "support".into(),
        task: String::new(),
        agent: None,
        user: None,
        resources: BTreeSet::from(["customer:42".parse().unwrap()]),
        approve: BTreeSet::new(),
        actions: BTreeSet::from([ActionClass::Read]),
        tools: BTreeSet::from(["payments.*".to_owned()]),
        constraints: Vec::new(),
        limits: Vec::new(),
    };
    let widen = |request: NarrowRequest, parent: &Grant| {
        parent
            .narrow(request, NOW, "g-00000000000000000000bbbb".into())
            .unwrap_err()
            .to_string()
    };
    let e = widen(
        NarrowRequest {
            ttl_secs: Some(3600),
            ..Default::default()
        },
        &parent,
    );
    assert!(e.contains("after its parent"), "{e}");
    let e = widen(
        NarrowRequest {
            actions: Some(BTreeSet::from([ActionClass::Write])),
            ..Default::default()
        },
        &parent,
    );
    assert!(e.contains("action `write`"), "{e}");
    let e = widen(
        NarrowRequest {
            resources: Some(BTreeSet::from(["customer:*".parse().unwrap()])),
            ..Default::default()
        },
        &parent,
    );
    assert!(e.contains("customer:*"), "{e}");
    let e = widen(
        NarrowRequest {
            tools: Some(BTreeSet::from(["*".to_owned()])),
            ..Default::default()
        },
        &parent,
    );
    assert!(e.contains("tools `*`"), "{e}");
    // A child made by hand, not by `narrow`, is judged the same: dropping the parent's limit
    // or constraint widens it.
    parent.limits = vec![Limit {
        scope: parent.id.clone(),
        tool: None,
        kind: LimitKind::MaxCalls(3),
    }];
    parent.constraints = vec![Constraint {
        tool: "*".into(),
        argument: "amount".into(),
        each: None,
        optional: false,
        rule: Rule::Max(5.0),
    }];
    let child = parent
        .narrow(
            NarrowRequest::default(),
            NOW,
            "g-00000000000000000000bbbb".into(),
        )
        .unwrap();
    let mut no_limit = child.clone();
    no_limit.limits.clear();
    assert!(
        parent
            .check_subset(&no_limit)
            .unwrap_err()
            .to_string()
            .contains("limit")
    );
    let mut no_constraint = child.clone();
    no_constraint.constraints.clear();
    assert!(
        parent
            .check_subset(&no_constraint)
            .unwrap_err()
            .to_string()
            .contains("constraint")
    );
    parent.check_subset(&child).unwrap();
    parent.exp = NOW - 1;
    let e = widen(NarrowRequest::default(), &parent);
    assert!(e.contains("expired"), "{e}");
}

#[test]
fn a_child_cannot_take_a_hold_away_by_naming_a_source_or_a_pattern() {
    let mut parent = Grant::root(
        "g-00000000000000000000aaaa".into(),
        "support",
        [ActionClass::Payment],
        NOW,
        600,
    );
    parent.resources = BTreeSet::from(["customer:*".parse().unwrap()]);
    parent.approve = BTreeSet::from(["customer:42".parse().unwrap()]);
    let seen = provenance();
    let on_42 = [Resource {
        kind: "customer".into(),
        value: "42".into(),
    }];
    let scope = CallScope {
        tool: "crm.refund",
        class: ActionClass::Payment,
        resources: &on_42,
        arguments: None,
        provenance: Some(&seen),
    };
    assert_eq!(admits(&parent, &scope, NOW, &Usage::new()), Some(true));
    for plain in ["customer:from(crm.search.id)", "customer:4*", "customer:42"] {
        let request = NarrowRequest {
            resources: Some(BTreeSet::from([plain.parse().unwrap()])),
            ..NarrowRequest::default()
        };
        let refused = parent
            .narrow(request, NOW, "g-00000000000000000000bbbb".into())
            .unwrap_err()
            .to_string();
        assert!(refused.contains("wait for a person"), "{plain}: {refused}");
    }
    // Saying `approve` too keeps the hold, so it may.
    let request = NarrowRequest {
        resources: Some(BTreeSet::new()),
        approve: Some(BTreeSet::from(["customer:from(crm.search.id)"
            .parse()
            .unwrap()])),
        ..NarrowRequest::default()
    };
    let child = parent
        .narrow(request, NOW, "g-00000000000000000000bbbb".into())
        .unwrap();
    assert_eq!(admits(&child, &scope, NOW, &Usage::new()), Some(true));
    // A value no source carried is outside the child.
    let on_43 = [Resource {
        kind: "customer".into(),
        value: "43".into(),
    }];
    let scope = CallScope {
        resources: &on_43,
        ..scope
    };
    assert_eq!(admits(&child, &scope, NOW, &Usage::new()), None);
}
