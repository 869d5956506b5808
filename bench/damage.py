"""A run directory's files read strictly: a missing file is a state, a file that cannot be read is damage.

A run that has not got far yet lacks files; that is normal. A file that exists but cannot be read
(empty, truncated, random bytes, valid JSON that is not a mapping) was damaged outside safbench
(every writer here is atomic): `DamagedFile`, a UsageError whose message is one line naming the
file, the cause and what to do. Nothing in this module writes, renames or deletes.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import UsageError
from .records import CHECKPOINT, CONFIG, METRICS, SUMMARY

# What to do about each damaged file. Resuming rewrites config.yaml at once, metrics.csv and
# summary.json from the checkpoint; a checkpoint has no second copy.
ACTIONS = {
    CHECKPOINT: "delete it to restart the run from epoch 0 (run --resume, or grid; a failed cell needs "
                "--retry-failed too), or put back a good copy",
    SUMMARY: "delete it and run --resume (or grid) to rewrite it from the checkpoint",
    CONFIG: "delete it and run --resume (or grid) to rewrite it",
    METRICS: "delete it and run --resume (or grid) to rewrite it from the checkpoint",
}
RUN_FILES = (SUMMARY, CONFIG, METRICS, CHECKPOINT)


class DamagedFile(UsageError):
    """A file of a run directory exists but cannot be read; the message says what to do."""

    def __init__(self, path: str | Path, cause: str, action: str | None = None) -> None:
        self.path = Path(path)
        self.cause = cause
        self.action = action or ACTIONS.get(self.path.name, "delete it or put back a good copy")
        super().__init__(f"{self.path} is damaged ({cause}); {self.action}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line if len(line) <= 120 else line[:117] + "..."


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _read_text(path: Path) -> str | None:
    """The file's text; None if there is none; DamagedFile if it cannot be read."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFile(path, f"unreadable: {_first_line(exc)}") from None


def read_json_mapping(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None if there is no file; DamagedFile if it is not a readable mapping."""
    if (text := _read_text(path)) is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        raise DamagedFile(path, "empty" if not text.strip() else "truncated or corrupt: not valid JSON") from None
    if not isinstance(value, dict):
        raise DamagedFile(path, f"valid JSON but a {type(value).__name__}, not a mapping")
    return value


def read_yaml_mapping(path: Path) -> dict[str, Any] | None:
    """The YAML mapping in `path`; None if there is no file; DamagedFile otherwise."""
    import yaml

    if (text := _read_text(path)) is None:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise DamagedFile(path, "truncated or corrupt: not valid YAML") from None
    if not isinstance(value, dict):
        raise DamagedFile(path, "empty" if not text.strip() else f"a YAML {type(value).__name__}, not a mapping")
    return value


def check_metrics(path: Path) -> None:
    """DamagedFile unless `path` is missing or a CSV with an `epoch` column of integers."""
    import pandas as pd

    if not path.exists():
        return
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DamagedFile(path, "empty") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DamagedFile(path, f"truncated or corrupt: {_first_line(exc)}") from None
    if "epoch" not in frame.columns or not pd.api.types.is_integer_dtype(frame["epoch"]):
        raise DamagedFile(path, "truncated or corrupt: no column of epoch numbers")


def check_checkpoint(path: Path) -> None:
    """A cheap look (the zip directory at the end of the file) that catches empty, truncated and
    random-bytes checkpoints without loading the tensors; `load_torch` catches the rest."""
    if not path.exists():
        return
    if _empty(path):
        raise DamagedFile(path, "empty")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise DamagedFile(path, "truncated or corrupt: not a complete torch file") from None
    if not any(n.endswith("data.pkl") for n in names):
        raise DamagedFile(path, "corrupt: a zip file but not a torch checkpoint")


def load_torch(path: Path, device: Any = "cpu", keys: Iterable[str] = ()) -> Any:
    """torch.load(weights_only=True) of a file that exists; DamagedFile (one line) if it cannot be read."""
    import torch

    check_checkpoint(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types (EOFError, UnpicklingError, RuntimeError)
        raise DamagedFile(path, f"truncated or corrupt: {_first_line(exc)}") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise DamagedFile(path, f"corrupt: lacks {', '.join(missing)}")
    return state


_CHECKS = {SUMMARY: read_json_mapping, CONFIG: read_yaml_mapping, METRICS: check_metrics,
           CHECKPOINT: check_checkpoint}


def damaged_files(run_dir: Path, names: Iterable[str] = RUN_FILES) -> list[DamagedFile]:
    """Every damaged file among `names` in `run_dir` (missing files are not damage)."""
    found = []
    for name in names:
        try:
            _CHECKS[name](run_dir / name)
        except DamagedFile as exc:
            found.append(exc)
    return found


def check_run_dir(run_dir: Path, names: Iterable[str] = RUN_FILES) -> None:
    """Raise the first damaged file's DamagedFile (the one line the user sees)."""
    found = damaged_files(run_dir, names)
    if found:
        raise found[0]
