"""Smoke test of an installed ddpm_lib wheel (run by .ci/run inside a fresh virtual environment).

Run it with the environment's python from a folder outside the repository, so that only the
installed copy can be imported:

    cd /tmp && /path/to/venv/bin/python /path/to/repo/.ci/smoke_test.py

It fails when the package imported is not the one installed in this environment (for example
the editable checkout), when a module or data file is missing from the wheel, when the
version metadata disagree, or when the public API cannot train and sample a tiny model, or the
``ddpm-lib`` console script does not answer ``--help`` and ``--version``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def check(condition: bool, message: str) -> None:
    if not condition:
        print(f"smoke test FAILED: {message}", file=sys.stderr)
        raise SystemExit(1)


def main() -> None:
    start = time.perf_counter()
    repo = Path(__file__).resolve().parents[1]
    check(not Path.cwd().resolve().is_relative_to(repo),
          f"run from a folder outside the repository, not {Path.cwd()}")

    import ddpm_lib

    location = Path(ddpm_lib.__file__).resolve()
    prefix = Path(sys.prefix).resolve()
    check(location.is_relative_to(prefix) and not location.is_relative_to(repo),
          f"ddpm_lib imported from {location}, not from this environment ({prefix})")
    print(f"ddpm_lib {ddpm_lib.__version__} from {location.parent}")
    check(importlib.metadata.version("ddpm-lib") == ddpm_lib.__version__,
          f"metadata version {importlib.metadata.version('ddpm-lib')} != "
          f"ddpm_lib.__version__ {ddpm_lib.__version__}")
    check((location.parent / "py.typed").is_file(), "ddpm_lib/py.typed is not installed")

    # Every module of the package imports, and every public name resolves (lazily exported
    # names point into modules that must all be in the wheel).
    modules = [ddpm_lib.__name__] + [
        info.name for info in pkgutil.walk_packages(ddpm_lib.__path__, "ddpm_lib.")
    ]
    for name in modules:
        importlib.import_module(name)
    for name in ddpm_lib.__all__:
        check(getattr(ddpm_lib, name, None) is not None, f"ddpm_lib.{name} does not resolve")
    print(f"imported {len(modules)} modules and {len(ddpm_lib.__all__)} public names")

    # A tiny train-and-sample run through the public API only.
    import torch

    from ddpm_lib import DDIMSampler, NoiseSchedule, SimpleLoss, Trainer, UNet
    from ddpm_lib.data import ShapesDataset, save_grid

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        dataset = ShapesDataset(size=64, image_size=8, seed=0)
        schedule = NoiseSchedule.linear(50)
        model = UNet(in_channels=3, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                     attention_resolutions=(4,), image_size=8, dropout=0.0, norm_groups=4,
                     num_classes=len(dataset.classes))
        sampler = DDIMSampler(schedule, num_steps=5)
        trainer = Trainer(model, SimpleLoss(schedule), dataset, batch_size=8, warmup_steps=2,
                          out_dir=out / "run", log_every=2, checkpoint_every=4, sampler=sampler,
                          seed=0, progress=False, num_workers=0)
        check(trainer.train(4) == 4, "the Trainer did not reach step 4")
        labels = torch.arange(4) % len(dataset.classes)
        images = trainer.sample(4, labels=labels, generator=torch.Generator().manual_seed(0))
        check(images.shape == (4, 3, 8, 8) and bool(torch.isfinite(images).all()),
              f"samples of shape {tuple(images.shape)} or not finite")
        check(save_grid(images, out / "grid.png").is_file(), "save_grid wrote no file")
        model.save_pretrained(out / "unet")
        reloaded = UNet.from_pretrained(out / "unet").eval()
        model.eval()
        x_t, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 40])
        with torch.no_grad():
            check(torch.equal(model(x_t, t, labels[:2]), reloaded(x_t, t, labels[:2])),
                  "save_pretrained / from_pretrained changed the outputs")
        check(any((out / "run" / "checkpoints").iterdir()), "no checkpoint written")
    print("trained 4 steps, sampled, saved and reloaded a UNet")

    # The console script of this environment.
    script = shutil.which("ddpm-lib", path=str(Path(sys.executable).parent))
    check(script is not None, f"no ddpm-lib script next to {sys.executable}")
    assert script is not None
    help_text = subprocess.run([script, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "sample", "fid", "bpd"):
        check(command in help_text, f"`ddpm-lib --help` does not list {command!r}")
    version = subprocess.run([script, "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    check(version == f"ddpm-lib {ddpm_lib.__version__}", f"`ddpm-lib --version` said {version!r}")
    print(f"{script} --help, --version: {version}")
    print(f"smoke test passed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
