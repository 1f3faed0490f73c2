"""Reconstruction quality: peak signal-to-noise ratio (PSNR) of images against references."""

from __future__ import annotations

import torch

from ddpm_lib._checks import check_floating, check_real, check_same_shape

__all__ = ["psnr"]


def psnr(images: torch.Tensor, reference: torch.Tensor, *, data_range: float = 2.0,
         min_mse: float = 1e-10) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, in dB:
    ``10 log10(data_range^2 / MSE)``, the MSE taken over all of an image's values.

    Args:
        images, reference: ``(B, ...)`` floating-point tensors of the same shape (in ``[-1, 1]``
            for the library's images, hence ``data_range=2``; use ``1`` for ``[0, 1]`` and
            ``255`` for 8-bit values). Clamp reconstructions to the range first.
        data_range: peak-to-peak range of the values (the "peak" of PSNR).
        min_mse: floor of the MSE, so that an exact copy gets a large finite PSNR (100 dB
            above ``10 log10(data_range^2)`` by default) instead of infinity.

    Returns:
        ``(B,)`` float tensor of PSNRs in dB (take ``.mean()`` for the usual figure).
    """
    check_floating("images", images)
    check_floating("reference", reference)
    check_same_shape("reference", reference, "images", images)
    check_real("data_range", data_range, 0, open_min=True)
    check_real("min_mse", min_mse, 0, open_min=True)
    mse = (images.float() - reference.float()).square().flatten(1).mean(1).clamp_min(min_mse)
    return 10 * torch.log10(data_range ** 2 / mse)
