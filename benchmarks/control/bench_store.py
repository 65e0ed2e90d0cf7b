"""How fast is each Store: sequential puts/s, compare-and-swap/s, and one range over 100k keys.

    .venv/bin/python benchmarks/control/bench_store.py                    # memory, sqlite, etcd
    .venv/bin/python benchmarks/control/bench_store.py --stores sqlite,memory --repeat 5

Every store runs the same steps in this one invocation (etcd: a real server from
``etcd_testing`` on loopback, fresh data directory). Each measurement is repeated
``--repeat`` times and the median is printed, with its ratio to the memory store of the same
invocation. Puts and CAS are issued one at a time from one task (latency-bound, like a
coordinator's writes); the 100k keys for the range are loaded in transactions of 128 puts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from infermesh.control.store import Op, Store, etcd_testing, open_store

BATCH = 128  # etcd's default limit of operations per transaction


async def puts_per_s(store: Store, n: int, tag: str) -> float:
    start = time.perf_counter()
    for i in range(n):
        await store.put(f"bench/put/{tag}/{i:08d}", b"x" * 100)
    return n / (time.perf_counter() - start)


async def cas_per_s(store: Store, n: int, tag: str) -> float:
    key = f"bench/cas/{tag}"
    rev = await store.put(key, b"0")
    start = time.perf_counter()
    for i in range(n):
        ok, rev = await store.compare_and_swap(key, str(i).encode(), expected_mod_revision=rev)
        if not ok:
            raise RuntimeError(f"uncontended CAS failed at step {i}")
    return n / (time.perf_counter() - start)


async def load(store: Store, keys: int) -> None:
    for base in range(0, keys, BATCH):
        ops = [
            Op.put(f"bench/range/{i:08d}", b"v" * 100) for i in range(base, min(base + BATCH, keys))
        ]
        await store.txn([], ops)


async def range_s(store: Store, keys: int) -> float:
    start = time.perf_counter()
    kvs, _ = await store.range("bench/range/")
    took = time.perf_counter() - start
    if len(kvs) != keys:
        raise RuntimeError(f"range returned {len(kvs)} keys, expected {keys}")
    return took


async def measure(url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"puts/s": [], "CAS/s": [], "range 100k (s)": []}
    async with open_store(url) as store:
        await store.delete_prefix("bench/")
        load_start = time.perf_counter()
        await load(store, args.keys)
        print(f"  loaded {args.keys} keys in {time.perf_counter() - load_start:.1f}s", flush=True)
        for rep in range(args.repeat):
            out["puts/s"].append(await puts_per_s(store, args.ops, str(rep)))
            out["CAS/s"].append(await cas_per_s(store, args.ops, str(rep)))
            out["range 100k (s)"].append(await range_s(store, args.keys))
    return out


@contextlib.contextmanager
def store_url(kind: str, workdir: Path) -> Iterator[str]:
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite://{workdir / 'state.db'}"
    elif kind == "etcd":
        reason = etcd_testing.unavailable_reason()
        if reason:
            raise SystemExit(f"bench_store: {reason} (or pass --stores memory,sqlite)")
        with etcd_testing.EtcdServer(workdir=workdir / "etcd") as server:
            yield server.url
    else:
        raise SystemExit(f"bench_store: unknown store {kind!r}; known: memory, sqlite, etcd")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="memory,sqlite,etcd")
    parser.add_argument("--keys", type=int, default=100_000, help="keys for the range test")
    parser.add_argument("--ops", type=int, default=2000, help="puts and CAS per repetition")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.stores.split(",") if k.strip()]
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        for kind in kinds:
            print(f"{kind}:", flush=True)
            workdir = Path(tmp) / kind
            workdir.mkdir()
            with store_url(kind, workdir) as url:
                samples = asyncio.run(measure(url, args))
            results[kind] = {name: statistics.median(vals) for name, vals in samples.items()}
    base = results.get("memory")
    print(f"\nmedian of {args.repeat} runs; {args.ops} ops per run; range over {args.keys} keys")
    print("| store | puts/s | CAS/s | range 100k (s) | puts vs memory | range vs memory |")
    print("|---|---|---|---|---|---|")
    for kind, r in results.items():
        put_ratio = f"{r['puts/s'] / base['puts/s']:.3f}x" if base else "-"
        range_ratio = f"{r['range 100k (s)'] / base['range 100k (s)']:.1f}x" if base else "-"
        print(
            f"| {kind} | {r['puts/s']:,.0f} | {r['CAS/s']:,.0f} | {r['range 100k (s)']:.3f} "
            f"| {put_ratio} | {range_ratio} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
