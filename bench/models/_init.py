"""The standard initialisation shared by the CIFAR nets: Kaiming for convolutions, identity BatchNorm."""

from torch import nn


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU; He et al. 2015), BN weight 1, bias 0; Linear keeps torch's init.

    Draws from torch's global generator, so `torch.manual_seed` makes construction reproducible.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
