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
    AccessKeys, Algorithm, CallCredential, Presented, TrustPath, Verifier, VerifierConfig,
    VerifyError,
};
use tollgate_policy::ActionClass;

const NOW: i64 = 1_800_000_000;

fn call<'a>(
    class: ActionClass,
    arguments: &'a Value,
    resources: &'a [String],
) -> CallCredential<'a> {
    CallCredential {
        issuer_base: "https://tollgate.example/",
        subject: "ada",
        client_id: "support-bot",
        audience: "https://payments.example",
        session: "s-1",
        tool: "payments.refund",
        class,
        resources,
        arguments,
        decision_id: "d-1",
        grant_id: Some("g-00000000000000000000aaaa"),
        approval_id: None,
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
        let presented = Presented {
            tool: "payments.refund",
            arguments: &reordered,
        };
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
    let presented = Presented {
        tool: "payments.refund",
        arguments: &args,
    };
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
    let mismatch = v.verify(
        &write(),
        NOW,
        &Presented {
            tool: "payments.refund",
            arguments: &more,
        },
    );
    assert_eq!(mismatch, Err(VerifyError::Mismatch("arguments")));
    let wrong_tool = v.verify(
        &write(),
        NOW,
        &Presented {
            tool: "payments.charge",
            arguments: &args,
        },
    );
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
    let kids: std::collections::BTreeSet<&str> = TrustPath::ALL
        .iter()
        .map(|p| first.key(*p).unwrap().kid())
        .collect();
    assert_eq!(kids.len(), 4, "every trust path has a key of its own");
    let jwks = first.jwks();
    for jwk in jwks["keys"].as_array().unwrap() {
        assert!(jwk.get("d").is_none(), "no private part in the JWKS");
        assert_eq!(jwk["alg"], "ES256");
    }
    let file = dir.path().join("access/read.ES256.pk8");
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
