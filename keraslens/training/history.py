"""The training history: per-layer rows, bands, alerts and errors, and `history.jsonl`.

The log holds one JSON object per line, each with a `kind` ("layer", "alert" or
"error"), the `epoch` and the `step`. It is flushed line by line, so a crash keeps what
was logged, and locked while a callback writes it, so a second writer cannot interleave.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from keraslens.capture.stats import BAND_SIGMAS
from keraslens.errors import KeraslensError
from keraslens.jsonable import to_jsonable

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, the log is written unlocked
    fcntl = None

HISTORY_FILE = "history.jsonl"

_KINDS = ("layer", "alert", "error")


class TrainingHistory:
    """What a training run logged, in memory, as the training section of the report.

    Args:
        entries: logged entries to start from (a resumed run's).

    Attributes:
        rows: one dict per layer and analysis (`epoch`, `step`, `layer`, its figures,
            `alerts`: the figures that crossed their threshold).
        bands: layer -> its distribution bands (`epoch`, `step`, `LayerStats.band()`).
        alerts: `{epoch, step, layer, metric, value, threshold}` per alert.
        errors: `{epoch, step, source, error}` per failed analysis.
        entries: every entry as logged (with `kind`, and a failure's `traceback`).

    Example:

    ```python
    history = TrainingHistory()
    history.add({"kind": "layer", "epoch": 0, "step": 0, "layer": "h1", "mean": 0.2,
                 "alerts": [], "band": None})
    history.rows  # [{"epoch": 0, "step": 0, "layer": "h1", "mean": 0.2, "alerts": []}]
    ```
    """

    def __init__(self, entries: Iterable[Mapping[str, Any]] = ()) -> None:
        self.rows: list[dict[str, Any]] = []
        self.bands: dict[str, list[dict[str, Any]]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.errors: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []
        for entry in entries:
            self.add(entry)

    def add(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Keep one entry (JSON-safe from then on) and return it as logged."""
        entry = to_jsonable(dict(entry))
        self.entries.append(entry)
        kept = dict(entry)
        kind = kept.pop("kind")
        if kind == "layer":
            band = kept.pop("band", None)
            self.rows.append(kept)
            if band is not None:
                self.bands.setdefault(kept["layer"], []).append(band)
        elif kind == "alert":
            self.alerts.append(kept)
        else:
            kept.pop("traceback", None)
            self.errors.append(kept)
        return entry

    def section(
        self, thresholds: Mapping[str, float], every: int | None, every_steps: int | None
    ) -> dict[str, Any]:
        """The JSON-safe training section of the report (`result.extra["training"]`)."""
        first: dict[str, dict[str, int]] = {}
        for alert in self.alerts:
            first.setdefault(alert["layer"], {}).setdefault(alert["metric"], alert["epoch"])
        return to_jsonable(
            {
                "history": self.rows,
                "bands": self.bands,
                "band_sigmas": list(BAND_SIGMAS),
                "alerts": self.alerts,
                "first_crossing": first,
                "thresholds": dict(thresholds),
                "errors": self.errors,
                "every": every,
                "every_steps": every_steps,
            }
        )


class HistoryFile:
    """`history.jsonl` in `out_dir`, written by one callback at a time.

    A log that cannot be written (a read-only folder, a path under a regular file, a
    full disk, another callback writing it) never stops training: one warning says so
    and the history stays in memory.

    Args:
        out_dir: the callback's output folder.

    Example:

    ```python
    log = HistoryFile("keraslens-logs")
    if log.open():
        log.replace([])
        log.write({"kind": "error", "epoch": 0, "step": 0, "source": "capture", "error": "..."})
        log.close()
    ```
    """

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.path = Path(out_dir) / HISTORY_FILE
        self._file: IO[bytes] | None = None
        self._warned = False

    @property
    def writing(self) -> bool:
        """True while the log is open and locked by this callback."""
        return self._file is not None

    def check_free(self) -> None:
        """Raise a `KeraslensError` when another callback is writing the log now."""
        try:
            file = self.path.open("rb")
        except OSError:  # no log yet, or none that anyone can be writing
            return
        with file:
            if not _lock(file, shared=True):
                raise KeraslensError(
                    f"{self.path} is being written by another LensCallback; give each callback "
                    "its own out_dir (a fit interrupted before its end keeps its callback's lock "
                    "until that callback is deleted)."
                )

    def open(self) -> bool:
        """Create the folder, open the log and lock it; False, after one warning, if not."""
        if self._file is not None:  # still open after a fit that was interrupted
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = self.path.open("ab")
        except OSError as error:
            self._give_up(f"cannot write {self.path} ({error.strerror or error})")
            return False
        if not _lock(file, shared=False):
            file.close()
            self._give_up(f"{self.path} is being written by another LensCallback")
            return False
        self._file = file
        return True

    def read(self) -> list[dict[str, Any]]:
        """The entries logged so far, skipping lines that are not entries (one warning counts
        them: a line cut short by a crash, one that is not a JSON object or not UTF-8)."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        except OSError as error:
            warnings.warn(
                f"keraslens cannot read {self.path} ({error.strerror or error}); the history "
                "starts afresh.",
                RuntimeWarning,
                stacklevel=2,
            )
            return []
        entries = [entry for entry in map(_entry, lines) if entry is not None]
        skipped = sum(1 for line in lines if line.strip()) - len(entries)
        if skipped:
            warnings.warn(
                f"keraslens skipped {skipped} line(s) of {self.path} that are not history "
                "entries (cut short, not a JSON object, or not UTF-8).",
                RuntimeWarning,
                stacklevel=2,
            )
        return entries

    def replace(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Empty the log and write `entries` to it."""
        if self._file is not None:
            self._guard(self._file.truncate, 0)
        for entry in entries:
            self.write(entry)

    def write(self, entry: Mapping[str, Any]) -> None:
        """Append one JSON-safe entry and flush it (nothing while the log is not writing)."""
        if self._file is not None:
            line = json.dumps(entry, allow_nan=False) + "\n"
            self._guard(self._write_line, line.encode("utf-8"))

    def close(self) -> None:
        """Close the log, which releases its lock."""
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError as error:
                self._give_up(f"cannot write {self.path} ({error.strerror or error})")

    def _write_line(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()

    def _guard(self, action, *args) -> None:
        try:
            action(*args)
        except OSError as error:
            file, self._file = self._file, None
            self._give_up(f"cannot write {self.path} ({error.strerror or error})")
            try:
                file.close()
            except OSError:
                pass  # what could not be written is already reported

    def _give_up(self, problem: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(
                f"keraslens {problem}: training goes on, with the history in callback.history "
                "only (no history.jsonl, reports or TensorBoard events).",
                RuntimeWarning,
                stacklevel=3,
            )


def _lock(file: IO[bytes], shared: bool) -> bool:
    """Take an advisory lock on `file` without waiting; False when someone else holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(file.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _entry(line: bytes) -> dict[str, Any] | None:
    """The entry on one line of the log, or None when the line is not one."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not (
        isinstance(entry, dict)
        and entry.get("kind") in _KINDS
        and all(isinstance(entry.get(key), int) for key in ("epoch", "step"))
        and (entry["kind"] == "error" or isinstance(entry.get("layer"), str))
        and isinstance(entry.get("band"), (dict, type(None)))
    ):
        return None
    return entry
