"""The worker template forks workers that behave like fresh interpreters."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from infermesh.train.launcher.zygote import SpawnRequest, Zygote


@pytest.fixture(scope="module")
def zygote():
    z = Zygote.start(preload=["json"])
    z.wait_ready(timeout=60)
    yield z
    z.close()


def _req(tmp_path: Path, body: str, *args: str, **kw) -> SpawnRequest:
    script = tmp_path / "w.py"
    script.write_text(body)
    return SpawnRequest(
        script=str(script),
        args=list(args),
        env={"HELLO": "1", "PATH": "/bin"},
        cwd=str(tmp_path),
        stdout=str(tmp_path / "out.log"),
        stderr=str(tmp_path / "err.log"),
        error_file=str(tmp_path / "error.json"),
        **kw,
    )


def test_forked_worker_sees_its_own_argv_env_cwd_and_main(zygote: Zygote, tmp_path: Path):
    body = (
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv, 'env': dict(os.environ), 'cwd': os.getcwd(),\n"
        "  'name': __name__, 'path0': sys.path[0], 'file': __file__}))\n"
    )
    pid = zygote.spawn(_req(tmp_path, body, "a", "b"))
    assert zygote.returncode(pid, timeout=30) == 0
    seen = json.loads((tmp_path / "out.log").read_text())
    assert seen["argv"] == [str(tmp_path / "w.py"), "a", "b"]
    assert seen["env"] == {"HELLO": "1", "PATH": "/bin"}
    assert seen["cwd"] == str(tmp_path)
    assert seen["name"] == "__main__"
    assert seen["path0"] == str(tmp_path)
    assert seen["file"] == str(tmp_path / "w.py")


def test_exit_codes_pass_through(zygote: Zygote, tmp_path: Path):
    pid = zygote.spawn(_req(tmp_path, "import sys; sys.exit(7)\n"))
    assert zygote.returncode(pid, timeout=30) == 7


def test_an_uncaught_exception_writes_the_error_file_and_exits_1(zygote: Zygote, tmp_path: Path):
    pid = zygote.spawn(_req(tmp_path, "def f():\n    raise KeyError('k')\nf()\n"))
    assert zygote.returncode(pid, timeout=30) == 1
    err = json.loads((tmp_path / "error.json").read_text())["message"]
    assert err["message"] == "KeyError: 'k'"
    assert "zygote.py" not in err["extraInfo"]["py_callstack"]
    assert (
        'File "' + str(tmp_path / "w.py") + '", line 2, in f' in (tmp_path / "err.log").read_text()
    )


def test_a_worker_killed_by_a_signal_reports_minus_the_signal(zygote: Zygote, tmp_path: Path):
    pid = zygote.spawn(_req(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"))
    assert zygote.returncode(pid, timeout=30) == -signal.SIGKILL


def test_workers_lead_their_own_process_group(zygote: Zygote, tmp_path: Path):
    pid = zygote.spawn(_req(tmp_path, "import os; print(os.getpgid(0) == os.getpid())\n"))
    assert zygote.returncode(pid, timeout=30) == 0
    assert (tmp_path / "out.log").read_text().strip() == "True"


def test_closing_the_template_kills_running_workers(tmp_path: Path):
    z = Zygote.start(preload=[])
    pid = z.spawn(_req(tmp_path, "import time\nprint('up', flush=True)\ntime.sleep(600)\n"))
    z.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_failed_preload_is_reported_so_the_launcher_can_fall_back_to_exec():
    from infermesh.train.launcher.zygote import ZygoteUnavailable

    z = Zygote.start(preload=["no_such_module_for_infermesh"])
    try:
        with pytest.raises(
            ZygoteUnavailable, match="No module named 'no_such_module_for_infermesh'"
        ):
            z.wait_ready(timeout=60)
    finally:
        z.close()
