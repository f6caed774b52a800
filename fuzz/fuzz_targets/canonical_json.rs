//! Canonical JSON (RFC 8785), which argument digests and approvals are bound to: whatever JSON
//! comes in, its canonical form parses back to the same value and is its own canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_mint::jcs;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let canonical = jcs::canonical(&value);
    let again: serde_json::Value = serde_json::from_str(&canonical).expect("canonical JSON parses");
    assert_eq!(
        jcs::canonical(&again),
        canonical,
        "canonical form is stable"
    );
    assert_eq!(jcs::digest(&again), jcs::digest(&value));
});
