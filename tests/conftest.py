"""Suite-wide settings: every test, and every module fixture, runs torch on one intra-op thread.

Tests use tiny tensors on a shared 2-core box: a second thread only spin-waits (tiny ops got ~10x
slower under load), and one thread matches the CLI subprocesses (grid_util.cli_env), so in- and
out-of-process numerics agree.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread_session() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    torch.set_num_threads(1)  # also undoes a test, or a CLI it called (`--threads`), that changed it
    yield


@pytest.fixture
def interrupt_run_at(monkeypatch: pytest.MonkeyPatch):
    """`interrupt_run_at(n)`: bench.run.Run raises KeyboardInterrupt when epoch n starts, after epoch n-1's
    checkpoint, as a killed run leaves it; `interrupt_run_at(None)` restores the real epoch."""
    from bench.run import Run

    real_epoch = Run._epoch

    def at(epoch: int | None) -> None:
        def interrupted(self, e):
            if e == epoch:
                raise KeyboardInterrupt
            return real_epoch(self, e)

        monkeypatch.setattr(Run, "_epoch", real_epoch if epoch is None else interrupted)

    return at
