"""Writing files so that a reader never sees a half-written one, or half of a pair.

Every file is first written in full to a hidden temporary beside its target and
flushed to disk; only then are the temporaries renamed into place. A full disk or any
other failure while writing leaves every target as it was. While the files are
written and renamed, SIGINT, SIGTERM and SIGHUP are held back and delivered once the
work is done, so no temporary file is left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from keraslens.errors import KeraslensError
from keraslens.paths import output_target

_HELD_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` to `path` atomically: an interrupted or failed write leaves `path` as
    it was (absent or the old file).

    Args:
        path: the file to write; an existing one must be a regular file, whose mode is kept.
        data: text (written as UTF-8) or bytes.

    Example:

    ```python
    write_atomic("notes.txt", "hello\\n")
    ```
    """
    (target,) = write_together({path: data})
    return target


def write_together(files: Mapping[str | os.PathLike, str | bytes]) -> list[Path]:
    """Replace every file of `files` with its content: all of them, or none.

    Args:
        files: path -> text (written as UTF-8) or bytes.

    Returns:
        The absolute paths written, in the order given.

    Raises:
        KeraslensError: when a target cannot be written (the message names it); no
            target has changed then.

    Example:

    ```python
    write_together({"report.html": html, "report.json": text})
    ```
    """
    targets = [output_target("the output", path) for path in files]
    payloads = [d.encode("utf-8") if isinstance(d, str) else d for d in files.values()]
    staged: dict[Path, Path] = {}
    with _signals_held():
        try:
            for target, payload in zip(targets, payloads, strict=True):
                staged[target] = _write_temporary(target, payload)
            _replace_all(staged)
        finally:
            for temporary in staged.values():
                temporary.unlink(missing_ok=True)
    return targets


def _write_temporary(target: Path, payload: bytes) -> Path:
    """A flushed hidden copy of `payload` beside `target`, with `target`'s mode."""
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise _write_error(target, error) from None
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _mode_for(target))
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise _write_error(target, error) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _mode_for(target: Path) -> int:
    """The mode of the file being replaced, or the default a new file gets (0o666 less
    the umask; `mkstemp` alone would give 0o600)."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _replace_all(staged: dict[Path, Path]) -> None:
    """Rename each temporary over its target; if one rename fails, put back the targets
    already replaced (from hard-linked backups), so the set stays consistent."""
    backups = {target: _backup(target) for target in staged if target.exists()}
    replaced: list[Path] = []
    try:
        for target, temporary in staged.items():
            os.replace(temporary, target)
            replaced.append(target)
    except OSError as error:
        for done in replaced:
            if backups.get(done) is not None:
                os.replace(backups[done], done)
            elif done not in backups:
                done.unlink(missing_ok=True)
        raise _write_error(target, error) from None
    finally:
        for backup in backups.values():
            if backup is not None:
                backup.unlink(missing_ok=True)


def _backup(target: Path) -> Path | None:
    """A hidden hard link to `target`, or None where the file system has none."""
    backup = target.with_name(f".{target.name}.{os.getpid()}.old")
    with contextlib.suppress(FileNotFoundError):
        backup.unlink()
    try:
        os.link(target, backup)
    except OSError:
        return None
    return backup


def _write_error(target: Path, error: OSError) -> KeraslensError:
    reason = error.strerror or str(error)
    return KeraslensError(
        f"Cannot write {str(target)!r}: {reason}. No output file was changed; free space "
        "or choose another output path."
    )


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver them.

    Python runs signal handlers in the main thread only, so elsewhere nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in _HELD_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is None:  # installed outside Python: leave it alone
            continue
        previous[signum] = handler
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)
