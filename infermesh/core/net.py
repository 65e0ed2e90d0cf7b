"""Two small network facts every process of a cell needs."""

from __future__ import annotations

import socket

__all__ = ["free_port", "host_address"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel says is free on ``host`` now (another process may take it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def host_address() -> str:
    """The address other machines reach this one on: the hostname's, else the FQDN."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return socket.getfqdn()
