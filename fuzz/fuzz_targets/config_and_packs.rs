//! Configuration and pack files as an operator (or an attacker with write access to them)
//! may write them: parsed and validated, never a panic. A `\0` splits the input into the
//! parts of a pack: `pack.toml`, a policy file, a schema.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_policy::{Pack, PackSource};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = tollgate_proxy::Config::parse(&text);
    let mut parts = text.split('\0');
    let manifest = parts.next().unwrap_or_default().to_owned();
    let policy = parts.next().unwrap_or_default().to_owned();
    let schema = parts.next().map(str::to_owned);
    if let Ok(pack) = Pack::compile(&PackSource {
        name: "fuzz".into(),
        manifest,
        schema,
        policies: vec![("p.cedar".into(), policy)],
        extra_tools: Vec::new(),
    }) {
        let _ = tollgate_policy::check::findings(&pack);
    }
});
