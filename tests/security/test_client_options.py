"""Every client command and ``infermesh-run`` take the same connection options: they reach a
coordinator with certificates (real mTLS on loopback), fall back to the environment, and
clashing options get one line and exit 2 before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermesh.client.connection import Connection
from infermesh.client.coordinator import COORDINATOR_ENV, CoordinatorClient, pb
from infermesh.control.auth import SecurityConfig
from infermesh.security.tls import CLIENT_ENV, ENV_DIR, ClientTls, client_env
from infermesh.train.launcher import main as launcher_main
from tests.cell.conftest import invoke
from tests.cell.inproc import ThreadedCoordinator
from tests.security.pki import Pki, client
from tests.security.test_mtls import _register


@pytest.fixture(autouse=True)
def _no_connection_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests give the connection explicitly (or set the variables on purpose)."""
    for name in (COORDINATOR_ENV, *CLIENT_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


@pytest.fixture
def coord(pki):
    c = ThreadedCoordinator(security=SecurityConfig(tls=pki.coordinator(), admins=("user:root",)))
    _register(c, client(pki.node("n1")), "n1")
    yield c
    c.close()


@pytest.fixture
def root_dir(pki) -> str:
    return str(pki.user("root").cert.parent)


def test_nodes_ls_with_tls_dir_talks_to_a_secure_coordinator(coord, root_dir):
    r = invoke("nodes", "ls", "--coordinator", coord.address, "--tls-dir", root_dir)
    assert r.code == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == ["n1"]


def test_jobs_ls_takes_ca_cert_and_key_files(coord, pki):
    files = pki.user("root")
    r = invoke(
        "jobs", "ls", "--coordinator", coord.address,
        "--ca", str(files.ca), "--cert", str(files.cert), "--key", str(files.key),
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert "no jobs" in r.stdout


def test_stats_and_whoami_take_the_bundle_from_the_environment(coord, root_dir):
    env = {COORDINATOR_ENV: coord.address, ENV_DIR: root_dir}
    r = invoke("stats", env=env)
    assert r.code == 0, r.stderr
    assert "nodes:      1 (ALIVE 1)" in r.stdout
    me = invoke("whoami", env=env)
    assert me.code == 0, me.stderr
    assert "principal user:root" in me.stdout


def test_without_tls_the_secure_coordinator_is_refused_with_exit_1(coord):
    r = invoke("jobs", "ls", "--coordinator", coord.address)
    assert r.code == 1
    assert r.stderr.startswith(
        f"infermesh: error: the coordinator at {coord.address} closed the connection"
    ), r.stderr
    assert "it probably requires TLS; give --tls-dir" in r.stderr


def test_topo_plan_reads_a_job_from_a_secure_coordinator(coord, pki, root_dir):
    spec = pb.JobSpec(name="t", entrypoint="/bin/true", nproc_per_node=1, nodes_min=1)
    spec.nodes_max = 1
    with CoordinatorClient(coord.address, tls=client(pki.user("root"))) as root:
        job = root.submit_job(spec).job
    r = invoke(
        "topo", "plan", job.job_id, "--bytes", "100MB",
        "--coordinator", coord.address, "--tls-dir", root_dir,
    )  # fmt: skip
    assert r.code == 0, r.stderr
    assert r.stdout.startswith(f"live job {job.job_id} ")


def test_insecure_flag_wins_over_a_bundle_in_the_environment(root_dir):
    plain = ThreadedCoordinator()
    try:
        env = {ENV_DIR: root_dir}
        refused = invoke("whoami", "--coordinator", plain.address, env=env)
        assert refused.code == 1 and "TLS handshake" in refused.stderr
        r = invoke("whoami", "--coordinator", plain.address, "--insecure", env=env)
        assert r.code == 0, r.stderr
        assert "principal anonymous" in r.stdout
    finally:
        plain.close()


COMMANDS = {
    "jobs ls": ["jobs", "ls"],
    "jobs show": ["jobs", "show", "job-1"],
    "nodes ls": ["nodes", "ls"],
    "nodes drain": ["nodes", "drain", "n1"],
    "stats": ["stats"],
    "topo plan JOB": ["topo", "plan", "job-1"],
    "rbac ls": ["rbac", "ls"],
    "quota ls": ["quota", "ls"],
    "audit ls": ["audit", "ls"],
    "whoami": ["whoami"],
}
BAD_OPTIONS = {
    "insecure with tls dir": (
        ["--insecure", "--tls-dir", "{bundle}"],
        "--insecure conflicts with TLS options and tokens; drop one of them",
    ),
    "token without tls": (["--token", "abc"], "a token needs TLS: give the cell CA with --ca"),
    "ca alone": (["--ca", "{bundle}/ca.pem"], "--ca alone verifies the coordinator"),
    "tls dir and files": (
        ["--tls-dir", "{bundle}", "--cert", "{bundle}/cert.pem"],
        "give either --tls-dir or --ca/--cert/--key, not both",
    ),
    "missing tls dir": (["--tls-dir", "{bundle}/nope"], "does not exist; issue a bundle"),
}


@pytest.mark.parametrize("bad", sorted(BAD_OPTIONS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_clashing_options_get_one_line_and_exit_2(command, bad, root_dir):
    args, expected = BAD_OPTIONS[bad]
    argv = [*COMMANDS[command], "--coordinator", "127.0.0.1:1"]
    r = invoke(*argv, *(a.format(bundle=root_dir) for a in args))
    assert r.code == 2, (r.stdout, r.stderr)
    prog = "infermesh topo plan" if command.startswith("topo") else "infermesh"
    assert r.stderr.startswith(f"{prog}: error: "), r.stderr
    assert expected in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_topo_plan_without_a_job_refuses_connection_options(root_dir):
    r = invoke("topo", "plan", "--nodes", "2", "--gpus-per-node", "8", "--bytes", "1GB",
               "--tls-dir", root_dir)  # fmt: skip
    assert r.code == 2
    assert r.stderr == (
        "infermesh topo plan: error: --tls-dir: the connection options are for reading a "
        "running JOB from the cell; give its id, or drop them\n"
    )


def test_agent_hands_its_connection_to_the_launchers_it_starts(pki):
    """What the agent puts in a launcher's environment replaces the agent's own variables."""
    files = pki.node("n1")
    tls = ClientTls(files, server_name="coord", token="t", ca=files.ca)
    again = ClientTls.from_options(env=client_env(tls))
    assert again is not None and again.files == files
    assert (again.server_name, again.token) == ("coord", "t")
    assert ClientTls.from_options(env={ENV_DIR: "/elsewhere", **client_env(None)}) is None


def test_infermesh_run_submits_to_a_secure_coordinator_with_tls_dir(
    coord, root_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    Path("train.py").write_text("")
    argv = ["--nnodes", "1", "--coordinator", coord.address, "--tls-dir", root_dir, "--detach"]
    assert launcher_main.main([*argv, "train.py"]) == 0
    out = capsys.readouterr().out
    assert f"infermesh-run: submitted train-1 to {coord.address}" in out, out


def test_infermesh_run_rendezvous_uses_the_tls_options(coord, pki):
    from torch.distributed.elastic.rendezvous import RendezvousParameters

    from infermesh.train.launcher.rendezvous import create_handler

    params = RendezvousParameters("infermesh", coord.address, "run-1", 1, 1)
    conn = Connection(tls_dir=str(pki.node("n1").cert.parent))
    handler = create_handler(params, conn)
    try:
        me = handler.client.call("WhoAmI", pb.WhoAmIRequest())  # type: ignore[attr-defined]
        assert me.principal == "node:n1"
    finally:
        handler.shutdown()
