"""A subprocess worker for work that may hang or crash the process that runs it, such as
decoding a damaged video (FFmpeg is C code): :class:`DecodeWorker` runs one picklable
call at a time in a separate process, under a timeout.

Examples:
    >>> from selrel_jax._worker import decode_in_worker
    >>> from selrel_jax.data import read_frames, sample_clip_path
    >>> path = sample_clip_path()
    >>> frames, rate = decode_in_worker(path, 60.0, read_frames, path, size=16)
    >>> frames.shape, frames.dtype
    ((32, 16, 16, 3), dtype('uint8'))
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from selrel_jax._checks import real
from selrel_jax.errors import DataError, SelrelError

__all__ = ["DEFAULT_DECODE_TIMEOUT", "DecodeWorker", "decode_in_worker"]

T = TypeVar("T")

#: Seconds one file may take on the explain and sweep paths before its decoder is stopped.
DEFAULT_DECODE_TIMEOUT = 300.0
#: A fresh worker imports selrel_jax (and with it JAX): seconds on a busy machine.
_START_SECONDS = 300.0
_WORKER_CODE = (
    "import sys\n"
    "from selrel_jax._worker import _serve\n"
    "_serve(int(sys.argv[1]), int(sys.argv[2]))\n"
)


def _named(path: Any) -> str:
    return os.fspath(path) if isinstance(path, str | os.PathLike) else repr(path)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _watch_parent(parent: int) -> None:
    """End the worker once the process that started it is gone (after a SIGKILL the
    worker may be busy on a file that hangs, never reading its closed socket)."""
    while os.getppid() == parent:
        threading.Event().wait(0.5)
    os._exit(1)


def _serve(descriptor: int, parent: int) -> None:
    """The worker's loop: take the caller's ``sys.path``, then run each ``(cwd, function,
    args, kwargs)`` received in the caller's working directory ``cwd`` and reply
    ``("ok", result)``, ``("error", SelrelError)`` or ``("failed", "Type: message")``;
    None or a closed socket ends it."""
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    connection = Connection(descriptor)
    sys.path[:] = connection.recv()
    connection.send(("ready", None))
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        cwd, function, args, kwargs = job
        try:
            os.chdir(cwd)  # relative paths mean what they mean to the caller now
            reply = ("ok", function(*args, **kwargs))
        except SelrelError as e:
            reply = ("error", e)
        except Exception as e:  # the caller reports it as a DataError naming the file
            reply = ("failed", _first_line(e))
        connection.send(reply)


class DecodeWorker:
    """A separate process that decodes for the caller, one file at a time.

    ``run(path, timeout, function, *args, **kwargs)`` returns ``function(*args,
    **kwargs)`` computed in the worker (``function`` picklable: :func:`read_frames`, a
    ``VideoFolder``'s ``__getitem__``, ...). A file that takes longer than ``timeout``
    seconds, or that ends the decoder's process (FFmpeg is C code: a damaged file can
    crash it), costs a DataError naming ``path`` instead of a hung or crashed caller;
    the worker is then stopped and the next call starts a fresh one (a second or two:
    it imports selrel_jax). The library's own errors come back as they were raised,
    any other exception as a DataError naming ``path``. The worker ends with the
    caller (``close()``, interpreter exit, or the caller killed).

    Examples:
        >>> from selrel_jax._worker import DecodeWorker
        >>> from selrel_jax.data import read_frames, sample_clip_path
        >>> path = sample_clip_path()
        >>> worker = DecodeWorker()
        >>> frames, rate = worker.run(path, 60.0, read_frames, path, max_frames=4)
        >>> frames.shape
        (4, 48, 48, 3)
        >>> worker.close()
    """

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._connection: Any = None
        self._lock = threading.Lock()

    def run(self, path: Any, timeout: float, function: Callable[..., T], *args, **kwargs) -> T:
        timeout = real("decode timeout", timeout, above=0.0)
        with self._lock:
            try:
                job = (os.getcwd(), function, args, kwargs)
                status, value = self._call(path, timeout, job)
            except BaseException:  # a timeout, a crash, Ctrl-C: the worker's state is unknown
                self.close()
                raise
        if status == "error":
            raise value
        if status == "failed":
            raise DataError(f"cannot decode video {_named(path)}: {value}")
        return value

    def _call(self, path: Any, timeout: float, job: tuple) -> tuple[str, Any]:
        connection = self._started()
        connection.send(job)
        if not connection.poll(timeout):
            raise DataError(
                f"decoding {_named(path)} took longer than {timeout:g} s (the decode "
                "timeout); its decoder process was stopped"
            )
        try:
            return connection.recv()
        except (EOFError, OSError):
            raise DataError(
                f"decoding {_named(path)} ended the decoder process ({self._ended()}): "
                "the file is probably damaged"
            ) from None

    def _ended(self) -> str:
        """How the worker ended: ``signal SIGSEGV``, ``exit code 1``."""
        assert self._process is not None
        try:
            code = self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return "no reply"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    def _started(self) -> Any:
        if self._process is not None and self._process.poll() is None:
            return self._connection
        self.close()
        import socket
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=2,
            )  # fmt: skip
        except OSError as e:
            ours.close()
            raise DataError(f"cannot start a decoder process: {e.strerror or e}") from None
        finally:
            theirs.close()
        self._connection = Connection(ours.detach())
        self._connection.send(list(sys.path))
        if not self._connection.poll(_START_SECONDS):
            raise DataError(f"the decoder process did not start within {_START_SECONDS:g} s")
        try:
            self._connection.recv()
        except (EOFError, OSError):
            raise DataError(f"the decoder process did not start ({self._ended()})") from None
        return self._connection

    def close(self) -> None:
        """Stop the worker (a later ``run`` starts a new one)."""
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()


_SHARED_WORKER = DecodeWorker()
atexit.register(_SHARED_WORKER.close)


def decode_in_worker(
    path: Any, timeout: float | None, function: Callable[..., T], *args, **kwargs
) -> T:
    """``function(*args, **kwargs)`` in this process's shared :class:`DecodeWorker`
    under ``timeout`` seconds; ``timeout=None`` calls it here, without a worker."""
    if timeout is None:
        return function(*args, **kwargs)
    return _SHARED_WORKER.run(path, timeout, function, *args, **kwargs)
