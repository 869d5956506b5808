"""Methods from entry points (`safbench.methods`): registered on first use beside the built-in ones, and a
broken plugin refused in one line naming it and its entry point (also by the `safbench` command, exit 2)."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest
import torch

import optimizers
from optimizers import registry

from ..cli_util import run_main

MODULE = "tests.optimizers.plugin_methods"


@pytest.fixture
def plugins(monkeypatch):
    """`plugins(name=value, ...)`: these entry points are the installed ones; the registry forgets them after."""
    before = dict(registry._REGISTRY)

    def install(**points: str) -> None:
        eps = [EntryPoint(name, value, registry.PLUGIN_GROUP) for name, value in points.items()]
        monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == registry.PLUGIN_GROUP else [])
        registry._plugins["state"] = "unloaded"

    yield install
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    registry._ORIGINS.clear()
    registry._plugins["state"] = "loaded"


def test_a_plugin_method_is_registered_after_the_built_in_ones_and_created_like_them(plugins) -> None:
    plugins(penalty=f"{MODULE}:Penalty")
    assert optimizers.methods() == (*optimizers.METHODS, "penalty")
    assert optimizers.all_hparams()["width"].default == 0.5
    assert optimizers.method_origin("penalty")["method_entry_point"] == f"{MODULE}:Penalty"
    assert optimizers.method_origin("sam") == {}
    model = torch.nn.Linear(3, 2)
    method = optimizers.create("penalty", model, torch.optim.SGD(model.parameters(), lr=0.1), width=0.1,
                               num_samples=10, num_classes=2)  # the run context reaches only methods needing it
    assert method.width == 0.1


@pytest.mark.parametrize(("points", "expected"), [
    ({"broken": "tests.optimizers.no_such_module:Method"}, "failed to import: ModuleNotFoundError"),
    ({"undeclared": f"{MODULE}:Undeclared"}, "declares 'width' in its spec but its constructor does not take it"),
    ({"sam": f"{MODULE}:Clash"}, "the name 'sam' is already taken"),
    ({"other": f"{MODULE}:Penalty"}, "differs from its spec's name 'penalty'"),
    ({"textrho": f"{MODULE}:RhoAsText"}, "declares hyperparameter 'rho' as str"),
])
def test_a_broken_plugin_is_refused_in_one_line_naming_it_and_its_entry_point(plugins, points, expected) -> None:
    plugins(**points)
    name, value = next(iter(points.items()))
    with pytest.raises(optimizers.PluginError) as info:
        optimizers.methods()
    message = str(info.value)
    assert expected in message and repr(name) in message and repr(value) in message and "\n" not in message
    with pytest.raises(optimizers.PluginError):  # asked again, refused again: never silently dropped
        optimizers.method_class("sgd")
    result = run_main("run", "--help")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"safbench: error: {message}"]


def test_a_plugin_reaches_run_help_and_the_check_method_command(plugins) -> None:
    plugins(penalty=f"{MODULE}:Penalty")
    help_text = run_main("run", "--help").stdout
    assert "penalty" in help_text and "--width WIDTH" in help_text and "a toy's penalty weight" in help_text
    result = run_main("check-method", "penalty", "--no-ddp")
    assert result.returncode == 0, result.stdout
    assert "penalty: passes" in result.stdout
