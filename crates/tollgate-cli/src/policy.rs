//! `tollgate policy check|test|explain`: what a security team runs on a pack before it serves.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;
use tollgate_policy::{Pack, cases, check::Severity};
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
    /// Explain one call, written as a case in a cases file: the decision, what determined it,
    /// and every policy that could apply to the tool and action with whether it held.
    Explain {
        /// The pack's folder.
        dir: PathBuf,
        /// A cases file (the format of `DIR/tests/*.toml`) holding the call.
        cases: PathBuf,
        /// The case's `name`.
        name: String,
        /// `text`, or `json` for tools.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
}

pub(crate) fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Check { dir } => check(&dir),
        PolicyCommand::Test { dir } => test(&dir),
        PolicyCommand::Explain {
            dir,
            cases,
            name,
            format,
        } => explain(&dir, &cases, &name, &format),
    }
}

fn explain(dir: &Path, file: &Path, name: &str, format: &str) -> anyhow::Result<()> {
    let pack = compile(dir)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let explained = cases::explain_case(&pack, &text, name)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let decision = &explained.decision;
    if format == "json" {
        let value = serde_json::json!({
            "case": name,
            "version": decision.version,
            "class": explained.class,
            "decision": decision.effect,
            "determining": decision.policies,
            "reasons": decision.reasons,
            "considered": explained.considered,
            "out_of_scope": explained.out_of_scope,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("case: {name}");
    println!(
        "decision: {} ({}), under {}",
        decision.effect.as_str(),
        decision.reason_text(),
        decision.version
    );
    println!("determined by: {}", decision.policies.join(", "));
    if decision
        .policies
        .first()
        .is_some_and(|p| p.starts_with("tollgate:"))
    {
        println!("  (a step before the policies decided: see its reason above)");
    }
    println!(
        "considered: {} polic{} whose scope can match this `{}` call ({} other{} cannot)",
        explained.considered.len(),
        if explained.considered.len() == 1 {
            "y"
        } else {
            "ies"
        },
        explained.class,
        explained.out_of_scope,
        if explained.out_of_scope == 1 { "" } else { "s" },
    );
    for policy in &explained.considered {
        use tollgate_policy::PolicyOutcome;
        let (mark, outcome) = match &policy.outcome {
            PolicyOutcome::Satisfied => ("+", "holds".to_owned()),
            PolicyOutcome::NotSatisfied => ("-", "does not hold".to_owned()),
            PolicyOutcome::Errored(e) => ("!", format!("fails to evaluate: {e}")),
            PolicyOutcome::NotEvaluated(e) => ("?", format!("not evaluated: {e}")),
        };
        let kind = match (policy.permit, policy.needs_approval) {
            (true, true) => "permit (needs approval)",
            (true, false) => "permit",
            (false, _) => "forbid",
        };
        println!(
            "  {mark} {kind:<24} {:<32} {outcome}{}{}  [{}]",
            policy.id,
            if policy.determining {
                ", determining"
            } else {
                ""
            },
            policy
                .reason
                .as_deref()
                .map(|r| format!(": {r:?}"))
                .unwrap_or_default(),
            policy.file
        );
    }
    Ok(())
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
    let findings = tollgate_policy::check::findings(&pack);
    for warning in pack.warnings() {
        println!("warning: {warning}");
    }
    for finding in &findings {
        println!("{finding}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if errors > 0 {
        bail!("{errors} error(s) in {}", dir.display());
    }
    println!("ok");
    Ok(())
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
