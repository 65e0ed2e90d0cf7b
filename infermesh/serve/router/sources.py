"""Backend sources: the static list of ``--backends``, or the cell's serving endpoints.

:class:`CoordinatorBackendSource` asks the coordinator (``ListEndpoints``) every
``poll_s`` seconds for the model servers that agents declared (``infermesh agent start
--endpoint KIND=URL``) on nodes that take work: a node that dies, drains or is quarantined
drops out of the router's list, and a new one joins, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

from infermesh.client.coordinator import async_stub, pb
from infermesh.serve.router.api import BackendSpec

__all__ = ["CoordinatorBackendSource", "StaticBackendSource"]

logger = logging.getLogger(__name__)


class StaticBackendSource:
    """A fixed list of backends; :meth:`set` replaces it and wakes :meth:`changes` readers."""

    def __init__(self, specs: Sequence[BackendSpec]) -> None:
        self._specs = list(specs)
        self._changed = asyncio.Event()

    async def backends(self) -> list[BackendSpec]:
        return list(self._specs)

    def set(self, specs: Sequence[BackendSpec]) -> None:
        """Replace the list (tests and embedding code; a coordinator source does this itself)."""
        self._specs = list(specs)
        self._changed.set()

    async def changes(self) -> AsyncIterator[None]:
        while True:
            await self._changed.wait()
            self._changed.clear()
            yield None


class CoordinatorBackendSource:
    """The cell's serving endpoints, polled from the coordinator."""

    def __init__(
        self, address: str, *, kind: str = "", capacity: float = 8.0, poll_s: float = 1.0
    ) -> None:
        self.address = address
        self.kind = kind
        self.capacity = capacity
        self.poll_s = poll_s
        self._specs: list[BackendSpec] = []
        self._channel, self._stub = async_stub(address)

    async def _fetch(self) -> list[BackendSpec] | None:
        try:
            reply = await self._stub.ListEndpoints(
                pb.ListEndpointsRequest(kind=self.kind), timeout=5.0
            )
        except Exception as error:  # grpc.aio.AioRpcError and connection errors
            logger.warning("coordinator %s: cannot list endpoints (%s)", self.address, error)
            return None
        return [
            BackendSpec(url=e.url, kind=e.kind, model=e.model or None, capacity=self.capacity)
            for e in reply.endpoints
        ]

    async def backends(self) -> list[BackendSpec]:
        fetched = await self._fetch()
        if fetched is not None:
            self._specs = fetched
        return list(self._specs)

    async def changes(self) -> AsyncIterator[None]:
        while True:
            await asyncio.sleep(self.poll_s)
            fetched = await self._fetch()
            # an unreachable coordinator keeps the last list: routing goes on meanwhile
            if fetched is not None and fetched != self._specs:
                self._specs = fetched
                yield None

    async def close(self) -> None:
        await self._channel.close()
