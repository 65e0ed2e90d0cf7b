"""Port checks done before anything starts, so a busy port is a clear error, not a hang.

torchrun at default settings either hangs (a TCPStore client that connects to a program
that is not a store waits past its own timeout) or fails deep inside rendezvous with
"address already in use". ``infermesh-run`` checks the ports it will host first:

- static rendezvous, node rank 0: ``--master-port`` must be free;
- c10d / infermesh rendezvous whose ``--rdzv-endpoint`` is on this machine: the port is
  either free (this launcher hosts the store) or held by another launcher of the same job
  on this machine (this launcher joins it); any other program holding it is an error.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from infermesh.core.errors import PortInUse

logger = logging.getLogger(__name__)

__all__ = ["check_master_port", "check_rendezvous_port", "is_local_host", "port_is_free"]

_LAUNCHER_MARKERS = (
    "infermesh-run",
    "infermesh.train.launcher",
    "torchrun",
    "torch.distributed.run",
    "torch.distributed.launch",
)


def port_is_free(port: int, host: str = "") -> bool:
    """True when a listening socket could bind ``host:port`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def is_local_host(host: str) -> bool:
    """True when ``host`` names this machine (loopback, its hostname or one of its addresses)."""
    if host in ("", "localhost"):
        return True
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return True
    except ValueError:
        pass
    names = {socket.gethostname(), socket.getfqdn()}
    if host in names:
        return True
    try:
        theirs = {ai[4][0] for ai in socket.getaddrinfo(host, None)}
        ours = {ai[4][0] for n in names for ai in socket.getaddrinfo(n, None)}
    except OSError:
        return False
    return bool(theirs & ours) or any(ipaddress.ip_address(a).is_loopback for a in theirs)


def _listener(port: int) -> tuple[int | None, str]:
    """(pid, command line) of the process listening on ``port``, where the OS tells."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None, ""
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            if c.pid is None:
                return None, ""
            try:
                return c.pid, " ".join(psutil.Process(c.pid).cmdline())
            except (psutil.Error, OSError):
                return c.pid, ""
    return None, ""


def check_master_port(port: int, explicit: bool) -> None:
    """Static rendezvous, node rank 0: the store will listen on ``port``."""
    if port_is_free(port):
        return
    flag = "--master-port" if explicit else "--master-port (default 29500)"
    raise PortInUse(port, flag, owner=_describe(*_listener(port)))


def check_rendezvous_port(host: str, port: int) -> None:
    """c10d/infermesh rendezvous hosted at ``host:port`` when that host is this machine."""
    if port == 0 or not is_local_host(host) or port_is_free(port):
        return
    pid, cmd = _listener(port)
    if pid is None:
        logger.info(
            "rendezvous port %s is held by a process the OS does not name; "
            "joining it as another launcher's store",
            port,
        )
        return
    if any(m in cmd for m in _LAUNCHER_MARKERS):
        logger.info("rendezvous port %s is held by another launcher; joining it", port)
        return
    raise PortInUse(port, "--rdzv-endpoint", host, owner=_describe(pid, cmd))


def _describe(pid: int | None, cmd: str) -> str:
    return f"pid {pid}: {cmd[:80]}" if pid else ""
