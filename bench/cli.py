"""The `safbench` command. Each subcommand lives next to the code it drives and registers itself here.

Those of later stages (analysis) register through the `safbench.commands` entry points (bench.plugins).

Bad input prints one line on stderr and exits 2; a run that fails after starting exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from . import plugins
from .errors import UsageError

DEBUG_ENV = "SAFBENCH_DEBUG"



def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per run key and per method hyperparameter (hyphens for underscores), all defaulting to
    'not given'; help text and choices come from RunConfig's fields and the methods' specs."""
    import optimizers

    from .config import RunConfig, _field_types
    from .data import DATASETS
    from .models import MODELS

    run = parser.add_argument_group("run keys")
    for f in dataclasses.fields(RunConfig):
        if f.name == "method_hparams":
            continue
        kind, _, is_list = _field_types()[f.name]
        default = f.default_factory() if callable(f.default_factory) else f.default
        choices = {"method": optimizers.methods(), "dataset": DATASETS}.get(f.name, f.metadata.get("choices"))
        if f.name == "model":
            default = f"{default}; one of {', '.join(MODELS)} or timm:<name>"
        _add_flag(run, f.name, kind, is_list, f"{f.metadata.get('help', '')} (default: {default})", choices)
    method = parser.add_argument_group("method hyperparameters (each applies to the methods that declare it)")
    for name, hp in optimizers.all_hparams().items():
        takers = [m for m in optimizers.methods() if name in optimizers.method_hparams(m)]
        defaults = "; ".join(f"{m} {optimizers.method_hparams(m)[name]}" for m in takers)
        _add_flag(method, name, hp.type, False, f"{hp.help}; {hp.allowed()} (default: {defaults})", hp.choices)


def _add_flag(group: Any, name: str, kind: type, is_list: bool, help: str, choices: Any) -> None:
    flag = "--" + name.replace("_", "-")
    help = help.replace("%", "%%")
    if kind is bool:
        group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help)
    elif is_list:
        group.add_argument(flag, dest=name, type=int, nargs="*", default=None, metavar="EPOCH", help=help)
    else:
        group.add_argument(flag, dest=name, type=kind, default=None, choices=choices, help=help,
                           metavar=None if choices else name.upper())


def config_from_args(args: argparse.Namespace) -> Any:
    from .config import RunConfig

    values: dict[str, Any] = RunConfig.from_yaml(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in RunConfig.keys() and v is not None})
    return RunConfig.from_dict(values, where=args.config or "flags")


def _run(args: argparse.Namespace) -> int:
    from .run import run

    summary = run(config_from_args(args), resume=args.resume, command=args.invocation)
    print(f"{summary['run_dir']}: {summary['status']}, final test acc {summary['final_test_acc']}, "
          f"{summary['images_per_s'] or 0:.0f} img/s")
    return 0 if summary["status"] in ("finished", "diverged") else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="train one config and write its run directory")
    p.add_argument("--config", help="YAML file with run keys (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    add_run_flags(p)
    p.set_defaults(func=_run)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, torchrun stopping its workers), raised where the process is so that it
    unwinds as Ctrl-C does: temporary files removed, the last checkpoint kept for --resume."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


class _Parser(argparse.ArgumentParser):
    hint = ""  # said after an unknown subcommand

    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        hint = self.hint if "invalid choice" in message else ""
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="safbench", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", default=None,
                        help=f"print the full traceback instead of one line (or set {DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    from . import grid_cli, tune_cli
    from .measure import cli as measure_cli

    plugged = plugins.loaded(plugins.COMMANDS)
    if not plugged:  # a checkout on PYTHONPATH, never installed: its entry points are unknown to Python
        parser.hint = ("; report, hessian and landscape come from the installed package's entry points: "
                       "run bash scripts/setup.sh (pip install -e .)")
    for register_commands in (register, grid_cli.register, tune_cli.register, measure_cli.register, *plugged.values()):
        register_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .provenance import command_line, git_commit

    # The command recorded with results: what was typed, or the argv a caller passed in.
    args.invocation = command_line(None if argv is None else list(argv))
    git_commit()  # the commit of the code this process has loaded, before anything runs for long
    debug = bool(args.debug) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    # SIGTERM unwinds like Ctrl-C, while this call lasts; a host's own handler is left alone.
    installed = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    if installed:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _dispatch(args, debug)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def say(line: str) -> None:
    """One line to stderr in one write: print() writes the text and its newline separately, and stderr is
    unbuffered, so the ranks of a torchrun sharing one pipe would splice their lines together."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _dispatch(args: argparse.Namespace, debug: bool) -> int:
    if debug:  # --debug: every error with its whole traceback
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        say(f"safbench: error: {exc}")
        return 2
    except Terminated:
        hint = {"run": "; the last checkpoint is kept: continue with --resume",
                "grid": "; the cells' checkpoints are kept: run the grid again to resume them"}.get(args.command, "")
        say(f"safbench: terminated (SIGTERM){hint}")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        say("safbench: interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user; the summary keeps the details
        say(f"safbench: {args.command} failed: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
