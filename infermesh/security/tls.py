"""gRPC credentials from certificate files, reloaded when the files change.

A process is given a TLS *bundle*: a CA, a certificate and its key, either as a directory
(``--tls-dir DIR`` holding ``ca.pem``, ``cert.pem``, ``key.pem``, what ``infermesh certs issue``
writes) or as three files (``--ca``, ``--cert``, ``--key``). Environment variables stand in for
the flags: ``INFERMESH_TLS_DIR``, ``INFERMESH_TLS_CA``/``_CERT``/``_KEY``,
``INFERMESH_TLS_SERVER_NAME`` (name to verify in the coordinator's certificate when the address
is not one of its names) and ``INFERMESH_TOKEN`` (a JWT sent as ``authorization: Bearer``).

* :class:`ServerTls` builds server credentials that require (or accept) client certificates
  and re-read the files before a handshake when their modification time changed: rotating a
  certificate needs no restart. A half-rotated pair (new cert, old key) is ignored until both
  files match.
* :class:`ClientTls` builds channel credentials; :meth:`ClientTls.changed` tells a long-lived
  client (the agent) to open a new channel after a rotation.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from infermesh.core.errors import UsageError
from infermesh.security.ca import CA_CERT, CERT, KEY

__all__ = [
    "CLIENT_ENV",
    "ENV_CA",
    "ENV_CERT",
    "ENV_DIR",
    "ENV_INSECURE",
    "ENV_KEY",
    "ENV_SERVER_NAME",
    "ENV_TOKEN",
    "ClientTls",
    "ServerTls",
    "TlsFiles",
    "client_env",
    "trust_domain_of",
]

logger = logging.getLogger(__name__)

ENV_DIR = "INFERMESH_TLS_DIR"
ENV_CA = "INFERMESH_TLS_CA"
ENV_CERT = "INFERMESH_TLS_CERT"
ENV_KEY = "INFERMESH_TLS_KEY"
ENV_SERVER_NAME = "INFERMESH_TLS_SERVER_NAME"
ENV_TOKEN = "INFERMESH_TOKEN"
ENV_INSECURE = "INFERMESH_INSECURE"
CLIENT_ENV = (ENV_DIR, ENV_CA, ENV_CERT, ENV_KEY, ENV_SERVER_NAME, ENV_TOKEN, ENV_INSECURE)
"""Every variable :meth:`ClientTls.from_options` reads."""


@dataclass(frozen=True)
class TlsFiles:
    """Paths of a CA, a certificate and its key."""

    ca: Path
    cert: Path
    key: Path

    @staticmethod
    def from_options(
        tls_dir: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> TlsFiles | None:
        """The bundle named by flags; ``None`` when no flag is given. Checks the files exist."""
        if tls_dir and (ca or cert or key):
            raise UsageError("give either --tls-dir or --ca/--cert/--key, not both")
        if tls_dir:
            base = Path(tls_dir)
            files = TlsFiles(base / CA_CERT, base / CERT, base / KEY)
        elif ca or cert or key:
            if not (ca and cert and key):
                raise UsageError(
                    "--ca, --cert and --key go together (the CA, this identity's certificate "
                    "and its key); or use --tls-dir DIR with ca.pem, cert.pem and key.pem"
                )
            files = TlsFiles(Path(ca), Path(cert), Path(key))
        else:
            return None
        files.check()
        return files

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> TlsFiles | None:
        e = os.environ if env is None else env
        return TlsFiles.from_options(
            e.get(ENV_DIR) or None, e.get(ENV_CA) or None, e.get(ENV_CERT) or None,
            e.get(ENV_KEY) or None,
        )  # fmt: skip

    def env(self) -> dict[str, str]:
        """Environment variables that hand this bundle to a child process."""
        return {ENV_CA: str(self.ca), ENV_CERT: str(self.cert), ENV_KEY: str(self.key)}

    def check(self) -> None:
        for what, path in (("CA", self.ca), ("certificate", self.cert), ("key", self.key)):
            if not path.is_file():
                raise UsageError(
                    f"TLS {what} file {path} does not exist; issue a bundle with `infermesh "
                    "certs issue` or fix --tls-dir / --ca / --cert / --key"
                )

    def stamp(self) -> tuple[int, ...]:
        """Modification times and sizes: changes when any file is replaced."""
        out: list[int] = []
        for path in (self.ca, self.cert, self.key):
            try:
                st = path.stat()
            except OSError:
                return ()
            out += [st.st_mtime_ns, st.st_size, st.st_ino]
        return tuple(out)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """``(ca, cert, key)`` PEM bytes; UsageError when the key does not fit the certificate."""
        ca, cert, key = self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        try:
            leaf = x509.load_pem_x509_certificate(cert)
            private = serialization.load_pem_private_key(key, password=None)
            x509.load_pem_x509_certificates(ca)
        except ValueError as error:
            raise UsageError(f"TLS files {self.cert} / {self.key} / {self.ca}: {error}") from None
        public = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.DER
        if leaf.public_key().public_bytes(enc, public) != private.public_key().public_bytes(
            enc, public
        ):
            raise UsageError(f"TLS key {self.key} does not belong to certificate {self.cert}")
        return ca, cert, key


def trust_domain_of(ca_pem: bytes) -> str:
    """The trust domain a cell CA certificate carries (its ``spiffe://<domain>`` URI SAN)."""
    from infermesh.security.identity import spiffe_ids_of

    for cert in x509.load_pem_x509_certificates(ca_pem):
        for uri in spiffe_ids_of(cert):
            domain = uri.removeprefix("spiffe://")
            if domain and "/" not in domain:
                return domain
    raise UsageError(
        "the CA certificate names no trust domain (URI SAN spiffe://<domain>); use a CA made "
        "by `infermesh certs init`"
    )


@dataclass
class ServerTls:
    """Server credentials over a :class:`TlsFiles` bundle, reloaded on change."""

    files: TlsFiles
    require_client_cert: bool = True
    reloads: int = 0
    _stamp: tuple[int, ...] = field(default=(), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        ca, _, _ = self.files.read()
        self.trust_domain = trust_domain_of(ca)

    def _config(self) -> grpc.ServerCertificateConfiguration:
        ca, cert, key = self.files.read()
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC before every handshake (on its own thread): stat, reload on change.
        stamp = self.files.stamp()
        if not stamp or stamp == self._stamp:
            return None
        with self._lock:
            if stamp == self._stamp:
                return None
            try:
                config = self._config()
            except (OSError, UsageError) as error:
                logger.warning("TLS files changed but cannot be used yet (%s)", error)
                return None
            self._stamp = stamp
            self.reloads += 1
            logger.info("reloaded TLS certificate %s", self.files.cert)
            return config

    def credentials(self) -> grpc.ServerCredentials:
        self._stamp = self.files.stamp()
        return grpc.dynamic_ssl_server_credentials(
            self._config(),
            self._fetch,
            require_client_authentication=self.require_client_cert,
        )


@dataclass
class ClientTls:
    """Channel credentials for the coordinator: a bundle, a server name, a bearer token.

    ``files`` may be ``None`` for a token-only client (the server must accept callers without
    a certificate); then ``ca`` alone verifies the server.
    """

    files: TlsFiles | None
    server_name: str | None = None
    token: str | None = None
    ca: Path | None = None
    _stamp: tuple[int, ...] = field(default=(), repr=False)

    @staticmethod
    def from_options(
        tls_dir: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        *,
        server_name: str | None = None,
        token: str | None = None,
        insecure: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> ClientTls | None:
        """Flags first, then the environment; ``None`` means a plaintext channel.

        A CA without a certificate and key (``--ca`` alone) gives a token-only client.
        """
        e = os.environ if env is None else env
        flags = any((tls_dir, ca, cert, key))
        if insecure or (not flags and e.get(ENV_INSECURE, "") not in ("", "0")):
            if flags or token:
                raise UsageError(
                    "--insecure conflicts with TLS options and tokens; drop one of them"
                )
            return None
        token = token or e.get(ENV_TOKEN) or None
        server_name = server_name or e.get(ENV_SERVER_NAME) or None
        if not flags:
            tls_dir, ca, cert, key = (
                e.get(v) or None for v in (ENV_DIR, ENV_CA, ENV_CERT, ENV_KEY)
            )
        if ca and not cert and not key and not tls_dir:
            if not Path(ca).is_file():
                raise UsageError(f"TLS CA file {ca} does not exist; fix --ca")
            if not token:
                raise UsageError(
                    "--ca alone verifies the coordinator but proves nothing about you: add "
                    "--cert and --key, or a token (--token / $INFERMESH_TOKEN)"
                )
            return ClientTls(None, server_name, token, Path(ca))
        files = TlsFiles.from_options(tls_dir, ca, cert, key)
        if files is None:
            if token:
                raise UsageError(
                    "a token needs TLS: give the cell CA with --ca (or --tls-dir) so the token "
                    "is never sent in plaintext"
                )
            return None
        return ClientTls(files, server_name, token, files.ca)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        if self.files is not None:
            self._stamp = self.files.stamp()
            ca, cert, key = self.files.read()
            creds = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
        else:
            assert self.ca is not None  # from_options guarantees it
            creds = grpc.ssl_channel_credentials(self.ca.read_bytes())
        if self.token:
            token = grpc.access_token_call_credentials(self.token)
            creds = grpc.composite_channel_credentials(creds, token)
        return creds

    def options(self) -> list[tuple[str, str | int]]:
        if self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []

    def changed(self) -> bool:
        """Whether the files were replaced since the last :meth:`channel_credentials`."""
        return self.files is not None and self.files.stamp() not in ((), self._stamp)


def client_env(tls: ClientTls | None) -> dict[str, str]:
    """Environment variables that hand client settings to a child process (``None``: plaintext).

    They replace all of :data:`CLIENT_ENV` in the child's environment: mixed with the parent's
    own (``INFERMESH_TLS_DIR`` next to ``INFERMESH_TLS_CA``...) they would clash.
    """
    if tls is None:
        return {ENV_INSECURE: "1"}
    env = tls.files.env() if tls.files is not None else {ENV_CA: str(tls.ca)}
    if tls.server_name:
        env[ENV_SERVER_NAME] = tls.server_name
    if tls.token:
        env[ENV_TOKEN] = tls.token
    return env
