"""Workload and user identities: SPIFFE ids in certificates, principals in policies.

Every certificate the cell CA issues carries one URI SAN, a SPIFFE id::

    spiffe://<trust domain>/cell/<cell>/node/<node id>      a node agent
    spiffe://<trust domain>/cell/<cell>/user/<name>         a person or a script (CLI)
    spiffe://<trust domain>/cell/<cell>/coordinator         the cell's coordinator

Policies (RBAC grants, job ownership) speak of *principals*, short strings derived from the
identity: ``node:<id>``, ``user:<name>``, ``coordinator:<cell>``, plus ``group:<name>`` for the
groups a JWT lists. :func:`identity_from_cert` turns a peer certificate (as the gRPC auth
context hands it over) into an :class:`Identity`, refusing certificates of another trust
domain or another cell.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509

from infermesh.core.errors import Unauthenticated, UsageError

__all__ = [
    "ANONYMOUS",
    "NAME_RE",
    "USER_NAME_RE",
    "Identity",
    "SpiffeId",
    "identity_from_cert",
    "spiffe_ids_of",
]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
"""User and group names from tokens may also hold '@' and '+' (e-mail style)."""
TRUST_DOMAIN_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{0,253}$")

Kind = Literal["node", "user", "coordinator", "anonymous"]
Source = Literal["cert", "jwt", "insecure"]


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a valid node or user name; UsageError naming ``what`` if not."""
    if not NAME_RE.match(name or ""):
        raise UsageError(
            f"{what} {name!r} is not valid: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_trust_domain(trust_domain: str) -> str:
    if not TRUST_DOMAIN_RE.match(trust_domain or ""):
        raise UsageError(
            f"trust domain {trust_domain!r} is not valid: use a lower-case DNS-like name such "
            "as example.org"
        )
    return trust_domain


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """``spiffe://<trust_domain>/cell/<cell>/<kind>[/<name>]``."""

    trust_domain: str
    cell: str
    kind: Literal["node", "user", "coordinator"]
    name: str = ""

    def __str__(self) -> str:
        base = f"spiffe://{self.trust_domain}/cell/{self.cell}/{self.kind}"
        return f"{base}/{self.name}" if self.name else base

    @staticmethod
    def node(trust_domain: str, cell: str, node_id: str) -> SpiffeId:
        return SpiffeId(
            check_trust_domain(trust_domain),
            check_name(cell, "cell"),
            "node",
            check_name(node_id, "node id"),
        )

    @staticmethod
    def user(trust_domain: str, cell: str, name: str) -> SpiffeId:
        return SpiffeId(
            check_trust_domain(trust_domain),
            check_name(cell, "cell"),
            "user",
            check_name(name, "user name"),
        )

    @staticmethod
    def coordinator(trust_domain: str, cell: str) -> SpiffeId:
        return SpiffeId(check_trust_domain(trust_domain), check_name(cell, "cell"), "coordinator")

    @staticmethod
    def parse(uri: str) -> SpiffeId:
        """Parse a SPIFFE id of one of the three forms; :class:`Unauthenticated` otherwise."""
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise Unauthenticated(f"{uri!r} is not a SPIFFE id (spiffe://<domain>/cell/...)")
        domain, _, path = uri[len(prefix) :].partition("/")
        parts = path.split("/")
        ok = bool(TRUST_DOMAIN_RE.match(domain)) and len(parts) >= 3 and parts[0] == "cell"
        if ok and parts[2] == "coordinator" and len(parts) == 3:
            return SpiffeId(domain, parts[1], "coordinator")
        named = ok and len(parts) == 4 and parts[2] in ("node", "user")
        if named and NAME_RE.match(parts[1]) and NAME_RE.match(parts[3]):
            kind: Literal["node", "user"] = "node" if parts[2] == "node" else "user"
            return SpiffeId(domain, parts[1], kind, parts[3])
        raise Unauthenticated(
            f"SPIFFE id {uri!r} has no InferMesh form: expected spiffe://<domain>/cell/<cell>/"
            "node/<id>, .../user/<name> or .../coordinator"
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: what policies see.

    ``principal`` is ``node:<id>``, ``user:<name>``, ``coordinator:<cell>`` or ``anonymous``;
    ``groups`` holds ``group:<name>`` principals from a token; ``tenant`` is the tenant a token
    names (``None``: decided by the caller's grant, else the user name).
    """

    kind: Kind
    name: str
    source: Source
    spiffe_id: str = ""
    groups: tuple[str, ...] = ()
    tenant: str | None = None
    expires_at: float = 0.0
    claims: Mapping[str, object] = field(default_factory=dict, compare=False, hash=False)

    @property
    def principal(self) -> str:
        return "anonymous" if self.kind == "anonymous" else f"{self.kind}:{self.name}"

    @property
    def principals(self) -> tuple[str, ...]:
        """The principal and the groups: every subject a grant may name to reach this caller."""
        return (self.principal, *self.groups)


ANONYMOUS = Identity(kind="anonymous", name="", source="insecure")


def spiffe_ids_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [
        uri
        for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith("spiffe://")
    ]


@functools.lru_cache(maxsize=4096)
def _parse_pem(pem: bytes) -> tuple[list[str], float]:
    cert = x509.load_pem_x509_certificate(pem)
    return spiffe_ids_of(cert), cert.not_valid_after_utc.timestamp()


def identity_from_cert(pem: bytes, *, trust_domain: str, cell: str) -> Identity:
    """The identity of a peer certificate that the TLS layer already verified against our CA.

    Refuses (:class:`Unauthenticated`) a certificate without exactly one SPIFFE id, or whose id
    names another trust domain or another cell.
    """
    try:
        ids, expires = _parse_pem(bytes(pem))
    except ValueError as error:
        raise Unauthenticated(f"peer certificate cannot be read ({error})") from None
    if len(ids) != 1:
        raise Unauthenticated(
            f"peer certificate has {len(ids)} SPIFFE ids ({', '.join(ids) or 'none'}); cell "
            "certificates carry exactly one: issue them with `infermesh certs issue`"
        )
    sid = SpiffeId.parse(ids[0])
    if sid.trust_domain != trust_domain:
        raise Unauthenticated(
            f"peer {sid} belongs to trust domain {sid.trust_domain!r}, this cell trusts "
            f"{trust_domain!r}"
        )
    if sid.cell != cell:
        raise Unauthenticated(f"peer {sid} belongs to cell {sid.cell!r}, this is cell {cell!r}")
    name = sid.name if sid.kind != "coordinator" else sid.cell
    return Identity(kind=sid.kind, name=name, source="cert", spiffe_id=str(sid), expires_at=expires)


def peer_certificate(auth_context: Mapping[str, Sequence[bytes]]) -> bytes | None:
    """The PEM certificate a gRPC peer presented (``None`` without TLS or client cert)."""
    values = auth_context.get("x509_pem_cert")
    return bytes(values[0]) if values else None
