//! `tollgate policy check|test`: what a security team runs on a pack before it serves.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::bail;
use cedar_policy::{ActionConstraint, Effect, PrincipalConstraint, ResourceConstraint};
use clap::Subcommand;
use tollgate_policy::{ActionClass, Pack, cases, pack::CLASSES};
use tollgate_proxy::pack_files;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate a pack: Cedar against the schema, the catalog, and policies that can never
    /// apply or are always overridden. Exits non-zero on any error.
    Check {
        /// The pack's folder (holding `pack.toml` and `*.cedar`).
        dir: PathBuf,
    },
    /// Run a pack's test cases (`DIR/tests/*.toml`) and report each like a test runner.
    Test {
        /// The pack's folder.
        dir: PathBuf,
    },
}

pub(crate) fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { dir } => check(&dir),
        PolicyCommand::Test { dir } => test(&dir),
    }
}

fn compile(dir: &Path) -> anyhow::Result<Pack> {
    let source = pack_files::read_pack(dir)?;
    Pack::compile(&source).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
}

fn check(dir: &Path) -> anyhow::Result<()> {
    let pack = compile(dir)?;
    println!(
        "{}: {} policies, schema valid (strict)",
        pack.version(),
        pack.meta().len()
    );
    let findings = findings(&pack);
    for warning in pack.warnings() {
        println!("warning: {warning}");
    }
    for finding in &findings {
        println!("{finding}");
    }
    let errors = findings.iter().filter(|f| f.starts_with("error")).count();
    if errors > 0 {
        bail!("{errors} error(s) in {}", dir.display());
    }
    println!("ok");
    Ok(())
}

/// The classes a policy's action scope can admit.
fn admitted(pack: &Pack, constraint: &ActionConstraint) -> BTreeSet<ActionClass> {
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

/// Catalog and reachability findings, `error:` or `warning:` first.
fn findings(pack: &Pack) -> Vec<String> {
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
            found.push(format!(
                "warning: no policy permits `{class}`, so {} can never be called",
                named.join(", ")
            ));
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
                .classify(&tool, &tollgate_policy::Hints::default())
                .class;
            if !admitted(pack, &policy.action_constraint()).contains(&class) {
                found.push(format!(
                    "error: policy `{}` is unreachable: the catalog makes `{tool}` a `{class}` tool, which its action scope does not take",
                    policy.id()
                ));
            }
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
                found.push(format!(
                    "error: permit `{}` is shadowed: forbid `{}` denies every call it could allow",
                    permit.id(),
                    forbid.id()
                ));
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
            if ca != cb
                && (tollgate_policy::pattern::glob_covers(a, b)
                    || tollgate_policy::pattern::glob_covers(b, a))
            {
                found.push(format!(
                    "warning: catalog entries `{a}` ({ca}) and `{b}` ({cb}) overlap; the more restricted class applies to tools both match"
                ));
            }
        }
    }
    found
}

fn test(dir: &Path) -> anyhow::Result<()> {
    let pack = compile(dir)?;
    let files = pack_files::read_cases(dir)?;
    if files.is_empty() {
        bail!("{}: no test cases in `tests/`", dir.display());
    }
    println!("running the cases of {}", pack.version());
    let (mut passed, mut failed) = (0usize, Vec::new());
    for (file, text) in files {
        let results =
            cases::run_file(&pack, &text).map_err(|e| anyhow::anyhow!("tests/{file}: {e}"))?;
        for result in results {
            match result.failure {
                None => {
                    passed += 1;
                    println!("case tests/{file} :: {} ... ok", result.name);
                }
                Some(failure) => {
                    println!("case tests/{file} :: {} ... FAILED", result.name);
                    failed.push(format!("tests/{file} :: {}\n    {failure}", result.name));
                }
            }
        }
    }
    if !failed.is_empty() {
        println!("\nfailures:");
        for failure in &failed {
            println!("  {failure}");
        }
    }
    println!(
        "\ncase result: {}. {passed} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{} case(s) failed", failed.len())
    }
}
