"""``infermesh-run``: the torchrun-compatible launcher.

Order of work, chosen so that a launch costs one ``import torch`` of wall time, not two:

1. parse and validate the command line (no torch): bad input exits 2, nothing started;
2. resolve the rendezvous (``--standalone``, ``--nnodes auto``) and check the ports this node
   will host;
3. start the worker template, which imports torch *while* this process imports torch
   elastic;
4. run torch elastic's agent loop (:class:`MeshAgent`): rendezvous, start, monitor, restart;
5. write ``summary.json`` and print one line: success, or the root cause of the failure.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from infermesh.core.errors import InferMeshError, UsageError
from infermesh.train.launcher.options import LaunchOptions, parse_options
from infermesh.train.launcher.ports import check_master_port, check_rendezvous_port
from infermesh.train.launcher.zygote import Zygote, ZygoteUnavailable
from infermesh.train.runs import RunSummary, node_dir_name

logger = logging.getLogger("infermesh.train.launcher")

__all__ = ["console_main", "launch", "main"]

_DEFAULT_C10D_PORT = 29400


def console_main() -> NoReturn:
    """Entry point of the ``infermesh-run`` console script."""
    sys.exit(main())


PARENT_PID_ENV = "INFERMESH_PARENT_PID"


def die_with_parent() -> None:
    """Under a node agent: get SIGKILL when the agent dies (Linux ``PR_SET_PDEATHSIG``).

    The agent cannot set this between fork and exec (its gRPC threads make ``preexec_fn``
    unsafe), so the launcher sets it on itself and exits if the agent is already gone.
    """
    parent = os.environ.pop(PARENT_PID_ENV, "")
    if not parent.isdigit():
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != int(parent):
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Run the launcher; return the process exit code (0 ok, 1 workers failed, 2 bad input)."""
    die_with_parent()
    try:
        opts = parse_options(argv)
    except UsageError as e:
        print(f"infermesh-run: error: {e}", file=sys.stderr)
        return 2
    _setup_logging(opts.node_name)
    try:
        return launch(opts)
    except UsageError as e:
        print(f"infermesh-run: error: {e}", file=sys.stderr)
        return 2
    except InferMeshError as e:
        print(f"infermesh-run: {e}", file=sys.stderr)
        return 1


def _setup_logging(node: str) -> None:
    level = os.environ.get("LOGLEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[{node} launcher] %(levelname)s %(message)s"))
    pkg = logging.getLogger("infermesh")
    pkg.handlers[:] = [handler]
    pkg.setLevel(level if level in logging._nameToLevel else "INFO")
    pkg.propagate = False


def _run_id_for(opts: LaunchOptions) -> str:
    stem = Path(opts.training_script).stem or "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def submit_target(opts: LaunchOptions) -> tuple[bool, str | None]:
    """(submit?, coordinator): submit mode and where to, or (False, None) to run here.

    A configured coordinator (``--coordinator`` or ``$INFERMESH_COORDINATOR``) without
    ``--rdzv-endpoint``/``--standalone`` means "submit to the cell"; ``--nnodes auto`` without
    one means "submit to an embedded local cell".
    """
    if opts.standalone or opts.rdzv_endpoint:
        return False, None
    from infermesh.client.coordinator import resolve_address

    coordinator = resolve_address(opts.connection.coordinator or None)
    if coordinator:
        return True, coordinator
    return opts.nnodes_auto, None


def _check_connection(opts: LaunchOptions, *, used: bool) -> None:
    """Check the TLS options before anything starts; refuse them where no coordinator is used.

    ``used``: this run talks to a coordinator (submit mode, or ``--rdzv-backend infermesh``
    with an endpoint). The embedded local cell is plaintext on loopback.
    """
    if used:
        opts.connection.tls()  # UsageError on clashing options or missing files
    elif flags := opts.connection.tls_flags():
        raise UsageError(
            f"{', '.join(flags)}: this run talks to no coordinator; submit to a cell with "
            "--coordinator HOST:PORT (or $INFERMESH_COORDINATOR), join one with "
            "--rdzv-backend infermesh --rdzv-endpoint HOST:PORT, or drop the TLS options"
        )


def _resolve_rendezvous(opts: LaunchOptions) -> None:
    """Apply --standalone and torchrun's single-node defaults in place."""
    if opts.standalone or (
        opts.rdzv_backend == "static"
        and not opts.rdzv_endpoint
        and opts.master_port is None
        and opts.max_nodes == 1
    ):
        opts.rdzv_backend, opts.rdzv_endpoint = "c10d", "localhost:0"
        opts.rdzv_id = _run_id_for(opts)
    if opts.master_port is None:
        opts.master_port = 29500
    if opts.rdzv_backend == "static" and not opts.rdzv_endpoint:
        opts.rdzv_endpoint = f"{opts.master_addr}:{opts.master_port}"


def _check_ports(opts: LaunchOptions) -> None:
    if opts.rdzv_backend == "static":
        if opts.node_rank == 0 and opts.master_port:
            check_master_port(opts.master_port, opts.explicit_master_port)
    elif opts.rdzv_backend == "c10d" and opts.rdzv_endpoint:
        host, _, port = opts.rdzv_endpoint.rpartition(":")
        if not host:
            host, port = port, str(_DEFAULT_C10D_PORT)
        if not port.isdigit():
            raise UsageError(
                f"--rdzv-endpoint {opts.rdzv_endpoint!r}: expected HOST:PORT, e.g. node0:29400"
            )
        check_rendezvous_port(host, int(port))


def _resolve_nproc(opts: LaunchOptions) -> int:
    if isinstance(opts.nproc_per_node, int):
        return opts.nproc_per_node
    from torch.distributed.run import determine_local_world_size

    try:
        return int(determine_local_world_size(opts.nproc_per_node))
    except ValueError as e:
        raise UsageError(f"--nproc-per-node {opts.nproc_per_node}: {e}") from None


def _set_omp_threads(nproc: int) -> None:
    if "OMP_NUM_THREADS" not in os.environ and nproc > 1:
        os.environ["OMP_NUM_THREADS"] = "1"
        logger.warning(
            "OMP_NUM_THREADS=1 for each of the %s workers (as torchrun); "
            "set OMP_NUM_THREADS to tune it",
            nproc,
        )


def launch(opts: LaunchOptions) -> int:
    """Launch and supervise this node's workers; return the exit code."""
    to_cell, coordinator = submit_target(opts)
    if to_cell:
        from infermesh.train.launcher.submit import submit_or_local

        _check_connection(opts, used=coordinator is not None)
        return submit_or_local(opts, _resolve_nproc(opts), coordinator)
    _resolve_rendezvous(opts)
    _check_connection(opts, used=opts.rdzv_backend == "infermesh" and bool(opts.rdzv_endpoint))
    nproc = _resolve_nproc(opts)
    _set_omp_threads(nproc)
    _check_ports(opts)
    run_dir_name = _run_id_for(opts) if opts.rdzv_id == "none" else opts.rdzv_id
    run_root = (Path(opts.log_dir or opts.run_dir) / run_dir_name).absolute()
    node_dir = run_root / node_dir_name(opts.node_name)
    node_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = opts.signals_to_handle

    zygote = None
    if opts.worker_start == "fork":
        zygote = Zygote.start(opts.preload)
    try:
        if opts.metrics_port is not None:
            _serve_metrics(opts.metrics_port)
        return _run_agent(opts, nproc, run_root, node_dir, zygote)
    finally:
        if zygote is not None:
            zygote.close()


def _serve_metrics(port: int) -> None:
    from infermesh.obs.metrics import serve

    try:
        serve(port)
    except OSError as e:
        raise UsageError(
            f"--metrics-port {port}: cannot listen ({e.strerror}); pass a free port or 0"
        ) from None


def _make_handler(opts: LaunchOptions, run_root: Path) -> Any:
    from torch.distributed.elastic.rendezvous import RendezvousParameters
    from torch.distributed.elastic.rendezvous import registry as rdzv_registry

    from infermesh.train.launcher.rendezvous import create_handler, create_static_handler

    conf: dict[str, Any] = dict(opts.rdzv_conf)
    if opts.rdzv_backend == "static":
        conf["rank"] = opts.node_rank
    if opts.rdzv_backend == "infermesh" and not opts.rdzv_endpoint:
        conf.setdefault("file", str(run_root / "rendezvous.store"))
    params = RendezvousParameters(
        backend=opts.rdzv_backend,
        endpoint=opts.rdzv_endpoint,
        run_id=opts.rdzv_id,
        min_nodes=opts.min_nodes,
        max_nodes=opts.max_nodes,
        local_addr=opts.local_addr,
        **conf,
    )
    if opts.rdzv_backend in ("c10d", "infermesh"):
        return create_handler(params, opts.connection)
    if opts.rdzv_backend == "static":
        return create_static_handler(params)
    try:
        return rdzv_registry.get_rendezvous_handler(params)
    except ValueError as e:
        if "not registered" in str(e) or "No rendezvous handler" in str(e):
            raise UsageError(
                f"--rdzv-backend {opts.rdzv_backend!r} is unknown; known: static, c10d, "
                f"infermesh, etcd, etcd-v2 (or a torchrun.handlers plug-in)"
            ) from None
        raise


def _logs_specs(opts: LaunchOptions, run_root: Path, node_dir: Path) -> Any:
    from torch.distributed.elastic.multiprocessing import Std

    from infermesh.train.launcher.logs import RunDirLogsSpecs

    redirects, tee = Std.from_str(opts.redirects), Std.from_str(opts.tee)
    if opts.logs_specs:
        from importlib.metadata import entry_points

        eps = entry_points(group="torchrun.logs_specs").select(name=opts.logs_specs)
        if not eps:
            raise UsageError(
                f"--logs-specs {opts.logs_specs!r}: no torchrun.logs_specs entry point of "
                f"that name is installed"
            )
        cls = next(iter(eps)).load()
        return cls(
            log_dir=str(run_root),
            redirects=redirects,
            tee=tee,
            local_ranks_filter=opts.local_ranks_filter,
        )
    return RunDirLogsSpecs(node_dir, redirects, tee, opts.local_ranks_filter)


def _entrypoint(opts: LaunchOptions, fork: bool) -> tuple[Any, list[str]]:
    """(entrypoint, args) for torch elastic's WorkerSpec; for exec as torchrun builds them."""
    if fork:
        return opts.training_script, list(opts.training_script_args)
    if opts.run_path:
        from torch.distributed.run import run_script_path

        return run_script_path, [opts.training_script, *opts.training_script_args]
    if opts.no_python:
        return opts.training_script, list(opts.training_script_args)
    cmd = os.getenv("PYTHON_EXEC", sys.executable)
    args = ["-u", *(["-m"] if opts.module else []), opts.training_script]
    return cmd, [*args, *opts.training_script_args]


def _run_agent(
    opts: LaunchOptions, nproc: int, run_root: Path, node_dir: Path, zygote: Zygote | None
) -> int:
    from torch.distributed.elastic import events
    from torch.distributed.elastic.agent.server.api import WorkerSpec
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.numa.binding import AffinityMode, NumaOptions

    from infermesh.obs.tracing import get_tracer
    from infermesh.train.launcher.agent import MeshAgent
    from infermesh.train.launcher.logs import prefix

    started = time.time()
    entrypoint, args = _entrypoint(opts, fork=zygote is not None)
    handler = _make_handler(opts, run_root)
    spec = WorkerSpec(
        role=opts.role,
        local_world_size=nproc,
        entrypoint=entrypoint,
        args=tuple(args),
        rdzv_handler=handler,
        max_restarts=opts.max_restarts,
        monitor_interval=opts.monitor_interval,
        master_addr=None,  # every rendezvous round publishes the workers' own store
        master_port=None,
        local_addr=opts.local_addr,
        event_log_handler=opts.event_log_handler,
        numa_options=None
        if opts.numa_binding is None
        else NumaOptions(affinity_mode=AffinityMode(opts.numa_binding)),
        duplicate_stdout_filters=opts.duplicate_stdout_filters,
        duplicate_stderr_filters=opts.duplicate_stderr_filters,
        virtual_local_rank=opts.virtual_local_rank,
    )
    if zygote is not None:
        try:
            ready = zygote.wait_ready()
            logger.debug("worker template ready: %s", ready)
        except ZygoteUnavailable as e:
            logger.warning("worker template unavailable (%s); starting workers with exec", e)
            zygote = None
            exec_entry, exec_args = _entrypoint(opts, fork=False)
            spec.entrypoint, spec.args = exec_entry, tuple(exec_args)
    agent = MeshAgent(
        spec,
        _logs_specs(opts, run_root, node_dir),
        node=opts.node_name,
        state_dir=node_dir,
        zygote=zygote,
        module=opts.module,
        hang_timeout=opts.hang_timeout,
        start_method=opts.start_method,
        log_line_prefix_template=os.getenv("TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE")
        or prefix(opts.node_name),
        shutdown_timeout=opts.shutdown_timeout,
    )
    status, code = "failed", 1
    shutdown_rdzv = True
    try:
        with get_tracer(__name__).start_as_current_span("launch") as span:
            span.set_attributes(
                {
                    "job": opts.rdzv_id,
                    "node": opts.node_name,
                    "local_world_size": nproc,
                    "backend": opts.rdzv_backend,
                }
            )
            result = agent.run()
        events.record(agent.get_event_succeeded(), opts.event_log_handler)
        if result is None or not result.is_failed():
            status, code = "succeeded", 0
    except SignalException as e:
        shutdown_rdzv = False  # keep the rendezvous open for the other nodes
        status, code = f"interrupted by {e.sigval.name}", 128 + int(e.sigval)
        events.record(agent.get_event_failed(), opts.event_log_handler)
    except Exception as e:  # rendezvous timeouts, a lost store, a dead template...
        logger.debug("agent failed", exc_info=True)
        status = _describe_agent_error(e, opts)
        events.record(agent.get_event_failed(), opts.event_log_handler)
    finally:
        if shutdown_rdzv:
            handler.shutdown()
    _report(opts, agent, status, started, node_dir, nproc)
    return code


def _describe_agent_error(e: Exception, opts: LaunchOptions) -> str:
    from torch.distributed.elastic.rendezvous import RendezvousTimeoutError

    if isinstance(e, RendezvousTimeoutError):
        return (
            f"error: rendezvous '{opts.rdzv_id}' timed out: fewer than {opts.min_nodes} node(s) "
            f"joined; start the other nodes, or raise --rdzv-conf join_timeout=SECONDS"
        )
    first = str(e).splitlines()[0] if str(e) else ""
    return f"error: {type(e).__name__}: {first}"


def _report(
    opts: LaunchOptions, agent: Any, status: str, started: float, node_dir: Path, nproc: int
) -> None:
    ended = time.time()
    root = agent.root_cause() if status != "succeeded" else None
    run_name = node_dir.parent.name
    summary = RunSummary(
        run_id=run_name,
        rdzv_id=opts.rdzv_id,
        node=opts.node_name,
        status=status,
        started=started,
        ended=ended,
        attempts=agent.attempts,
        restarts=agent.restarts,
        local_world_size=nproc,
        script=opts.training_script,
        path=node_dir / "summary.json",
        failures=[f.to_dict() for f in agent.failures],
        root_cause=root.to_dict() if root else None,
    )
    summary.write()
    took = f"{ended - started:.1f}s"
    if status == "succeeded":
        restarts = summary.restarts
        print(
            f"infermesh-run: {run_name} succeeded on {opts.node_name}: {nproc} local "
            f"worker(s), {restarts} restart(s), {took}; logs in {node_dir}",
            file=sys.stderr,
        )
        return
    if root is None:
        print(
            f"infermesh-run: {run_name} {status} (after {took}); logs in {node_dir}",
            file=sys.stderr,
        )
        return
    lines = [f"infermesh-run: {run_name} FAILED after {took}: {root.headline()}"]
    if root.traceback:
        lines += ["  " + line for line in root.traceback.rstrip().splitlines()]
    lines.append(f"  logs: {root.log_dir or node_dir}  (all failures: {node_dir}/summary.json)")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    console_main()
