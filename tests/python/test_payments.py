"""The whole path with real HTTP on every hop: the Python `mcp` SDK as the agent, Tollgate
executing the example payments API's tools (examples/payments-api/tollgate.toml, as shipped),
and `payments-api` verifying each request's token. Between Tollgate and the API sits a
recording forwarder written here, so the test holds the tokens an attacker on that hop would
see and can try them by hand."""

import base64
import hashlib
import http.server
import json
import pathlib
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import jwt
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from conftest import ROOT, free_port, serve_http

pytestmark = pytest.mark.anyio

ISSUER = "https://tollgate.local"
AUDIENCE = "https://payments.local"


def text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


class Recorder:
    """Forwards every request to `upstream` unchanged and keeps what it carried."""

    def __init__(self, upstream: str):
        self.seen: list[dict] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.seen.append({
                    "method": self.command,
                    "path": self.path,
                    "authorization": self.headers.get("Authorization"),
                    "body": body,
                })
                request = urllib.request.Request(
                    upstream + self.path, data=body if body else None, method=self.command,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        status, payload, kind = answer.status, answer.read(), answer.headers.get("Content-Type")
                except urllib.error.HTTPError as error:
                    status, payload, kind = error.code, error.read(), error.headers.get("Content-Type")
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def send(url: str, method: str, token: str | None, body: bytes = b""):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body or None, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def post_form(url: str, admin_token: str, form: dict) -> dict:
    request = urllib.request.Request(
        url, data=urllib.parse.urlencode(form).encode(), method="POST",
        headers={"Authorization": f"Bearer {admin_token}",
                 "Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def post_json(url: str, admin_token: str, value: dict) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(value).encode(), method="POST",
        headers={"Authorization": f"Bearer {admin_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return answer.status


@pytest.fixture(scope="session")
def payments_api(tollgate) -> str:
    path = pathlib.Path(tollgate).with_name("payments-api")
    if not path.exists():
        pytest.fail(f"payments-api not found at {path}: build it first (cargo build -p payments-api)")
    return str(path)


async def test_an_agent_refunds_through_tollgate_and_every_stolen_token_is_refused(
    tollgate, payments_api, node_bin_dir, tmp_path, monkeypatch
):
    admin_token = secrets.token_urlsafe(24)
    monkeypatch.setenv("TOLLGATE_ADMIN_TOKEN", admin_token)
    state = tmp_path / "state"
    grant = subprocess.run(
        [tollgate, "grant", "issue", "--state", str(state), "--purpose", "support",
         "--task", "refund ticket 881", "--agent", "py-support", "--user", "ada",
         "--action", "read", "--action", "payment", "--resource", "customer:cus_1001"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()

    api_port, admin_port = free_port(), free_port()
    recorder = Recorder(f"http://127.0.0.1:{api_port}")
    # The example config as shipped, placed on this test's ports and folders.
    example = (ROOT / "examples" / "payments-api" / "tollgate.toml").read_text()
    config = (
        example.replace('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:{port}"')
        .replace('listen = "127.0.0.1:9090"', f'listen = "127.0.0.1:{admin_port}"')
        .replace('state_dir = ".tollgate"', f'state_dir = "{state}"')
        .replace('pack = "../../policies/payments"', f'pack = "{ROOT / "policies" / "payments"}"')
        .replace('api = "http://127.0.0.1:8085"', f'api = "{recorder.url}"')
    )
    assert "{port}" in config and recorder.url in config
    admin = f"http://127.0.0.1:{admin_port}"
    api = f"http://127.0.0.1:{api_port}"
    service = subprocess.Popen(
        [payments_api, "--listen", f"127.0.0.1:{api_port}", "--tollgate", admin,
         "--issuer", ISSUER, "--audience", AUDIENCE, "--revocations-max-age-secs", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        with serve_http(tollgate, config, tmp_path, node_bin_dir) as (_, url):
            async with create_mcp_http_client(headers={"Authorization": f"Bearer {grant}"}) as client:
                async with streamable_http_client(url, http_client=client) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        customer = await session.call_tool("get_customer", {"customer_id": "cus_1001"})
                        assert not customer.is_error, text(customer)
                        assert customer.structured_content["name"] == "Ada Lovelace"
                        refund = await session.call_tool(
                            "refund", {"customer_id": "cus_1001", "amount": 25, "reason": "late"},
                            meta={"tollgate/justification": "ticket 881: parcel two weeks late"},
                        )
                        assert not refund.is_error, text(refund)
                        assert refund.structured_content["balance"] == 445

                        # What the downstream saw: a valid token scoped to exactly each call.
                        with urllib.request.urlopen(f"{api}/_audit") as answer:
                            audit = json.loads(answer.read())
                        assert [e["outcome"] for e in audit] == ["accepted", "accepted"], audit
                        get, post = recorder.seen
                        assert get["method"] == "GET" and get["path"] == "/customers/cus_1001"
                        assert post["method"] == "POST" and post["path"] == "/customers/cus_1001/refunds"
                        assert grant not in (get["authorization"], post["authorization"])
                        read_token = get["authorization"].removeprefix("Bearer ")
                        write_token = post["authorization"].removeprefix("Bearer ")

                        # Independently: PyJWT against the published JWKS.
                        jwks = jwt.PyJWKClient(f"{admin}/.well-known/jwks.json")
                        claims = jwt.decode(
                            write_token, jwks.get_signing_key_from_jwt(write_token), algorithms=["ES256"],
                            audience=AUDIENCE, issuer=f"{ISSUER}/write",
                            options={"require": ["exp", "iat", "nbf", "jti", "sub"]},
                        )
                        assert jwt.get_unverified_header(write_token)["typ"] == "at+jwt"
                        assert claims["sub"] == "ada" and claims["client_id"] == "py-support"
                        assert claims["exp"] - claims["iat"] == 30
                        (details,) = claims["authorization_details"]
                        assert details["tool"] == "refund" and details["action"] == "payment"
                        assert details["resources"] == ["customer:cus_1001"]
                        assert details["method"] == "POST"
                        assert details["path"] == "/customers/cus_1001/refunds"
                        digest = base64.urlsafe_b64encode(hashlib.sha256(post["body"]).digest()).rstrip(b"=").decode()
                        assert details["body_sha256"] == digest
                        assert json.loads(post["body"]) == {"amount": 25, "reason": "late"}

                        # The refund's token replayed by hand: refused.
                        status, answer = send(f"{api}/customers/cus_1001/refunds", "POST", write_token, post["body"])
                        assert status == 401 and "already used" in answer["error_description"], answer
                        # The same token for a bigger refund: refused (and it was used anyway).
                        status, answer = send(f"{api}/customers/cus_1001/refunds", "POST", write_token,
                                              b'{"amount":4000,"reason":"late"}')
                        assert status == 401, answer
                        # Captured from a read, presented on a write endpoint: refused.
                        status, answer = send(f"{api}/customers/cus_1001/refunds", "POST", read_token, post["body"])
                        assert status == 401 and "issuer" in answer["error_description"], answer
                        # No token at all.
                        status, _ = send(f"{api}/customers/cus_1001", "GET", None)
                        assert status == 401

                        # Revocation shows in introspection from the next look.
                        third = await session.call_tool("list_charges", {"customer_id": "cus_1001"})
                        assert not third.is_error, text(third)
                        fresh = recorder.seen[-1]["authorization"].removeprefix("Bearer ")
                        assert post_form(f"{admin}/introspect", admin_token, {"token": fresh})["active"] is True
                        jti = jwt.decode(fresh, options={"verify_signature": False})["jti"]
                        assert post_json(f"{admin}/revoke", admin_token, {"jti": jti}) == 200
                        assert post_form(f"{admin}/introspect", admin_token, {"token": fresh}) == {"active": False}
                        # The revocation list the API fetches names it.
                        with urllib.request.urlopen(f"{admin}/revocations") as answer:
                            listed = jwt.decode(answer.read(), options={"verify_signature": False})
                        assert jti in listed["revoked_jtis"]

                        # Revoking the session: its next call is refused at Tollgate.
                        sid = jwt.decode(fresh, options={"verify_signature": False})["sid"]
                        assert post_json(f"{admin}/revoke", admin_token, {"session": sid}) == 200
                        with pytest.raises(MCPError, match="revoked"):
                            await session.call_tool("get_customer", {"customer_id": "cus_1001"})
            forwarded = len(recorder.seen)
        assert forwarded == 3, "nothing after the revocation reached the API"
    finally:
        service.terminate()
        service.wait(timeout=10)
        recorder.close()
