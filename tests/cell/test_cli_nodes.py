"""``infermesh nodes`` and ``infermesh stats`` against a real coordinator with two agents."""

from __future__ import annotations

import socket

import pytest

from infermesh.client.coordinator import COORDINATOR_ENV, CoordinatorClient
from tests.cell.conftest import CellThread, invoke


def test_nodes_ls_shows_every_registered_node_with_its_slots(cell: CellThread) -> None:
    r = invoke("nodes", "ls", "--coordinator", cell.address)
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "NODE",
        "STATUS",
        "SINCE",
        "SLOTS",
        "GPUS",
        "HEALTH",
        "HEARTBEAT",
        "RACK",
        "JOBS",
    ]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"node-0", "node-1"}
    for row in rows.values():
        assert " ALIVE " in row and " 0/2 " in row and "s ago" in row


def test_nodes_ls_json_keeps_proto_field_names(cell: CellThread) -> None:
    r = invoke("nodes", "ls", "--coordinator", cell.address, "--json")
    assert r.code == 0, r.stderr
    nodes = r.json()["nodes"]
    assert [n["spec"]["node_id"] for n in nodes] == ["node-0", "node-1"]
    first = nodes[0]
    assert first["status"] == "ALIVE"
    assert first["used_slots"] == 0 and first["spec"]["slots"] == 2
    assert first["admin"] == ""  # fields at their default are still present
    assert first["spec"]["addresses"] == ["127.0.0.1"]


def test_nodes_show_prints_spec_and_events(cell: CellThread) -> None:
    r = invoke("nodes", "show", "node-1", "--coordinator", cell.address)
    assert r.code == 0, r.stderr
    assert r.stdout.startswith("node-1 ALIVE since ")
    assert "slots:       0 used of 2" in r.stdout
    assert "gpus:        none (" in r.stdout
    assert "events:" in r.stdout and "registered (epoch 1)" in r.stdout


def test_drain_then_undrain_changes_status_and_records_the_reason(
    cell: CellThread, client: CoordinatorClient
) -> None:
    r = invoke("nodes", "drain", "node-1", "--reason", "disk swap", "--coordinator", cell.address)
    assert r.code == 0, r.stderr
    assert r.stdout.strip() == "node-1: DRAINING (disk swap)"
    assert {n.spec.node_id: n.status for n in client.list_nodes()}["node-1"] == "DRAINING"
    shown = invoke("nodes", "show", "node-1", "--coordinator", cell.address)
    assert "admin:       DRAINING" in shown.stdout
    assert "disk swap" in shown.stdout

    r = invoke("nodes", "undrain", "node-1", "--coordinator", cell.address, "--json")
    assert r.code == 0, r.stderr
    assert r.json()["status"] == "ALIVE" and r.json()["admin"] == ""


def test_quarantine_json_reports_the_new_state(cell: CellThread) -> None:
    r = invoke(
        "nodes", "quarantine", "node-0", "--reason", "ECC errors", "--coordinator", cell.address
    )
    assert r.code == 0, r.stderr
    r = invoke("nodes", "show", "node-0", "--coordinator", cell.address, "--json")
    detail = r.json()
    assert detail["node"]["status"] == "QUARANTINED"
    assert detail["node"]["status_reason"] == "ECC errors"
    assert any(e["to_state"] == "QUARANTINED" for e in detail["events"])


@pytest.mark.parametrize(
    "args",
    [
        ("nodes", "show", "node-9"),
        ("nodes", "drain", "node-9"),
        ("nodes", "undrain", "node-9"),
        ("nodes", "quarantine", "node-9"),
    ],
)
def test_unknown_node_exits_3_naming_it(cell: CellThread, args: tuple[str, ...]) -> None:
    r = invoke(*args, "--coordinator", cell.address)
    assert r.code == 3
    assert "no node 'node-9'" in r.stderr and "infermesh nodes ls" in r.stderr
    assert r.stdout == ""


def test_no_coordinator_configured_exits_2_naming_flag_and_variable() -> None:
    r = invoke("nodes", "ls")
    assert r.code == 2
    assert "--coordinator" in r.stderr and COORDINATOR_ENV in r.stderr


def test_coordinator_from_the_environment(cell: CellThread) -> None:
    r = invoke("nodes", "ls", "--json", env={COORDINATOR_ENV: cell.address})
    assert r.code == 0, r.stderr
    assert len(r.json()["nodes"]) == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_coordinator_exits_1_naming_the_address() -> None:
    address = f"127.0.0.1:{_closed_port()}"
    for args in (("nodes", "ls"), ("stats",), ("jobs", "ls")):
        r = invoke(*args, "--coordinator", address)
        assert r.code == 1
        assert f"no coordinator answers at {address}" in r.stderr


def test_malformed_coordinator_address_exits_2() -> None:
    r = invoke("nodes", "ls", "--coordinator", "host:notaport")
    assert r.code == 2
    assert "bad coordinator address 'host:notaport'" in r.stderr


def test_stats_counts_nodes_slots_and_store(cell: CellThread) -> None:
    invoke("nodes", "drain", "node-1", "--coordinator", cell.address)
    r = invoke("stats", "--coordinator", cell.address)
    assert r.code == 0, r.stderr
    assert f"cell local at {cell.address}, up " in r.stdout
    assert "nodes:      2 (ALIVE 1, DRAINING 1)" in r.stdout
    assert "jobs:       0 (none)" in r.stdout
    assert "slots:      0 used of 4 (4 free)" in r.stdout
    assert "store:      memory://" in r.stdout

    data = invoke("stats", "--coordinator", cell.address, "--json").json()
    assert data["nodes_by_status"] == {"ALIVE": 1, "DRAINING": 1}
    assert data["slots_total"] == 4 and data["store"] == "memory://"
