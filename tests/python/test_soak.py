"""Memory under sustained HTTP calls, through the guard with its trail: sessions are opened,
used and ended in turn, and Tollgate's RSS must level off, not grow with the number of calls.
`TOLLGATE_SOAK_CALLS` sets the size (CI runs 40,000; BENCHMARKS.md gives a 200,000-call run).
Loopback only; every loop is bounded."""

import http.client
import json
import os
import subprocess
import threading
import time

from test_http_limits import rss_kib, connect
from conftest import fixture_config, free_port, issue_grant

CALLS = int(os.environ.get("TOLLGATE_SOAK_CALLS", "40000"))
SESSIONS = 32
PER_SESSION = 250


def session(port: int, token: str, calls: int):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
    }
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "s", "version": "1"}}}
    connection.request("POST", "/mcp", json.dumps(init), headers)
    response = connection.getresponse()
    sid = response.getheader("mcp-session-id")
    response.read()
    headers = dict(headers, **{"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
    connection.request("POST", "/mcp", json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), headers)
    connection.getresponse().read()
    for n in range(1, calls + 1):
        call = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x" * 200}}}
        connection.request("POST", "/mcp", json.dumps(call), headers)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200 and b"xxxx" in body, body[:300]
    connection.request("DELETE", "/mcp", headers=headers)
    connection.getresponse().read()
    connection.close()


def test_memory_levels_off_under_sustained_calls(tollgate, tmp_path):
    state = tmp_path / "state"
    token = issue_grant(tollgate, state, "--action", "read", "--ttl", "2h")
    port = free_port()
    config = fixture_config(tollgate, tmp_path, state, f'[front.http]\nlisten = "127.0.0.1:{port}"')
    process = subprocess.Popen([tollgate, "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while (s := connect(port)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        s.close()
        rounds = max(2, CALLS // (SESSIONS * PER_SESSION))
        samples = []
        started = time.monotonic()
        for _ in range(rounds):
            workers = [threading.Thread(target=session, args=(port, token, PER_SESSION)) for _ in range(SESSIONS)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=600)
            samples.append(rss_kib(process.pid))
        took = time.monotonic() - started
        time.sleep(2)
        ended = rss_kib(process.pid)
        calls = rounds * SESSIONS * PER_SESSION
        # The first tenth of the calls (at least the first round) is the baseline.
        base = samples[max(0, rounds // 10 - 1)]
        peak = max(samples)
        print(
            f"{calls} calls in {took:.0f} s ({calls / took:.0f}/s): RSS {samples[0]} KiB after the first round, "
            f"{base} KiB after a tenth, peak {peak} KiB, {samples[-1]} KiB at the end, {ended} KiB once ended"
        )
        assert samples[-1] <= base * 1.5, f"RSS grew from {base} to {samples[-1]} KiB over {calls} calls: {samples}"
        assert ended <= peak, f"RSS {ended} KiB after the sessions ended, above the peak {peak} KiB"
        assert process.poll() is None
    finally:
        process.terminate()
        process.wait(timeout=20)
