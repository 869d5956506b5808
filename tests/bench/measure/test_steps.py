"""bench.measure.steps: the step benchmark's rows, its memory accounting and config checks (no timing claims)."""

from __future__ import annotations

import pytest

from bench.errors import UsageError
from bench.measure import memory
from bench.measure.config import OverheadConfig
from bench.measure.methods import METHODS
from bench.measure.steps import StepBenchmark, measure_steps
from bench.models import create_model

TINY = dict(model="mlp_tiny", batch_size=8, steps=1, repeats=3, warmup=1, num_samples=64)


def test_measure_steps_rows_for_every_method() -> None:
    rows = measure_steps(OverheadConfig(**TINY))
    by = {r.method: r for r in rows}
    assert list(by) == list(METHODS)
    c, n = 10, 64
    assert by["sgd"].time_ratio_median == 1.0 and by["sgd"].throughput_ratio_median == 1.0
    for r in rows:
        assert r.rounds == 3 and r.timer == "perf_counter" and r.num_samples == n
        assert r.images_per_s_min <= r.images_per_s_q1 <= r.images_per_s_median <= r.images_per_s_q3
        assert r.images_per_s_q3 <= r.images_per_s_max and r.images_per_s_median > 0
        assert r.peak_mem_bytes is None  # CUDA only
    assert by["saf"].saf_store_bytes == n * 3 * (c * 2 + 2)  # float16 N x e_tilde x C + int16 marks
    assert by["saf_official"].saf_store_bytes == n * 3 * c * 4  # float32
    assert by["saf_official"].saf_store_location.startswith("host")
    net = create_model("mlp_tiny", num_classes=c)
    model_bytes = sum(t.numel() * 4 for t in net.state_dict().values())
    assert by["mesa"].mesa_ema_bytes == model_bytes
    # SAF's state = the model, its grads, momentum, and the store.
    assert by["saf"].state_bytes == 3 * model_bytes + n * 3 * (c * 2 + 2)
    assert by["saf_official"].state_bytes == 3 * model_bytes + n * 3 * c * 4  # on the CPU its host store counts
    # LookSAM is timed over whole k-step cycles and keeps g_v beside the model, its grads and momentum.
    assert by["looksam"].steps_per_block == 5 and by["gsam"].steps_per_block == by["sgd"].steps_per_block
    assert by["looksam"].state_bytes == 4 * model_bytes


def test_every_method_is_timed_active() -> None:
    bench = StepBenchmark(OverheadConfig(**TINY))
    assert all(bench.methods[m].active for m in ("saf", "saf_official", "mesa"))
    bench.warm_up()
    bench.round()
    # SAF's store was read and written through real indices: the swept rows are no longer zero.
    store = bench.methods["saf"].store.table
    used = bench.pool.index_batches[: bench.blocks["saf"].cursor].flatten()
    assert store[bench.methods["saf"].epoch % 3][used].abs().sum() > 0


@pytest.mark.parametrize(("change", "message"), [
    ({"methods": ("sgd", "adam")}, "unknown"),
    ({"methods": ("saf", "sam")}, "must include 'sgd'"),
    ({"num_samples": 4}, "num_samples=4"),
    ({"steps": 0}, "steps=0"),
    ({"shape": "mnist"}, "shape='mnist'"),
    ({"precision": "fp16"}, "precision='fp16'"),
])
def test_config_errors_name_the_value(change: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        OverheadConfig(**{**TINY, **change}).validate()


def test_store_is_scaled_to_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 kB of "available" host memory, half for the stores, at 186 bytes per sample: ours 3 x (10 x 2
    # + 2 for the int16 written-epoch mark), the official 3 x 10 x 4.
    monkeypatch.setattr(memory, "host_available_bytes", lambda: 100_000)
    bench = StepBenchmark(OverheadConfig(**{**TINY, "num_samples": 50_000}))
    assert bench.num_samples == 50_000 // 186 == 268
    assert any("scaled from 50,000 to 268" in n for n in bench.notes)
