"""Training: the ``infermesh-run`` launcher, worker-side helpers and (later) planners and hooks.

Worker-side API (cheap to import; does not start anything):

- :func:`heartbeat` -- call once per training step; ``infermesh-run --hang-timeout`` uses it
  to detect hung workers. A no-op when the script runs under plain ``torchrun`` or ``python``.
"""

from infermesh.train.heartbeat import heartbeat

__all__ = ["heartbeat"]
