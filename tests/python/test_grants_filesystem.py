"""Grants and policy end to end: the Python `mcp` SDK as the agent, Tollgate deciding with the
filesystem-sandbox pack, `@modelcontextprotocol/server-filesystem` behind it.

The server is allowed the whole temporary folder; the grants name only `sandbox/` inside it,
so every denial here is Tollgate's, not the server's own check."""

import base64
import contextlib
import json
import shutil
import signal
import subprocess
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError as McpError

from conftest import ROOT, env_with_node, serve_http

pytestmark = pytest.mark.anyio

PACK = ROOT / "policies" / "filesystem-sandbox"
WRITE_TOOLS = {"write_file", "edit_file", "create_directory", "move_file"}


def text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def world(tmp_path):
    """A folder the server may touch, a sandbox inside it the grants name, a state folder."""
    served = tmp_path / "served"
    sandbox = served / "sandbox"
    sandbox.mkdir(parents=True)
    (sandbox / "notes.txt").write_text("in the sandbox\n")
    (served / "secret.txt").write_text("outside the sandbox\n")
    state = tmp_path / "state"
    return {"served": served, "sandbox": sandbox, "state": state, "tmp": tmp_path}


def grant(tollgate, state, *args) -> str:
    done = subprocess.run(
        [tollgate, "grant", "issue", "--state", str(state), *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def reader_grant(tollgate, world, *extra) -> str:
    return grant(
        tollgate,
        world["state"],
        "--purpose", "research",
        "--task", "summarise the sandbox notes",
        "--action", "read",
        "--resource", f"path:{world['sandbox']}/**",
        *extra,
    )


def write_token(world, token, name="grant") -> str:
    path = world["tmp"] / name
    path.write_text(token + "\n")
    return str(path)


@contextlib.asynccontextmanager
async def stdio_agent(tollgate, filesystem, node_bin_dir, world, grant_file=None, env_grant=None):
    env = env_with_node(node_bin_dir)
    env.pop("TOLLGATE_GRANT", None)
    args = ["run", "--pack", str(PACK), "--state", str(world["state"])]
    if grant_file:
        args += ["--grant", grant_file]
    if env_grant:
        env["TOLLGATE_GRANT"] = env_grant
    params = StdioServerParameters(
        command=tollgate, args=[*args, "--", filesystem, str(world["served"])], env=env
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def test_a_read_grant_reads_inside_and_nothing_else(tollgate, filesystem, node_bin_dir, world):
    token = reader_grant(tollgate, world)
    async with stdio_agent(tollgate, filesystem, node_bin_dir, world, grant_file=write_token(world, token)) as agent:
        listed = {t.name for t in (await agent.list_tools()).tools}
        assert "read_text_file" in listed
        assert not listed & WRITE_TOOLS, f"write tools are hidden from a read grant: {listed & WRITE_TOOLS}"

        inside = await agent.call_tool("read_text_file", {"path": str(world["sandbox"] / "notes.txt")})
        assert not inside.is_error, text(inside)
        assert text(inside) == "in the sandbox\n"

        grant_id = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["jti"]
        outside = await agent.call_tool("read_text_file", {"path": str(world["served"] / "secret.txt")})
        assert outside.is_error
        assert text(outside) == f"denied: path:{world['served']}/secret.txt is outside grant {grant_id}"

        climbing = await agent.call_tool(
            "read_text_file", {"path": f"{world['sandbox']}/../secret.txt"}
        )
        assert climbing.is_error
        assert "outside grant" in text(climbing) and "outside the sandbox" not in text(climbing)

        elsewhere = await agent.call_tool("read_text_file", {"path": "/etc/passwd"})
        assert elsewhere.is_error and "path:/etc/passwd is outside grant" in text(elsewhere)

        many = await agent.call_tool(
            "read_multiple_files",
            {"paths": [str(world["sandbox"] / "notes.txt"), str(world["served"] / "secret.txt")]},
        )
        assert many.is_error and "secret.txt is outside grant" in text(many)

        invalid = await agent.call_tool("read_text_file", {"path": 7})
        assert invalid.is_error
        assert "fail `type` at `/path`" in text(invalid), text(invalid)

        # A hidden tool is answered exactly as a tool that does not exist.
        with pytest.raises(McpError) as hidden:
            await agent.call_tool("write_file", {"path": str(world["sandbox"] / "x"), "content": "x"})
        with pytest.raises(McpError) as missing:
            await agent.call_tool("no_such_tool", {})
        assert hidden.value.error.code == missing.value.error.code
        assert hidden.value.error.message.replace("write_file", "X") == missing.value.error.message.replace(
            "no_such_tool", "X"
        )
    assert not (world["sandbox"] / "x").exists()


async def test_a_write_grant_writes_only_where_it_names(tollgate, filesystem, node_bin_dir, world):
    token = grant(
        tollgate,
        world["state"],
        "--purpose", "maintenance",
        "--action", "read",
        "--action", "write",
        "--resource", f"path:{world['sandbox']}/**",
    )
    async with stdio_agent(tollgate, filesystem, node_bin_dir, world, env_grant=token) as agent:
        listed = {t.name for t in (await agent.list_tools()).tools}
        assert {"write_file", "move_file"} <= listed
        wrote = await agent.call_tool("write_file", {"path": str(world["sandbox"] / "out.txt"), "content": "ok"})
        assert not wrote.is_error, text(wrote)
        assert (world["sandbox"] / "out.txt").read_text() == "ok"

        escaped = await agent.call_tool("write_file", {"path": str(world["served"] / "out.txt"), "content": "no"})
        assert escaped.is_error and "outside grant" in text(escaped)
        moved = await agent.call_tool(
            "move_file",
            {"source": str(world["sandbox"] / "out.txt"), "destination": str(world["served"] / "stolen.txt")},
        )
        assert moved.is_error and "stolen.txt is outside grant" in text(moved)
        secret = await agent.call_tool("write_file", {"path": str(world["sandbox"] / ".env"), "content": "K=V"})
        assert secret.is_error
        assert text(secret) == "denied: files that hold secrets (.env, .ssh, private keys) are off limits"
    assert not (world["served"] / "out.txt").exists()
    assert not (world["served"] / "stolen.txt").exists()
    assert not (world["sandbox"] / ".env").exists()


async def test_missing_expired_revoked_and_forged_grants_forward_nothing(
    tollgate, filesystem, node_bin_dir, world
):
    notes = str(world["sandbox"] / "notes.txt")

    async def refused(grant_file=None) -> str:
        async with stdio_agent(tollgate, filesystem, node_bin_dir, world, grant_file=grant_file) as agent:
            assert (await agent.list_tools()).tools == [], "a session without a valid grant sees no tools"
            with pytest.raises(McpError) as error:
                await agent.call_tool("read_text_file", {"path": notes})
            assert error.value.error.code == -32001
            return error.value.error.message

    reader_grant(tollgate, world)  # makes the state folder's key
    assert "no grant was presented" in await refused()

    short = reader_grant(tollgate, world, "--ttl", "1s")
    time.sleep(1.5)
    assert "expired at" in await refused(write_token(world, short, "short"))

    revoked = reader_grant(tollgate, world)
    subprocess.run([tollgate, "grant", "revoke", "--state", str(world["state"]), revoked], check=True)
    assert "has been revoked" in await refused(write_token(world, revoked, "revoked"))

    # Signed by another Tollgate's key.
    stranger = grant(tollgate, world["tmp"] / "other-state", "--purpose", "research", "--action", "read")
    assert "not signed by this Tollgate's key" in await refused(write_token(world, stranger, "stranger"))

    # A payload widened by hand keeps the old signature.
    header, payload, signature = reader_grant(tollgate, world).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["actions"] = ["admin", "read", "write"]
    forged = ".".join(
        [header, base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("="), signature]
    )
    assert "not signed by this Tollgate's key" in await refused(write_token(world, forged, "forged"))

    assert "malformed" in await refused(write_token(world, "not a grant", "junk"))


async def test_revoking_a_parent_stops_a_running_child_session_on_its_next_call(
    tollgate, filesystem, node_bin_dir, world
):
    parent = reader_grant(tollgate, world)
    child = subprocess.run(
        [tollgate, "grant", "narrow", "--state", str(world["state"]), "-", "--resource", f"path:{world['sandbox']}/notes.txt"],
        input=parent,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    notes = str(world["sandbox"] / "notes.txt")
    async with stdio_agent(tollgate, filesystem, node_bin_dir, world, grant_file=write_token(world, child)) as agent:
        assert not (await agent.call_tool("read_text_file", {"path": notes})).is_error
        narrowed_out = await agent.call_tool("list_directory", {"path": str(world["sandbox"])})
        assert narrowed_out.is_error and "outside grant" in text(narrowed_out)
        subprocess.run([tollgate, "grant", "revoke", "--state", str(world["state"]), parent], check=True)
        with pytest.raises(McpError) as error:
            await agent.call_tool("read_text_file", {"path": notes})
        assert "was revoked" in error.value.error.message


def test_a_grant_is_a_jws_any_jose_library_verifies(tollgate, world):
    token = reader_grant(tollgate, world, "--max-calls", "3")
    public = (world["state"] / "grant-signing.pub").read_text().strip()
    key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(public + "=="))
    claims = jwt.decode(token, key, algorithms=["EdDSA"], options={"require": ["exp", "iat", "jti"]})
    assert claims["iss"] == "tollgate"
    assert claims["actions"] == ["read"]
    assert claims["resources"] == [f"path:{world['sandbox']}/**"]
    assert claims["limits"] == [{"scope": claims["jti"], "max_calls": 3}]
    assert jwt.get_unverified_header(token)["typ"] == "tollgate-grant+jwt"
    private = (world["state"] / "grant-signing.key").stat().st_mode & 0o777
    assert private == 0o600


def tollgate_http(tollgate, filesystem, node_bin_dir, world, pack, watch):
    config = f"""
[front.http]
listen = "127.0.0.1:{{port}}"

[policy]
pack = "{pack}"
watch = {"true" if watch else "false"}

[grants]
state_dir = "{world['state']}"

[[upstream]]
name = "fs"
command = "{filesystem}"
args = ["{world['served']}"]
root = "{world['sandbox']}"
"""
    return serve_http(tollgate, config, world["tmp"], node_bin_dir)


@contextlib.asynccontextmanager
async def http_agent(url, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with create_mcp_http_client(headers=headers) as client:
        async with streamable_http_client(url, http_client=client) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


async def test_over_http_the_grant_is_a_bearer_token_and_relative_paths_use_the_root(
    tollgate, filesystem, node_bin_dir, world
):
    token = reader_grant(tollgate, world)
    with tollgate_http(tollgate, filesystem, node_bin_dir, world, PACK, watch=False) as (_, url):
        async with http_agent(url, token) as agent:
            names = {t.name for t in (await agent.list_tools()).tools}
            assert "read_text_file" in names and not names & WRITE_TOOLS
            # The upstream's root makes a relative path absolute for the grant to judge; the
            # server gets the path as the agent wrote it.
            outside = await agent.call_tool("read_text_file", {"path": "../secret.txt"})
            assert outside.is_error and "climbs out" in text(outside)
            inside = await agent.call_tool("read_text_file", {"path": str(world["sandbox"] / "notes.txt")})
            assert text(inside) == "in the sandbox\n"
        async with http_agent(url) as stranger:
            assert (await stranger.list_tools()).tools == []
            with pytest.raises(McpError) as error:
                await stranger.call_tool("read_text_file", {"path": str(world["sandbox"] / "notes.txt")})
            assert "Authorization: Bearer" in error.value.error.message


async def test_policy_reloads_on_sighup_and_on_change_and_a_broken_version_is_rejected(
    tollgate, filesystem, node_bin_dir, world
):
    pack = world["tmp"] / "pack"
    shutil.copytree(PACK, pack)
    token = reader_grant(tollgate, world)
    notes = str(world["sandbox"] / "notes.txt")
    forbid_txt = (
        '@id("no-txt")\n@reason("text files are closed for the audit")\n'
        'forbid (principal, action, resource) when { context.args has path && context.args.path like "*.txt" };\n'
    )
    with tollgate_http(tollgate, filesystem, node_bin_dir, world, pack, watch=False) as (process, url):
        async with http_agent(url, token) as agent:
            assert not (await agent.call_tool("read_text_file", {"path": notes})).is_error

            (pack / "audit.cedar").write_text(forbid_txt)
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                result = await agent.call_tool("read_text_file", {"path": notes})
                if result.is_error:
                    break
                time.sleep(0.1)
            assert text(result) == "denied: text files are closed for the audit"

            # A version that does not compile is rejected whole; the last good one decides.
            (pack / "audit.cedar").write_text("permit (principal, action, resource) when { context.nope };\n")
            (pack / "open.cedar").write_text("permit (principal, action, resource);\n")
            process.send_signal(signal.SIGHUP)
            time.sleep(1.0)
            still = await agent.call_tool("read_text_file", {"path": notes})
            assert text(still) == "denied: text files are closed for the audit"
            assert process.poll() is None

    (pack / "audit.cedar").write_text(forbid_txt)
    (pack / "open.cedar").unlink()
    with tollgate_http(tollgate, filesystem, node_bin_dir, world, pack, watch=True) as (process, url):
        async with http_agent(url, token) as agent:
            assert (await agent.call_tool("read_text_file", {"path": notes})).is_error
            (pack / "audit.cedar").unlink()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                result = await agent.call_tool("read_text_file", {"path": notes})
                if not result.is_error:
                    break
                time.sleep(0.2)
            assert text(result) == "in the sandbox\n", "a file change reloads the pack without a signal"
