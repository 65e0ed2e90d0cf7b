"""``infermesh coordinator start``, ``infermesh agent start`` and ``infermesh up``.

``up`` runs an embedded local cell in one process: a coordinator on loopback and N agents
(``node-0`` ... ``node-N-1``), each agent with its own work directory under the state
directory. It prints one line with the coordinator address when the cell is ready (and
writes it to ``--ready-file`` for scripts), then serves until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import getpass
import logging
import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from infermesh.agent.agent import NodeAgent
from infermesh.agent.telemetry import Telemetry
from infermesh.cli._cell import (
    CaOpt,
    CertOpt,
    InsecureOpt,
    KeyOpt,
    ServerNameOpt,
    TlsDirOpt,
)
from infermesh.cli.security import server_security
from infermesh.client.connection import Connection
from infermesh.client.coordinator import DEFAULT_PORT, parse_address, pb
from infermesh.control.auth import SecurityConfig
from infermesh.control.coordinator import Coordinator, check_port, default_store_url
from infermesh.core.errors import InferMeshError, UsageError
from infermesh.security.ca import (
    CA_KEY,
    default_server_names,
    init_ca,
    load_ca,
    write_bundle,
)
from infermesh.security.identity import SpiffeId
from infermesh.security.tls import ENV_CA, ENV_CERT, ENV_DIR, ENV_KEY, ClientTls, TlsFiles
from infermesh.serve._aio import until_signal

LOCAL_TRUST_DOMAIN = "local.infermesh"
"""Trust domain of the CA ``infermesh up --secure`` makes."""

coordinator_app = typer.Typer(help="Run the cell coordinator.", no_args_is_help=True)
agent_app = typer.Typer(help="Run a node agent.", no_args_is_help=True)

logger = logging.getLogger(__name__)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _serve(main: asyncio.Future[None] | object) -> None:
    """Run a coroutine until it ends or SIGINT/SIGTERM; errors become one line, exit 2/1."""
    try:
        asyncio.run(main)  # type: ignore[arg-type]
    except UsageError as e:
        typer.echo(f"infermesh: error: {e}", err=True)
        raise typer.Exit(2) from None
    except InferMeshError as e:
        typer.echo(f"infermesh: {e}", err=True)
        raise typer.Exit(1) from None


def _endpoints(items: list[str]) -> list[pb.ServingEndpoint]:
    """``--endpoint`` values (``KIND=URL`` or a bare URL of our own server)."""
    if not items:
        return []
    from infermesh.serve.router.api import parse_backends

    specs = parse_backends(",".join(items), default_kind="infermesh")
    return [pb.ServingEndpoint(url=s.url, kind=s.kind, model=s.model or "") for s in specs]


def _metrics(port: int, host: str) -> None:
    if port < 0:
        return
    from infermesh.obs.metrics import serve

    bound = serve(check_port(port), addr=host)
    typer.echo(f"infermesh: metrics at http://{host}:{bound}/metrics")


def _parse_labels(labels: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE, e.g. --label gpu=h100")
        out[key] = value
    return out


@coordinator_app.command("start")
def coordinator_start(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(DEFAULT_PORT, help="gRPC port (0 picks a free one)."),
    cell: str = typer.Option("local", help="Name of the cell this coordinator runs."),
    state_dir: str = typer.Option(".infermesh/coordinator", help="Where the store lives."),
    store: str = typer.Option("", help="Store URL (default: sqlite under --state-dir)."),
    suspect_after: float = typer.Option(3.0, help="Seconds of silence before SUSPECT."),
    dead_after: float = typer.Option(10.0, help="Seconds of silence before DEAD."),
    quarantine_stragglers: bool = typer.Option(
        False, help="Quarantine a node whose rank a job's comm hook reports as a straggler."
    ),
    plan_interval: float = typer.Option(
        10.0,
        min=0.0,
        help="Seconds between re-plans of the running jobs' collectives (0: never plan).",
    ),
    metrics_port: int = typer.Option(-1, help="Serve Prometheus /metrics here (0: any port)."),
    log_level: str = typer.Option("INFO", help="Log level."),
    tls_dir: TlsDirOpt = "",
    ca: CaOpt = "",
    cert: CertOpt = "",
    key: KeyOpt = "",
    insecure: InsecureOpt = False,
    token_port: int = typer.Option(
        -1, help="Extra TLS port for bearer-token callers without certificates (-1: none)."
    ),
    admin: Annotated[
        list[str] | None,
        typer.Option(help="Subject that is always admin, e.g. user:alice (repeatable)."),
    ] = None,
    jwt_issuer: str = typer.Option("", help="Accept JWTs from this OIDC issuer."),
    jwt_audience: str = typer.Option("", help="Audience the JWTs must name."),
    jwt_jwks_file: str = typer.Option("", help="The issuer's JWKS as a file."),
    jwt_jwks_url: str = typer.Option("", help="The issuer's JWKS URL."),
) -> None:
    """Start the coordinator of one cell and serve until Ctrl-C."""
    _logging(log_level)
    _metrics(metrics_port, host)

    async def main() -> None:
        files = [tls_dir, ca, cert, key]
        if not any(files) and not insecure:  # the environment stands in for the flags
            files = [os.environ.get(v, "") for v in (ENV_DIR, ENV_CA, ENV_CERT, ENV_KEY)]
        security = server_security(
            tls_dir=files[0],
            ca=files[1],
            cert=files[2],
            key=files[3],
            insecure=insecure,
            token_port=token_port,
            admins=admin,
            jwt_issuer=jwt_issuer,
            jwt_audience=jwt_audience,
            jwt_jwks_file=jwt_jwks_file,
            jwt_jwks_url=jwt_jwks_url,
        )
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        coord = Coordinator(
            store_url=store or default_store_url(state_dir),
            cell=cell,
            host=host,
            port=check_port(port),
            suspect_after_s=suspect_after,
            dead_after_s=dead_after,
            quarantine_stragglers=quarantine_stragglers,
            security=security,
            plan_interval_s=plan_interval,
        )
        await coord.start()
        # A busy coordinator allocates short-lived objects on every heartbeat; with the
        # default thresholds the cyclic collector runs every 700 allocations and its full
        # passes over every node's state show up as heartbeat latency. The state loaded at
        # start is frozen (never scanned again) and collections run far less often.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        mode = security.describe()
        if not security.secure and not insecure:
            mode += ", loopback only; see `infermesh certs` for a secure cell"
        if coord.token_port:
            mode += f"; bearer tokens without certificates on port {coord.token_port}"
        typer.echo(f"infermesh: coordinator of cell {cell} at {coord.address} ({mode})")
        try:
            await until_signal()
        finally:
            await coord.stop()

    _serve(main())


@agent_app.command("start")
def agent_start(
    coordinator: str = typer.Option(
        "", help="Coordinator HOST:PORT (default: $INFERMESH_COORDINATOR)."
    ),
    node_id: str = typer.Option("", help="Node id (default: the hostname)."),
    cell: str = typer.Option("local", help="Cell the node belongs to."),
    workdir: str = typer.Option(".infermesh/agent", help="Run directories go here."),
    slots: int = typer.Option(-1, help="Worker slots (default: GPUs, or CPU cores)."),
    rack: str = typer.Option("", help="Rack name, used to place ranks close together."),
    label: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE node label (repeatable).")
    ] = None,
    addr: str = typer.Option("", help="Address other nodes reach this one on."),
    fake_gpus: int = typer.Option(
        0, help="Report this many scripted fake GPUs (tests and demos only)."
    ),
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            help="A model server on this node, KIND=URL or URL (our server): the cell's "
            "routers route to it and the agent scrapes its /metrics (repeatable)."
        ),
    ] = None,
    metrics_port: int = typer.Option(-1, help="Serve Prometheus /metrics here (0: any port)."),
    log_level: str = typer.Option("INFO", help="Log level."),
    tls_dir: TlsDirOpt = "",
    ca: CaOpt = "",
    cert: CertOpt = "",
    key: KeyOpt = "",
    tls_server_name: ServerNameOpt = "",
    insecure: InsecureOpt = False,
) -> None:
    """Register this machine with the coordinator and run the work it assigns."""
    _logging(log_level)
    _metrics(metrics_port, "0.0.0.0")

    async def main() -> None:
        conn = Connection(
            coordinator=coordinator,
            tls_dir=tls_dir,
            ca=ca,
            cert=cert,
            key=key,
            tls_server_name=tls_server_name,
            insecure=insecure,
        )
        tls = conn.tls()
        agent = _make_agent(
            conn.address(),
            node_id or socket.gethostname(),
            cell,
            Path(workdir),
            slots,
            rack,
            _parse_labels(label or []),
            addr,
            fake_gpus,
            _endpoints(endpoint or []),
            tls,
        )
        task = asyncio.create_task(agent.run())
        stopper = asyncio.create_task(until_signal())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        agent.stop()
        stopper.cancel()
        await task

    _serve(main())


def _make_agent(
    address: str,
    node_id: str,
    cell: str,
    workdir: Path,
    slots: int,
    rack: str,
    labels: dict[str, str],
    addr: str,
    fake_gpus: int,
    endpoints: list[pb.ServingEndpoint] | None = None,
    tls: ClientTls | None = None,
) -> NodeAgent:
    return NodeAgent(
        coordinator=address,
        node_id=node_id,
        cell=cell,
        workdir=workdir,
        slots=None if slots < 0 else slots,
        rack=rack,
        labels=labels,
        addr=addr or None,
        telemetry=Telemetry.for_node(
            fake_gpus, endpoints or [], collective_socket=_socket_path(workdir)
        ),
        endpoints=endpoints,
        tls=tls,
    )


@dataclass(frozen=True)
class _LocalPki:
    security: SecurityConfig
    nodes: dict[str, Path]
    """Each agent's bundle directory."""
    user_dir: Path
    admin: str


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return "operator"


def _local_pki(certs: Path, cell: str, node_ids: list[str], user: str) -> _LocalPki:
    """The certificates of a ``up --secure`` cell: the CA is made once and kept; the leaf
    certificates (coordinator, agents, the user) are issued afresh at every start."""
    ca = load_ca(certs) if (certs / CA_KEY).exists() else init_ca(certs, LOCAL_TRUST_DOMAIN)
    dns, ips = default_server_names()
    server = ca.issue(SpiffeId.coordinator(ca.trust_domain, cell), dns=dns, ips=ips)
    coordinator_dir = write_bundle(certs / f"coordinator-{cell}", server)
    nodes = {
        n: write_bundle(certs / f"node-{n}", ca.issue(SpiffeId.node(ca.trust_domain, cell, n)))
        for n in node_ids
    }
    user_dir = write_bundle(
        certs / f"user-{user}", ca.issue(SpiffeId.user(ca.trust_domain, cell, user))
    )
    admin = f"user:{user}"
    files = TlsFiles.from_options(str(coordinator_dir))
    return _LocalPki(SecurityConfig(tls=files, admins=(admin,)), nodes, user_dir, admin)


def _socket_path(workdir: Path) -> str:
    """The agent's collective-telemetry socket: in its work dir, or /tmp if that is too long."""
    path = str(workdir.resolve() / "signal.sock")
    if len(path.encode()) > 100:
        path = f"/tmp/infermesh-{zlib.crc32(path.encode()):08x}.sock"
    workdir.mkdir(parents=True, exist_ok=True)
    return path


def up(
    agents: int = typer.Option(2, help="Agents (nodes) to start on this machine."),
    port: int = typer.Option(DEFAULT_PORT, help="Coordinator port (0 picks a free one)."),
    state_dir: str = typer.Option(".infermesh/cell", help="Store and agents' work dirs."),
    slots: int = typer.Option(-1, help="Worker slots per agent (default: CPU cores)."),
    cell: str = typer.Option("local", help="Cell name."),
    ready_file: str = typer.Option("", help="Write the coordinator address here."),
    dead_after: float = typer.Option(10.0, help="Seconds of silence before a node is DEAD."),
    secure: bool = typer.Option(
        False,
        "--secure",
        help="mTLS: a CA in STATE_DIR/certs (made once), fresh certificates for the "
        "coordinator, each agent and you (an admin) at every start.",
    ),
    user: str = typer.Option(
        "", help="With --secure: your user name in the cell (default: the login name)."
    ),
    log_level: str = typer.Option("WARNING", help="Log level."),
) -> None:
    """Start an embedded local cell: a coordinator and N agents on loopback."""
    _logging(log_level)
    if agents < 1:
        typer.echo(f"infermesh: error: --agents {agents}: start at least one agent", err=True)
        raise typer.Exit(2)
    if user and not secure:
        typer.echo("infermesh: error: --user names you in a --secure cell; add --secure", err=True)
        raise typer.Exit(2)
    state = Path(state_dir)
    ids = [f"node-{i}" for i in range(agents)]
    try:
        pki = _local_pki(state / "certs", cell, ids, user or _login()) if secure else None
    except InferMeshError as error:
        typer.echo(f"infermesh: error: {error}", err=True)
        raise typer.Exit(2) from None

    async def main() -> None:
        state.mkdir(parents=True, exist_ok=True)
        coord = Coordinator(
            store_url=default_store_url(state),
            cell=cell,
            host="127.0.0.1",
            port=check_port(port),
            dead_after_s=dead_after,
            security=pki.security if pki else None,
        )
        await coord.start()
        nodes = [
            _make_agent(
                coord.address,
                node_id,
                cell,
                state / node_id,
                slots,
                "",
                {},
                "127.0.0.1",
                0,
                tls=ClientTls.from_options(str(pki.nodes[node_id])) if pki else None,
            )
            for node_id in ids
        ]
        tasks = [asyncio.create_task(a.run()) for a in nodes]
        await asyncio.wait_for(asyncio.gather(*(a.registered.wait() for a in nodes)), 30)
        how = (
            f"mTLS, loopback only; you are admin {pki.admin}: add --tls-dir {pki.user_dir} to "
            f"client commands or export {ENV_DIR}={pki.user_dir}"
            if pki
            else "insecure, loopback only"
        )
        typer.echo(
            f"infermesh: local cell {cell} up: coordinator {coord.address} ({how}), "
            f"{agents} agent(s); Ctrl-C stops it",
            err=False,
        )
        if ready_file:
            Path(ready_file).write_text(coord.address + "\n")
        try:
            await until_signal()
        finally:
            for a in nodes:
                a.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            await coord.stop()
            if ready_file:
                with contextlib.suppress(OSError):
                    Path(ready_file).unlink()

    _serve(main())


__all__ = ["agent_app", "coordinator_app", "parse_address", "up"]
