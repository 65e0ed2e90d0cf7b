"""HTTP-side helpers: HTTPS with reload and client certificates, API-key/JWT tenants, limits."""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infermesh.core.errors import QuotaExceeded, Unauthenticated, UsageError
from infermesh.security.http import (
    HttpTls,
    TenantLimiter,
    TenantResolver,
    generate_api_key,
    hash_api_key,
    http_status,
)
from infermesh.security.jwt import JwtConfig, JwtVerifier
from tests.security.pki import Pki
from tests.security.test_jwt import AUDIENCE, ISSUER, Idp


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


def _serve(tls: HttpTls):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    server.socket = tls.context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def _get(port: int, pki: Pki, client_files=None) -> bytes:
    context = ssl.create_default_context(cafile=str(pki.root / "ca" / "ca.pem"))
    if client_files is not None:
        context.load_cert_chain(client_files.cert, client_files.key)
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/", context=context, timeout=5) as r:
        return r.read()


def _serial(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port), timeout=5)


def test_https_serves_and_reloads_a_rotated_certificate(pki):
    tls = HttpTls(pki.coordinator())
    server = _serve(tls)
    try:
        port = server.server_address[1]
        assert _get(port, pki) == b"hello"
        first = _serial(port)
        time.sleep(0.01)
        pki.coordinator()
        assert _get(port, pki) == b"hello"
        assert tls.reloads == 1 and _serial(port) != first
    finally:
        server.shutdown()
        server.server_close()


def test_https_with_client_certificates_refuses_anonymous_clients(pki):
    server = _serve(HttpTls(pki.coordinator(), require_client_cert=True))
    try:
        port = server.server_address[1]
        assert _get(port, pki, pki.user("alice")) == b"hello"
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _get(port, pki)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def keys(tmp_path):
    key = generate_api_key()
    path = tmp_path / "keys.txt"
    path.write_text(f"# tenant key-hash\nvision {hash_api_key(key)}\n")
    return key, path


def test_api_key_and_jwt_map_to_tenants(tmp_path, keys):
    key, path = keys
    idp = Idp()
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(idp.jwks()))
    verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=str(jwks)))
    resolver = TenantResolver(keys_file=path, verifier=verifier)
    assert resolver.resolve({"Authorization": f"Bearer {key}"}).name == "vision"
    assert resolver.resolve({"x-api-key": key}).source == "api-key"
    by_token = resolver.resolve({"authorization": f"Bearer {idp.token('bob', tenant='nlp')}"})
    assert (by_token.name, by_token.principal, by_token.source) == ("nlp", "user:bob", "jwt")
    with pytest.raises(Unauthenticated, match="unknown API key"):
        resolver.resolve({"X-API-Key": "im_wrong"})
    with pytest.raises(Unauthenticated, match="no credentials"):
        resolver.resolve({})
    with pytest.raises(Unauthenticated, match="Bearer"):
        resolver.resolve({"Authorization": "Basic abc"})
    with pytest.raises(Unauthenticated, match="expired"):
        resolver.resolve({"Authorization": f"Bearer {idp.token(ttl=-100)}"})


def test_key_file_changes_apply_and_bad_lines_are_named(keys):
    key, path = keys
    resolver = TenantResolver(keys_file=path)
    other = generate_api_key()
    time.sleep(0.01)
    path.write_text(f"audio {hash_api_key(other)}\n")
    assert resolver.resolve({"X-API-Key": other}).name == "audio"
    with pytest.raises(Unauthenticated):
        resolver.resolve({"X-API-Key": key})
    path.write_text("audio plain-text-key\n")
    with pytest.raises(UsageError, match=r"keys\.txt:1: expected 'TENANT sha256"):
        TenantResolver(keys_file=path)
    with pytest.raises(UsageError, match="needs an API key file"):
        TenantResolver()


@settings(max_examples=200, deadline=None)
@given(headers=st.dictionaries(st.sampled_from(["Authorization", "X-API-Key", "x"]), st.text()))
def test_random_headers_only_ever_fail_as_unauthenticated(tmp_path_factory, headers):
    path = tmp_path_factory.mktemp("k") / "keys.txt"
    path.write_text(f"t {hash_api_key('k')}\n")
    resolver = TenantResolver(keys_file=path)
    try:
        tenant = resolver.resolve(headers)
    except Unauthenticated as error:
        assert http_status(error) == 401
    else:
        assert tenant.name == "t"


def test_limiter_refills_at_its_rate_and_says_how_long_to_wait():
    now = [0.0]
    limiter = TenantLimiter(rate=2.0, burst=4.0, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(4)] == [0.0] * 4
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # tenants do not share a bucket
    now[0] = 1.0
    assert limiter.take("a", 2) == 0.0
    with pytest.raises(QuotaExceeded, match="exceeds the burst"):
        limiter.take("a", 5)
    with pytest.raises(UsageError):
        TenantLimiter(rate=0, burst=1)
