"""What other packages add to bench without bench importing them: `safbench` subcommands and run hooks.

The data flows config → run → run directory → analysis, so `analysis` imports `bench` and never the
reverse. Where bench must call into a later stage (the `report` subcommand, the Hessian measured after
chosen epochs of a run), the later stage declares itself as a package entry point (pyproject.toml) and
bench looks the group up here, by group name only.

- `safbench.commands`: `register(subparsers)` functions, each adding subcommands.
- `safbench.run_hooks`: `factory(config) -> hook | None`; a hook is called as `hook(view)` after every
  epoch (`view.epoch` the epoch index) and once at the end of a finished run (`view.epoch` None), on
  the main rank, before that epoch's checkpoint is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

COMMANDS = "safbench.commands"
RUN_HOOKS = "safbench.run_hooks"


@dataclass(frozen=True)
class EpochView:
    """What a run hook sees of a run: its config, its model (train mode is restored by the run) and where
    its files go."""

    config: Any  # bench.config.RunConfig
    model: Any  # torch.nn.Module, unwrapped from DDP
    device: Any  # torch.device
    run_dir: Path
    epoch: int | None  # the epoch just trained (0-based); None at the end of training


RunHook = Callable[[EpochView], None]


def loaded(group: str) -> dict[str, Any]:
    """Every entry point of `group`, loaded, by name (sorted). An entry point that fails to import is an
    error, not skipped: a broken plugin must not silently remove a command."""
    return {ep.name: ep.load() for ep in sorted(entry_points(group=group), key=lambda ep: ep.name)}


def run_hooks(config: Any) -> dict[str, RunHook]:
    """The hooks this config asks for, by name."""
    hooks = {name: factory(config) for name, factory in loaded(RUN_HOOKS).items()}
    return {name: hook for name, hook in hooks.items() if hook is not None}
