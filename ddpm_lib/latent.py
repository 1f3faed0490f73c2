r"""Diffusion in the latent space of an autoencoder (Latent Diffusion, Rombach et al. 2022).

A KL-regularised autoencoder (:class:`ddpm_lib.AutoencoderKL`, or any module with the same
``encode`` / ``decode`` interface) maps an image ``(C, H, W)`` to a latent
``(latent_channels, H / f, W / f)``; the DDPM runs on the latents, so a sampling step or a
training step costs a fraction of pixel space at the same image size. :class:`LatentDiffusion`
is the glue between the two:

- the **scale factor** :math:`s` (LDM's rule, section 4.3.2 and appendix G of the paper):
  the diffusion model sees :math:`z = s \cdot \mathcal{E}(x)` with
  :math:`s = 1 / \mathrm{std}(\mathcal{E}(x))`, the standard deviation of the latents of
  training images over all their elements, so that the latents have unit variance like the
  :math:`\mathcal{N}(0, I)` prior at :math:`t = T`. Stable Diffusion's VAE uses 0.18215.
- :meth:`LatentDiffusion.encode` / :meth:`LatentDiffusion.decode`: images in ``[-1, 1]`` to
  scaled latents and back.
- :meth:`LatentDiffusion.encode_dataset`: the latents of a whole dataset, computed once and
  cached on disk (safetensors), keeping labels and captions: a :class:`LatentDataset` that the
  :class:`ddpm_lib.Trainer` trains on with ``random_flip=False``.
- :meth:`LatentDiffusion.sample`: any sampler of :mod:`ddpm_lib.samplers` (built with
  ``clip_denoised=False``: latents are not bounded) on ``(n, latent_channels, H / f, W / f)``,
  then decode.
- :meth:`LatentDiffusion.save_pretrained` / :meth:`LatentDiffusion.from_pretrained`: the
  autoencoder, the scale factor, the denoising network and its noise schedule in one folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddpm_lib._checks import check_choice, check_int, is_int
from ddpm_lib.latent_cache import (  # noqa: F401 (autoencoder_fingerprint: as before)
    CACHE_FILE,
    LatentDataset,
    _item_image,
    autoencoder_fingerprint,
    cache_key,
    cached_latents,
)
from ddpm_lib.latent_normalization import (
    NORMALIZATIONS,
    LatentMoments,
    check_channel_stats,
    check_scale_factor,
    latent_moments,
)
from ddpm_lib.models.pretrained import model_config
from ddpm_lib.samplers.decoding import DecodingSampler

__all__ = ["CACHE_FILE", "CONFIG_FILE", "DecodingSampler", "LatentDataset", "LatentDiffusion",
           "NORMALIZATIONS"]

CONFIG_FILE = "latent_diffusion.json"
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------- helpers


# ----------------------------------------------------------------------------- the model


class LatentDiffusion:
    r"""An autoencoder, its latent scale factor and (optionally) the diffusion model on latents.

    Args:
        autoencoder: a module with ``encode(x) -> posterior`` (``.mean``, ``.mode()``,
            ``.sample(generator)``) and ``decode(z) -> x``, such as
            :class:`ddpm_lib.AutoencoderKL`. Its geometry is read from attributes or its
            ``config``: ``in_channels``, ``latent_channels`` and the downsampling factor ``f``
            (``downsampling_factor``, else ``2 ** (len(channel_mults) - 1)``).
        scale_factor: :math:`s` in :math:`z = s \cdot \mathcal{E}(x)`; ``None`` until
            :meth:`fit_scale_factor` sets it (0.18215 for Stable Diffusion's VAE).
        unet: the denoising network on latents (any module with ``save_pretrained`` /
            ``from_pretrained`` to be saved with :meth:`save_pretrained`), or ``None``.
        schedule: its :class:`ddpm_lib.NoiseSchedule`, saved alongside, or ``None``.
        prediction: what ``unet`` predicts (``"eps"``, ``"x0"``, ``"v"``), saved alongside.
        latent_shift, latent_scale: per-channel normalisation (both or neither), one number
            per latent channel: the diffusion model then sees
            :math:`z_c = (\mathcal{E}(x)_c - \mathrm{shift}_c) \cdot \mathrm{scale}_c`
            instead of :math:`s \cdot \mathcal{E}(x)` (:meth:`fit_scale_factor` with
            ``normalization="channel"`` sets them: every channel gets mean 0 and variance 1;
            SD3 and FLUX use one shift and one scale for all channels).

    Raises:
        TypeError: if ``autoencoder`` is not a module or lacks its geometry.
        ValueError: if ``scale_factor`` is not positive and finite, or the per-channel
            statistics are not one finite (scale: positive) number per latent channel.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        scale_factor: float | None = None,
        *,
        unet: nn.Module | None = None,
        schedule: Any = None,
        prediction: str = "eps",
        latent_shift: Sequence[float] | torch.Tensor | None = None,
        latent_scale: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        if not isinstance(autoencoder, nn.Module):
            raise TypeError(f"autoencoder must be a torch.nn.Module; got "
                            f"{type(autoencoder).__name__}")
        for method in ("encode", "decode"):
            if not callable(getattr(autoencoder, method, None)):
                raise TypeError(f"autoencoder must have an {method}() method; "
                                f"{type(autoencoder).__name__} has none")
        self.autoencoder: Any = autoencoder
        self.in_channels, self.latent_channels, self.downsampling_factor = _geometry(autoencoder)
        self.scale_factor = check_scale_factor(scale_factor)
        self.set_channel_normalization(latent_shift, latent_scale)
        self.unet: Any = unet
        self.schedule = schedule
        self.prediction = prediction

    # ------------------------------------------------------------------ properties
    @property
    def scale_factor(self) -> float | None:
        """:math:`s`: latents given to the diffusion model are :math:`s \\cdot \\mathcal{E}(x)`."""
        return self._scale_factor

    @scale_factor.setter
    def scale_factor(self, value: float | None) -> None:
        self._scale_factor = check_scale_factor(value)

    def set_channel_normalization(
        self, latent_shift: Sequence[float] | torch.Tensor | None,
        latent_scale: Sequence[float] | torch.Tensor | None,
    ) -> None:
        """Set (or, with ``None, None``, remove) the per-channel shift and scale: the latents
        become ``(E(x)[:, c] - latent_shift[c]) * latent_scale[c]``; without them,
        ``scale_factor * E(x)``."""
        if (latent_shift is None) != (latent_scale is None):
            raise ValueError("latent_shift and latent_scale go together: give both or neither")
        channels = self.latent_channels
        self._shift = check_channel_stats("latent_shift", latent_shift, channels, False)
        self._scale = check_channel_stats("latent_scale", latent_scale, channels, True)

    @property
    def latent_shift(self) -> torch.Tensor | None:
        """The per-channel shift ``(latent_channels,)`` (float64), or ``None``."""
        return None if self._shift is None else self._shift.clone()

    @property
    def latent_scale(self) -> torch.Tensor | None:
        """The per-channel scale ``(latent_channels,)`` (float64), or ``None``."""
        return None if self._scale is None else self._scale.clone()

    @property
    def normalization(self) -> str:
        """``"channel"`` when a per-channel shift and scale are set, else ``"global"``."""
        return "channel" if self._shift is not None else "global"

    def _normalize(self, raw: torch.Tensor) -> torch.Tensor:
        if self._shift is None or self._scale is None:
            return raw * self._require_scale("encode")
        shape = (1, -1, 1, 1)
        shift = self._shift.to(raw.device, raw.dtype).view(shape)
        return (raw - shift) * self._scale.to(raw.device, raw.dtype).view(shape)

    def _denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        if self._shift is None or self._scale is None:
            return latents / self._require_scale("decode latents")
        shape = (1, -1, 1, 1)
        scale = self._scale.to(latents.device, latents.dtype).view(shape)
        return latents / scale + self._shift.to(latents.device, latents.dtype).view(shape)

    @property
    def device(self) -> torch.device:
        """The device of the autoencoder's parameters."""
        parameter = next(self.autoencoder.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> LatentDiffusion:
        """Move the autoencoder and the UNet (if any) to ``device``; returns ``self``."""
        self.autoencoder.to(device)
        if self.unet is not None:
            self.unet.to(device)
        return self

    def latent_shape(self, image_size: int | Sequence[int]) -> tuple[int, int, int]:
        """``(latent_channels, H / f, W / f)`` for images of ``image_size`` (int or (H, W))."""
        height, width = ((image_size, image_size) if isinstance(image_size, int)
                         else tuple(image_size))
        f = self.downsampling_factor
        for name, side in (("height", height), ("width", width)):
            if not is_int(side) or side < 1 or side % f:
                raise ValueError(
                    f"image {name} must be a positive multiple of the autoencoder's "
                    f"downsampling factor f={f}; got {side!r} (resize or crop the images to a "
                    f"multiple of {f})"
                )
        return (self.latent_channels, height // f, width // f)

    # ------------------------------------------------------------------ encode / decode
    def _require_scale(self, action: str) -> float:
        if self._scale_factor is None:
            raise ValueError(
                f"cannot {action} before the scale factor is known: call "
                "fit_scale_factor(dataset) or pass scale_factor= (0.18215 for Stable "
                "Diffusion's VAE)"
            )
        return self._scale_factor

    def _check_images(self, images: Any) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor (B, C, H, W); got "
                            f"{type(images).__name__}")
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (B, C, H, W) in [-1, 1]; got dtype "
                             f"{images.dtype} and shape {tuple(images.shape)}")
        if images.shape[1] != self.in_channels:
            raise ValueError(f"images must have {self.in_channels} channels for this "
                             f"autoencoder; got {images.shape[1]} (shape {tuple(images.shape)})")
        self.latent_shape((int(images.shape[2]), int(images.shape[3])))
        return images

    def _encode_unscaled(
        self, images: torch.Tensor, generator: torch.Generator | None, sample: bool
    ) -> torch.Tensor:
        posterior = self.autoencoder.encode(images.to(self.device))
        return posterior.sample(generator) if sample else posterior.mode()

    @torch.no_grad()
    def encode(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = False,
    ) -> torch.Tensor:
        r"""Scaled latents :math:`z = s \cdot \mathcal{E}(x)` of images in ``[-1, 1]``
        (per channel :math:`(\mathcal{E}(x)_c - \mathrm{shift}_c) \cdot \mathrm{scale}_c`
        when :attr:`normalization` is ``"channel"``).

        Args:
            images: ``(B, in_channels, H, W)``, ``H`` and ``W`` multiples of ``f``.
            generator: draws the posterior sample when ``sample``.
            sample: ``False``: the posterior mean (deterministic); ``True``: a sample of the
                posterior :math:`\mathcal{N}(\mu, \sigma^2)` as LDM trains on.

        Returns:
            ``(B, latent_channels, H / f, W / f)``.

        Raises:
            ValueError: wrong channel count, a size not divisible by ``f``, or the scale
                factor not known yet.
        """
        self._require_scale("encode")
        images = self._check_images(images)
        return self._normalize(self._encode_unscaled(images, generator, sample))

    def _check_latents(self, latents: Any) -> torch.Tensor:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents must be a torch.Tensor (B, C, h, w); got "
                            f"{type(latents).__name__}")
        if latents.ndim != 4 or not latents.is_floating_point():
            raise ValueError(f"latents must be a float tensor (B, {self.latent_channels}, h, w); "
                             f"got dtype {latents.dtype} and shape {tuple(latents.shape)}")
        if latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must have {self.latent_channels} channels (the autoencoder's "
                f"latent_channels); got {latents.shape[1]} (shape {tuple(latents.shape)})"
            )
        if latents.shape[2] < 1 or latents.shape[3] < 1:
            raise ValueError(f"latents must have a positive size; got {tuple(latents.shape)}")
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        r"""Images :math:`\mathcal{D}(z / s)` from scaled latents (per channel
        :math:`\mathcal{D}(z_c / \mathrm{scale}_c + \mathrm{shift}_c)`).

        Args:
            latents: ``(B, latent_channels, h, w)``, as produced by :meth:`encode` or sampled.

        Returns:
            ``(B, in_channels, h * f, w * f)``, nominally in ``[-1, 1]`` (not clamped).

        Raises:
            ValueError: wrong channel count, or the scale factor not known yet.
        """
        self._require_scale("decode latents")
        latents = self._check_latents(latents)
        return self.autoencoder.decode(self._denormalize(latents.to(self.device)))

    # ------------------------------------------------------------------ scale factor
    def _images_of(self, dataset: Any, indices: Sequence[int]) -> torch.Tensor:
        return torch.stack([_item_image(dataset[int(i)])[0] for i in indices])

    @torch.no_grad()
    def fit_scale_factor(
        self,
        dataset: Any,
        *,
        num_samples: int = 1024,
        batch_size: int = 64,
        sample: bool = False,
        generator: torch.Generator | None = None,
        progress: bool = False,
        normalization: str = "global",
    ) -> float:
        r"""Fit the latents' normalisation on ``dataset``; returns the global scale factor.

        ``normalization="global"`` (the default) is LDM's rule,
        :math:`s = 1 / \mathrm{std}(\mathcal{E}(x))` over every element, and removes any
        per-channel shift and scale. ``"channel"`` also sets :attr:`latent_shift` to each
        channel's mean and :attr:`latent_scale` to the inverse of its standard deviation
        (SD3 / FLUX's shift factor, per channel), so that every channel of the latents the
        diffusion model sees has mean 0 and variance 1 on ``dataset``: one factor leaves the
        channels' offsets and unequal spreads in place (see the latent guide's measurements).
        A channel whose standard deviation is below ``1e-3`` times the global one (a dead
        channel) gets the global one. :attr:`scale_factor` is set to the global :math:`s` in
        both cases (not used with ``"channel"``).

        The standard deviations are the unbiased ones (as ``torch.std``) over the unscaled
        latents of ``num_samples`` images of ``dataset``, taken at evenly spaced indices (all
        of them if the dataset is smaller), accumulated in float64. LDM computes it on the
        first training batch; a larger subset gives a steadier value.

        Args:
            dataset: a dataset of images / ``(image, ...)`` items, or a tensor
                ``(N, C, H, W)`` of images in ``[-1, 1]``.
            num_samples: how many images to encode.
            batch_size: images per encoder call.
            sample: encode to posterior samples instead of the posterior mean (use what the
                diffusion model will train on; :meth:`encode_dataset` uses the mean by default).
            generator: draws those samples.
            progress: show a progress bar.
            normalization: ``"channel"`` or ``"global"``.

        Returns:
            The new global scale factor.
        """
        check_int("num_samples", num_samples, 1)
        check_int("batch_size", batch_size, 1)
        check_choice("normalization", normalization, NORMALIZATIONS)
        size = len(dataset)
        if size == 0:
            raise ValueError("dataset is empty")
        indices = torch.linspace(0, size - 1, min(num_samples, size)).round().long().unique()
        moments = self._moments(dataset, indices.tolist(), batch_size, sample, generator,
                                progress, per_channel_stds=normalization == "channel")
        if normalization == "channel":
            self.set_channel_normalization(moments.means, 1.0 / moments.stds)
        else:
            self.set_channel_normalization(None, None)
        std = moments.std
        self.scale_factor = 1.0 / std
        return self.scale_factor

    def _moments(
        self, dataset: Any, indices: list[int], batch_size: int, sample: bool,
        generator: torch.Generator | None, progress: bool, *, per_channel_stds: bool,
    ) -> LatentMoments:
        """The moments of the unscaled latents of ``dataset[indices]`` (autoencoder in eval
        mode meanwhile)."""
        batches: Any = range(0, len(indices), batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="scale factor", unit="batch")

        def encode(start: int) -> torch.Tensor:
            chunk = indices[start:start + batch_size]
            images = (dataset[chunk] if isinstance(dataset, torch.Tensor)
                      else self._images_of(dataset, chunk))
            return self._encode_unscaled(self._check_images(images), generator, sample)

        was_training = self.autoencoder.training
        self.autoencoder.eval()
        try:
            return latent_moments(batches, encode, self.latent_channels,
                                  per_channel_stds=per_channel_stds)
        finally:
            self.autoencoder.train(was_training)

    # ------------------------------------------------------------------ the dataset cache
    def cache_key(self, dataset: Any, *, sample: bool = False, seed: int | None = None) -> str:
        """The hash a cache of ``dataset``'s latents is valid for: the autoencoder's weights and
        configuration (``autoencoder_fingerprint``), the scale factor and the per-channel
        shift and scale, the dataset's
        identity (class, length, ``repr``, first, middle and last items) and the encoding
        options."""
        return cache_key(self.autoencoder, self._require_scale("encode a dataset"),
                         self.channel_stats, dataset, sample=sample, seed=seed)

    def encode_dataset(
        self,
        dataset: Any,
        cache_dir: str | os.PathLike,
        batch_size: int = 64,
        progress: bool = True,
        *,
        sample: bool = False,
        seed: int = 0,
        num_workers: int = 0,
    ) -> LatentDataset:
        """The latents of every item of ``dataset``, encoded once and cached in ``cache_dir``.

        ``cache_dir/latents.safetensors`` holds the scaled latents (float32), integer and
        float fields as tensors and captions as JSON in the file's metadata, together with the
        :meth:`cache_key` it was written for and one SHA-256 of everything it holds (latents,
        labels, numbers, captions and metadata). A later call reads it when the key matches
        and the file is intact (no encoder call); otherwise (another autoencoder, other
        weights, another scale factor or dataset, a truncated file, a bit flipped in any
        tensor, caption or metadata entry) it warns (``UserWarning``, saying why) and encodes
        the dataset again, replacing the cache. Writing goes through a
        temporary file, ``fsync`` and an atomic rename, so a process killed while writing
        leaves the previous cache or none, never a partial one that is trusted.

        Args:
            dataset: items ``image``, ``(image,)``, ``(image, label)``, ``(image, caption)``
                or ``(image, field, ...)`` with int / float / str fields; images
                ``(in_channels, H, W)`` in ``[-1, 1]``, ``H`` and ``W`` multiples of ``f``.
            cache_dir: folder of the cache (created), e.g. ``<run>/latents``.
            batch_size: images per encoder call.
            progress: show a tqdm progress bar while encoding.
            sample: cache one posterior sample per image (drawn with a generator seeded by
                ``seed``) instead of the posterior mean.
            seed: see ``sample``.
            num_workers: DataLoader processes reading the images.

        Returns:
            A :class:`LatentDataset` whose items are shaped like ``dataset``'s.
        """
        check_int("batch_size", batch_size, 1)
        return cached_latents(self, dataset, Path(cache_dir), batch_size, progress,
                              sample=sample, seed=seed, num_workers=num_workers)

    # ------------------------------------------------------------------ sampling
    def decoding_sampler(self, sampler: Any) -> DecodingSampler:
        """``sampler`` wrapped so that its ``sample`` returns decoded images
        (:class:`DecodingSampler`); give it to the :class:`ddpm_lib.Trainer` training on
        latents so that its sample grids show images."""
        return DecodingSampler(sampler, self)

    @torch.no_grad()
    def sample(
        self,
        sampler: Any,
        unet: Any = None,
        n: int = 16,
        *,
        image_size: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        guidance_scale: float | None = None,
        progress: bool = False,
        return_latents: bool = False,
        **sample_kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` latents with ``sampler`` and ``unet`` and decode them to images.

        Args:
            sampler: any :class:`ddpm_lib.Sampler`, built with ``clip_denoised=False``.
            unet: the model on latents; default ``self.unet``.
            n: number of images.
            image_size: the images' size in pixels (int or ``(H, W)``, multiples of ``f``);
                default ``f`` times the ``image_size`` in ``unet.config``.
            generator, model_kwargs, guidance_scale, progress: passed to ``sampler.sample``;
                ``sample_kwargs`` too (``unconditional_kwargs=``, ``x_T=``...).
            return_latents: also return the latents.

        Returns:
            Images ``(n, in_channels, H, W)`` (not clamped), and the latents
            ``(n, latent_channels, H / f, W / f)`` if ``return_latents``.
        """
        unet = unet if unet is not None else self.unet
        if unet is None:
            raise ValueError("no model to sample with: pass unet= or build LatentDiffusion with "
                             "unet=")
        check_int("n", n, 1)
        if getattr(sampler, "clip_denoised", False):
            raise ValueError(
                "sampler clamps x0 to [-1, 1] at every step (clip_denoised=True), which corrupts "
                "latents; build it with clip_denoised=False"
            )
        config = model_config(unet)  # a text model's: its UNet's part
        if image_size is None:
            side = config.get("image_size", config.get("input_size"))  # UNet / DiT
            if not isinstance(side, int):
                raise ValueError("image_size is needed: the model's config has no image_size")
            image_size = side * self.downsampling_factor
        shape = (n, *self.latent_shape(image_size))
        in_channels = config.get("in_channels")
        if isinstance(in_channels, int) and in_channels != self.latent_channels:
            raise ValueError(
                f"the model takes {in_channels} input channels but the autoencoder's latents "
                f"have {self.latent_channels}; train the model on this autoencoder's latents"
            )
        latents = sampler.sample(unet, shape, generator=generator, model_kwargs=model_kwargs,
                                 guidance_scale=guidance_scale, progress=progress,
                                 **sample_kwargs)
        images = self.decode(latents)
        return (images, latents) if return_latents else images

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write everything needed to sample into one folder, atomically: a
        :class:`ddpm_lib.DiffusionPipeline` folder with ``autoencoder/``, ``unet/`` (when
        ``unet`` is set) and ``pipeline.json`` (scale factor, per-channel shift and scale, classes,
        prediction, schedule).
        ``DiffusionPipeline.from_pretrained``, ``ddpm-lib sample`` and :meth:`from_pretrained`
        read it; so does ``UNet.from_pretrained(directory / "unet")``."""
        from ddpm_lib._pipeline_formats import write_bundle

        self._require_scale("save")
        diffusion: dict[str, Any] = {"prediction": self.prediction}
        if self.schedule is not None:
            diffusion["schedule"] = self.schedule.to_dict()
        write_bundle(Path(directory), model=self.unet, model_folder="unet",
                     autoencoder=self.autoencoder, scale_factor=self.scale_factor,
                     diffusion=diffusion, channel_stats=self.channel_stats)

    @property
    def channel_stats(self) -> tuple[list[float], list[float]] | None:
        """``(latent_shift, latent_scale)`` as lists, or ``None`` without them."""
        if self._shift is None or self._scale is None:
            return None
        return self._shift.tolist(), self._scale.tolist()

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        autoencoder_class: Any = None,
        unet_class: Any = None,
        load_unet: bool = True,
        device: str | torch.device | None = None,
    ) -> LatentDiffusion:
        """Load a folder written by :meth:`save_pretrained` (models in eval mode), or by an
        earlier version (``latent_diffusion.json``).

        The saved classes are found by name among ddpm_lib's (and registered) classes; pass
        ``autoencoder_class`` / ``unet_class`` for your own (any class with
        ``from_pretrained(folder)``). ``load_unet=False`` loads only the autoencoder and the
        scale factor.

        Raises:
            FileNotFoundError: ``directory`` does not exist.
            ValueError: not a latent model folder, a file that is not valid, or a class that
                cannot be found.
        """
        from ddpm_lib._pipeline_formats import read_latent

        model = cls(**read_latent(Path(directory), autoencoder_class=autoencoder_class,
                                  unet_class=unet_class, load_unet=load_unet))
        model.autoencoder.eval()
        if model.unet is not None:
            model.unet.eval()
        if device is not None:
            model.to(device)
        return model

    def __repr__(self) -> str:
        return (f"LatentDiffusion(autoencoder={type(self.autoencoder).__name__}, "
                f"f={self.downsampling_factor}, latent_channels={self.latent_channels}, "
                f"scale_factor={self.scale_factor}, normalization={self.normalization!r}, "
                f"unet={type(self.unet).__name__ if self.unet is not None else None})")


# ----------------------------------------------------------------------------- internals


def _geometry(autoencoder: nn.Module) -> tuple[int, int, int]:
    """``(in_channels, latent_channels, f)`` of an autoencoder, from attributes or config."""
    config = getattr(autoencoder, "config", None)
    config = config if isinstance(config, Mapping) else {}

    def setting(name: str) -> Any:
        value = getattr(autoencoder, name, None)
        return value if value is not None else config.get(name)

    in_channels = setting("in_channels")
    latent_channels = setting("latent_channels")
    factor = setting("downsampling_factor")
    if factor is None and config.get("channel_mults") is not None:
        factor = 2 ** (len(config["channel_mults"]) - 1)
    missing = [name for name, value in (("in_channels", in_channels),
                                        ("latent_channels", latent_channels),
                                        ("downsampling_factor", factor)) if value is None]
    if missing:
        raise TypeError(
            f"cannot tell the {', '.join(missing)} of {type(autoencoder).__name__}: give it "
            "attributes (or config entries) in_channels, latent_channels and "
            "downsampling_factor (or channel_mults)"
        )
    return int(in_channels), int(latent_channels), int(factor)
