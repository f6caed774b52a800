//! Limits a pack puts on every session, whatever its grant: total calls, a token-bucket rate,
//! and a running sum of a numeric argument (refund totals), per session and per tool or class.
//! They are hard limits: a call that would go over is denied with the limit's reason. The state
//! lives with the session's history in the proxy; this module is its pure arithmetic.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{catalog::ActionClass, pattern::glob_match};

/// One `[[limit]]` of `pack.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionLimit {
    pub id: String,
    /// A glob over the tool's exposed name; every tool when absent.
    #[serde(default)]
    pub tool: Option<String>,
    /// Only calls of this class; every class when absent.
    #[serde(default)]
    pub class: Option<ActionClass>,
    /// At most this many calls per session.
    #[serde(default)]
    pub calls: Option<u64>,
    /// A token bucket: `calls` calls, refilled evenly over `per_secs`.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// The arguments named `argument`, summed over the session, stay at or under `max`.
    #[serde(default)]
    pub sum: Option<Sum>,
    /// What the agent reads when the limit denies.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub calls: u32,
    pub per_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sum {
    pub argument: String,
    pub max: f64,
}

/// One session's use of one limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitUse {
    pub calls: u64,
    /// Tokens left and when they were last counted (Unix seconds, fractional).
    pub tokens: Option<(f64, f64)>,
    pub sum: f64,
}

impl SessionLimit {
    /// Checks the limit's own shape.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("a `[[limit]]` needs an `id`".to_owned());
        }
        if self.calls.is_none() && self.rate.is_none() && self.sum.is_none() {
            return Err(format!(
                "limit `{}` limits nothing: give `calls`, `rate` or `sum`",
                self.id
            ));
        }
        if let Some(rate) = self.rate
            && (rate.calls == 0 || rate.per_secs == 0)
        {
            return Err(format!(
                "limit `{}`: `rate` needs calls and per_secs above 0",
                self.id
            ));
        }
        if let Some(sum) = &self.sum
            && (sum.argument.is_empty() || !sum.max.is_finite() || sum.max < 0.0)
        {
            return Err(format!(
                "limit `{}`: `sum` needs an argument and a maximum of 0 or more",
                self.id
            ));
        }
        Ok(())
    }

    /// Does the limit count calls of `tool` in `class`?
    pub fn applies(&self, tool: &str, class: ActionClass) -> bool {
        self.tool.as_deref().is_none_or(|g| glob_match(g, tool))
            && self.class.is_none_or(|c| c == class)
    }

    fn refusal(&self, what: String) -> String {
        match &self.reason {
            Some(reason) => reason.clone(),
            None => format!("session limit `{}`: {what}", self.id),
        }
    }

    /// Charges one call with `arguments` at `now` to `used`, or says why it would go over
    /// (then nothing is charged).
    pub fn charge(
        &self,
        used: &mut LimitUse,
        arguments: Option<&Map<String, Value>>,
        now: f64,
    ) -> Result<(), String> {
        if let Some(max) = self.calls
            && used.calls >= max
        {
            return Err(self.refusal(format!("at most {max} calls per session")));
        }
        let tokens = match self.rate {
            None => None,
            Some(rate) => {
                let capacity = f64::from(rate.calls);
                let per_token = f64::from(rate.per_secs) / capacity;
                let (left, at) = used.tokens.unwrap_or((capacity, now));
                let left = (left + (now - at).max(0.0) / per_token).min(capacity);
                if left < 1.0 {
                    return Err(self.refusal(format!(
                        "at most {} calls per {} s",
                        rate.calls, rate.per_secs
                    )));
                }
                Some((left - 1.0, now))
            }
        };
        let sum = match &self.sum {
            None => used.sum,
            Some(sum) => {
                let amount = match arguments.and_then(|a| a.get(&sum.argument)) {
                    None | Some(Value::Null) => 0.0,
                    Some(value) => value.as_f64().ok_or_else(|| {
                        self.refusal(format!("argument `{}` must be a number", sum.argument))
                    })?,
                };
                if amount < 0.0 {
                    return Err(
                        self.refusal(format!("argument `{}` must not be negative", sum.argument))
                    );
                }
                let total = used.sum + amount;
                if total > sum.max {
                    return Err(self.refusal(format!(
                        "`{}` may total at most {} per session ({} so far)",
                        sum.argument, sum.max, used.sum
                    )));
                }
                total
            }
        };
        used.calls += 1;
        used.tokens = tokens;
        used.sum = sum;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limit(toml_text: &str) -> SessionLimit {
        let limit: SessionLimit = toml::from_str(toml_text).unwrap();
        limit.validate().unwrap();
        limit
    }

    #[test]
    fn totals_rates_and_sums_hold_at_their_boundaries() {
        let calls = limit("id = \"c\"\ncalls = 2\n");
        let mut used = LimitUse::default();
        assert!(calls.charge(&mut used, None, 0.0).is_ok());
        assert!(calls.charge(&mut used, None, 0.0).is_ok());
        assert!(calls.charge(&mut used, None, 0.0).is_err(), "the third");

        let rate = limit("id = \"r\"\nrate = { calls = 2, per_secs = 60 }\n");
        let mut used = LimitUse::default();
        assert!(rate.charge(&mut used, None, 100.0).is_ok());
        assert!(rate.charge(&mut used, None, 100.0).is_ok());
        assert!(rate.charge(&mut used, None, 100.0).is_err(), "bucket empty");
        assert!(
            rate.charge(&mut used, None, 129.0).is_err(),
            "29 s refill less than a token"
        );
        assert!(
            rate.charge(&mut used, None, 130.0).is_ok(),
            "30 s refill one"
        );

        let sum = limit("id = \"s\"\nsum = { argument = \"amount\", max = 100 }\n");
        let mut used = LimitUse::default();
        let args = |v: Value| json!({"amount": v}).as_object().cloned();
        assert!(sum.charge(&mut used, args(json!(60)).as_ref(), 0.0).is_ok());
        assert!(
            sum.charge(&mut used, args(json!(40)).as_ref(), 0.0).is_ok(),
            "exactly 100"
        );
        let over = sum
            .charge(&mut used, args(json!(0.5)).as_ref(), 0.0)
            .unwrap_err();
        assert!(
            over.contains("at most 100") && over.contains("100 so far"),
            "{over}"
        );
        assert!(
            sum.charge(&mut LimitUse::default(), args(json!("5")).as_ref(), 0.0)
                .is_err()
        );
        assert!(
            sum.charge(&mut LimitUse::default(), args(json!(-5)).as_ref(), 0.0)
                .is_err()
        );
        assert_eq!(used.calls, 2, "a refused call is not charged");
    }

    #[test]
    fn a_limit_that_limits_nothing_is_refused() {
        let empty: SessionLimit = toml::from_str("id = \"x\"\n").unwrap();
        assert!(empty.validate().is_err());
        let zero: SessionLimit =
            toml::from_str("id = \"x\"\nrate = { calls = 0, per_secs = 1 }\n").unwrap();
        assert!(zero.validate().is_err());
    }
}
