"""One registry of the model classes that saved folders and checkpoints name.

A saved configuration names its class (``"_class_name": "UNet"`` in ``config.json``,
``"model_class": "ddpm_lib.models.unet.UNet"`` in a checkpoint's ``meta.json``,
``"autoencoder_class"`` in a pipeline). :func:`resolve_model_class` turns either spelling back
into the class: the library's own classes are found by name (their modules are imported only
then), subclasses of :class:`~ddpm_lib.models.pretrained.PretrainedModel` defined by users are
registered when their class statement runs, and any other class can be registered with
:func:`register_model_class`. :func:`build_model` rebuilds a model from its class name and
configuration. This module depends on nothing else in ddpm_lib.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["register_model_class", "resolve_model_class", "class_path", "build_model"]

# the library's own classes, by name -> the module that defines them (imported on first use)
_BUILTIN = {
    "UNet": "ddpm_lib.models.unet",
    "AutoencoderKL": "ddpm_lib.models.autoencoder",
    "TextEncoder": "ddpm_lib.models.text",
    "HFTextEncoder": "ddpm_lib.models.text",
    "TextConditionedUNet": "ddpm_lib.models.text",
    "PatchDiscriminator": "ddpm_lib.models.discriminator",
    "DiT": "ddpm_lib.models.dit",
    "ScoreBasedModel": "ddpm_lib.score_model",
}
_REGISTERED: dict[str, type] = {}


def register_model_class(cls: type) -> type:
    """Make ``cls`` loadable by its name from saved folders (usable as a class decorator).

    Subclasses of :class:`~ddpm_lib.models.pretrained.PretrainedModel` register themselves;
    call this for other classes (a wrapper module with ``save_pretrained`` /
    ``from_pretrained``). A later class of the same name replaces an earlier one.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_model_class takes a class; got {type(cls).__name__}")
    _REGISTERED[class_path(cls)] = cls
    for name in {cls.__name__, cls.__qualname__}:
        # a bare name of the library's (``"UNet"``) always means the library's class: a
        # user's subclass of the same name is found by its module path only
        if name not in _BUILTIN or cls.__module__.startswith("ddpm_lib."):
            _REGISTERED[name] = cls
    return cls


def class_path(obj: Any) -> str:
    """``module.QualName`` of a class or of an instance's class (what checkpoints record)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_model_class(name: Any, where: Any = None, what: str = "model") -> Any:
    """The class a saved ``name`` refers to: ``"UNet"`` or ``"ddpm_lib.models.unet.UNet"``.

    Args:
        name: the saved name (short or with its module).
        where: the file the name was read from, for the error message.
        what: the role of the class (``"model"``, ``"autoencoder"``...), for the message.

    Raises:
        ValueError: the name is not a string, or no registered or built-in class has it
            (the message says to pass the class explicitly or to register it).
    """
    origin = f"{where}: " if where is not None else ""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{origin}the {what} class must be a saved class name; got {name!r}")
    found = _REGISTERED.get(name) if name not in _BUILTIN else None
    if found is not None:
        return found
    short = name.rpartition(".")[2]
    module = _BUILTIN.get(short)
    if module is not None and (name == short or name.startswith("ddpm_lib.")):
        cls = getattr(importlib.import_module(module), short, None)
        if isinstance(cls, type):
            return cls
    if "." in name and name.startswith("ddpm_lib."):
        module_name = name.rpartition(".")[0]
        try:
            cls = getattr(importlib.import_module(module_name), short, None)
        except ImportError:
            cls = None
        if isinstance(cls, type) and callable(getattr(cls, "from_pretrained", None)):
            return cls
    raise ValueError(
        f"{origin}the {what} class {name!r} is not a ddpm_lib model class nor a registered "
        "one; "
        f"pass {what}_class= when loading, or register it with "
        "ddpm_lib.models.registry.register_model_class"
    )


def build_model(cls: type, config: Any, where: Any = None) -> Any:
    """A new model of class ``cls`` from a saved configuration (keys starting with ``_`` are
    bookkeeping and dropped); ``cls.from_config(config)`` when the class has one.

    Raises:
        ValueError: the configuration is not a dict or does not fit the class's arguments.
    """
    origin = f"{where}: " if where is not None else ""
    if not isinstance(config, Mapping):
        raise ValueError(
            f"{origin}holds no model configuration for {cls.__name__}; got "
            f"{type(config).__name__}"
        )
    config = {key: value for key, value in config.items() if not str(key).startswith("_")}
    from_config = getattr(cls, "from_config", None)
    try:
        return from_config(config) if callable(from_config) else cls(**config)
    except (TypeError, ValueError, KeyError) as error:
        raise ValueError(
            f"{origin}the saved {cls.__name__} configuration is not valid: {error}"
        ) from None
