"""Shared settings for the optimizers tests: deterministic seeds (one thread comes from tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
