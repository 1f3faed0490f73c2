"""What every example shares: the quick mode, its output folders, and a plain-text ``--help``.

Not an example itself (the documentation gallery skips files whose name starts with ``_``).
An example imports it as ``from _common import ...``: Python puts the example's own folder on
``sys.path`` (``python examples/NAME.py``), and so does the gallery.
"""

from __future__ import annotations

import argparse
import os
import re

#: ``DDPM_LIB_QUICK=1`` (set by the documentation build): seconds instead of minutes, outputs
#: in folders of their own so that a full run never resumes a quick one. ``0`` or empty: off.
QUICK = os.environ.get("DDPM_LIB_QUICK", "") not in ("", "0")


def run_folder(name: str) -> str:
    """``runs/NAME``, or ``runs/NAME-quick`` in quick mode."""
    return f"runs/{name}-quick" if QUICK else f"runs/{name}"


_ROLE = re.compile(r":[a-z:]+:`(?:~?([^`<]*?)\s*<[^`>]*>|~[\w.]*?\.?(\w+)|([^`]+))`")


def plain_text(docstring: str) -> str:
    """A module docstring as plain text: no heading underlines, directives or inline markup.

    The title keeps its line; ``.. code-block::`` lines go (their indented commands stay);
    a paragraph that ends in ``::`` ends in ``:``; ````x```` becomes ``x`` and
    ``:class:`~ddpm_lib.data.Name``` becomes ``Name``. Paragraphs are kept whole.
    """
    lines = docstring.strip("\n").splitlines()
    kept: list[str] = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped and set(stripped) <= set("=-~^*#") and len(stripped) >= 3:
            continue  # a heading's underline
        if stripped.startswith(".. "):
            continue  # a directive: code-block, note, ...
        line = _ROLE.sub(lambda match: next(group for group in match.groups() if group), line)
        line = line.replace("``", "")
        if line.endswith("::"):
            line = line[:-1]
        kept.append(line.rstrip())
    text = "\n".join(kept)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def parser(docstring: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose description is the example's docstring as plain text (its
    line breaks kept)."""
    return argparse.ArgumentParser(description=plain_text(docstring or ""),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
