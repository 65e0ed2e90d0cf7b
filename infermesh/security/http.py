"""Security helpers for HTTP servers (the router and the model server).

* :class:`HttpTls`: an :class:`ssl.SSLContext` for a server port from a TLS bundle
  (``--tls-dir``), optionally requiring client certificates of the cell CA. The certificate is
  re-read before a handshake when the files changed (rotation without restart).
* :class:`TenantResolver`: maps a request's credentials to a tenant. ``Authorization: Bearer
  <credential>`` or ``X-API-Key: <key>``; a credential with the shape of a JWT goes to the JWT
  verifier (:mod:`infermesh.security.jwt`), anything else is an API key looked up in a key
  file that holds only SHA-256 hashes of the keys::

      # tenant   key hash (from `hash_api_key`)
      vision     sha256:6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b

  The file is re-read when it changes. A tenant is a label value only (``tenant``), so logs
  and metrics never carry another tenant's key or request.
* :class:`TenantLimiter`: per-tenant token buckets for request rate and generated tokens,
  answering how long to wait (for ``429`` with ``Retry-After``).
* :func:`http_status`: the HTTP status for our auth errors (401, 403, 429).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from infermesh.core.errors import PermissionDenied, QuotaExceeded, Unauthenticated, UsageError
from infermesh.security.identity import USER_NAME_RE
from infermesh.security.jwt import JwtVerifier
from infermesh.security.tls import TlsFiles

__all__ = [
    "HttpTls",
    "Tenant",
    "TenantLimiter",
    "TenantResolver",
    "generate_api_key",
    "hash_api_key",
    "http_status",
]

logger = logging.getLogger(__name__)
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def hash_api_key(key: str) -> str:
    """``sha256:<hex>`` of an API key: what the key file stores."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def generate_api_key() -> str:
    """A new random API key (``im_`` + 43 URL-safe characters)."""
    return "im_" + secrets.token_urlsafe(32)


def http_status(error: Exception) -> int:
    if isinstance(error, Unauthenticated):
        return 401
    if isinstance(error, PermissionDenied):
        return 403
    if isinstance(error, QuotaExceeded):
        return 429
    return 500


class HttpTls:
    """Server-side TLS for an HTTP port, reloaded when the bundle's files change."""

    def __init__(self, files: TlsFiles, *, require_client_cert: bool = False) -> None:
        self.files = files
        self.require_client_cert = require_client_cert
        self.reloads = 0
        self._lock = threading.Lock()
        self._stamp = files.stamp()
        self._current = self._build()
        self.context = self._build()
        self.context.sni_callback = self._sni

    def _build(self) -> ssl.SSLContext:
        ca, _, _ = self.files.read()  # checks that the key fits the certificate
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.files.cert, self.files.key)
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=ca.decode())
        return context

    def _sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
        stamp = self.files.stamp()
        if stamp and stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._current = self._build()
                        self._stamp = stamp
                        self.reloads += 1
                        logger.info("reloaded HTTP TLS certificate %s", self.files.cert)
                    except (OSError, UsageError, ssl.SSLError) as error:
                        logger.warning("TLS files changed but cannot be used yet (%s)", error)
        sock.context = self._current


def https_context(tls_dir: str) -> ssl.SSLContext | None:
    """The server context for an HTTP port given ``--tls-dir`` (None when it is empty)."""
    if not tls_dir:
        return None
    files = TlsFiles.from_options(tls_dir=tls_dir)
    assert files is not None
    return HttpTls(files).context


@dataclass(frozen=True)
class Tenant:
    """Who a request is billed to: the tenant, the principal and how it was proven."""

    name: str
    principal: str
    source: str  # api-key | jwt


@dataclass
class TenantResolver:
    """Credentials -> :class:`Tenant`; raises :class:`Unauthenticated` saying what is wrong."""

    keys_file: Path | None = None
    verifier: JwtVerifier | None = None
    _keys: dict[str, str] = field(default_factory=dict, repr=False)
    _stamp: tuple[int, int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.keys_file is None and self.verifier is None:
            raise UsageError(
                "tenant mapping needs an API key file (--api-keys) or JWT settings, or both"
            )
        if self.keys_file is not None:
            self._load(self.keys_file)

    def _load(self, path: Path) -> None:
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        keys: dict[str, str] = {}
        for number, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not USER_NAME_RE.match(parts[0]) or not _HASH_RE.match(parts[1]):
                raise UsageError(
                    f"{path}:{number}: expected 'TENANT sha256:<64 hex>' (make the "
                    "hash with `infermesh.security.http.hash_api_key`)"
                )
            keys[parts[1]] = parts[0]
        self._keys, self._stamp = keys, stamp

    def resolve(self, headers: Mapping[str, str]) -> Tenant:
        lower = {k.lower(): v for k, v in headers.items()}
        credential = lower.get("x-api-key", "").strip()
        auth = lower.get("authorization", "").strip()
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthenticated("Authorization header must be 'Bearer <API key or token>'")
            credential = value.strip()
        if not credential:
            raise Unauthenticated(
                "no credentials: send 'Authorization: Bearer <API key or token>' or 'X-API-Key'"
            )
        if _JWT_SHAPE.match(credential) and self.verifier is not None:
            ident = self.verifier.verify(credential)
            return Tenant(ident.tenant or ident.name, ident.principal, "jwt")
        if self.keys_file is None:
            raise Unauthenticated("this server accepts JWTs only; the credential is not one")
        self._load(self.keys_file)
        digest = hash_api_key(credential)
        for known, tenant in self._keys.items():
            if hmac.compare_digest(known, digest):
                return Tenant(tenant, f"api-key:{tenant}", "api-key")
        raise Unauthenticated("unknown API key")


@dataclass
class _Bucket:
    level: float
    stamp: float


class TenantLimiter:
    """Token buckets per tenant: ``rate`` units per second, up to ``burst`` at once.

    Use one limiter for requests (cost 1 each) and another for generated tokens (cost = the
    tokens a request may produce). ``clock`` is injectable for tests.
    """

    def __init__(
        self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise UsageError(f"rate limit needs rate > 0 and burst > 0, got {rate} and {burst}")
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, tenant: str, cost: float = 1.0) -> float:
        """Take ``cost`` units now and return 0.0, or return the seconds to wait (nothing taken)."""
        if cost > self.burst:
            raise QuotaExceeded(
                f"tenant {tenant}: a request costing {cost:g} exceeds the burst of {self.burst:g}"
            )
        now = self.clock()
        with self._lock:
            bucket = self._buckets.setdefault(tenant, _Bucket(self.burst, now))
            bucket.level = min(self.burst, bucket.level + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.level >= cost:
                bucket.level -= cost
                return 0.0
            return (cost - bucket.level) / self.rate
