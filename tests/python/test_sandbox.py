"""The kernel boundary alone: `tollgate run --sandbox grant` with a pack that binds no path at
all, so that Tollgate's own binding sees nothing and every refusal here is Landlock's. The
real `server-filesystem` is confined to the grant's folders; a symlink out of them, a path
outside them and Tollgate's own state inside them are refused by the kernel; without egress in
the grant, a server cannot open a TCP connection."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import env_with_node, issue_grant, plain_pack

SECRET = "the private text\n"
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def world(tmp_path):
    served = tmp_path / "served"
    (served / "granted").mkdir(parents=True)
    (served / "private").mkdir()
    (served / "granted" / "notes.txt").write_text("in the grant\n")
    (served / "private" / "secret.txt").write_text(SECRET)
    os.symlink("../private/secret.txt", served / "granted" / "link")
    # A pack that binds nothing: every call the grant's classes allow goes, whatever it names.
    pack = plain_pack(tmp_path)
    return {"tmp": tmp_path, "served": served, "pack": pack}


def grant(tollgate, state, *args) -> str:
    return issue_grant(tollgate, state, *args)


def calls(tollgate, env, state, pack, server, requests, sandbox=("--sandbox", "grant")):
    """Runs `tollgate run … -- server`, sends `requests` (name, arguments) as tools/call, and
    returns each answer's text by request, and Tollgate's log."""
    args = [tollgate, "run", "--pack", str(pack), "--state", str(state), *sandbox, "--", *server]
    lines = [
        {"jsonrpc": "2.0", "id": 0, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ] + [
        {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
        for n, (name, arguments) in enumerate(requests, start=1)
    ]
    # Stdin stays open until every answer is in: the session lasts as long as the agent.
    process = subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    process.stdin.write("".join(json.dumps(l) + "\n" for l in lines))
    process.stdin.flush()
    answers = {}
    while len(answers) < len(requests):
        line = process.stdout.readline()
        if not line:
            break
        message = json.loads(line)
        if message.get("id"):
            result = message.get("result") or {}
            answers[message["id"]] = "".join(c.get("text", "") for c in result.get("content", [])) or json.dumps(message)
    process.stdin.close()
    process.wait(timeout=30)
    return answers, process.stderr.read()


def test_the_kernel_alone_keeps_the_server_in_the_grant(tollgate, filesystem, node_bin_dir, world):
    served, state = world["served"], world["tmp"] / "state"
    env = env_with_node(node_bin_dir)
    env["TOLLGATE_GRANT"] = grant(
        tollgate, state, "--action", "read", "--action", "write", "--resource", f"path:{served}/granted/**"
    )
    requests = [
        ("read_text_file", {"path": f"{served}/granted/notes.txt"}),
        ("read_text_file", {"path": f"{served}/granted/link"}),
        ("read_text_file", {"path": f"{served}/private/secret.txt"}),
        ("write_file", {"path": f"{served}/granted/link", "content": "overwritten"}),
        ("list_directory", {"path": f"{served}/private"}),
        ("write_file", {"path": f"{served}/private/new.txt", "content": "x"}),
    ]
    answers, log = calls(tollgate, env, state, world["pack"], [filesystem, str(served)], requests)
    assert answers[1] == "in the grant\n", answers
    for n in (2, 3, 4, 5, 6):
        assert SECRET not in answers[n] and "EACCES" in answers[n], (n, answers[n])
    assert (served / "private" / "secret.txt").read_text() == SECRET
    assert not (served / "private" / "new.txt").exists()
    assert "sandbox: Landlock FullyEnforced" in log, log

    # The same calls without the sandbox reach what the pack let through: the kernel was the
    # only thing in the way.
    unconfined, _ = calls(tollgate, env, state, world["pack"], [filesystem, str(served)], requests[1:2], sandbox=())
    assert unconfined[1] == SECRET


def test_tollgate_state_inside_the_grant_is_carved_out(tollgate, filesystem, node_bin_dir, world):
    served = world["served"]
    state = served / "granted" / "tg-state"
    (served / "granted" / "drafts").mkdir()
    env = env_with_node(node_bin_dir)
    env["TOLLGATE_GRANT"] = grant(
        tollgate, state, "--action", "read", "--action", "write", "--resource", f"path:{served}/granted/**"
    )
    requests = [
        ("read_text_file", {"path": f"{state}/grant-signing.key"}),
        ("write_file", {"path": f"{state}/revoked", "content": "nothing"}),
        ("write_file", {"path": f"{served}/granted/drafts/new.txt", "content": "written"}),
        ("read_text_file", {"path": f"{served}/granted/notes.txt"}),
        # The folder that holds the state is opened entry by entry, so nothing new is made
        # in it directly (ARCHITECTURE.md, "The filesystem boundary").
        ("write_file", {"path": f"{served}/granted/new.txt", "content": "x"}),
    ]
    answers, log = calls(tollgate, env, state, world["pack"], [filesystem, str(served / "granted")], requests)
    key = (state / "grant-signing.key").read_text().strip()
    assert key not in answers[1] and "EACCES" in answers[1], answers[1]
    assert "EACCES" in answers[2], answers[2]
    assert (served / "granted" / "drafts" / "new.txt").exists(), (answers, log[-3000:])
    assert (served / "granted" / "drafts" / "new.txt").read_text() == "written", answers[3]
    assert answers[4] == "in the grant\n", answers[4]
    assert "EACCES" in answers[5], answers[5]


def test_no_tcp_without_egress_in_the_grant(tollgate, world):
    state = world["tmp"] / "state"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    server = [sys.executable, os.path.join(HERE, "net_probe.py")]
    try:
        env = dict(os.environ)
        env["TOLLGATE_GRANT"] = grant(tollgate, state, "--action", "read", "--resource", f"path:{HERE}/**")
        answers, log = calls(tollgate, env, state, world["pack"], server, [("connect", {"port": port})])
        assert answers[1].startswith("refused:"), (answers, log)
        env["TOLLGATE_GRANT"] = grant(
            tollgate, state, "--action", "read", "--action", "egress", "--resource", f"path:{HERE}/**"
        )
        answers, log = calls(tollgate, env, state, world["pack"], server, [("connect", {"port": port})])
        assert answers[1] == "connected", (answers, log)
    finally:
        listener.close()
