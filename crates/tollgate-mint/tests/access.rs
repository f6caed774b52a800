//! Per-call tokens: minted on the path of their class, verified the way a careful resource
//! server verifies them, and refused for every way of being the wrong token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tollgate_mint::{
    AccessKeys, Algorithm, CallCredential, KeyState, Presented, TrustPath, Verifier,
    VerifierConfig, VerifyError,
};
use tollgate_policy::ActionClass;

const NOW: i64 = 1_800_000_000;

fn call<'a>(
    class: ActionClass,
    arguments: &'a Value,
    resources: &'a [String],
) -> CallCredential<'a> {
    // Leaked: a test's handful of digests, so the credential can borrow one.
    let arguments_sha256: &'a str =
        Box::leak(tollgate_mint::jcs::digest(arguments).into_boxed_str());
    CallCredential {
        issuer_base: "https://tollgate.example/",
        subject: "ada",
        client_id: "support-bot",
        audience: "https://payments.example",
        session: "s-1",
        tool: "payments.refund",
        class,
        resources,
        arguments_sha256,
        decision_id: "d-1",
        grant_id: Some("g-00000000000000000000aaaa"),
        approval_id: None,
        http: None,
        now: NOW,
        lifetime_secs: 60,
    }
}

fn verifier(keys: &AccessKeys, path: &str, algorithms: Vec<Algorithm>) -> Verifier {
    Verifier::new(
        VerifierConfig {
            issuer: format!("https://tollgate.example/{path}"),
            audience: "https://payments.example".into(),
            algorithms,
            leeway_secs: 30,
            revocations: None,
        },
        &keys.jwks(),
    )
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn a_token_carries_exactly_the_call_and_is_accepted_once() {
    for alg in [Algorithm::Es256, Algorithm::EdDsa] {
        let dir = tempfile::tempdir().unwrap();
        let keys = AccessKeys::load_or_create(dir.path(), alg).unwrap();
        let args = json!({"customer_id": "42", "amount": 40});
        let resources = vec!["customer:42".to_owned()];
        let minted = keys
            .mint(&call(ActionClass::Payment, &args, &resources))
            .unwrap();
        let claims = claims_of(&minted.token);
        assert_eq!(
            claims["iss"], "https://tollgate.example/write",
            "payments sign on the write path"
        );
        assert_eq!(claims["aud"], "https://payments.example");
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            60
        );
        assert_eq!(
            claims["act"],
            json!({"sub": "tollgate", "act": {"sub": "support-bot"}})
        );
        let details = &claims["authorization_details"][0];
        assert_eq!(details["tool"], "payments.refund");
        assert_eq!(details["action"], "payment");
        assert_eq!(details["resources"], json!(["customer:42"]));
        assert_eq!(details["grant_id"], "g-00000000000000000000aaaa");
        assert_eq!(minted.jti, claims["jti"]);
        assert_eq!(minted.kid, keys.key(TrustPath::Write).unwrap().kid());

        let v = verifier(&keys, "write", vec![alg]);
        // The same arguments in another order are the same call.
        let reordered: Value = serde_json::from_str(r#"{"amount":40,"customer_id":"42"}"#).unwrap();
        let presented = Presented::tool("payments.refund", &reordered);
        let accepted = v.verify(&minted.token, NOW + 1, &presented).unwrap();
        assert_eq!(accepted.sub, "ada");
        assert_eq!(
            v.verify(&minted.token, NOW + 2, &presented),
            Err(VerifyError::Replayed)
        );
    }
}

#[test]
fn every_wrong_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let args = json!({"customer_id": "42", "amount": 40});
    let resources = vec!["customer:42".to_owned()];
    let presented = Presented::tool("payments.refund", &args);
    let write = || {
        keys.mint(&call(ActionClass::Payment, &args, &resources))
            .unwrap()
            .token
    };
    let v = verifier(&keys, "write", vec![Algorithm::Es256]);

    // Captured from a read call: another issuer (and key) than the write path.
    let read = keys
        .mint(&call(ActionClass::Read, &args, &resources))
        .unwrap()
        .token;
    assert!(matches!(
        v.verify(&read, NOW, &presented),
        Err(VerifyError::Issuer(_))
    ));
    // Minted for another service.
    let mut other = call(ActionClass::Payment, &args, &resources);
    other.audience = "https://elsewhere.example";
    let elsewhere = keys.mint(&other).unwrap().token;
    assert!(matches!(
        v.verify(&elsewhere, NOW, &presented),
        Err(VerifyError::Audience(_))
    ));
    // Expired (past the leeway, which the verifier caps at 5 s), and not yet valid.
    assert_eq!(
        v.verify(&write(), NOW + 66, &presented),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        v.verify(&write(), NOW - 6, &presented),
        Err(VerifyError::NotYetValid)
    );
    // Presented with other arguments, or for another tool.
    let more = json!({"customer_id": "42", "amount": 4000});
    let mismatch = v.verify(&write(), NOW, &Presented::tool("payments.refund", &more));
    assert_eq!(mismatch, Err(VerifyError::Mismatch("arguments")));
    let wrong_tool = v.verify(&write(), NOW, &Presented::tool("payments.charge", &args));
    assert_eq!(wrong_tool, Err(VerifyError::Mismatch("tool")));
    // A widened payload keeps the old signature.
    let token = write();
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = claims_of(&token);
    claims["aud"] = json!("https://payments.example");
    claims["authorization_details"][0]["resources"] = json!(["customer:*"]);
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    assert_eq!(
        v.verify(&parts.join("."), NOW, &presented),
        Err(VerifyError::Signature)
    );
    // `alg: none`, or an algorithm this service does not take.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"at+jwt"}"#),
        parts[1]
    );
    assert!(matches!(
        v.verify(&none, NOW, &presented),
        Err(VerifyError::Algorithm(_))
    ));
    let eddsa_only = verifier(&keys, "write", vec![Algorithm::EdDsa]);
    assert!(matches!(
        eddsa_only.verify(&write(), NOW, &presented),
        Err(VerifyError::Algorithm(_))
    ));
    // Signed by a key this service has never seen.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = AccessKeys::load_or_create(stranger_dir.path(), Algorithm::Es256).unwrap();
    let foreign = stranger
        .mint(&call(ActionClass::Payment, &args, &resources))
        .unwrap()
        .token;
    assert!(matches!(
        v.verify(&foreign, NOW, &presented),
        Err(VerifyError::UnknownKey(_))
    ));
    for junk in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
        assert!(v.verify(junk, NOW, &presented).is_err(), "{junk}");
    }
}

#[test]
fn keys_live_in_the_state_folder_owner_only_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let again = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    assert_eq!(first.jwks(), again.jwks());
    let kids: std::collections::BTreeSet<String> = TrustPath::ALL
        .iter()
        .map(|p| first.key(*p).unwrap().kid().to_owned())
        .collect();
    assert_eq!(kids.len(), 4, "every trust path has a key of its own");
    let jwks = first.jwks();
    for jwk in jwks["keys"].as_array().unwrap() {
        assert!(jwk.get("d").is_none(), "no private part in the JWKS");
        assert_eq!(jwk["alg"], "ES256");
    }
    let entry = first
        .entries()
        .into_iter()
        .find(|e| e.path == TrustPath::Read && e.state == KeyState::Current)
        .unwrap();
    let file = dir.path().join("access").join(&entry.file);
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(AccessKeys::load_or_create(dir.path(), Algorithm::Es256).is_err());
}

#[test]
fn kids_are_rfc_7638_thumbprints() {
    // RFC 7638: the key's required members in lexicographic order, no whitespace, SHA-256,
    // base64url.
    let dir = tempfile::tempdir().unwrap();
    let keys = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let key = keys.key(TrustPath::Read).unwrap();
    let jwk = key.jwk();
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        jwk["x"].as_str().unwrap(),
        jwk["y"].as_str().unwrap()
    );
    use sha2::Digest;
    let expected = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()));
    assert_eq!(key.kid(), expected);
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn rotation_publishes_the_next_key_first_and_keeps_the_retired_one_until_its_tokens_expire() {
    let dir = tempfile::tempdir().unwrap();
    let keys = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let before = keys.jwks();
    assert_eq!(
        kids(&before).len(),
        8,
        "a current and a next key on each of four paths"
    );
    let next_write = keys
        .entries()
        .into_iter()
        .find(|e| e.path == TrustPath::Write && e.state == KeyState::Next)
        .unwrap()
        .kid;
    assert!(
        kids(&before).contains(&next_write),
        "published before it signs"
    );

    let args = json!({"amount": 5});
    let resources = vec!["account:acme".to_owned()];
    let old = keys
        .mint(&call(ActionClass::Payment, &args, &resources))
        .unwrap();
    // A resource server that fetched the JWKS before the rotation.
    let early = verifier(&keys, "write", vec![Algorithm::Es256]);

    let now = tollgate_mint::unix_now();
    let rotated = keys.rotate_now(now).unwrap();
    assert_eq!(rotated.len(), 4);
    let new = keys
        .mint(&call(ActionClass::Payment, &args, &resources))
        .unwrap();
    assert_eq!(new.kid, next_write, "the published next key signs now");
    assert_ne!(new.kid, old.kid);
    let presented = Presented::tool("payments.refund", &args);
    early
        .verify(&new.token, NOW, &presented)
        .expect("a verifier with the old JWKS already knows the new key");
    let after = keys.jwks();
    assert_eq!(
        kids(&after).len(),
        12,
        "current, next and retired on each path"
    );
    assert!(
        kids(&after).contains(&old.kid),
        "the retired key is still published"
    );
    verifier(&keys, "write", vec![Algorithm::Es256])
        .verify(&old.token, NOW, &presented)
        .expect("a token the retired key signed is still good until it expires");

    // Once every token the retired keys signed has expired, they leave the JWKS and the disk.
    let later = now + tollgate_mint::access::MAX_LIFETIME_SECS + 6;
    keys.rotate_due(i64::MAX / 2, 0, later).unwrap();
    let pruned = kids(&keys.jwks());
    assert_eq!(pruned.len(), 8);
    assert!(!pruned.contains(&old.kid));
    let files = std::fs::read_dir(dir.path().join("access"))
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "pk8")
        })
        .count();
    assert_eq!(files, 8, "retired key files are deleted");
}

#[test]
fn scheduled_rotation_waits_for_its_time_and_for_the_next_key_to_have_been_published() {
    let dir = tempfile::tempdir().unwrap();
    let keys = AccessKeys::load_or_create(dir.path(), Algorithm::EdDsa).unwrap();
    let now = tollgate_mint::unix_now();
    let day = 86_400;
    assert!(
        keys.rotate_due(day, 600, now).unwrap().is_empty(),
        "not due yet"
    );
    assert_eq!(keys.rotate_due(day, 600, now + day).unwrap().len(), 4);
    // The next key made by that rotation has been published for no time at all.
    assert!(
        keys.rotate_due(1, 600, now + day + 10).unwrap().is_empty(),
        "a next key published for 10 s is not promoted when 600 s are asked"
    );
    assert_eq!(keys.rotate_due(1, 600, now + day + 600).unwrap().len(), 4);
}

#[test]
fn a_running_minter_signs_with_the_key_another_process_rotated_in() {
    let dir = tempfile::tempdir().unwrap();
    let running = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let cli = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let before = running.key(TrustPath::Read).unwrap().kid().to_owned();
    let now = tollgate_mint::unix_now();
    let rotated = cli.rotate_now(now).unwrap();
    let new_read = rotated
        .iter()
        .find(|r| r.path == TrustPath::Read)
        .unwrap()
        .current
        .clone();
    assert_eq!(running.key(TrustPath::Read).unwrap().kid(), before);
    assert!(running.refresh(now + 1).unwrap());
    assert_eq!(running.key(TrustPath::Read).unwrap().kid(), new_read);
    assert!(!running.refresh(now + 2).unwrap(), "nothing changed since");
}

#[test]
fn a_new_algorithm_takes_over_while_the_old_keys_stay_published() {
    let dir = tempfile::tempdir().unwrap();
    let es = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let old = es.key(TrustPath::Read).unwrap().kid().to_owned();
    let ed = AccessKeys::load_or_create(dir.path(), Algorithm::EdDsa).unwrap();
    assert_eq!(
        ed.key(TrustPath::Read).unwrap().algorithm(),
        Algorithm::EdDsa
    );
    let jwks = ed.jwks();
    assert!(
        kids(&jwks).contains(&old),
        "the ES256 key is retired, not dropped"
    );
    assert!(
        !ed.entries()
            .iter()
            .any(|e| e.alg == Algorithm::Es256 && e.state != KeyState::Retired)
    );
}

#[test]
fn a_tampered_keyring_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let manifest = dir.path().join("access/keyring.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc["keys"][0]["file"] = json!("../../etc/passwd");
    std::fs::write(&manifest, doc.to_string()).unwrap();
    let err = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap_err();
    assert!(err.to_string().contains("outside the keyring"), "{err}");
    std::fs::write(&manifest, "{").unwrap();
    assert!(AccessKeys::load_or_create(dir.path(), Algorithm::Es256).is_err());
}

#[test]
fn a_token_for_an_http_request_is_good_for_that_method_path_and_body_only() {
    let dir = tempfile::tempdir().unwrap();
    let keys = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let args = json!({"account": "acme", "amount": 5});
    let resources = vec!["account:acme".to_owned()];
    let body = br#"{"amount":5}"#;
    let mut http = call(ActionClass::Payment, &args, &resources);
    http.http = Some(tollgate_mint::access::HttpCall {
        method: "POST",
        path: "/accounts/acme/transfers?dry_run=false",
        body,
    });
    let mint = || keys.mint(&http).unwrap().token;
    let claims = claims_of(&mint());
    let details = &claims["authorization_details"][0];
    assert_eq!(details["method"], "POST");
    assert_eq!(details["path"], "/accounts/acme/transfers?dry_run=false");
    let v = verifier(&keys, "write", vec![Algorithm::Es256]);
    let path = "/accounts/acme/transfers?dry_run=false";
    v.verify(&mint(), NOW, &Presented::http("POST", path, body))
        .unwrap();
    assert_eq!(
        v.verify(&mint(), NOW, &Presented::http("PUT", path, body)),
        Err(VerifyError::Mismatch("method"))
    );
    assert_eq!(
        v.verify(
            &mint(),
            NOW,
            &Presented::http("POST", "/accounts/evil/transfers?dry_run=false", body)
        ),
        Err(VerifyError::Mismatch("path"))
    );
    assert_eq!(
        v.verify(
            &mint(),
            NOW,
            &Presented::http("POST", path, br#"{"amount":5000}"#)
        ),
        Err(VerifyError::Mismatch("body"))
    );
    // A token for a tool call says nothing of any HTTP request.
    let plain = keys
        .mint(&call(ActionClass::Payment, &args, &resources))
        .unwrap()
        .token;
    assert_eq!(
        v.verify(&plain, NOW, &Presented::http("POST", path, body)),
        Err(VerifyError::Mismatch("method"))
    );
}

#[test]
fn a_verifier_with_a_revocation_policy_refuses_revoked_tokens_and_stale_lists() {
    let dir = tempfile::tempdir().unwrap();
    let keys = AccessKeys::load_or_create(dir.path(), Algorithm::Es256).unwrap();
    let v = Verifier::new(
        VerifierConfig {
            issuer: "https://tollgate.example/write".into(),
            audience: "https://payments.example".into(),
            algorithms: vec![Algorithm::Es256],
            leeway_secs: 5,
            revocations: Some(tollgate_mint::verify::RevocationPolicy {
                issuer: "https://tollgate.example/revoke".into(),
                max_age_secs: 30,
            }),
        },
        &keys.jwks(),
    );
    let args = json!({"amount": 5});
    let resources = vec![];
    let presented = Presented::tool("payments.refund", &args);
    let mint = || {
        keys.mint(&call(ActionClass::Payment, &args, &resources))
            .unwrap()
    };
    assert_eq!(
        v.verify(&mint().token, NOW, &presented),
        Err(VerifyError::StaleRevocations),
        "no list yet: nothing is accepted"
    );
    let list = |iat: i64, jtis: Value, sessions: Value, iss: &str| {
        keys.sign_claims(
            TrustPath::Revoke,
            "tollgate-revocations+jwt",
            &json!({"iss": iss, "iat": iat, "exp": iat + 60,
                    "revoked_jtis": jtis, "sessions_issued_before": sessions}),
        )
        .unwrap()
    };
    let revoked = mint();
    let issuer = "https://tollgate.example/revoke";
    v.set_revocations(
        &list(NOW, json!({&revoked.jti: NOW + 60}), json!({}), issuer),
        NOW,
    )
    .unwrap();
    assert_eq!(
        v.verify(&revoked.token, NOW, &presented),
        Err(VerifyError::Revoked)
    );
    v.verify(&mint().token, NOW, &presented).unwrap();
    // A session cut-off revokes every token of the session issued up to it.
    v.set_revocations(
        &list(NOW + 1, json!({}), json!({"s-1": NOW}), issuer),
        NOW + 1,
    )
    .unwrap();
    assert_eq!(
        v.verify(&mint().token, NOW + 1, &presented),
        Err(VerifyError::Revoked)
    );
    // Too old a list accepts nothing until a fresh one is fetched.
    assert_eq!(
        v.verify(&mint().token, NOW + 40, &presented),
        Err(VerifyError::StaleRevocations)
    );
    // A list from another issuer, or forged, is refused.
    assert!(matches!(
        v.set_revocations(
            &list(NOW + 2, json!({}), json!({}), "https://evil.example/revoke"),
            NOW + 2
        ),
        Err(VerifyError::Issuer(_))
    ));
    let mut forged = list(NOW + 3, json!({}), json!({}), issuer);
    forged.push('A');
    assert!(v.set_revocations(&forged, NOW + 3).is_err());
}
