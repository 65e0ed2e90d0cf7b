"""Worker process contexts: torch elastic's ``PContext`` for workers forked by the template.

:class:`ForkedContext` behaves like torch elastic's ``SubprocessContext`` (same polling,
same shutdown with SIGTERM then SIGKILL, same tee of log files to the console) but asks the
:class:`~infermesh.train.launcher.zygote.Zygote` to fork each worker instead of starting a
new interpreter.
"""

from __future__ import annotations

import os
import signal
import subprocess

from torch.distributed.elastic.multiprocessing import LogsSpecs
from torch.distributed.elastic.multiprocessing.api import SubprocessContext

from infermesh.train.launcher.zygote import SpawnRequest, Zygote, signal_worker

__all__ = ["ForkedContext"]


class _ForkedProc:
    """The part of :class:`subprocess.Popen` that ``SubprocessContext`` uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self._zygote = zygote
        self.pid = pid

    def poll(self) -> int | None:
        return self._zygote.returncode(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        code = self._zygote.returncode(self.pid, timeout=1e9 if timeout is None else timeout)
        if code is None:
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        return code


class _ForkedHandler:
    """The part of torch elastic's ``SubprocessHandler`` that ``SubprocessContext`` uses."""

    def __init__(self, proc: _ForkedProc, local_rank: int) -> None:
        self.proc = proc
        self.local_rank_id = local_rank

    def close(self, death_sig: signal.Signals | None = None) -> None:
        signal_worker(self.proc.pid, death_sig or signal.SIGTERM)


class ForkedContext(SubprocessContext):
    """Workers forked from the template; ``entrypoint`` is the script or module name."""

    def __init__(
        self,
        zygote: Zygote,
        name: str,
        script: str,
        module: bool,
        args: dict[int, tuple],
        envs: dict[int, dict[str, str]],
        logs_specs: LogsSpecs,
        log_line_prefixes: dict[int, str] | None = None,
        duplicate_stdout_filters: list[str] | None = None,
        duplicate_stderr_filters: list[str] | None = None,
    ) -> None:
        super().__init__(
            name=name,
            entrypoint=script,
            args=args,
            envs=envs,
            logs_specs=logs_specs,
            log_line_prefixes=log_line_prefixes,
            duplicate_stdout_filters=duplicate_stdout_filters,
            duplicate_stderr_filters=duplicate_stderr_filters,
        )
        self._zygote = zygote
        self._module = module

    def _start(self) -> None:
        if self.subprocess_handlers:
            raise ValueError("workers already started; start() was called twice")
        cwd = os.getcwd()
        for lr in range(self.nprocs):
            env = {**os.environ, **self.envs[lr]}
            req = SpawnRequest(
                script=str(self.entrypoint),
                args=[str(a) for a in self.args[lr]],
                env=env,
                cwd=cwd,
                module=self._module,
                stdout=self.stdouts[lr],
                stderr=self.stderrs[lr],
                error_file=self.error_files[lr],
            )
            pid = self._zygote.spawn(req)
            self.subprocess_handlers[lr] = _ForkedHandler(  # type: ignore[assignment]
                _ForkedProc(self._zygote, pid), lr
            )

    def exit_time(self, local_rank: int) -> float | None:
        """Wall time at which the template reaped this worker, if it ended."""
        handler = self.subprocess_handlers.get(local_rank)
        return self._zygote.exit_time(handler.proc.pid) if handler else None
