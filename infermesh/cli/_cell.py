"""What the commands that talk to the coordinator share: the connection options, ``--json``
output, tables, human-readable times, and exit codes.

Connection options: :func:`with_connection` gives a command ``--coordinator``, ``--tls-dir``,
``--ca``, ``--cert``, ``--key``, ``--token``, ``--tls-server-name`` and ``--insecure`` (each
falling back to its environment variable) and hands them to it as one
:class:`~infermesh.client.connection.Connection`.

Exit codes: 0 ok; 1 the call failed (coordinator unreachable, refused) or the job failed;
2 bad input (a flag, an override, no coordinator configured, clashing TLS options); 3 the
node or job does not exist. Following a job's logs ends with the job's own code
(0 SUCCEEDED, 1 FAILED, 130 CANCELLED or Ctrl-C).
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infermesh.client.connection import Connection
from infermesh.client.coordinator import CoordinatorError, NotFound
from infermesh.core.errors import InferMeshError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3
EXIT_HELP = "Exit codes: 0 ok, 1 the call failed, 2 bad input, 3 no such node or job."

# -- connection options (client commands; `coordinator start` / `agent start` reuse the TLS ones)
CoordinatorOpt = Annotated[
    str, typer.Option("--coordinator", help="Coordinator HOST:PORT ($INFERMESH_COORDINATOR).")
]
TlsDirOpt = Annotated[
    str,
    typer.Option(
        "--tls-dir",
        help="Directory with ca.pem, cert.pem, key.pem (from `infermesh certs issue`); "
        "$INFERMESH_TLS_DIR.",
    ),
]
CaOpt = Annotated[str, typer.Option("--ca", help="Cell CA file ($INFERMESH_TLS_CA).")]
CertOpt = Annotated[str, typer.Option("--cert", help="Certificate file ($INFERMESH_TLS_CERT).")]
KeyOpt = Annotated[str, typer.Option("--key", help="Private key file ($INFERMESH_TLS_KEY).")]
InsecureOpt = Annotated[
    bool,
    typer.Option("--insecure", help="Plaintext on purpose (local development only)."),
]
TokenOpt = Annotated[
    str, typer.Option("--token", help="JWT bearer token ($INFERMESH_TOKEN); needs TLS.")
]
ServerNameOpt = Annotated[
    str,
    typer.Option(
        "--tls-server-name",
        help="Name to verify in the coordinator certificate ($INFERMESH_TLS_SERVER_NAME).",
    ),
]
_CONNECTION_OPTIONS = {
    "coordinator": CoordinatorOpt,
    "tls_dir": TlsDirOpt,
    "ca": CaOpt,
    "cert": CertOpt,
    "key": KeyOpt,
    "token": TokenOpt,
    "tls_server_name": ServerNameOpt,
    "insecure": InsecureOpt,
}
"""Command parameter -> option, one per :class:`Connection` field (same names)."""
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
]

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


def with_connection(fn: Callable[..., R]) -> Callable[..., R]:
    """Give a command the connection options in place of its ``conn: Connection`` parameter.

    typer reads the command's signature: the wrapper shows the eight options where ``conn``
    was and calls ``fn`` with them gathered into one :class:`Connection`. Nothing is checked
    here; opening the connection (``conn.client()``) raises UsageError on bad options.
    """
    signature = inspect.signature(fn, eval_str=True)
    if "conn" not in signature.parameters:
        raise TypeError(f"{fn.__qualname__} needs a `conn: Connection` parameter")
    defaults = Connection()
    params: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if param.name != "conn":
            params.append(param)
            continue
        for name, annotation in _CONNECTION_OPTIONS.items():
            default = getattr(defaults, name)
            params.append(
                inspect.Parameter(name, param.kind, default=default, annotation=annotation)
            )

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        given = {name: kwargs.pop(name) for name in _CONNECTION_OPTIONS if name in kwargs}
        return fn(*args, conn=Connection(**given), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


STATUS_STYLES = {
    "ALIVE": "green",
    "SUSPECT": "yellow",
    "DEAD": "red",
    "DRAINING": "cyan",
    "QUARANTINED": "magenta",
    "PENDING": "yellow",
    "PLACED": "cyan",
    "RUNNING": "blue",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "magenta",
}


def fail(message: str, code: int) -> typer.Exit:
    """Print ``infermesh: error: message`` on stderr; return the Exit to raise."""
    typer.echo(f"infermesh: error: {message}", err=True)
    return typer.Exit(code)


def command(fn: F) -> F:
    """Turn our errors into one line on stderr and the exit code that says what happened."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NotFound as e:
            raise fail(str(e), EXIT_NOT_FOUND) from None
        except CoordinatorError as e:
            bad_input = e.code == grpc.StatusCode.INVALID_ARGUMENT
            raise fail(str(e), EXIT_USAGE if bad_input else EXIT_FAILED) from None
        except UsageError as e:
            raise fail(str(e), EXIT_USAGE) from None
        except InferMeshError as e:
            raise fail(str(e), EXIT_FAILED) from None

    return wrapper  # type: ignore[return-value]


# -- output ----------------------------------------------------------------------------------
def to_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as JSON-ready dicts: proto field names, every field present."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def print_json(value: Message | dict[str, Any] | list[Any]) -> None:
    data = to_dict(value) if isinstance(value, Message) else value
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    sys.stdout.flush()


def console() -> Console:
    """Rich console on stdout; wide and colourless when it is not a terminal."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


def table(*columns: str) -> Table:
    return Table(*columns, box=None, pad_edge=False)


def status_text(status: str) -> Text:
    return Text(status or "-", style=STATUS_STYLES.get(status, ""))


def duration(seconds: float) -> str:
    """``3.2 s``, ``4 min 12 s``, ``2 h 5 min``, ``3 d 4 h``."""
    s = max(0.0, seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def ago(ts: float, now: float | None = None) -> str:
    """``3.2 s ago`` for a wall-clock timestamp; ``-`` when it was never set."""
    if ts <= 0:
        return "-"
    return f"{duration((time.time() if now is None else now) - ts)} ago"


def size(n: int) -> str:
    """Bytes as ``15.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
