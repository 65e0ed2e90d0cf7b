"""Backend sources: the static list of ``--backends`` (a coordinator source comes later)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from infermesh.serve.router.api import BackendSpec

__all__ = ["StaticBackendSource"]


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
