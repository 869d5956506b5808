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
