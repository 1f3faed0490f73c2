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
``0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_rec)))`` by the loss itself, in
:meth:`AutoencoderLoss.update`, with its own Adam optimizer. The loss therefore has state
(the discriminator, its optimizer, its step counter), exposed through ``state_dict()`` /
``load_state_dict()``; :class:`ddpm_lib.Trainer` saves and restores it with every checkpoint
and calls ``update()`` after each optimizer step of the autoencoder.
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
        discriminator_lr: Adam learning rate of the discriminator.
        discriminator_betas: Adam betas of the discriminator (LDM: (0.5, 0.9)).
        adaptive_weight: use LDM's adaptive weight; ``False``: ``lambda_adv =
            discriminator_weight``.

    Returns (from a call) the loss per image value: a scalar for ``"mean"`` / ``"sum"``, ``(B,)``
    for ``"none"``. The adversarial term is only added in training (autograd enabled and the
    autoencoder in train mode); an evaluation call returns reconstruction + KL. After each
    optimizer step of the autoencoder call :meth:`update` (the Trainer does).
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
        self.discriminator: nn.Module | None = self._build_discriminator(discriminator)
        self.optimizer: torch.optim.Optimizer | None = None
        if self.discriminator is not None:
            self.optimizer = torch.optim.Adam(
                self.discriminator.parameters(), lr=self.discriminator_lr,
                betas=tuple(discriminator_betas),  # type: ignore[arg-type]
            )
        self.step = 0  # update() calls so far: the autoencoder's optimizer steps
        self._scaler: torch.amp.GradScaler | None = None
        self._scaler_state: dict[str, Any] = {}
        self._pending: tuple[torch.Tensor, torch.Tensor, Any] | None = None
        self._synced = False
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
            self._prepare(x)
            if self.adversarial:
                total = total + self._adversarial_term(autoencoder, reconstruction, per_sample)
            self._pending = (x.detach(), reconstruction.detach(), self._autocast_state(x))
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

    @staticmethod
    def _autocast_state(x: torch.Tensor) -> tuple[str, torch.dtype] | None:
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            return device_type, torch.get_autocast_dtype(device_type)
        return None

    def _prepare(self, x: torch.Tensor) -> None:
        """Move the discriminator (and its optimizer state) to ``x``'s device; under
        ``torch.distributed`` give every process rank 0's initial weights once."""
        discriminator = self.discriminator
        assert discriminator is not None and self.optimizer is not None
        parameter = next(discriminator.parameters())
        if parameter.device != x.device:
            discriminator.to(x.device)
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, torch.Tensor) and key != "step":
                        state[key] = value.to(x.device)
        if not self._synced:
            self._synced = True
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                with torch.no_grad():
                    for tensor in discriminator.state_dict().values():
                        dist.broadcast(tensor, src=0)

    # ------------------------------------------------------------------ discriminator step
    def update(self) -> None:
        """One optimizer step of the discriminator on the last training call's real and
        reconstructed images (once the adversarial phase has started), then ``step += 1``.

        Call it once after every optimizer step of the autoencoder. It reuses that call's
        autocast setting; with float16 autocast the discriminator has its own
        ``GradScaler``. Under ``torch.distributed`` its gradients are averaged over processes.
        """
        pending, self._pending = self._pending, None
        if pending is not None and self.adversarial:
            self._discriminator_step(*pending)
        self.step += 1

    def _discriminator_step(
        self, x: torch.Tensor, reconstruction: torch.Tensor, autocast: Any
    ) -> None:
        discriminator, optimizer = self.discriminator, self.optimizer
        assert discriminator is not None and optimizer is not None
        device_type = x.device.type
        if self._scaler is None:
            fp16 = autocast is not None and autocast[1] == torch.float16
            self._scaler = torch.amp.GradScaler(device_type, enabled=fp16)
            if fp16 and self._scaler_state:
                self._scaler.load_state_dict(self._scaler_state)
        discriminator.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device_type, dtype=autocast[1] if autocast else torch.float32,
            enabled=autocast is not None,
        ):
            logits_real = discriminator(x).float()
            logits_fake = discriminator(reconstruction).float()
            loss = 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
        self._scaler.scale(loss).backward()
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for parameter in discriminator.parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= world
        self._scaler.step(optimizer)
        self._scaler.update()
        optimizer.zero_grad(set_to_none=True)
        self.last_discriminator_loss = loss.detach()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The step counter and, with a discriminator, its weights, its optimizer state and
        its grad scaler: everything to continue training exactly."""
        state: dict[str, Any] = {"step": self.step}
        if self.discriminator is not None and self.optimizer is not None:
            state["discriminator"] = {
                k: v.detach().cpu().clone() for k, v in self.discriminator.state_dict().items()
            }
            state["optimizer"] = self.optimizer.state_dict()
            scaler = self._scaler.state_dict() if self._scaler is not None else self._scaler_state
            state["scaler"] = dict(scaler)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
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
        if self.discriminator is not None and self.optimizer is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.optimizer.load_state_dict(state["optimizer"])
            self._scaler_state = dict(state.get("scaler") or {})
            self._scaler = None
        self.step = int(state["step"])
        self._pending = None

    def __repr__(self) -> str:
        return (
            f"AutoencoderLoss(kl_weight={self.kl_weight}, l2_weight={self.l2_weight}, "
            f"discriminator={type(self.discriminator).__name__ if self.discriminator else None}, "
            f"adversarial_start={self.adversarial_start}, step={self.step})"
        )
