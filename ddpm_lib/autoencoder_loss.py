"""The training objective of the KL autoencoder of Latent Diffusion (Rombach et al. 2022).

Per sample, with ``D`` the number of values of an image (``C * H * W``)::

    L = mean|x - x_rec| + l2_weight * mean (x - x_rec)^2          reconstruction
      + kl_weight * KL(q(z | x) || N(0, I)) / D                    KL term (nats, summed)
      + lambda_adv * (-mean_patches D_phi(x_rec))                  after adversarial_start steps

where ``x_rec`` decodes a sample of the posterior. This is LDM's ``LPIPSWithDiscriminator``
objective without the perceptual term (which needs downloaded weights) and divided by ``D``
(LDM sums over pixels): the relative weights, and so ``kl_weight = 1e-6``, mean the same as in
LDM's configurations. ``lambda_adv = discriminator_weight * ||grad_rec|| / (||grad_adv|| +
1e-4)`` is LDM's adaptive weight: the ratio of the gradient norms of the reconstruction and
adversarial terms at the decoder's last layer, clamped to ``[0, 1e4]``.

The PatchGAN discriminator ``D_phi`` is trained with the hinge loss
``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))`` on the real and reconstructed images
of the last training call. The loss computes it; whoever trains the autoencoder steps the
discriminator: :class:`ddpm_lib.Trainer` does, through its hook for a loss's trainable parts
(:meth:`AutoencoderLoss.auxiliary_modules` declares the discriminator and its Adam settings,
:meth:`AutoencoderLoss.auxiliary_loss` gives the hinge loss after each step of the
autoencoder), with the Trainer's device, mixed precision, DDP gradient averaging and
checkpoints. The loss keeps the discriminator's weights and its step counter
(``state_dict()`` / ``load_state_dict()``); the optimizer is the Trainer's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_choice, check_floating, check_int, check_real

__all__ = ["AutoencoderLoss"]

REDUCTIONS = ("mean", "sum", "none")


def _unwrap(model: nn.Module) -> nn.Module:
    from ddpm_lib.training.ema import unwrap_model

    return unwrap_model(model)


class AutoencoderLoss:
    """L1 (+ L2) reconstruction, KL and optional PatchGAN hinge loss of an autoencoder.

    Called like every loss of ddpm_lib: ``loss_fn(autoencoder, x, reduction="mean",
    generator=None)``, where ``autoencoder(x, sample_posterior=True, generator=...)`` returns
    ``(reconstruction, posterior)`` as :class:`ddpm_lib.AutoencoderKL` does, so that
    ``Trainer(ae, AutoencoderLoss(), images)`` trains it with EMA, exact resume, DDP and mixed
    precision.

    Args:
        kl_weight: weight of the KL term (LDM's ``kl_weight``; 1e-6 in its KL-f4/f8 models).
        l2_weight: weight of an extra mean squared error term (0: L1 only, as LDM).
        discriminator: ``None`` (no adversarial term), ``True`` (a default
            :class:`ddpm_lib.models.PatchDiscriminator` for RGB images), a dict of
            :class:`~ddpm_lib.models.PatchDiscriminator` arguments (``in_channels`` for other
            images), or any ``nn.Module`` mapping images to logits.
        adversarial_start: optimizer steps after which the adversarial term and the
            discriminator's training start (LDM: 50001).
        discriminator_weight: the factor of the adaptive weight (LDM: 0.5).
        discriminator_lr: Adam learning rate of the discriminator (its optimizer is the
            Trainer's, built from :meth:`auxiliary_modules`).
        discriminator_betas: Adam betas of the discriminator (LDM: (0.5, 0.9)).
        adaptive_weight: use LDM's adaptive weight; ``False``: ``lambda_adv =
            discriminator_weight``.

    Returns (from a call) the loss per image value: a scalar for ``"mean"`` / ``"sum"``, ``(B,)``
    for ``"none"``. The adversarial term is only added in training (autograd enabled and the
    autoencoder in train mode); an evaluation call returns reconstruction + KL. After each
    optimizer step of the autoencoder, step the discriminator on :meth:`auxiliary_loss` and
    call :meth:`update` (the Trainer does both).
    """

    def __init__(
        self,
        kl_weight: float = 1e-6,
        l2_weight: float = 0.0,
        discriminator: None | bool | Mapping[str, Any] | nn.Module = None,
        adversarial_start: int = 50_001,
        *,
        discriminator_weight: float = 0.5,
        discriminator_lr: float = 1e-4,
        discriminator_betas: tuple[float, float] = (0.5, 0.9),
        adaptive_weight: bool = True,
    ) -> None:
        self.kl_weight = float(check_real("kl_weight", kl_weight, 0))
        self.l2_weight = float(check_real("l2_weight", l2_weight, 0))
        self.adversarial_start = check_int("adversarial_start", adversarial_start, 0)
        self.discriminator_weight = float(
            check_real("discriminator_weight", discriminator_weight, 0))
        self.discriminator_lr = float(
            check_real("discriminator_lr", discriminator_lr, 0, open_min=True))
        self.adaptive_weight = bool(adaptive_weight)
        self.discriminator_betas = (float(discriminator_betas[0]), float(discriminator_betas[1]))
        self.discriminator: nn.Module | None = self._build_discriminator(discriminator)
        self.step = 0  # update() calls so far: the autoencoder's optimizer steps
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_discriminator_loss: torch.Tensor | None = None
        self.last_adaptive_weight: torch.Tensor | None = None

    @staticmethod
    def _build_discriminator(spec: Any) -> nn.Module | None:
        if spec is None or spec is False:
            return None
        from ddpm_lib.models.discriminator import PatchDiscriminator

        if spec is True:
            return PatchDiscriminator()
        if isinstance(spec, Mapping):
            return PatchDiscriminator(**dict(spec))
        if isinstance(spec, nn.Module):
            return spec
        raise TypeError(
            "discriminator must be None, True, a dict of PatchDiscriminator arguments or an "
            f"nn.Module; got {type(spec).__name__}"
        )

    @property
    def adversarial(self) -> bool:
        """Whether the adversarial term is active at the current ``step``."""
        return self.discriminator is not None and self.step >= self.adversarial_start

    # ------------------------------------------------------------------ the loss
    def __call__(
        self, autoencoder: nn.Module, x: torch.Tensor, reduction: str = "mean", *,
        generator: torch.Generator | None = None, **kwargs: Any,
    ) -> torch.Tensor:
        check_choice("reduction", reduction, REDUCTIONS)
        check_floating("x", x)
        if kwargs:
            raise TypeError(
                f"AutoencoderLoss got unexpected keyword arguments {sorted(kwargs)}; an "
                "autoencoder takes images only"
            )
        if x.ndim != 4:
            raise ValueError(f"x must be images (B, C, H, W); got shape {tuple(x.shape)}")
        reconstruction, posterior = autoencoder(x, sample_posterior=True, generator=generator)
        dims = x[0].numel()
        error = reconstruction.float() - x.float()  # (B, C, H, W)
        per_sample = error.abs().flatten(1).mean(dim=1)  # (B,)
        if self.l2_weight:
            per_sample = per_sample + self.l2_weight * error.square().flatten(1).mean(dim=1)
        kl = posterior.kl() / dims  # (B,) nats per image value
        total = per_sample + self.kl_weight * kl
        training = torch.is_grad_enabled() and autoencoder.training
        if self.discriminator is not None and training:
            self._place(x)
            if self.adversarial:
                total = total + self._adversarial_term(autoencoder, reconstruction, per_sample)
            self._pending = (x.detach(), reconstruction.detach())
        if reduction == "mean":
            return total.mean()
        return total.sum() if reduction == "sum" else total

    def _adversarial_term(
        self, autoencoder: nn.Module, reconstruction: torch.Tensor, reconstruction_loss: torch.Tensor
    ) -> torch.Tensor:
        discriminator = self.discriminator
        assert discriminator is not None
        discriminator.requires_grad_(False)  # its gradients come from update() only
        try:
            logits = discriminator(reconstruction)  # (B, 1, h, w)
        finally:
            discriminator.requires_grad_(True)
        generator_loss = -logits.float().flatten(1).mean(dim=1)  # (B,)
        if self.adaptive_weight:
            last_layer = getattr(_unwrap(autoencoder), "last_layer", None)
            if not isinstance(last_layer, torch.Tensor):
                raise TypeError(
                    f"{type(_unwrap(autoencoder)).__name__} has no last_layer tensor (the "
                    "decoder's last weight) for the adaptive weight; add the property or pass "
                    "adaptive_weight=False"
                )
            (grad_rec,) = torch.autograd.grad(
                reconstruction_loss.mean(), last_layer, retain_graph=True
            )
            (grad_adv,) = torch.autograd.grad(generator_loss.mean(), last_layer, retain_graph=True)
            weight = grad_rec.float().norm() / (grad_adv.float().norm() + 1e-4)
            weight = weight.clamp(0.0, 1e4).detach() * self.discriminator_weight
        else:
            weight = torch.tensor(self.discriminator_weight, device=reconstruction.device)
        self.last_adaptive_weight = weight
        return weight * generator_loss

    def _place(self, x: torch.Tensor) -> None:
        """Move the discriminator to ``x``'s device (the Trainer has placed it already)."""
        discriminator = self.discriminator
        assert discriminator is not None
        if next(discriminator.parameters()).device != x.device:
            discriminator.to(x.device)

    # ------------------------------------------------------------------ the Trainer's hook
    def auxiliary_modules(self) -> dict[str, tuple[nn.Module, dict[str, Any]]]:
        """The loss's trainable parts for :class:`ddpm_lib.Trainer`: ``{"discriminator":
        (module, Adam options)}`` (empty without a discriminator).

        The options are ``discriminator_lr``, ``discriminator_betas`` and ``fused=None``
        (PyTorch's default, per-tensor Adam on a CPU), so that runs continue bit for bit from
        checkpoints of versions whose loss kept its own optimizer.
        """
        if self.discriminator is None:
            return {}
        options = {"lr": self.discriminator_lr, "betas": self.discriminator_betas, "fused": None}
        return {"discriminator": (self.discriminator, options)}

    def auxiliary_loss(self, name: str = "discriminator") -> torch.Tensor | None:
        """The discriminator's hinge loss on the last training call's real and reconstructed
        images, ``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))`` (a scalar with
        a graph to the discriminator's weights), or ``None`` before ``adversarial_start`` or
        without a training call since the last one.

        The caller back-propagates it and steps the discriminator's optimizer, once after
        every optimizer step of the autoencoder and before :meth:`update` (the Trainer does,
        under its autocast); the loss is also kept as ``last_discriminator_loss``.
        """
        if name != "discriminator" or self.discriminator is None:
            raise ValueError(f"AutoencoderLoss has no trainable part {name!r}; it has "
                             f"{sorted(self.auxiliary_modules())}")
        pending, self._pending = self._pending, None
        if pending is None or not self.adversarial:
            return None
        x, reconstruction = pending
        logits_real = self.discriminator(x).float()
        logits_fake = self.discriminator(reconstruction).float()
        loss = 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
        self.last_discriminator_loss = loss.detach()
        return loss

    def update(self) -> None:
        """Count one optimizer step of the autoencoder (``step += 1``); call it after each,
        after the discriminator's step (the Trainer does)."""
        self._pending = None
        self.step += 1

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The step counter and the discriminator's weights (its optimizer state is the
        Trainer's, saved beside this in checkpoints)."""
        state: dict[str, Any] = {"step": self.step}
        if self.discriminator is not None:
            state["discriminator"] = {
                k: v.detach().cpu().clone() for k, v in self.discriminator.state_dict().items()
            }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. The ``"optimizer"`` and ``"scaler"`` of
        states written by earlier versions are not the loss's any more (the Trainer converts
        them into its own)."""
        if not isinstance(state, Mapping) or "step" not in state:
            raise ValueError("not an AutoencoderLoss state: expected a dict with a 'step'")
        has = "discriminator" in state
        if has != (self.discriminator is not None):
            raise ValueError(
                "the saved AutoencoderLoss state "
                + ("has a discriminator but this loss has none" if has else
                   "has no discriminator but this loss has one")
                + "; build the loss with the same discriminator setting"
            )
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
        self.step = int(state["step"])
        self._pending = None

    def __repr__(self) -> str:
        return (
            f"AutoencoderLoss(kl_weight={self.kl_weight}, l2_weight={self.l2_weight}, "
            f"discriminator={type(self.discriminator).__name__ if self.discriminator else None}, "
            f"adversarial_start={self.adversarial_start}, step={self.step})"
        )
