"""OIDC bearer tokens: a coordinator that accepts JWTs (TLS, client certificates optional)."""

from __future__ import annotations

import http.server
import json
import threading
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from infermesh.client.coordinator import (
    AccessDenied,
    CoordinatorClient,
    CoordinatorUnavailable,
    pb,
)
from infermesh.control.auth import SecurityConfig
from infermesh.core.errors import Unauthenticated, UsageError
from infermesh.security.jwt import JwtConfig, JwtVerifier
from infermesh.security.tls import ClientTls
from tests.cell.inproc import ThreadedCoordinator
from tests.security.pki import Pki, client

ISSUER = "https://idp.example.org"
AUDIENCE = "infermesh"


class Idp:
    """A signing key and its JWKS, like an OIDC provider's."""

    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.key = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="ES256")
        return {"keys": [jwk]}

    def token(self, sub: str = "alice", *, ttl: float = 300, **claims) -> str:
        now = time.time()
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + ttl}
        body.update(claims)
        return jwt.encode(body, self.key, algorithm="ES256", headers={"kid": self.kid})


@pytest.fixture
def idp():
    return Idp()


@pytest.fixture
def jwks_file(tmp_path, idp):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    return path


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


@pytest.fixture
def coord(pki, jwks_file):
    config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(jwks_file))
    security = SecurityConfig(
        tls=pki.coordinator(), token_port=0, jwt=config, admins=("user:root",)
    )
    c = ThreadedCoordinator(security=security)
    yield c
    c.close()


def _as(coord, pki, token: str | None) -> CoordinatorClient:
    """A token-only client on the coordinator's token port (no certificate)."""
    tls = ClientTls(None, token=token, ca=pki.coordinator().ca)
    address = f"127.0.0.1:{coord.coordinator.token_port}"
    return CoordinatorClient(address, tls=tls, timeout_s=5)


def _unauthenticated(call) -> str:
    with pytest.raises(AccessDenied) as info:
        call()
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    return str(info.value)


def _revision(coord, pki) -> int:
    with CoordinatorClient(coord.address, tls=client(pki.user("root"))) as root:
        return root.stats().store_revision


def test_valid_token_is_a_user_with_its_tenant_and_groups(coord, pki, idp):
    token = idp.token("alice@example.org", tenant="vision", groups=["ml", "bad group!"])
    with _as(coord, pki, token) as alice:
        me = alice.call("WhoAmI", pb.WhoAmIRequest())
    assert (me.principal, me.source, me.tenant) == ("user:alice@example.org", "jwt", "vision")
    assert list(me.groups) == ["group:ml"]
    assert list(me.roles) == []


def test_group_grant_lets_token_users_submit_under_their_token_tenant(coord, pki, idp):
    with CoordinatorClient(coord.address, tls=client(pki.user("root"))) as root:
        root.call("Grant", pb.GrantRequest(subject="group:ml", role="viewer"))
    with _as(coord, pki, idp.token(groups=["ml"])) as alice:
        assert alice.list_jobs() == []
        with pytest.raises(AccessDenied, match="may not call SubmitJob"):
            alice.submit_job(pb.JobSpec(name="x", entrypoint="/bin/true", nproc_per_node=1))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda idp: Idp(kid=idp.kid).token(), "signature does not verify"),
        (lambda idp: idp.token(ttl=-120), "expired"),
        (lambda idp: idp.token(aud="someone-else"), "not for audience"),
        (lambda idp: idp.token(iss="https://evil.example"), "not issued by"),
        (lambda idp: Idp(kid="other").token(), "key id 'other' is not in the JWKS"),
        (
            lambda idp: jwt.encode(
                {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": time.time() + 60},
                key="",
                algorithm="none",
            ),
            "algorithm 'none' is not accepted",
        ),
        (
            lambda idp: jwt.encode(
                {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": time.time() + 60},
                key="secret-secret-secret-secret-secret!",
                algorithm="HS256",
            ),
            "algorithm 'HS256' is not accepted",
        ),
        (lambda idp: "not.a.token", "malformed"),
    ],
)
def test_forged_expired_or_foreign_tokens_are_rejected_and_write_nothing(
    coord, pki, idp, make, needle
):
    before = _revision(coord, pki)
    with _as(coord, pki, make(idp)) as caller:
        message = _unauthenticated(
            lambda: caller.call("Grant", pb.GrantRequest(subject="user:x", role="admin"))
        )
    assert needle in message
    assert _revision(coord, pki) == before


def test_token_on_the_certificate_port_names_the_user_behind_the_workload(coord, pki, idp):
    tls = client(pki.user("ci-runner"), token=idp.token("alice"))
    with CoordinatorClient(coord.address, tls=tls) as caller:
        me = caller.call("WhoAmI", pb.WhoAmIRequest())
    assert (me.principal, me.source) == ("user:alice", "jwt")


def test_certificate_port_still_refuses_callers_without_certificates(coord, pki, idp):
    tls = ClientTls(None, token=idp.token(), ca=pki.coordinator().ca)
    with (
        CoordinatorClient(coord.address, tls=tls, timeout_s=3) as caller,
        pytest.raises(CoordinatorUnavailable),
    ):
        caller.stats()


def test_no_certificate_and_no_token_is_unauthenticated(coord, pki):
    with _as(coord, pki, None) as nobody:
        assert "no client certificate and no bearer token" in _unauthenticated(nobody.stats)


def test_coordinator_without_jwt_refuses_bearer_tokens(pki, idp):
    c = ThreadedCoordinator(security=SecurityConfig(tls=pki.coordinator()))
    try:
        tls = client(pki.user("u"), token=idp.token())
        with CoordinatorClient(c.address, tls=tls) as caller:
            assert "accepts no bearer tokens" in _unauthenticated(caller.stats)
    finally:
        c.close()


def test_jwks_file_rotation_is_picked_up(tmp_path, idp):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.jwks()))
    verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(path)))
    assert verifier.verify(idp.token()).name == "alice"
    new = Idp(kid="k2")
    time.sleep(0.01)
    path.write_text(json.dumps(new.jwks()))
    assert verifier.verify(new.token("bob")).name == "bob"
    with pytest.raises(Unauthenticated):
        verifier.verify(idp.token("carol"))


def test_jwks_url_served_over_http(idp):
    body = json.dumps(idp.jwks()).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_url=url))
        ident = verifier.verify(idp.token("dana", tenant="t1"))
        assert (ident.principal, ident.tenant) == ("user:dana", "t1")
        with pytest.raises(Unauthenticated, match="signature"):
            verifier.verify(Idp(kid="k1").token())
    finally:
        server.shutdown()
        server.server_close()


def test_token_without_the_user_claim_is_rejected(tmp_path, idp, jwks_file):
    verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(jwks_file)))
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "exp": time.time() + 60},
        idp.key,
        algorithm="ES256",
        headers={"kid": idp.kid},
    )
    with pytest.raises(Unauthenticated, match="lacks the 'sub' claim"):
        verifier.verify(token)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        (dict(issuer="", audience="a", jwks_file="x"), "--jwt-issuer and --jwt-audience"),
        (dict(issuer="i", audience="a"), "exactly one of"),
        (dict(issuer="i", audience="a", jwks_file="/nonexistent"), "no such file"),
        (dict(issuer="i", audience="a", jwks_url="ftp://x"), "https://"),
    ],
)
def test_jwt_settings_are_validated(fields, needle):
    with pytest.raises(UsageError, match=needle):
        JwtConfig(**fields)


def test_jwt_without_tls_is_refused(jwks_file):
    config = JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(jwks_file))
    with pytest.raises(UsageError, match="never travel in plaintext"):
        SecurityConfig(jwt=config).check("127.0.0.1")
