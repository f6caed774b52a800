//! Rules a grant puts on one argument of the tools a glob names: a bound, a set of values, a
//! glob, or that the argument is absent; for the argument itself or for each element of an
//! array (`ARG[]`), or one field of each element (`ARG[].FIELD`); required unless written
//! `ARG?`, which lets an absent argument (or element field) pass.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pattern::glob_match;

/// A rule on one argument of the tools a glob names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraint {
    pub tool: String,
    pub argument: String,
    /// The rule is for each element of the array `argument` (or a field of each), not the
    /// argument as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub each: Option<Each>,
    /// An absent (or `null`) argument, or element field, passes; present, it must hold.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    #[serde(flatten)]
    pub rule: Rule,
}

/// What of an array argument a per-element rule judges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Each {
    /// Each element itself: `recipients[]`.
    Element,
    /// This field of each element, which must be an object: `items[].amount`.
    Field(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// A number no greater than this.
    Max(f64),
    /// A number no less than this.
    Min(f64),
    /// One of these values exactly.
    OneOf(Vec<Value>),
    /// A string matching this glob.
    Matches(String),
    /// The argument must not be given at all (`true`; `null` counts as not given).
    Absent(bool),
}

/// What is wrong with a call's argument under a constraint: which value (`items[2].amount`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: String,
    pub problem: String,
}

impl Constraint {
    /// The argument as the rule names it: `amount`, `amount?`, `to[]`, `items[].amount`.
    pub fn target(&self) -> String {
        let mut text = self.argument.clone();
        match &self.each {
            None => {}
            Some(Each::Element) => text.push_str("[]"),
            Some(Each::Field(field)) => {
                text.push_str("[].");
                text.push_str(field);
            }
        }
        if self.optional {
            text.push('?');
        }
        text
    }

    /// What is wrong with `arguments` under this constraint, if anything.
    pub fn problem(&self, arguments: Option<&Map<String, Value>>) -> Option<Problem> {
        let value = present(arguments.and_then(|a| a.get(&self.argument)));
        let Some(each) = &self.each else {
            return self.judge(&self.argument, value);
        };
        let items = match value {
            None => return self.judge(&self.argument, None),
            Some(Value::Array(items)) => items,
            Some(_) => return problem(self.argument.clone(), "must be an array"),
        };
        for (n, item) in items.iter().enumerate() {
            let found = match each {
                Each::Element => {
                    self.judge(&format!("{}[{n}]", self.argument), present(Some(item)))
                }
                Each::Field(field) if item.is_object() => self.judge(
                    &format!("{}[{n}].{field}", self.argument),
                    present(item.get(field)),
                ),
                Each::Field(field) => problem(
                    format!("{}[{n}]", self.argument),
                    &format!("must be an object with `{field}`"),
                ),
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// One value (or its absence) at `at` under the rule.
    fn judge(&self, at: &str, value: Option<&Value>) -> Option<Problem> {
        let found = match value {
            None if self.optional || self.rule == Rule::Absent(true) => return None,
            None => "is required by the grant".to_owned(),
            Some(value) => self.rule.problem(value)?,
        };
        problem(at.to_owned(), &found)
    }
}

fn problem(at: String, problem: &str) -> Option<Problem> {
    Some(Problem {
        at,
        problem: problem.to_owned(),
    })
}

/// `null` is as good as absent, as it is to Cedar.
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

impl Rule {
    /// What is wrong with the present `value` under this rule, if anything.
    fn problem(&self, value: &Value) -> Option<String> {
        match self {
            Rule::Max(max) => match value.as_f64() {
                Some(n) if n <= *max => None,
                Some(_) => Some(format!("is above the grant's limit of {max}")),
                None => Some("must be a number".to_owned()),
            },
            Rule::Min(min) => match value.as_f64() {
                Some(n) if n >= *min => None,
                Some(_) => Some(format!("is below the grant's floor of {min}")),
                None => Some("must be a number".to_owned()),
            },
            Rule::OneOf(allowed) => {
                if allowed.contains(value) {
                    None
                } else {
                    Some("is not one of the values the grant allows".to_owned())
                }
            }
            Rule::Matches(pattern) => match value.as_str() {
                Some(s) if glob_match(pattern, s) => None,
                Some(_) => Some(format!("does not match `{pattern}`")),
                None => Some("must be a string".to_owned()),
            },
            Rule::Absent(true) => Some("must not be given under the grant".to_owned()),
            Rule::Absent(false) => None,
        }
    }

    /// The values a call may give under this rule, when the rule names them all.
    pub fn values(&self) -> Option<&[Value]> {
        match self {
            Rule::OneOf(values) => Some(values),
            _ => None,
        }
    }
}

/// Why a constraint's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected `TOOL:ARG<=N`, `TOOL:ARG>=N`, `TOOL:ARG=a|b`, `TOOL:ARG~GLOB` or `TOOL:ARG=absent` (`ARG?` when optional, `ARG[]` or `ARG[].FIELD` for each element of an array), not `{text}`"
)]
pub struct ConstraintSyntax {
    text: String,
}

impl std::str::FromStr for Constraint {
    type Err = ConstraintSyntax;

    /// `TOOL:ARG<op>VALUE`, where `ARG` is `name`, `name?`, `name[]`, `name[].field` (and
    /// `?` after either for optional).
    fn from_str(text: &str) -> Result<Self, ConstraintSyntax> {
        let bad = || ConstraintSyntax {
            text: text.to_owned(),
        };
        let (tool, rest) = text.split_once(':').ok_or_else(bad)?;
        let (argument, rule) = if let Some((arg, n)) = rest.split_once("<=") {
            (arg, Rule::Max(number(n).ok_or_else(bad)?))
        } else if let Some((arg, n)) = rest.split_once(">=") {
            (arg, Rule::Min(number(n).ok_or_else(bad)?))
        } else if let Some((arg, glob)) = rest.split_once('~') {
            (arg, Rule::Matches(glob.to_owned()))
        } else if let Some((arg, values)) = rest.split_once('=') {
            if values == "absent" {
                (arg, Rule::Absent(true))
            } else {
                let values = values
                    .split('|')
                    .map(|v| {
                        serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()))
                    })
                    .collect();
                (arg, Rule::OneOf(values))
            }
        } else {
            return Err(bad());
        };
        let (argument, optional) = match argument.strip_suffix('?') {
            Some(name) => (name, true),
            None => (argument, false),
        };
        let (argument, each) = match argument.split_once("[]") {
            None => (argument, None),
            Some((name, "")) => (name, Some(Each::Element)),
            Some((name, field)) => match field.strip_prefix('.') {
                Some(field) if !field.is_empty() && !field.contains("[]") => {
                    (name, Some(Each::Field(field.to_owned())))
                }
                _ => return Err(bad()),
            },
        };
        let plain = |s: &str| !s.is_empty() && !s.contains(['?', '[', ']']);
        if tool.is_empty() || !plain(argument) {
            return Err(bad());
        }
        if let Some(Each::Field(field)) = &each
            && !plain(field)
        {
            return Err(bad());
        }
        if optional && matches!(rule, Rule::Absent(_)) {
            return Err(bad());
        }
        Ok(Constraint {
            tool: tool.to_owned(),
            argument: argument.to_owned(),
            each,
            optional,
            rule,
        })
    }
}

fn number(text: &str) -> Option<f64> {
    text.trim().parse().ok().filter(|n: &f64| n.is_finite())
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.target();
        match &self.rule {
            Rule::Max(n) => write!(f, "{}:{target}<={n}", self.tool),
            Rule::Min(n) => write!(f, "{}:{target}>={n}", self.tool),
            Rule::Matches(glob) => write!(f, "{}:{target}~{glob}", self.tool),
            Rule::Absent(_) => write!(f, "{}:{target}=absent", self.tool),
            Rule::OneOf(values) => {
                let shown: Vec<String> = values
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                write!(f, "{}:{target}={}", self.tool, shown.join("|"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn c(text: &str) -> Constraint {
        text.parse().unwrap()
    }

    fn problem(constraint: &str, arguments: Value) -> Option<String> {
        c(constraint)
            .problem(arguments.as_object())
            .map(|p| format!("{}: {}", p.at, p.problem))
    }

    #[test]
    fn a_required_rule_refuses_an_absent_or_null_argument_and_an_optional_one_lets_it_pass() {
        assert_eq!(
            problem("pay:amount<=100", json!({})).as_deref(),
            Some("amount: is required by the grant")
        );
        assert!(problem("pay:amount<=100", json!({"amount": null})).is_some());
        assert_eq!(problem("pay:amount?<=100", json!({})), None);
        assert_eq!(problem("pay:amount?<=100", json!({"amount": null})), None);
        assert_eq!(problem("pay:amount?<=100", json!({"amount": 100})), None);
        assert_eq!(
            problem("pay:amount?<=100", json!({"amount": 101})).as_deref(),
            Some("amount: is above the grant's limit of 100")
        );
        // Optional is not a way around the type: present, it must be a number.
        assert!(problem("pay:amount?<=100", json!({"amount": "5"})).is_some());
        assert!(problem("pay:amount?<=100", json!({"amount": false})).is_some());
    }

    #[test]
    fn absent_refuses_any_value_given_even_an_empty_one() {
        for given in [json!(""), json!(0), json!(false), json!([]), json!({})] {
            assert_eq!(
                problem("mail.send:bcc=absent", json!({ "bcc": given })).as_deref(),
                Some("bcc: must not be given under the grant"),
                "{given}"
            );
        }
        assert_eq!(problem("mail.send:bcc=absent", json!({})), None);
        assert_eq!(problem("mail.send:bcc=absent", json!({"bcc": null})), None);
        // The string `absent` is not a value of a one-of rule.
        assert_eq!(c("t:a=absent").rule, Rule::Absent(true));
        assert_eq!(c("t:a=\"absent\"").rule, Rule::OneOf(vec![json!("absent")]));
    }

    #[test]
    fn a_rule_for_each_element_judges_every_element_and_names_the_one_that_fails() {
        let to = "mail.send:to[]~*@corp.example";
        assert_eq!(problem(to, json!({"to": ["a@corp.example"]})), None);
        assert_eq!(problem(to, json!({"to": []})), None);
        assert_eq!(
            problem(
                to,
                json!({"to": ["a@corp.example", "b@corp.example", "x@evil.example"]})
            )
            .as_deref(),
            Some("to[2]: does not match `*@corp.example`")
        );
        // A single string is not an array: the rule cannot be sidestepped by the shape.
        assert_eq!(
            problem(to, json!({"to": "x@evil.example"})).as_deref(),
            Some("to: must be an array")
        );
        // A null element is a missing one, required unless optional.
        assert_eq!(
            problem(to, json!({"to": ["a@corp.example", null]})).as_deref(),
            Some("to[1]: is required by the grant")
        );
        assert_eq!(
            problem(to, json!({})).as_deref(),
            Some("to: is required by the grant")
        );
        assert_eq!(problem("mail.send:to[]?~*@corp.example", json!({})), None);
    }

    #[test]
    fn a_rule_on_a_field_of_each_element_needs_objects_and_the_field() {
        let items = "shop.order:items[].amount<=50";
        assert_eq!(
            problem(
                items,
                json!({"items": [{"amount": 10}, {"amount": 50, "sku": "x"}]})
            ),
            None
        );
        assert_eq!(
            problem(items, json!({"items": [{"amount": 10}, {"amount": 51}]})).as_deref(),
            Some("items[1].amount: is above the grant's limit of 50")
        );
        assert_eq!(
            problem(items, json!({"items": [{"sku": "x"}]})).as_deref(),
            Some("items[0].amount: is required by the grant")
        );
        assert_eq!(
            problem(items, json!({"items": [7]})).as_deref(),
            Some("items[0]: must be an object with `amount`")
        );
        assert_eq!(
            problem(
                "shop.order:items[].amount?<=50",
                json!({"items": [{"sku": "x"}]})
            ),
            None
        );
        assert_eq!(
            problem(
                "shop.order:items[].gift=absent",
                json!({"items": [{"sku": "x"}, {"gift": true}]})
            )
            .as_deref(),
            Some("items[1].gift: must not be given under the grant")
        );
    }

    #[test]
    fn constraints_read_back_as_written_and_bad_text_is_refused() {
        for text in [
            "pay:amount<=100",
            "pay:amount?>=1",
            "mail.send:to[]~*@corp.example",
            "shop.order:items[].amount?<=50",
            "mail.send:bcc=absent",
            "t:mode=fast|slow",
        ] {
            assert_eq!(c(text).to_string(), text);
            let json = serde_json::to_value(c(text)).unwrap();
            let back: Constraint = serde_json::from_value(json).unwrap();
            assert_eq!(back, c(text), "{text}");
        }
        for bad in [
            "noop",
            "pay:amount",
            ":amount<=1",
            "pay:<=1",
            "pay:amount<=lots",
            "pay:amount<=NaN",
            "pay:amount<=inf",
            "pay:items[]x<=1",
            "pay:items[].<=1",
            "pay:items[][]<=1",
            "pay:items[].a[]<=1",
            "pay:a?b<=1",
            "pay:bcc?=absent",
        ] {
            assert!(bad.parse::<Constraint>().is_err(), "{bad}");
        }
    }
}
