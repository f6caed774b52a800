//! The behaviour every [`Store`] must show, as one suite each implementation runs on fresh
//! stores of its own: `run(&|| Box::new(MyStore::new(..)) as Box<dyn Store>).await`. A check
//! that fails panics with what it expected, as a test does.

#![expect(
    clippy::unwrap_used,
    reason = "a conformance check fails by panicking, as a test does"
)]

use std::sync::Arc;

use tollgate_policy::{
    ActionClass, Charge, Effect, Grant, Limit, SessionLimit, Trust,
    provenance::{Observed, OutputTrust, observe, tokens},
};

use super::{Charged, Charges, Decided, HistoryKey, Quarantine, Store};

/// Makes a fresh, empty store.
pub type Fresh<'a> = &'a (dyn Fn() -> Box<dyn Store> + Sync);

const NOW: i64 = 1_800_000_000;

/// Runs every check, each on a fresh store.
pub async fn run(fresh: Fresh<'_>) {
    counts_calls_denials_and_classes_in_their_windows(fresh()).await;
    keeps_taints_sorted_once_and_only_from_allowed_calls(fresh()).await;
    holds_a_quarantined_history_and_its_grant_until_released(fresh()).await;
    charges_a_grant_limit_exactly_once_under_concurrent_calls(fresh().into()).await;
    a_refused_charge_spends_nothing(fresh()).await;
    reads_only_the_grants_own_usage(fresh()).await;
    forgets_an_ended_history(fresh()).await;
    indexes_values_per_history_with_their_best_source(fresh()).await;
    says_when_the_index_dropped_untrusted_values(fresh()).await;
}

fn grant(id: &str) -> Grant {
    Grant::root(id.to_owned(), "conformance", [ActionClass::Read], NOW, 3600)
}

fn decided(key: HistoryKey, now: i64, effect: Effect) -> Decided<'static> {
    Decided {
        key,
        now,
        grant: None,
        effect,
        class: ActionClass::Read,
        taints: &[],
        quarantine: None,
        forget_after: None,
    }
}

async fn counts_calls_denials_and_classes_in_their_windows(store: Box<dyn Store>) {
    for effect in [
        Effect::Allow,
        Effect::Allow,
        Effect::Deny,
        Effect::NeedsApproval,
    ] {
        store.record(decided(7, NOW, effect)).await.unwrap();
    }
    let now = store.standing(7, None, NOW, &[]).await.unwrap();
    assert_eq!(now.stats.calls, 4, "every decided call counts");
    assert_eq!(now.stats.calls_last_minute, 4);
    assert_eq!(now.stats.calls_last_10s, 4);
    assert_eq!(
        now.stats.denials, 1,
        "a call held for approval is no denial"
    );
    assert_eq!(now.stats.denials_last_minute, 1);
    let read = tollgate_policy::pack::CLASSES
        .iter()
        .position(|c| *c == ActionClass::Read)
        .unwrap();
    assert_eq!(now.stats.by_class.get(read), Some(&2), "allowed reads");
    let later = store.standing(7, None, NOW + 61, &[]).await.unwrap();
    assert_eq!(later.stats.calls, 4, "the total stays");
    assert_eq!(later.stats.calls_last_minute, 0, "the window moved on");
    assert_eq!(later.stats.denials_last_minute, 0);
    let other = store.standing(8, None, NOW, &[]).await.unwrap();
    assert_eq!(other.stats.calls, 0, "histories are apart");
}

async fn keeps_taints_sorted_once_and_only_from_allowed_calls(store: Box<dyn Store>) {
    let labels = ["untrusted_content".to_owned(), "secret_read".to_owned()];
    let first = store
        .record(Decided {
            taints: &labels,
            ..decided(1, NOW, Effect::Allow)
        })
        .await
        .unwrap();
    assert_eq!(first.tainted, labels, "both are new");
    let again = store
        .record(Decided {
            taints: &labels,
            ..decided(1, NOW, Effect::Allow)
        })
        .await
        .unwrap();
    assert!(again.tainted.is_empty(), "each label once");
    let denied = ["exfiltrated".to_owned()];
    store
        .record(Decided {
            taints: &denied,
            ..decided(1, NOW, Effect::Deny)
        })
        .await
        .unwrap();
    let standing = store.standing(1, None, NOW, &[]).await.unwrap();
    assert_eq!(standing.taint, ["secret_read", "untrusted_content"]);
}

async fn holds_a_quarantined_history_and_its_grant_until_released(store: Box<dyn Store>) {
    let g = grant("g-held");
    let other = grant("g-other");
    let held = Quarantine {
        session: "3".to_owned(),
        grant: Some(g.id.clone()),
        since: NOW,
        policies: vec!["probe".to_owned()],
        reason: "probing".to_owned(),
    };
    let changed = store
        .record(Decided {
            grant: Some(&g.id),
            quarantine: Some(held.clone()),
            ..decided(3, NOW, Effect::Deny)
        })
        .await
        .unwrap();
    assert!(changed.quarantined);
    // A second quarantining denial changes nothing: the first reason stays.
    let second = store
        .record(Decided {
            grant: Some(&g.id),
            quarantine: Some(Quarantine {
                reason: "again".to_owned(),
                ..held.clone()
            }),
            ..decided(3, NOW + 1, Effect::Deny)
        })
        .await
        .unwrap();
    assert!(!second.quarantined);
    assert_eq!(
        store.standing(3, Some(&g), NOW, &[]).await.unwrap().held,
        Some(held.clone())
    );
    assert_eq!(
        store.standing(4, Some(&g), NOW, &[]).await.unwrap().held,
        Some(held.clone()),
        "a new session under the held grant is held too"
    );
    assert_eq!(
        store
            .standing(5, Some(&other), NOW, &[])
            .await
            .unwrap()
            .held,
        None
    );
    assert_eq!(store.quarantined().await.unwrap(), [held]);
    assert!(store.release("3").await.unwrap());
    assert!(!store.release("3").await.unwrap(), "released once");
    let after = store.standing(3, Some(&g), NOW + 2, &[]).await.unwrap();
    assert_eq!(after.held, None);
    assert_eq!(
        after.stats.denials_last_minute, 0,
        "its recent denials are forgotten"
    );
    assert_eq!(after.stats.denials, 2, "its history is not");
    assert_eq!(
        store.standing(4, Some(&g), NOW, &[]).await.unwrap().held,
        None
    );
    assert!(store.quarantined().await.unwrap().is_empty());
}

fn limited(id: &str, calls: u64) -> (Grant, Limit) {
    let mut g = grant(id);
    let limit: Limit =
        serde_json::from_value(serde_json::json!({ "scope": id, "max_calls": calls })).unwrap();
    g.limits = vec![limit.clone()];
    (g, limit)
}

async fn charges_a_grant_limit_exactly_once_under_concurrent_calls(store: Arc<dyn Store>) {
    let (g, limit) = limited("g-budget", 5);
    let g = Arc::new(g);
    let spent = Arc::new(vec![Charge {
        scope: limit.scope.clone(),
        key: limit.key(),
        amount: 1.0,
    }]);
    let calls: Vec<_> = (0..32)
        .map(|n| {
            let (store, g, spent) = (store.clone(), g.clone(), spent.clone());
            tokio::spawn(async move {
                store
                    .charge(Charges {
                        key: n,
                        session: &[],
                        arguments: None,
                        grant: Some((&g, &spent)),
                        now: NOW as f64,
                    })
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut done = 0;
    for call in calls {
        if call.await.unwrap() == Charged::Done {
            done += 1;
        }
    }
    assert_eq!(
        done, 5,
        "32 calls at once spend exactly the 5 the grant allows"
    );
    let usage = store.standing(0, Some(&g), NOW, &[]).await.unwrap().usage;
    assert_eq!(usage.get(&(limit.scope.clone(), limit.key())), Some(&5.0));
}

async fn a_refused_charge_spends_nothing(store: Box<dyn Store>) {
    let session: SessionLimit =
        serde_json::from_value(serde_json::json!({ "id": "three", "calls": 3 })).unwrap();
    let (g, limit) = limited("g-one", 1);
    let spent = [Charge {
        scope: limit.scope.clone(),
        key: limit.key(),
        amount: 1.0,
    }];
    let charges = Charges {
        key: 9,
        session: &[&session],
        arguments: None,
        grant: Some((&g, &spent)),
        now: NOW as f64,
    };
    assert_eq!(store.charge(charges).await.unwrap(), Charged::Done);
    // The grant refuses the second: the session limit it passed is not charged either.
    for _ in 0..3 {
        let refused = store.charge(charges).await.unwrap();
        assert!(
            matches!(&refused, Charged::Refused { policy, .. } if policy == tollgate_policy::decide::step::GRANT),
            "{refused:?}"
        );
    }
    let session_only = Charges {
        grant: None,
        ..charges
    };
    assert_eq!(store.charge(session_only).await.unwrap(), Charged::Done);
    assert_eq!(store.charge(session_only).await.unwrap(), Charged::Done);
    assert!(
        matches!(
            store.charge(session_only).await.unwrap(),
            Charged::Refused { policy, .. } if policy == "tollgate:limit:three"
        ),
        "three calls in all: the refused ones took none"
    );
}

async fn reads_only_the_grants_own_usage(store: Box<dyn Store>) {
    let (a, limit_a) = limited("g-a", 10);
    let (b, _) = limited("g-b", 10);
    let spent = [Charge {
        scope: limit_a.scope.clone(),
        key: limit_a.key(),
        amount: 2.0,
    }];
    let charged = store
        .charge(Charges {
            key: 1,
            session: &[],
            arguments: None,
            grant: Some((&a, &spent)),
            now: NOW as f64,
        })
        .await
        .unwrap();
    assert_eq!(charged, Charged::Done);
    assert_eq!(
        store
            .standing(1, Some(&a), NOW, &[])
            .await
            .unwrap()
            .usage
            .len(),
        1
    );
    assert!(
        store
            .standing(1, Some(&b), NOW, &[])
            .await
            .unwrap()
            .usage
            .is_empty(),
        "another grant's spending is not read"
    );
}

async fn forgets_an_ended_history(store: Box<dyn Store>) {
    store.record(decided(11, NOW, Effect::Allow)).await.unwrap();
    store.forget(11).await.unwrap();
    assert_eq!(
        store
            .standing(11, None, NOW, &[])
            .await
            .unwrap()
            .stats
            .calls,
        0
    );
}

fn observed(text: &str, tool: &str, trust: Trust) -> Observed {
    let output = OutputTrust {
        default: trust,
        ..OutputTrust::default()
    };
    let result = serde_json::json!({"content": [{"type": "text", "text": text}]});
    observe(
        &result,
        tool,
        &output,
        &["untrusted_content".to_owned()],
        NOW,
    )
}

async fn indexes_values_per_history_with_their_best_source(store: Box<dyn Store>) {
    let iban = |s: &str| tokens::tokens(s).into_iter().next().unwrap().0;
    let attacker = iban("US133000000121212121212");
    let landlord = iban("GB29NWBK60161331926819");
    let mail = observed(
        "pay US13 3000 0001 2121 2121 212",
        "mail.read",
        Trust::Untrusted,
    );
    store.note(1, &mail).await.unwrap();
    let bank = observed(
        "GB29NWBK60161331926819 and US133000000121212121212",
        "bank.list",
        Trust::Untrusted,
    );
    store.note(1, &bank).await.unwrap();
    let trusted = observed("GB29NWBK60161331926819", "bank.payees", Trust::Trusted);
    store.note(1, &trusted).await.unwrap();
    let values = [attacker.clone(), landlord.clone()];
    let standing = store.standing(1, None, NOW, &values).await.unwrap();
    let mut seen = standing.seen.iter().cloned();
    let (a, l) = (
        seen.next().flatten().unwrap(),
        seen.next().flatten().unwrap(),
    );
    assert_eq!(a.best.trust, Trust::Untrusted);
    assert_eq!(
        a.best.tool, "mail.read",
        "the first sighting with the best trust"
    );
    assert_eq!(a.tools, ["mail.read", "bank.list"]);
    assert_eq!(a.labels, ["untrusted_content"]);
    assert_eq!(l.best.trust, Trust::Trusted, "the best source wins");
    assert_eq!(l.best.tool, "bank.payees");
    assert!(!standing.index_incomplete);
    let other = store.standing(2, None, NOW, &values).await.unwrap();
    assert_eq!(other.seen, [None, None], "one history's values are its own");
    store.forget(1).await.unwrap();
    let forgotten = store.standing(1, None, NOW, &values).await.unwrap();
    assert_eq!(
        forgotten.seen,
        [None, None],
        "an ended history's values go with it"
    );
}

async fn says_when_the_index_dropped_untrusted_values(store: Box<dyn Store>) {
    let mut flood = observed("x", "web.fetch", Trust::Untrusted);
    flood.truncated = true;
    store.note(3, &flood).await.unwrap();
    assert!(
        store
            .standing(3, None, NOW, &[])
            .await
            .unwrap()
            .index_incomplete
    );
    assert!(
        !store
            .standing(4, None, NOW, &[])
            .await
            .unwrap()
            .index_incomplete
    );
}
