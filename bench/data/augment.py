"""Batch augmentation and normalisation done on the training device, vectorised over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip(
    images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None, pad: int
) -> torch.Tensor:
    """Random crop after zero padding, then optional horizontal flip, for a whole uint8 batch at once.

    images (B, C, H, W); offsets (B, 2) with (dy, dx) in [0, 2*pad]; flips (B,) bool or None.
    One gather builds crop and flip together instead of a Python loop per image.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    wp = w + 2 * pad
    dev = images.device
    rows = offsets[:, 0, None] + torch.arange(h, device=dev)  # (B, H)
    cols = torch.arange(w, device=dev).expand(b, w)  # (B, W)
    if flips is not None:
        # A flipped crop reads its columns right to left.
        cols = torch.where(flips[:, None], (w - 1) - cols, cols)
    cols = offsets[:, 1, None] + cols
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.flatten(2).gather(2, flat).reshape(b, c, h, w)


class Normalize:
    """uint8 -> float32 (x/255 - mean)/std as one fused multiply-add with precomputed constants."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> None:
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * s)
        self.shift = -m / s

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if channels_last:
            # Convert the uint8 batch (4x less memory traffic); the elementwise ops keep the format.
            images = images.contiguous(memory_format=torch.channels_last)
        # In place on the fresh float copy: no extra allocation, memory format preserved.
        return images.to(torch.float32).mul_(self.scale).add_(self.shift)
