"""bench.models: shapes on both dataset geometries, published parameter counts, seeds, formats, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.errors import UsageError
from bench.models import MODELS, _registry, count_parameters, create_model, register_model
from bench.models.pyramidnet import PyramidNet
from bench.models.wide_resnet import WideResNet

GEOMETRIES = [(1, 28, 10), (1, 28, 100), (3, 32, 10), (3, 32, 100)]  # Fashion-MNIST and CIFAR-10/100
BIG = {"wrn28_10", "pyramidnet110"}  # ~1-5 s per new input shape on 2 shared cores: fewer cases
slow = pytest.mark.slow


def geometry_cases() -> list:
    cases = []
    for name in MODELS:
        for geometry in GEOMETRIES:
            if name not in BIG:
                cases.append((name, *geometry))
            elif geometry == (1, 28, 10):  # the body does not see num_classes: one case per input geometry
                cases.append((name, *geometry))
            elif geometry == (3, 32, 100):
                cases.append(pytest.param(name, *geometry, marks=slow))
    return cases


def build(name: str) -> nn.Module:
    """A registered model for 3x32x32 and 10 classes, or a shallow variant that runs the same code paths."""
    if name == "pyramidnet20":
        return PyramidNet(20, 48, num_classes=10)
    if name == "pyramidnet20_bottleneck":
        return PyramidNet(29, 48, num_classes=10, bottleneck=True)
    if name == "wrn10_2":
        return WideResNet(10, 2, num_classes=10)
    return create_model(name, num_classes=10)


FORMAT_CASES = ["resnet18", "resnet20", "resnet14_s2", "cnn_small", "pyramidnet20", "pyramidnet20_bottleneck",
                "wrn10_2"]
FORMAT_CASES += [pytest.param(name, marks=slow) for name in sorted(BIG)]


# Parameter counts from the architecture descriptions, written independently of the model code.
def conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k  # all convolutions are bias-free


def bn(c: int) -> int:
    return 2 * c


def linear(cin: int, cout: int) -> int:
    return cin * cout + cout


def basic_resnet_count(blocks: list[int], widths: list[int], in_chans: int, classes: int, projection: bool):
    n, cin = conv(in_chans, widths[0], 3) + bn(widths[0]), widths[0]
    for b, w in zip(blocks, widths, strict=True):
        for _ in range(b):
            n += conv(cin, w, 3) + bn(w) + conv(w, w, 3) + bn(w)
            if projection and cin != w:
                n += conv(cin, w, 1) + bn(w)
            cin = w
    return n + linear(cin, classes)


def wrn_count(depth: int, k: int, in_chans: int, classes: int) -> int:
    n, cin = conv(in_chans, 16, 3), 16
    for w in (16 * k, 32 * k, 64 * k):
        for _ in range((depth - 4) // 6):
            n += bn(cin) + conv(cin, w, 3) + bn(w) + conv(w, w, 3) + (conv(cin, w, 1) if cin != w else 0)
            cin = w
    return n + bn(cin) + linear(cin, classes)


def pyramidnet110_a270_count(in_chans: int, classes: int) -> int:
    # 54 basic units; alpha/54 = 5 exactly, so unit k has 16 + 5k channels; shortcuts have no parameters
    n, cin = conv(in_chans, 16, 3) + bn(16), 16
    for k in range(1, 55):
        w = 16 + 5 * k
        n += bn(cin) + conv(cin, w, 3) + bn(w) + conv(w, w, 3) + bn(w)
        cin = w
    return n + bn(cin) + linear(cin, classes)


def test_registry_lists_the_benchmark_models():
    assert {"resnet18", "resnet20", "wrn28_10", "pyramidnet110", "cnn_small", "mlp_tiny"} <= set(MODELS)


@pytest.mark.parametrize("name,in_chans,img_size,num_classes", geometry_cases())
def test_forward_backward_on_dataset_geometry(name, in_chans, img_size, num_classes):
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
    assert model.training
    out = model(torch.randn(2, in_chans, img_size, img_size))
    assert out.shape == (2, num_classes) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    # an unused parameter would break DDP and silently skew SAM's gradient norm
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet14_s2", "cnn_small", "pyramidnet20", "wrn10_2"])
def test_cifar_nets_accept_any_input_size(name):
    # odd sizes exercise the downsampling shortcuts (27 -> 14 -> 7 -> 4 on both branches)
    assert build(name)(torch.randn(2, 3, 27, 27)).shape == (2, 10)


@pytest.mark.parametrize("classes", [10, 100])
def test_resnet18_matches_published_size(classes):
    expected = basic_resnet_count([2, 2, 2, 2], [64, 128, 256, 512], 3, classes, projection=True)
    if classes == 10:
        assert expected == 11_173_962  # the CIFAR ResNet-18 size reported by the SAM/ESAM/SAF code bases
    assert count_parameters(create_model("resnet18", num_classes=classes)) == expected
    assert count_parameters(create_model("resnet18", num_classes=classes, in_chans=1)) == basic_resnet_count(
        [2, 2, 2, 2], [64, 128, 256, 512], 1, classes, projection=True
    )


def test_wrn28_10_matches_published_size():
    assert wrn_count(28, 10, 3, 10) == 36_479_194  # Zagoruyko & Komodakis: WRN-28-10, 36.5M
    assert count_parameters(create_model("wrn28_10", num_classes=10)) == 36_479_194
    assert count_parameters(create_model("wrn28_10", num_classes=100)) == wrn_count(28, 10, 3, 100)


def test_wrn28_10_dropout_option():
    model = create_model("wrn28_10", num_classes=10, dropout=0.3)
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.3] * 12
    assert not any(isinstance(m, nn.Dropout) for m in create_model("wrn28_10", num_classes=10).modules())
    with pytest.raises(UsageError, match="dropout"):
        create_model("wrn28_10", num_classes=10, dropout=1.5)


def test_resnet20_matches_he_et_al():
    expected = basic_resnet_count([3, 3, 3], [16, 32, 64], 3, 10, projection=False)
    assert expected == 269_722  # He et al. 2016, Table 6: ResNet-20 "0.27M" (option A shortcuts)
    assert count_parameters(create_model("resnet20", num_classes=10)) == expected
    wide = create_model("resnet20", num_classes=10, in_chans=1, img_size=28, width=8)
    assert count_parameters(wide) == basic_resnet_count([3, 3, 3], [8, 16, 32], 1, 10, projection=False)


def test_resnet14_s2_is_resnet14_with_a_strided_stem():
    model = create_model("resnet14_s2", num_classes=10, in_chans=1, img_size=28)
    expected = basic_resnet_count([2, 2, 2], [16, 32, 64], 1, 10, projection=False)
    assert count_parameters(model) == expected == 172_218
    sizes = []
    hooks = [stage.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for stage in model.stages]
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert sizes == [14, 7, 4]  # the stem halves 28x28; each later stage halves again
    for h in hooks:
        h.remove()


def test_pyramidnet110_is_the_alpha270_basic_net():
    n = count_parameters(create_model("pyramidnet110", num_classes=10))
    assert n == pyramidnet110_a270_count(3, 10) == 28_485_477
    assert abs(n - 28.3e6) / 28.3e6 < 0.01  # Han et al. 2017, Table 4: PyramidNet-110 (alpha=270), 28.3M
    n100 = count_parameters(create_model("pyramidnet110", num_classes=100))
    assert n100 == pyramidnet110_a270_count(3, 100)


def test_pyramidnet110_other_settings():
    n = count_parameters(create_model("pyramidnet110", num_classes=10, alpha=48))
    assert 1.7e6 <= n < 1.8e6  # Han et al. 2017, Table 4: PyramidNet-110 (alpha=48), 1.7M
    model = create_model("pyramidnet110", num_classes=10, bottleneck=True)
    assert model.fc.in_features == 4 * 286  # 12 bottleneck units per stage, widened 4x at the end
    assert len(model.units) == 36


@pytest.mark.parametrize("in_chans,img_size", [(1, 28), (3, 32)])
def test_small_models_are_small(in_chans, img_size):
    assert 50_000 <= count_parameters(create_model("cnn_small", num_classes=10, in_chans=in_chans)) <= 200_000
    mlp = create_model("mlp_tiny", num_classes=10, in_chans=in_chans, img_size=img_size)
    assert count_parameters(mlp) == linear(in_chans * img_size**2, 32) + linear(32, 10)


def test_count_parameters_skips_frozen():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert count_parameters(model) == 4 * 2 + 2


@pytest.mark.parametrize("name", MODELS)
def test_construction_follows_global_seed(name):
    def build(seed):
        torch.manual_seed(seed)
        return create_model(name, num_classes=10).state_dict()

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", FORMAT_CASES)
def test_channels_last_gives_same_output_and_stays_channels_last(name):
    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        seen = []  # every conv input: a shortcut that dropped channels_last would show up here
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in seen[1:])


@pytest.mark.parametrize("name", ["mlp_tiny", *FORMAT_CASES])
def test_bf16_autocast(name):
    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), ref.detach(), rtol=0.1, atol=0.1)
    out.float().sum().backward()


def test_timm_resnet18_for_fashion_mnist():
    model = create_model("timm:resnet18", num_classes=10, in_chans=1, img_size=28)
    # ImageNet ResNet-18 has 11,689,512 parameters; here the 7x7 stem sees 1 channel and the head 10 classes
    stem_and_head = conv(1, 64, 7) - conv(3, 64, 7) + linear(512, 10) - linear(512, 1000)
    assert count_parameters(model) == 11_689_512 + stem_and_head
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_timm_vit_gets_img_size():
    model = create_model("timm:vit_tiny_patch16_224", num_classes=100, img_size=32)
    assert model.pos_embed.shape[1] == 1 + (32 // 16) ** 2  # class token + 2x2 patches
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(UsageError) as info:
        create_model("resnet50", num_classes=10)
    message = str(info.value)
    assert "'resnet50'" in message and "timm:<name>" in message and "\n" not in message
    assert all(name in message for name in MODELS)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("timm:resnet_18", {}, "unknown timm model 'resnet_18'.*timm:resnet18"),
        ("timm:resnet18", {"not_an_option": 1}, "not_an_option"),
        ("resnet18", {"dropout": 0.1}, "no option 'dropout'"),
        ("resnet20", {"depth": 3}, "its options are width"),
        ("resnet18", {"num_classes": 0}, "num_classes=0"),
        ("resnet18", {"num_classes": 10, "in_chans": 0}, "in_chans=0"),
        ("mlp_tiny", {"num_classes": 10, "img_size": 2.5}, "img_size=2.5"),
    ],
)
def test_bad_input_raises_usage_error(name, kwargs, match):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(UsageError, match=match):
        create_model(name, **kwargs)


def test_register_model_adds_a_buildable_name():
    @register_model("test_only_linear")
    def builder(*, num_classes: int, in_chans: int = 3, img_size: int = 32, hidden: int = 4) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size**2, num_classes))

    try:
        assert "test_only_linear" in MODELS
        model = create_model("test_only_linear", num_classes=3, in_chans=1, img_size=2)
        assert model(torch.randn(5, 1, 2, 2)).shape == (5, 3)
        with pytest.raises(ValueError, match="already taken"):
            register_model("test_only_linear")(builder)
    finally:
        _registry._BUILDERS.pop("test_only_linear")
        MODELS.remove("test_only_linear")
