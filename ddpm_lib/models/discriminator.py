"""PatchGAN discriminator (Isola et al. 2017, "pix2pix"), as used by the LDM autoencoders.

The network classifies overlapping patches of an image as real or reconstructed and returns
one logit per patch. Layout (``c = base_channels``, ``n = num_layers``)::

    Conv4x4 stride 2 (C -> c), LeakyReLU(0.2)
    for k = 1..n-1: Conv4x4 stride 2 (-> c * min(2^k, 8)), GroupNorm, LeakyReLU(0.2)
    Conv4x4 stride 1 (-> c * min(2^n, 8)), GroupNorm, LeakyReLU(0.2)
    Conv4x4 stride 1 (-> 1)

pix2pix normalises with BatchNorm; we use GroupNorm (:class:`ddpm_lib.models.GroupNormAct`,
computed in float32), so each sample's logits depend on that sample only and a run does not
depend on how the batch is split over processes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ddpm_lib._checks import check_int

from .layers import GroupNormAct

__all__ = ["PatchDiscriminator"]


class PatchDiscriminator(nn.Module):
    """Patch-wise real/fake logits ``(B, 1, h, w)`` of images ``(B, C, H, W)``.

    Args:
        in_channels: image channels ``C``.
        base_channels: channels ``c`` of the first convolution (pix2pix / LDM: 64).
        num_layers: strided convolutions ``n``; each patch logit sees a receptive field of
            70x70 pixels for ``n = 3``. Images need ``H, W >= 3 * 2^n``.
        norm_groups: GroupNorm groups; must divide ``c * 2``.

    Weights are drawn as in pix2pix: convolutions ``N(0, 0.02)``, norm scales ``N(1, 0.02)``.
    """

    def __init__(
        self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("base_channels", base_channels, 1)
        check_int("num_layers", num_layers, 1)
        check_int("norm_groups", norm_groups, 1)
        if (2 * base_channels) % norm_groups:
            raise ValueError(
                f"norm_groups={norm_groups} must divide 2 * base_channels = {2 * base_channels}; "
                "change norm_groups or base_channels"
            )
        self.config: dict[str, Any] = dict(
            in_channels=in_channels, base_channels=base_channels, num_layers=num_layers,
            norm_groups=norm_groups,
        )
        self.in_channels, self.num_layers = in_channels, num_layers
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = base_channels
        for k in range(1, num_layers + 1):
            out = base_channels * min(2**k, 8)
            stride = 2 if k < num_layers else 1
            layers += [
                nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                GroupNormAct(norm_groups, out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GroupNorm):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    @property
    def min_size(self) -> int:
        """The smallest image side the network accepts, ``3 * 2^num_layers``."""
        return 3 * 2**self.num_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            if x.ndim != 4 or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"the discriminator takes images (B, {self.in_channels}, H, W); got "
                    f"{tuple(x.shape)}"
                )
            if min(x.shape[2:]) < self.min_size:
                raise ValueError(
                    f"images of {tuple(x.shape[2:])} pixels are too small for a discriminator "
                    f"with num_layers={self.num_layers} (at least {self.min_size} per side); "
                    "use fewer layers"
                )
        return self.layers(x)  # (B, 1, h, w): one logit per patch
