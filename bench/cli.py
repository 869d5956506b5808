"""The `safbench` command. Each subcommand lives next to the code it drives and registers itself here.

Bad input prints one line on stderr and exits 2; a run that fails after starting exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from .errors import UsageError

# Modules that define `register(subparsers)`; each adds one or more subcommands.
COMMAND_MODULES = ("bench.cli", "bench.grid_cli", "analysis.cli", "analysis.flatness_cli", "bench.overhead_cli")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig key (hyphens for underscores), all defaulting to 'not given'."""
    from .config import RunConfig

    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        if "bool" in kind:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif "list[int]" in kind:
            parser.add_argument(flag, dest=f.name, type=int, nargs="*", default=None, metavar="EPOCH")
        else:
            cast = int if kind.startswith("int") else float if kind.startswith("float") else str
            parser.add_argument(flag, dest=f.name, type=cast, default=None, metavar=f.name.upper())


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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="safbench", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a subcommand not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .provenance import command_line, git_commit

    # The command recorded with results: what was typed, or the argv a caller passed in.
    args.invocation = command_line(None if argv is None else list(argv))
    git_commit()  # the commit of the code this process has loaded, before anything runs for long
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"safbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("safbench: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user; the summary keeps the details
        print(f"safbench: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
