"""The worker template ("zygote"): import torch once, fork every worker from it.

``torchrun`` starts each worker as a fresh interpreter, so every start and every restart
pays for ``import torch`` again (about 2.4 s per worker on a small machine). The launcher
instead starts one template process at launch, *in parallel with its own imports*; the
template imports the ``--preload`` modules and then forks one child per worker on request.
A forked worker sets its environment, working directory, ``sys.argv``, ``sys.path[0]`` and
standard streams exactly as ``python -u script.py`` would, and runs the script with
:mod:`runpy` as ``__main__``.

Safety rules the template keeps:

- it never initialises CUDA (importing torch does not), so children may use the GPU;
- it runs no Python threads of its own when it forks (it is a select loop); the thread
  count after preloading is reported to the launcher's debug log;
- it kills its children's process groups when the launcher goes away (its socket closes),
  so a killed launcher leaves no orphaned workers.

Protocol (JSON lines over a socketpair): the template first sends ``{"ready": ...}``;
requests are ``{"op": "spawn", ...}`` answered by ``{"spawned": pid}`` or ``{"error": msg}``;
whenever a child ends it sends ``{"exit": pid, "code": returncode, "time": t}`` where
``returncode`` follows :class:`subprocess.Popen` (negative signal number when killed).

The client side, :class:`Zygote`, is used by the launcher and imports nothing heavy.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["SpawnRequest", "Zygote", "ZygoteUnavailable", "signal_worker", "write_error_file"]


class ZygoteUnavailable(RuntimeError):
    """The template process could not be started or died; use exec workers instead."""


@dataclass
class SpawnRequest:
    """Everything a forked worker needs to look like ``python -u script.py args``."""

    script: str
    """Path of the script, or the module name when ``module`` is true."""
    args: list[str]
    env: dict[str, str]
    cwd: str
    module: bool = False
    stdout: str = ""
    """File to write stdout to; empty: the launcher's console; may be os.devnull."""
    stderr: str = ""
    error_file: str = ""
    """Where an uncaught exception is recorded (torch elastic's error-file format)."""
    extra: dict[str, Any] = field(default_factory=dict)


class Zygote:
    """Launcher-side handle of the template process."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._proc = proc
        self._sock = sock
        self._buf = b""
        self._exits: dict[int, tuple[int, float]] = {}
        self._replies: list[dict[str, Any]] = []
        self.ready: dict[str, Any] | None = None

    @classmethod
    def start(cls, preload: list[str], env: dict[str, str] | None = None) -> Zygote:
        """Start the template; it imports ``preload`` in the background of the caller."""
        parent, child = socket.socketpair()
        cmd = [
            sys.executable,
            "-m",
            "infermesh.train.launcher.zygote",
            str(child.fileno()),
            ",".join(preload),
        ]
        proc = subprocess.Popen(
            cmd,
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            env=env if env is not None else os.environ.copy(),
        )
        child.close()
        return cls(proc, parent)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def wait_ready(self, timeout: float = 300.0) -> dict[str, Any]:
        """Block until the template imported its modules; raise ZygoteUnavailable if it died."""
        if self.ready is None:
            self.ready = self._next_reply(timeout, what="start")
            if "fatal" in self.ready:
                raise ZygoteUnavailable(self.ready["fatal"])
        return self.ready

    def spawn(self, req: SpawnRequest, timeout: float = 60.0) -> int:
        """Fork one worker; return its pid."""
        self.wait_ready()
        msg = {"op": "spawn", **req.__dict__}
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise ZygoteUnavailable(f"worker template is gone ({e})") from None
        reply = self._next_reply(timeout, what="spawn")
        if "error" in reply:
            raise ZygoteUnavailable(reply["error"])
        return int(reply["spawned"])

    def returncode(self, pid: int, timeout: float = 0.0) -> int | None:
        """The worker's return code once it ended (Popen convention), else None."""
        deadline = time.monotonic() + timeout
        while pid not in self._exits:
            left = deadline - time.monotonic()
            if not self._pump(max(left, 0.0)) and left <= 0:
                return None
        return self._exits[pid][0]

    def exit_time(self, pid: int) -> float | None:
        got = self._exits.get(pid)
        return got[1] if got else None

    def close(self) -> None:
        """Stop the template; it kills any worker still running."""
        try:
            self._sock.close()
        finally:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    # -- plumbing --------------------------------------------------------------------
    def _pump(self, timeout: float) -> bool:
        """Read what the template sent within ``timeout``; False when nothing arrived."""
        r, _, _ = select.select([self._sock], [], [], timeout)
        if not r:
            return False
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ZygoteUnavailable(
                f"worker template (pid {self._proc.pid}) exited with code {self._proc.wait()}"
            )
        self._buf += chunk
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            msg = json.loads(line)
            if "exit" in msg:
                self._exits[int(msg["exit"])] = (int(msg["code"]), float(msg["time"]))
            else:
                self._replies.append(msg)
        return True

    def _next_reply(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self._replies:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ZygoteUnavailable(f"worker template did not answer a {what} in {timeout} s")
            self._pump(left)
        return self._replies.pop(0)


# ---------------------------------------------------------------------------------------
# Template side (runs in the child interpreter started by Zygote.start).
# ---------------------------------------------------------------------------------------


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _send(sock: socket.socket, msg: dict[str, Any]) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def _serve(fd: int, preload: list[str]) -> None:
    sock = socket.socket(fileno=fd)
    t0 = time.perf_counter()
    try:
        import importlib

        for name in preload:
            importlib.import_module(name)
    except BaseException as e:  # report any import failure to the launcher
        _send(sock, {"fatal": f"preloading {preload} failed: {type(e).__name__}: {e}"})
        return
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # pragma: no cover - needs a GPU
        _send(sock, {"fatal": "a preloaded module initialised CUDA; forking is unsafe"})
        return
    # Idle BLAS thread pools (OpenBLAS starts one at import unless OMP_NUM_THREADS=1) are
    # shut down and restarted around fork by the library itself; they are reported only.
    _send(
        sock,
        {
            "ready": True,
            "import_s": round(time.perf_counter() - t0, 3),
            "preloaded": preload,
            "pid": os.getpid(),
            "threads": _thread_count(),
        },
    )

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    buf = b""
    try:
        while True:
            try:
                ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                os.read(wake_r, 4096)
            _reap(sock, children)
            if sock.fileno() in ready:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    msg.pop("op", None)
                    req = SpawnRequest(**msg)
                    try:
                        pid = _fork_worker(req, sock, (wake_r, wake_w))
                    except OSError as e:
                        _send(sock, {"error": f"fork failed: {e}"})
                        continue
                    children.add(pid)
                    _send(sock, {"spawned": pid})
    finally:
        for pid in children:
            signal_worker(pid, signal.SIGKILL)
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        try:
            _send(
                sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status), "time": time.time()}
            )
        except OSError:
            return


def _fork_worker(req: SpawnRequest, sock: socket.socket, wake: tuple[int, int]) -> int:
    """Fork one worker; return once it leads its own session, so killpg(pid) reaches it."""
    led_r, led_w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(led_w)
        os.read(led_r, 1)  # the worker's setsid() is done (or it died: EOF)
        os.close(led_r)
        return pid
    # -- in the worker: never return from here --------------------------------------
    code = 1
    try:
        os.setsid()
        os.close(led_r)
        os.write(led_w, b"1")
        os.close(led_w)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        sock.close()
        os.close(wake[0])
        os.close(wake[1])
        code = _run_worker(req)
    except BaseException:  # last resort: never let a worker fall back into the server loop
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def signal_worker(pid: int, sig: int) -> None:
    """Send ``sig`` to a worker's process group (its subprocesses too), else to the worker."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _redirect(fd: int, path: str) -> None:
    if path:
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)


def _run_worker(req: SpawnRequest) -> int:
    import atexit
    import faulthandler
    import io
    import runpy

    _redirect(1, req.stdout)
    _redirect(2, req.stderr)
    # python -u: unbuffered binary layer, text layer writes through.
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), write_through=True, line_buffering=True
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False),
        write_through=True,
        line_buffering=True,
        errors="backslashreplace",
    )
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the worker
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)

    os.environ.clear()
    os.environ.update(req.env)
    os.chdir(req.cwd)
    torch = sys.modules.get("torch")
    if torch is not None and req.env.get("OMP_NUM_THREADS", "").isdigit():
        torch.set_num_threads(int(req.env["OMP_NUM_THREADS"]))

    sys.argv = [req.script, *req.args]
    code = 0
    try:
        if req.module:
            sys.path[0] = req.cwd
            runpy.run_module(req.script, run_name="__main__", alter_sys=True)
        else:
            _run_script(req.script)
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException as e:
        _drop_own_frames(e)
        import traceback

        traceback.print_exception(e)
        _record_error(req.error_file, e)
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
    return code


def _run_script(path: str) -> None:
    """Run a file as ``python path`` does: a fresh ``__main__`` with an absolute __file__."""
    import types

    script = os.path.abspath(path)
    sys.path[0] = os.path.dirname(script)
    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = main
    exec(code, main.__dict__)


def _drop_own_frames(e: BaseException) -> None:
    """Start the traceback at the user's code, as ``python script.py`` shows it."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
        tb = tb.tb_next
    if tb is not None:
        e.__traceback__ = tb


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _record_error(path: str, e: BaseException) -> None:
    """Record an uncaught exception unless the script's @record already did."""
    import traceback

    write_error_file(path, f"{type(e).__name__}: {e}", "".join(traceback.format_exception(e)))


def write_error_file(path: str, message: str, callstack: str) -> None:
    """Write torch elastic's error-file format to ``path`` (atomically) if it has none yet."""
    if not path or os.path.exists(path):
        return
    data = {
        "message": {
            "message": message,
            "extraInfo": {"py_callstack": callstack, "timestamp": str(int(time.time()))},
        }
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), [m for m in sys.argv[2].split(",") if m])
