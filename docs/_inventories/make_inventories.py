"""Write the intersphinx inventories of docs/_inventories/ (run after changing the lists below).

    python docs/_inventories/make_inventories.py

The documentation is built offline, so intersphinx cannot download the ``objects.inv`` of
Python, PyTorch, NumPy and SciPy. This script writes small inventories in the same format
(version 2, zlib-compressed) holding the names our docstrings and type hints refer to, each
with the address of its page in that project's real documentation, so the links in the built
docs go to the right place. A name missing here makes ``sphinx -n`` fail with "reference target
not found": add it to the table of its project (with the alias paths that type hints print,
e.g. ``torch.nn.modules.module.Module`` for ``torch.nn.Module``) and run the script again.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (role, page relative to the project's base URL, aliases printed by type hints)
# The anchor is the name itself (as the real inventories have it).
PYTHON = {
    "pathlib.Path": ("class", "library/pathlib.html", ["pathlib._local.Path"]),
    "os.PathLike": ("class", "library/os.html", []),
    "collections.abc.Callable": ("class", "library/collections.abc.html", ["typing.Callable"]),
    "collections.abc.Iterable": ("class", "library/collections.abc.html", ["typing.Iterable"]),
    "collections.abc.Iterator": ("class", "library/collections.abc.html", ["typing.Iterator"]),
    "collections.abc.Mapping": ("class", "library/collections.abc.html", ["typing.Mapping"]),
    "collections.abc.Sequence": ("class", "library/collections.abc.html", ["typing.Sequence"]),
    "argparse.ArgumentParser": ("class", "library/argparse.html", []),
    "argparse.Namespace": ("class", "library/argparse.html", []),
    "FloatingPointError": ("exception", "library/exceptions.html", []),
    "ValueError": ("exception", "library/exceptions.html", []),
    "TypeError": ("exception", "library/exceptions.html", []),
    "RuntimeError": ("exception", "library/exceptions.html", []),
    "FileNotFoundError": ("exception", "library/exceptions.html", []),
    "KeyError": ("exception", "library/exceptions.html", []),
    "dict": ("class", "library/stdtypes.html", []),
    "list": ("class", "library/stdtypes.html", []),
    "tuple": ("class", "library/stdtypes.html", []),
    "str": ("class", "library/stdtypes.html", []),
    "int": ("class", "library/functions.html", []),
    "float": ("class", "library/functions.html", []),
    "bool": ("class", "library/functions.html", []),
    "warnings.warn": ("function", "library/warnings.html", []),
    "json": ("module", "library/json.html", []),
}

TORCH = {
    "torch.Tensor": ("class", "tensors.html", []),
    "torch.nn.Module": ("class", "generated/torch.nn.Module.html", ["torch.nn.modules.module.Module"]),
    "torch.nn.Module.eval": ("method", "generated/torch.nn.Module.html", []),
    "torch.nn.Module.train": ("method", "generated/torch.nn.Module.html", []),
    "torch.nn.Module.state_dict": ("method", "generated/torch.nn.Module.html", []),
    "torch.nn.Module.load_state_dict": ("method", "generated/torch.nn.Module.html", []),
    "torch.nn.GroupNorm": ("class", "generated/torch.nn.GroupNorm.html",
                           ["torch.nn.modules.normalization.GroupNorm"]),
    "torch.nn.Conv2d": ("class", "generated/torch.nn.Conv2d.html", ["torch.nn.modules.conv.Conv2d"]),
    "torch.nn.Linear": ("class", "generated/torch.nn.Linear.html", ["torch.nn.modules.linear.Linear"]),
    "torch.nn.Embedding": ("class", "generated/torch.nn.Embedding.html",
                           ["torch.nn.modules.sparse.Embedding"]),
    "torch.nn.Sequential": ("class", "generated/torch.nn.Sequential.html",
                            ["torch.nn.modules.container.Sequential"]),
    "torch.nn.ModuleList": ("class", "generated/torch.nn.ModuleList.html",
                            ["torch.nn.modules.container.ModuleList"]),
    "torch.nn.Identity": ("class", "generated/torch.nn.Identity.html",
                          ["torch.nn.modules.linear.Identity"]),
    "torch.nn.Dropout": ("class", "generated/torch.nn.Dropout.html",
                         ["torch.nn.modules.dropout.Dropout"]),
    "torch.nn.parallel.DistributedDataParallel": (
        "class", "generated/torch.nn.parallel.DistributedDataParallel.html",
        ["torch.nn.parallel.distributed.DistributedDataParallel"]),
    "torch.nn.functional.scaled_dot_product_attention": (
        "function", "generated/torch.nn.functional.scaled_dot_product_attention.html", []),
    "torch.autograd.Function": ("class", "autograd.html", ["torch.autograd.function.Function"]),
    "torch.Generator": ("class", "generated/torch.Generator.html", ["torch._C.Generator"]),
    "torch.device": ("class", "tensor_attributes.html", []),
    "torch.dtype": ("class", "tensor_attributes.html", []),
    "torch.Size": ("class", "size.html", []),
    "torch.compile": ("function", "generated/torch.compile.html", []),
    "torch.autocast": ("class", "amp.html", ["torch.amp.autocast_mode.autocast"]),
    "torch.amp.GradScaler": ("class", "amp.html", ["torch.amp.grad_scaler.GradScaler"]),
    "torch.save": ("function", "generated/torch.save.html", []),
    "torch.load": ("function", "generated/torch.load.html", []),
    "torch.optim.Optimizer": ("class", "optim.html", ["torch.optim.optimizer.Optimizer"]),
    "torch.optim.Adam": ("class", "generated/torch.optim.Adam.html", ["torch.optim.adam.Adam"]),
    "torch.optim.lr_scheduler.LRScheduler": ("class", "generated/torch.optim.lr_scheduler.LRScheduler.html", []),
    "torch.utils.data.Dataset": ("class", "data.html", ["torch.utils.data.dataset.Dataset"]),
    "torch.utils.data.TensorDataset": ("class", "data.html", ["torch.utils.data.dataset.TensorDataset"]),
    "torch.utils.data.DataLoader": ("class", "data.html", ["torch.utils.data.dataloader.DataLoader"]),
    "torch.utils.data.Sampler": ("class", "data.html", ["torch.utils.data.sampler.Sampler"]),
    "torch.utils.data.distributed.DistributedSampler": ("class", "data.html", []),
    "torch.utils.data.distributed.DistributedSampler.set_epoch": ("method", "data.html", []),
    "torch.utils.checkpoint.checkpoint": ("function", "checkpoint.html", []),
    "torch.distributed.init_process_group": ("function", "distributed.html", []),
    "torch.distributed.ProcessGroup": ("class", "distributed.html",
                                       ["torch._C._distributed_c10d.ProcessGroup"]),
}

NUMPY = {
    "numpy.ndarray": ("class", "reference/generated/numpy.ndarray.html", []),
    "numpy.random.Generator": ("class", "reference/random/generator.html",
                               ["numpy.random._generator.Generator"]),
    "numpy.savez": ("function", "reference/generated/numpy.savez.html", []),
    "numpy.load": ("function", "reference/generated/numpy.load.html", []),
    "numpy.float64": ("attribute", "reference/arrays.scalars.html", []),
    "numpy.uint8": ("attribute", "reference/arrays.scalars.html", []),
}

SCIPY = {
    "scipy.linalg.sqrtm": ("function", "reference/generated/scipy.linalg.sqrtm.html", []),
}

PROJECTS = {
    "python": ("Python", "3", PYTHON),
    "torch": ("PyTorch", "2", TORCH),
    "numpy": ("NumPy", "2", NUMPY),
    "scipy": ("SciPy", "1", SCIPY),
}


def inventory_bytes(project: str, version: str, names: dict) -> bytes:
    """The objects.inv (version 2) of ``names``."""
    lines = []
    for name, (role, page, aliases) in sorted(names.items()):
        for entry in [name, *aliases]:
            # "name domain:role priority uri dispname"; the anchor is the real name.
            lines.append(f"{entry} py:{role} 1 {page}#{name} {name if entry != name else '-'}")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    return header.encode() + zlib.compress(("\n".join(lines) + "\n").encode(), 9)


def main() -> None:
    for stem, (project, version, names) in PROJECTS.items():
        path = HERE / f"{stem}.inv"
        data = inventory_bytes(project, version, names)
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
            print(f"wrote {path} ({len(names)} names)")


if __name__ == "__main__":
    main()
