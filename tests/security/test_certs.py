"""The cell CA and certificate bundles: `infermesh certs init | issue | show`."""

from __future__ import annotations

import datetime as dt
import stat

import pytest
from cryptography import x509
from typer.testing import CliRunner

from infermesh.cli.security import certs_app
from infermesh.core.errors import Unauthenticated, UsageError
from infermesh.security.ca import init_ca, load_ca, parse_ttl
from infermesh.security.identity import SpiffeId, identity_from_cert, spiffe_ids_of
from infermesh.security.tls import ClientTls, TlsFiles, trust_domain_of

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(certs_app, list(args))


def test_init_writes_a_ca_carrying_the_trust_domain_with_a_private_key(tmp_path):
    result = _invoke("init", "--trust-domain", "example.org", "--dir", str(tmp_path / "ca"))
    assert result.exit_code == 0, result.output
    assert "spiffe://example.org" in result.output
    key = tmp_path / "ca" / "ca-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert trust_domain_of((tmp_path / "ca" / "ca.pem").read_bytes()) == "example.org"
    assert load_ca(tmp_path / "ca").trust_domain == "example.org"


def test_init_refuses_to_overwrite_a_ca_without_force(tmp_path):
    init_ca(tmp_path, "example.org")
    result = _invoke("init", "--trust-domain", "example.org", "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert "--force" in result.output
    assert (
        _invoke("init", "--trust-domain", "x.org", "--dir", str(tmp_path), "--force").exit_code == 0
    )


def test_issue_node_bundle_has_the_spiffe_id_and_is_short_lived(tmp_path):
    init_ca(tmp_path, "example.org")
    result = _invoke("issue", "--node", "gpu-7", "--cell", "west", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = tmp_path / "node-gpu-7"
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert spiffe_ids_of(cert) == ["spiffe://example.org/cell/west/node/gpu-7"]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(hours=24) <= life <= dt.timedelta(hours=24, minutes=11)
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    files = TlsFiles.from_options(str(out))
    assert files is not None
    files.read()  # key matches the certificate
    ident = identity_from_cert(
        (out / "cert.pem").read_bytes(), trust_domain="example.org", cell="west"
    )
    assert (ident.principal, ident.source) == ("node:gpu-7", "cert")


def test_issue_user_and_coordinator_bundles(tmp_path):
    init_ca(tmp_path, "example.org")
    assert _invoke("issue", "--user", "alice", "--ttl", "2h", "--dir", str(tmp_path)).exit_code == 0
    result = _invoke(
        "issue",
        "--coordinator",
        "--dns",
        "coord.example.org",
        "--ip",
        "10.0.0.5",
        "--dir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    cert = x509.load_pem_x509_certificate(
        (tmp_path / "coordinator-local" / "cert.pem").read_bytes()
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "coord.example.org" in san.get_values_for_type(x509.DNSName)
    assert "infermesh-coordinator" in san.get_values_for_type(x509.DNSName)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)][-1] == "10.0.0.5"
    shown = _invoke("show", str(tmp_path / "user-alice"))
    assert "spiffe://example.org/cell/local/user/alice" in shown.output
    assert "h left" in shown.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["issue", "--node", "a", "--user", "b"], "exactly one of"),
        (["issue"], "exactly one of"),
        (["issue", "--node", "bad name!"], "node id 'bad name!' is not valid"),
        (["issue", "--node", "a", "--ttl", "forever"], "--ttl 'forever'"),
        (["issue", "--node", "a", "--ttl", "200d"], "short-lived"),
        (["issue", "--coordinator", "--ip", "not-an-ip"], "--ip 'not-an-ip'"),
    ],
)
def test_issue_rejects_bad_input_with_the_fix(tmp_path, args, needle):
    init_ca(tmp_path, "example.org")
    result = _invoke(*args, "--dir", str(tmp_path))
    assert result.exit_code == 2
    assert needle in result.output


def test_issue_without_a_ca_says_how_to_make_one(tmp_path):
    result = _invoke("issue", "--node", "a", "--dir", str(tmp_path / "none"))
    assert result.exit_code == 2
    assert "certs init" in result.output


def test_bad_trust_domain_and_ttl_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="trust domain 'Bad Domain'"):
        init_ca(tmp_path, "Bad Domain")
    assert parse_ttl("90m") == dt.timedelta(minutes=90)
    with pytest.raises(UsageError):
        parse_ttl("0h")


@pytest.mark.parametrize(
    "uri",
    [
        "https://example.org/cell/a/node/b",
        "spiffe://example.org/cell/a/pod/b",
        "spiffe://example.org/cell/a/node/b/extra",
        "spiffe://example.org/node/b",
        "spiffe://EXAMPLE/cell/a/node/b",
    ],
)
def test_foreign_spiffe_ids_are_refused(uri):
    with pytest.raises(Unauthenticated):
        SpiffeId.parse(uri)


def test_identity_of_another_trust_domain_is_refused(tmp_path):
    ca = init_ca(tmp_path, "other.org")
    bundle = ca.issue(SpiffeId.user("other.org", "local", "eve"))
    with pytest.raises(Unauthenticated, match=r"trust domain 'other\.org'"):
        identity_from_cert(bundle.cert_pem, trust_domain="example.org", cell="local")


def test_key_that_does_not_match_the_certificate_is_refused(tmp_path):
    ca = init_ca(tmp_path, "example.org")
    a = ca.issue(SpiffeId.user("example.org", "local", "a"))
    b = ca.issue(SpiffeId.user("example.org", "local", "b"))
    (tmp_path / "cert.pem").write_bytes(a.cert_pem)
    (tmp_path / "key.pem").write_bytes(b.key_pem)
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem")
    with pytest.raises(UsageError, match="does not belong"):
        files.read()


def test_client_tls_options_and_environment(tmp_path):
    ca = init_ca(tmp_path / "ca", "example.org")
    from infermesh.security.ca import write_bundle

    out = write_bundle(tmp_path / "b", ca.issue(SpiffeId.user("example.org", "local", "u")))
    assert ClientTls.from_options(env={}) is None
    from_env = ClientTls.from_options(env={"INFERMESH_TLS_DIR": str(out)})
    assert from_env is not None and from_env.files is not None
    assert from_env.files.cert == out / "cert.pem"
    assert (
        ClientTls.from_options(env={"INFERMESH_TLS_DIR": str(out), "INFERMESH_INSECURE": "1"})
        is None
    )
    with pytest.raises(UsageError, match="go together"):
        ClientTls.from_options(ca=str(out / "ca.pem"), cert=str(out / "cert.pem"), env={})
    with pytest.raises(UsageError, match="proves nothing"):
        ClientTls.from_options(ca=str(out / "ca.pem"), env={})
    with pytest.raises(UsageError, match="needs TLS"):
        ClientTls.from_options(token="abc", env={})
    with pytest.raises(UsageError, match="does not exist"):
        ClientTls.from_options(tls_dir=str(tmp_path / "missing"), env={})
    with pytest.raises(UsageError, match="--insecure conflicts"):
        ClientTls.from_options(tls_dir=str(out), insecure=True, env={})
    token_only = ClientTls.from_options(ca=str(out / "ca.pem"), token="t", env={})
    assert token_only is not None and token_only.files is None
