"""Benchmark ``infermesh-run`` against plain ``torchrun`` on one node with 2 workers.

Both launchers run with ``--standalone --nproc-per-node 2``, interleaved: in run ``i``
torchrun goes first when ``i`` is even and infermesh-run goes first when it is odd, so a slow
phase of a shared machine hits both. Metrics:

(a) launch to first training step: ``t0`` is taken just before the launcher process is
    started; ``workers/first_step.py`` records ``time.time()`` after its first DDP step; the
    value is the latest rank's time minus ``t0``.
(b) wall time of the whole launcher process for ``examples/train_tiny_gpt.py`` with
    ``trainer.max_steps=20`` (a fresh ``trainer.out_dir`` each run).
(c) one restart: ``workers/restart.py`` kills rank 1 with ``os._exit(1)`` at step 5 of
    attempt 0; the value is the latest rank's first completed step of attempt 1 minus the
    failure time (``--max-restarts 1``). torchrun gets ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``
    because torch 2.13's shared c10d store often breaks its restarts.
(d) peak memory of the launcher process tree during (b): every 50 ms the launcher and all its
    descendants are sampled with psutil; the peak of the summed PSS (headline: forked workers
    share pages, PSS splits them fairly) and of the summed RSS are kept.

Every launch is bounded by ``--timeout`` (SIGTERM, then SIGKILL, to the launcher's process
group and its descendants); a failed or timed-out launch is counted, not fatal. The markdown
table goes to stdout, progress to stderr, raw numbers to ``benchmarks/launch/out/results.json``.

Usage (from the repository root)::

    python benchmarks/launch/bench_launch.py --runs 5
    python benchmarks/launch/bench_launch.py --only a,c --runs 7 --timeout 180
    python benchmarks/launch/bench_launch.py --quick      # smoke test: 1 run of (a)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKERS = HERE / "workers"
OUT = HERE / "out"
EXAMPLE = REPO / "examples" / "train_tiny_gpt.py"

LAUNCHERS = ("torchrun", "infermesh-run")
METRICS = ("a", "b", "c", "d")
NPROC = 2
SAMPLE_INTERVAL_S = 0.05
KILL_GRACE_S = 10.0
MIB = 1024.0 * 1024.0
DASH = "\N{EN DASH}"

INFERMESH_ARGS: list[str] = []
"""Extra infermesh-run options from ``--infermesh-args`` (default: none)."""


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    key: str
    """Key of the values in :class:`RunRecord.values` (``a``, ``b``, ``c``, ``d_pss``...)."""
    title: str
    unit: str
    target: float | None
    """Largest acceptable ratio infermesh-run / torchrun; ``None``: report only."""


ROWS: dict[str, list[Row]] = {
    "a": [Row("a", "(a) launch to first training step", "s", 1.0)],
    "b": [Row("b", "(b) wall time, tiny GPT 20 steps", "s", None)],
    "c": [Row("c", "(c) one restart: failure to first step", "s", 0.5)],
    "d": [
        Row("d_pss", "(d) peak PSS of launcher tree (during b)", "MiB", 1.0),
        Row("d_rss", "(d) peak RSS of launcher tree (during b)", "MiB", None),
    ],
}


@dataclass
class ProcResult:
    """Outcome of one launcher process."""

    t0: float
    """``time.time()`` just before the process was started."""
    wall_s: float
    returncode: int | None
    timed_out: bool
    peak_pss_mib: float | None = None
    peak_rss_mib: float | None = None
    samples: int = 0


Outcome = tuple[ProcResult, dict[str, float], str]
"""What a scenario returns: the process result, metric values by key, an error ("" if ok)."""


@dataclass
class RunRecord:
    """One launch of one launcher for one scenario, with the metric values it produced."""

    scenario: str
    """``a``, ``b`` (also feeds ``d``) or ``c``; ``warmup`` for discarded launches."""
    launcher: str
    run: int
    order: int
    """0: this launcher went first in the pair, 1: second."""
    returncode: int | None
    timed_out: bool
    wall_s: float
    ok: bool
    values: dict[str, float] = field(default_factory=dict)
    error: str = ""
    log: str = ""

    @property
    def exit_nonzero_after_metric(self) -> bool:
        """The values were measured, but the launcher then exited non-zero."""
        return self.ok and self.returncode != 0


def launcher_path(name: str) -> str:
    """The console script ``name`` next to this interpreter, else on ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"bench_launch: cannot find {name!r} next to {sys.executable} or on PATH")
    return found


def machine_facts() -> dict[str, str]:
    """CPU model, core count, torch and Python versions and the date (UTC)."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or 0),
        "torch": torch_version,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "platform": platform.platform(),
        "loadavg_start": _loadavg(),
        "commit": _commit(),
    }


def _commit() -> str:
    """``git describe``-style id of the tree under test (``-dirty`` when files changed)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _loadavg() -> str:
    """The 1, 5 and 15 minute load averages (other users share the machine)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def _tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and all its live descendants (empty when ``root`` is gone)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _sample_memory(root: psutil.Process) -> tuple[int, int] | None:
    """Summed (PSS, RSS) in bytes of ``root``'s process tree; ``None`` if nothing was read."""
    pss = rss = 0
    seen = 0
    for proc in _tree(root):
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue  # exited between listing and reading, or a zombie
        pss += getattr(info, "pss", 0)
        rss += info.rss
        seen += 1
    return (pss, rss) if seen else None


def _kill_tree(proc: subprocess.Popen[bytes], known: dict[int, psutil.Process]) -> None:
    """SIGTERM the launcher's process group, then SIGKILL it and every descendant seen."""
    try:
        for p in _tree(psutil.Process(proc.pid)):
            known.setdefault(p.pid, p)
    except psutil.Error:
        pass  # the launcher is already gone
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in known.values():  # workers may sit in process groups of their own
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass
    proc.wait()


def run_launcher(
    cmd: Sequence[str], env: dict[str, str], log: Path, timeout: float, sample: bool
) -> ProcResult:
    """Run ``cmd`` in a new session with output to ``log``; time it, maybe sample memory.

    The wall time runs from just before ``Popen`` to the launcher's exit. With ``sample``, a
    thread sums PSS and RSS over the launcher's process tree every 50 ms and keeps the peaks.
    """
    known: dict[int, psutil.Process] = {}
    peaks = [0, 0]
    count = [0]
    stop = threading.Event()

    def sampler(root: psutil.Process) -> None:
        next_at = time.perf_counter()
        while not stop.is_set():
            got = _sample_memory(root)
            if got is not None:
                peaks[0] = max(peaks[0], got[0])
                peaks[1] = max(peaks[1], got[1])
                count[0] += 1
            for p in _tree(root):
                known.setdefault(p.pid, p)
            next_at += SAMPLE_INTERVAL_S
            stop.wait(max(0.0, next_at - time.perf_counter()))

    with log.open("wb") as out:
        t0 = time.time()
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        thread: threading.Thread | None = None
        if sample:
            thread = threading.Thread(target=sampler, args=(psutil.Process(proc.pid),), daemon=True)
            thread.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_tree(proc, known)
        wall = time.perf_counter() - start
        stop.set()
        if thread is not None:
            thread.join()
    if not timed_out:  # stragglers left in the launcher's own group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return ProcResult(
        t0=t0,
        wall_s=wall,
        returncode=proc.returncode if not timed_out else None,
        timed_out=timed_out,
        peak_pss_mib=peaks[0] / MIB if sample and count[0] else None,
        peak_rss_mib=peaks[1] / MIB if sample and count[0] else None,
        samples=count[0],
    )


def _read_stamps(folder: Path, prefix: str) -> list[float]:
    """The timestamps in ``folder/prefix*`` files (one float per file)."""
    return [float(p.read_text()) for p in sorted(folder.glob(f"{prefix}*")) if ".tmp" not in p.name]


def _base_env(out_dir: Path) -> dict[str, str]:
    """This process's environment minus torch elastic's per-worker variables, plus the output
    directory of the benchmark workers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC_")}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    env["BENCH_OUT_DIR"] = str(out_dir)
    return env


def _command(launcher: str, tmp: Path, extra: Sequence[str], script: Sequence[str]) -> list[str]:
    """The launcher command line; infermesh-run keeps its run directory in ``tmp``."""
    cmd = [launcher_path(launcher), "--standalone", "--nproc-per-node", str(NPROC), *extra]
    if launcher == "infermesh-run":
        cmd[1:1] = ["--run-dir", str(tmp / "runs"), *INFERMESH_ARGS]
    return [*cmd, *script]


def scenario_a(launcher: str, tmp: Path, log: Path, timeout: float) -> Outcome:
    """Metric (a): latest rank's end of first step minus the launcher's start."""
    stamps_dir = tmp / "stamps"
    cmd = _command(launcher, tmp, [], [str(WORKERS / "first_step.py")])
    res = run_launcher(cmd, _base_env(stamps_dir), log, timeout, sample=False)
    stamps = _read_stamps(stamps_dir, "first_step.rank")
    if len(stamps) == NPROC:
        # The metric is complete once every rank has stepped. A non-zero exit after that (gloo's
        # "terminate called without an active exception" at interpreter exit, seen now and then
        # with torchrun's exec'd workers) is kept in the record and flagged in the table.
        return res, {"a": max(stamps) - res.t0}, ""
    return res, {}, f"{len(stamps)}/{NPROC} ranks recorded a first step"


def scenario_b(launcher: str, tmp: Path, log: Path, timeout: float) -> Outcome:
    """Metrics (b) and (d): wall time and peak tree memory of 20 steps of the tiny GPT."""
    script = [
        str(EXAMPLE),
        "trainer.max_steps=20",
        f"trainer.out_dir={tmp / 'tiny_gpt'}",
        "trainer.log_every=10",
        "trainer.ckpt_every=100",
    ]
    cmd = _command(launcher, tmp, [], script)
    res = run_launcher(cmd, _base_env(tmp / "stamps"), log, timeout, sample=True)
    if res.returncode != 0:
        return res, {}, f"launcher exit code {res.returncode}"
    values = {"b": res.wall_s}
    if res.peak_pss_mib is not None and res.peak_rss_mib is not None:
        values.update(d_pss=res.peak_pss_mib, d_rss=res.peak_rss_mib)
    return res, values, ""


def scenario_c(launcher: str, tmp: Path, log: Path, timeout: float) -> Outcome:
    """Metric (c): latest rank's first step of attempt 1 minus rank 1's failure time."""
    stamps_dir = tmp / "stamps"
    env = _base_env(stamps_dir)
    if launcher == "torchrun":
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"  # else 2.13 restarts often fail/hang
    cmd = _command(launcher, tmp, ["--max-restarts", "1"], [str(WORKERS / "restart.py")])
    res = run_launcher(cmd, env, log, timeout, sample=False)
    fail = _read_stamps(stamps_dir, "fail")
    stamps = _read_stamps(stamps_dir, "restart_step.rank")
    if len(fail) == 1 and len(stamps) == NPROC:  # complete; a late non-zero exit is flagged
        return res, {"c": max(stamps) - fail[0]}, ""
    return res, {}, f"failures recorded: {len(fail)}, restarted ranks: {len(stamps)}/{NPROC}"


Scenario = Callable[[str, Path, Path, float], Outcome]
SCENARIOS: dict[str, Scenario] = {"a": scenario_a, "b": scenario_b, "c": scenario_c}


def run_one(scenario: str, launcher: str, run: int, order: int, timeout: float) -> RunRecord:
    """Launch ``launcher`` once for ``scenario`` ("warmup" runs (a)) in a fresh temp dir."""
    name = "a" if scenario == "warmup" else scenario
    log = OUT / "logs" / f"{scenario}-{run}-{launcher}.log"
    with tempfile.TemporaryDirectory(prefix=f"bench-{scenario}-") as tmp:
        res, values, error = SCENARIOS[name](launcher, Path(tmp), log, timeout)
    if error and res.returncode not in (0, None):
        error = f"exit code {res.returncode}; {error}"
    if res.timed_out:
        error = f"timed out after {timeout:g} s; {error}"
    record = RunRecord(
        scenario=scenario,
        launcher=launcher,
        run=run,
        order=order,
        returncode=res.returncode,
        timed_out=res.timed_out,
        wall_s=res.wall_s,
        ok=not error,
        values=values,
        error=error,
        log=str(log.relative_to(REPO)),
    )
    shown = ", ".join(f"{k}={v:.3f}" for k, v in record.values.items()) or error
    if record.exit_nonzero_after_metric:
        shown += f" (launcher exit code {res.returncode} after the step)"
    print(f"  [{scenario} run {run}] {launcher:13s} {res.wall_s:6.2f}s  {shown}", file=sys.stderr)
    return record


def _fmt(values: list[float], digits: int) -> str:
    """``median (min-max)`` with ``digits`` decimals, or ``n/a``."""
    if not values:
        return "n/a"
    med, lo, hi = statistics.median(values), min(values), max(values)
    return f"{med:.{digits}f} ({lo:.{digits}f}{DASH}{hi:.{digits}f})"


def summarize(records: list[RunRecord], metrics: Sequence[str], runs: int) -> list[dict[str, Any]]:
    """Per table row: values, medians, ratio and verdict for both launchers."""
    rows = []
    for metric in metrics:
        for row in ROWS[metric]:
            scenario = "b" if metric == "d" else metric
            per: dict[str, list[float]] = {}
            failed: dict[str, int] = {}
            late: dict[str, int] = {}
            for launcher in LAUNCHERS:
                mine = [r for r in records if r.scenario == scenario and r.launcher == launcher]
                per[launcher] = [r.values[row.key] for r in mine if row.key in r.values]
                failed[launcher] = len(mine) - len(per[launcher])
                late[launcher] = sum(r.exit_nonzero_after_metric for r in mine)
            tr, im = per["torchrun"], per["infermesh-run"]
            ratio = statistics.median(im) / statistics.median(tr) if tr and im else None
            met = None if row.target is None or ratio is None else ratio <= row.target
            rows.append(
                {
                    "key": row.key,
                    "title": row.title,
                    "unit": row.unit,
                    "target": row.target,
                    "torchrun": tr,
                    "infermesh-run": im,
                    "failed": failed,
                    "exit_nonzero_after_metric": late,
                    "runs": runs,
                    "median": {k: statistics.median(v) if v else None for k, v in per.items()},
                    "ratio": ratio,
                    "met": met,
                }
            )
    return rows


def render_table(rows: list[dict[str, Any]], facts: dict[str, str], runs: int) -> str:
    """The markdown table with a header line of machine facts."""
    lines = [
        f"Machine: {facts['cpu']}, {facts['cores']} cores; torch {facts['torch']}; "
        f"Python {facts['python']}; {facts['date']}; load average (1/5/15 min) "
        f"{facts['loadavg_start']} at start, {facts['loadavg_end']} at end; "
        f"commit {facts['commit']}. "
        f"{NPROC} workers (--standalone), {runs} interleaved run(s) per launcher; "
        f"median (min{DASH}max)."
        + (
            f" infermesh-run extra options: {shlex.join(INFERMESH_ARGS)}." if INFERMESH_ARGS else ""
        ),
        "",
        f"| metric | torchrun median (min{DASH}max) | infermesh-run median (min{DASH}max) "
        "| ratio (infermesh/torchrun) | target |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for launcher in LAUNCHERS:
            digits = 0 if row["unit"] == "MiB" else 2
            cell = f"{_fmt(row[launcher], digits)} {row['unit']}" if row[launcher] else "n/a"
            if row["failed"][launcher]:
                cell += f" [{row['failed'][launcher]} of {row['runs']} failed]"
            if row["exit_nonzero_after_metric"][launcher]:
                n = row["exit_nonzero_after_metric"][launcher]
                cell += f" [{n} of {row['runs']} exited non-zero after measuring]"
            cells.append(cell)
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.2f}"
        if row["target"] is None:
            target = "report only"
        else:
            verdict = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
            target = f"<= {row['target']:.1f}: {verdict}"
        lines.append(f"| {row['title']} | {cells[0]} | {cells[1]} | {ratio} | {target} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; ``--quick`` means ``--runs 1 --only a --warmup 0``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per launcher and metric (5)")
    p.add_argument("--only", default="a,b,c,d", help="comma-separated metrics (a,b,c,d)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per launch (120)")
    p.add_argument("--warmup", type=int, default=1, help="discarded (a) launches first (1)")
    p.add_argument(
        "--infermesh-args",
        default="",
        help="extra infermesh-run options; write them with '=', e.g. "
        "--infermesh-args='--preload torch,torch.distributed,torch._dynamo'",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="where the raw numbers go (out/results.json; out/results-quick.json with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: one run of (a), no warmup")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.only, args.warmup = 1, "a", 0
    if args.results is None:
        args.results = OUT / ("results-quick.json" if args.quick else "results.json")
    metrics = [m.strip() for m in args.only.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics:
        p.error(f"--only {args.only!r}: choose from {','.join(METRICS)}")
    if args.runs < 1 or args.timeout <= 0 or args.warmup < 0:
        p.error("--runs must be >= 1, --timeout > 0 and --warmup >= 0")
    args.metrics = [m for m in METRICS if m in metrics]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; 1 if some row has no value for a launcher."""
    args = parse_args(argv)
    INFERMESH_ARGS[:] = shlex.split(args.infermesh_args)
    for name in LAUNCHERS:
        launcher_path(name)
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    for old in (OUT / "logs").glob("*.log"):
        old.unlink()
    facts = machine_facts()
    scenarios = [
        s for s in ("a", "b", "c") if s in args.metrics or (s == "b" and "d" in args.metrics)
    ]
    print(
        f"bench_launch: {facts['cpu']}, {facts['cores']} cores, torch {facts['torch']}; "
        f"scenarios {','.join(scenarios)}, {args.runs} run(s) each",
        file=sys.stderr,
    )
    records: list[RunRecord] = []
    for w in range(args.warmup):
        for launcher in LAUNCHERS:
            records.append(run_one("warmup", launcher, w, LAUNCHERS.index(launcher), args.timeout))
    for i in range(args.runs):
        order = LAUNCHERS if i % 2 == 0 else LAUNCHERS[::-1]
        for scenario in scenarios:
            for pos, launcher in enumerate(order):
                records.append(run_one(scenario, launcher, i, pos, args.timeout))
    facts["loadavg_end"] = _loadavg()
    measured = [r for r in records if r.scenario != "warmup"]
    rows = summarize(measured, args.metrics, args.runs)
    table = render_table(rows, facts, args.runs)
    print(table)
    results = {
        "machine": facts,
        "config": {
            "runs": args.runs,
            "metrics": args.metrics,
            "timeout_s": args.timeout,
            "warmup": args.warmup,
            "nproc_per_node": NPROC,
            "sample_interval_s": SAMPLE_INTERVAL_S,
            "launchers": {name: launcher_path(name) for name in LAUNCHERS},
            "infermesh_args": INFERMESH_ARGS,
        },
        "rows": rows,
        "records": [asdict(r) for r in records],
        "table": table,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"bench_launch: raw numbers in {args.results}", file=sys.stderr)
    return 0 if all(row["torchrun"] and row["infermesh-run"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
