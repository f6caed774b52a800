"""Approval gates with the Python `mcp` SDK as the agent, over stdio, and
`@modelcontextprotocol/server-filesystem` behind Tollgate.

A write is held by an `@in_band` policy: an agent with an elicitation callback is asked, and
the user's yes or no decides; an agent without one is never asked, and the call waits for an
approver out of band (`tollgate approvals approve`), or is denied at once when there is none."""

import contextlib
import json
import secrets
import subprocess
import time
import urllib.request

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

from conftest import env_with_node, free_port

pytestmark = pytest.mark.anyio

POLICIES = """
@id("reads") permit (principal, action == Action::"read", resource) when { context.grant.present };
@id("writes-at-the-agent") @needs_approval @in_band @reason("writing a file needs a yes from the user")
permit (principal, action == Action::"write", resource) when { context.grant.present };
"""

CATALOG = """
purposes = ["work"]
[[tool]]
tool = "*"
class = "read"
[[tool]]
tool = "write_file"
class = "write"
redact = ["content"]
"""


def text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def setup(tollgate, filesystem, tmp_path):
    """A pack, a served folder, a grant for reads and writes, and a config; approvers and the
    admin endpoint only when asked for."""
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "pack.toml").write_text(CATALOG)
    (pack / "rules.cedar").write_text(POLICIES)
    served = tmp_path / "served"
    served.mkdir()
    state = tmp_path / "state"
    token = subprocess.run(
        [tollgate, "grant", "issue", "--state", str(state), "--purpose", "work", "--user", "carol",
         "--action", "read", "--action", "write"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    grant = tmp_path / "grant"
    grant.write_text(token + "\n")

    def config(approvers: bool) -> tuple[str, str | None, str | None]:
        text_ = f"""
[front]
stdio = true
[policy]
pack = "{pack}"
[grants]
state_dir = "{state}"
[approvals]
timeout_secs = 20
[[upstream]]
name = "fs"
command = "{filesystem}"
args = ["{served}"]
"""
        admin = approver = None
        if approvers:
            port = free_port()
            approver = tmp_path / "ada"
            approver.write_text(secrets.token_urlsafe(24))
            text_ += f"""
[[approvals.approver]]
name = "ada"
token_file = "{approver}"
[admin]
listen = "127.0.0.1:{port}"
"""
            admin = f"http://127.0.0.1:{port}"
        path = tmp_path / ("with-approvers.toml" if approvers else "alone.toml")
        path.write_text(text_)
        return str(path), admin, str(approver) if approver else None

    return {"served": served, "grant": str(grant), "config": config}


class User:
    """The person at the agent, answering Tollgate's question with `answer`."""

    def __init__(self, answer: types.ElicitResult) -> None:
        self.answer = answer
        self.asked: list[str] = []

    async def elicitation_callback(self, ctx, params):
        self.asked.append(params.message)
        return self.answer


@contextlib.asynccontextmanager
async def agent(tollgate, node_bin_dir, setup, user=None, approvers=False):
    config, admin, approver = setup["config"](approvers)
    params = StdioServerParameters(
        command=tollgate,
        args=["run", "--config", config, "--grant", setup["grant"]],
        env=env_with_node(node_bin_dir),
    )
    async with stdio_client(params) as (read, write):
        callback = user.elicitation_callback if user else None
        async with ClientSession(read, write, elicitation_callback=callback) as session:
            await session.initialize()
            yield session, admin, approver


async def test_the_user_approves_in_band(tollgate, node_bin_dir, setup):
    user = User(types.ElicitResult(action="accept", content={"approve": True}))
    async with agent(tollgate, node_bin_dir, setup, user) as (session, _, _):
        path = setup["served"] / "approved.txt"
        done = await session.call_tool("write_file", {"path": str(path), "content": "a private note"})
        assert not done.is_error, text(done)
        assert path.read_text() == "a private note"
    assert len(user.asked) == 1
    question = user.asked[0]
    assert "Tool: write_file on upstream fs (write call)" in question, question
    assert "writing a file needs a yes from the user" in question
    assert "a private note" not in question, "the catalog's redacted argument stays hidden"


async def test_the_user_declines_in_band(tollgate, node_bin_dir, setup):
    user = User(types.ElicitResult(action="decline"))
    async with agent(tollgate, node_bin_dir, setup, user) as (session, _, _):
        path = setup["served"] / "declined.txt"
        refused = await session.call_tool("write_file", {"path": str(path), "content": "no"})
        assert refused.is_error
        assert "declined at the agent" in text(refused), text(refused)
        assert not path.exists()
        # Reads are not held.
        listed = await session.call_tool("list_directory", {"path": str(setup["served"])})
        assert not listed.is_error, text(listed)
    assert len(user.asked) == 1


async def test_without_elicitation_and_without_approvers_the_call_is_denied(tollgate, node_bin_dir, setup):
    async with agent(tollgate, node_bin_dir, setup) as (session, _, _):
        started = time.monotonic()
        refused = await session.call_tool("write_file", {"path": str(setup["served"] / "x.txt"), "content": "x"})
        assert time.monotonic() - started < 5, "denied at once, not left waiting"
        assert refused.is_error
        assert "did not declare elicitation" in text(refused), text(refused)


def pending(admin: str, token: str) -> list[dict]:
    request = urllib.request.Request(f"{admin}/approvals?pending", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)["approvals"]


async def test_without_elicitation_an_approver_answers_out_of_band(tollgate, node_bin_dir, setup):
    async with agent(tollgate, node_bin_dir, setup, approvers=True) as (session, admin, approver):
        token = open(approver).read().strip()
        path = setup["served"] / "out-of-band.txt"
        result: dict = {}

        async def write():
            result["done"] = await session.call_tool("write_file", {"path": str(path), "content": "ok"})

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(write)
            deadline = time.monotonic() + 10
            waiting = []
            while not waiting and time.monotonic() < deadline:
                await anyio.sleep(0.05)
                waiting = await anyio.to_thread.run_sync(pending, admin, token)
            assert waiting, "the call waits for an approver"
            assert waiting[0]["tool"] == "write_file"
            assert waiting[0]["arguments"]["content"] == "[redacted]"
            approved = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [tollgate, "approvals", "approve", waiting[0]["id"], "--admin", admin,
                     "--token-file", approver, "--reason", "checked"],
                    capture_output=True, text=True,
                )
            )
            assert approved.returncode == 0, approved.stderr
        assert not result["done"].is_error, text(result["done"])
        assert path.read_text() == "ok"
