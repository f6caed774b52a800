//! What `tollgate policy check` finds beyond strict Cedar validation: classes no policy can
//! permit, policies the catalog makes unreachable, permits an unconditional forbid always
//! overrides, and catalog entries that overlap. A pack with an error finding is not served.

use std::collections::BTreeSet;

use cedar_policy::{ActionConstraint, Effect, PrincipalConstraint, ResourceConstraint};

use crate::{ActionClass, Pack, pack::CLASSES};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// One thing `policy check` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
}

impl Finding {
    fn warning(message: String) -> Self {
        Self {
            severity: Severity::Warning,
            message,
        }
    }

    fn error(message: String) -> Self {
        Self {
            severity: Severity::Error,
            message,
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.severity {
            Severity::Warning => write!(f, "warning: {}", self.message),
            Severity::Error => write!(f, "error: {}", self.message),
        }
    }
}

/// The argument names a policy's text reads from `context.args`: `.name`, `has name`,
/// `["name"]`.
fn raw_arguments(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |rest: &str| -> String {
        rest.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = text;
    while let Some(at) = rest.find("context.args") {
        rest = rest.get(at + "context.args".len()..).unwrap_or("");
        let after = rest.trim_start();
        let name = if let Some(field) = after.strip_prefix('.') {
            ident(field.trim_start())
        } else if let Some(field) = after.strip_prefix("has ") {
            let field = field.trim_start();
            match field.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next().unwrap_or("").to_owned(),
                None => ident(field),
            }
        } else if let Some(field) = after.strip_prefix("[\"") {
            field.split('"').next().unwrap_or("").to_owned()
        } else {
            String::new()
        };
        if !name.is_empty() {
            names.insert(name);
        }
    }
    names
}

/// The classes a policy's action scope can admit.
pub fn admitted(pack: &Pack, constraint: &ActionConstraint) -> BTreeSet<ActionClass> {
    let Ok(actions) = pack.schema().action_entities() else {
        return BTreeSet::new();
    };
    CLASSES
        .into_iter()
        .filter(|class| {
            let Ok(uid) = format!("Action::\"{class}\"").parse::<cedar_policy::EntityUid>() else {
                return false;
            };
            let lineage: Vec<cedar_policy::EntityUid> = actions
                .ancestors(&uid)
                .into_iter()
                .flatten()
                .cloned()
                .chain(std::iter::once(uid.clone()))
                .collect();
            match constraint {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(a) => lineage.contains(a),
                ActionConstraint::In(list) => list.iter().any(|a| lineage.contains(a)),
            }
        })
        .collect()
}

/// Catalog and reachability findings.
pub fn findings(pack: &Pack) -> Vec<Finding> {
    let mut found = Vec::new();
    let policies: Vec<&cedar_policy::Policy> = pack.policies().policies().collect();
    // A class no policy could ever permit: tools of that class can never be called.
    let mut permitted = BTreeSet::new();
    for policy in policies.iter().filter(|p| p.effect() == Effect::Permit) {
        permitted.extend(admitted(pack, &policy.action_constraint()));
    }
    for class in CLASSES {
        let named: Vec<String> = pack
            .catalog()
            .entries()
            .filter(|(_, c)| *c == class)
            .map(|(p, _)| format!("`{p}`"))
            .collect();
        if !named.is_empty() && !permitted.contains(&class) {
            found.push(Finding::warning(format!(
                "no policy permits `{class}`, so {} can never be called",
                named.join(", ")
            )));
        }
    }
    // A tool named in a resource scope that no catalog entry classifies is `admin`.
    for policy in &policies {
        let tool = match policy.resource_constraint() {
            ResourceConstraint::Eq(uid) | ResourceConstraint::IsIn(_, uid)
                if uid.type_name().to_string() == "Tool" =>
            {
                Some(uid.id().unescaped().to_owned())
            }
            _ => None,
        };
        if let Some(tool) = tool {
            let class = pack
                .catalog()
                .classify(&tool, &crate::Hints::default())
                .class;
            if !admitted(pack, &policy.action_constraint()).contains(&class) {
                found.push(Finding::error(format!("policy `{}` is unreachable: the catalog makes `{tool}` a `{class}` tool, which its action scope does not take",
                    policy.id()
                )));
            }
        }
    }
    // A policy that judges a path or URL by the raw argument: what the agent wrote, not what
    // is opened (`a/../.env`, `.env/`, a symlink). The bound resources and path labels see it
    // normalized and resolved.
    for policy in &policies {
        let text = policy.to_string();
        let read = raw_arguments(&text);
        let mut by_argument: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for (tool, argument, kind) in pack.catalog().bindings() {
            if matches!(kind, crate::ResourceKind::Path | crate::ResourceKind::Url)
                && read.contains(argument)
            {
                by_argument.entry(argument).or_default().push(tool);
            }
        }
        let named: Vec<String> = by_argument
            .iter()
            .map(|(argument, tools)| match tools.as_slice() {
                [one] => format!("`{argument}` (bound for `{one}`)"),
                [first, rest @ ..] => {
                    format!("`{argument}` (bound for `{first}` and {} more)", rest.len())
                }
                [] => format!("`{argument}`"),
            })
            .collect();
        if !named.is_empty() {
            found.push(Finding::warning(format!(
                "policy `{}` reads the raw `context.args` of {}: match `context.resources` or `context.path_labels`, which see the path as it is opened",
                policy.id(),
                named.join(", ")
            )));
        }
    }
    // A permit every call of which an unconditional forbid denies.
    for permit in policies.iter().filter(|p| p.effect() == Effect::Permit) {
        let classes = admitted(pack, &permit.action_constraint());
        for forbid in policies.iter().filter(|p| p.effect() == Effect::Forbid) {
            let unconditional = !forbid.has_non_scope_constraint()
                && matches!(forbid.principal_constraint(), PrincipalConstraint::Any);
            let covers_resource = match (forbid.resource_constraint(), permit.resource_constraint())
            {
                (ResourceConstraint::Any, _) => true,
                (a, b) => a == b,
            };
            if unconditional
                && covers_resource
                && classes.is_subset(&admitted(pack, &forbid.action_constraint()))
            {
                found.push(Finding::error(format!(
                    "permit `{}` is shadowed: forbid `{}` denies every call it could allow",
                    permit.id(),
                    forbid.id()
                )));
            }
        }
    }
    // Two catalog entries that match one another's names with different classes.
    let entries: Vec<(String, ActionClass)> = pack
        .catalog()
        .entries()
        .map(|(p, c)| (p.to_owned(), c))
        .collect();
    for (i, (a, ca)) in entries.iter().enumerate() {
        for (b, cb) in entries.iter().skip(i + 1) {
            if ca != cb && (crate::pattern::glob_covers(a, b) || crate::pattern::glob_covers(b, a))
            {
                found.push(Finding::warning(format!("catalog entries `{a}` ({ca}) and `{b}` ({cb}) overlap; the more restricted class applies to tools both match"
                )));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PackSource;

    fn pack(policy: &str) -> Pack {
        Pack::compile(&PackSource {
            name: "t".into(),
            manifest: r#"
purposes = ["p"]
[[tool]]
tool = "*read_file"
class = "read"
resources = { path = "path" }
[[tool]]
tool = "*lookup"
class = "read"
resources = { customer = "customer" }
"#
            .into(),
            schema: None,
            policies: vec![("p.cedar".into(), policy.into())],
            extra_tools: Vec::new(),
        })
        .unwrap()
    }

    fn raw_warnings(pack: &Pack) -> Vec<String> {
        findings(pack)
            .into_iter()
            .map(|f| f.message)
            .filter(|m| m.contains("raw `context.args`"))
            .collect()
    }

    #[test]
    fn a_policy_on_a_raw_bound_path_is_warned_of() {
        for condition in [
            r#"context.args has path && context.args.path like "*.env""#,
            r#"context.args has "path" && context.args["path"] like "*.env""#,
        ] {
            let found = raw_warnings(&pack(&format!(
                "@id(\"x\") forbid (principal, action, resource) when {{ {condition} }};\n\
                 permit (principal, action, resource);"
            )));
            assert_eq!(found.len(), 1, "{condition}: {found:?}");
            assert!(
                found[0].contains("`path` (bound for `*read_file`)"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn labels_resources_and_named_identifiers_are_not_warned_of() {
        let found = raw_warnings(&pack(
            r#"@id("x") forbid (principal, action, resource) when { context.path_labels.contains("secret") };
               @id("y") forbid (principal, action, resource) when { context.args has customer && context.args.customer == "1" };
               @id("z") forbid (principal, action, resource) when { context.resources.contains("path:/etc/passwd") };
               permit (principal, action, resource);"#,
        ));
        assert!(found.is_empty(), "{found:?}");
    }
}
