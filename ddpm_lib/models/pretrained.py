"""Configuration, saving and loading shared by the networks of ddpm_lib.

:class:`PretrainedModel` is the base of :class:`ddpm_lib.UNet` and
:class:`ddpm_lib.AutoencoderKL`: a model records its constructor arguments in ``_config``
(and a subclass's extra arguments through :meth:`PretrainedModel.register_config`), and gets
``config``, ``save_pretrained`` / ``from_pretrained`` (``config.json`` + ``model.safetensors``),
``dtype`` and ``device`` from here. It depends on nothing else in ddpm_lib.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the one class registry of saved names (ddpm_lib.models.registry), re-exported here
from .registry import register_model_class, resolve_model_class

if sys.version_info >= (3, 11):
    from typing import Self
else:  # torch depends on typing_extensions
    from typing_extensions import Self

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "PretrainedModel", "model_config", "register_model_class",
    "resolve_model_class",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def model_config(model: Any) -> dict[str, Any]:
    """The denoising network's configuration: ``model.config``, or for a text model (whose
    config holds its parts) the UNet's part; ``{}`` for a model without one."""
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        return {}
    inner = config.get("unet")
    return dict(inner) if isinstance(inner, Mapping) else dict(config)


class PretrainedModel(nn.Module):
    """An ``nn.Module`` that can be rebuilt from its configuration and saved to a folder.

    A subclass sets ``self._config`` (a dict of its JSON-serialisable constructor arguments,
    so that ``type(model)(**model.config)`` rebuilds it) in ``__init__`` after calling
    ``super().__init__()``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register_model_class(cls)  # saved folders and checkpoints find it by name

    def __init__(self) -> None:
        super().__init__()
        self._config: dict[str, Any] = {}
        self._extra_config: dict[str, Any] = {}

    @property
    def config(self) -> dict[str, Any]:
        """A dict of the constructor keyword arguments; ``type(self)(**model.config)`` rebuilds it."""
        config = dict(self._config)
        config.update(self._extra_config)
        return config

    def register_config(self, **kwargs: Any) -> None:
        """Record constructor arguments that a subclass adds, so that they are saved by
        :meth:`save_pretrained` and passed back by :meth:`from_pretrained`. Values must be
        JSON-serialisable."""
        json.dumps(kwargs)
        self._extra_config.update(kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the parameters."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return next(self.parameters()).device

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json``, ``model.safetensors`` and a ``manifest.json`` of their
        hashes into ``directory`` as one atomic folder swap (``ddpm_lib/_io.py``):
        an interrupted save leaves the previous folder, never a mix of old and new files.
        Files in ``directory`` that no save wrote are kept."""
        from ddpm_lib import _io

        config = {"_class_name": type(self).__name__, **self.config}
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with _io.atomic_folder(directory) as tmp:
            _io.write_json(tmp / CONFIG_NAME, config, sort_keys=True)
            _io.save_safetensors(tmp / WEIGHTS_NAME, state, metadata={"format": "pt"})

    @classmethod
    def load_config(cls, directory: str | os.PathLike) -> dict[str, Any]:
        """Read ``config.json`` from ``directory`` and return the constructor arguments.

        Raises ``FileNotFoundError`` if it is missing and ``ValueError`` if it is not valid
        JSON or was written for another class.
        """
        from ddpm_lib import _io
        from ddpm_lib._readers import read_json

        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            _io.recover_folder(directory)  # a save interrupted between its two renames
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a directory written by save_pretrained")
        config = read_json(path, what="model configuration")  # errors name the file
        class_name = config.pop("_class_name", cls.__name__)
        if class_name != cls.__name__:
            raise ValueError(
                f"{path} describes a {class_name}, not a {cls.__name__}; load it with "
                f"{class_name}.from_pretrained"
            )
        return config

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Self:
        """Rebuild a model written by :meth:`save_pretrained` (this class or a subclass).

        The weights are read with safetensors, which never executes pickled code. ``dtype``
        defaults to the saved dtype. A missing file raises ``FileNotFoundError``; a truncated
        file, tensors whose names or shapes do not match the configuration, or files that do
        not match the folder's ``manifest.json`` (parts of different saves) raise
        ``ValueError`` naming the file and the tensors.
        """
        from ddpm_lib import _io

        config = cls.load_config(directory)
        path = Path(directory) / CONFIG_NAME
        try:
            model = cls(**config)
        except TypeError as error:
            raise ValueError(f"{path} does not match {cls.__name__}'s arguments: {error}") from None
        model.load_weights(Path(directory) / WEIGHTS_NAME)
        _io.verify_folder(directory)  # after the checks that say what differs: refuses a mix
        if dtype is not None:
            model.to(dtype=dtype)
        if device is not None:
            model.to(device=device)
        return model.eval()

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a ``.safetensors`` file into this model, checking every name and shape.

        Floating-point weights take the file's dtype when all of them share one.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as error:
            from ddpm_lib._readers import size_hint

            raise ValueError(f"{path} is not a readable safetensors file "
                             f"({size_hint(path.stat().st_size)}): "
                             f"{type(error).__name__}: {str(error)[:200]}") from None
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state and state[k].shape != expected[k].shape
        ]
        if missing or unexpected or wrong:
            lines = []
            if missing:
                lines.append(f"missing tensors: {', '.join(missing[:8])}"
                             + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
            if unexpected:
                lines.append(f"unexpected tensors: {', '.join(unexpected[:8])}"
                             + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
            if wrong:
                lines.append("shape mismatch: " + "; ".join(wrong[:8]))
            raise ValueError(f"{path} does not match {type(self).__name__}({self.config}): "
                             + " | ".join(lines))
        dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(dtypes) == 1:
            self.to(dtype=dtypes.pop())
        self.load_state_dict(state)
