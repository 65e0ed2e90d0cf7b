"""Typed, blocking client of the cell coordinator.

The CLI, ``infermesh-run`` (submit mode and the coordinator-backed rendezvous) and tests use
:class:`CoordinatorClient`; the node agent speaks the streaming half of the API directly
through the generated async stub (:func:`async_stub`). Every gRPC failure becomes an
:class:`~infermesh.core.errors.InferMeshError` subclass whose message says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal

import grpc

from infermesh.client.generated import coordinator_pb2 as pb
from infermesh.client.generated import coordinator_pb2_grpc as pb_grpc
from infermesh.core.errors import InferMeshError, UsageError
from infermesh.security.tls import ClientTls

__all__ = [
    "COORDINATOR_ENV",
    "DEFAULT_PORT",
    "FROM_ENV",
    "AccessDenied",
    "CoordinatorClient",
    "CoordinatorError",
    "CoordinatorUnavailable",
    "NotFound",
    "async_stub",
    "parse_address",
    "pb",
]

DEFAULT_PORT = 7600
COORDINATOR_ENV = "INFERMESH_COORDINATOR"
_MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class CoordinatorError(InferMeshError):
    """The coordinator answered with an error; ``code`` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class CoordinatorUnavailable(CoordinatorError):
    """Nothing answers at the coordinator address."""


class AccessDenied(CoordinatorError):
    """The coordinator did not accept the caller's identity or role for this call."""


def _tls_failure(detail: str) -> bool:
    text = detail.lower()
    return any(word in text for word in ("handshake", "ssl", "tls", "certificate"))


class NotFound(CoordinatorError):
    """The node, job or run the call named does not exist."""


def parse_address(address: str) -> str:
    """Normalise ``HOST[:PORT]`` (port defaults to 7600); raise :class:`UsageError` if bad."""
    text = address.strip()
    if text.startswith(("grpc://", "http://")):
        text = text.split("://", 1)[1]
    if not text or "/" in text or " " in text:
        raise UsageError(
            f"bad coordinator address {address!r}: expected HOST or HOST:PORT "
            f"(for example 127.0.0.1:{DEFAULT_PORT})"
        )
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        host, port = f"[{host}]", rest[1:] if rest.startswith(":") else str(DEFAULT_PORT)
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:  # a bare IPv6 address
        host, port = f"[{text}]", str(DEFAULT_PORT)
    else:
        host, port = text, str(DEFAULT_PORT)
    if not host or host == "[]":
        raise UsageError(f"bad coordinator address {address!r}: the host is missing")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"bad coordinator address {address!r}: port {port!r} is not a number in 1-65535"
        )
    return f"{host}:{port}"


def resolve_address(flag: str | None) -> str | None:
    """The coordinator address from ``--coordinator`` or ``$INFERMESH_COORDINATOR``."""
    value = flag or os.environ.get(COORDINATOR_ENV) or None
    return parse_address(value) if value else None


def require_address(flag: str | None) -> str:
    """:func:`resolve_address`, or a :class:`UsageError` that says how to name a coordinator."""
    address = resolve_address(flag)
    if address is None:
        raise UsageError(
            f"no coordinator configured: pass --coordinator HOST:PORT or set {COORDINATOR_ENV} "
            f"(e.g. export {COORDINATOR_ENV}=127.0.0.1:7600); `infermesh up` starts a local cell"
        )
    return address


def _translate(
    error: grpc.RpcError, address: str, method: str, plaintext: bool = False
) -> CoordinatorError:
    code = error.code() if hasattr(error, "code") else None
    detail = error.details() if hasattr(error, "details") else str(error)
    closed = any(w in detail.lower() for w in ("socket closed", "connection reset"))
    if code == grpc.StatusCode.UNAVAILABLE and plaintext and closed:
        return CoordinatorUnavailable(
            f"the coordinator at {address} closed the connection ({detail}): it probably "
            "requires TLS; give --tls-dir (or $INFERMESH_TLS_DIR) with a certificate bundle of "
            "its cell (`infermesh certs issue`)",
            code,
        )
    if code == grpc.StatusCode.UNAVAILABLE and _tls_failure(detail):
        return CoordinatorUnavailable(
            f"the TLS handshake with {address} failed ({detail}); the coordinator and this "
            "client must hold certificates of the same cell CA, unexpired (`infermesh certs "
            "show`), and plaintext and TLS do not mix (--tls-dir / --insecure on both sides)",
            code,
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AccessDenied(detail or f"{method}: {code.name.lower()}", code)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CoordinatorUnavailable(
            f"no coordinator answers at {address} ({detail}); start one with "
            "`infermesh coordinator start` or `infermesh up`, or fix --coordinator / "
            f"${COORDINATOR_ENV}",
            code,
        )
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(detail or f"{method}: not found", code)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CoordinatorError(f"{method} to {address} timed out ({detail})", code)
    return CoordinatorError(detail or f"{method} failed with {code}", code)


FROM_ENV: Literal["env"] = "env"
"""``tls=FROM_ENV`` (the default): the TLS environment variables decide. ``tls=None``: plaintext."""


def _security(
    credentials: grpc.ChannelCredentials | None, tls: ClientTls | Literal["env"] | None
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, Any]]]:
    """Credentials and channel options: explicit ones, else ``tls`` (or the environment's)."""
    if credentials is not None:
        return credentials, list(CHANNEL_OPTIONS)
    if isinstance(tls, str):  # FROM_ENV
        tls = ClientTls.from_options()
    if tls is None:
        return None, list(CHANNEL_OPTIONS)
    return tls.channel_credentials(), [*CHANNEL_OPTIONS, *tls.options()]


def async_stub(
    address: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    tls: ClientTls | Literal["env"] | None = FROM_ENV,
) -> Any:
    """An asyncio channel and stub to the coordinator: ``(channel, stub)``.

    Without ``credentials`` or ``tls`` the TLS environment variables decide (see
    :mod:`infermesh.security.tls`); none set means a plaintext channel, and so does
    ``tls=None``.
    """
    target = parse_address(address)
    creds, options = _security(credentials, tls)
    if creds is None:
        channel = grpc.aio.insecure_channel(target, options=options)
    else:
        channel = grpc.aio.secure_channel(target, creds, options=options)
    return channel, pb_grpc.CoordinatorStub(channel)


class CoordinatorClient:
    """Blocking calls to one coordinator; use as a context manager or call :meth:`close`.

    ``tls`` as for :func:`async_stub`: the environment decides by default, ``None`` is
    plaintext. :class:`~infermesh.client.connection.Connection` builds one from flags.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        tls: ClientTls | Literal["env"] | None = FROM_ENV,
    ) -> None:
        self.address = parse_address(address)
        self.timeout_s = timeout_s
        creds, options = _security(credentials, tls)
        self.plaintext = creds is None
        if creds is None:
            self._channel = grpc.insecure_channel(self.address, options=options)
        else:
            self._channel = grpc.secure_channel(self.address, creds, options=options)
        self._stub = pb_grpc.CoordinatorStub(self._channel)

    def __enter__(self) -> CoordinatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, request: Any, *, timeout_s: float | None = None) -> Any:
        """Invoke a unary method by name, translating gRPC errors."""
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout_s if timeout_s is not None else self.timeout_s
            )
        except grpc.RpcError as error:
            raise _translate(error, self.address, method, self.plaintext) from None

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the channel connects; :class:`CoordinatorUnavailable` otherwise."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise CoordinatorUnavailable(
                f"no coordinator answers at {self.address} after {timeout_s:.0f} s; start one "
                "with `infermesh coordinator start` or `infermesh up`"
            ) from None

    # -- nodes ---------------------------------------------------------------------------
    def list_nodes(self) -> list[pb.Node]:
        return list(self.call("ListNodes", pb.ListNodesRequest()).nodes)

    def get_node(self, node_id: str, max_age_s: float = 10.0) -> pb.NodeDetail:
        return self.call("GetNode", pb.GetNodeRequest(node_id=node_id, max_age_s=max_age_s))

    def set_node_state(self, node_id: str, action: str, reason: str = "") -> pb.Node:
        request = pb.SetNodeStateRequest(node_id=node_id, action=action, reason=reason)
        return self.call("SetNodeState", request)

    # -- jobs ----------------------------------------------------------------------------
    def submit_job(self, spec: pb.JobSpec, *, dry_run: bool = False) -> pb.SubmitJobResponse:
        return self.call("SubmitJob", pb.SubmitJobRequest(spec=spec, dry_run=dry_run))

    def list_jobs(self, status: str = "", limit: int = 0) -> list[pb.Job]:
        return list(self.call("ListJobs", pb.ListJobsRequest(status=status, limit=limit)).jobs)

    def get_job(self, job_id: str) -> pb.JobDetail:
        return self.call("GetJob", pb.JobRequest(job_id=job_id))

    def cancel_job(self, job_id: str) -> pb.Job:
        return self.call("CancelJob", pb.JobRequest(job_id=job_id))

    def job_logs(
        self, job_id: str, *, follow: bool = False, after_seq: int = 0, tail: int = 0
    ) -> Iterator[pb.LogLine]:
        """Log lines of a job; with ``follow`` the stream ends when the job does."""
        request = pb.LogsRequest(job_id=job_id, follow=follow, after_seq=after_seq, tail=tail)
        stream = self._stub.JobLogs(request, timeout=None if follow else self.timeout_s)
        try:
            yield from stream
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.CANCELLED:
                return
            raise _translate(error, self.address, "JobLogs", self.plaintext) from None
        finally:
            stream.cancel()

    def list_events(self, subject: str = "", limit: int = 100) -> list[pb.Event]:
        request = pb.ListEventsRequest(subject=subject, limit=limit)
        return list(self.call("ListEvents", request).events)

    def list_endpoints(self, kind: str = "") -> list[pb.ServingEndpoint]:
        """Model servers on ALIVE nodes of the cell (what a router routes to)."""
        return list(self.call("ListEndpoints", pb.ListEndpointsRequest(kind=kind)).endpoints)

    def stats(self) -> pb.StatsResponse:
        return self.call("Stats", pb.StatsRequest())

    # -- rendezvous ------------------------------------------------------------------------
    def rendezvous_join(self, request: pb.JoinRequest) -> pb.JoinResponse:
        return self.call("RendezvousJoin", request, timeout_s=request.timeout_s + 5.0)

    def rendezvous_state(self, run_id: str, node_id: str) -> pb.RendezvousStatus:
        request = pb.RendezvousRequest(run_id=run_id, node_id=node_id)
        return self.call("RendezvousState", request)

    def rendezvous_close(self, run_id: str, node_id: str) -> pb.RendezvousStatus:
        request = pb.RendezvousRequest(run_id=run_id, node_id=node_id)
        return self.call("RendezvousClose", request)
