"""Two CPU processes (gloo) with DistributedDataParallel: SAF's sharded store and SAM/ESAM's per-worker
perturbation against hand computations made here, in the parent process."""

from __future__ import annotations

import pytest
import torch

from . import reference as ref
from .ddp_workers import (
    GSAM_CASES,
    ONE_PASS_CASES,
    SAF_E_TILDE,
    SAF_EPOCHS,
    SAF_N,
    SAM_CASES,
    SAM_STEPS,
    WORLD,
    sam_data,
    spawn,
    worker,
)
from .tiny import CLASSES, base_optimizer, mlp

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    """One spawn of two gloo workers serves every test in this file."""
    out = tmp_path_factory.mktemp("ddp")
    spawn(worker, (str(out / "init"), str(out)))
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_saf_targets_are_each_samples_own_logits_whichever_rank_saw_it(worker_results) -> None:
    ranks = [r["saf"] for r in worker_results]
    for store_dtype, dtype in DTYPES.items():
        seen: dict[int, dict[int, torch.Tensor]] = {}
        owner: dict[int, dict[int, int]] = {}
        for rank, rec in enumerate(ranks):
            for s in rec[store_dtype]["steps"]:
                for row, i in enumerate(s["indices"].tolist()):
                    assert i not in seen.setdefault(s["epoch"], {}), "a sample twice in one epoch"
                    seen[s["epoch"]][i] = s["logits"][row]
                    owner.setdefault(s["epoch"], {})[i] = rank
        assert all(len(seen[e]) == SAF_N for e in range(SAF_EPOCHS))

        checked = 0
        for rec in ranks:
            for s in rec[store_dtype]["steps"]:
                if s["epoch"] < SAF_E_TILDE:
                    assert s["old"] is None  # not active yet: trajectory loss not called
                    continue
                assert s["old"] is not None and s["old"].shape == (len(s["indices"]), CLASSES)
                for row, i in enumerate(s["indices"].tolist()):
                    expected = seen[s["epoch"] - SAF_E_TILDE][i].to(dtype).float()
                    assert torch.equal(s["old"][row], expected), (store_dtype, s["epoch"], i)
                    checked += 1
        assert checked == SAF_N * (SAF_EPOCHS - SAF_E_TILDE)
        # Meaningful only because the sampler moved samples between ranks across the compared epochs.
        moved = sum(
            owner[e][i] != owner[e - SAF_E_TILDE][i]
            for e in range(SAF_E_TILDE, SAF_EPOCHS)
            for i in range(SAF_N)
        )
        assert moved > SAF_N // 4
        # DDP kept the replicas identical.
        for a, b in zip(ranks[0][store_dtype]["params"], ranks[1][store_dtype]["params"], strict=True):
            assert torch.equal(a, b)


def _hand_ddp_two_pass(hp: dict, local_ascent: bool = True) -> list[torch.Tensor]:
    """Each rank perturbs with its own gradient (or, local_ascent=False, with the global one), computes its
    descent gradient at its own w + e, the gradients are averaged, one base step."""
    x, y = sam_data()
    model = mlp(seed=0)
    opt = base_optimizer("sgd", model)
    params = ref.opt_params(opt)
    draw = ref.RefESAM(hp.get("seed", 0), hp["beta"]) if "beta" in hp else None
    for step in range(SAM_STEPS):
        mask = draw.mask(len(params)) if draw is not None else None
        beta = hp.get("beta", 1.0)
        per_rank = []
        for rank in range(WORLD):
            if local_ascent:
                xs, ys = x[step, rank], y[step, rank]
                grads, *_ = ref.sam_grads(
                    model, params, xs, ys, rho=hp["rho"], mask=mask, beta=beta, gamma=hp.get("gamma", 1.0)
                )
            else:  # the global-batch perturbation, only to show that the test tells the two apart
                xs, ys = x[step].flatten(0, 1), y[step].flatten(0, 1)
                grads, *_ = ref.sam_grads(model, params, xs, ys, rho=hp["rho"])
            per_rank.append(grads)
        ref.apply_grads(opt, [sum(gs) / WORLD for gs in zip(*per_rank, strict=True)])
    return [p.detach().clone() for p in model.parameters()]


def test_sam_and_esam_under_ddp_perturb_locally_and_average_the_second_pass(worker_results) -> None:
    ranks = [r["two_pass"] for r in worker_results]
    x, y = sam_data()
    for case, hp in SAM_CASES.items():
        expected = _hand_ddp_two_pass(hp)
        for rank in range(WORLD):
            for got, want in zip(ranks[rank][case]["params"], expected, strict=True):
                torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=lambda m, c=case: f"{c}: {m}")
            # out.loss is the rank's own clean loss (not averaged)
            assert ranks[rank][case]["losses"][0].item() == pytest.approx(
                ref.ref_ce(mlp(seed=0)(x[0, rank]), y[0, rank]).mean().item(), abs=1e-6
            )
        if case == "sam":
            global_ascent = _hand_ddp_two_pass(hp, local_ascent=False)
            gap = max((a - b).abs().max().item() for a, b in zip(expected, global_ascent, strict=True))
            assert gap > 1e-5, "the local and global perturbations should differ measurably"


def _hand_ddp_one_pass(name: str, hp: dict):
    """SGD / MESA under DDP: per-rank gradients of the rank's loss, averaged; MESA's EMA from the formula."""
    x, y = sam_data()
    model = mlp(seed=0)
    opt = base_optimizer("sgd", model)
    ema = [p.detach().clone() for p in model.parameters()]
    ema_model = mlp(seed=0).eval()
    for step in range(SAM_STEPS):
        with torch.no_grad():
            for t, e in zip(ema_model.parameters(), ema, strict=True):
                t.copy_(e)
        per_rank = []
        for rank in range(WORLD):
            logits = model(x[step, rank])
            loss = ref.ref_ce(logits, y[step, rank]).mean()
            if name == "mesa":
                with torch.no_grad():
                    target = ema_model(x[step, rank])
                loss = loss + hp["lam"] * ref.ref_trajectory(logits, target, hp["tau"])
            per_rank.append(torch.autograd.grad(loss, list(model.parameters())))
        ref.apply_grads(opt, [sum(gs) / WORLD for gs in zip(*per_rank, strict=True)])
        d = hp.get("ema_decay", 0.0)
        ema = [d * e + (1 - d) * p.detach() for e, p in zip(ema, model.parameters(), strict=True)]
    return [p.detach().clone() for p in model.parameters()], ema


def test_sgd_and_mesa_under_ddp_average_gradients_and_keep_the_ema_of_the_module(worker_results) -> None:
    ranks = [r["two_pass"] for r in worker_results]
    for case, hp in ONE_PASS_CASES.items():
        params, ema = _hand_ddp_one_pass(case, hp)
        for rank in range(WORLD):
            for got, want in zip(ranks[rank][case]["params"], params, strict=True):
                torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
            if case == "mesa":
                for got, want in zip(ranks[rank][case]["ema"], ema, strict=True):
                    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def _hand_ddp_gsam_looksam(name: str, hp: dict) -> list[torch.Tensor]:
    """GSAM: each rank combines its own g and g_p (both local), d averaged. LookSAM: on SAM steps each rank's
    g_s and g_v = g_s - proj_g g_s are averaged; reuse steps take the averaged g plus alpha ||g||/||g_v|| g_v."""
    x, y = sam_data()
    model = mlp(seed=0)
    opt = base_optimizer("sgd", model)
    params = ref.opt_params(opt)
    g_v = None

    def dot(a, b):
        return sum((u * v).sum() for u, v in zip(a, b, strict=True))

    for step in range(SAM_STEPS):
        if name == "looksam" and step % hp["k"]:
            per_rank = [torch.autograd.grad(ref.ref_ce(model(x[step, r]), y[step, r]).mean(), params)
                        for r in range(WORLD)]
            g = [sum(gs) / WORLD for gs in zip(*per_rank, strict=True)]
            w = hp["alpha"] * dot(g, g).sqrt() / dot(g_v, g_v).sqrt()
            ref.apply_grads(opt, [a + w * v for a, v in zip(g, g_v, strict=True)])
            continue
        updates, g_vs = [], []
        for rank in range(WORLD):
            xs, ys = x[step, rank], y[step, rank]
            g = torch.autograd.grad(ref.ref_ce(model(xs), ys).mean(), params)
            g_p, *_ = ref.sam_grads(model, params, xs, ys, rho=hp["rho"])
            if name == "gsam":
                c = dot(g, g_p) / dot(g_p, g_p)
                updates.append([b - hp["alpha"] * (a - c * b) for a, b in zip(g, g_p, strict=True)])
            else:
                c = dot(g, g_p) / dot(g, g)
                updates.append(g_p)
                g_vs.append([b - c * a for a, b in zip(g, g_p, strict=True)])
        ref.apply_grads(opt, [sum(us) / WORLD for us in zip(*updates, strict=True)])
        if g_vs:
            g_v = [sum(vs) / WORLD for vs in zip(*g_vs, strict=True)]
    return [p.detach().clone() for p in model.parameters()]


def test_gsam_and_looksam_under_ddp_combine_per_worker_and_keep_the_replicas_identical(worker_results) -> None:
    ranks = [r["two_pass"] for r in worker_results]
    for case, hp in GSAM_CASES.items():
        expected = _hand_ddp_gsam_looksam(case, hp)
        for a, b in zip(ranks[0][case]["params"], ranks[1][case]["params"], strict=True):
            assert torch.equal(a, b), case
        for got, want in zip(ranks[0][case]["params"], expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=lambda m, c=case: f"{c}: {m}")
