"""infermesh-run end to end on CPU with gloo: parity with torchrun and torchrun's failures fixed.

Each test launches real worker processes through the console script, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.launcher.conftest import BIN, launcher_env, run, script

pytestmark = pytest.mark.slow

# Values that legitimately differ between two launches (ports, ids, paths), and the one
# deliberate difference: workers host a fresh store each round instead of sharing the
# agent's (TORCHELASTIC_USE_AGENT_STORE=False), which is what makes restarts reliable.
DIFFERENT_BY_RUN = {"MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_ERROR_FILE", "_"}
DELIBERATE = {"TORCHELASTIC_USE_AGENT_STORE": ("True", "False")}
ADDED = {"INFERMESH_HEARTBEAT_FILE"}


def _dumps(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(out.glob("env_*.json"))}


@pytest.mark.parametrize("worker_start", ["fork", "exec"])
@pytest.mark.parametrize("nodes_args", [["--standalone"], ["--nnodes", "1", "--master-port", "0"]])
def test_workers_get_the_same_environment_as_under_torchrun(
    tmp_path: Path, worker_start: str, nodes_args: list[str]
):
    ours, theirs = tmp_path / "ours", tmp_path / "torchrun"
    ours.mkdir()
    theirs.mkdir()
    common = [*nodes_args, "--nproc-per-node", "2", "--max-restarts", "1"]
    r = run("torchrun", *common, script("envdump.py"), str(theirs), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run(
        "infermesh-run",
        *common,
        "--worker-start",
        worker_start,
        script("envdump.py"),
        str(ours),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    a, b = _dumps(theirs), _dumps(ours)
    assert sorted(a) == sorted(b) == ["env_0.json", "env_1.json"]
    for name in a:
        ta, tb = a[name], b[name]
        assert ta["argv"][0] == tb["argv"][0] and len(ta["argv"]) == len(tb["argv"])
        for key in ("path0", "name", "file", "cwd"):
            assert ta[key] == tb[key], key
        ea, eb = ta["env"], tb["env"]
        assert set(eb) - set(ea) == ADDED
        assert set(ea) - set(eb) == set()
        for key in set(ea) - DIFFERENT_BY_RUN:
            if key in DELIBERATE:
                assert (ea[key], eb[key]) == DELIBERATE[key]
            else:
                assert ea[key] == eb[key], f"{key}: torchrun {ea[key]!r}, infermesh {eb[key]!r}"
        assert Path(eb["TORCHELASTIC_ERROR_FILE"]).is_absolute()
        assert "/runs/" in eb["TORCHELASTIC_ERROR_FILE"]


RENDEZVOUS = {
    "standalone": ["--standalone"],
    "static": ["--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", "0"],
    "infermesh": ["--nnodes", "1", "--rdzv-backend", "infermesh", "--rdzv-id", "restart"],
}


@pytest.mark.parametrize(
    ("rendezvous", "runs"), [("standalone", 10), ("static", 3), ("infermesh", 3)]
)
def test_restart_after_a_worker_failure_succeeds_every_time(
    tmp_path: Path, rendezvous: str, runs: int
):
    """torchrun 2.13 fails most of these restarts with gloo 'Connection refused' or hangs."""
    for i in range(runs):
        r = run(
            "infermesh-run",
            *RENDEZVOUS[rendezvous],
            "--nproc-per-node",
            "2",
            "--max-restarts",
            "2",
            "--run-dir",
            f"runs{i}",
            script("fail_once.py"),
            cwd=tmp_path,
        )
        assert r.returncode == 0, f"run {i}: {r.stderr}"
        assert "rank 0 attempt 1 ok" in r.stdout and "rank 1 attempt 1 ok" in r.stdout
        assert "Connection refused" not in r.stderr
        assert "1 restart(s)" in r.stderr


def test_plain_torchrun_restarts_reliably_with_the_infermesh_backend(tmp_path: Path):
    """The entry point registers the fixed rendezvous for torchrun users too."""
    r = run(
        "torchrun",
        "--nnodes",
        "1",
        "--rdzv-backend",
        "infermesh",
        "--rdzv-id",
        "tr-restart",
        "--rdzv-conf",
        f"file={tmp_path / 'rdzv'}",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "2",
        script("fail_once.py"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "rank 1 attempt 1 ok" in r.stdout
    assert "Connection refused" not in r.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"launcher exited early ({proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not appear within {timeout}s")
        time.sleep(0.05)


def test_scale_up_from_one_to_two_nodes(tmp_path: Path):
    """A second launcher joins a running --nnodes 1:2 job; torchrun 2.13 dies after 60 s."""
    port = _free_port()
    out = tmp_path / "out"
    out.mkdir()

    def node(addr: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                str(BIN / "infermesh-run"),
                "--nnodes",
                "1:2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "scale-up-test",
                "--local-addr",
                addr,
                "--rdzv-conf",
                "last_call_timeout=1",
                script("elastic_world.py"),
                str(out),
                "2",
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=launcher_env(),
        )

    first = node("127.0.0.1")
    try:
        _wait_for(out / "world_1_rank_0", first, timeout=60)
        second = node("127.0.0.2")
        try:
            out2, err2 = second.communicate(timeout=90)
            out1, err1 = first.communicate(timeout=30)
        finally:
            second.kill()
    finally:
        first.kill()
    assert second.returncode == 0, err2
    assert first.returncode == 0, err1
    assert (out / "world_2_rank_0").exists() and (out / "world_2_rank_1").exists()
    assert "of 2 ok" in out1 and "of 2 ok" in out2


def test_a_busy_master_port_is_a_clear_error_and_nothing_starts(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run(
            "infermesh-run",
            "--nnodes",
            "2",
            "--node-rank",
            "0",
            "--master-port",
            str(port),
            script("envdump.py"),
            str(tmp_path),
            cwd=tmp_path,
            timeout=30,
        )
    assert r.returncode == 2
    assert f"port {port} (--master-port) is already in use" in r.stderr
    assert r.stderr.count("infermesh-run: error:") == 1
    assert not list(tmp_path.glob("env_*.json"))


def test_a_busy_rendezvous_port_is_a_clear_error(tmp_path: Path, foreign_listener):
    _, port = foreign_listener
    r = run(
        "infermesh-run",
        "--nnodes",
        "1:2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        script("envdump.py"),
        str(tmp_path),
        cwd=tmp_path,
        timeout=30,
    )
    assert r.returncode == 2
    assert f"127.0.0.1:{port} (--rdzv-endpoint) is already in use" in r.stderr
    assert not list(tmp_path.glob("env_*.json"))


def test_an_unnamed_port_is_chosen_free_even_when_29500_is_busy(tmp_path: Path):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", 29500))
            s.listen()
        except OSError:
            pass  # already busy: the condition under test holds anyway
        r = run(
            "infermesh-run",
            "--nproc-per-node",
            "2",
            script("envdump.py"),
            str(tmp_path),
            cwd=tmp_path,
        )
    assert r.returncode == 0, r.stderr
    env = json.loads((tmp_path / "env_0.json").read_text())["env"]
    assert env["MASTER_PORT"] != "29500"


def test_a_hung_worker_group_is_detected_and_restarted(tmp_path: Path):
    r = run(
        "infermesh-run",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "--hang-timeout",
        "2",
        "--run-dir",
        "runs",
        script("hang_once.py"),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "attempt 1 finished" in r.stdout
    assert "hung: no progress heartbeat" in r.stderr
    (summary,) = tmp_path.glob("runs/*/*/summary.json")
    data = json.loads(summary.read_text())
    assert data["status"] == "succeeded" and data["restarts"] == 1
    assert {f["reason"].split(":")[0] for f in data["failures"]} == {"hung"}
    # the stack of the hung worker was dumped into its log before it was stopped
    stderr_log = next(summary.parent.glob("attempt_0/rank_0/stderr.log")).read_text()
    assert "hang_once.py" in stderr_log and "thread 0x" in stderr_log.lower()
    assert "hang_once.py" in data["failures"][0]["traceback"]


def test_a_hang_with_no_restarts_left_fails_with_a_summary(tmp_path: Path):
    r = run(
        "infermesh-run",
        "--nproc-per-node",
        "1",
        "--hang-timeout",
        "1.5",
        script("hang_once.py"),
        "always",
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert re.search(
        r"FAILED after [\d.]+s: rank 0 \(local 0\) on node \S+ hung: no progress "
        r"heartbeat for [\d.]+ s \(--hang-timeout 1.5\) in attempt 0",
        r.stderr,
    )
    assert 'File "' + script("hang_once.py") in r.stderr


@pytest.mark.parametrize("worker_start", ["fork", "exec"])
def test_a_failure_summary_names_rank_node_exit_code_and_first_traceback(
    tmp_path: Path, worker_start: str
):
    r = run(
        "infermesh-run",
        "--nproc-per-node",
        "2",
        "--local-addr",
        "127.0.0.1",
        "--worker-start",
        worker_start,
        script("raise_on_rank1.py"),
        cwd=tmp_path,
    )
    assert r.returncode == 1
    summary = [line for line in r.stderr.splitlines() if " FAILED after " in line]
    assert len(summary) == 1
    assert summary[0].endswith(
        "rank 1 (local 1) on node 127.0.0.1 exit code 1 in attempt 0: "
        "ValueError: bad batch at step 3"
    )
    tail = r.stderr[r.stderr.index(summary[0]) :]
    assert f'File "{script("raise_on_rank1.py")}", line 8, in load_batch' in tail
    assert "/attempt_0/rank_1" in tail
    (path,) = tmp_path.glob("runs/*/127.0.0.1/summary.json")
    root = json.loads(path.read_text())["root_cause"]
    assert (root["rank"], root["exitcode"], root["node"]) == (1, 1, "127.0.0.1")


def test_worker_lines_carry_node_and_ranks_and_logs_go_under_the_run_dir(tmp_path: Path):
    r = run(
        "infermesh-run",
        "--nproc-per-node",
        "2",
        "--local-addr",
        "127.0.0.1",
        "--run-dir",
        "myruns",
        script("envdump.py"),
        str(tmp_path),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line]
    assert sorted(lines) == [
        "[127.0.0.1 r0 l0]: hello from rank 0",
        "[127.0.0.1 r1 l1]: hello from rank 1",
    ]
    for rank in (0, 1):
        (log,) = tmp_path.glob(f"myruns/*/127.0.0.1/attempt_0/rank_{rank}/stdout.log")
        assert log.read_text() == f"hello from rank {rank}\n"


def test_bad_input_from_the_console_script_exits_2_with_one_line(tmp_path: Path):
    r = run("infermesh-run", "--nnodes", "3:2", "train.py", cwd=tmp_path, timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "minimum 3 is larger than maximum 2" in r.stderr
    assert not (tmp_path / "runs").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _start_sleepers(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [str(BIN / "infermesh-run"), "--nproc-per-node", "2", script("sleeper.py"), str(tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=launcher_env(),
    )
    for rank in (0, 1):
        _wait_for(tmp_path / f"pid_{rank}", proc, timeout=60)
    return proc, [int((tmp_path / f"pid_{r}").read_text()) for r in (0, 1)]


def _wait_gone(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def test_sigterm_stops_the_workers_and_exits_143(tmp_path: Path):
    proc, pids = _start_sleepers(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "interrupted by SIGTERM" in err
    assert _wait_gone(pids) == []


def test_a_killed_launcher_leaves_no_orphaned_workers(tmp_path: Path):
    """torchrun killed with SIGKILL leaves its workers running; the template cleans up."""
    proc, pids = _start_sleepers(tmp_path)
    proc.kill()
    proc.communicate(timeout=30)
    assert _wait_gone(pids) == []


def test_a_module_run_with_dash_m_sees_what_torchrun_gives_it(tmp_path: Path):
    repo = Path(__file__).resolve().parents[2]
    seen = {}
    for tool in ("torchrun", "infermesh-run"):
        out = tmp_path / tool
        out.mkdir()
        r = run(
            tool,
            "--nproc-per-node",
            "2",
            "-m",
            "tests.launcher.scripts.envdump",
            str(out),
            cwd=repo,
            env=launcher_env(PYTHONPATH=str(repo)),
        )
        assert r.returncode == 0, r.stderr
        seen[tool] = json.loads((out / "env_1.json").read_text())
    a, b = seen["torchrun"], seen["infermesh-run"]
    for key in ("path0", "name", "file", "cwd"):
        assert a[key] == b[key], key
    assert a["argv"][0] == b["argv"][0]


def test_a_rendezvous_that_never_fills_times_out_with_advice(tmp_path: Path):
    port = _free_port()
    r = run(
        "infermesh-run",
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "lonely",
        "--rdzv-conf",
        "join_timeout=2",
        script("envdump.py"),
        str(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )
    assert r.returncode == 1
    assert (
        "error: rendezvous 'lonely' timed out: fewer than 2 node(s) joined; start the other "
        "nodes, or raise --rdzv-conf join_timeout=SECONDS"
    ) in r.stderr
    (summary,) = tmp_path.glob("runs/lonely/*/summary.json")
    assert json.loads(summary.read_text())["status"].startswith("error: rendezvous")


def test_a_template_that_cannot_preload_falls_back_to_exec_workers(tmp_path: Path):
    r = run(
        "infermesh-run",
        "--nproc-per-node",
        "2",
        "--preload",
        "no_such_module_for_infermesh",
        script("envdump.py"),
        str(tmp_path),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "worker template unavailable" in r.stderr and "starting workers with exec" in r.stderr
    assert sorted(p.name for p in tmp_path.glob("env_*.json")) == ["env_0.json", "env_1.json"]
