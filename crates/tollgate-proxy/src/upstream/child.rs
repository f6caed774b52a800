//! A stdio upstream's child process: its own process group (so shutdown reaches everything it
//! started), stderr relayed to `tracing`, and termination that escalates from SIGTERM to SIGKILL.

use std::{collections::BTreeMap, path::Path, process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::AsyncBufReadExt,
    process::{ChildStdin, ChildStdout},
};

/// Time a child gets to exit after SIGTERM before its group is killed.
const TERM_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub(crate) struct Child {
    inner: tokio::process::Child,
    group: Option<Pid>,
    pipes: Option<(ChildStdout, ChildStdin)>,
}

pub(crate) fn spawn(
    upstream: &str,
    command: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
) -> std::io::Result<Child> {
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(args)
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let mut inner = cmd.spawn()?;
    let group = inner
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    if let Some(stderr) = inner.stderr.take() {
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "tollgate::upstream_stderr", upstream = %upstream, "{line}");
            }
        });
    }
    let pipes = match (inner.stdout.take(), inner.stdin.take()) {
        (Some(out), Some(inp)) => Some((out, inp)),
        _ => None,
    };
    Ok(Child {
        inner,
        group,
        pipes,
    })
}

impl Child {
    pub(crate) fn take_pipes(&mut self) -> Option<(ChildStdout, ChildStdin)> {
        self.pipes.take()
    }

    /// Resolves when the child exits, with a description of how.
    pub(crate) async fn wait(&mut self) -> String {
        match self.inner.wait().await {
            Ok(status) => format!("the process exited ({status})"),
            Err(e) => format!("waiting for the process failed: {e}"),
        }
    }

    fn signal_group(&self, signal: Signal) {
        if let Some(group) = self.group {
            // ESRCH (the group is already gone) is the expected end state.
            let _ = nix::sys::signal::killpg(group, signal);
        }
    }

    /// Ends the child and everything in its process group.
    pub(crate) async fn terminate(&mut self) {
        self.pipes = None;
        if matches!(self.inner.try_wait(), Ok(Some(_))) {
            self.signal_group(Signal::SIGKILL);
            return;
        }
        self.signal_group(Signal::SIGTERM);
        if tokio::time::timeout(TERM_GRACE, self.inner.wait())
            .await
            .is_err()
        {
            self.signal_group(Signal::SIGKILL);
            let _ = self.inner.wait().await;
        }
        // Grandchildren that ignored SIGTERM while the leader exited.
        self.signal_group(Signal::SIGKILL);
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !matches!(self.inner.try_wait(), Ok(Some(_))) {
            self.signal_group(Signal::SIGKILL);
        }
    }
}
