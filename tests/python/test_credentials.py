"""Per-call credentials checked by an independent JOSE library: the Python `mcp` SDK calls a
tool through Tollgate, the tool (the fixture's `meta`) records the `_meta` it received in a
file beside the test (its answer echoes it too, but Tollgate scrubs the token from what the
agent sees), and PyJWT verifies the token against the JWKS Tollgate's admin endpoint
publishes."""

import base64
import hashlib
import json
import pathlib
import subprocess

import jwt
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from conftest import free_port, serve_http

pytestmark = pytest.mark.anyio


def text(result) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA"])
async def test_a_minted_token_verifies_with_pyjwt_against_the_published_jwks(
    tollgate, node_bin_dir, tmp_path, algorithm
):
    fixture = pathlib.Path(tollgate).with_name("tollgate-fixture")
    assert fixture.exists(), "build the workspace first (cargo test --workspace)"
    state = tmp_path / "state"
    grant = subprocess.run(
        [tollgate, "grant", "issue", "--state", str(state), "--purpose", "general",
         "--task", "check the token", "--agent", "py-agent", "--user", "ada",
         "--action", "read"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    admin_port = free_port()
    meta_log = tmp_path / "meta.log"
    config = f"""
[front.http]
listen = "127.0.0.1:{{port}}"

[grants]
state_dir = "{state}"

[mint]
issuer = "https://tollgate.test"
algorithm = "{algorithm}"

[admin]
listen = "127.0.0.1:{admin_port}"

# The fixture's tools are not in the default pack's catalog (so they would be `admin`, which
# waits for approval); this entry makes `meta` a read.
[[policy.tool]]
tool = "meta"
class = "read"

[[upstream]]
name = "fx"
command = "{fixture}"
args = ["stdio", "fx"]
env = {{ TOLLGATE_FIXTURE_META_LOG = "{meta_log}" }}
credential = {{ mode = "mint", audience = "https://fx.test", lifetime_secs = 45 }}
"""
    with serve_http(tollgate, config, tmp_path, node_bin_dir) as (_, url):
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {grant}"}) as client:
            async with streamable_http_client(url, http_client=client) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    answer = text(await session.call_tool("meta", {}))
        seen = json.loads(meta_log.read_text().splitlines()[-1])
        token = seen["io.tollgate/credential"]
        assert token != grant
        assert token not in answer and "[redacted]" in answer, "the agent never sees the token"

        jwks_client = jwt.PyJWKClient(f"http://127.0.0.1:{admin_port}/.well-known/jwks.json")
        key = jwks_client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience="https://fx.test",
            issuer="https://tollgate.test/read",
            options={"require": ["exp", "iat", "nbf", "jti", "sub"]},
        )
        header = jwt.get_unverified_header(token)
        assert header["typ"] == "at+jwt" and header["alg"] == algorithm
        assert claims["sub"] == "ada" and claims["client_id"] == "py-agent"
        assert claims["exp"] - claims["iat"] == 45
        assert claims["act"] == {"sub": "tollgate", "act": {"sub": "py-agent"}}
        (details,) = claims["authorization_details"]
        assert details["tool"] == "meta" and details["action"] == "read"
        # The digest of the canonical (RFC 8785) arguments: `{}` here.
        expected = base64.urlsafe_b64encode(hashlib.sha256(b"{}").digest()).rstrip(b"=").decode()
        assert details["arguments_sha256"] == expected
        # RFC 7638: the kid is the thumbprint of the key.
        jwk = next(k for k in jwks_client.get_jwk_set().keys if k.key_id == header["kid"])
        members = {k: jwk._jwk_data[k] for k in (("crv", "kty", "x", "y") if algorithm == "ES256" else ("crv", "kty", "x"))}
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
        thumbprint = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
        assert header["kid"] == thumbprint
        # Nothing private is published.
        assert all("d" not in k._jwk_data for k in jwks_client.get_jwk_set().keys)
