//! What the benchmarks share: the tool they decide on, and the guard they decide it with.

// Each benchmark uses part of this module.
#![allow(dead_code)]

use std::path::Path;

use serde_json::{Map, Value, json};
use tollgate_policy::{Hints, SchemaCache, ToolFacts};

/// The benchmarks measure Tollgate's code with the allocator the `tollgate` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `fs.read_text_file` of upstream `fs` rooted at `/srv/app`: a read-only tool with a path,
/// and optional `head` and `tail`.
pub fn read_text_file() -> ToolFacts {
    let schema: Map<String, Value> = json!({
        "type": "object",
        "properties": {"path": {"type": "string"}, "head": {"type": "integer"}, "tail": {"type": "integer"}},
        "required": ["path"],
        "additionalProperties": false
    })
    .as_object()
    .cloned()
    .unwrap_or_default();
    ToolFacts::new(
        "fs.read_text_file",
        "fs",
        Hints {
            read_only: Some(true),
            ..Hints::default()
        },
        Some("/srv/app".to_owned()),
        SchemaCache::default().compile(&schema),
    )
    .with_entry(&schema)
}

/// A guard configuration over stdio for `fs.read_text_file` (a read whose `path` is a
/// resource), the pack in `pack` and the state in `state`; `audit` and `tool` are TOML added to
/// the `[audit]` table and the catalog entry.
pub fn fs_config(pack: &Path, state: &Path, audit: &str, tool: &str) -> tollgate_proxy::Config {
    tollgate_proxy::Config::parse(&format!(
        r#"
[front]
stdio = true
[policy]
pack = "{}"
[grants]
state_dir = "{}"
[audit]
{audit}
[[policy.tool]]
tool = "fs.read_text_file"
class = "read"
resources = {{ path = "path" }}
{tool}
[[upstream]]
name = "fs"
command = "true"
root = "/srv/app"
"#,
        pack.display(),
        state.display()
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A stdio caller presenting a `maintenance` grant for reads of `resource`, signed with the
/// grant key in `state`.
pub fn reader(state: &Path, resource: &str) -> tollgate_proxy::Caller {
    let signer =
        tollgate_mint::GrantSigner::load_or_create(state).unwrap_or_else(|e| panic!("{e}"));
    let grant = tollgate_policy::Grant {
        resources: [resource.parse().unwrap_or_else(|e| panic!("{e:?}"))].into(),
        ..tollgate_policy::Grant::root(
            tollgate_mint::new_grant_id().unwrap_or_else(|e| panic!("{e}")),
            "maintenance",
            [tollgate_policy::ActionClass::Read],
            tollgate_mint::unix_now(),
            3600,
        )
    };
    tollgate_proxy::Caller::stdio(Some(signer.sign(&grant).unwrap_or_else(|e| panic!("{e}"))))
}

/// Rules shaped like the default pack's that read the session's taints and statistics (with a
/// rate limit no benchmark reaches); each benchmark adds its own.
pub const HISTORY_RULES: &str = r#"
@id("read-within-grant") permit (principal, action == Action::"read", resource) when { context.grant.present };
@id("no-egress-after-secret-read") forbid (principal, action == Action::"egress", resource) when { context.taint.contains("secret_read") };
@id("no-write-after-untrusted") forbid (principal, action == Action::"write", resource) when { context.taint.contains("untrusted_content") };
@id("call-rate") forbid (principal, action, resource) when { context.stats.calls_last_minute >= 100000000 };
"#;

/// A `maintenance` pack in `dir` of [`HISTORY_RULES`] and `extra`.
pub fn history_pack(dir: &Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("pack.toml"), "purposes = [\"maintenance\"]\n")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("rules.cedar"), format!("{HISTORY_RULES}{extra}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// A call of `fs.read_text_file` with `arguments`, as session `session`'s call `number`.
pub fn read_call<'a>(
    session: u64,
    number: u64,
    arguments: &'a Map<String, Value>,
    meta: &'a rmcp::model::RequestMetaObject,
    caller: &'a tollgate_proxy::Caller,
    facts: &'a ToolFacts,
) -> tollgate_proxy::intercept::ToolCall<'a> {
    tollgate_proxy::intercept::ToolCall {
        session,
        upstream: "fs",
        tool: "read_text_file",
        exposed_name: "fs.read_text_file",
        arguments: Some(arguments),
        meta,
        caller,
        facts: Some(facts),
        can_ask: false,
        number,
    }
}

/// A pack that allows `echo` under a `read` grant (with three policies that do not apply to it,
/// as a real pack has), a signed grant and a config guarding upstream `bench` in `dir`:
/// `command` and `args` start the upstream (TOML values), `credential` is its credential
/// table and `audit` the `[audit]` section's lines. The arguments of `tollgate` that run it.
pub fn echo_guard(
    dir: &Path,
    command: &str,
    args: &str,
    credential: &str,
    audit: &str,
) -> Vec<String> {
    let pack = dir.join("pack");
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::write(
        pack.join("pack.toml"),
        "purposes = [\"bench\"]\n[[tool]]\ntool = \"echo\"\nclass = \"read\"\n",
    )
    .unwrap();
    std::fs::write(
        pack.join("rules.cedar"),
        r#"
@id("reads") permit (principal, action == Action::"read", resource) when { context.grant.present };
@id("secrets") forbid (principal, action, resource) when { context.args has path && context.args.path like "*.env" };
@id("denials") forbid (principal, action, resource) when { context.stats.denials >= 50 };
@id("hours") forbid (principal, action == Action::"write", resource) when { context.environment == "prod" && context.time.hour < 8 };
"#,
    )
    .unwrap();
    let state = dir.join("state");
    let signer = tollgate_mint::GrantSigner::load_or_create(&state).unwrap();
    let grant = tollgate_policy::Grant {
        task: "measure".into(),
        ..tollgate_policy::Grant::root(
            tollgate_mint::new_grant_id().unwrap(),
            "bench",
            [tollgate_policy::ActionClass::Read],
            tollgate_mint::unix_now(),
            3600,
        )
    };
    let token = dir.join("grant");
    std::fs::write(&token, signer.sign(&grant).unwrap()).unwrap();
    let config = dir.join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[front]\nstdio = true\n[policy]\npack = {pack:?}\n[grants]\nstate_dir = {state:?}\n[audit]\n{audit}\n[[upstream]]\nname = \"bench\"\ncommand = {command}\nargs = {args}\ncredential = {credential}\n",
            pack = pack.display().to_string(),
            state = state.display().to_string(),
        ),
    )
    .unwrap();
    vec![
        "run".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
        "--grant".to_owned(),
        token.display().to_string(),
    ]
}

/// The far end of a bare stdio round trip: every line on stdin straight back on stdout.
pub fn echo_lines() {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return };
        if out.write_all(line.as_bytes()).is_err()
            || out.write_all(b"\n").is_err()
            || out.flush().is_err()
        {
            return;
        }
    }
}
