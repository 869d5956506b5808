"""Any timm model as `timm:<name>` (ImageNet-scale nets: ResNet-50, ViTs, ...), never with pretrained weights.

timm is imported on first use only, so CPU runs on the small models do not pay for it.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from bench.errors import UsageError

PREFIX = "timm:"


def create_timm_model(
    name: str, *, num_classes: int, in_chans: int, img_size: int, **kwargs: Any
) -> nn.Module:
    """`timm.create_model(name, pretrained=False, ...)`; `img_size` goes only to models that take it (ViTs).

    Raises UsageError for a name timm does not know or an option the model does not take.
    """
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"did you mean {', '.join(PREFIX + c for c in close)}?" if close else "see timm.list_models()"
        raise UsageError(f"unknown timm model {name!r} (timm {timm.__version__}): {hint}")
    args = dict(pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    try:
        try:
            return timm.create_model(name, img_size=img_size, **args)
        except TypeError as err:
            # CNNs reject img_size at argument binding, before any weight is drawn: the RNG stream is intact
            if "img_size" not in str(err):
                raise
        return timm.create_model(name, **args)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
        raise UsageError(f"timm model {name!r} rejects an option: {err}") from None
