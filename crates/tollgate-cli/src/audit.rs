//! `tollgate audit verify`: checks a trail's every link and checkpoint, and says where it
//! breaks.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit trail: every record's link to the one before, every checkpoint's
    /// signature, and that the trail ends with a closing checkpoint. Names the record where
    /// an edit, a deletion, a reordering or a cut shows. Exits 1 if anything is wrong.
    Verify {
        /// The trail's files in order, or its folder (every `audit-*.jsonl` in it).
        #[arg(required = true, value_name = "FILE|DIR")]
        files: Vec<PathBuf>,
        /// The state folder of the Tollgate that wrote it (its `audit-signing.pub`).
        #[arg(long, value_name = "DIR", default_value_os_t = tollgate_proxy::config::default_state_dir(), env = "TOLLGATE_STATE")]
        state: PathBuf,
        /// The last file is still being written: records after its last checkpoint are not a
        /// fault.
        #[arg(long)]
        open: bool,
    },
}

pub(crate) fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { files, state, open } => {
            let verifier =
                tollgate_guard::audit::TrailVerifier::load(&state).map_err(anyhow::Error::msg)?;
            let report = tollgate_audit::verify_files(&files, &verifier, open)?;
            for notice in &report.notices {
                println!("note: {notice}");
            }
            for problem in &report.problems {
                println!("BROKEN {problem}");
            }
            let last = report
                .last
                .map_or_else(|| "none".to_owned(), |n| n.to_string());
            let chains = if report.chains > 1 {
                format!(
                    " in {} chains (one per process that wrote at once)",
                    report.chains
                )
            } else {
                String::new()
            };
            println!(
                "{} file(s){chains}, {} record(s), {} checkpoint(s), last record {last}: {}",
                report.files,
                report.records,
                report.checkpoints,
                if report.ok() {
                    "the trail is intact"
                } else {
                    "the trail has been altered or cut"
                }
            );
            if report.ok() {
                Ok(())
            } else {
                anyhow::bail!("{} problem(s) found", report.problems.len())
            }
        }
    }
}
