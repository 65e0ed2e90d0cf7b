"""``infermesh jobs`` against a real coordinator and agents, without launching training.

A job submitted while every node is drained stays PENDING, so listing, showing, logs and
cancelling are checked without starting workers; log lines reach the coordinator through the
same method the agents' heartbeat stream calls.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infermesh.client.coordinator import CoordinatorClient, pb
from tests.cell.conftest import CellThread, invoke

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


def submit(cell: CellThread, *args: str) -> tuple[int, str, str]:
    r = invoke("jobs", "submit", *args, "--config-dir", CONFIGS, "--coordinator", cell.address)
    return r.code, r.stdout, r.stderr


def pending_job(cell: CellThread, client: CoordinatorClient) -> str:
    for node in ("node-0", "node-1"):
        client.set_node_state(node, "drain", "test")
    code, out, err = submit(cell, "job=tiny_gpt", "trainer.max_steps=7", "--detach")
    assert code == 0, err
    job_id = out.strip().splitlines()[-1]
    assert client.get_job(job_id).job.status == "PENDING"
    return job_id


def add_logs(cell: CellThread, job_id: str, n: int) -> None:
    lines = [
        pb.LogLine(
            job_id=job_id, node_id="node-0", rank=i % 2, text=f"[node-0 r{i % 2} l0]: line {i}"
        )
        for i in range(n)
    ]
    cell.run(cell.coordinator.jobs.on_logs(lines))


# -- submit: bad input is refused before anything is sent --------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_stps=5", "unknown config key 'trainer.max_stps'"),
        ("trainer.max_steps=abc", "trainer.max_steps must be an integer, got 'abc'"),
        ("trainer.lr=fast", "trainer.lr must be a number, got 'fast'"),
        ("trainer.mesh_hook=maybe", "trainer.mesh_hook must be true or false"),
        ("trainer=5", "'trainer' is a config section, not a value"),
        ("launch.nproc_per_node=0", "launch.nproc_per_node must be >= 1, got 0"),
        ("launch.nnodes=3:1", "launch.nnodes '3:1': MIN is larger than MAX"),
        ("launch.nnodes=many", "launch.nnodes must be auto, N or MIN:MAX"),
        ("launch.max_restarts=-1", "launch.max_restarts must be >= 0"),
        ("launch.script=nope.py", "launch.script 'nope.py': no such file"),
        ("+launch.gpus=2", "unknown config key 'launch.gpus'"),
        ("trainer.max_steps=[1", "cannot parse the override 'trainer.max_steps=[1'"),
    ],
)
def test_bad_override_exits_2_naming_the_key_and_sends_nothing(
    cell: CellThread, client: CoordinatorClient, override: str, message: str
) -> None:
    revision = client.stats().store_revision
    code, out, err = submit(cell, "job=tiny_gpt", override)
    assert code == 2, (out, err)
    assert message in err
    assert client.list_jobs() == [] and client.stats().store_revision == revision


def test_bad_override_is_refused_even_without_a_coordinator() -> None:
    r = invoke("jobs", "submit", "job=tiny_gpt", "trainer.max_stps=5", "--config-dir", CONFIGS)
    assert r.code == 2
    assert "unknown config key 'trainer.max_stps'" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no job config chosen; add job=NAME (known in"),
        (("job=gpt9",), "unknown job config 'gpt9'"),
        (("job=tiny_gpt", "job=tiny_gpt"), "job= given 2 times"),
    ],
)
def test_job_choice_errors_list_the_known_configs(
    cell: CellThread, args: tuple[str, ...], message: str
) -> None:
    code, _, err = submit(cell, *args)
    assert code == 2
    assert message in err
    if "known" in message:
        assert "tiny_gpt" in err


def test_missing_config_dir_names_the_flag(cell: CellThread, tmp_path: Path) -> None:
    r = invoke("jobs", "submit", "job=tiny_gpt", "--config-dir", str(tmp_path / "none"))
    assert r.code == 2
    assert "--config-dir" in r.stderr


def test_dry_run_prints_the_placement_and_creates_no_job(
    cell: CellThread, client: CoordinatorClient
) -> None:
    code, out, err = submit(cell, "job=tiny_gpt", "trainer.max_steps=20", "--dry-run")
    assert code == 0, err
    assert "dry run: tiny_gpt would run " in out
    assert "examples/train_tiny_gpt.py trainer.max_steps=20 with 2 worker(s) per node" in out
    assert "node rank" in out and "node-0" in out
    assert client.list_jobs() == []


def test_dry_run_json_carries_the_spec_with_launch_overrides_applied(cell: CellThread) -> None:
    code, out, err = submit(
        cell,
        "job=tiny_gpt",
        "trainer.max_steps=20",
        "launch.nproc_per_node=1",
        "launch.nnodes=2",
        "launch.max_restarts=0",
        "--dry-run",
        "--json",
    )
    assert code == 0, err
    import json

    reply = json.loads(out)
    spec = reply["job"]["spec"]
    assert spec["args"] == ["trainer.max_steps=20"]  # launch.* are not the script's
    assert spec["nproc_per_node"] == 1
    assert (spec["nodes_min"], spec["nodes_max"]) == (2, 2)
    assert spec["max_restarts"] == 0 and spec["name"] == "tiny_gpt"
    assert spec["entrypoint"].endswith("examples/train_tiny_gpt.py")
    assert "node-0" in reply["placement"] and "node-1" in reply["placement"]


def test_job_asking_for_more_nodes_than_the_cell_has_is_refused(
    cell: CellThread, client: CoordinatorClient
) -> None:
    code, _, err = submit(cell, "job=tiny_gpt", "launch.nnodes=5", "--detach")
    assert code == 1
    assert "needs 5 node" in err or "5 nodes" in err, err
    assert client.list_jobs() == []


# -- ls, show, logs, cancel -------------------------------------------------------------------
def test_submitted_job_is_listed_shown_and_filtered(
    cell: CellThread, client: CoordinatorClient
) -> None:
    job_id = pending_job(cell, client)
    assert job_id == "tiny_gpt-1"

    r = invoke("jobs", "ls", "--coordinator", cell.address)
    assert r.code == 0, r.stderr
    header, row = r.stdout.splitlines()[:2]
    assert header.split()[:3] == ["JOB", "STATUS", "NODES"]
    assert row.split()[:2] == ["tiny_gpt-1", "PENDING"]

    assert invoke(
        "jobs", "ls", "--status", "running", "--coordinator", cell.address
    ).stdout.endswith("no RUNNING jobs\n")
    listed = invoke("jobs", "ls", "--status", "pending", "--json", "--coordinator", cell.address)
    assert [j["job_id"] for j in listed.json()["jobs"]] == ["tiny_gpt-1"]

    shown = invoke("jobs", "show", job_id, "--coordinator", cell.address)
    assert shown.code == 0, shown.stderr
    assert shown.stdout.startswith("tiny_gpt-1 PENDING\n")
    assert "restarts:    0 of 3" in shown.stdout
    assert "nnodes:      1:auto" in shown.stdout
    assert "events:" in shown.stdout and "submitted" in shown.stdout

    detail = invoke("jobs", "show", job_id, "--json", "--coordinator", cell.address).json()
    assert detail["job"]["spec"]["args"] == ["trainer.max_steps=7"]
    assert detail["events"][0]["to_state"] == "PENDING"


def test_ls_limit_keeps_the_newest(cell: CellThread, client: CoordinatorClient) -> None:
    first = pending_job(cell, client)
    code, out, _ = submit(cell, "job=tiny_gpt", "--detach")
    second = out.strip().splitlines()[-1]
    assert code == 0 and second != first
    r = invoke("jobs", "ls", "--limit", "1", "--json", "--coordinator", cell.address)
    assert [j["job_id"] for j in r.json()["jobs"]] == [second]


def test_ls_unknown_status_exits_2(cell: CellThread) -> None:
    r = invoke("jobs", "ls", "--status", "sleeping", "--coordinator", cell.address)
    assert r.code == 2
    assert "unknown job status 'SLEEPING'" in r.stderr and "RUNNING" in r.stderr


def test_ls_negative_limit_is_a_usage_error(cell: CellThread) -> None:
    r = invoke("jobs", "ls", "--limit", "-1", "--coordinator", cell.address)
    assert r.code == 2


def test_logs_print_kept_lines_and_tail(cell: CellThread, client: CoordinatorClient) -> None:
    job_id = pending_job(cell, client)
    add_logs(cell, job_id, 5)
    r = invoke("jobs", "logs", job_id, "--coordinator", cell.address)
    assert r.code == 0, r.stderr
    assert r.stdout.splitlines() == [f"[node-0 r{i % 2} l0]: line {i}" for i in range(5)]

    r = invoke("jobs", "logs", job_id, "--tail", "2", "--json", "--coordinator", cell.address)
    import json

    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["text"], x["rank"], x["node_id"]) for x in lines] == [
        ("[node-0 r1 l0]: line 3", 1, "node-0"),
        ("[node-0 r0 l0]: line 4", 0, "node-0"),
    ]


def test_cancel_then_follow_ends_with_the_cancelled_code(
    cell: CellThread, client: CoordinatorClient
) -> None:
    job_id = pending_job(cell, client)
    add_logs(cell, job_id, 3)
    r = invoke("jobs", "cancel", job_id, "--coordinator", cell.address)
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == f"{job_id}: PENDING -> CANCELLED"
    again = invoke("jobs", "cancel", job_id, "--coordinator", cell.address)
    assert again.code == 0 and again.stdout.strip() == f"{job_id} already CANCELLED"

    r = invoke("jobs", "logs", job_id, "-f", "--tail", "1", "--coordinator", cell.address)
    assert r.code == 130
    assert r.stdout.splitlines() == ["[node-0 r0 l0]: line 2"]
    assert f"infermesh: {job_id} CANCELLED after" in r.stderr


@pytest.mark.parametrize("command", ["show", "logs", "cancel"])
def test_unknown_job_exits_3_naming_it(cell: CellThread, command: str) -> None:
    r = invoke("jobs", command, "nope-7", "--coordinator", cell.address)
    assert r.code == 3
    assert "no job 'nope-7'" in r.stderr and "infermesh jobs ls" in r.stderr
