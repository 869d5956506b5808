"""Atomic file writes: a reader or a crash never sees half a file (temporary file, fsync, rename)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from . import faultpoints
from .errors import UsageError


def atomic_write(path: str | Path, write: Callable[[IO], None], *, binary: bool = False) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            faultpoints.reached(f"write-{path.name}")  # the temporary file written, not yet in place
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide results from the rest of a group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: str | Path, frame: Any) -> None:
    """Write a pandas DataFrame atomically."""
    write_text(path, frame.to_csv(index=False))


class WriteFailed(OSError):
    """A file could not be written (full disk, read-only folder, ...); str() is one line naming the file and cause."""


_CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


def write_error_cause(exc: BaseException) -> str:
    """The cause of a failed write in a few words (torch's zip writer reports a full disk as a RuntimeError)."""
    if isinstance(exc, OSError) and exc.errno in _CAUSES:
        return _CAUSES[exc.errno]
    first = (str(exc).strip().splitlines() or [""])[0][:100]
    if isinstance(exc, RuntimeError) and ("inline_container" in first or "enforce fail" in first):
        return f"the write was cut short, most often by a full disk (torch: {first})"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save atomically; WriteFailed (one line) when the file cannot be written. Nothing is left behind."""
    import torch

    try:
        atomic_write(path, lambda f: torch.save(obj, f), binary=True)
    except (OSError, RuntimeError) as exc:
        failed = WriteFailed(f"cannot write {path} ({write_error_cause(exc)})")
        failed.errno = getattr(exc, "errno", None) or errno.EIO
        raise failed from exc


def check_writable(out: str | Path) -> None:
    """UsageError unless `out` exists as a writable folder or could be created in one."""
    out = Path(out)
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {out} is not writable ({existing} is not a writable directory)")
