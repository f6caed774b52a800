"""An upstream that echoes its injected API key, escaped every way JSON allows (`\\/` for `/`,
`\\uXXXX` for any character, a mix), in results and in errors: the agent, the audit trail and
Tollgate's log at trace level never hold the key in any form. The Python `mcp` SDK is the
agent; the upstream is a hand-written HTTP MCP server (`leaky_upstream.py`)."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError as McpError

from conftest import free_port

pytestmark = pytest.mark.anyio

SECRET = "sk/live-9f8e7d6c5b4a"
HERE = os.path.dirname(os.path.abspath(__file__))


def every_form(secret: str) -> list[str]:
    """The key as raw bytes would show it in a file or log, escaped any of the ways tried."""
    return [
        secret,
        secret.replace("/", "\\/"),
        "".join(f"\\u{ord(c):04x}" for c in secret),
        "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(secret)),
        # And the part after the one character a server might escape.
        secret.split("/")[1],
    ]


def wait_for(port: int):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def strings(value):
    """Every string in a decoded JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)


async def test_no_form_of_an_echoed_secret_reaches_the_agent_the_trail_or_the_log(tollgate, tmp_path):
    upstream_port, port = free_port(), free_port()
    leaky = subprocess.Popen([sys.executable, os.path.join(HERE, "leaky_upstream.py"), str(upstream_port)])
    state = tmp_path / "state"
    log = tmp_path / "tollgate.log"
    try:
        wait_for(upstream_port)
        token = subprocess.run(
            [tollgate, "grant", "issue", "--state", str(state), "--purpose", "maintenance", "--action", "read"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        config = tmp_path / "tollgate.toml"
        config.write_text(f"""
[front.http]
listen = "127.0.0.1:{port}"
[grants]
state_dir = "{state}"
[[policy.tool]]
tool = "*"
class = "read"
[[upstream]]
name = "leaky"
url = "http://127.0.0.1:{upstream_port}/mcp"
credential = {{ mode = "secret", header = "X-Api-Key", env = "LEAKY_API_KEY" }}
""")
        env = dict(os.environ, LEAKY_API_KEY=SECRET, RUST_LOG="trace")
        with open(log, "wb") as stderr:
            process = subprocess.Popen(
                [tollgate, "run", "--config", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            wait_for(port)
            seen = []
            headers = {"Authorization": f"Bearer {token}"}
            async with create_mcp_http_client(headers=headers) as client:
                async with streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=client) as (r, w):
                    async with ClientSession(r, w) as agent:
                        await agent.initialize()
                        for tool in ("key", "unicode", "slash", "mixed"):
                            result = await agent.call_tool(tool, {})
                            shown = "".join(getattr(c, "text", "") for c in result.content)
                            assert "[redacted]" in shown, f"{tool}: {shown}"
                            seen.append(shown)
                        with pytest.raises(McpError) as error:
                            await agent.call_tool("error", {})
                        seen.append(error.value.error.message)
                        seen.append(json.dumps(error.value.error.data))
            for shown in seen:
                assert SECRET not in shown and SECRET.split("/")[1] not in shown, shown
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)
    finally:
        leaky.terminate()
        leaky.wait(timeout=5)

    trail = sorted((state / "audit").glob("audit-*.jsonl"))
    assert trail, "the calls were recorded"
    outcomes = 0
    for path in trail:
        raw = path.read_bytes().rstrip(b"\0").decode()
        for form in every_form(SECRET):
            assert form not in raw, f"{path.name} holds `{form}`"
        for line in raw.splitlines():
            record = json.loads(line)
            assert not any(SECRET in s for s in strings(record)), line
            outcomes += record.get("kind") == "outcome"
    assert outcomes >= 5, f"{outcomes} outcomes recorded"
    failed = [json.loads(l) for p in trail for l in p.read_text().rstrip("\0").splitlines() if '"failed"' in l]
    assert failed and all("[redacted]" in json.dumps(r) for r in failed), failed

    logged = log.read_text(errors="replace")
    assert "DEBUG" in logged, "the log was verbose"
    for form in every_form(SECRET):
        assert form not in logged, f"the log holds `{form}`"
