"""SGD, SAM, ESAM, SAF, MESA, GSAM and LookSAM behind one step interface.

    method = optimizers.create("saf", model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                               num_samples=50_000, num_classes=10)
    for epoch in range(epochs):
        method.set_epoch(epoch)
        for indices, inputs, targets in loader:
            out = method.step(inputs, targets, indices)   # out.loss, out.logits (detached)
"""

from .base import BN_UPDATES, PRECISIONS, Method, StepOutput, unwrap
from .esam import ESAM
from .gsam import GSAM
from .looksam import LookSAM
from .mesa import MESA
from .registry import (
    all_hparams,
    create,
    method_class,
    method_hparams,
    method_spec,
    methods,
    register_method,
    unregister_method,
)
from .saf import SAF
from .sam import SAM
from .sgd import SGD
from .spec import HParam, MethodSpec, Search, method_seed

for _cls in (SGD, SAM, ESAM, SAF, MESA, GSAM, LookSAM):
    register_method(_cls)

METHODS: tuple[str, ...] = methods()  # the built-in methods; `methods()` also lists ones registered later

__all__ = ["BN_UPDATES", "ESAM", "GSAM", "MESA", "METHODS", "PRECISIONS", "SAF", "SAM", "SGD", "HParam", "LookSAM",
           "Method", "MethodSpec", "Search", "StepOutput", "all_hparams", "create", "method_class", "method_hparams",
           "method_seed", "method_spec", "methods", "register_method", "unregister_method", "unwrap"]
