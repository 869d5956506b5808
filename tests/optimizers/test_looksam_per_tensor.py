"""LookSAM's per_tensor option against a float64 loop written here from the per-tensor rule (pytorch-optimizer's
form, from the unofficial rollovd/LookSAM): for each parameter tensor p on SAM steps
g_v_p = g_s_p - (<g_p, g_s_p>/(||g_p||^2 + 1e-12)) g_p, on the steps between
g_p + alpha ||g_p||/(||g_v_p|| + 1e-8) g_v_p (the 1e-12 matters: a BatchNorm tensor's tiny gradient makes its
coefficient sensitive at 1e-10)."""

from __future__ import annotations

import math

import pytest

import optimizers

from . import reference as ref
from .harness import N, run_method, schedule
from .test_gsam_looksam import dot, grads_at, sam_pair
from .tiny import MODELS, assert_same_state, base_optimizer, data, model_state, twin


class RefPerTensorLookSAM:
    def __init__(self, rho: float, k: int, alpha: float) -> None:
        self.rho, self.k, self.alpha, self.t, self.g_v = rho, k, alpha, 0, None

    def step(self, model, opt, x, y) -> None:
        params = ref.opt_params(opt)
        if self.t % self.k == 0:
            g, g_s = sam_pair(model, params, x, y, self.rho)  # the perturbation is global, as in SAM
            self.g_v = [s - (dot([a], [s]) / (dot([a], [a]) + 1e-12)) * a for a, s in zip(g, g_s, strict=True)]
            ref.apply_grads(opt, g_s)
        else:
            g = grads_at(model, params, x, y, keep_bn=False)
            ref.apply_grads(opt, [a + self.alpha * math.sqrt(dot([a], [a])) / (math.sqrt(dot([v], [v])) + 1e-8) * v
                                  for a, v in zip(g, self.g_v, strict=True)])
        self.t += 1


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
@pytest.mark.parametrize("k,alpha", [(3, 0.7), (2, 1.5)])
def test_per_tensor_looksam_matches_its_float64_reference(model_kind: str, k: int, alpha: float) -> None:
    model = MODELS[model_kind]().double()
    ref_model, start = twin(model), model_state(model)
    opt, ref_opt = base_optimizer("sgd", model), base_optimizer("sgd", ref_model)
    method = optimizers.create("looksam", model, opt, rho=0.3, k=k, alpha=alpha, per_tensor=True)
    reference = RefPerTensorLookSAM(0.3, k, alpha)
    x, y = data(model_kind, N)
    x = x.double()
    plan = schedule(3)
    run_method(method, x, y, plan)
    for _, batches in plan:
        for idx in batches:
            reference.step(ref_model, ref_opt, x[idx], y[idx])
    assert_same_state(model, ref_model, atol=1e-10)
    # The option changes the trajectory: the whole-vector form lands measurably elsewhere.
    glob = MODELS[model_kind]().double()
    glob.load_state_dict(start)
    run_method(optimizers.create("looksam", glob, base_optimizer("sgd", glob), rho=0.3, k=k, alpha=alpha), x, y, plan)
    gap = max((a - b).abs().max().item() for a, b in zip(glob.parameters(), model.parameters(), strict=True))
    assert gap > 1e-3


def test_per_tensor_joins_a_runs_name_only_when_set() -> None:
    from bench.config import RunConfig

    plain = RunConfig.from_dict({"method": "looksam"})
    assert "per_tensor" not in plain.identity()
    assert RunConfig.from_dict({"method": "looksam", "per_tensor": False}).config_hash() == plain.config_hash()
    assert RunConfig.from_dict({"method": "looksam", "per_tensor": True}).config_hash() != plain.config_hash()
