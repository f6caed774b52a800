"""The Python `mcp` SDK as the agent, with the npm reference servers behind Tollgate, over
stdio (`tollgate run -- <server>`) and streamable HTTP."""

import contextlib
import time

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from conftest import env_with_node, serve_http

pytestmark = pytest.mark.anyio


class Recorder:
    """Answers sampling and elicitation like a human-in-the-loop client and records them."""

    def __init__(self) -> None:
        self.sampling: list[types.CreateMessageRequestParams] = []
        self.elicitations: list[types.ElicitRequestParams] = []

    async def sampling_callback(self, ctx, params):
        self.sampling.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="a sampled answer from the agent"),
            model="test-model",
            stop_reason="endTurn",
        )

    async def elicitation_callback(self, ctx, params):
        self.elicitations.append(params)
        return types.ElicitResult(action="accept", content={"color": "blue", "confirm": True})


@contextlib.asynccontextmanager
async def stdio_session(tollgate, server_args, node_bin_dir, recorder=None):
    recorder = recorder or Recorder()
    params = StdioServerParameters(
        command=tollgate, args=["run", "--allow-all", "--", *server_args], env=env_with_node(node_bin_dir)
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(
            read,
            write,
            sampling_callback=recorder.sampling_callback,
            elicitation_callback=recorder.elicitation_callback,
        ) as session:
            await session.initialize()
            yield session


def text(result) -> str:
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def test_list_and_call_over_stdio(tollgate, everything, node_bin_dir):
    async with stdio_session(tollgate, [everything, "stdio"], node_bin_dir) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"echo", "get-sum", "trigger-sampling-request"} <= tools
        assert text(await session.call_tool("echo", {"message": "through tollgate"})) == "Echo: through tollgate"
        assert "42" in text(await session.call_tool("get-sum", {"a": 40, "b": 2}))


async def test_progress_is_relayed(tollgate, everything, node_bin_dir):
    seen: list[float] = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    async with stdio_session(tollgate, [everything, "stdio"], node_bin_dir) as session:
        result = await session.call_tool(
            "trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
        )
        assert not result.is_error
    assert len(seen) == 4, seen
    assert seen == sorted(seen)


async def test_sampling_and_elicitation_reach_the_agent(tollgate, everything, node_bin_dir):
    recorder = Recorder()
    async with stdio_session(tollgate, [everything, "stdio"], node_bin_dir, recorder) as session:
        sampled = await session.call_tool("trigger-sampling-request", {"prompt": "say hi", "maxTokens": 20})
        assert "a sampled answer from the agent" in text(sampled)
        elicited = await session.call_tool("trigger-elicitation-request", {})
        assert not elicited.is_error, text(elicited)
    assert len(recorder.sampling) == 1
    assert "say hi" in str(recorder.sampling[0].messages)
    assert len(recorder.elicitations) == 1


async def test_cancelled_call_leaves_the_session_working(tollgate, everything, node_bin_dir):
    async with stdio_session(tollgate, [everything, "stdio"], node_bin_dir) as session:
        started = time.monotonic()
        with anyio.move_on_after(0.5):
            await session.call_tool("trigger-long-running-operation", {"duration": 30, "steps": 30})
        assert time.monotonic() - started < 5
        assert text(await session.call_tool("echo", {"message": "after cancel"})) == "Echo: after cancel"


async def test_filesystem_server_behind_tollgate(tollgate, filesystem, node_bin_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("ship it\n")
    async with stdio_session(tollgate, [filesystem, str(tmp_path)], node_bin_dir) as session:
        tools = {t.name for t in (await session.list_tools()).tools}
        assert {"read_text_file", "write_file", "list_directory"} <= tools
        read = await session.call_tool("read_text_file", {"path": str(tmp_path / "notes.txt")})
        assert "ship it" in text(read)
        wrote = await session.call_tool("write_file", {"path": str(tmp_path / "out.txt"), "content": "done"})
        assert not wrote.is_error, text(wrote)
        assert (tmp_path / "out.txt").read_text() == "done"
        outside = await session.call_tool("read_text_file", {"path": "/etc/hostname"})
        assert outside.is_error, "the server's own sandbox still applies behind tollgate"


def tollgate_http(tollgate, everything, node_bin_dir, tmp_path):
    config = f"""
# These tests are about relaying: policy is off, by name.
[policy]
mode = "allow-all"

[front.http]
listen = "127.0.0.1:{{port}}"

[[upstream]]
name = "everything"
command = "{everything}"
args = ["stdio"]
"""
    return serve_http(tollgate, config, tmp_path, node_bin_dir)


async def test_python_agent_over_http(tollgate, everything, node_bin_dir, tmp_path):
    recorder = Recorder()
    seen: list[float] = []

    async def on_progress(progress, total, message):
        seen.append(progress)

    with tollgate_http(tollgate, everything, node_bin_dir, tmp_path) as (_, url):
        async with streamable_http_client(url) as (read, write):
            async with ClientSession(
                read,
                write,
                sampling_callback=recorder.sampling_callback,
                elicitation_callback=recorder.elicitation_callback,
            ) as session:
                await session.initialize()
                tools = {t.name for t in (await session.list_tools()).tools}
                assert "echo" in tools, "one upstream is not prefixed"
                assert text(await session.call_tool("echo", {"message": "http"})) == "Echo: http"
                await session.call_tool(
                    "trigger-long-running-operation", {"duration": 1, "steps": 2}, progress_callback=on_progress
                )
                sampled = await session.call_tool("trigger-sampling-request", {"prompt": "over http", "maxTokens": 20})
                assert "a sampled answer from the agent" in text(sampled)
                elicited = await session.call_tool("trigger-elicitation-request", {})
                assert not elicited.is_error, text(elicited)
                started = time.monotonic()
                with anyio.move_on_after(0.5):
                    await session.call_tool("trigger-long-running-operation", {"duration": 30, "steps": 30})
                assert time.monotonic() - started < 5
                assert text(await session.call_tool("echo", {"message": "after cancel"})) == "Echo: after cancel"
    assert len(seen) == 2
    assert len(recorder.sampling) == 1
    assert len(recorder.elicitations) == 1
