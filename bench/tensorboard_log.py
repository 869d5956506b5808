"""Live view of a run: each epoch's metrics.csv row as TensorBoard scalars (`--tensorboard`).

metrics.csv stays the source of truth; the event files in <run dir>/tensorboard/ are a copy for
watching a long run while it trains (`tensorboard --logdir runs/`). Every numeric column of the row
becomes the scalar `metrics/<column>` at step = the epoch (0-based, as in metrics.csv). TensorBoard is
an optional extra (`pip install safbench[tensorboard]`); asking for it without it is a usage error,
raised before the run directory is made.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any

from .errors import UsageError

TENSORBOARD_DIR = "tensorboard"
TAG_PREFIX = "metrics/"


def check_available() -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - needs the tensorboard package
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install 'safbench[tensorboard]' "
                         "(or pip install tensorboard)") from None


class TensorBoardLog:
    """A SummaryWriter on <run_dir>/tensorboard, opened on the first row (the run directory exists by then)."""

    def __init__(self, run_dir: Path) -> None:
        check_available()
        self.folder = Path(run_dir) / TENSORBOARD_DIR
        self._writer: Any = None

    def log(self, row: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.folder))
        step = int(row["epoch"])
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            if math.isfinite(float(value)):
                self._writer.add_scalar(TAG_PREFIX + key, float(value), global_step=step)
        self._writer.flush()  # visible to a watching TensorBoard at once

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
