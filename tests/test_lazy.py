"""Names imported on first use: registries and package exports."""

from __future__ import annotations

import pytest

import keraslens
from keraslens import attr
from keraslens.attr import METHODS
from keraslens.lazy import Registry
from keraslens.metrics import METRICS


@pytest.mark.parametrize("registry", [METHODS, METRICS], ids=["methods", "metrics"])
def test_every_class_is_registered_under_the_name_it_declares(registry):
    assert [registry[name].name for name in registry] == list(registry)


def test_a_registry_lists_and_finds_names_without_importing_their_module():
    registry = Registry({"ghost": "keraslens_no_such_module:Ghost"})
    assert list(registry) == ["ghost"]
    assert "ghost" in registry and "other" not in registry
    with pytest.raises(ModuleNotFoundError):
        registry["ghost"]


def test_a_class_assigned_to_a_registry_is_kept_as_given():
    class Mine:
        name = "mine"

    registry = Registry({})
    registry["mine"] = Mine
    assert registry["mine"] is Mine
    assert len(registry) == 1


def test_package_exports_are_the_functions_not_their_submodules():
    from keraslens.attr.api import attribute
    from keraslens.metrics.api import evaluate
    from keraslens.metrics.verdict import verdict

    assert keraslens.attribute is attribute
    assert keraslens.evaluate is evaluate
    assert keraslens.metrics.verdict is verdict
    assert callable(keraslens.heatmap) and callable(keraslens.attention)


def test_an_unknown_name_of_a_lazy_package_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        attr.nothing  # noqa: B018
