"""SAF's store under a loader that reshuffles every epoch: each sample's target is its own clean
logits from exactly e_tilde epochs earlier (recorded here from out.logits, per sample and epoch)."""

from __future__ import annotations

import pytest
import torch

import optimizers
import optimizers.saf as saf_module

from .tiny import CLASSES, MODELS, base_optimizer, data, epoch_order

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class TargetRecorder:
    """Stands in for optimizers.saf.trajectory_loss: records the old logits SAF looked up."""

    def __init__(self) -> None:
        self.original = saf_module.trajectory_loss
        self.calls: list[torch.Tensor] = []

    def __call__(self, logits, old_logits, tau, weights=None):
        # Every sample is seen every epoch in these tests, so every target must exist.
        assert weights is not None and bool(weights.all())
        self.calls.append(old_logits.detach().clone())
        return self.original(logits, old_logits, tau, weights=weights)


@pytest.mark.parametrize("model_kind", ["mlp", "convbn"])
@pytest.mark.parametrize("store_dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("e_tilde,e_start", [(2, 0), (3, 1), (2, 4), (1, 1)])
def test_each_target_is_the_samples_own_logits_from_e_tilde_epochs_ago(
    monkeypatch, model_kind, store_dtype, e_tilde, e_start
) -> None:
    n, batch = 10, 4  # batches of 4, 4, 2: a short last batch too
    epochs = max(e_tilde, e_start) + 3
    model = MODELS[model_kind]()
    x, y = data(model_kind, n)
    method = optimizers.create(
        "saf",
        model,
        base_optimizer("sgd", model),
        num_samples=n,
        num_classes=CLASSES,
        lam=0.5,
        tau=2.0,
        e_tilde=e_tilde,
        e_start=e_start,
        store_dtype=store_dtype,
    )
    recorder = TargetRecorder()
    monkeypatch.setattr(saf_module, "trajectory_loss", recorder)

    seen: dict[int, dict[int, torch.Tensor]] = {}  # epoch -> sample -> its clean logits that epoch
    positions: dict[int, dict[int, int]] = {}  # epoch -> sample -> its batch position
    checked = 0
    for epoch in range(epochs):
        method.set_epoch(epoch)
        active = epoch >= max(e_start, e_tilde)
        for position, idx in enumerate(epoch_order(n, batch, epoch)):
            before = len(recorder.calls)
            out = method.step(x[idx], y[idx], idx)
            assert len(recorder.calls) == before + int(active), f"epoch {epoch}: active should be {active}"
            if active:
                old = recorder.calls[-1]
                assert old.shape == (len(idx), CLASSES) and old.dtype == torch.float32
                for row, i in enumerate(idx.tolist()):
                    expected = seen[epoch - e_tilde][i].to(DTYPES[store_dtype]).float()
                    assert torch.equal(old[row], expected), (epoch, i)
                    assert old[row].abs().sum() > 0
                    checked += 1
            for row, i in enumerate(idx.tolist()):
                seen.setdefault(epoch, {})[i] = out.logits[row].clone()
                positions.setdefault(epoch, {})[i] = position
    assert checked == n * (epochs - max(e_start, e_tilde))
    # The check means something only if samples changed batches between the epochs compared.
    assert any(positions[e][i] != positions[e - e_tilde][i] for e in range(e_tilde, epochs) for i in range(n))


def test_store_is_sized_n_by_e_tilde_by_c_in_its_dtype() -> None:
    model = MODELS["mlp"]()
    for dtype, size in (("float16", 2), ("bfloat16", 2), ("float32", 4)):
        method = optimizers.create(
            "saf",
            model,
            base_optimizer("sgd", model),
            num_samples=37,
            num_classes=CLASSES,
            e_tilde=3,
            store_dtype=dtype,
        )
        # logits in the store's dtype plus the int16 epoch that wrote each row
        assert method.extra_metrics()["saf_store_bytes"] == 37 * 3 * CLASSES * size + 37 * 3 * 2


def test_indices_of_any_integer_dtype_work() -> None:
    """int32 indices (e.g. from a numpy loader) address the same rows as int64 ones."""
    outs = {}
    for dtype in (torch.int64, torch.int32):
        model = MODELS["mlp"]()
        x, y = data("mlp", 8)
        method = optimizers.create(
            "saf",
            model,
            base_optimizer("sgd", model),
            num_samples=8,
            num_classes=CLASSES,
            e_tilde=1,
            e_start=1,
            store_dtype="float32",
        )
        for epoch in range(3):
            method.set_epoch(epoch)
            for idx in epoch_order(8, 4, epoch):
                method.step(x[idx], y[idx], idx.to(dtype))
        outs[dtype] = [p.detach().clone() for p in model.parameters()]
    for a, b in zip(outs[torch.int64], outs[torch.int32], strict=True):
        assert torch.equal(a, b)


def test_a_sample_missing_from_epoch_e_minus_e_tilde_gets_no_target(monkeypatch) -> None:
    """drop_last leaves samples out of an epoch: their target must be absent, not stale or zero."""
    seen: list[torch.Tensor] = []
    original = saf_module.trajectory_loss

    def recording(logits, old, tau, weights=None):
        seen.append(weights.clone())
        return original(logits, old, tau, weights=weights)

    monkeypatch.setattr(saf_module, "trajectory_loss", recording)
    model = MODELS["mlp"]()
    method = optimizers.create("saf", model, base_optimizer("sgd", model), num_samples=6, num_classes=CLASSES,
                               e_tilde=1, e_start=1, store_dtype="float32")
    x, y = data("mlp", 6)
    method.set_epoch(0)
    method.step(x[:4], y[:4], torch.arange(4))  # samples 4 and 5 dropped in epoch 0
    method.set_epoch(1)
    method.step(x, y, torch.arange(6))
    assert seen[0].tolist() == [True, True, True, True, False, False]


def test_absent_targets_add_nothing_and_the_mean_stays_over_the_batch() -> None:
    logits, old = torch.randn(4, 5), torch.randn(4, 5)
    present = torch.tensor([True, False, True, False])
    tau = 2.0
    p_old = torch.softmax(old / tau, 1)
    kl = (p_old * (torch.log_softmax(old / tau, 1) - torch.log_softmax(logits / tau, 1))).sum(1)
    expected = tau**2 * (kl * present).sum() / 4
    assert torch.allclose(saf_module.trajectory_loss(logits, old, tau, weights=present), expected, atol=1e-6)


def test_epoch_marks_are_int16_and_an_epoch_past_their_range_is_refused() -> None:
    from optimizers.store import LogitStore

    store = LogitStore(5, CLASSES, 2)
    assert store.written.dtype == torch.int16
    store.write(32_767, torch.tensor([1]), torch.ones(1, CLASSES))
    with pytest.raises(ValueError, match="epoch=32768 is outside"):
        store.write(32_768, torch.tensor([1]), torch.ones(1, CLASSES))


def test_a_store_saved_with_int32_marks_still_loads() -> None:
    """Checkpoints from before the int16 marks hold int32 ones: they load and read the same."""
    from optimizers.store import LogitStore

    old = LogitStore(6, CLASSES, 2)
    logits = torch.randn(3, CLASSES)
    old.write(4, torch.tensor([0, 2, 5]), logits)
    state = old.state_dict()
    state["written"] = state["written"].to(torch.int32)
    new = LogitStore(6, CLASSES, 2)
    new.load_state_dict(state)
    got, present = new.read(6, torch.tensor([5, 1, 0]))
    assert present.tolist() == [True, False, True]
    assert torch.equal(got[[0, 2]], logits[[2, 0]].half().float())
