"""bench.data: layouts, true indices, determinism, sharding, augmentation, errors."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.data.fashionmnist as fm
from bench.data import DATASETS, MEAN_STD, create_data, register_dataset
from bench.errors import UsageError
from tests.bench.conftest import FakeDataset, write_cifar10, write_cifar100, write_fashionmnist

CPU = torch.device("cpu")


def make(name: str, root: Path | None = None, **kw):
    kw = {"batch_size": 8, "device": "cpu", "seed": 0, "num_workers": 0} | kw
    return create_data(name, root=root, **kw)


def normalised(raw: np.ndarray, name: str) -> torch.Tensor:
    """The reference normalisation, written out from the constants."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in MEAN_STD[name])
    return (torch.from_numpy(raw).float() / 255 - mean) / std


def collect(data, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(data.train_batches(epoch))


# ---- registry and errors -------------------------------------------------------------------


def test_registry_names() -> None:
    assert {"cifar10", "cifar100", "fashionmnist", "imagenet", "synthetic"} <= set(DATASETS)


def test_unknown_name_lists_allowed() -> None:
    with pytest.raises(UsageError, match="cifar10.*fashionmnist.*imagenet.*synthetic") as e:
        make("mnist")
    assert "'mnist'" in str(e.value) and "\n" not in str(e.value)


def test_unknown_option_is_usage_error() -> None:
    with pytest.raises(UsageError, match="'colour'.*shape"):
        make("synthetic", colour=True)


def test_register_custom_dataset() -> None:
    @register_dataset("tiny_test_set")
    def tiny_test_set(opts, *, shape=(1, 4, 4)):
        return make("synthetic", shape=shape, num_train=16, batch_size=opts.batch_size)

    assert "tiny_test_set" in DATASETS and DATASETS == sorted(DATASETS)
    assert make("tiny_test_set").in_chans == 1
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("tiny_test_set")(tiny_test_set)
    register_dataset("tiny_test_set", overwrite=True)(tiny_test_set)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"seed": -1}, "seed"),
        ({"train_subset": 0}, "train_subset"),
    ],
)
def test_bad_common_options(kw: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        make("synthetic", **kw)


def test_missing_cifar_names_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--download") as e:
        make("cifar10", tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value)
    with pytest.raises(UsageError) as e:
        make("cifar100", tmp_path)
    assert str(tmp_path / "cifar-100-python") in str(e.value)


@pytest.mark.usefixtures("no_system_fashionmnist")
def test_missing_fashionmnist_names_paths(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist") as e:
        make("fashionmnist", tmp_path / "nowhere")
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in msg and str(fm.SYSTEM_DIRS[0]) in msg


def test_missing_imagenet_names_path(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as e:
        make("imagenet", tmp_path)
    assert str(tmp_path / "train") in str(e.value)
    with pytest.raises(UsageError, match="cannot be downloaded"):
        make("imagenet", tmp_path, download=True)


# ---- on-disk layouts and true indices --------------------------------------------------------


def check_resident(data, fake: FakeDataset, name: str, num_classes: int) -> None:
    """Without augmentation, the image and target at each yielded index are that sample's own."""
    n, c, h, _ = fake.train_images.shape
    assert (data.num_samples, data.num_classes, data.in_chans, data.img_size) == (n, num_classes, c, h)
    seen = []
    for idx, x, y in data.train_batches(0):
        assert idx.dtype == torch.int64 and x.dtype == torch.float32 and y.dtype == torch.int64
        torch.testing.assert_close(x, normalised(fake.train_images[idx.numpy()], name), rtol=0, atol=1e-5)
        assert torch.equal(y, torch.from_numpy(fake.train_labels[idx.numpy()]))
        seen.append(idx)
    assert len(seen) == data.steps_per_epoch == n // 8
    # Test set: in order, all of it, last partial batch kept.
    xs, ys = zip(*data.test_batches(), strict=True)
    t = len(fake.test_labels)
    assert [len(y) for y in ys] == [min(10, t - s) for s in range(0, t, 10)]
    torch.testing.assert_close(torch.cat(xs), normalised(fake.test_images, name), rtol=0, atol=1e-5)
    assert torch.equal(torch.cat(ys), torch.from_numpy(fake.test_labels))
    expected = sum(a.nbytes for a in (fake.train_images, fake.test_images))
    assert data.resident_bytes == expected + 8 * (n + len(fake.test_labels))


def test_cifar10_layout(fake_cifar10: FakeDataset) -> None:
    data = make("cifar10", fake_cifar10.root, augment=False, eval_batch_size=10)
    check_resident(data, fake_cifar10, "cifar10", 10)


def test_cifar100_layout(fake_cifar100: FakeDataset) -> None:
    data = make("cifar100", fake_cifar100.root, augment=False, eval_batch_size=10)
    check_resident(data, fake_cifar100, "cifar100", 100)


@pytest.mark.usefixtures("no_system_fashionmnist")
@pytest.mark.parametrize("layout", ["fake_fashionmnist", "fake_fashionmnist_torchvision"])
def test_fashionmnist_layouts(layout: str, request: pytest.FixtureRequest) -> None:
    fake: FakeDataset = request.getfixturevalue(layout)
    data = make("fashionmnist", fake.root, augment=False, eval_batch_size=10)
    check_resident(data, fake, "fashionmnist", 10)


def test_fashionmnist_found_in_system_dir(fake_fashionmnist: FakeDataset, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(fm, "SYSTEM_DIRS", [fake_fashionmnist.root])
    assert make("fashionmnist", tmp_path / "empty").num_samples == len(fake_fashionmnist.train_labels)


def test_fashionmnist_rejects_bad_idx(fake_fashionmnist_torchvision: FakeDataset) -> None:
    raw = fake_fashionmnist_torchvision.root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte"
    raw.write_bytes(raw.read_bytes()[:-5])
    with pytest.raises(UsageError, match="truncated"):
        make("fashionmnist", fake_fashionmnist_torchvision.root)


# ---- augmentation --------------------------------------------------------------------------


def candidates(raw: np.ndarray, pad: int, flip: bool) -> list[np.ndarray]:
    """Every crop (and flip) of one image, by plain slicing: the reference for the batched gather."""
    c, h, w = raw.shape
    p = np.zeros((c, h + 2 * pad, w + 2 * pad), raw.dtype)
    p[:, pad : pad + h, pad : pad + w] = raw
    crops = [p[:, dy : dy + h, dx : dx + w] for dy, dx in product(range(2 * pad + 1), repeat=2)]
    return crops + ([cr[:, :, ::-1] for cr in crops] if flip else [])


@pytest.mark.parametrize("name, flip", [("cifar10", True), ("fashionmnist", False)])
def test_augmentation_is_crop_and_flip_of_true_sample(
    name: str, flip: bool, fake_cifar10: FakeDataset, fake_fashionmnist: FakeDataset
) -> None:
    fake = fake_cifar10 if name == "cifar10" else fake_fashionmnist
    data = make(name, fake.root, batch_size=16)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in MEAN_STD[name])
    kinds = set()
    for idx, x, y in data.train_batches(1):
        assert x.shape == (16, *fake.train_images.shape[1:]) and x.dtype == torch.float32
        assert torch.equal(y, torch.from_numpy(fake.train_labels[idx.numpy()]))
        pixels = ((x * std + mean) * 255).round().to(torch.uint8).numpy()
        for i, img in zip(idx.tolist(), pixels, strict=True):
            options = candidates(fake.train_images[i], 4, flip)
            hits = [k for k, cand in enumerate(options) if np.array_equal(cand, img)]
            assert hits, f"sample {i} is not a crop{'/flip' if flip else ''} of itself"
            kinds.add(hits[0] >= 81)  # True: a flipped crop
    assert kinds == ({False, True} if flip else {False})


def test_channels_last(fake_cifar10_root: Path) -> None:
    plain = make("cifar10", fake_cifar10_root)
    cl = make("cifar10", fake_cifar10_root, channels_last=True)
    (_, a, _), (_, b, _) = next(plain.train_batches(0)), next(cl.train_batches(0))
    assert b.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous(
        memory_format=torch.channels_last
    )
    assert torch.equal(a, b)
    x, _ = next(cl.test_batches())
    assert x.is_contiguous(memory_format=torch.channels_last)


# ---- determinism and sharding --------------------------------------------------------------


def same(a: list, b: list) -> bool:
    """Two lists of batches hold identical tensors."""
    if len(a) != len(b):
        return False
    return all(torch.equal(s, t) for u, v in zip(a, b, strict=True) for s, t in zip(u, v, strict=True))


def test_deterministic_per_seed_and_epoch(fake_cifar10_root: Path) -> None:
    rng_state = torch.get_rng_state()
    first = make("cifar10", fake_cifar10_root, seed=5)
    epoch3 = collect(first, 3)
    # A fresh object asked for epoch 3 directly (a resumed run) sees exactly the same batches.
    assert same(collect(make("cifar10", fake_cifar10_root, seed=5), 3), epoch3)
    assert not same(collect(first, 4), epoch3)
    assert not same(collect(make("cifar10", fake_cifar10_root, seed=6), 3), epoch3)
    # Same order with augmentation off: augmentation draws come after the permutation.
    plain = make("cifar10", fake_cifar10_root, seed=5, augment=False)
    assert torch.equal(epoch3[0][0], next(plain.train_batches(3))[0])
    assert torch.equal(torch.get_rng_state(), rng_state), "the global RNG must not be used"


def test_epoch_is_a_permutation() -> None:
    data = make("synthetic", batch_size=10, num_train=64)
    idx = torch.cat([i for i, _, _ in data.train_batches(0)])
    assert len(idx) == 60 and len(set(idx.tolist())) == 60 and idx.max() < 64


@pytest.mark.parametrize("name", ["synthetic", "imagenet"])
def test_sharding_two_ranks(name: str, fake_imagenet_root: Path) -> None:
    kw = {"batch_size": 2, "img_size": 8} if name == "imagenet" else {"batch_size": 8, "num_train": 100}
    ranks = [make(name, fake_imagenet_root, rank=r, world_size=2, seed=3, **kw) for r in (0, 1)]
    single = make(name, fake_imagenet_root, seed=3, **kw)
    for epoch in (0, 1):
        shards = [torch.cat([i for i, _, _ in d.train_batches(epoch)]).tolist() for d in ranks]
        n = ranks[0].num_samples // (2 * kw["batch_size"]) * 2 * kw["batch_size"]
        assert len(shards[0]) == len(shards[1]) == n // 2
        assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == n // 2 // kw["batch_size"]
        assert not set(shards[0]) & set(shards[1])
        # Every rank draws the same permutation the single-process run uses, then interleaves.
        full = torch.cat([i for i, _, _ in single.train_batches(epoch)]).tolist()
        assert sorted(shards[0] + shards[1]) == sorted(full[:n])
    # Evaluation is sharded too: rank r gets test samples r, r + 2, ... so the shares interleave
    # back into the single process's test set, every sample once.
    tests = [list(d.test_batches()) for d in ranks]
    xs, ys = (torch.cat([b[k] for b in single.test_batches()]) for k in (0, 1))
    for r, batches in enumerate(tests):
        assert torch.equal(torch.cat([x for x, _ in batches]), xs[r::2])
        assert torch.equal(torch.cat([y for _, y in batches]), ys[r::2])
    assert sum(len(y) for b in tests for _, y in b) == len(ys) > 1


def test_train_subset(fake_cifar10: FakeDataset) -> None:
    data = make("cifar10", fake_cifar10.root, train_subset=20, augment=False)
    assert data.num_samples == 20 and data.steps_per_epoch == 2
    for idx, x, _ in data.train_batches(0):
        assert idx.max() < 20
        torch.testing.assert_close(x, normalised(fake_cifar10.train_images[idx.numpy()], "cifar10"))
    assert data.resident_bytes < make("cifar10", fake_cifar10.root).resident_bytes
    with pytest.raises(UsageError, match="larger than"):
        make("cifar10", fake_cifar10.root, train_subset=81)
    with pytest.raises(UsageError, match="batch_size\\*world_size"):
        make("cifar10", fake_cifar10.root, train_subset=15, world_size=2, rank=1)


# ---- synthetic ------------------------------------------------------------------------------


def test_synthetic_shapes_and_determinism() -> None:
    a = make("synthetic", shape=[1, 12, 12], num_classes=3, num_train=40, num_test=10, batch_size=4)
    b = make("synthetic", shape=(1, 12, 12), num_classes=3, num_train=40, num_test=10, batch_size=4)
    assert (a.in_chans, a.img_size, a.num_classes, a.num_samples) == (1, 12, 3, 40)
    assert torch.equal(a.train_images, b.train_images) and a.train_images.dtype == torch.uint8
    assert a.train_targets.max() < 3
    assert sum(len(y) for _, y in a.test_batches()) == 10
    x = next(a.train_batches(0))[1]
    assert x.shape == (4, 1, 12, 12) and x.dtype == torch.float32
    with pytest.raises(UsageError, match="H == W"):
        make("synthetic", shape=(3, 8, 16))


# ---- imagenet -------------------------------------------------------------------------------


def red_of(x: torch.Tensor) -> torch.Tensor:
    """Mean red value (0-255) of each normalised ImageNet image."""
    (mean, *_), (std, *_) = MEAN_STD["imagenet"]
    return (x[:, 0] * std + mean).mean(dim=(1, 2)) * 255


def test_imagenet_folder_tree(fake_imagenet: FakeDataset) -> None:
    data = make("imagenet", fake_imagenet.root, batch_size=3, img_size=16, eval_batch_size=3)
    assert (data.num_samples, data.num_classes, data.in_chans, data.img_size) == (8, 2, 3, 16)
    assert data.resident_bytes == 0 and data.steps_per_epoch == 2
    batches = collect(data, 0)
    assert len(batches) == 2
    for idx, x, y in batches:
        assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and idx.dtype == torch.int64
        assert torch.equal(y, torch.from_numpy(fake_imagenet.train_labels[idx.numpy()]))
        # Red is constant per image, so any crop keeps it: it identifies the true sample.
        expected = torch.from_numpy(fake_imagenet.train_images[idx.numpy(), 0, 0, 0]).float()
        torch.testing.assert_close(red_of(x), expected, atol=4, rtol=0)
    xs, ys = zip(*data.test_batches(), strict=True)
    assert [len(y) for y in ys] == [3, 1] and torch.cat(xs).shape == (4, 3, 16, 16)
    assert torch.equal(torch.cat(ys), torch.from_numpy(fake_imagenet.test_labels))


def test_imagenet_deterministic_across_workers(fake_imagenet_root: Path) -> None:
    rng_state = torch.get_rng_state()
    kw = {"batch_size": 4, "img_size": 16, "seed": 1}
    ref = make("imagenet", fake_imagenet_root, **kw)
    e2 = collect(ref, 2)
    assert same(collect(make("imagenet", fake_imagenet_root, num_workers=1, **kw), 2), e2)
    assert not same(collect(ref, 3), e2)
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_imagenet_subset_and_channels_last(fake_imagenet_root: Path) -> None:
    data = make("imagenet", fake_imagenet_root, batch_size=2, img_size=16, train_subset=4, channels_last=True)
    idx = torch.cat([i for i, _, _ in data.train_batches(0)])
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    x = next(data.train_batches(0))[1]
    assert x.is_contiguous(memory_format=torch.channels_last)


# ---- --download (torchvision's downloaders replaced: nothing is fetched) -------------------------
class FakeDownloader:
    """Stands in for a torchvision dataset class: records the call and writes the files, or fails."""

    def __init__(self, write, error: Exception | None = None) -> None:
        self.write, self.error, self.calls = write, error, []

    def __call__(self, root: str, train: bool, download: bool) -> None:
        self.calls.append((root, train, download))
        if self.error is not None:
            raise self.error
        self.write(Path(root))


@pytest.mark.parametrize(("name", "cls", "write"), [
    ("cifar10", "CIFAR10", write_cifar10), ("cifar100", "CIFAR100", write_cifar100),
    ("fashionmnist", "FashionMNIST", lambda root: write_fashionmnist(root / "FashionMNIST" / "raw", gz=False)),
])
@pytest.mark.usefixtures("no_system_fashionmnist")
def test_download_fetches_once_then_reads_the_files(name: str, cls: str, write, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    fake = FakeDownloader(write)
    monkeypatch.setattr(tvd, cls, fake)
    data = make(name, tmp_path, download=True)
    assert fake.calls == [(str(tmp_path), True, True)] and data.num_samples > 0
    make(name, tmp_path, download=True)  # the files are there now: no second download
    assert len(fake.calls) == 1


@pytest.mark.parametrize("error", [OSError("<urlopen error [Errno -3] Temporary failure in name resolution>"),
                                   RuntimeError("File not found or corrupted.")])
@pytest.mark.parametrize(("name", "cls"), [("cifar10", "CIFAR10"), ("fashionmnist", "FashionMNIST")])
@pytest.mark.usefixtures("no_system_fashionmnist")
def test_failed_download_is_one_line(name: str, cls: str, error: Exception, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd, cls, FakeDownloader(None, error))
    with pytest.raises(UsageError, match=f"could not download {name} into {tmp_path}") as e:
        make(name, tmp_path, download=True)
    assert "\n" not in str(e.value) and str(error) in str(e.value)
