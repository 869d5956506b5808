"""Which image size a network is built for, and the one-line refusal of a model given the other kind.

The registered nets (resnet18, wrn28_10, ...) are CIFAR-style: a 3x3 stem, no early downsampling, so
at 224 px their first stage runs on 224x224 maps, ~16x the compute of the ImageNet net of the same
name. timm's convolutional nets are ImageNet-style (a strided 7x7 stem and a max-pool), which shrink a
32 px image to 1x1 before their last stage. Each mismatch is refused naming the model meant for it;
`--allow-input-mismatch` trains it anyway.
"""

from __future__ import annotations

from bench.errors import UsageError

SMALL_MAX = 64  # images at most this side are small (CIFAR, Fashion-MNIST)
LARGE_MIN = 128  # at least this side: ImageNet-sized
# The ImageNet counterpart of each registered CIFAR net (timm has no PyramidNet).
FOR_LARGE = {"resnet18": "timm:resnet18", "resnet20": "timm:resnet18", "resnet14_s2": "timm:resnet18",
             "wrn28_10": "timm:wide_resnet50_2", "pyramidnet110": "timm:resnet50"}
DEFAULT_LARGE = "timm:resnet50"
DEFAULT_SMALL = "resnet18"


def for_small_images(model: str) -> str:
    """The registered CIFAR net closest to timm model `model`."""
    name = model.removeprefix("timm:")
    if name.startswith("wide_resnet"):
        return "wrn28_10"
    return DEFAULT_SMALL


def check_input_size(model: str, dataset: str, img_size: int | None, *, allow: bool = False) -> None:
    """UsageError (one line) when `model` is built for the other kind of image than `dataset`'s `img_size`."""
    if allow or img_size is None:
        return
    timm = model.startswith("timm:")
    if not timm and img_size >= LARGE_MIN:
        meant = FOR_LARGE.get(model, DEFAULT_LARGE)
        raise UsageError(f"model={model!r} is a CIFAR-style net built for 32 px images, but {dataset} gives "
                         f"{img_size} px ones (its first stage would run at {img_size}x{img_size}, not {img_size // 4}x"
                         f"{img_size // 4}: ~16x the compute of the ImageNet net): use "
                         f"--model {meant}, or --allow-input-mismatch to train it anyway")
    if timm and img_size <= SMALL_MAX:
        meant = for_small_images(model)
        raise UsageError(f"model={model!r} is an ImageNet-style net built for 224 px images, but {dataset} gives "
                         f"{img_size} px ones (its stem shrinks them to a few pixels): use --model {meant}, or "
                         "--allow-input-mismatch to train it anyway")
