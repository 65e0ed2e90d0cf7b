"""The cell certificate authority: ``infermesh certs init`` and ``infermesh certs issue``.

``init`` writes a self-signed CA (``ca.pem``, ``ca-key.pem`` readable by the owner only) whose
certificate carries the trust domain as a SPIFFE URI SAN (``spiffe://example.org``), so every
tool that holds ``ca.pem`` knows the trust domain. ``issue`` writes a short-lived leaf bundle
into its own directory, the layout that every ``--tls-dir`` option reads::

    <dir>/ca.pem     the cell CA (to verify the other side)
    <dir>/cert.pem   this identity's certificate (one SPIFFE id; DNS/IP names for servers)
    <dir>/key.pem    its private key (mode 0600)

Files are replaced atomically (write to a temporary name, then rename), so a process that
reloads them on change never reads half a file. Keys are ECDSA P-256.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infermesh.core.errors import UsageError
from infermesh.security.identity import SpiffeId, check_trust_domain, spiffe_ids_of

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CertificateAuthority",
    "IssuedBundle",
    "init_ca",
    "load_ca",
    "parse_ttl",
    "write_bundle",
]

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
CERT = "cert.pem"
KEY = "key.pem"
DEFAULT_CA_TTL = dt.timedelta(days=365)
DEFAULT_LEAF_TTL = dt.timedelta(hours=24)
MAX_LEAF_TTL = dt.timedelta(days=90)
CLOCK_SKEW = dt.timedelta(minutes=5)
COORDINATOR_DNS = "infermesh-coordinator"
_TTL_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``24h`` or ``7d`` -> timedelta; UsageError for anything else."""
    match = _TTL_RE.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--ttl {text!r}: expected a positive number with s, m, h or d (24h)")
    return dt.timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class IssuedBundle:
    """A leaf certificate, its key and the CA, as PEM bytes."""

    spiffe_id: str
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes
    not_after: dt.datetime


class CertificateAuthority:
    """A loaded CA certificate and key that issues leaf certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key
        ids = spiffe_ids_of(cert)
        if len(ids) != 1 or ids[0].count("/") != 2:
            raise UsageError(
                "the CA certificate carries no trust domain (URI SAN spiffe://<domain>); "
                "create the CA with `infermesh certs init --trust-domain DOMAIN`"
            )
        self.trust_domain = ids[0].removeprefix("spiffe://")

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        spiffe_id: SpiffeId,
        *,
        ttl: dt.timedelta = DEFAULT_LEAF_TTL,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        not_before: dt.datetime | None = None,
    ) -> IssuedBundle:
        """Sign a new key pair for ``spiffe_id`` valid for ``ttl`` (from ``not_before``)."""
        if spiffe_id.trust_domain != self.trust_domain:
            raise UsageError(
                f"cannot issue {spiffe_id}: this CA is for trust domain {self.trust_domain!r}"
            )
        if ttl > MAX_LEAF_TTL:
            raise UsageError(
                f"--ttl {ttl} is longer than {MAX_LEAF_TTL.days} days; cell certificates are "
                "short-lived: issue a shorter one and rotate it"
            )
        start = not_before or (_now() - CLOCK_SKEW)
        end = start + ttl + (CLOCK_SKEW if not_before is None else dt.timedelta(0))
        if end > self.cert.not_valid_after_utc:
            raise UsageError(
                f"the CA expires at {self.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, before "
                "the certificate would: create a new CA with `infermesh certs init --force`"
            )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        names += [x509.DNSName(name) for name in dns]
        for ip in ips:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                raise UsageError(f"--ip {ip!r} is not an IP address") from None
        key = ec.generate_private_key(ec.SECP256R1())
        common = spiffe_id.name or f"coordinator.{spiffe_id.cell}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return IssuedBundle(
            spiffe_id=str(spiffe_id),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=_key_pem(key),
            ca_pem=self.cert_pem,
            not_after=end,
        )


def init_ca(
    directory: str | Path,
    trust_domain: str,
    *,
    ttl: dt.timedelta = DEFAULT_CA_TTL,
    force: bool = False,
) -> CertificateAuthority:
    """Create a CA in ``directory`` (refuses to overwrite one unless ``force``)."""
    check_trust_domain(trust_domain)
    out = Path(directory)
    if (out / CA_KEY).exists() and not force:
        raise UsageError(
            f"{out / CA_KEY} already exists; pass --force to replace the CA (every certificate "
            "it issued stops being trusted)"
        )
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "InferMesh"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"InferMesh CA {trust_domain}"),
        ]
    )
    start = _now() - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomic(out / CA_KEY, _key_pem(key), 0o600)
    _write_atomic(out / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return CertificateAuthority(cert, key)


def load_ca(directory: str | Path) -> CertificateAuthority:
    """Load the CA that :func:`init_ca` wrote; UsageError naming the missing file."""
    out = Path(directory)
    for name in (CA_CERT, CA_KEY):
        if not (out / name).is_file():
            raise UsageError(
                f"no CA at {out} ({name} is missing); create one with `infermesh certs init "
                f"--trust-domain DOMAIN --dir {out}`"
            )
    cert = x509.load_pem_x509_certificate((out / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((out / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise UsageError(f"{out / CA_KEY} is not an EC private key written by `certs init`")
    return CertificateAuthority(cert, key)


def default_server_names() -> tuple[list[str], list[str]]:
    """DNS and IP names a coordinator certificate gets unless told otherwise."""
    dns = sorted({COORDINATOR_DNS, "localhost", socket.gethostname()})
    return dns, ["127.0.0.1", "::1"]


def write_bundle(directory: str | Path, bundle: IssuedBundle) -> Path:
    """Write ``ca.pem``, ``cert.pem`` and ``key.pem`` (0600) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / CA_CERT, bundle.ca_pem)
    _write_atomic(out / KEY, bundle.key_pem, 0o600)
    _write_atomic(out / CERT, bundle.cert_pem)
    return out
