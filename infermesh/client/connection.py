"""How a client reaches the coordinator: its address and TLS settings, as the user gave them.

Every command that talks to the coordinator (``infermesh jobs``, ``nodes``, ``stats``,
``topo plan JOB``, ``rbac``, ``quota``, ``audit``, ``whoami``) and ``infermesh-run`` take the
same options and keep them in a :class:`Connection`; an empty option falls back to its
environment variable (``$INFERMESH_COORDINATOR``, ``$INFERMESH_TLS_DIR``... see
:mod:`infermesh.security.tls`) when the connection is opened.

Importing this module costs nothing (gRPC and the TLS code are imported when a connection is
opened): the launcher parses its command line before it imports anything heavy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infermesh.client.coordinator import CoordinatorClient
    from infermesh.security.tls import ClientTls

__all__ = ["Connection"]


@dataclass(frozen=True)
class Connection:
    """The coordinator connection options of one command (empty: the environment's)."""

    coordinator: str = ""
    """``--coordinator HOST:PORT``; else ``$INFERMESH_COORDINATOR``."""
    tls_dir: str = ""
    """``--tls-dir``: a bundle directory with ``ca.pem``, ``cert.pem`` and ``key.pem``."""
    ca: str = ""
    """``--ca``: the cell CA file (alone, with a token: a token-only client)."""
    cert: str = ""
    """``--cert``: this caller's certificate file."""
    key: str = ""
    """``--key``: the key of ``cert``."""
    token: str = ""
    """``--token``: a JWT sent as ``authorization: Bearer`` (only over TLS)."""
    tls_server_name: str = ""
    """``--tls-server-name``: the name to verify in the coordinator's certificate."""
    insecure: bool = False
    """``--insecure``: plaintext on purpose, whatever the environment says."""

    def tls_flags(self) -> list[str]:
        """The TLS options given (``--tls-dir``, ``--token``...), for messages."""
        return [
            "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(self)
            if f.name != "coordinator" and getattr(self, f.name)
        ]

    def address(self) -> str:
        """``--coordinator`` or ``$INFERMESH_COORDINATOR``; UsageError saying how to set one."""
        from infermesh.client.coordinator import require_address

        return require_address(self.coordinator or None)

    def tls(self) -> ClientTls | None:
        """TLS settings from the options, else the environment; ``None``: plaintext.

        Raises :class:`~infermesh.core.errors.UsageError` when the options clash
        (``--insecure`` with TLS options, a token without TLS, a missing file...).
        """
        from infermesh.security.tls import ClientTls

        return ClientTls.from_options(
            self.tls_dir or None,
            self.ca or None,
            self.cert or None,
            self.key or None,
            token=self.token or None,
            server_name=self.tls_server_name or None,
            insecure=self.insecure,
        )

    def client(self, address: str | None = None, *, timeout_s: float = 10.0) -> CoordinatorClient:
        """A client of ``address`` (default: :meth:`address`) with these TLS settings."""
        from infermesh.client.coordinator import CoordinatorClient

        target = address or self.address()
        return CoordinatorClient(target, tls=self.tls(), timeout_s=timeout_s)
