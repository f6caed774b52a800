"""The HTTP front under a crowd, on loopback: 20,000 idle connections and 500 clients that
dribble their headers or bodies, and a new agent must still be served within a second, with
Tollgate's memory bounded. Every loop here is bounded in count and time."""

import contextlib
import os
import socket
import subprocess
import sys
import time

import anyio
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from conftest import ROOT, free_port

pytestmark = pytest.mark.anyio

IDLE = 20_000
SLOW = 500
HERE = os.path.dirname(os.path.abspath(__file__))


def fixture_bin(tollgate: str) -> str:
    return os.path.join(os.path.dirname(tollgate), "tollgate-fixture")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def connect(port: int) -> socket.socket | None:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        return s
    except OSError:
        s.close()
        return None


@contextlib.contextmanager
def tollgate_on(tollgate, tmp_path, extra=""):
    port = free_port()
    config = tmp_path / "tollgate.toml"
    config.write_text(f"""
[front.http]
listen = "127.0.0.1:{port}"
{extra}
[policy]
mode = "allow-all"
[[upstream]]
name = "fx"
command = "{fixture_bin(tollgate)}"
args = ["stdio", "fx"]
""")
    process = subprocess.Popen(
        [tollgate, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "log", "w")
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            s = connect(port)
            if s:
                s.close()
                break
            time.sleep(0.05)
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=20)


def raw_initialize(port: int) -> float:
    """Seconds a fresh client takes to open a connection and get an answer to `initialize`."""
    body = (
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
        b'"capabilities":{},"clientInfo":{"name":"late","version":"1"}}}'
    )
    request = (
        b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        answer = b""
        while b"protocolVersion" not in answer:
            chunk = s.recv(65536)
            assert chunk, f"closed before answering: {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return time.monotonic() - started


async def test_a_crowd_of_idle_and_slow_clients_does_not_keep_a_new_agent_out(tollgate, tmp_path):
    helpers: list[subprocess.Popen] = []
    with tollgate_on(tollgate, tmp_path) as (process, port):
        before = rss_kib(process.pid)
        try:
            # Each helper is a process of its own, each under its own descriptor limit.
            plan = [(SLOW // 2, "slow-headers"), (SLOW // 2, "slow-body")] + [(IDLE // 4, "idle")] * 4
            started = time.monotonic()
            for count, mode in plan:
                helpers.append(
                    subprocess.Popen(
                        [sys.executable, os.path.join(HERE, "crowd.py"), str(port), str(count), mode],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    )
                )
            opened = sum(int(h.stdout.readline() or 0) for h in helpers)
            took_to_open = time.monotonic() - started
            assert opened > (IDLE + SLOW) // 2, f"only {opened} connections opened"

            took = raw_initialize(port)
            assert took < 1.0, f"a new agent waited {took:.2f} s behind {opened} connections"

            # A whole session through the Python SDK works as well, and calls a tool.
            with anyio.fail_after(5):
                async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (r, w):
                    async with ClientSession(r, w) as agent:
                        await agent.initialize()
                        echoed = await agent.call_tool("echo", {"text": "through the crowd"})
                        assert echoed.content[0].text == "through the crowd"

            grown = rss_kib(process.pid) - before
            assert grown < 64 * 1024, f"RSS grew by {grown} KiB with {opened} connections opened"
            assert process.poll() is None, "Tollgate is still running"
            print(
                f"{opened} connections opened in {took_to_open:.1f} s; "
                f"a new agent served in {took * 1000:.0f} ms; RSS +{grown} KiB"
            )
        finally:
            for helper in helpers:
                helper.stdin.close()
                helper.wait(timeout=30)


async def test_slow_headers_slow_bodies_and_idle_connections_are_closed_in_time(tollgate, tmp_path):
    extra = "header_timeout_ms = 500\nbody_timeout_ms = 500\nidle_timeout_ms = 500\n"
    with tollgate_on(tollgate, tmp_path, extra) as (_, port):
        headers = connect(port)
        headers.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        body = connect(port)
        body.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: 1000\r\n\r\n{"
        )
        idle = connect(port)
        for s in (headers, body, idle):
            s.settimeout(5)
        started = time.monotonic()
        # Each is closed by Tollgate well before the 5 s the test waits; the body is answered 408.
        cut = headers.recv(65536)
        assert cut == b"" or cut.startswith(b"HTTP/1.1 408"), cut[:200]
        got = b""
        while chunk := body.recv(65536):
            got += chunk
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert idle.recv(65536) == b""
        assert time.monotonic() - started < 4
        for s in (headers, body, idle):
            s.close()


async def test_a_full_front_answers_503_at_once(tollgate, tmp_path):
    extra = "max_connections = 4\nmax_connections_per_peer = 4\n"
    with tollgate_on(tollgate, tmp_path, extra) as (_, port):
        # Four requests whose bodies are still arriving hold their connections busy; a fifth
        # connection gets 503 at once, not a hang. `100 Continue` says each request is in
        # Tollgate's hands, reading its body.
        busy = []
        for _ in range(4):
            s = connect(port)
            s.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n"
            )
            s.settimeout(5)
            assert s.recv(65536).startswith(b"HTTP/1.1 100"), "the body is being read"
            s.sendall(b"{")
            busy.append(s)
        late = connect(port)
        late.settimeout(2)
        answer = late.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        for s in [*busy, late]:
            s.close()
