//! The Cedar context of one call: only the fields a policy of the tool's slice can read, each
//! built from typed parts (building from JSON costs several times as much).

use cedar_policy::{Context, RestrictedExpression};
use serde_json::{Map, Value};

use super::{CallInput, Decision};
use crate::{
    clock::LocalTime,
    pack::{CLASSES, CONTEXT_FIELDS, Pack, ToolPlan, one_line},
};

impl Pack {
    /// The call's context, with only the fields a policy of the plan's slice can read: every
    /// value costs a few hundred nanoseconds to build and Cedar then evaluates it again.
    pub(super) fn context(
        &self,
        plan: &ToolPlan,
        call: &CallInput<'_>,
        decision: &Decision,
    ) -> Result<Context, String> {
        let resources = decision.resources.as_slice();
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
        let record = |pairs: Vec<(&str, RestrictedExpression)>| {
            RestrictedExpression::new_record(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)))
                .map_err(|e| one_line(&e))
        };
        let mut pairs: Vec<(String, RestrictedExpression)> =
            Vec::with_capacity(CONTEXT_FIELDS.len());
        for field in CONTEXT_FIELDS {
            if !plan.reads(field) {
                continue;
            }
            let value = match field {
                "args" => match call.arguments {
                    Some(arguments) => json_record(arguments)?,
                    None => record(Vec::new())?,
                },
                "resources" => {
                    RestrictedExpression::new_set(resources.iter().map(|r| string(&r.to_string())))
                }
                "intent" => record(vec![
                    (
                        "purpose",
                        string(call.grant.map_or("", |g| g.purpose.as_str())),
                    ),
                    ("task", string(call.grant.map_or("", |g| g.task.as_str()))),
                    ("justification", string(call.justification.unwrap_or(""))),
                ])?,
                "grant" => record(vec![
                    (
                        "present",
                        RestrictedExpression::new_bool(call.grant.is_some()),
                    ),
                    ("id", string(call.grant.map_or("", |g| g.id.as_str()))),
                    (
                        "expires_in",
                        RestrictedExpression::new_long(call.grant.map_or(0, |g| g.exp - call.now)),
                    ),
                    (
                        "matched",
                        record(vec![
                            (
                                "entries",
                                RestrictedExpression::new_set(
                                    decision.matched.entries.iter().map(|e| string(e)),
                                ),
                            ),
                            (
                                "exact",
                                RestrictedExpression::new_bool(decision.matched.exact),
                            ),
                            (
                                "approve",
                                RestrictedExpression::new_bool(decision.matched.approve()),
                            ),
                        ])?,
                    ),
                    ("pinned", RestrictedExpression::new_bool(decision.pinned)),
                ])?,
                "time" => {
                    let local = LocalTime::at(call.now, call.env.offset);
                    // A whole number of seconds rather than a `datetime`, whose construction
                    // alone costs more than a microsecond.
                    record(vec![
                        ("instant", RestrictedExpression::new_long(call.now)),
                        ("hour", long(u64::from(local.hour))),
                        ("weekday", string(local.weekday_name())),
                    ])?
                }
                "environment" => string(&call.env.label),
                "client" => record(vec![
                    ("transport", string(&call.session.transport)),
                    ("address", string(&call.session.address)),
                ])?,
                "stats" => {
                    let mut stats = vec![
                        ("calls", long(call.stats.calls)),
                        ("calls_last_minute", long(call.stats.calls_last_minute)),
                        ("denials", long(call.stats.denials)),
                        ("denials_last_minute", long(call.stats.denials_last_minute)),
                        ("calls_last_10s", long(call.stats.calls_last_10s)),
                        ("per_minute", long(call.stats.per_minute)),
                        (
                            "first_of_class",
                            RestrictedExpression::new_bool(
                                CLASSES
                                    .iter()
                                    .position(|c| *c == plan.classification.class)
                                    .and_then(|i| call.stats.by_class.get(i))
                                    .is_none_or(|n| *n == 0),
                            ),
                        ),
                    ];
                    for (class, count) in CLASSES.iter().zip(call.stats.by_class) {
                        stats.push((class.as_str(), long(count)));
                    }
                    record(stats)?
                }
                "taint" => RestrictedExpression::new_set(call.taint.iter().map(|t| string(t))),
                "path_labels" => RestrictedExpression::new_set(
                    self.path_labels(resources).into_iter().map(string),
                ),
                "pinned" => RestrictedExpression::new_bool(call.pinned),
                "provenance" => provenance_record(
                    call.provenance,
                    call.arguments,
                    &plan.classification.targets,
                )?,
                _ => continue,
            };
            pairs.push((field.to_owned(), value));
        }
        Context::from_pairs(pairs).map_err(|e| one_line(&e))
    }
}

/// `context.provenance`: each argument's origin, the trusts of the target arguments the call
/// has, the labels of every result an argument came from, and whether the index is complete.
fn provenance_record(
    provenance: Option<&crate::provenance::Provenance>,
    arguments: Option<&Map<String, Value>>,
    targets: &[String],
) -> Result<RestrictedExpression, String> {
    use crate::provenance::{Origin, Trust};
    let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
    let strings = |items: &[String]| RestrictedExpression::new_set(items.iter().map(|s| string(s)));
    let origin_record = |origin: &Origin| {
        RestrictedExpression::new_record([
            ("trust".to_owned(), string(origin.trust.as_str())),
            (
                "embedded".to_owned(),
                string(origin.embedded.map_or("none", Trust::as_str)),
            ),
            ("tools".to_owned(), strings(&origin.tools)),
            ("labels".to_owned(), strings(&origin.labels)),
        ])
        .map_err(|e| one_line(&e))
    };
    let unseen = Origin::default();
    let origin_of = |name: &str| provenance.and_then(|p| p.arg(name)).unwrap_or(&unseen);
    let mut args = Vec::new();
    for name in arguments.into_iter().flat_map(Map::keys) {
        args.push((name.clone(), origin_record(origin_of(name))?));
    }
    let mut trusts: Vec<&str> = targets
        .iter()
        .filter(|t| arguments.is_some_and(|a| a.get(t.as_str()).is_some_and(|v| !v.is_null())))
        .map(|t| origin_of(t).trust.as_str())
        .collect();
    let has_targets = !trusts.is_empty();
    trusts.sort_unstable();
    trusts.dedup();
    RestrictedExpression::new_record([
        (
            "args".to_owned(),
            RestrictedExpression::new_record(args).map_err(|e| one_line(&e))?,
        ),
        (
            "targets".to_owned(),
            RestrictedExpression::new_set(trusts.into_iter().map(string)),
        ),
        (
            "has_targets".to_owned(),
            RestrictedExpression::new_bool(has_targets),
        ),
        (
            "labels".to_owned(),
            strings(&provenance.map(|p| p.labels()).unwrap_or_default()),
        ),
        (
            "complete".to_owned(),
            RestrictedExpression::new_bool(provenance.is_none_or(|p| p.complete)),
        ),
    ])
    .map_err(|e| one_line(&e))
}

/// Arguments as a Cedar record. Whole numbers are `Long`, numbers with up to four decimals
/// `decimal`, any other number a string (so a policy that reads it as a number fails, and the
/// call is denied rather than judged on a rounded value); `null` is left out, as if absent.
fn json_record(object: &Map<String, Value>) -> Result<RestrictedExpression, String> {
    let mut fields = Vec::with_capacity(object.len());
    for (key, value) in object {
        if let Some(expr) = json_value(value)? {
            fields.push((key.clone(), expr));
        }
    }
    RestrictedExpression::new_record(fields).map_err(|e| one_line(&e))
}

fn json_value(value: &Value) -> Result<Option<RestrictedExpression>, String> {
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => RestrictedExpression::new_long(i),
            None => match n.as_f64().and_then(decimal_text) {
                Some(text) => RestrictedExpression::new_decimal(text),
                None => RestrictedExpression::new_string(n.to_string()),
            },
        },
        Value::Array(items) => {
            let mut set = Vec::with_capacity(items.len());
            for item in items {
                if let Some(expr) = json_value(item)? {
                    set.push(expr);
                }
            }
            RestrictedExpression::new_set(set)
        }
        Value::Object(object) => json_record(object)?,
    }))
}

/// `n` as Cedar decimal text when it has at most four decimals and fits.
fn decimal_text(n: f64) -> Option<String> {
    let scaled = n * 10_000.0;
    if !scaled.is_finite() || scaled.abs() >= 9.2e18 || scaled.fract() != 0.0 {
        return None;
    }
    Some(format!("{n:.4}"))
}
