"""Several Tollgate processes on one state folder, as a user with several wrapped servers has:
each writes a chain of its own in the one trail folder, the keys they make at once are one
key, and `tollgate audit verify` finds every chain intact."""

import json
import os
import subprocess
import threading

import pytest

from conftest import fixture_config, issue_grant

CALLS = 1000


def run_agent(tollgate: str, config: str, token: str, results: list, index: int):
    """One stdio agent: initialize, then CALLS echo calls written at once; every answer read."""
    env = dict(os.environ, TOLLGATE_GRANT=token)
    process = subprocess.Popen(
        [tollgate, "run", "--config", config],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
    )
    lines = [
        {"jsonrpc": "2.0", "id": 0, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "a", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ] + [
        {"jsonrpc": "2.0", "id": n, "method": "tools/call",
         "params": {"name": "echo", "arguments": {"text": f"{index}-{n}"}}}
        for n in range(1, CALLS + 1)
    ]
    writer = threading.Thread(
        target=lambda: (process.stdin.write("".join(json.dumps(l) + "\n" for l in lines).encode()), process.stdin.flush())
    )
    writer.start()
    answered = ok = 0
    while answered < CALLS + 1:
        line = process.stdout.readline()
        assert line, f"agent {index}: Tollgate closed after {answered} answers"
        message = json.loads(line)
        if "id" in message and "method" not in message:
            answered += 1
            result = message.get("result") or {}
            ok += result.get("content", [{}])[0].get("text") == f"{index}-{message['id']}"
    writer.join()
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    results[index] = ok


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_on_one_state_folder_each_keep_an_intact_chain(tollgate, tmp_path, processes):
    state = tmp_path / "state"
    token = issue_grant(tollgate, state, "--action", "read")
    config = fixture_config(
        tollgate, tmp_path, state, "[front]\nstdio = true", 'credential = { mode = "mint", audience = "fx" }'
    )
    results = [0] * processes
    agents = [
        threading.Thread(target=run_agent, args=(tollgate, str(config), token, results, i))
        for i in range(processes)
    ]
    for agent in agents:
        agent.start()
    for agent in agents:
        agent.join(timeout=300)
    assert results == [CALLS] * processes, results

    trail = state / "audit"
    files = sorted(p.name for p in trail.glob("audit-*.jsonl"))
    assert len(files) >= processes, files
    verified = subprocess.run(
        [tollgate, "audit", "verify", str(trail), "--state", str(state)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the trail is intact" in verified.stdout
    assert f"in {processes} chains" in verified.stdout, verified.stdout
    decisions = sum(
        1 for f in trail.glob("audit-*.jsonl") for l in f.read_text().rstrip("\0").splitlines()
        if json.loads(l).get("kind") == "decision"
    )
    assert decisions == processes * CALLS, decisions
    # One audit key and one access keyring, made once though every process started at once.
    assert len(list(state.glob("audit-signing*.key"))) == 1
    manifest = json.loads((state / "access" / "keyring.json").read_text()) if (state / "access" / "keyring.json").exists() else None
    if manifest is not None:
        current = [k for k in manifest["keys"] if k["state"] == "current"]
        assert len(current) == len({k["path"] for k in current}), manifest
