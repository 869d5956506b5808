"""Where a result came from: command, git commit, versions and hardware, recorded with every row."""

from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch


@functools.cache
def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the checkout the code runs from, with '-dirty' if it has uncommitted changes.

    Read once per process: `safbench` reads it at start, when the code is loaded, so a commit or an edit
    made while a long grid runs does not relabel the runs that the loaded code goes on to make.
    """
    where = cwd or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {cpu} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed; `argv` (the arguments after `safbench`) when main() was called with them."""
    if argv is not None:
        return shlex.join(["safbench", *argv])
    argv = list(sys.argv)
    if argv and argv[0].endswith(("safbench", "__main__.py")):
        argv[0] = "safbench"
    return shlex.join(argv)


def versions() -> dict[str, str]:
    out = {"python_version": platform.python_version(), "torch_version": torch.__version__}
    for module in ("torchvision", "timm"):
        try:
            out[f"{module}_version"] = __import__(module).__version__
        except ImportError:
            out[f"{module}_version"] = "missing"
    return out


def provenance(device: torch.device, command: str | None = None, method: str | None = None) -> dict[str, str]:
    """With `method` a plugin's (optimizers.method_origin), also its distribution, version and entry point."""
    import optimizers

    origin = optimizers.method_origin(method) if method is not None else {}
    return {"git_commit": git_commit(), "device_name": device_name(device), "hostname": platform.node(),
            "command": command or command_line(), **versions(), **origin}
