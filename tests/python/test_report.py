"""The review report as a reviewer's browser shows it: `tollgate policy report` on a shipped
pack, opened in headless Chromium, has its matrix with a row for every tool of the pack's
tests and a cell for every purpose, each naming the policies that decide it."""

import pathlib
import shutil
import subprocess
import tomllib
from html.parser import HTMLParser

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


class Matrix(HTMLParser):
    """Rows of the matrix table: tool → {purpose: text of its cell}."""

    def __init__(self) -> None:
        super().__init__()
        self.in_matrix = False
        self.rows: dict[str, dict[str, str]] = {}
        self.tool: str | None = None
        self.purpose: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.in_matrix = a.get("id") == "matrix-table"
        elif self.in_matrix and tag == "tr":
            self.tool = a.get("data-tool")
            if self.tool:
                self.rows[self.tool] = {}
        elif self.in_matrix and tag == "td" and self.tool and "data-purpose" in a:
            self.purpose = a["data-purpose"]
            self.rows[self.tool][self.purpose] = ""

    def handle_endtag(self, tag):
        if tag == "td":
            self.purpose = None
        elif tag == "table":
            self.in_matrix = False

    def handle_data(self, data):
        if self.tool and self.purpose:
            self.rows[self.tool][self.purpose] += data


def chromium_dom(page: pathlib.Path, profile: pathlib.Path) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


@pytest.mark.parametrize("pack", ["payments", "filesystem-sandbox"])
def test_the_report_shows_every_tool_and_purpose_in_chromium(tollgate, tmp_path, pack):
    page = tmp_path / "report.html"
    subprocess.run(
        [tollgate, "policy", "report", str(ROOT / "policies" / pack), "--out", str(page)],
        check=True,
        capture_output=True,
    )
    dom = chromium_dom(page, tmp_path / "profile")
    matrix = Matrix()
    matrix.feed(dom)

    manifest = tomllib.loads((ROOT / "policies" / pack / "pack.toml").read_text())
    tools = set()
    for cases in (ROOT / "policies" / pack / "tests").glob("*.toml"):
        spec = tomllib.loads(cases.read_text())
        called = {case["tool"] for case in spec.get("case", [])}
        tools |= {tool["name"] for tool in spec.get("tool", []) if tool["name"] in called}
    assert tools, "the pack's tests declare tools"
    assert set(matrix.rows) == tools
    for tool, cells in matrix.rows.items():
        assert set(cells) == set(manifest["purposes"]), tool
        for purpose, text in cells.items():
            assert text.startswith(("allowed", "denied", "needs a person's approval")), (tool, purpose, text)
            assert "by " in text, (tool, purpose, text)
    assert "Policy tests" in dom and "Catalog" in dom


def test_the_payments_matrix_says_what_its_policies_decide(tollgate, tmp_path):
    page = tmp_path / "report.html"
    subprocess.run(
        [tollgate, "policy", "report", str(ROOT / "policies" / "payments"), "--out", str(page)],
        check=True,
        capture_output=True,
    )
    matrix = Matrix()
    matrix.feed(chromium_dom(page, tmp_path / "profile"))
    for purpose, text in matrix.rows["payments.delete_customer"].items():
        assert text.startswith("denied") and "pay-no-delete" in text, (purpose, text)
    for purpose, text in matrix.rows["payments.create_charge"].items():
        assert text.startswith("needs a person's approval"), (purpose, text)
