"""The etcd store's own promises: mTLS options, clear errors for bad URLs and unreachable
servers, and several clients (coordinators) sharing one etcd."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from infermesh.control.store import StoreError, open_store
from infermesh.control.store import etcd_testing as et
from infermesh.core.errors import UsageError
from tests.store.conftest import run_async


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[et.EtcdServer]:
    reason = et.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with et.EtcdServer(tls=True) as server:
        yield server


@pytest.mark.slow
def test_mtls_store_works_with_the_client_certificate(tls_etcd: et.EtcdServer) -> None:
    assert tls_etcd.url.startswith("etcd://127.0.0.1:") and "cacert=" in tls_etcd.url

    async def main() -> None:
        async with open_store(tls_etcd.url) as s:
            async with s.watch("tls/") as events:
                rev = await s.put("tls/k", b"secret")
                batch = await asyncio.wait_for(anext(events), 10)
            assert [(ev.kind, ev.kv.mod_revision) for ev in batch] == [("put", rev)]
            lease = await s.grant_lease(5)
            assert await s.keepalive(lease) == 5

    run_async(main())


@pytest.mark.slow
def test_mtls_server_refuses_a_client_without_certificate(tls_etcd: et.EtcdServer) -> None:
    assert tls_etcd.tls is not None
    url = f"etcd://{tls_etcd.endpoint}?cacert={quote(str(tls_etcd.tls.ca))}&timeout=1"

    async def main() -> None:
        async with open_store(url) as s:
            with pytest.raises(StoreError, match=tls_etcd.endpoint):
                await s.put("tls/k", b"v")

    run_async(main())


@pytest.mark.slow
def test_plain_client_cannot_talk_to_a_tls_server(tls_etcd: et.EtcdServer) -> None:
    async def main() -> None:
        async with open_store(f"etcd://{tls_etcd.endpoint}?timeout=1") as s:
            with pytest.raises(StoreError):
                await s.get("tls/k")

    run_async(main())


@pytest.mark.slow
def test_an_unreachable_etcd_gives_a_store_error_naming_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def main() -> None:
        async with open_store(f"etcd://127.0.0.1:{port}?timeout=1.5") as s:
            start = asyncio.get_running_loop().time()
            with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
                await s.put("k", b"v")
            took = asyncio.get_running_loop().time() - start
            assert 1.0 <= took < 5, f"gave up after {took:.1f}s, timeout was 1.5s"

    run_async(main())


@pytest.mark.slow
def test_two_clients_of_one_etcd_see_each_others_changes(etcd_server: et.EtcdServer) -> None:
    async def main() -> None:
        async with open_store(etcd_server.url) as a, open_store(etcd_server.url) as b:
            async with a.watch("shared/") as events:
                ok, rev = await b.compare_and_swap("shared/leader", b"b", expected_mod_revision=0)
                assert ok
                batch = await asyncio.wait_for(anext(events), 10)
            assert [(ev.kv.key, ev.kv.value, ev.kv.mod_revision) for ev in batch] == [
                ("shared/leader", b"b", rev)
            ]
            ok, now = await a.compare_and_swap("shared/leader", b"a", expected_mod_revision=0)
            assert (ok, now) == (False, rev)
            await a.delete_prefix("shared/")

    run_async(main())


@pytest.mark.slow
def test_a_watch_survives_an_etcd_restart_without_losing_events() -> None:
    reason = et.unavailable_reason()
    if reason:
        pytest.skip(reason)

    async def main(server: et.EtcdServer) -> None:
        async with open_store(server.url) as s, s.watch("r/") as events:
            r1 = await s.put("r/before", b"1")
            first = await asyncio.wait_for(anext(events), 10)
            await asyncio.to_thread(server.restart)
            r2 = await s.put("r/after", b"2")
            r3 = await s.put("r/after", b"3")
            got = first
            while len(got) < 3:
                got = got + await asyncio.wait_for(anext(events), 20)
        assert [(ev.kv.key, ev.kv.mod_revision) for ev in got] == [
            ("r/before", r1),
            ("r/after", r2),
            ("r/after", r3),
        ]

    with et.EtcdServer() as server:
        run_async(main(server))


@pytest.mark.slow
def test_ranges_larger_than_a_page_are_read_whole_at_one_revision(
    etcd_server: et.EtcdServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infermesh.control.store import etcd_store

    monkeypatch.setattr(etcd_store, "RANGE_PAGE", 3)

    async def main() -> None:
        async with open_store(etcd_server.url) as s:
            for i in range(10):
                await s.put(f"paged/{i}", str(i).encode())
            rev = await s.revision()
            kvs, at = await s.range("paged/")
            assert [kv.value for kv in kvs] == [str(i).encode() for i in range(10)]
            assert at == rev
            kvs, _ = await s.range("paged/", limit=7)
            assert [kv.key for kv in kvs] == [f"paged/{i}" for i in range(7)]
            await s.delete_prefix("paged/")

    run_async(main())


@pytest.mark.slow
def test_a_range_too_big_for_one_message_is_split(etcd_server: et.EtcdServer) -> None:
    async def main() -> None:
        async with open_store(etcd_server.url) as s:
            big = b"x" * (1 << 20)  # 6 MiB in all: over gRPC's 4 MiB per message
            for i in range(6):
                await s.put(f"big/{i}", big)
            kvs, _ = await s.range("big/")
            assert [kv.key for kv in kvs] == [f"big/{i}" for i in range(6)]
            assert all(kv.value == big for kv in kvs)
            await s.delete_prefix("big/")

    run_async(main())


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("?tls=1", "unknown option"),
        ("?cert=/x.pem", "give both cert= and key="),
        ("?cert=/x.pem&key=/y.pem", "needs cacert="),
        ("?cacert=/no/such/ca.pem", "cannot read cacert="),
        ("?timeout=soon", "not a number of seconds"),
        ("?timeout=0", "not a number of seconds"),
    ],
)
def test_bad_etcd_url_options_are_refused(query: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        open_store(f"etcd://127.0.0.1:2379{query}")


@pytest.mark.parametrize(
    ("netloc", "needle"),
    [
        ("127.0.0.1", "is not host:port"),
        ("127.0.0.1:99999", "is not host:port"),
        ("[::1]:2379", "IPv4"),
        ("", "expected etcd://"),
    ],
)
def test_bad_etcd_endpoints_are_refused(netloc: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        open_store(f"etcd://{netloc}")


def test_make_tls_files_writes_a_usable_pki(tmp_path: Path) -> None:
    import ssl

    files = et.make_tls_files(tmp_path / "pki")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.server_cert, files.server_key)
    client = ssl.create_default_context(cafile=str(files.ca))
    client.load_cert_chain(files.client_cert, files.client_key)
    assert oct(files.client_key.stat().st_mode & 0o777) == "0o600"
