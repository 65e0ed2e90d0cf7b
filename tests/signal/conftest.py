"""Shared fixtures of the signal tests: a real HTTP server on 127.0.0.1 serving fixtures."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


class MetricsServer:
    """Serves ``/metrics`` from a list of bodies: one per request, the last one held."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics" or not server.bodies:
                    self.send_error(404)
                    return
                body = server.bodies[min(server.requests, len(server.bodies) - 1)].encode()
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def serve(self, *fixtures: str) -> str:
        """Serve these fixture files in order; return the URL."""
        self.bodies = [(FIXTURES / f).read_text() for f in fixtures]
        self.requests = 0
        return self.url

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = MetricsServer()
    yield server
    server.close()
