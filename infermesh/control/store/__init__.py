"""The coordinator's state store (etcd semantics) and :func:`open_store` to pick one by URL.

=====================================================  ==========================================
URL                                                    store
=====================================================  ==========================================
``memory://``                                          in this process only (unit tests)
``sqlite:///var/lib/infermesh/state.db``               one SQLite file in WAL mode (the default)
``etcd://host:2379[,host2:2379][?cacert=&cert=&key=]``  an etcd cluster, optionally over mTLS
=====================================================  ==========================================
"""

from __future__ import annotations

import importlib

from infermesh.control.store.api import (
    CompactedError,
    Compare,
    KeyValue,
    LeaseNotFound,
    Op,
    Store,
    StoreClosed,
    StoreError,
    TxnResult,
    WatchEvent,
)
from infermesh.core.errors import UsageError

__all__ = [
    "STORE_SCHEMES",
    "CompactedError",
    "Compare",
    "KeyValue",
    "LeaseNotFound",
    "Op",
    "Store",
    "StoreClosed",
    "StoreError",
    "TxnResult",
    "WatchEvent",
    "open_store",
]

STORE_SCHEMES: dict[str, str] = {
    "memory": "infermesh.control.store.memory_store",
    "sqlite": "infermesh.control.store.sqlite_store",
    "etcd": "infermesh.control.store.etcd_store",
}
"""URL scheme -> module with a ``from_url(url) -> Store`` function (imported on first use)."""

_FORMS = (
    "memory://, sqlite:///path/to/state.db, "
    "etcd://host:port[,host:port...][?cacert=CA.pem&cert=CLIENT.pem&key=CLIENT-KEY.pem]"
)


def open_store(url: str) -> Store:
    """Open the store named by ``url`` (see the module docstring for the forms).

    Local stores open their file at once (so a bad path fails here); the etcd store connects
    on its first call. Raises :class:`~infermesh.core.errors.UsageError` for a malformed URL.
    """
    if not isinstance(url, str):
        raise UsageError(f"store URL must be a string, got {url!r}; accepted forms: {_FORMS}")
    scheme, sep, _rest = url.partition("://")
    module = STORE_SCHEMES.get(scheme) if sep else None
    if module is None:
        raise UsageError(
            f"unsupported store URL {url!r}; accepted forms: {_FORMS} "
            f"(known schemes: {', '.join(STORE_SCHEMES)})"
        )
    store: Store = importlib.import_module(module).from_url(url)
    return store
