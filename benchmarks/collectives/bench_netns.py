"""Measured, not only modelled: each collective plan on an emulated two-node cluster.

Two network namespaces are the two "nodes", joined by a veth pair whose both ends are shaped
by a ``tbf`` qdisc (default 1 Gbit/s); the two ranks of a "node" talk over its loopback.
``infermesh-run`` starts the example job (4 ranks, 2 per "node", gloo) once per plan: each
fixed plan (``INFERMESH_COLLECTIVE_PLAN``) and the planner (cost model ``veth-1g`` or
``veth-100m`` to match ``--rate``, re-planning from measurements). It prints a Markdown
table: steady-state ms/step, speed-up over flat ring, the hook's measured collective ms/step
(and its split by group), the cost model's prediction with the profile's links and with the
links fitted from the run's own timings; then, as the model's figure of merit, every plan
predicted from the links each run fitted, against the time that plan measured in its own run
(out of sample except on the diagonal). It prints the load average before and after.

Needs root (namespaces, tc); without it the script says so and exits 0.

    sudo .venv/bin/python benchmarks/collectives/bench_netns.py [--rate 1gbit] [--steps 150]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train_tiny_gpt.py"
BIN = Path(sys.executable).parent
NS = ("imesh-n0", "imesh-n1")
DEV = ("imesh-v0", "imesh-v1")
ADDR = ("10.77.0.1", "10.77.0.2")
PROFILE_OF_RATE = {"1gbit": "veth-1g", "100mbit": "veth-100m"}
PLANS = ("ring/none", "hierarchical/none", "hierarchical_leader/none", "planner")
STEP_RE = re.compile(r"step (\d+)/\d+ loss [\d.]+ [\d.]+k tok/s ([\d.]+) ms/step")
COMM_RE = re.compile(
    r"steps \d+-\d+: (\S+) collectives ([\d.]+) ms/step measured \(([^)]*)\), ([\d.]+) predicted"
)
PROFILE_RE = re.compile(r"step 0: collective plan v1 \S+, predicted ([\d.]+) ms/step")
LINKS_RE = re.compile(r"step \d+: links (.*?) \(\d+ samples\); model ms/step: (.*)")


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


def teardown() -> None:
    """Remove the namespaces (and with them the veth pair); ignore what is not there."""
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def setup(rate: str) -> None:
    """Two namespaces, a veth pair between them, tbf at ``rate`` on both ends."""
    teardown()
    for ns in NS:
        _sh("ip", "netns", "add", ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
    _sh("ip", "link", "add", DEV[0], "netns", NS[0], "type", "veth", "peer", "name", DEV[1],
        "netns", NS[1])  # fmt: skip
    for ns, dev, addr in zip(NS, DEV, ADDR, strict=True):
        _sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
        _sh("ip", "-n", ns, "link", "set", dev, "up")
        _sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
            "rate", rate, "burst", "256kb", "latency", "100ms")  # fmt: skip


def run_plan(
    plan: str, steps: int, work: Path, port: int, overrides: list[str], profile: str
) -> dict[str, str]:
    """Train with ``plan`` on both "nodes"; return the parsed figures of node 0's rank 0."""
    out_dir = work / plan.replace("/", "_")
    procs = []
    for node in (0, 1):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "TORCHELASTIC"))}
        env.update(GLOO_SOCKET_IFNAME=DEV[node], OMP_NUM_THREADS="1",
                   INFERMESH_LINK_PROFILE=profile)  # fmt: skip
        env.pop("INFERMESH_COLLECTIVE_PLAN", None)
        if plan != "planner":
            env["INFERMESH_COLLECTIVE_PLAN"] = plan
        cmd = [
            "ip", "netns", "exec", NS[node], str(BIN / "infermesh-run"),
            "--nnodes", "2", "--node-rank", str(node), "--master-addr", ADDR[0],
            "--master-port", str(port), "--nproc-per-node", "2",
            "--run-dir", str(work / "runs"), str(SCRIPT), *overrides,
            f"trainer.max_steps={steps}", f"trainer.ckpt_every={steps}",
            f"trainer.log_every={steps // 3}", f"trainer.out_dir={out_dir}",
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{plan}: a node failed:\n{outputs[0][-3000:]}\n{outputs[1][-3000:]}")
    step_ms = STEP_RE.findall(outputs[0])
    comm = COMM_RE.findall(outputs[0])
    profile = PROFILE_RE.findall(outputs[0])
    links = LINKS_RE.findall(outputs[0])
    plans = re.findall(r"collective plan (v\d+ \S+)", outputs[0])
    return {
        "plan": plan,
        "ran": comm[-1][0] if comm else "?",
        "ms_step": step_ms[-1][1],
        "comm_ms": comm[-1][1] if comm else "?",
        "groups": comm[-1][2] if comm else "?",
        "profile_ms": profile[0] if profile and len(plans) == 1 else "?",
        "predicted_ms": comm[-1][3] if comm else "?",
        "links": links[-1][0] if links else "?",
        "model": dict(_pairs(links[-1][1])) if links else {},
        "history": ", ".join(plans),
    }


def _pairs(text: str) -> list[tuple[str, float]]:
    """``ring/none/3.1MiB 41.20, hierarchical/none/3.1MiB 43.10`` -> [(label, ms), ...]."""
    out = []
    for part in text.split(", "):
        label, _, ms = part.rpartition(" ")
        out.append((label, float(ms)))
    return out


def _err(predicted: str | float, measured: str | float) -> str:
    try:
        return f"{float(predicted) / float(measured) - 1:+.0%}"
    except ValueError:
        return "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate", default="1gbit", help="tbf rate between the nodes: 1gbit, 100mbit"
    )
    parser.add_argument("--steps", type=int, default=150, help="training steps per plan")
    parser.add_argument("--plans", default=",".join(PLANS), help="comma-separated plans")
    parser.add_argument("--port", type=int, default=29680, help="first master port")
    parser.add_argument("overrides", nargs="*", help="extra job overrides, e.g. data.batch_size=4")
    args = parser.parse_args()
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")):
        print("bench_netns: skipped: needs root and the ip and tc commands (iproute2)")
        return 0
    overrides = ["data.max_chars=200000", "data.batch_size=4", *args.overrides]
    profile = PROFILE_OF_RATE.get(args.rate)
    if profile is None:
        known = ", ".join(PROFILE_OF_RATE)
        parser.error(f"--rate {args.rate}: no link profile for it; use one of {known}")
    setup(args.rate)
    load_before = os.getloadavg()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, plan in enumerate(args.plans.split(",")):
                rows.append(
                    run_plan(plan, args.steps, Path(tmp), args.port + i, overrides, profile)
                )
                print(f"# {rows[-1]}", file=sys.stderr, flush=True)
    finally:
        teardown()
    load_after = os.getloadavg()
    ring = next((float(r["ms_step"]) for r in rows if r["plan"] == "ring/none"), None)
    print(f"\n{args.rate} between 2 nodes x 2 ranks (gloo), {args.steps} steps, "
          f"job overrides: {' '.join(overrides)}; load average (1, 5, 15 min) "
          f"{' '.join(f'{x:.2f}' for x in load_before)} before, "
          f"{' '.join(f'{x:.2f}' for x in load_after)} after\n")  # fmt: skip
    print(
        "| plan | ran | ms/step (last window) | vs ring | collectives ms/step (by group) "
        "| profile model | error | fitted model | error |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = f"{ring / float(r['ms_step']):.2f}x" if ring else "-"
        print(f"| {r['plan']} | {r['ran']} | {r['ms_step']} | {speedup} | {r['comm_ms']} "
              f"({r['groups']}) | {r['profile_ms']} | {_err(r['profile_ms'], r['comm_ms'])} "
              f"| {r['predicted_ms']} | {_err(r['predicted_ms'], r['comm_ms'])} |")  # fmt: skip
    planner = next((r for r in rows if r["plan"] == "planner"), None)
    if planner:
        print(f"\nplanner's plans: {planner['history']}")
    measured = {r["ran"]: r["comm_ms"] for r in rows if r["plan"] != "planner"}
    print("\nModel error by plan (predicted from the links a run fitted / measured - 1):\n")
    print("| links fitted in run | fitted links | " + " | ".join(measured) + " |")
    print("|---|---|" + "---|" * len(measured))
    for r in rows:
        cells = [
            f"{r['model'][label]:.1f} ({_err(r['model'][label], ms)})" if label in r["model"]
            else "-"
            for label, ms in measured.items()
        ]  # fmt: skip
        print(f"| {r['plan']} | {r['links']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
