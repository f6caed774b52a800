//! Argument validation against the tool's `inputSchema`: compiled once per schema, cached, and
//! never allowed to fetch anything (remote and file references fail to compile, so the tool
//! cannot be called). An invalid call is denied with the failing location and rule, never the
//! value.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use serde_json::{Map, Value};

/// Why a call's arguments are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentError {
    #[error("arguments of `{tool}` fail `{keyword}` at `{location}`: {message}")]
    Invalid {
        tool: String,
        location: String,
        keyword: String,
        message: String,
    },
    #[error("the input schema of `{tool}` cannot be used ({reason}); the tool cannot be called")]
    Schema { tool: String, reason: String },
}

/// Compiled validators by schema text.
#[derive(Default)]
pub struct SchemaCache {
    compiled: Mutex<HashMap<String, Result<Arc<jsonschema::Validator>, String>>>,
}

impl std::fmt::Debug for SchemaCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaCache").finish_non_exhaustive()
    }
}

impl SchemaCache {
    /// The compiled validator for `schema`, compiled on first sight.
    pub fn compile(
        &self,
        schema: &Map<String, Value>,
    ) -> Result<Arc<jsonschema::Validator>, String> {
        let key = Value::Object(schema.clone()).to_string();
        let mut compiled = self
            .compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(found) = compiled.get(&key) {
            return found.clone();
        }
        let built = jsonschema::validator_for(&Value::Object(schema.clone()))
            .map(Arc::new)
            .map_err(|e| e.masked().to_string());
        compiled.insert(key, built.clone());
        built
    }

    /// Checks `arguments` (absent means `{}`) against `schema`.
    pub fn validate(
        &self,
        tool: &str,
        schema: &Map<String, Value>,
        arguments: Option<&Map<String, Value>>,
    ) -> Result<(), ArgumentError> {
        let validator = self.compile(schema);
        check(tool, validator.as_deref(), arguments)
    }

    /// Schemas compiled so far.
    pub fn len(&self) -> usize {
        self.compiled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks `arguments` (absent means `{}`) against a compiled schema, or refuses the call when
/// the schema could not be compiled.
pub fn check(
    tool: &str,
    validator: Result<&jsonschema::Validator, &String>,
    arguments: Option<&Map<String, Value>>,
) -> Result<(), ArgumentError> {
    let validator = validator.map_err(|reason| ArgumentError::Schema {
        tool: tool.to_owned(),
        reason: reason.clone(),
    })?;
    let empty = Map::new();
    let instance = arguments.unwrap_or(&empty);
    match validator.validate(&Value::Object(instance.clone())) {
        Ok(()) => Ok(()),
        Err(error) => {
            let location = error.instance_path().to_string();
            Err(ArgumentError::Invalid {
                tool: tool.to_owned(),
                location: if location.is_empty() {
                    "/".to_owned()
                } else {
                    location
                },
                keyword: error.kind().keyword().to_owned(),
                message: error.masked().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Map<String, Value> {
        json!({
            "type": "object",
            "properties": {"amount": {"type": "number", "maximum": 1000}, "note": {"type": "string"}},
            "required": ["amount"],
            "additionalProperties": false
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn valid_arguments_pass_and_the_schema_compiles_once() {
        let cache = SchemaCache::default();
        cache
            .validate("refund", &schema(), Some(&args(json!({"amount": 10}))))
            .unwrap();
        cache
            .validate("refund", &schema(), Some(&args(json!({"amount": 20}))))
            .unwrap();
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn invalid_arguments_name_location_and_rule_but_not_the_value() {
        let cache = SchemaCache::default();
        let err = cache
            .validate("refund", &schema(), Some(&args(json!({"amount": 987654}))))
            .unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains("`maximum`") && shown.contains("`/amount`"),
            "{shown}"
        );
        assert!(
            !shown.contains("987654"),
            "the value is not repeated: {shown}"
        );
        let err = cache.validate("refund", &schema(), None).unwrap_err();
        assert!(err.to_string().contains("`required`"), "{err}");
        let err = cache
            .validate(
                "refund",
                &schema(),
                Some(&args(json!({"amount": 1, "sneaky": "x"}))),
            )
            .unwrap_err();
        assert!(err.to_string().contains("additionalProperties"), "{err}");
    }

    #[test]
    fn schemas_that_need_fetching_are_refused() {
        let cache = SchemaCache::default();
        let remote = json!({"$ref": "https://example.com/schema.json"})
            .as_object()
            .cloned()
            .unwrap();
        let err = cache.validate("t", &remote, None).unwrap_err();
        assert!(matches!(err, ArgumentError::Schema { .. }), "{err}");
        let file = json!({"$ref": "file:///etc/schema.json"})
            .as_object()
            .cloned()
            .unwrap();
        assert!(matches!(
            cache.validate("t", &file, None),
            Err(ArgumentError::Schema { .. })
        ));
    }
}
