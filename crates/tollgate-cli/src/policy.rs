//! `tollgate policy check|test|explain`: what a security team runs on a pack before it serves.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Map, Value};
use tollgate_guard::pack_files;
use tollgate_policy::{Pack, cases, check::Severity, recorded};

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
    /// Explain one call under a pack: the decision, what determined it, and every policy
    /// that could apply to the tool and action with whether it held. The call is a case in a
    /// cases file (`CASES NAME`), or a decision recorded in an audit trail (`--audit FILE…
    /// --decision ID`).
    Explain {
        /// The pack's folder.
        dir: PathBuf,
        /// A cases file (the format of `DIR/tests/*.toml`) holding the call.
        #[arg(required_unless_present = "audit", requires = "name")]
        cases: Option<PathBuf>,
        /// The case's `name`.
        name: Option<String>,
        /// The audit trail's files in order, or its folder.
        #[arg(long, num_args = 1.., value_name = "FILE|DIR", conflicts_with = "cases", requires = "decision")]
        audit: Vec<PathBuf>,
        /// The recorded decision: its `decision_id` or its record number (`seq`).
        #[arg(long, value_name = "ID")]
        decision: Option<String>,
        /// A `tollgate.toml` whose `[[policy.tool]]` catalog entries join the pack's, as they
        /// do when Tollgate runs with it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// `text`, or `json` for tools.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
    },
    /// Decide every call recorded in an audit trail again under a candidate pack, and show
    /// what would change: calls that would flip between allow, deny and approval, grouped by
    /// tool and by the policies that decided them before and now, with counts and examples.
    Replay {
        /// The audit trail's files in order, or its folder.
        #[arg(long, required = true, num_args = 1.., value_name = "FILE|DIR")]
        audit: Vec<PathBuf>,
        /// The candidate pack's folder; without it, the pack `--config` names (or the embedded
        /// default).
        #[arg(long, value_name = "DIR", required_unless_present = "config")]
        policies: Option<PathBuf>,
        /// A `tollgate.toml` whose `[[policy.tool]]` catalog entries join the pack's, as they
        /// do when Tollgate runs with it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// `text`, or `json` for tools.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
        /// Exit with status 3 when any decision changes: a gate for a policy change in CI.
        #[arg(long)]
        fail_on_change: bool,
    },
    /// Write a review of a pack as one HTML page a reviewer reads without knowing Cedar:
    /// what each purpose gets for each tool of the pack's tests (with the deciding policies),
    /// the catalog, the pinned tools, the test results and every policy's text.
    Report {
        /// The pack's folder.
        dir: PathBuf,
        /// Where to write the page.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// A lock file of pinned tools (`tollgate.lock`) to list.
        #[arg(long, value_name = "FILE")]
        pins: Option<PathBuf>,
        /// A `tollgate.toml` whose `[[policy.tool]]` catalog entries join the pack's.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
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
            audit,
            decision,
            config,
            format,
        } => {
            let pack = compile_with(Some(&dir), config.as_deref())?;
            match (cases, name, decision) {
                (Some(file), Some(name), _) => {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
                    let explained = cases::explain_case(&pack, &text, &name)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    explain(&format!("case: {name}"), None, &explained, &format)
                }
                (_, _, Some(wanted)) => {
                    let text = read_trail(&audit)?;
                    let (record, explained) =
                        recorded::explain_recorded(&pack, text.lines(), &wanted)
                            .map_err(anyhow::Error::msg)?;
                    explain(
                        &format!("recorded decision: {wanted}"),
                        Some(&record),
                        &explained,
                        &format,
                    )
                }
                _ => bail!(
                    "name a case (CASES NAME) or a recorded decision (--audit … --decision ID)"
                ),
            }
        }
        PolicyCommand::Replay {
            audit,
            policies,
            config,
            format,
            fail_on_change,
        } => {
            let pack = compile_with(policies.as_deref(), config.as_deref())?;
            replay(&audit, &pack, &format, fail_on_change)
        }
        PolicyCommand::Report {
            dir,
            out,
            pins,
            config,
        } => report(&dir, &out, pins.as_deref(), config.as_deref()),
    }
}

/// The text of a trail's files, in order.
fn read_trail(paths: &[PathBuf]) -> anyhow::Result<String> {
    let mut text = String::new();
    for file in tollgate_audit::trail_paths(paths)? {
        text.push_str(
            &std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?,
        );
    }
    Ok(text)
}

/// How a decision record read: what was recorded, for showing beside what the pack says now.
fn recorded_line(record: &Map<String, Value>) -> String {
    let text = |k: &str| record.get(k).and_then(Value::as_str).unwrap_or("?");
    let policies = record
        .get("policies")
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    format!(
        "recorded: {} by {policies} under {} (tool {}, session {}, record {}, at {})",
        text("decision"),
        text("version"),
        text("tool"),
        text("session"),
        record
            .get("seq")
            .and_then(Value::as_u64)
            .unwrap_or_default(),
        record.get("time").and_then(Value::as_i64).map_or_else(
            || "?".to_owned(),
            |ms| tollgate_policy::clock::utc_text(ms / 1000)
        ),
    )
}

fn explain(
    title: &str,
    record: Option<&Map<String, Value>>,
    explained: &tollgate_policy::Explanation,
    format: &str,
) -> anyhow::Result<()> {
    let decision = &explained.decision;
    if format == "json" {
        let value = serde_json::json!({
            "call": title,
            "recorded": record,
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
    println!("{title}");
    if let Some(record) = record {
        println!("{}", recorded_line(record));
        if !recorded::kept_whole(record.get("arguments").and_then(Value::as_object)) {
            println!(
                "  (the trail does not keep every argument of this call: redacted ones are decided as \"[redacted]\")"
            );
        }
    }
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

/// The pack in `dir` (else the one `config` names, else the embedded default), with the
/// catalog entries of `config`.
fn compile_with(dir: Option<&Path>, config: Option<&Path>) -> anyhow::Result<Pack> {
    let config = config
        .map(tollgate_proxy::Config::load)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = dir.or_else(|| config.as_ref().and_then(|c| c.policy.pack.as_deref()));
    let source = match dir {
        Some(dir) => pack_files::read_pack(dir)?,
        None => pack_files::embedded_default(),
    };
    let tools = config
        .as_ref()
        .map_or(&[][..], |c| c.policy.tools.as_slice());
    let source = pack_files::with_tools(source, tools);
    Pack::compile(&source).map_err(|e| anyhow::anyhow!("{}: {e}", source.name))
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

/// Replays the trail in `paths` under the pack in `dir`.
fn replay(
    paths: &[PathBuf],
    pack: &Pack,
    format: &str,
    fail_on_change: bool,
) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal};

    let files = tollgate_audit::trail_paths(paths)?;
    if files.is_empty() {
        bail!("no audit trail files in {paths:?}");
    }
    let total: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    // A progress line on a terminal, for trails that take a while.
    let progress = std::io::stderr().is_terminal() && total > 8 << 20;
    let mut replay = recorded::Replay::new(pack);
    let (mut read, mut shown) = (0u64, std::time::Instant::now());
    let mut line = Vec::new();
    for file in &files {
        let mut reader = std::io::BufReader::new(
            std::fs::File::open(file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?,
        );
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            if n == 0 {
                break;
            }
            read += n as u64;
            // A damaged line is counted as unreadable; it does not stop the replay.
            replay.bytes(&line);
            if progress && shown.elapsed() >= std::time::Duration::from_millis(200) {
                shown = std::time::Instant::now();
                eprint!(
                    "\rreplaying {}: {:>3}%",
                    file.display(),
                    read * 100 / total.max(1)
                );
            }
        }
    }
    if progress {
        eprintln!("\rreplayed {} file(s): 100%{:20}", files.len(), "");
    }
    let summary = replay.finish();
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_replay(&summary);
    }
    if fail_on_change && summary.changed > 0 {
        std::process::exit(3);
    }
    Ok(())
}

fn print_replay(summary: &recorded::Summary) {
    println!(
        "replayed {} of {} recorded decision(s) under {}",
        summary.replayed, summary.decisions, summary.policies
    );
    println!("  unchanged: {}", summary.unchanged);
    let transitions = summary
        .transitions
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "  changed:   {}{}",
        summary.changed,
        if transitions.is_empty() {
            String::new()
        } else {
            format!(" ({transitions})")
        }
    );
    if summary.inexact > 0 {
        println!(
            "  inexact:   {} replayed with \"[redacted]\" for arguments the trail does not keep",
            summary.inexact
        );
    }
    if summary.same_version_differences > 0 {
        println!(
            "  note: {} decision(s) came out differently under the very version that made them: their arguments were not kept whole",
            summary.same_version_differences
        );
    }
    let skipped: u64 = summary.skipped.values().sum();
    if skipped > 0 {
        println!("  not replayed: {skipped}");
        for (why, n) in &summary.skipped {
            println!("    {n:>6}  {why}");
        }
    }
    if summary.unreadable_lines > 0 {
        println!(
            "  {} line(s) are not records (a torn last line?)",
            summary.unreadable_lines
        );
    }
    for change in &summary.changes {
        println!(
            "\n{} → {}  {}  {} call(s){}",
            change.from.as_str(),
            change.to.as_str(),
            change.tool,
            change.count,
            if change.inexact > 0 {
                format!(", {} inexact", change.inexact)
            } else {
                String::new()
            }
        );
        println!("  decided before by: {}", change.before.join(", "));
        println!("  decided now by:    {}", change.after.join(", "));
        for example in &change.examples {
            println!(
                "    record {} session {} at {}{}: {}",
                example
                    .seq
                    .map_or_else(|| "?".to_owned(), |s| s.to_string()),
                example.session.as_deref().unwrap_or("?"),
                example.time.map_or_else(
                    || "?".to_owned(),
                    |ms| tollgate_policy::clock::utc_text(i64::try_from(ms / 1000).unwrap_or(0))
                ),
                if example.exact { "" } else { " (inexact)" },
                example.arguments
            );
            if !example.after.reasons.is_empty() {
                println!("      now: {}", example.after.reasons.join("; "));
            }
        }
    }
}

fn report(
    dir: &Path,
    out: &Path,
    pins: Option<&Path>,
    config: Option<&Path>,
) -> anyhow::Result<()> {
    let pack = compile_with(Some(dir), config)?;
    let files = pack_files::read_cases(dir)?;
    let mut tests = Vec::new();
    for (file, text) in &files {
        for result in
            cases::run_file(&pack, text).map_err(|e| anyhow::anyhow!("tests/{file}: {e}"))?
        {
            tests.push((format!("tests/{file}"), result.name, result.failure));
        }
    }
    let tools = cases::review(&pack, &files).map_err(anyhow::Error::msg)?;
    let pins = pins
        .map(|path| -> anyhow::Result<_> {
            let lock = tollgate_proxy::pins::Lock::load(path)?;
            Ok(lock
                .pins()
                .map(|p| {
                    (
                        p.upstream.clone(),
                        p.name.clone(),
                        p.digest.clone(),
                        p.description.clone(),
                    )
                })
                .collect())
        })
        .transpose()?;
    let page = crate::report::render(&crate::report::Review {
        pack: &pack,
        tools: &tools,
        tests: &tests,
        pins,
        generated: tollgate_policy::clock::utc_text(tollgate_mint::unix_now()),
    });
    std::fs::write(out, page)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    let failed = tests.iter().filter(|t| t.2.is_some()).count();
    println!(
        "{}: {} tool(s) by {} purpose(s), {} polic{}, {} of {} test case(s) passing",
        out.display(),
        tools.len(),
        pack.purposes().len(),
        pack.meta().len(),
        if pack.meta().len() == 1 { "y" } else { "ies" },
        tests.len() - failed,
        tests.len()
    );
    Ok(())
}
