"""The filesystem boundary, tried as an attacker would: the Python `mcp` SDK as the agent,
Tollgate with the filesystem-sandbox pack, the real `@modelcontextprotocol/server-filesystem`
behind it. The server may touch the whole served folder; the grant names only `granted/`, so
every refusal here is Tollgate's.

Each test is one way through that worked before the boundary was closed: a symlink inside the
grant that leads out of it, `~`, spellings of `.env` the secret rule did not match, replacing
`.git` by moves, and Tollgate's own signing key in the folder the agent works in."""

import contextlib
import os
import stat
import subprocess

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import ROOT, env_with_node

pytestmark = pytest.mark.anyio

PACK = ROOT / "policies" / "filesystem-sandbox"
SECRET = "the private text\n"


def text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def world(tmp_path):
    served = tmp_path / "served"
    granted = served / "granted"
    private = served / "private"
    granted.mkdir(parents=True)
    private.mkdir()
    (granted / "notes.txt").write_text("in the grant\n")
    (private / "secret.txt").write_text(SECRET)
    os.symlink(private / "secret.txt", granted / "file-link")
    os.symlink("../private", granted / "dir-link")
    os.symlink(private / "new.txt", granted / "dangling")
    return {"tmp": tmp_path, "served": served, "granted": granted, "private": private,
            "state": tmp_path / "state"}


def issue(tollgate, state, *args, env=None) -> str:
    command = [tollgate, "grant", "issue", "--purpose", "maintenance", *args]
    if state is not None:
        command[3:3] = ["--state", str(state)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def editor(tollgate, state, resource) -> str:
    return issue(tollgate, state, "--action", "read", "--action", "write", "--resource", f"path:{resource}/**")


@contextlib.asynccontextmanager
async def agent(tollgate, filesystem, node_bin_dir, served, token, state=None, env=None, cwd=None):
    env = dict(env or env_with_node(node_bin_dir))
    env["PATH"] = node_bin_dir + os.pathsep + env.get("PATH", "")
    env["TOLLGATE_GRANT"] = token
    args = ["run", "--pack", str(PACK)]
    if state is not None:
        args += ["--state", str(state)]
    params = StdioServerParameters(
        command=tollgate, args=[*args, "--", filesystem, str(served)], env=env, cwd=cwd
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def test_symlinks_inside_the_grant_do_not_lead_out_of_it(tollgate, filesystem, node_bin_dir, world):
    granted, private = world["granted"], world["private"]
    token = editor(tollgate, world["state"], granted)
    async with agent(tollgate, filesystem, node_bin_dir, world["served"], token, world["state"]) as fs:
        plain = await fs.call_tool("read_text_file", {"path": str(granted / "notes.txt")})
        assert not plain.is_error and text(plain) == "in the grant\n", text(plain)

        for path in (granted / "file-link", granted / "dir-link" / "secret.txt"):
            read = await fs.call_tool("read_text_file", {"path": str(path)})
            assert read.is_error, f"{path} was read: {text(read)}"
            assert f"path:{private}/secret.txt is outside grant" in text(read), text(read)
            assert SECRET not in text(read)

        many = await fs.call_tool(
            "read_multiple_files", {"paths": [str(granted / "notes.txt"), str(granted / "file-link")]}
        )
        assert many.is_error and SECRET not in text(many), text(many)

        # Through a link to a file, a folder, and one whose target does not exist yet.
        for path in (granted / "file-link", granted / "dir-link" / "secret.txt", granted / "dangling"):
            wrote = await fs.call_tool("write_file", {"path": str(path), "content": "overwritten"})
            assert wrote.is_error and "outside grant" in text(wrote), text(wrote)
        moved = await fs.call_tool(
            "move_file", {"source": str(granted / "notes.txt"), "destination": str(granted / "dir-link" / "x")}
        )
        assert moved.is_error and "outside grant" in text(moved), text(moved)
    assert (private / "secret.txt").read_text() == SECRET
    assert not (private / "new.txt").exists()
    assert not (private / "x").exists()


async def test_a_link_that_stays_inside_the_grant_still_works(tollgate, filesystem, node_bin_dir, world):
    granted = world["granted"]
    os.symlink("notes.txt", granted / "inner-link")
    token = editor(tollgate, world["state"], granted)
    async with agent(tollgate, filesystem, node_bin_dir, world["served"], token, world["state"]) as fs:
        read = await fs.call_tool("read_text_file", {"path": str(granted / "inner-link")})
        assert not read.is_error and text(read) == "in the grant\n", text(read)


async def test_home_is_refused_not_bound_as_a_folder_named_tilde(tollgate, filesystem, node_bin_dir, world):
    # A grant on the served folder: `~` bound lexically under it would have been "inside".
    token = editor(tollgate, world["state"], world["served"])
    async with agent(tollgate, filesystem, node_bin_dir, world["served"], token, world["state"]) as fs:
        for path in ("~", "~/.ssh/id_ed25519", "~/notes.txt"):
            called = await fs.call_tool("read_text_file", {"path": path})
            assert called.is_error, f"{path}: {text(called)}"
            assert "starting with `~`" in text(called), text(called)


async def test_every_spelling_of_a_secret_is_refused(tollgate, filesystem, node_bin_dir, world):
    granted = world["granted"]
    (granted / ".env").mkdir()
    (granted / ".env" / "inner").write_text("K=inner\n")
    (granted / ".env.local").write_text("K=local\n")
    (granted / ".ssh").mkdir()
    (granted / ".ssh" / "id_ed25519").write_text("KEY\n")
    token = editor(tollgate, world["state"], granted)
    async with agent(tollgate, filesystem, node_bin_dir, world["served"], token, world["state"]) as fs:
        attempts = [
            ("list_directory", {"path": f"{granted}/.env/"}),
            ("list_directory", {"path": f"{granted}/.env/."}),
            ("read_text_file", {"path": f"{granted}/.env/inner"}),
            ("read_text_file", {"path": f"{granted}/.env.local"}),
            ("read_text_file", {"path": f"{granted}/x/../.ssh/id_ed25519"}),
            ("read_multiple_files", {"paths": [f"{granted}/notes.txt", f"{granted}/.env.local"]}),
            ("write_file", {"path": f"{granted}/.env", "content": "K=V"}),
        ]
        for tool, arguments in attempts:
            called = await fs.call_tool(tool, arguments)
            assert called.is_error, f"{tool} {arguments}: {text(called)}"
            assert "secrets" in text(called), text(called)
            assert "K=" not in text(called) and "KEY" not in text(called)


async def test_git_cannot_be_replaced_by_two_moves(tollgate, filesystem, node_bin_dir, world):
    granted = world["granted"]
    (granted / ".git" / "hooks").mkdir(parents=True)
    (granted / "evil" / "hooks").mkdir(parents=True)
    (granted / "evil" / "hooks" / "pre-commit").write_text("#!/bin/sh\necho owned\n")
    token = editor(tollgate, world["state"], granted)
    async with agent(tollgate, filesystem, node_bin_dir, world["served"], token, world["state"]) as fs:
        away = await fs.call_tool("move_file", {"source": f"{granted}/.git", "destination": f"{granted}/old"})
        assert away.is_error and ".git" in text(away), text(away)
        into = await fs.call_tool("move_file", {"source": f"{granted}/evil", "destination": f"{granted}/.git"})
        assert into.is_error and ".git" in text(into), text(into)
    assert (granted / ".git" / "hooks").is_dir()
    assert not (granted / ".git" / "hooks" / "pre-commit").exists()


async def test_the_signing_key_is_out_of_reach(tollgate, filesystem, node_bin_dir, world):
    served = world["served"]
    home = world["tmp"] / "home"
    home.mkdir()
    env = env_with_node(node_bin_dir)
    env.pop("XDG_STATE_HOME", None)
    env.pop("TOLLGATE_STATE", None)
    env["HOME"] = str(home)

    # With no state folder named, the key goes to the per-user state folder, owner-only, never
    # into the folder the agent works in.
    token = subprocess.run(
        [tollgate, "grant", "issue", "--purpose", "maintenance", "--action", "read",
         "--resource", f"path:{served}/**"],
        check=True, capture_output=True, text=True, env=env, cwd=served,
    ).stdout.strip()
    state = home / ".local" / "state" / "tollgate"
    assert (state / "grant-signing.key").exists()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / ".local" / "state").stat().st_mode) == 0o700
    assert not (served / ".tollgate").exists()

    # An operator who puts the state folder inside the agent's folder anyway: the grant covers
    # it, the pack allows reads in the grant, and Tollgate still refuses.
    inside = served / "granted" / "tg-state"
    exposed = editor(tollgate, inside, served)
    os.symlink(inside, served / "granted" / "innocent")
    async with agent(tollgate, filesystem, node_bin_dir, served, exposed, inside, cwd=served) as fs:
        for path in (inside / "grant-signing.key", served / "granted" / "innocent" / "grant-signing.key"):
            read = await fs.call_tool("read_text_file", {"path": str(path)})
            assert read.is_error and "Tollgate's own files" in text(read), text(read)
        listed = await fs.call_tool("list_directory", {"path": str(inside)})
        assert listed.is_error and "Tollgate's own files" in text(listed), text(listed)
        # Moving the folder that holds it would take the key along.
        moved = await fs.call_tool(
            "move_file", {"source": str(served / "granted"), "destination": str(served / "elsewhere")}
        )
        assert moved.is_error and "holds Tollgate's own files" in text(moved), text(moved)
        fine = await fs.call_tool("read_text_file", {"path": str(served / "granted" / "notes.txt")})
        assert not fine.is_error, text(fine)
    assert (inside / "grant-signing.key").exists()
