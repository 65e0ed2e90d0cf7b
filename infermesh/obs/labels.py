"""The one label vocabulary of every InferMesh metric and span attribute.

Label values must be bounded: node names, ranks, GPU indices, job ids, model names,
strategy names and tenants -- never request ids or timestamps.
"""

from __future__ import annotations

__all__ = ["LABELS", "check_labels"]

LABELS: tuple[str, ...] = ("cell", "node", "gpu", "job", "rank", "model", "strategy", "tenant")


def check_labels(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Return ``names`` if each is a shared label name; raise ValueError naming the bad one."""
    for name in names:
        if name not in LABELS:
            raise ValueError(
                f"metric label {name!r} is not in the shared vocabulary; use one of "
                f"{', '.join(LABELS)}"
            )
    return tuple(names)
