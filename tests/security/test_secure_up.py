"""``infermesh up --secure``: a local cell with mTLS, its certificates made for the user."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cell.cellproc import BIN, wait_for


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "infermesh"), *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_secure_local_cell_runs_its_users_job_and_refuses_plaintext(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    cmd = [str(BIN / "infermesh"), "up", "--secure", "--user", "ada", "--agents", "1"]
    cmd += ["--port", "0", "--state-dir", str(tmp_path / "cell"), "--ready-file", str(ready)]
    up = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        line = up.stdout.readline()
        wait_for(ready.exists, 30, "the cell")
        address = ready.read_text().strip()
        bundle = tmp_path / "cell" / "certs" / "user-ada"
        assert f"(mTLS, loopback only; you are admin user:ada: add --tls-dir {bundle}" in line
        who = _cli("whoami", "--coordinator", address, "--tls-dir", str(bundle), cwd=tmp_path)
        assert who.returncode == 0 and "roles     admin" in who.stdout, who.stderr
        plain = _cli("nodes", "ls", "--coordinator", address, cwd=tmp_path)
        assert plain.returncode == 1

        # the agents' bundles reach the job's launchers: a job runs through the rendezvous
        script = tmp_path / "hello.py"
        script.write_text("import os\nprint('hello from rank', os.environ['RANK'])\n")
        run = subprocess.run(
            [str(BIN / "infermesh-run"), "--coordinator", address, "--tls-dir", str(bundle),
             "--nnodes", "1", "--nproc-per-node", "1", str(script)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        assert "hello from rank 0" in run.stdout
    finally:
        up.terminate()
        up.wait(timeout=30)


def test_a_second_start_keeps_the_ca_and_issues_fresh_certificates(tmp_path: Path) -> None:
    from infermesh.cli.cell import _local_pki

    first = _local_pki(tmp_path, "local", ["node-0"], "ada")
    ca, leaf = (tmp_path / "ca.pem").read_bytes(), (first.user_dir / "cert.pem").read_bytes()
    second = _local_pki(tmp_path, "local", ["node-0", "node-1"], "ada")
    assert (tmp_path / "ca.pem").read_bytes() == ca
    assert (second.user_dir / "cert.pem").read_bytes() != leaf
    assert sorted(second.nodes) == ["node-0", "node-1"] and second.admin == "user:ada"


def test_user_without_secure_is_refused(tmp_path: Path) -> None:
    r = _cli("up", "--user", "ada", "--state-dir", str(tmp_path / "cell"), cwd=tmp_path)
    assert r.returncode == 2 and "--user names you in a --secure cell; add --secure" in r.stderr
    assert not (tmp_path / "cell").exists()
