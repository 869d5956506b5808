"""bench.measure.official_saf: the official store design, behind our step interface, trains like SAF."""

from __future__ import annotations

import torch

import optimizers
from bench.measure.official_saf import HostLogitStore, OfficialSAF
from bench.models import create_model


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
