"""
Customising the UNet by subclassing
===================================

Change one factory method of :class:`ddpm_lib.UNet`, not the forward pass. Two customisations:

1. ``FiLMUNet`` swaps the residual block for one whose time embedding scales and shifts the
   normalised features (the "scale-shift norm" of improved-diffusion, Nichol & Dhariwal 2021)
   by overriding ``make_res_block``.
2. ``BrightnessUNet`` conditions on a continuous number per image instead of class labels by
   overriding ``make_class_embedding`` and ``embed``; the extra ``forward`` keyword
   (``brightness=``) reaches ``embed`` untouched, and ``register_config`` makes the new
   constructor argument survive ``save_pretrained`` / ``from_pretrained``.

Each is trained for a few steps of L_simple on synthetic images, then saved and reloaded.
Runs in a few seconds on a CPU (``python examples/custom_unet.py``); with ``DDPM_LIB_QUICK=1``
each network trains for 5 steps instead of 15.
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lib import NoiseSchedule, UNet
from ddpm_lib.models import GroupNormAct, zero_module

from _common import QUICK  # the examples' quick mode (DDPM_LIB_QUICK=1)
from _common import parser as example_parser
STEPS = 5 if QUICK else 15


class ScaleShiftResBlock(nn.Module):
    """``h = GN(conv1(SiLU(GN(x)))) * (1 + scale) + shift`` with ``(scale, shift)`` from the
    embedding; then ``SiLU``, dropout, a zero-initialised conv and the skip connection.

    Call: ``x`` ``(B, C_in, H, W)``, ``emb`` ``(B, E)`` -> ``(B, C_out, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *,
                 dropout: float, norm_groups: int) -> None:
        super().__init__()
        self.norm1 = GroupNormAct(norm_groups, in_channels, activation=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels)
        self.norm2 = GroupNormAct(norm_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x))  # (B, C_out, H, W)
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class FiLMUNet(UNet):
    """The DDPM UNet with scale-shift residual blocks: one overridden factory."""

    def make_res_block(self, in_channels: int, out_channels: int, level: int) -> nn.Module:
        return ScaleShiftResBlock(in_channels, out_channels, self.emb_channels,
                                  dropout=self.dropout, norm_groups=self.norm_groups)


class BrightnessUNet(UNet):
    """A UNet conditioned on a scalar per image (here: the target mean brightness)."""

    def __init__(self, brightness_features: int = 32, **kwargs) -> None:
        self.brightness_features = brightness_features  # read by make_class_embedding
        super().__init__(**kwargs)
        self.register_config(brightness_features=brightness_features)

    def make_class_embedding(self) -> nn.Module:
        return nn.Sequential(
            nn.Linear(1, self.brightness_features), nn.SiLU(),
            nn.Linear(self.brightness_features, self.emb_channels),
        )

    def embed(self, t: torch.Tensor, y: torch.Tensor | None = None, *,
              brightness: torch.Tensor) -> torch.Tensor:
        # (B, E): time embedding plus an MLP of the brightness, shape (B,)
        return self.time_embed(t) + self.class_embed(brightness[:, None].to(torch.float32))


def synthetic_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth random images in [-1, 1] and their mean brightness."""
    low = torch.rand(n, 3, 4, 4, generator=generator) * 2 - 1
    x0 = F.interpolate(low, size=16, mode="bilinear", align_corners=False)
    return x0, x0.mean(dim=(1, 2, 3))


def train(model: UNet, schedule: NoiseSchedule, steps: int, generator: torch.Generator,
          **condition_from_brightness) -> list[float]:
    """A few steps of L_simple = ||eps - eps_theta(x_t, t)||^2 (DDPM eq. 14)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    model.train()
    for _ in range(steps):
        x0, brightness = synthetic_images(16, generator)
        t = torch.randint(0, schedule.num_timesteps, (16,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t = schedule.q_sample(x0, t, noise=noise)
        kwargs = {"brightness": brightness} if condition_from_brightness else {}
        loss = F.mse_loss(model(x_t, t, **kwargs), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main(argv: list[str] | None = None) -> None:
    example_parser(__doc__).parse_args(argv)  # no options: --help prints what this does
    torch.set_num_threads(min(2, torch.get_num_threads()))
    generator = torch.Generator().manual_seed(0)
    schedule = NoiseSchedule.linear(100, beta_start=1e-3, beta_end=0.2)
    small = dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(8,), image_size=16, norm_groups=4, dropout=0.0)

    film = FiLMUNet(**small)
    print(f"FiLMUNet: {sum(p.numel() for p in film.parameters()):,} parameters, "
          f"block type {type(film.down[0].blocks[0].res).__name__}")
    losses = train(film, schedule, STEPS, generator)
    print(f"  L_simple {losses[0]:.3f} -> {losses[-1]:.3f}")

    bright = BrightnessUNet(brightness_features=16, **small)
    losses = train(bright, schedule, STEPS, generator, brightness=True)
    print(f"BrightnessUNet: L_simple {losses[0]:.3f} -> {losses[-1]:.3f}")

    with tempfile.TemporaryDirectory() as directory:
        bright.save_pretrained(directory)
        reloaded = BrightnessUNet.from_pretrained(directory)
        x_t = torch.randn(2, 3, 16, 16, generator=generator)
        t = torch.tensor([10, 90])
        brightness = torch.tensor([-0.5, 0.5])
        bright.eval()
        with torch.no_grad():
            same = torch.equal(bright(x_t, t, brightness=brightness),
                               reloaded(x_t, t, brightness=brightness))
        features = reloaded.config["brightness_features"]
        print(f"  reloaded: {features} brightness features from config.json, identical "
              f"outputs: {same}")
        assert same


if __name__ == "__main__":
    main()
