"""A real, throwaway etcd server for tests: ``with EtcdServer() as etcd: open_store(etcd.url)``.

It runs the ``etcd`` binary (Debian's ``etcd-server`` package; ``scripts/setup.sh`` installs
it when run as root) on 127.0.0.1 with free client and peer ports and a temporary data
directory, waits until the server answers its health check, and stops it on exit. With
``tls=True`` it first makes a CA, a server certificate and a client certificate (with the
``cryptography`` package, a dev dependency) and requires client certificates (mTLS).

Election timings are shortened so the single member becomes leader at once and leases can be
as short as one second.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlencode

from infermesh.core.errors import InferMeshError
from infermesh.core.net import free_port

logger = logging.getLogger(__name__)

__all__ = ["EtcdServer", "TlsFiles", "make_tls_files", "unavailable_reason"]

START_TIMEOUT_S = 30.0


def unavailable_reason() -> str | None:
    """Why an etcd server cannot be started here, or ``None`` when it can."""
    if shutil.which("etcd") is None:
        return (
            "etcd is not installed: install Debian's etcd-server package "
            "(scripts/setup.sh does it when run as root)"
        )
    return None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test PKI: a CA, the server's pair and a client's pair."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path, *, client_name: str = "infermesh-test-client") -> TlsFiles:
    """Write a CA and server/client certificates (valid for 127.0.0.1 and localhost)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def write_key(name: str, key: ec.EllipticCurvePrivateKey) -> Path:
        path = directory / name
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)
        return path

    def write_cert(name: str, cert: x509.Certificate) -> Path:
        path = directory / name
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def subject(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(subject("infermesh-test-ca"))
        .issuer_name(subject("infermesh-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        cn: str, usage: x509.ObjectIdentifier
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        names = x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject(cn))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(names, critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert, key

    server_cert, server_key = leaf("etcd-test-server", ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = leaf(client_name, ExtendedKeyUsageOID.CLIENT_AUTH)
    return TlsFiles(
        ca=write_cert("ca.pem", ca_cert),
        server_cert=write_cert("server.pem", server_cert),
        server_key=write_key("server-key.pem", server_key),
        client_cert=write_cert("client.pem", client_cert),
        client_key=write_key("client-key.pem", client_key),
    )


class EtcdServer:
    """One etcd member on loopback, for the lifetime of a ``with`` block (or start/stop)."""

    def __init__(self, *, tls: bool = False, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="infermesh-etcd-")) if workdir is None else workdir
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls: TlsFiles | None = make_tls_files(self.workdir / "pki") if tls else None
        self.client_port = 0
        self._peer_port = 0
        self._data_dir = self.workdir / "data"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` of the client listener."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The store URL for :func:`~infermesh.control.store.open_store`."""
        if self.tls is None:
            return f"etcd://{self.endpoint}"
        query = urlencode(
            {"cacert": self.tls.ca, "cert": self.tls.client_cert, "key": self.tls.client_key}
        )
        return f"etcd://{self.endpoint}?{query}"

    def start(self) -> EtcdServer:
        binary = shutil.which("etcd")
        if binary is None:
            raise InferMeshError(unavailable_reason() or "etcd not found")
        for attempt in range(3):  # a free port can be taken between probing and binding
            self.client_port, self._peer_port = free_port(), free_port()
            self._data_dir = self.workdir / f"data-{attempt}"
            if self._launch(binary):
                return self
        raise InferMeshError(f"etcd did not start in 3 attempts; see {self.workdir}/etcd.log")

    def restart(self) -> None:
        """Stop the server (SIGTERM) and start it again on the same ports and data."""
        self._stop_process()
        if not self._launch(shutil.which("etcd") or "etcd"):
            raise InferMeshError(f"etcd did not restart; see {self.workdir}/etcd.log")

    def _launch(self, binary: str) -> bool:
        scheme = "https" if self.tls else "http"
        client_url = f"{scheme}://127.0.0.1:{self.client_port}"
        peer_url = f"http://127.0.0.1:{self._peer_port}"
        data_dir = self._data_dir
        cmd = [
            binary,
            "--name=test",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            "--heartbeat-interval=10",
            "--election-timeout=100",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.tls:
            cmd += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        log = (self.workdir / "etcd.log").open("ab")
        self._proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                logger.warning("etcd exited with %s while starting", self._proc.returncode)
                self._proc = None
                return False
            if self._healthy():
                logger.info("etcd ready at %s", client_url)
                return True
            time.sleep(0.05)
        self.stop()
        raise InferMeshError(f"etcd did not become healthy in {START_TIMEOUT_S:.0f}s")

    def _healthy(self) -> bool:
        context = None
        scheme = "http"
        if self.tls:
            scheme = "https"
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        try:
            with urllib.request.urlopen(
                f"{scheme}://{self.endpoint}/health", timeout=1, context=context
            ) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        """Stop the server and remove its files (when the directory was made for it)."""
        self._stop_process()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                os.killpg(self._proc.pid, signal.SIGKILL)
