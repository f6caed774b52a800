//! An upstream's answer line, scrubbed of a secret it may echo in any JSON escaping: whatever
//! comes out is either withheld (empty) or, read as JSON, holds the secret in no string.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SECRET: &str = "sk/live-9f8e";

fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                strings(v, out);
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let cleaned = tollgate_proxy::fuzzing::upstream_line(data, SECRET);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&cleaned) {
        let mut found = Vec::new();
        strings(&value, &mut found);
        for s in found {
            assert!(!s.contains(SECRET), "the secret got through in {s:?}");
        }
    }
});
