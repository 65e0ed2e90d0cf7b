"""Command line of ``infermesh-run``: every ``torchrun`` flag plus InferMesh's own.

This module must not import torch: the launcher parses and validates its arguments, and
starts its pre-imported worker template, before it pays for ``import torch``.

Precedence of a setting, highest first: the command line, the ``PET_<FLAG>`` environment
variable (as with torchrun), a key of the ``--config`` YAML file, the built-in default.

Differences from torchrun, all additive:

- ``--nnodes auto``: the cell decides; with no coordinator reachable it means "this machine".
- ``--coordinator HOST:PORT``: the cell's coordinator (control plane), reached with the
  TLS options every ``infermesh`` client command takes: ``--tls-dir``, ``--ca``/``--cert``/
  ``--key``, ``--token``, ``--tls-server-name``, ``--insecure`` (empty: ``$INFERMESH_TLS_*``,
  ``$INFERMESH_TOKEN``). They serve submit mode and ``--rdzv-backend infermesh``.
- ``--hang-timeout SECONDS``: restart a worker group whose progress heartbeat stopped.
- ``--run-dir DIR``: per-rank logs, error files, heartbeats and a run summary go under
  ``DIR/<run_id>/`` (default ``runs``), not ``/tmp``.
- ``--worker-start fork|exec``: ``fork`` (default for Python scripts) forks workers from a
  template process that imported torch once, so restarts do not pay for the import again.
- ``--metrics-port PORT``: Prometheus ``/metrics`` of the launcher (restarts, failures,
  hangs, heartbeat ages, rendezvous and start durations).
- ``--config FILE``: YAML mapping of any of the long flags above (``hang_timeout: 300``).
- ``-r/--redirects`` and ``-t/--tee`` default to ``3`` (both streams to the per-rank log
  files and to the console, each line prefixed with node, global rank and local rank).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

from infermesh.client.connection import Connection
from infermesh.core.errors import UsageError

__all__ = ["LaunchOptions", "build_parser", "parse_options"]

_NPROC_WORDS = ("auto", "cpu", "gpu", "xpu")
_START_METHODS = ("spawn", "fork", "forkserver")
_NUMA_MODES = ("node", "socket", "exclusive", "core-complex")


class _Env(argparse.Action):
    """An option whose default comes from ``PET_<DEST>`` (torchrun's convention)."""

    def __init__(self, dest: str, default: Any = None, **kwargs: Any) -> None:
        default = os.environ.get(f"PET_{dest.upper()}", default)
        super().__init__(dest=dest, default=default, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values)


class _EnvFlag(argparse.Action):
    """A store-true flag that ``PET_<DEST>=1`` also turns on (torchrun's ``check_env``)."""

    def __init__(self, dest: str, default: bool = False, **kwargs: Any) -> None:
        raw = os.environ.get(f"PET_{dest.upper()}", "1" if default else "0")
        super().__init__(dest=dest, const=True, default=raw not in ("", "0"), nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, True)


class _Parser(argparse.ArgumentParser):
    """argparse with torchrun's grammar, but one-line errors and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see infermesh-run --help)")


def _comma_list(value: str) -> list[str]:
    placeholder = "\0"
    return [item.replace(placeholder, ",") for item in value.replace(",,", placeholder).split(",")]


def build_parser() -> argparse.ArgumentParser:
    """The ``infermesh-run`` parser: torchrun 2.13's flags (both spellings) and ours."""
    p = _Parser(
        prog="infermesh-run",
        description="Launch a PyTorch training script on one or more nodes (torchrun-compatible).",
    )
    add = p.add_argument
    # Worker and node counts.
    add(
        "--nnodes",
        action=_Env,
        default="1:1",
        help="Number of nodes: N, MIN:MAX, or 'auto' (the cell decides).",
    )
    add(
        "--nproc-per-node",
        "--nproc_per_node",
        action=_Env,
        default="1",
        help="Workers per node: an integer or one of auto, cpu, gpu, xpu.",
    )
    # Rendezvous.
    add(
        "--rdzv-backend",
        "--rdzv_backend",
        action=_Env,
        default="static",
        help="Rendezvous backend: static, c10d, infermesh, etcd, etcd-v2 or a plug-in name.",
    )
    add(
        "--rdzv-endpoint",
        "--rdzv_endpoint",
        action=_Env,
        default="",
        help="Rendezvous endpoint, usually HOST:PORT.",
    )
    add("--rdzv-id", "--rdzv_id", action=_Env, default="none", help="Job id shared by all nodes.")
    add(
        "--rdzv-conf",
        "--rdzv_conf",
        action=_Env,
        default="",
        help="Extra rendezvous settings: KEY=VALUE,KEY=VALUE.",
    )
    add(
        "--standalone",
        action=_EnvFlag,
        help="Single-node job: a local rendezvous on a free port; ignores --rdzv-* values.",
    )
    # Worker lifecycle.
    add(
        "--max-restarts",
        "--max_restarts",
        action=_Env,
        type=int,
        default=None,
        help="Worker group restarts allowed before the job fails (default 0; 3 for jobs "
        "submitted to a cell, so a lost node can be replaced).",
    )
    add(
        "--monitor-interval",
        "--monitor_interval",
        action=_Env,
        type=float,
        default=0.1,
        help="Seconds between checks of the workers' state.",
    )
    add(
        "--start-method",
        "--start_method",
        action=_Env,
        default="spawn",
        choices=_START_METHODS,
        help="Multiprocessing start method for --run-path workers.",
    )
    add(
        "--event-log-handler",
        "--event_log_handler",
        action=_Env,
        default="null",
        help="Name of a registered torch elastic event handler.",
    )
    add("--role", action=_Env, default="default", help="User-defined role of the workers.")
    add("-m", "--module", action=_EnvFlag, help="Run the script as a module, like python -m.")
    add(
        "--no-python",
        "--no_python",
        action=_EnvFlag,
        help="Execute the script directly, without prepending python.",
    )
    add(
        "--run-path",
        "--run_path",
        action=_EnvFlag,
        help="Run the script with runpy.run_path in a multiprocessing worker.",
    )
    add(
        "--log-dir",
        "--log_dir",
        action=_Env,
        default=None,
        help="Base directory for worker logs; default: the run directory (--run-dir).",
    )
    add(
        "-r",
        "--redirects",
        action=_Env,
        default=None,
        help="Streams written to per-rank log files: 0 none, 1 out, 2 err, 3 both (default 3), "
        "or per local rank as 0:3,1:0.",
    )
    add(
        "-t",
        "--tee",
        action=_Env,
        default=None,
        help="Streams written to the log files and also to the console (default 3).",
    )
    add(
        "--local-ranks-filter",
        "--local_ranks_filter",
        action=_Env,
        default="",
        help="Only show these local ranks on the console, e.g. 0,1.",
    )
    add(
        "--duplicate-stdout-filters",
        "--duplicate_stdout_filters",
        action=_Env,
        type=_comma_list,
        default=[],
        help="Also copy stdout lines containing any of these strings to a filtered log file.",
    )
    add(
        "--duplicate-stderr-filters",
        "--duplicate_stderr_filters",
        action=_Env,
        type=_comma_list,
        default=[],
        help="Also copy stderr lines containing any of these strings to a filtered log file.",
    )
    # Static rendezvous (torch.distributed.launch compatibility).
    add(
        "--node-rank",
        "--node_rank",
        type=int,
        action=_Env,
        default=0,
        help="Rank of this node (static rendezvous only).",
    )
    add(
        "--master-addr",
        "--master_addr",
        action=_Env,
        default="127.0.0.1",
        help="Address of the rank-0 node (static rendezvous only).",
    )
    add(
        "--master-port",
        "--master_port",
        type=int,
        action=_Env,
        default=None,
        help="Port on the rank-0 node (static rendezvous only; default 29500).",
    )
    add(
        "--local-addr",
        "--local_addr",
        action=_Env,
        default=None,
        help="Address of this node, used by the rendezvous and as the node name.",
    )
    add(
        "--logs-specs",
        "--logs_specs",
        default=None,
        help="Name of a torchrun.logs_specs entry point that decides where logs go.",
    )
    add(
        "--numa-binding",
        "--numa_binding",
        default=None,
        choices=_NUMA_MODES,
        help="Bind workers to CPUs near their GPU.",
    )
    add(
        "--signals-to-handle",
        "--signals_to_handle",
        action=_Env,
        default="SIGTERM,SIGINT,SIGHUP,SIGQUIT",
        help="Signals forwarded to the workers.",
    )
    add(
        "--shutdown-timeout",
        "--shutdown_timeout",
        action=_Env,
        type=int,
        default=None,
        help="Seconds to wait for workers to stop before SIGKILL (default 30).",
    )
    add(
        "--virtual-local-rank",
        "--virtual_local_rank",
        action=_EnvFlag,
        help="LOCAL_RANK=0 in every worker; CUDA_VISIBLE_DEVICES selects its GPU.",
    )
    # InferMesh additions.
    add(
        "--coordinator",
        action=_Env,
        default=None,
        help="HOST:PORT of the cell coordinator (default $INFERMESH_COORDINATOR). With a "
        "coordinator and no --rdzv-endpoint the command submits a job to the cell.",
    )
    # TLS to the coordinator: the same options (and environment variables) as `infermesh`'s
    # client commands; no PET_* defaults, the INFERMESH_* variables stand in for them.
    add(
        "--tls-dir",
        default="",
        help="Directory with ca.pem, cert.pem, key.pem (from `infermesh certs issue`); "
        "$INFERMESH_TLS_DIR.",
    )
    add("--ca", default="", help="Cell CA file ($INFERMESH_TLS_CA).")
    add("--cert", default="", help="Certificate file ($INFERMESH_TLS_CERT).")
    add("--key", default="", help="Private key file ($INFERMESH_TLS_KEY).")
    add("--token", default="", help="JWT bearer token ($INFERMESH_TOKEN); needs TLS.")
    add(
        "--tls-server-name",
        default="",
        help="Name to verify in the coordinator certificate ($INFERMESH_TLS_SERVER_NAME).",
    )
    add(
        "--insecure",
        action="store_true",
        help="Plaintext on purpose (local development only).",
    )
    add(
        "--detach",
        action=_EnvFlag,
        help="Submit mode: print the job id and return instead of streaming its logs.",
    )
    add(
        "--job-name",
        "--job_name",
        action=_Env,
        default=None,
        help="Submit mode: the job's name (default: the script's name).",
    )
    add(
        "--hang-timeout",
        "--hang_timeout",
        action=_Env,
        type=float,
        default=None,
        help="Restart the worker group when a worker sent no progress heartbeat "
        "(infermesh.train.heartbeat()) for this many seconds. Off by default.",
    )
    add(
        "--run-dir",
        "--run_dir",
        action=_Env,
        default="runs",
        help="Directory for per-run logs, error files, heartbeats and summaries.",
    )
    add(
        "--worker-start",
        "--worker_start",
        action=_Env,
        default=None,
        choices=("fork", "exec"),
        help="fork: fork workers from a template that imported torch once (default for "
        "Python scripts); exec: start each worker as a new interpreter, like torchrun.",
    )
    add(
        "--preload",
        action=_Env,
        default="torch,torch.distributed,torch._dynamo",
        help="Modules the fork template imports before forking workers (comma-separated).",
    )
    add(
        "--metrics-port",
        "--metrics_port",
        action=_Env,
        type=int,
        default=None,
        help="Serve Prometheus metrics of this launcher on this port (0: any free port).",
    )
    add(
        "--config",
        action=_Env,
        default=None,
        help="YAML file with defaults for any long flag (e.g. hang_timeout: 300).",
    )
    add("training_script", help="The training script (or module with -m) and its arguments.")
    add("training_script_args", nargs=argparse.REMAINDER)
    return p


@dataclasses.dataclass
class LaunchOptions:
    """Validated launcher settings (what ``infermesh-run`` will do)."""

    min_nodes: int
    """Smallest number of nodes the job runs with."""
    max_nodes: int
    """Largest number of nodes the job scales up to."""
    nnodes_auto: bool
    """``--nnodes auto``: the cell (or, without one, this machine) decides."""
    nproc_per_node: int | str
    """Workers per node, or one of auto/cpu/gpu/xpu resolved when torch is imported."""
    rdzv_backend: str
    rdzv_endpoint: str
    rdzv_id: str
    rdzv_conf: dict[str, str]
    standalone: bool
    max_restarts: int
    max_restarts_given: bool
    """``--max-restarts`` was on the command line (or in ``PET_MAX_RESTARTS``)."""
    monitor_interval: float
    start_method: str
    event_log_handler: str
    role: str
    module: bool
    no_python: bool
    run_path: bool
    log_dir: str | None
    redirects: str
    tee: str
    local_ranks_filter: set[int] | None
    duplicate_stdout_filters: list[str]
    duplicate_stderr_filters: list[str]
    node_rank: int
    master_addr: str
    master_port: int | None
    local_addr: str | None
    logs_specs: str | None
    numa_binding: str | None
    signals_to_handle: str
    shutdown_timeout: int | None
    virtual_local_rank: bool
    connection: Connection
    """``--coordinator`` and the TLS options (empty: the environment's)."""
    detach: bool
    job_name: str | None
    hang_timeout: float | None
    run_dir: str
    worker_start: str
    """``fork`` (template process) or ``exec`` (a fresh interpreter per worker)."""
    preload: list[str]
    metrics_port: int | None
    """Port of this launcher's ``/metrics`` endpoint; None: no endpoint."""
    training_script: str
    training_script_args: list[str]
    explicit_master_port: bool
    """The user named ``--master-port`` (so a busy port is an error, not a reason to pick)."""

    @property
    def node_name(self) -> str:
        """Name of this node in logs and run directories (the agent's node id under one)."""
        import socket

        return os.environ.get("INFERMESH_NODE_ID") or self.local_addr or socket.gethostname()


def _load_config_file(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(
            f"--config {path}: cannot read the file ({e.strerror}); pass a readable YAML file"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise UsageError(f"--config {path}: not valid YAML ({first}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(
            f"--config {path}: expected a mapping of flag names to values, "
            f"got {type(data).__name__}; write e.g. 'hang_timeout: 300'"
        )
    known = {
        a.dest: a
        for a in parser._actions
        if a.dest not in ("help", "config", "training_script", "training_script_args")
    }
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in known:
            raise UsageError(
                f"--config {path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}"
            )
        if f"PET_{dest.upper()}" in os.environ:
            continue  # the environment outranks the file
        action = known[dest]
        if isinstance(action, (_EnvFlag, argparse._StoreTrueAction)):
            if not isinstance(value, bool):
                raise UsageError(f"--config {path}: {key} must be true or false, got {value!r}")
            out[dest] = value
        elif action.type is not None and value is not None:
            convert: Any = action.type
            try:
                out[dest] = convert(str(value) if convert is _comma_list else value)
            except (TypeError, ValueError):
                kind = getattr(convert, "__name__", "value")
                raise UsageError(
                    f"--config {path}: {key} must be a {kind}, got {value!r}"
                ) from None
        else:
            out[dest] = None if value is None else str(value)
    return out


def _parse_nnodes(value: str) -> tuple[int, int, bool]:
    text = value.strip()
    if text == "auto":
        return 1, 1, True
    m = re.fullmatch(r"(\d+)(?::(\d+))?", text)
    if not m:
        raise UsageError(
            f"--nnodes {value!r}: expected N, MIN:MAX or auto (e.g. --nnodes 2 or --nnodes 1:4)"
        )
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo < 1:
        raise UsageError(f"--nnodes {value}: the minimum must be at least 1")
    if lo > hi:
        raise UsageError(
            f"--nnodes {value}: minimum {lo} is larger than maximum {hi}; "
            f"use MIN:MAX with MIN <= MAX, e.g. --nnodes {hi}:{lo}"
        )
    return lo, hi, False


def _parse_nproc(value: str) -> int | str:
    text = str(value).strip()
    if text in _NPROC_WORDS:
        return text
    try:
        n = int(text)
    except ValueError:
        raise UsageError(
            f"--nproc-per-node {value!r}: expected a positive integer or one of "
            f"{', '.join(_NPROC_WORDS)}"
        ) from None
    if n < 1:
        raise UsageError(
            f"--nproc-per-node {value}: must be at least 1 (e.g. --nproc-per-node 2, or auto)"
        )
    return n


def _parse_std(flag: str, value: str) -> str:
    if re.fullmatch(r"[0-3]|(\d+:[0-3])(,\d+:[0-3])*", value.strip()):
        return value.strip()
    raise UsageError(
        f"{flag} {value!r}: expected 0-3 (0 none, 1 stdout, 2 stderr, 3 both) "
        f"or per local rank like 0:3,1:0"
    )


def _parse_rdzv_conf(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in value.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise UsageError(
                f"--rdzv-conf {value!r}: item {item!r} is not KEY=VALUE "
                f"(e.g. --rdzv-conf join_timeout=300,read_timeout=60)"
            )
        out[key.strip()] = val.strip()
    return out


def _parse_ranks_filter(value: str) -> set[int] | None:
    if not value:
        return None
    try:
        ranks = {int(s) for s in value.split(",")}
    except ValueError:
        raise UsageError(
            f"--local-ranks-filter {value!r}: expected a comma-separated list of integers, e.g. 0,1"
        ) from None
    return ranks


def _check_script(ns: argparse.Namespace) -> None:
    script = ns.training_script
    if ns.module:
        if ns.no_python:
            raise UsageError("--module and --no-python cannot be used together; drop one")
        return
    if ns.no_python:
        if not (os.path.exists(script) or shutil.which(script)):
            raise UsageError(
                f"program {script!r} not found on PATH or on disk; check the name (--no-python)"
            )
        return
    path = Path(script)
    if not path.is_file():
        hint = " (use -m for a module)" if "/" not in script and not script.endswith(".py") else ""
        raise UsageError(
            f"training script {script!r} not found (working directory {os.getcwd()}); "
            f"pass the path of a Python file{hint}"
        )
    if not os.access(path, os.R_OK):
        raise UsageError(f"training script {script!r} is not readable; check its permissions")


def parse_options(argv: list[str] | None = None) -> LaunchOptions:
    """Parse and validate ``infermesh-run`` arguments; raise :class:`UsageError` on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre = _Parser(add_help=False)
    pre.add_argument("--config", action=_Env, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_load_config_file(known.config, parser))
    ns = parser.parse_args(argv)

    min_nodes, max_nodes, auto = _parse_nnodes(str(ns.nnodes))
    nproc = _parse_nproc(ns.nproc_per_node)
    if ns.max_restarts is not None and ns.max_restarts < 0:
        raise UsageError(f"--max-restarts {ns.max_restarts}: must be 0 or more")
    if ns.monitor_interval <= 0:
        raise UsageError(f"--monitor-interval {ns.monitor_interval}: must be positive, e.g. 0.1")
    if ns.hang_timeout is not None and ns.hang_timeout <= 0:
        raise UsageError(
            f"--hang-timeout {ns.hang_timeout}: must be a positive number of seconds, e.g. 300"
        )
    if ns.metrics_port is not None and not (0 <= ns.metrics_port <= 65535):
        raise UsageError(f"--metrics-port {ns.metrics_port}: must be a port number (0-65535)")
    if ns.master_port is not None and not (0 <= ns.master_port <= 65535):
        raise UsageError(f"--master-port {ns.master_port}: must be a port number (0-65535)")
    redirects = _parse_std("--redirects", ns.redirects if ns.redirects is not None else "3")
    tee = _parse_std("--tee", ns.tee if ns.tee is not None else "3")
    _check_script(ns)

    python_script = not ns.no_python and not ns.run_path
    worker_start = ns.worker_start or ("fork" if python_script and not ns.numa_binding else "exec")
    if worker_start == "fork" and not python_script:
        raise UsageError(
            "--worker-start fork needs a Python script or module; "
            "drop --no-python/--run-path or use --worker-start exec"
        )
    if worker_start == "fork" and ns.numa_binding:
        raise UsageError("--numa-binding needs --worker-start exec")

    return LaunchOptions(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nnodes_auto=auto,
        nproc_per_node=nproc,
        rdzv_backend=ns.rdzv_backend,
        rdzv_endpoint=ns.rdzv_endpoint,
        rdzv_id=ns.rdzv_id,
        rdzv_conf=_parse_rdzv_conf(ns.rdzv_conf),
        standalone=ns.standalone,
        max_restarts=0 if ns.max_restarts is None else ns.max_restarts,
        max_restarts_given=ns.max_restarts is not None,
        monitor_interval=ns.monitor_interval,
        start_method=ns.start_method,
        event_log_handler=ns.event_log_handler,
        role=ns.role,
        module=ns.module,
        no_python=ns.no_python,
        run_path=ns.run_path,
        log_dir=ns.log_dir,
        redirects=redirects,
        tee=tee,
        local_ranks_filter=_parse_ranks_filter(ns.local_ranks_filter),
        duplicate_stdout_filters=list(ns.duplicate_stdout_filters),
        duplicate_stderr_filters=list(ns.duplicate_stderr_filters),
        node_rank=ns.node_rank,
        master_addr=ns.master_addr,
        master_port=ns.master_port,
        local_addr=ns.local_addr,
        logs_specs=ns.logs_specs,
        numa_binding=ns.numa_binding,
        signals_to_handle=ns.signals_to_handle,
        shutdown_timeout=ns.shutdown_timeout,
        virtual_local_rank=ns.virtual_local_rank,
        connection=Connection(
            coordinator=ns.coordinator or "",
            tls_dir=ns.tls_dir,
            ca=ns.ca,
            cert=ns.cert,
            key=ns.key,
            token=ns.token,
            tls_server_name=ns.tls_server_name,
            insecure=ns.insecure,
        ),
        detach=ns.detach,
        job_name=ns.job_name,
        hang_timeout=ns.hang_timeout,
        run_dir=ns.run_dir,
        worker_start=worker_start,
        preload=[m.strip() for m in ns.preload.split(",") if m.strip()],
        metrics_port=ns.metrics_port,
        training_script=ns.training_script,
        training_script_args=list(ns.training_script_args),
        explicit_master_port=ns.master_port is not None,
    )
