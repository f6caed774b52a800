//! A grant token as an agent presents it: verified against this Tollgate's key, never a panic,
//! and never accepted unless this key signed it.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<tollgate_mint::GrantVerifier> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("tollgate-fuzz-grants-{}", std::process::id()));
    tollgate_mint::GrantSigner::load_or_create(&dir)
        .unwrap()
        .verifier()
});

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        // The fuzzer cannot sign with a key made at start: anything it makes must be refused.
        assert!(VERIFIER.verify(token, 1_800_000_000).is_err());
    }
});
