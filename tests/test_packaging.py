"""What a wheel holds: every package of the source tree, not only what an editable install sees."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_tree_is_listed_for_the_wheel():
    # The packages line of [tool.setuptools] (tomllib is Python 3.11+; keraslens runs on 3.10).
    line = re.search(r"^packages = (\[.*\])$", (ROOT / "pyproject.toml").read_text(), re.M)
    listed = set(ast.literal_eval(line.group(1)))
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("keraslens", "plugins")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed
