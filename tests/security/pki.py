"""A throwaway cell PKI for tests: a CA and bundles made by the real `certs` code."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from infermesh.security.ca import (
    CertificateAuthority,
    default_server_names,
    init_ca,
    write_bundle,
)
from infermesh.security.identity import SpiffeId
from infermesh.security.tls import ClientTls, TlsFiles

TD = "example.org"
CELL = "local"


class Pki:
    def __init__(self, root: Path, trust_domain: str = TD, cell: str = CELL) -> None:
        self.root = root
        self.cell = cell
        self.ca: CertificateAuthority = init_ca(root / "ca", trust_domain)
        self.td = trust_domain

    def bundle(self, sid: SpiffeId, name: str, **options) -> TlsFiles:
        dns, ips = default_server_names() if sid.kind == "coordinator" else ((), ())
        out = write_bundle(self.root / name, self.ca.issue(sid, dns=dns, ips=ips, **options))
        return TlsFiles(out / "ca.pem", out / "cert.pem", out / "key.pem")

    def coordinator(self) -> TlsFiles:
        return self.bundle(SpiffeId.coordinator(self.td, self.cell), "coordinator")

    def node(self, node_id: str, cell: str | None = None, **options) -> TlsFiles:
        sid = SpiffeId.node(self.td, cell or self.cell, node_id)
        return self.bundle(sid, f"node-{node_id}-{cell or self.cell}", **options)

    def user(self, name: str, **options) -> TlsFiles:
        return self.bundle(SpiffeId.user(self.td, self.cell, name), f"user-{name}", **options)

    def expired_user(self, name: str) -> TlsFiles:
        start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3)
        return self.user(name, ttl=dt.timedelta(hours=1), not_before=start)


def client(files: TlsFiles, token: str | None = None) -> ClientTls:
    return ClientTls(files, token=token, ca=files.ca)
