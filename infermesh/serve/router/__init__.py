"""The inference router: OpenAI-compatible ingress with strategies, hedging and admission.

Read :mod:`~infermesh.serve.router.api` (config, backend sources),
:mod:`~infermesh.serve.router.adapters` (runtime dialects),
:mod:`~infermesh.serve.router.fleet` (backend state and the strategies' view) and
:mod:`~infermesh.serve.router.router` (the request path).
"""

from infermesh.serve.router.api import BackendSource, BackendSpec, RouterConfig, parse_backends
from infermesh.serve.router.router import Router
from infermesh.serve.router.sources import StaticBackendSource

__all__ = [
    "BackendSource",
    "BackendSpec",
    "Router",
    "RouterConfig",
    "StaticBackendSource",
    "parse_backends",
]
