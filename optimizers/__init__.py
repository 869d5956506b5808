"""SGD, SAM, ESAM, GSAM, LookSAM, SAF and MESA behind one step interface (and methods that installed
packages add through the `safbench.methods` entry points: optimizers.registry).

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
    PluginError,
    all_hparams,
    create,
    method_class,
    method_hparams,
    method_origin,
    method_spec,
    methods,
    register_method,
    spec_problems,
    unregister_method,
)
from .saf import SAF
from .sam import SAM
from .sgd import SGD
from .spec import HParam, MethodSpec, Search, method_seed

# Registration order is the display order everywhere (tables, figures, claims): the base optimizer alone,
# then the methods in the SAF paper's order; plugins follow, by name.
BUILTIN = (SGD, SAM, ESAM, GSAM, LookSAM, SAF, MESA)
for _cls in BUILTIN:
    register_method(_cls)

BASE_METHOD = SGD.name  # the base optimizer alone: every share and claim is taken against it
METHODS: tuple[str, ...] = tuple(c.name for c in BUILTIN)  # built-in only; `methods()` adds the plugins

__all__ = ["BASE_METHOD", "BN_UPDATES", "BUILTIN", "ESAM", "GSAM", "MESA", "METHODS", "PRECISIONS", "SAF", "SAM", "SGD",
           "HParam", "LookSAM", "Method", "MethodSpec", "PluginError", "Search", "StepOutput", "all_hparams",
           "create", "method_class", "method_hparams", "method_origin", "method_seed", "method_spec", "methods",
           "register_method", "spec_problems", "unregister_method", "unwrap"]
