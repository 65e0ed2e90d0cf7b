"""A secure cell of real processes: `infermesh coordinator start --tls-dir`, agents with node
certificates, a job submitted by a submitter that runs through the launcher's rendezvous (the
launcher inherits its node's bundle), and an agent that claims another node's id."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from infermesh.client.coordinator import CoordinatorClient, pb
from infermesh.security.tls import ENV_DIR
from tests.cell.cellproc import BIN, wait_for
from tests.security.pki import Pki, client


def _coordinator(root: Path, pki: Pki) -> tuple[subprocess.Popen[str], str]:
    bundle = pki.coordinator().cert.parent
    cmd = [str(BIN / "infermesh"), "coordinator", "start", "--port", "0", "--state-dir"]
    cmd += [str(root / "coord"), "--tls-dir", str(bundle), "--admin", "user:root"]
    log = open(root / "coordinator.log", "a")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r" at (\S+) \((.*)\)", line)
    assert match, f"coordinator did not start: {line!r}; see {root}/coordinator.log"
    assert match.group(2) == "mTLS, client certificates required"
    return proc, match.group(1)


def _agent(
    root: Path, address: str, node_id: str, bundle: Path, from_env: bool = False
) -> subprocess.Popen[bytes]:
    """An agent given its bundle by ``--tls-dir`` or by ``$INFERMESH_TLS_DIR``."""
    log = open(root / f"agent-{node_id}.log", "ab")  # noqa: SIM115
    cmd = [str(BIN / "infermesh"), "agent", "start", "--coordinator", address, "--node-id"]
    cmd += [node_id, "--slots", "1", "--addr", "127.0.0.1", "--workdir", str(root / node_id)]
    env = dict(os.environ)
    if from_env:
        env[ENV_DIR] = str(bundle)
    else:
        cmd += ["--tls-dir", str(bundle)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("bundle_from", ["flag", "env"])
def test_secure_cell_runs_a_submitters_job_and_refuses_an_impostor(tmp_path, bundle_from):
    """The node's bundle reaches the job's rendezvous whether the agent got it by flag or by
    $INFERMESH_TLS_DIR (the launcher's variables replace the agent's, not add to them)."""
    pki = Pki(tmp_path / "pki")
    coord, address = _coordinator(tmp_path, pki)
    procs: list[subprocess.Popen] = []
    try:
        bundle = pki.node("n1").cert.parent
        procs.append(_agent(tmp_path, address, "n1", bundle, from_env=bundle_from == "env"))
        root = CoordinatorClient(address, tls=client(pki.user("root")))
        root.call("Grant", pb.GrantRequest(subject="user:sam", role="submitter", tenant="ml"))
        wait_for(lambda: [n.status for n in root.list_nodes()] == ["ALIVE"], 30, "node n1")

        # n2's agent holds n1's certificate: refused at registration, exits, writes nothing
        before = root.stats().store_revision
        impostor = _agent(tmp_path, address, "n2", pki.node("n1").cert.parent)
        assert impostor.wait(timeout=30) == 2  # refused: the usage-error exit
        assert "may only register node 'n1'" in (tmp_path / "agent-n2.log").read_text()
        assert [n.spec.node_id for n in root.list_nodes()] == ["n1"]
        assert root.stats().store_revision == before

        script = tmp_path / "hello.py"
        script.write_text("import os\nprint('hello from rank', os.environ['RANK'])\n")
        spec = pb.JobSpec(name="hello", entrypoint=str(script), nproc_per_node=1)
        spec.nodes_min = spec.nodes_max = 1
        with CoordinatorClient(address, tls=client(pki.user("sam"))) as sam:
            job = sam.submit_job(spec).job
            assert job.spec.tenant == "ml"
            done = wait_for(
                lambda: (j := sam.get_job(job.job_id).job).status in ("SUCCEEDED", "FAILED") and j,
                180,
                "the job to finish",
            )
            assert done.status == "SUCCEEDED", done.message
            lines = [ln.text for ln in sam.job_logs(job.job_id)]
            assert any("hello from rank 0" in text for text in lines), lines
        audit = root.call("ListAudit", pb.ListAuditRequest()).records
        seen = {(r.principal, r.method) for r in audit}
        assert {("node:n1", "Register"), ("user:sam", "SubmitJob")} <= seen
        root.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(20)
        coord.terminate()
        coord.wait(10)
