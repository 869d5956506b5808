"""SGD: one clean forward-backward and the base optimizer's step (the base class's behaviour)."""

from __future__ import annotations

from .base import Method


class SGD(Method):
    name = "sgd"
