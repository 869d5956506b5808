"""Small vision transformers with 4-pixel patches for 28x28 / 32x32 images: timm's VisionTransformer with
the SAF paper's ViT recipe scaled down to what CPUs train (the clean-label Fashion-MNIST workload).

`timm:<name>` cannot set the patch size (a timm name fixes it at 16 or 8: one or three patches across a 28x28
image), so these are registered under their own names. timm is imported on first use only.
"""

from __future__ import annotations

from torch import nn

from bench.models._registry import register_model


def _vit(num_classes: int, in_chans: int, img_size: int, dim: int, depth: int, heads: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    if img_size % 4:
        raise ValueError(f"img_size={img_size} must be a multiple of the patch size 4")
    return VisionTransformer(img_size=img_size, patch_size=4, in_chans=in_chans, num_classes=num_classes,
                             embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=2.0)


@register_model
def vit_p4_mini(*, num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """ViT, patch 4, width 128, depth 6, 4 heads, MLP ratio 2 (0.81M parameters): 49 tokens on 28x28."""
    return _vit(num_classes, in_chans, img_size, 128, 6, 4)


@register_model
def vit_p4_tiny(*, num_classes: int, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """ViT, patch 4, width 192, depth 9, 3 heads, MLP ratio 2 (2.7M parameters): ViT-Ti's width, shallower."""
    return _vit(num_classes, in_chans, img_size, 192, 9, 3)
