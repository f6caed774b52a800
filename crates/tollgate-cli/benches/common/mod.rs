//! What the benchmarks share: the tool they decide on.

use serde_json::{Map, Value, json};
use tollgate_policy::{Hints, SchemaCache, ToolFacts};

/// `fs.read_text_file` of upstream `fs` rooted at `/srv/app`: a read-only tool with a path,
/// and optional `head` and `tail`.
pub fn read_text_file() -> ToolFacts {
    let schema: Map<String, Value> = json!({
        "type": "object",
        "properties": {"path": {"type": "string"}, "head": {"type": "integer"}, "tail": {"type": "integer"}},
        "required": ["path"],
        "additionalProperties": false
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    ToolFacts::new(
        "fs.read_text_file",
        "fs",
        Hints {
            read_only: Some(true),
            ..Hints::default()
        },
        Some("/srv/app".to_owned()),
        SchemaCache::default().compile(&schema),
    )
}
