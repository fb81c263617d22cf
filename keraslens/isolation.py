"""Running plugin code so that it cannot end, hang or print into the run that called it."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

DEFAULT_TIME_LIMIT = 900.0
"""Seconds a plugin may run before it is abandoned and reported as an error."""


class TimeLimitExceeded(Exception):
    """A plugin ran longer than its time limit and was abandoned."""


class _Abandoned(BaseException):
    """Raised inside an abandoned plugin's thread, so that plain `except Exception` in the
    plugin does not keep it alive."""


@dataclass
class Outcome:
    """What a contained call gave: its value, or the error that stopped it, and its time."""

    value: Any = None
    error: BaseException | None = None
    traceback: str | None = None
    seconds: float = 0.0

    @property
    def message(self) -> str | None:
        """The error in one line, or None when the call returned."""
        if self.error is None:
            return None
        if isinstance(self.error, SystemExit):
            return f"called sys.exit({self.error.code!r}); a plugin cannot end the run"
        if isinstance(self.error, TimeLimitExceeded):
            return str(self.error)
        return f"{type(self.error).__name__}: {self.error}"


def contained(call: Callable[[], Any], *, name: str, time_limit: float | None) -> Outcome:
    """Run `call()` in a worker thread, for at most `time_limit` seconds (None: no limit).

    Whatever it raises, `SystemExit` included, comes back as `Outcome.error`, and so does
    running past the limit: the thread is then abandoned and stopped at its next Python
    instruction (code blocked inside C stays blocked, but no longer holds up the run).
    While it runs, what its thread prints goes to stderr, so that stdout stays the
    caller's (a JSON verdict, for one), and a changed working directory is changed back.
    A `KeyboardInterrupt` stops the caller too: the user asked for it.

    Example:

    ```python
    outcome = contained(lambda: plugin.analyze(ctx), name="dead-neurons", time_limit=60)
    outcome.value if outcome.error is None else outcome.message
    ```
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as error:  # SystemExit too: a plugin cannot end the run
            box["error"], box["traceback"] = error, traceback.format_exc()

    thread = threading.Thread(target=target, name=f"keraslens plugin {name}", daemon=True)
    cwd = os.getcwd()
    started = time.perf_counter()
    try:
        with _prints_to_stderr(thread):
            thread.start()
            thread.join(time_limit)
    finally:
        if thread.is_alive():
            _stop(thread)
        _change_back(cwd)
    seconds = time.perf_counter() - started
    if thread.is_alive():
        return Outcome(
            error=TimeLimitExceeded(
                f"still running after its time limit of {time_limit:g} s, so it was abandoned; "
                "raise time_limit (--time-limit) if it needs longer"
            ),
            seconds=seconds,
        )
    if isinstance(box.get("error"), KeyboardInterrupt):
        raise box["error"]
    return Outcome(box.get("value"), box.get("error"), box.get("traceback"), seconds)


class _PluginStdout:
    """`sys.stdout` while plugins run: their threads write to stderr, all others to stdout."""

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self.stdout, self.stderr = stdout, stderr
        self.threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

    def _stream(self) -> TextIO:
        return self.stderr if threading.current_thread() in self.threads else self.stdout

    def write(self, text: str) -> int:
        return self._stream().write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream(), name)


@contextmanager
def _prints_to_stderr(thread: threading.Thread) -> Iterator[None]:
    router = sys.stdout
    if not isinstance(router, _PluginStdout):
        router = _PluginStdout(sys.stdout, sys.stderr)
    router.threads.add(thread)
    sys.stdout = router
    try:
        yield
    finally:
        if not thread.is_alive():
            router.threads.discard(thread)
        # An abandoned plugin may print later: its router stays until it has ended. The
        # assignment also undoes a plugin's own `sys.stdout = ...`.
        alive = any(t.is_alive() for t in router.threads)
        sys.stdout = router if alive else router.stdout


def _stop(thread: threading.Thread) -> None:
    # CPython's documented way to raise in another thread; it takes effect at the thread's
    # next bytecode, so a pure-Python endless loop ends, a blocking C call only when it returns.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned)
    )


def _change_back(cwd: str) -> None:
    try:
        os.chdir(cwd)
    except OSError:  # the plugin removed it: there is nothing to go back to
        pass
