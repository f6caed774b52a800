//! `tollgate approvals list|show|approve|deny`: an approver answers the calls a policy holds,
//! from a terminal of their own, through the admin endpoint of the running Tollgate. The
//! token says who the approver is; it is read from `TOLLGATE_APPROVER_TOKEN` or a file, never
//! from the command line (where other users could see it).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// The requests waiting for an answer (all of them, with `--all`).
    List {
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// One request: what will happen if it is approved.
    Show {
        id: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Let the call go ahead.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Refuse the call; the agent reads the reason.
    Deny {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct Endpoint {
    /// The admin endpoint of the running Tollgate.
    #[arg(
        long,
        default_value = "http://127.0.0.1:9090",
        env = "TOLLGATE_ADMIN_URL"
    )]
    admin: String,
    /// A file holding the approver's token (else `TOLLGATE_APPROVER_TOKEN`).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl Endpoint {
    fn token(&self) -> anyhow::Result<String> {
        let token = match &self.token_file {
            Some(file) => std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?,
            None => std::env::var("TOLLGATE_APPROVER_TOKEN")
                .context("no approver token: set TOLLGATE_APPROVER_TOKEN or give --token-file")?,
        };
        Ok(token.trim().to_owned())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.admin.trim_end_matches('/'))
    }
}

async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let answer = request
        .send()
        .await
        .context("the admin endpoint cannot be reached")?;
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{}: {}", status.as_u16(), text.trim());
    }
    serde_json::from_str(&text).context("the admin endpoint answered something else than JSON")
}

fn line(request: &Value) -> String {
    let text = |k: &str| {
        request
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    format!(
        "{}  {:<9} {}/{}  {}  for {} (grant {}), expires {}",
        text("id"),
        text("state"),
        text("upstream"),
        text("tool"),
        request
            .get("resources")
            .and_then(Value::as_array)
            .map(|r| r
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        text("user"),
        text("grant"),
        request
            .get("expires")
            .and_then(Value::as_i64)
            .map(tollgate_policy::clock::utc_text)
            .unwrap_or_default(),
    )
}

pub(crate) async fn run(command: ApprovalsCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match command {
        ApprovalsCommand::List { all, endpoint } => {
            let path = if all {
                "/approvals"
            } else {
                "/approvals?pending"
            };
            let answer = send(
                client
                    .get(endpoint.url(path))
                    .bearer_auth(endpoint.token()?),
            )
            .await?;
            let requests = answer
                .get("approvals")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if requests.is_empty() {
                println!("no approval requests");
            }
            for request in requests {
                println!("{}", line(&request));
            }
        }
        ApprovalsCommand::Show { id, endpoint } => {
            let answer = send(
                client
                    .get(endpoint.url(&format!("/approvals/{id}")))
                    .bearer_auth(endpoint.token()?),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
        }
        ApprovalsCommand::Approve {
            id,
            reason,
            endpoint,
        } => answer(&client, &endpoint, &id, "approve", &reason).await?,
        ApprovalsCommand::Deny {
            id,
            reason,
            endpoint,
        } => answer(&client, &endpoint, &id, "deny", &reason).await?,
    }
    Ok(())
}

async fn answer(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    id: &str,
    decision: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let answered = send(
        client
            .post(endpoint.url(&format!("/approvals/{id}")))
            .bearer_auth(endpoint.token()?)
            .json(&json!({"decision": decision, "reason": reason})),
    )
    .await?;
    println!("{}", line(&answered));
    Ok(())
}
