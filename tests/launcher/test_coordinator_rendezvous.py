"""The launcher's coordinator rendezvous handler against a real coordinator on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from torch.distributed.elastic.rendezvous import RendezvousInfo, RendezvousParameters

from infermesh.train.launcher.rendezvous import NODE_ID_ENV, CoordinatorRendezvous
from tests.cell.cellproc import wait_for
from tests.cell.inproc import ThreadedCoordinator


@pytest.fixture
def coord() -> Iterator[ThreadedCoordinator]:
    c = ThreadedCoordinator()
    yield c
    c.close()


def _handler(
    coord: ThreadedCoordinator, node_id: str, min_nodes: int, monkeypatch: pytest.MonkeyPatch
) -> CoordinatorRendezvous:
    monkeypatch.setenv(NODE_ID_ENV, node_id)
    params = RendezvousParameters(
        backend="infermesh",
        endpoint=coord.address,
        run_id="ext-grow",
        min_nodes=min_nodes,
        max_nodes=2,
        local_addr="127.0.0.1",
        last_call_timeout=1,
    )
    return CoordinatorRendezvous(params)


def test_a_round_starts_with_nobody_waiting_even_right_after_a_node_was_seen_waiting(
    coord: ThreadedCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A launcher that restarts for a waiting node must not carry that count into the round
    the node joined: its new workers would restart at once, and every other launcher after
    them, round after round."""
    a = _handler(coord, "node-a", 1, monkeypatch)
    b = _handler(coord, "node-b", 2, monkeypatch)  # waits for a: no round of its own
    try:
        assert a.next_rendezvous().rank == 0  # alone: round 1 closes after the last call
        joined: list[RendezvousInfo] = []
        thread = threading.Thread(target=lambda: joined.append(b.next_rendezvous()))
        thread.start()
        wait_for(lambda: a.num_nodes_waiting() == 1, 10, "node-b waiting")
        info = a.next_rendezvous()  # the restart: round 2 closes with both nodes
        thread.join(10)
        assert (info.world_size, joined[0].rank) == (2, 1)
        assert a.num_nodes_waiting() == 0
        assert b.num_nodes_waiting() == 0
    finally:
        a.shutdown()
        b.shutdown()
