"""Shared setup for the Python-agent tests: where the tollgate binary and the npm peers are."""

import os
import pathlib
import shutil

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tollgate() -> str:
    path = os.environ.get("TOLLGATE_BIN") or str(ROOT / "target" / "debug" / "tollgate")
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
