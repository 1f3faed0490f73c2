"""A sphinx-gallery image scraper for examples that save PNG files instead of showing figures.

ddpm_lib's examples write their results (sample grids, comparisons) as PNG files under
``runs/``. After each executed code block, :class:`NewPNGScraper` looks for PNG files that
appeared or changed under the watched folders since it last looked, copies them to the paths
sphinx-gallery hands out, and returns the reST that shows them. A new example needs nothing
registered: whatever PNG it writes under a watched folder is in its gallery page.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


class NewPNGScraper:
    """Scrape PNG files written under ``roots`` (relative ones are taken from the current
    directory at scrape time, which sphinx-gallery sets to the example's folder)."""

    def __init__(self, roots: list[str]) -> None:
        self.roots = roots
        self._seen: dict[str, int] = {}
        self._snapshot()  # files that exist before the first example are not its output

    def _folders(self) -> list[Path]:
        return [Path(root) if os.path.isabs(root) else Path.cwd() / root for root in self.roots]

    def _pngs(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for folder in self._folders():
            if folder.is_dir():
                for path in folder.rglob("*.png"):
                    found[str(path.resolve())] = path.stat().st_mtime_ns
        return found

    def _snapshot(self) -> list[str]:
        current = self._pngs()
        new = sorted(
            (path for path, mtime in current.items() if self._seen.get(path) != mtime),
            key=lambda path: (current[path], path),
        )
        self._seen.update(current)
        return new

    def __call__(self, block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]) -> str:
        from sphinx_gallery.scrapers import figure_rst

        new = self._snapshot()
        if not new:
            return ""
        image_paths = []
        for source, target in zip(new, block_vars["image_path_iterator"]):
            shutil.copyfile(source, target)
            image_paths.append(target)
        return figure_rst(image_paths, gallery_conf["src_dir"])

    def __repr__(self) -> str:  # sphinx-gallery caches its configuration by repr
        return f"NewPNGScraper({self.roots!r})"


class ScriptGlobals:
    """sphinx-gallery ``reset_argv`` hook that also gives each example the globals a script run
    with ``python examples/x.py`` has: ``__file__`` and its docstring as ``__doc__`` (which
    sphinx-gallery leaves out), so argparse descriptions and paths work in the gallery too.
    Returns no command-line arguments: every example runs with its defaults."""

    def __call__(self, gallery_conf: dict[str, Any], script_vars: dict[str, Any]) -> list[str]:
        import ast

        source_file = script_vars["src_file"]
        namespace = script_vars.get("example_globals")
        if namespace is not None:
            source = Path(source_file).read_text()
            namespace["__file__"] = str(source_file)
            namespace["__doc__"] = ast.get_docstring(ast.parse(source), clean=False) or ""
        return []

    def __repr__(self) -> str:
        return "ScriptGlobals()"
