"""Sphinx configuration of the ddpm_lib documentation.

Build (from the repository root):  python -m sphinx -W -n -b html docs docs/_build/html

Runs offline: intersphinx reads the inventories in ``_inventories/`` (written by
``_inventories/make_inventories.py``), and the gallery runs ``examples/*.py`` with
``DDPM_LIB_QUICK=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(ROOT))  # document the checkout being built, not another installed copy

# The examples run in their quick mode: a few seconds each, same code path, real outputs.
os.environ.setdefault("DDPM_LIB_QUICK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ddpm_lib  # noqa: E402
from png_scraper import NewPNGScraper, ScriptGlobals  # noqa: E402

project = "ddpm_lib"
author = "ddpm_lib developers"
copyright = "2026, ddpm_lib developers"
release = ddpm_lib.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "ddpm_apigen",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inventories", "_ext", "**/README.md", "auto_examples/*.ipynb"]
templates_path: list[str] = []

# -- autodoc / napoleon (Google style) -------------------------------------------------------
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False   # torch.nn.Module's docstrings are not ours to render
autodoc_preserve_defaults = True     # show `generator=None`, not evaluated defaults
autoclass_content = "both"           # class docstring + __init__ docstring
autosummary_generate = False         # ddpm_apigen writes the pages itself
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_preprocess_types = True
python_use_unqualified_type_names = True
add_module_names = False

# -- MyST ------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- intersphinx, offline ---------------------------------------------------------------------
# Each inventory lists the names our docs reference with their real documentation URLs; links
# point at the live sites, nothing is fetched at build time.
_INV = DOCS / "_inventories"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(_INV / "python.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable/", str(_INV / "torch.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(_INV / "numpy.inv")),
    "scipy": ("https://docs.scipy.org/doc/scipy/", str(_INV / "scipy.inv")),
}
intersphinx_timeout = 1

# -- nitpicky ---------------------------------------------------------------------------------
# Only third-party names without an inventory; never a ddpm_lib name.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(diffusers|PIL|tqdm|safetensors|torchvision)(\..*)?"),
    (r"py:.*", r"UNet2DModel|PIL\.Image\.Image"),
]

# -- sphinx-gallery ---------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    # Run every example except train_cifar10.py (a GPU and the CIFAR-10 files on disk): it is
    # shown, not run. New examples are picked up and run without changing this file.
    "filename_pattern": r"/(?!train_cifar10\.py$)[^/]+\.py$",
    "ignore_pattern": r"(^|/)(_|\.)",
    "image_scrapers": ("matplotlib", NewPNGScraper(["runs"])),
    "reset_argv": ScriptGlobals(),       # __file__ and __doc__ as in `python examples/x.py`
    "abort_on_example_error": False,     # report every failing example, then fail the build
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "show_memory": False,
    "min_reported_time": 1,
}

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"ddpm_lib {release}"
html_static_path: list[str] = []
html_theme_options = {"navigation_with_keys": True}

suppress_warnings = ["config.cache"]  # sphinx-gallery's callable scraper is not picklable
