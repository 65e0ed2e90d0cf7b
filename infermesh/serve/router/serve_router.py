"""Run a router until SIGINT/SIGTERM (what ``infermesh router start`` calls)."""

from __future__ import annotations

from collections.abc import Sequence

from infermesh.serve._aio import run, until_signal
from infermesh.serve.router.api import BackendSpec, RouterConfig
from infermesh.serve.router.router import Router
from infermesh.serve.router.sources import CoordinatorBackendSource, StaticBackendSource

__all__ = ["run_router"]


def config_capacity(specs: Sequence[BackendSpec]) -> float:
    return specs[0].capacity if specs else 8.0


async def _serve(router: Router) -> None:
    port = await router.start()
    cfg = router.config
    arms = " / ".join(router.arms)
    print(
        f"infermesh router: http://{cfg.host}:{port} over {len(router.fleet.backends)} "
        f"backend(s), strategy {arms}",
        flush=True,
    )
    try:
        await until_signal()
    finally:
        await router.close()


def run_router(
    config: RouterConfig, specs: Sequence[BackendSpec] = (), coordinator: str | None = None
) -> None:
    """Build the router over a static backend list, or the cell's endpoints, and serve."""

    async def main() -> None:
        if coordinator:
            source = CoordinatorBackendSource(coordinator, capacity=config_capacity(specs))
            try:
                await _serve(Router(config, source))
            finally:
                await source.close()
        else:
            await _serve(Router(config, StaticBackendSource(specs)))

    run(main())
