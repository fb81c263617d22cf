"""The `keraslens` command and `python -m keraslens`.

TensorFlow is not imported here: `--help` and the checks of paths and settings answer
without it. When a command does load it, its start-up lines are silenced then.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Silences TensorFlow's start-up lines the moment something first imports it."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilencedLoader(spec.loader)
        return spec


class _SilencedLoader(importlib.abc.Loader):
    """Runs the wrapped loader with file descriptor 2 pointed at /dev/null."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # TensorFlow's C++ start-up lines (CUDA probing, CPU features, absl's "before
        # InitializeLog" notice) go straight to file descriptor 2 and partly ignore
        # TF_CPP_MIN_LOG_LEVEL. Python errors are raised after it is restored, so nothing
        # a user needs is lost.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            self.loader.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
            module.__loader__ = module.__spec__.loader = self.loader


def main() -> None:
    """Run the command line; TensorFlow loads, quietly, only if a command needs it."""
    if "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, _QuietTensorFlow())
    from keraslens.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
