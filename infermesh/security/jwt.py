"""JWT bearer tokens from an OIDC provider (PyJWT): signature, expiry, issuer, audience.

The coordinator (and the router, through :mod:`infermesh.security.http`) accepts
``authorization: Bearer <token>`` when configured with an issuer, an audience and the
provider's signing keys as a JWKS document, from a file (re-read when it changes) or from a URL
(fetched and cached by PyJWT's ``PyJWKClient``). Only asymmetric algorithms are accepted
(RS*, PS*, ES*, EdDSA): a token signed with ``none`` or an HMAC secret is refused whatever
its claims say. ``exp``, ``iss``, ``aud`` and the user claim are required.

A valid token becomes an :class:`~infermesh.security.identity.Identity` of kind ``user``
named by the user claim (``sub`` by default), with ``group:<name>`` principals from the
groups claim and the tenant from the tenant claim when the token carries one.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from infermesh.core.errors import Unauthenticated, UsageError
from infermesh.security.identity import USER_NAME_RE, Identity

__all__ = ["ALGORITHMS", "JwtConfig", "JwtVerifier"]

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
_CACHE = 1024


@dataclass(frozen=True)
class JwtConfig:
    """Where tokens come from and which claims mean what."""

    issuer: str
    """Expected ``iss`` claim (the OIDC provider's issuer URL)."""
    audience: str
    """Expected ``aud`` claim (the client id the provider issues tokens for)."""
    jwks_file: str = ""
    """A JWKS JSON file with the provider's public keys (re-read when it changes)."""
    jwks_url: str = ""
    """The provider's JWKS URL (``.../.well-known/jwks.json``), fetched and cached."""
    user_claim: str = "sub"
    tenant_claim: str = "tenant"
    groups_claim: str = "groups"
    leeway_s: float = 30.0
    """Clock skew tolerated on ``exp``/``nbf``."""

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise UsageError(
                "JWT settings need both --jwt-issuer and --jwt-audience (the provider's issuer "
                "URL and the audience its tokens name)"
            )
        if bool(self.jwks_file) == bool(self.jwks_url):
            raise UsageError("JWT settings need exactly one of --jwt-jwks-file or --jwt-jwks-url")
        if self.jwks_file and not Path(self.jwks_file).is_file():
            raise UsageError(f"--jwt-jwks-file {self.jwks_file}: no such file")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise UsageError(f"--jwt-jwks-url {self.jwks_url!r}: expected an https:// URL")


class JwtVerifier:
    """Verify tokens against a :class:`JwtConfig`; thread-safe, with a small result cache."""

    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._file_stamp: tuple[int, int] | None = None
        self._file_keys: jwt.PyJWKSet | None = None
        self._client = (
            jwt.PyJWKClient(config.jwks_url, cache_keys=True, lifespan=300, timeout=5)
            if config.jwks_url
            else None
        )
        self._cache: OrderedDict[str, Identity] = OrderedDict()

    # -- keys --------------------------------------------------------------------------------
    def _keys_from_file(self) -> jwt.PyJWKSet:
        path = Path(self.config.jwks_file)
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp != self._file_stamp or self._file_keys is None:
                try:
                    self._file_keys = jwt.PyJWKSet.from_dict(json.loads(path.read_text()))
                except (ValueError, jwt.PyJWKSetError) as error:
                    raise Unauthenticated(f"JWKS file {path} is not usable ({error})") from None
                self._file_stamp = stamp
                self._cache.clear()
            return self._file_keys

    def _key(self, token: str, header: dict[str, Any]) -> Any:
        kid = header.get("kid")
        if self._client is not None:
            try:
                return self._client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as error:
                raise Unauthenticated(f"no signing key for the token ({error})") from None
        keys = self._keys_from_file().keys
        if kid is None and len(keys) == 1:
            return keys[0].key
        for key in keys:
            if key.key_id == kid:
                return key.key
        raise Unauthenticated(f"token key id {kid!r} is not in the JWKS; the token is not ours")

    # -- verification ------------------------------------------------------------------------
    def verify(self, token: str, *, now: float | None = None) -> Identity:
        """The identity the token proves; :class:`Unauthenticated` saying why not."""
        cached = self._cache.get(token)
        if cached is not None and (now or time.time()) < cached.expires_at + self.config.leeway_s:
            return cached
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as error:
            raise Unauthenticated(f"malformed bearer token ({error})") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(
                f"token algorithm {alg!r} is not accepted; use one of {', '.join(ALGORITHMS)}"
            )
        key = self._key(token, header)
        c = self.config
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=c.audience,
                issuer=c.issuer,
                leeway=c.leeway_s,
                options={"require": ["exp", "iss", "aud", c.user_claim]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("bearer token has expired; get a new one") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"bearer token is not for audience {c.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(f"bearer token was not issued by {c.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("bearer token signature does not verify") from None
        except jwt.MissingRequiredClaimError as error:
            raise Unauthenticated(f"bearer token lacks the {error.claim!r} claim") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"bearer token refused ({error})") from None
        identity = self._identity(claims)
        with self._lock:
            self._cache[token] = identity
            while len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return identity

    def _identity(self, claims: dict[str, Any]) -> Identity:
        c = self.config
        name = str(claims.get(c.user_claim, ""))
        if not USER_NAME_RE.match(name):
            raise Unauthenticated(
                f"token claim {c.user_claim!r} = {name!r} is not a usable user name (letters, "
                "digits, '.', '_', '@', '+', '-')"
            )
        raw_groups = claims.get(c.groups_claim) or []
        groups = tuple(
            f"group:{g}"
            for g in (raw_groups if isinstance(raw_groups, list) else [raw_groups])
            if isinstance(g, str) and USER_NAME_RE.match(g)
        )
        tenant = claims.get(c.tenant_claim)
        return Identity(
            kind="user",
            name=name,
            source="jwt",
            groups=groups,
            tenant=tenant if isinstance(tenant, str) and USER_NAME_RE.match(tenant) else None,
            expires_at=float(claims["exp"]),
            claims=claims,
        )
