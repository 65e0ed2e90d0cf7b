"""What the cell commands (``nodes``, ``jobs``, ``stats``) share: the coordinator option,
``--json`` output, tables, human-readable times, and exit codes.

Exit codes: 0 ok; 1 the call failed (coordinator unreachable, refused) or the job failed;
2 bad input (a flag, an override, no coordinator configured); 3 the node or job does not
exist. Following a job's logs ends with the job's own code (0 SUCCEEDED, 1 FAILED,
130 CANCELLED or Ctrl-C).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

from infermesh.client.coordinator import (
    COORDINATOR_ENV,
    CoordinatorClient,
    CoordinatorError,
    NotFound,
    require_address,
)
from infermesh.core.errors import InferMeshError, UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3
EXIT_HELP = "Exit codes: 0 ok, 1 the call failed, 2 bad input, 3 no such node or job."

CoordinatorOpt = Annotated[
    str | None,
    typer.Option(
        "--coordinator",
        help=f"Coordinator HOST:PORT (default: ${COORDINATOR_ENV}).",
        show_default=False,
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")
]

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

F = TypeVar("F", bound=Callable[..., Any])


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


@contextmanager
def connect(coordinator: str | None, timeout_s: float = 10.0) -> Iterator[CoordinatorClient]:
    """A client of ``--coordinator`` or ``$INFERMESH_COORDINATOR``; UsageError if neither."""
    with CoordinatorClient(require_address(coordinator), timeout_s=timeout_s) as client:
        yield client


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
