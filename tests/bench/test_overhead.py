"""bench.overhead, bench.official_saf and `safbench overhead`: fast functional checks (no timing claims)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

import bench.overhead as oh
import optimizers
from bench.cli import main
from bench.errors import UsageError
from bench.models import create_model
from bench.official_saf import HostLogitStore, OfficialSAF

CPU = torch.device("cpu")
TINY = dict(model="mlp_tiny", batch_size=8, steps=1, repeats=3, warmup=1, num_samples=64)


# ---- statistics and interleaving -------------------------------------------------------------------
def test_spread_quartiles_by_hand() -> None:
    s = oh.Spread.of([100.0, 2.0, 4.0, 1.0, 3.0])
    # Sorted 1, 2, 3, 4, 100: quartiles at positions (n - 1) * 0.25 and 0.75 = 1 and 3.
    assert (s.median, s.q1, s.q3, s.min, s.max) == (3.0, 2.0, 4.0, 1.0, 100.0)
    s = oh.Spread.of([1.0, 2.0])
    assert (s.median, s.q1, s.q3) == (1.5, 1.25, 1.75)
    assert oh.Spread.of([5.0]) == oh.Spread(5.0, 5.0, 5.0, 5.0, 5.0)


class FakeClock:
    """A machine whose speed changes every round: every block of round r takes cost * load[r]."""

    name = "fake"

    def __init__(self, loads: list[float]) -> None:
        self.loads, self.calls = loads, 0
        self.blocks_per_round = 3

    def sync(self) -> None:
        pass

    def time(self, fn) -> float:  # noqa: ANN001
        load = self.loads[self.calls // self.blocks_per_round]
        self.calls += 1
        return fn() * load


def test_interleaved_ratios_cancel_a_drifting_machine() -> None:
    loads = [1.0, 3.0, 0.5, 2.0, 1.2, 4.0, 0.8, 1.0]
    calls: list[str] = []

    def block(name: str, cost: float):  # noqa: ANN202
        return lambda: calls.append(name) or cost

    blocks = {"sgd": block("sgd", 1.0), "sam": block("sam", 2.0), "saf": block("saf", 1.05)}
    timer = oh.InterleavedTimer(blocks, FakeClock(loads), seed=0)
    for _ in loads:
        timer.round()
    ratios = timer.ratios("sgd")
    assert ratios["sam"] == pytest.approx([2.0] * len(loads))  # absolute times swing 8x; ratios do not
    assert ratios["saf"] == pytest.approx([1.05] * len(loads))
    assert max(timer.samples["sgd"]) / min(timer.samples["sgd"]) == pytest.approx(8.0)
    for r, order in enumerate(timer.orders):  # every round times every block exactly once
        assert sorted(order) == ["saf", "sam", "sgd"]
        assert sorted(calls[3 * r:3 * r + 3]) == ["saf", "sam", "sgd"]
    assert len({tuple(o) for o in timer.orders}) > 1  # shuffled, not a fixed order


def test_batch_pool_sweeps_every_sample_once() -> None:
    pool = oh.BatchPool.synthetic(oh.SHAPES["cifar10"], 8, 100, CPU, seed=0)
    assert pool.index_batches.shape == (12, 8)  # drop-last: 100 // 8 full batches
    seen = torch.cat([pool.batch(s)[0] for s in range(12)])
    assert seen.unique().numel() == 96 and int(seen.min()) >= 0 and int(seen.max()) < 100
    idx, x, y = pool.batch(12)
    assert torch.equal(idx, pool.index_batches[0]) and x.shape == (8, 3, 32, 32) and y.shape == (8,)


# ---- the step benchmark ------------------------------------------------------------------------------
def test_measure_steps_rows_for_every_method() -> None:
    rows = oh.measure_steps(oh.OverheadConfig(**TINY))
    by = {r.method: r for r in rows}
    assert list(by) == list(oh.METHODS)
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
    # LookSAM is timed over whole k-step cycles and keeps g_v beside the model, its grads and momentum.
    assert by["looksam"].steps_per_block == 5 and by["gsam"].steps_per_block == by["sgd"].steps_per_block
    assert by["looksam"].state_bytes == 4 * model_bytes


def test_every_method_is_timed_active() -> None:
    bench = oh.StepBenchmark(oh.OverheadConfig(**TINY))
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
        oh.OverheadConfig(**{**TINY, **change}).validate()


def test_store_is_scaled_to_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 kB of "available" host memory, half for the stores, at 186 bytes per sample: ours 3 x (10 x 2
    # + 2 for the int16 written-epoch mark), the official 3 x 10 x 4.
    monkeypatch.setattr(oh, "host_available_bytes", lambda: 100_000)
    bench = oh.StepBenchmark(oh.OverheadConfig(**{**TINY, "num_samples": 50_000}))
    assert bench.num_samples == 50_000 // 186 == 268
    assert any("scaled from 50,000 to 268" in n for n in bench.notes)


# ---- the real loop ---------------------------------------------------------------------------------
def test_measure_loop_crosses_epochs_like_run_py() -> None:
    config = oh.OverheadConfig(**{**TINY, "methods": ("saf",), "steps": 3, "repeats": 2})
    (row,) = oh.measure_loop(config, num_train=16)  # 2 steps per epoch: the blocks cross epochs
    assert row.method == "saf" and row.loop_ratio_median > 0 and row.num_train == 16


def test_loop_block_runs_the_epoch_loop() -> None:
    from bench.data import create_data

    data = create_data("synthetic", batch_size=4, device="cpu", seed=0, num_train=12, num_test=1)
    net = create_model("mlp_tiny", num_classes=10)
    method = oh.build_method("saf", net, optimizer="sgd", num_samples=12, num_classes=10, precision="fp32")
    sched = torch.optim.lr_scheduler.LambdaLR(method.base_optimizer, lambda step: 1.0 / (1 + step))
    block = oh.LoopBlock(method, data, sched, steps=4, first_epoch=5)
    block()
    block()
    assert block.epoch == 2 and method.epoch == 7  # 3 steps per epoch: 8 steps reach the third epoch
    assert block.seen == 32 and sched.last_epoch == 8
    assert 0 <= int(block.correct) <= 32 and float(block.loss_sum) > 0


# ---- the official store design -----------------------------------------------------------------------
def test_host_store_reads_what_was_written() -> None:
    store = HostLogitStore(10, 3, 2)
    idx, z = torch.tensor([7, 2]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert store.exchange(1, idx, z, read=True).abs().sum() == 0
    assert torch.equal(store.exchange(1, idx, z + 1, read=True), z)
    assert store.exchange(0, idx, z, read=False) is None
    assert store.nbytes == 10 * 2 * 3 * 4 and store.table.dtype.name == "float32"


def test_official_saf_trains_exactly_like_saf_with_a_float32_store() -> None:
    """Same algorithm, different store: the two must follow the same trajectory."""
    n, b = 16, 4
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 10, (n,), generator=g)
    nets = []
    for cls in ("saf", "official"):
        torch.manual_seed(0)
        net = create_model("mlp_tiny", num_classes=10, img_size=4)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        hp = dict(num_samples=n, num_classes=10, e_tilde=2, e_start=2, lam=0.5)
        method = (optimizers.create("saf", net, opt, store_dtype="float32", **hp) if cls == "saf"
                  else OfficialSAF(net, opt, **hp))
        for epoch in range(5):
            method.set_epoch(epoch)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
            for i in range(0, n, b):
                idx = perm[i:i + b]
                method.step(x[idx], y[idx], idx)
        nets.append(net)
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert any(p.abs().sum() > 0 for p in nets[0].parameters())


def test_official_saf_state_round_trip() -> None:
    net = create_model("mlp_tiny", num_classes=10, img_size=4)
    method = OfficialSAF(net, torch.optim.SGD(net.parameters(), lr=0.1), num_samples=8, num_classes=10)
    method.step(torch.randn(4, 3, 4, 4), torch.arange(4), torch.arange(4))
    other = OfficialSAF(net, torch.optim.SGD(net.parameters(), lr=0.1), num_samples=8, num_classes=10)
    other.load_state_dict(method.state_dict())
    assert (other.store.table == method.store.table).all() and method.store.table.any()


# ---- the store report --------------------------------------------------------------------------------
def test_imagenet_store_sizes_from_the_formula() -> None:
    rows = {(r.design, r.dtype, r.world_size): r for r in oh.store_sizes()}
    one = rows[("saf", "float16", 1)]
    assert one.logit_bytes_per_rank == 1_281_167 * 3 * 1000 * 2 == 7_687_002_000  # 7.69 GB for a whole node
    assert one.bytes_per_rank == 7_687_002_000 + 1_281_167 * 3 * 2  # + the int16 written-epoch marks
    assert one.bytes_per_node <= 7.7e9  # the target for a whole node in fp16
    eight = rows[("saf", "float16", 8)]
    assert eight.logit_bytes_per_rank == (160_146 + 1) * 3000 * 2  # ceil(N / 8) rows + the spare row
    assert eight.bytes_per_node == 8 * eight.bytes_per_rank == 8 * (160_147 * 3 * 2002) <= 7.7e9
    official = rows[("saf_official", "float32", 8)]
    assert official.bytes_per_rank == 15_374_004_000  # 15.4 GB on every rank
    assert official.bytes_per_node == 122_992_032_000
    assert rows[("saf", "float32", 1)].logit_bytes_per_rank == 2 * one.logit_bytes_per_rank


def test_store_exchange_is_measured_for_both_designs() -> None:
    rows = oh.measure_store_exchange(CPU, num_samples=300, batch_size=16, num_classes=20, steps=2, repeats=2)
    assert [(r.design, r.dtype) for r in rows] == [
        ("saf", "float16"), ("saf", "bfloat16"), ("saf", "float32"), ("saf_official", "float32")]
    for r in rows:
        assert r.exchange_ms_median > 0 and r.num_samples == 300 and r.batch_size == 16
    assert rows[0].bytes_moved_per_step == 2 * 16 * (20 * 2 + 2)  # read + write, logits and the int16 mark
    assert rows[3].bytes_moved_per_step == 2 * 16 * 20 * 4


@pytest.mark.parametrize("case", oh.LOGIT_CASES, ids=lambda c: c.name)
def test_float16_store_changes_trajectory_loss_by_less_than_1e3(case: oh.LogitCase) -> None:
    _, err = oh.storage_loss_error(case, torch.float16)
    assert err < 1e-3


@pytest.mark.parametrize("case", oh.LOGIT_CASES, ids=lambda c: c.name)
def test_bfloat16_store_error(case: oh.LogitCase) -> None:
    _, err = oh.storage_loss_error(case, torch.bfloat16)
    if case.num_classes >= 100 or case.drift >= 1.0:
        assert err < 1e-3
    else:
        # CIFAR-10 late in training: the KL is small (~0.03) and only 10 rounding errors per sample
        # average out, so bf16's 8-bit mantissa moves the loss by ~2e-3. Recorded, not hidden: this is
        # why the store defaults to float16.
        assert err < 5e-3


def test_bf16_autocast_logits_are_stored_exactly() -> None:
    """Under bf16 autocast the logits already are bf16: a bf16 store loses nothing, fp16 next to nothing."""
    case = oh.LogitCase("imagenet", 1000, 64, 0.3)
    old, new = (z.bfloat16().float() for z in case.logits())
    for dtype, tol in ((torch.bfloat16, 0.0), (torch.float16, 1e-6)):
        store = optimizers.store.LogitStore(64, 1000, 1, dtype=dtype)
        store.write(0, torch.arange(64), old)
        stored, _ = store.read(1, torch.arange(64))
        assert (stored - old).abs().max() <= tol


# ---- the command -------------------------------------------------------------------------------------
def test_cli_writes_three_csvs_with_provenance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["overhead", "--device", "cpu", "--models", "mlp_tiny", "--batch-size", "8", "--steps", "1",
               "--repeats", "2", "--warmup", "1", "--num-samples", "64", "--out", str(tmp_path),
               "--loop", "--loop-samples", "32", "--store-report", "--store-samples", "200",
               "--store-batch-size", "16"])
    assert rc == 0
    files = {p.name.split("-")[0]: p for p in tmp_path.iterdir()}
    assert set(files) == {"steps", "loop", "store"}
    assert all(p.name.split("-")[1] == "cpu" and p.suffix == ".csv" for p in files.values())
    steps = pd.read_csv(files["steps"])
    assert list(steps["method"]) == list(oh.METHODS)
    for col in ("git_commit", "device_name", "command", "torch_version", "hostname"):
        assert col in steps.columns and steps[col].notna().all()
    assert steps["command"].iloc[0].count("overhead") == 1
    assert list(pd.read_csv(files["loop"])["method"]) == ["sgd", "saf"]
    store = pd.read_csv(files["store"])
    assert set(store["section"]) == {"size", "exchange", "dtype_error"}
    shown = capsys.readouterr().out
    assert "saf_official" in shown and "time x SGD" in shown and "7.69 GB" in shown
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_cli_adds_sgd_and_explains(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["overhead", "--device", "cpu", "--models", "mlp_tiny", "--methods", "saf",
               "--batch-size", "8", "--steps", "1", "--repeats", "1", "--warmup", "0", "--num-samples", "16",
               "--out", str(tmp_path)])
    assert rc == 0
    assert "sgd added" in capsys.readouterr().out
    (csv,) = tmp_path.glob("steps-*.csv")
    assert list(pd.read_csv(csv)["method"]) == ["sgd", "saf"]


def run_cli(args: list[str]) -> int:
    """main()'s exit status, argparse's own exits (bad choices) included."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)


@pytest.mark.parametrize(("args", "message"), [
    (["--methods", "sgd", "lion"], "method 'lion' is unknown"),
    (["--batch-size", "0"], "--batch-size=0"),
    (["--models", "resnet1000"], "unknown model 'resnet1000'"),
    (["--precision", "fp8"], "invalid choice"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                              args: list[str], message: str) -> None:
    rc = run_cli(["overhead", "--device", "cpu", "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_gpu(capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["overhead", "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_ratio_helpers_agree() -> None:
    # One rank: what LogitStore really allocates. Four: ceil(10 / 4) + 1 = 4 rows x 2 slots x (3 x 2 + 2) bytes.
    assert oh.saf_store_bytes_per_rank(10, 3, 2, 2)[0] == optimizers.store.LogitStore(10, 3, 2).nbytes
    assert oh.saf_store_bytes_per_rank(10, 3, 2, 2, world_size=4) == (4 * 2 * 8, 4 * 2 * 6)
    assert oh.optimizer_for("timm:vit_small_patch32_224") == "adamw" and oh.optimizer_for("resnet18") == "sgd"


def test_fashionmnist_shape_feeds_one_channel_28x28_images() -> None:
    pool = oh.BatchPool.synthetic(oh.SHAPES["fashionmnist"], 8, 100, CPU, seed=0)
    _, x, y = pool.batch(0)
    assert x.shape == (8, 1, 28, 28) and int(y.max()) < 10

