"""SGD: one clean forward-backward and the base optimizer's step (the base class's behaviour)."""

from __future__ import annotations

from .base import Method
from .spec import MethodSpec


class SGD(Method):
    name = "sgd"
    spec = MethodSpec(name="sgd", summary="one forward-backward, base step", paper="the base optimizer alone")
