"""Shared setup for the Python-agent tests: where the tollgate binary and the npm peers are."""

import contextlib
import os
import pathlib
import shutil
import socket
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tollgate() -> str:
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    path = os.environ.get("TOLLGATE_BIN") or str(target / "debug" / "tollgate")
    if not pathlib.Path(path).exists():
        pytest.fail(f"tollgate binary not found at {path}: build it first (cargo build)")
    return path


def _peer(name: str) -> str:
    path = ROOT / "tests" / "peers" / "node_modules" / ".bin" / name
    if not path.exists():
        pytest.fail(f"{name} not installed: run `npm install --prefix tests/peers`")
    return str(path)


@pytest.fixture(scope="session")
def tollgate() -> str:
    return _tollgate()


@pytest.fixture(scope="session")
def everything() -> str:
    return _peer("mcp-server-everything")


@pytest.fixture(scope="session")
def filesystem() -> str:
    return _peer("mcp-server-filesystem")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def node_bin_dir() -> str:
    # The npm peers run on the node these tests installed next to them when there is one.
    local = ROOT / "tests" / "peers" / "node_modules" / "node" / "bin"
    return str(local) if local.exists() else str(pathlib.Path(shutil.which("node") or "node").parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_with_node(node_bin_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = node_bin_dir + os.pathsep + env.get("PATH", "")
    return env


@contextlib.contextmanager
def serve_http(tollgate, config_text, tmp_path, node_bin_dir):
    """Runs `tollgate run --config` with `config_text`, whose `{port}` is filled with a free
    port, until the block ends; yields the process and the MCP URL. The exit must be clean."""
    port = free_port()
    config = tmp_path / "tollgate.toml"
    config.write_text(config_text.replace("{port}", str(port)))
    process = subprocess.Popen(
        [tollgate, "run", "--config", str(config)],
        env=env_with_node(node_bin_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("tollgate did not start listening")
        yield process, f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        process.wait(timeout=15)
    assert process.returncode == 0, process.stderr.read().decode() if process.stderr else ""


def issue_grant(tollgate: str, state, *args: str, purpose: str = "maintenance") -> str:
    """A grant token from `tollgate grant issue` in state folder `state`."""
    return subprocess.run(
        [tollgate, "grant", "issue", "--state", str(state), "--purpose", purpose, *args],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def plain_pack(tmp_path) -> pathlib.Path:
    """A pack that classes every tool `read` (annotations may raise it) and permits any call
    of a session with a grant, with none of the default pack's rate limits: for tests whose
    subject is not policy."""
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "pack.toml").write_text('purposes = ["maintenance"]\n[[tool]]\ntool = "*"\nclass = "read"\n')
    (pack / "policies.cedar").write_text(
        '@id("anything") permit (principal, action, resource) when { context.grant.present };\n'
    )
    return pack


def fixture_config(tollgate: str, tmp_path, state, front: str, upstream_extra: str = "") -> pathlib.Path:
    """A config file: `front` (a `[front…]` table), the state folder, `plain_pack`, and the
    Rust fixture server as a stdio upstream named `fx`."""
    fixture = pathlib.Path(tollgate).with_name("tollgate-fixture")
    config = tmp_path / "tollgate.toml"
    config.write_text(f"""
{front}
[grants]
state_dir = "{state}"
[policy]
pack = "{plain_pack(tmp_path)}"
[[upstream]]
name = "fx"
command = "{fixture}"
args = ["stdio", "fx"]
{upstream_extra}
""")
    return config
