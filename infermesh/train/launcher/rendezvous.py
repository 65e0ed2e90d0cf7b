"""Rendezvous handlers of ``infermesh-run``: torch elastic's dynamic rendezvous, fixed.

torch elastic 2.13's dynamic rendezvous shares one TCPStore across rounds by default. Two
failures follow at default settings (reproduced on CPU with gloo):

1. after a worker failure, restarted workers read the previous round's keys and gloo fails
   with "Connection refused";
2. a node that joins a running job (``--nnodes 1:2``) waits forever for ``MASTER_ADDR``:
   the rank-0 agent cached its bootstrap info and never writes it into the new round.

:class:`MeshRendezvousHandler` never shares the store: every round rank 0 picks a fresh
port for the workers' store and publishes it under that round's prefix (what
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` does, without a process-wide environment switch).
Workers therefore see ``TORCHELASTIC_USE_AGENT_STORE=False`` and rank 0 hosts their store.

Backends that use it:

- ``c10d`` -- the same TCPStore-based state as torchrun's c10d backend.
- ``infermesh`` with no endpoint -- a file store under the run directory, so several
  launchers on one machine meet without any port (a one-machine cell).

:class:`CoordinatorRendezvous` (``infermesh`` with ``--rdzv-endpoint COORD:7600``) asks the
cell coordinator instead: the coordinator decides who is in each round, the rank order and
when the round closes; rank 0 hosts that round's store on the port it offered. It reaches the
coordinator with ``infermesh-run``'s TLS options, else the ``INFERMESH_TLS_*`` environment
(what a node agent hands the launchers it starts, and what plain ``torchrun`` gets).

The ``infermesh`` name is also registered for plain ``torchrun`` through the
``torchrun.handlers`` entry point (:func:`handler_factory`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta

from torch.distributed import PrefixStore, TCPStore
from torch.distributed.elastic.rendezvous import (
    RendezvousClosedError,
    RendezvousConnectionError,
    RendezvousHandler,
    RendezvousInfo,
    RendezvousParameters,
    RendezvousStoreInfo,
    RendezvousTimeoutError,
)
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import create_backend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import (
    DynamicRendezvousHandler,
    RendezvousTimeout,
)
from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import (
    StaticTCPRendezvous,
    create_rdzv_handler,
)

from infermesh.client.connection import Connection
from infermesh.client.coordinator import (
    CoordinatorError,
    CoordinatorUnavailable,
    pb,
)
from infermesh.core.net import free_port, host_address

logger = logging.getLogger(__name__)


__all__ = [
    "CoordinatorRendezvous",
    "MeshRendezvousHandler",
    "MeshStaticRendezvous",
    "create_handler",
    "create_static_handler",
    "handler_factory",
]

FILE_STORE_ENV = "INFERMESH_RDZV_FILE"
NODE_ID_ENV = "INFERMESH_NODE_ID"
"""Path of the file store the ``infermesh`` backend uses when no endpoint is given."""


class MeshRendezvousHandler(DynamicRendezvousHandler):
    """Dynamic rendezvous whose workers get a fresh store every round."""

    backend_name = "c10d"
    """The name users asked for (``c10d`` or ``infermesh``); torch checks it matches."""

    def get_backend(self) -> str:
        return self.backend_name

    @property
    def use_agent_store(self) -> bool:
        return False

    def next_rendezvous(self) -> RendezvousInfo:
        # torch's own opt-out path builds fresh bootstrap info per round; take it for the
        # duration of this call only, so the switch never leaks into worker environments.
        saved = os.environ.get(_NO_SHARING_ENV)
        os.environ[_NO_SHARING_ENV] = "1"
        try:
            return super().next_rendezvous()
        finally:
            if saved is None:
                del os.environ[_NO_SHARING_ENV]
            else:
                os.environ[_NO_SHARING_ENV] = saved


_NO_SHARING_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


class MeshStaticRendezvous(StaticTCPRendezvous):
    """Static rendezvous (``--master-addr/--master-port``) whose workers get a fresh store.

    torch's static handler makes every attempt's workers share the agent's store on
    ``--master-port``; restarts then fail the same way as with the shared dynamic store.
    Here each attempt works under its own key prefix, and rank 0 publishes a fresh port on
    ``--master-addr`` for the workers' own store.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._round = 0

    @property
    def use_agent_store(self) -> bool:
        return False

    def next_rendezvous(self) -> RendezvousInfo:
        info = super().next_rendezvous()
        self._round += 1
        store = PrefixStore(f"infermesh/round_{self._round}", info.store)
        bootstrap = RendezvousStoreInfo.build(info.rank, store, local_addr=self.master_addr)
        return RendezvousInfo(store, info.rank, info.world_size, bootstrap)


def create_static_handler(params: RendezvousParameters) -> MeshStaticRendezvous:
    """Static handler from torchrun's parameters (``rank`` in the config, endpoint)."""
    base = create_rdzv_handler(params)
    assert isinstance(base, StaticTCPRendezvous)
    return MeshStaticRendezvous(
        base.master_addr,
        base.master_port,
        base.rank,
        base.world_size,
        base.run_id,
        int(base.timeout.total_seconds()),
    )


def _timeout(params: RendezvousParameters, key: str, default: int) -> timedelta:
    return timedelta(seconds=params.get_as_int(f"{key}_timeout", default) or default)


class CoordinatorRendezvous(RendezvousHandler):
    """Rendezvous decided by the cell coordinator (``RendezvousJoin`` / ``RendezvousState``)."""

    POLL_S = 1.0
    """How often a running node asks whether others wait to join (torch polls every tick)."""

    def __init__(self, params: RendezvousParameters, connection: Connection | None = None) -> None:
        self.params = params
        self.client = (connection or Connection()).client(params.endpoint, timeout_s=10.0)
        self.run_id = params.run_id
        self.node_id = os.environ.get(NODE_ID_ENV) or f"{socket.gethostname()}-{os.getpid()}"
        self.addr = params.local_addr or host_address()
        self.join_timeout = float(_timeout(params, "join", 600).total_seconds())
        self.last_call = float(params.get_as_int("last_call_timeout", 0) or 0)
        self._store: TCPStore | None = None
        self._waiting = (0.0, 0)

    def get_backend(self) -> str:
        return "infermesh"

    def get_run_id(self) -> str:
        return self.run_id

    @property
    def use_agent_store(self) -> bool:
        return False

    def next_rendezvous(self) -> RendezvousInfo:
        self._store = None  # the previous round's store server goes away with its object
        request = pb.JoinRequest(
            run_id=self.run_id,
            node_id=self.node_id,
            addr=self.addr,
            port=free_port("::" if ":" in self.addr else ""),
            nproc_per_node=0,
            nodes_min=self.params.min_nodes,
            nodes_max=self.params.max_nodes,
            last_call_s=self.last_call,
            timeout_s=self.join_timeout,
        )
        deadline = time.monotonic() + self.join_timeout
        while True:
            try:
                reply = self.client.rendezvous_join(request)
                break
            except CoordinatorUnavailable as error:
                if time.monotonic() > deadline:
                    raise RendezvousConnectionError(str(error)) from None
                logger.warning("%s; retrying the rendezvous", error)
                time.sleep(1.0)
            except CoordinatorError as error:
                if "closed" in str(error):
                    raise RendezvousClosedError(str(error)) from None
                if "did not close" in str(error) or "timed out" in str(error):
                    raise RendezvousTimeoutError(str(error)) from None
                raise
        # Whoever waited is in this round now. A count cached before it would restart the new
        # workers at once (and make the others restart in turn, round after round).
        self._waiting = (time.monotonic(), 0)
        rank, world = reply.group_rank, reply.group_world_size
        store = TCPStore(
            reply.master_addr,
            reply.master_port,
            is_master=rank == 0,
            timeout=timedelta(seconds=60),
            wait_for_workers=False,
        )
        self._store = store
        prefixed = PrefixStore(f"infermesh/{self.run_id}/round_{reply.round}", store)
        bootstrap = RendezvousStoreInfo.build(rank, prefixed, local_addr=self.addr)
        logger.info(
            "round %d: node %s is group rank %d of %d (%s)",
            reply.round,
            self.node_id,
            rank,
            world,
            ", ".join(reply.nodes),
        )
        return RendezvousInfo(prefixed, rank, world, bootstrap)

    def is_closed(self) -> bool:
        try:
            return bool(self.client.rendezvous_state(self.run_id, self.node_id).closed)
        except CoordinatorError:
            return False

    def set_closed(self) -> None:
        try:
            self.client.rendezvous_close(self.run_id, self.node_id)
        except CoordinatorError as error:
            logger.warning("could not close rendezvous %s: %s", self.run_id, error)

    def num_nodes_waiting(self) -> int:
        checked, waiting = self._waiting
        now = time.monotonic()
        if now - checked < self.POLL_S:
            return waiting
        try:
            waiting = self.client.rendezvous_state(self.run_id, self.node_id).nodes_waiting
        except CoordinatorError:
            waiting = 0  # a coordinator restart must not restart the workers
        self._waiting = (now, waiting)
        return waiting

    def shutdown(self) -> bool:
        self.client.close()
        return True


def create_handler(
    params: RendezvousParameters, connection: Connection | None = None
) -> RendezvousHandler:
    """Create the handler for ``c10d`` or ``infermesh`` parameters.

    ``connection``: TLS to the coordinator for ``infermesh`` with an endpoint (default: the
    environment's).
    """
    if params.backend == "infermesh" and params.endpoint:
        return CoordinatorRendezvous(params, connection)
    if params.backend == "infermesh" and not params.endpoint:
        path = params.get(
            "file", os.environ.get(FILE_STORE_ENV, f"/tmp/infermesh-rdzv-{params.run_id}")
        )
        params.config["store_type"] = "file"
        params.endpoint = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    backend, store = create_backend(params)
    timeout = RendezvousTimeout(
        join=_timeout(params, "join", 600),
        last_call=_timeout(params, "last_call", 30),
        close=_timeout(params, "close", 30),
        heartbeat=_timeout(params, "heartbeat", 5),
    )
    handler = MeshRendezvousHandler.from_backend(
        params.run_id,
        store,
        backend,
        params.min_nodes,
        params.max_nodes,
        params.local_addr,
        timeout,
        keep_alive_interval=params.get_as_int("keep_alive_interval", 5) or 5,
        keep_alive_max_attempt=params.get_as_int("keep_alive_max_attempt", 3) or 3,
    )
    handler.backend_name = params.backend
    return handler


def handler_factory() -> Callable[[RendezvousParameters], RendezvousHandler]:
    """Entry point ``torchrun.handlers: infermesh``: torch calls this to get the creator."""
    return create_handler
