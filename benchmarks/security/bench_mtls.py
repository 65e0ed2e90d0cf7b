"""What mTLS (with the RBAC guard) costs: heartbeat and unary RPC latency vs plaintext.

Two coordinators run as real `infermesh coordinator start` processes on loopback (memory
store): one plaintext, one with certificates from a throwaway cell CA (`--tls-dir`, an admin
given by `--admin`). This process is the client. For each of ``--runs`` rounds, alternating
the two modes, it measures

* **unary**: ``Stats`` round trips on one open channel (``--calls`` of them);
* **heartbeat**: one agent heartbeat on an open Heartbeat stream, until its reply arrives
  (``--calls`` of them), as a registered node (a node certificate in the mTLS case);
* **connect**: a new channel, TLS handshake included, and its first ``Stats`` call
  (``--connects`` of them).

Each row is the median over rounds of each round's median (and p99); *ratio* is mTLS over
plaintext from the same invocation.

    .venv/bin/python benchmarks/security/bench_mtls.py [--runs 5] [--calls 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infermesh.client.coordinator import CoordinatorClient, async_stub, pb
from infermesh.security.ca import default_server_names, init_ca, write_bundle
from infermesh.security.identity import SpiffeId
from infermesh.security.tls import ClientTls, TlsFiles

TD = "bench.example.org"
READY = re.compile(r"coordinator of cell \S+ at (\S+) \((.*)\)")


def _bundle(root: Path, ca, sid: SpiffeId, name: str, server: bool = False) -> TlsFiles:
    dns, ips = default_server_names() if server else ((), ())
    out = write_bundle(root / name, ca.issue(sid, dns=dns, ips=ips))
    return TlsFiles(out / "ca.pem", out / "cert.pem", out / "key.pem")


def start(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    exe = Path(sys.executable).with_name("infermesh")
    cmd = [str(exe), "coordinator", "start", "--port", "0", "--store", "memory://"]
    cmd += ["--log-level", "WARNING", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = READY.search(line)
        if match:
            return proc, match.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"coordinator did not start: {' '.join(cmd)}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def unary(address: str, tls: ClientTls | None, calls: int) -> list[float]:
    with CoordinatorClient(address, tls=tls) as client:
        client.stats()  # connect and warm up
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            client.stats()
            out.append(time.perf_counter() - t0)
    return out


def connect(address: str, tls: ClientTls | None, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with CoordinatorClient(address, tls=tls) as client:
            client.stats()
        out.append(time.perf_counter() - t0)
    return out


async def _heartbeats(address: str, tls: ClientTls | None, node: str, calls: int) -> list[float]:
    channel, stub = async_stub(address, tls=tls)
    spec = pb.NodeSpec(node_id=node, hostname="bench", slots=1, no_gpu_reason="bench", cpus=1)
    reply = await stub.Register(pb.RegisterRequest(spec=spec))
    queue: asyncio.Queue[pb.AgentHeartbeat | None] = asyncio.Queue()

    async def beats():
        while (beat := await queue.get()) is not None:
            yield beat

    call = stub.Heartbeat(beats())
    out: list[float] = []
    try:
        for seq in range(calls + 20):
            t0 = time.perf_counter()
            await queue.put(
                pb.AgentHeartbeat(node_id=node, epoch=reply.epoch, seq=seq + 1, want_ack=True)
            )
            answer = await call.read()
            if answer.ack_seq != seq + 1:
                raise SystemExit(f"heartbeat {seq + 1} got ack {answer.ack_seq}")
            if seq >= 20:  # warm-up beats are not counted
                out.append(time.perf_counter() - t0)
    finally:
        await queue.put(None)
        call.cancel()
        await channel.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--connects", type=int, default=30)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="infermesh-bench-"))
    ca = init_ca(root / "ca", TD)
    server = _bundle(root, ca, SpiffeId.coordinator(TD, "local"), "coordinator", server=True)
    admin = _bundle(root, ca, SpiffeId.user(TD, "local", "bench"), "user")
    nodes = {
        r: _bundle(root, ca, SpiffeId.node(TD, "local", f"n{r}"), f"n{r}") for r in range(args.runs)
    }
    plain, plain_addr = start(["--insecure"])
    secure, secure_addr = start(["--tls-dir", str(server.ca.parent), "--admin", "user:bench"])
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for r in range(args.runs):
            for mode, address, user, node_tls in (
                ("plaintext", plain_addr, None, None),
                ("mTLS", secure_addr, ClientTls(admin, ca=admin.ca), ClientTls(nodes[r])),
            ):
                samples = {
                    "unary Stats": unary(address, user, args.calls),
                    "heartbeat": asyncio.run(_heartbeats(address, node_tls, f"n{r}", args.calls)),
                    "connect + first call": connect(address, user, args.connects),
                }
                for what, values in samples.items():
                    row = (statistics.median(values), pct(values, 0.99))
                    results.setdefault((what, mode), []).append(row)
    finally:
        for proc in (plain, secure):
            proc.terminate()
            proc.wait(10)
    load = os.getloadavg()[0]
    print(
        f"\n{args.runs} rounds x {args.calls} calls ({args.connects} connects); "
        f"load average {load:.2f}; {os.cpu_count()} CPUs\n"
    )
    print(
        "| call | plaintext median µs | mTLS median µs | ratio | plaintext p99 µs | mTLS p99 µs |"
    )
    print("|---|---|---|---|---|---|")
    for what in ("unary Stats", "heartbeat", "connect + first call"):
        plain_rows, tls_rows = results[(what, "plaintext")], results[(what, "mTLS")]
        p50 = statistics.median(m for m, _ in plain_rows) * 1e6
        t50 = statistics.median(m for m, _ in tls_rows) * 1e6
        p99 = statistics.median(p for _, p in plain_rows) * 1e6
        t99 = statistics.median(p for _, p in tls_rows) * 1e6
        print(f"| {what} | {p50:.0f} | {t50:.0f} | {t50 / p50:.2f} | {p99:.0f} | {t99:.0f} |")


if __name__ == "__main__":
    main()
