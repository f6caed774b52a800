//! The fixture binary speaks MCP over stdio and lists the conformance fixtures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use rmcp::{ServiceExt, transport::TokioChildProcess};

#[tokio::test]
async fn fixture_binary_serves_stdio() {
    let command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-fixture"));
    let mut command = command;
    command.arg("stdio").arg("named");
    let client = ().serve(TokioChildProcess::new(command).unwrap()).await.unwrap();
    let tools = client.list_all_tools().await.unwrap();
    for name in [
        "echo",
        "test_simple_text",
        "test_sampling",
        "json_schema_2020_12_tool",
    ] {
        assert!(tools.iter().any(|t| t.name == name), "{name}");
    }
    let info = client.peer_info().unwrap();
    assert_eq!(info.server_info.as_ref().unwrap().name, "named");
    client.cancel().await.unwrap();
}
