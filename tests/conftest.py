"""Fixtures shared by several test packages."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def _etcd_server() -> Iterator[object]:
    """A real etcd on loopback; skipped without the binary, except under CI (.ci/run)."""
    from infermesh.control.store import etcd_testing

    reason = etcd_testing.unavailable_reason()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the etcd tests, but {reason}")
    if reason:
        pytest.skip(reason)
    with etcd_testing.EtcdServer() as server:
        yield server


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[object]:
    """One etcd for the session (tests use their own key prefixes)."""
    yield from _etcd_server()


@pytest.fixture
def fresh_etcd_server() -> Iterator[object]:
    """An etcd of this test's own (for tests whose keys would collide, e.g. a whole cell)."""
    yield from _etcd_server()
