"""``infermesh serve`` and ``infermesh router start``: thin commands over ``infermesh.serve``.

``app`` bundles both so that ``python -m infermesh.cli.serve serve ...`` works on its own;
the main CLI registers :func:`serve` as a command and :data:`router_app` as a group.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, NoReturn

import typer

from infermesh.core.errors import InferMeshError, UsageError

__all__ = ["app", "router_app", "serve"]

app = typer.Typer(name="infermesh", no_args_is_help=True, add_completion=False)
router_app = typer.Typer(
    name="router", help="The inference router (OpenAI-compatible ingress).", no_args_is_help=True
)
app.add_typer(router_app, name="router")


TlsDirHttp = Annotated[
    str,
    typer.Option(
        help="Serve HTTPS with the bundle in this directory (cert.pem, key.pem, ca.pem, as "
        "`infermesh certs issue` writes); reloaded when the files change."
    ),
]


def _fail(exc: InferMeshError) -> NoReturn:
    typer.echo(f"infermesh: error: {exc}", err=True)
    raise typer.Exit(2)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command("serve")
def serve(
    checkpoint: Annotated[
        str,
        typer.Option(help="A run's checkpoint directory (uses 'latest') or a step_* directory."),
    ],
    port: Annotated[
        int, typer.Option(help="Port to listen on (the router's with --replicas).")
    ] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    replicas: Annotated[
        int, typer.Option(help="Server processes; more than 1 puts the router in front.")
    ] = 1,
    max_batch: Annotated[int, typer.Option(help="Largest running batch per replica.")] = 8,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting for a slot before 503 (per replica).")
    ] = 64,
    model_name: Annotated[str, typer.Option(help="Model id clients send.")] = "tiny-gpt",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    strategy: Annotated[
        str, typer.Option(help="Router strategy with --replicas.")
    ] = "power_of_two",
    max_restarts: Annotated[
        int,
        typer.Option(
            help="With --replicas: restarts of a replica that keeps exiting (each within a "
            "minute of its start) before it is given up on."
        ),
    ] = 5,
    tls_dir: TlsDirHttp = "",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    """Serve a checkpoint of the tiny GPT with OpenAI-compatible endpoints."""
    from infermesh.serve.replicas import run_replicas
    from infermesh.serve.router.api import RouterConfig
    from infermesh.serve.server.api import ServerConfig
    from infermesh.serve.server.http_server import run_server

    _logging(verbose)
    try:
        if replicas < 1:
            raise UsageError(f"--replicas must be >= 1, got {replicas}")
        server = ServerConfig(
            checkpoint=checkpoint,
            host=host,
            port=port,
            max_batch=max_batch,
            max_queue=max_queue,
            model_name=model_name,
            device=device,
            tls_dir=tls_dir,
        )
        if replicas == 1:
            run_server(server)
        else:  # replicas listen on loopback; the router is the public (TLS) port
            server = ServerConfig(**{**server.__dict__, "host": "127.0.0.1", "tls_dir": ""})
            router = RouterConfig(host=host, port=port, strategy=strategy, tls_dir=tls_dir)
            run_replicas(server, replicas, router, max_restarts)
    except InferMeshError as e:
        _fail(e)


@router_app.command("start")
def router_start(
    backends: Annotated[
        str, typer.Option(help="Comma-separated URL or KIND=URL (kinds: vllm, sglang, ...).")
    ] = "",
    coordinator: Annotated[
        str,
        typer.Option(
            help="Route to the cell's serving endpoints instead of --backends "
            "(default $INFERMESH_COORDINATOR when --backends is not given)."
        ),
    ] = "",
    strategy: Annotated[str, typer.Option(help="Routing strategy name.")] = "power_of_two",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    strategy_options: Annotated[
        str, typer.Option(help="Strategy options as JSON, e.g. '{\"spill_load\": 2}'.")
    ] = "{}",
    ab_strategy: Annotated[str, typer.Option(help="Second arm of an A/B split.")] = "",
    ab_fraction: Annotated[float, typer.Option(help="Share of traffic to the B arm.")] = 0.5,
    backend_kind: Annotated[
        str, typer.Option(help="Kind of backends given as bare URLs.")
    ] = "vllm",
    backend_capacity: Annotated[
        float, typer.Option(help="Concurrent requests one backend serves well.")
    ] = 8.0,
    hedge_fraction: Annotated[float, typer.Option(help="Max share of hedged requests.")] = 0.1,
    hedge_quantile: Annotated[float, typer.Option(help="Hedge after this TTFB quantile.")] = 0.95,
    max_retries: Annotated[int, typer.Option(help="Backends tried after a failure.")] = 2,
    tenant_rate: Annotated[float, typer.Option(help="Requests/s per API key (0: off).")] = 0.0,
    tenant_burst: Annotated[float, typer.Option(help="Burst per API key.")] = 20.0,
    max_inflight: Annotated[int, typer.Option(help="In-flight requests before 429.")] = 4096,
    saturation_load: Annotated[
        float, typer.Option(help="429 when every backend's load exceeds this (0: off).")
    ] = 0.0,
    decision_budget: Annotated[
        float, typer.Option(help="Strategy decision budget in seconds.")
    ] = 0.002,
    scrape_interval: Annotated[float, typer.Option(help="Seconds between load scrapes.")] = 0.1,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1 << 20,
    tls_dir: TlsDirHttp = "",
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO.")] = False,
) -> None:
    """Route OpenAI requests over backends with a strategy, hedging and admission control."""
    from infermesh.serve.router.api import RouterConfig, parse_backends
    from infermesh.serve.router.serve_router import run_router

    _logging(verbose)
    try:
        try:
            options = json.loads(strategy_options)
        except ValueError as e:
            raise UsageError(
                f"--strategy-options is not JSON ({e}); e.g. '{{\"probes\": 3}}'"
            ) from None
        if not isinstance(options, dict):
            raise UsageError("--strategy-options must be a JSON object")
        from infermesh.client.coordinator import resolve_address

        cell = resolve_address(coordinator or None) if not backends else None
        if backends and coordinator:
            raise UsageError("give either --backends or --coordinator, not both")
        if not backends and not cell:
            raise UsageError(
                "no backends: pass --backends URL,URL, or --coordinator HOST:PORT (or set "
                "INFERMESH_COORDINATOR) to route to the cell's serving endpoints"
            )
        specs = parse_backends(backends, backend_kind, backend_capacity) if backends else []
        cfg = RouterConfig(
            host=host,
            port=port,
            strategy=strategy,
            strategy_options=options,
            ab_strategy=ab_strategy or None,
            ab_fraction=ab_fraction,
            hedge_fraction=hedge_fraction,
            hedge_quantile=hedge_quantile,
            max_retries=max_retries,
            tenant_rate=tenant_rate,
            tenant_burst=tenant_burst,
            max_inflight=max_inflight,
            saturation_load=saturation_load,
            decision_budget_s=decision_budget,
            scrape_interval_s=scrape_interval,
            max_body_bytes=max_body_bytes,
            tls_dir=tls_dir,
        )
        run_router(cfg, specs, coordinator=cell)
    except InferMeshError as e:
        _fail(e)


if __name__ == "__main__":
    app()
