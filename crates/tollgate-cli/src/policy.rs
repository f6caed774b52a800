//! `tollgate policy check|test`: what a security team runs on a pack before it serves.

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
