"""Busy ports are reported before anything starts, naming the port and the flag."""

from __future__ import annotations

import socket

import pytest

from infermesh.core.errors import PortInUse
from infermesh.train.launcher.ports import (
    check_master_port,
    check_rendezvous_port,
    is_local_host,
    port_is_free,
)


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def test_a_listening_port_is_not_free(busy_port: int):
    assert not port_is_free(busy_port)


def test_busy_master_port_names_the_port_and_the_flag(busy_port: int):
    with pytest.raises(PortInUse) as e:
        check_master_port(busy_port, explicit=True)
    assert f"port {busy_port} (--master-port) is already in use" in str(e.value)
    assert "pass another port with --master-port" in str(e.value)


def test_busy_rendezvous_port_held_by_another_program_is_an_error(foreign_listener):
    pid, port = foreign_listener
    with pytest.raises(PortInUse) as e:
        check_rendezvous_port("127.0.0.1", port)
    assert f"127.0.0.1:{port} (--rdzv-endpoint)" in str(e.value)
    assert f"pid {pid}" in str(e.value)


def test_port_zero_and_remote_hosts_are_not_checked():
    check_rendezvous_port("127.0.0.1", 0)
    check_rendezvous_port("192.0.2.1", 1)  # TEST-NET-1, never this machine; nothing is sent


def test_loopback_and_hostname_are_local():
    assert is_local_host("127.0.0.1") and is_local_host("localhost")
    assert is_local_host(socket.gethostname())
    assert not is_local_host("192.0.2.1")
