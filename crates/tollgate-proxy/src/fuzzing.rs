//! Entry points for the fuzz targets in `fuzz/`: the crate's own parsers of untrusted bytes,
//! reached without a network or an upstream. Not an API: hidden, and may change at any time.

use rmcp::{RoleServer, service::RxJsonRpcMessage};

use crate::{config::Secret, wire};

/// Everything the agent side does with one line before routing it.
pub fn agent_line(line: &[u8]) {
    let _ = wire::is_object(line);
    let _ = wire::Envelope::parse(line);
    let salvaged = wire::salvage(line);
    if let Some(id) = &salvaged.id {
        // What is sent back must be JSON.
        assert!(serde_json::from_str::<serde_json::Value>(id.get()).is_ok());
    }
    let _ = wire::call_problem(line);
    let _ = wire::not_an_object_code(line);
    let _ = serde_json::from_slice::<RxJsonRpcMessage<RoleServer>>(line);
}

/// An upstream's answer line with `secret` scrubbed, as the agent would get it.
pub fn upstream_line(line: &[u8], secret: &str) -> Vec<u8> {
    let cleaned = crate::scrub::bytes(line.to_vec(), &[Secret::new(secret)]);
    let _ = wire::Envelope::parse(&cleaned);
    let _ = wire::salvage(&cleaned);
    cleaned
}
