"""Replica entry point: ``python -m infermesh.serve.server CONFIG_JSON``.

Used by ``infermesh serve --replicas N`` to start each replica with a
:class:`~infermesh.serve.server.api.ServerConfig` serialised as JSON; users run
``infermesh serve`` instead.
"""

from __future__ import annotations

import logging
import sys

from infermesh.core.errors import InferMeshError
from infermesh.serve.server.api import ServerConfig
from infermesh.serve.server.http_server import run_server


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m infermesh.serve.server CONFIG_JSON", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        run_server(ServerConfig.from_json(argv[0]))
    except InferMeshError as e:
        print(f"infermesh serve: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
