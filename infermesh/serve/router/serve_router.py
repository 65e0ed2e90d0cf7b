"""Run a router until SIGINT/SIGTERM (what ``infermesh router start`` calls)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

from infermesh.serve._aio import run
from infermesh.serve.router.api import BackendSpec, RouterConfig
from infermesh.serve.router.router import Router
from infermesh.serve.router.sources import StaticBackendSource

__all__ = ["run_router"]


async def _serve(router: Router) -> None:
    port = await router.start()
    cfg = router.config
    arms = " / ".join(router.arms)
    print(
        f"infermesh router: http://{cfg.host}:{port} over {len(router.fleet.backends)} "
        f"backend(s), strategy {arms}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await router.close()


def run_router(config: RouterConfig, specs: Sequence[BackendSpec]) -> None:
    """Build the router over a static backend list and serve until stopped."""

    async def main() -> None:
        await _serve(Router(config, StaticBackendSource(specs)))

    run(main())
