"""The checkpoint model server: OpenAI-compatible HTTP over a continuous-batching engine.

Read :mod:`~infermesh.serve.server.api` for the config and checkpoint loading,
:mod:`~infermesh.serve.server.engine` for the batching loop and
:mod:`~infermesh.serve.server.http_server` for the routes.
"""

from infermesh.serve.server.api import LoadedModel, ServerConfig, load_model, resolve_checkpoint
from infermesh.serve.server.engine import Engine
from infermesh.serve.server.http_server import ModelServer, run_server

__all__ = [
    "Engine",
    "LoadedModel",
    "ModelServer",
    "ServerConfig",
    "load_model",
    "resolve_checkpoint",
    "run_server",
]
