"""The files a command reads and writes, checked before any work starts.

Nothing here imports TensorFlow, so a wrong path is refused at once. Inputs must be
regular files or folders (a FIFO or a device would hang or never end). Outputs may
replace only regular files, and never an input: not an input file, not a hard link to
one, and nothing inside an input folder (a SavedModel, a folder of images).
"""

from __future__ import annotations

import errno
import importlib.machinery
import os
import re
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from keraslens.errors import KeraslensError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_LOADER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a folder",
}


def existing(path: str | os.PathLike, what: str, folder_ok: bool = True) -> os.stat_result:
    """The status of input `path`, after checking it is a regular file (or a folder).

    Args:
        path: the input to check.
        what: how messages name it ("Model", "Config file", ...).
        folder_ok: whether a folder is acceptable.

    Raises:
        KeraslensError: when `path` does not exist, is a symbolic link loop, cannot be
            read, or is something else than a regular file or an acceptable folder.

    Example:

    ```python
    from keraslens.paths import existing

    existing("model.keras", "Model")
    ```
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise KeraslensError(f"{what} {str(path)!r} does not exist.") from None
    except OSError as error:
        raise KeraslensError(
            f"Cannot read {what.lower()} {str(path)!r}: {_reason(error)}."
        ) from None
    if stat.S_ISREG(status.st_mode) or (folder_ok and stat.S_ISDIR(status.st_mode)):
        return status
    wanted = "a regular file or a folder" if folder_ok else "a regular file"
    raise KeraslensError(
        f"{what} {str(path)!r} is {_kind(status.st_mode)}, not {wanted}: keraslens reads "
        "regular files only."
    )


def is_loader(spec: str) -> bool:
    """Whether `--data` `spec` names a `module:function` loader (and no file of that name)."""
    return not os.path.lexists(spec) and _LOADER_RE.match(spec) is not None


def existing_data(spec: str) -> os.stat_result:
    """The status of the `--data` file or folder `spec`, checked like any input."""
    if not os.path.lexists(spec):
        raise KeraslensError(
            f"Data {spec!r} does not exist. Pass a .npy or .npz file, a folder of images, "
            "or module:function."
        )
    return existing(spec, "Data")


def output_target(option: str, path: str | os.PathLike) -> Path:
    """The absolute file that `path` names as an output, after checking it can be written.

    The folder is resolved now, so a later change of the working directory cannot move
    the output. An existing output must be a regular file: a symbolic link, FIFO,
    device or folder is refused, never replaced.

    Args:
        option: the command-line option, or the Python argument, that gave `path`.
        path: the output file.

    Raises:
        KeraslensError: naming the problem and the fix.
    """
    given = os.fspath(path)
    if not given:
        raise KeraslensError(f"{option} is empty: name the file to write.")
    if given.endswith((os.sep, "/")) or os.path.basename(given) in ("", ".", ".."):
        raise KeraslensError(
            f"{option} {given!r} names a folder; name a file in it, e.g. "
            f"{os.path.join(given, 'report.html')!r}."
        )
    target = Path(given)
    try:
        status = os.lstat(target)
    except FileNotFoundError:
        status = None
    except OSError as error:
        raise KeraslensError(f"Cannot write {given!r} ({option}): {_reason(error)}.") from None
    if status is not None and not stat.S_ISREG(status.st_mode):
        fix = "name a file in it" if stat.S_ISDIR(status.st_mode) else "name a regular file"
        raise KeraslensError(
            f"Cannot write {given!r} ({option}): it is {_kind(status.st_mode)}, which keraslens "
            f"does not replace; {fix}."
        )
    folder = target.parent
    try:
        resolved = folder.resolve(strict=True)
    except FileNotFoundError:
        raise KeraslensError(
            f"Cannot write {given!r}: folder {str(folder)!r} does not exist. "
            "Create it or choose another output path."
        ) from None
    except (OSError, RuntimeError) as error:  # Python 3.11 reports a loop as RuntimeError
        raise KeraslensError(
            f"Cannot write {given!r}: folder {str(folder)!r} cannot be resolved ({_reason(error)})."
        ) from None
    if not resolved.is_dir():
        raise KeraslensError(f"Cannot write {given!r}: {str(folder)!r} is not a folder.")
    if not os.access(resolved, os.W_OK | os.X_OK):
        raise KeraslensError(f"Cannot write {given!r}: folder {str(folder)!r} is not writable.")
    return resolved / target.name


class Output(NamedTuple):
    """An output as the user named it, and the absolute file it is."""

    given: str
    target: Path


def check_outputs(
    outputs: Mapping[str, str | None], inputs: Mapping[str, Iterable[Path]]
) -> dict[str, Output]:
    """The absolute target of each given output, refusing any that would overwrite an input.

    Args:
        outputs: option -> output path, None when not given.
        inputs: option -> the files and folders it reads.

    Returns:
        option -> the output and its absolute target, for the given outputs only.
    """
    targets: dict[str, Output] = {}
    for option, given in outputs.items():
        if given is None:
            continue
        target = output_target(option, given)
        for other, taken in targets.items():
            if taken.target == target:
                raise KeraslensError(
                    f"{other} and {option} both name {given!r}: give each its own file."
                )
        for source, paths in inputs.items():
            for path in paths:
                _refuse_overwrite(option, given, target, source, path)
        targets[option] = Output(given, target)
    return targets


def _refuse_overwrite(option: str, given: str, target: Path, source: str, path: Path) -> None:
    real = _real(path)
    if real is None:
        return
    if real.is_dir() and target.is_relative_to(real):
        problem = f"lies inside the {source} folder {str(path)!r}"
    elif target == real or (target.exists() and real.exists() and os.path.samefile(target, real)):
        problem = f"is the {source} file"
    else:
        return
    raise KeraslensError(
        f"{option} {given!r} {problem}: writing it would change an input. "
        "Choose another output path."
    )


def _real(path: Path) -> Path | None:
    """`path` with every symbolic link resolved, or None when it cannot be (a loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder`, sorted; symbolic links to folders are not followed."""
    found = []
    for root, _, names in os.walk(folder):
        found.extend(Path(root) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


def module_file(name: str) -> Path | None:
    """The file of module `name` (dotted), found without running any code; None when the
    module cannot be found that way (it may still import)."""
    if name in sys.modules:
        origin = getattr(sys.modules[name], "__file__", None)
        return Path(origin) if origin else None
    search = None
    spec = None
    parts = name.split(".")
    for index in range(len(parts)):
        spec = _find_spec(".".join(parts[: index + 1]), search)
        if spec is None:
            return None
        search = spec.submodule_search_locations
    return Path(spec.origin) if spec is not None and spec.has_location else None


def _find_spec(fullname: str, search: list[str] | None) -> importlib.machinery.ModuleSpec | None:
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        spec = find(fullname, search) if find is not None else None
        if spec is not None:
            return spec
    return None


def with_working_directory_on_path() -> None:
    """Put the current folder first on `sys.path`, as for `python -m`, once."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno == errno.ELOOP:
        return "it is a symbolic link loop"
    if isinstance(error, RuntimeError):
        return "a symbolic link loop"
    return getattr(error, "strerror", None) or str(error)
