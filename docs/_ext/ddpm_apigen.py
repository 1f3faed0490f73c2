"""Write the API reference pages from the package's public names, at every build.

The public API is what ``ddpm_lib._EXPORTS`` (the lazy top-level names) and the ``__all__`` of
each public subpackage and module list. Nothing here names a class: a name added to those
tables appears in the reference at the next build, and a name whose docstring does not parse
fails the build (``-W``).

Each object is documented once, under the name a user imports it by: a subpackage's name when
a subpackage exports it (``ddpm_lib.samplers.DDIMSampler``), else its module's
(``ddpm_lib.schedule.NoiseSchedule``). Every other path to the same object (``ddpm_lib.UNet``,
the defining module ``ddpm_lib.models.unet.UNet``, which is how type hints spell it) is
resolved to that entry by the ``missing-reference`` handler below, so cross-references in
docstrings and signatures may use any of them and still link (and still fail when wrong).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

PACKAGE = "ddpm_lib"
# Modules that are not API pages: private helpers and the command line (documented as a page
# of its own in the guides, by its --help).
SKIP_MODULES = {"ddpm_lib.cli", "ddpm_lib.__main__", "ddpm_lib.analytic"}  # analytic: deprecated
# Class names (any module) whose members a documented subclass does not repeat: torch's and
# Python's bases, documented in their own projects.
INHERITANCE_STOPS = ["Module", "Dataset", "DistributedSampler", "Function", "BaseException",
                     "object"]


@dataclass
class ApiPage:
    module: str                        # the import path the names are documented under
    title: str
    summary: str
    names: list[str] = field(default_factory=list)


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def _public_names(module: types.ModuleType) -> list[str]:
    """``__all__``, else the public classes and functions the module itself defines."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    )


def _kind(obj: Any) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "autoexception"
        return "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


def _api_modules() -> list[types.ModuleType]:
    """Public subpackages (and the top-level modules that are not inside one), sorted."""
    package = importlib.import_module(PACKAGE)
    modules = []
    for info in pkgutil.iter_modules(package.__path__, PACKAGE + "."):
        short = info.name.rsplit(".", 1)[1]
        if short.startswith("_") or info.name in SKIP_MODULES:
            continue
        modules.append(importlib.import_module(info.name))
    return sorted(modules, key=lambda module: module.__name__)


def collect() -> tuple[list[ApiPage], dict[str, str]]:
    """The pages, and a map from every alias of a documented object to its documented name."""
    package = importlib.import_module(PACKAGE)
    pages: list[ApiPage] = []
    documented: dict[int, str] = {}           # id(object) -> documented full name
    objects: dict[int, Any] = {}

    def add(page: ApiPage, module: types.ModuleType, name: str) -> None:
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType) or id(obj) in documented:
            return
        if not (inspect.isclass(obj) or callable(obj)) and not name.isupper():
            return                            # module-level values: only CONSTANTS
        documented[id(obj)] = f"{page.module}.{name}"
        objects[id(obj)] = obj
        page.names.append(name)

    for module in _api_modules():
        page = ApiPage(module.__name__, module.__name__.split(".", 1)[1], _first_line(module))
        for name in _public_names(module):
            add(page, module, name)
        if page.names:
            pages.append(page)

    # Top-level names that no subpackage or module page documents (a safety net: every
    # entry of _EXPORTS must appear in the reference).
    top = ApiPage(PACKAGE, "ddpm_lib (top level)", _first_line(package))
    for name in sorted(package._EXPORTS):
        add(top, package, name)
    if top.names:
        pages.insert(0, top)

    aliases: dict[str, str] = {}
    for module in [package, *_api_modules()]:
        for name in set(_public_names(module)) | set(getattr(module, "_EXPORTS", {})):
            obj = getattr(module, name, None)
            if obj is not None and id(obj) in documented:
                aliases[f"{module.__name__}.{name}"] = documented[id(obj)]
    for key, obj in objects.items():
        defining = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if defining and qualname:
            aliases.setdefault(f"{defining}.{qualname}", documented[key])
    aliases = {alias: target for alias, target in aliases.items() if alias != target}
    return pages, aliases


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_pages(out_dir: Path, pages: list[ApiPage]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    package = importlib.import_module(PACKAGE)
    wanted = {f"{page.module}.rst" for page in pages} | {"index.rst"}
    for stale in out_dir.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()

    index = [
        ".. This file is generated by docs/_ext/ddpm_apigen.py at every build; do not edit.",
        "",
        "API reference",
        "=============",
        "",
        "Every public name of ddpm_lib, generated from the docstrings. The names in the table",
        "below are importable from the top level (``from ddpm_lib import UNet``); the pages list",
        "each subpackage and module.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 70",
        "",
        "   * - ``from ddpm_lib import``",
        "     - ",
    ]
    for name in sorted(package._EXPORTS, key=str.lower):
        obj = getattr(package, name)
        summary = _first_line(obj).replace("|", "\\|")
        index += [f"   * - :obj:`~ddpm_lib.{name}`", f"     - {summary}"]
    index += ["", ".. toctree::", "   :maxdepth: 1", ""]
    index += [f"   {page.module}" for page in pages]
    _write_if_changed(out_dir / "index.rst", "\n".join(index) + "\n")

    for page in pages:
        module = importlib.import_module(page.module)
        title = f"``{page.module}``"
        lines = [
            ".. This file is generated by docs/_ext/ddpm_apigen.py at every build; do not edit.",
            "",
            title,
            "=" * len(title),
            "",
            f".. automodule:: {page.module}",
            "   :no-members:",
            "",
            f".. currentmodule:: {page.module}",
            "",
            ".. autosummary::",
            "",
        ]
        lines += [f"   {name}" for name in page.names]
        lines.append("")
        for name in page.names:
            directive = _kind(getattr(module, name))
            lines += [f".. {directive}:: {name}"]
            if directive in ("autoclass", "autoexception"):
                lines += [
                    "   :members:",
                    "   :show-inheritance:",
                    # methods of our own base classes, not those of torch's or Python's
                    f"   :inherited-members: {', '.join(INHERITANCE_STOPS)}",
                    "   :special-members: __call__",
                ]
            lines.append("")
        _write_if_changed(out_dir / f"{page.module}.rst", "\n".join(lines))


def _on_builder_inited(app: Sphinx) -> None:
    pages, aliases = collect()
    write_pages(Path(app.srcdir) / "api", pages)
    app.env.ddpm_aliases = aliases  # type: ignore[attr-defined]
    logger.info(f"[ddpm_apigen] {sum(len(p.names) for p in pages)} names on {len(pages)} pages")


def _resolve_alias(target: str, aliases: dict[str, str]) -> str | None:
    """``ddpm_lib.UNet.forward`` -> ``ddpm_lib.models.UNet.forward``: longest alias prefix."""
    parts = target.split(".")
    for cut in range(len(parts), 1, -1):
        head = ".".join(parts[:cut])
        if head in aliases:
            return ".".join([aliases[head], *parts[cut:]])
    return None


_TYPE_CHECKING_CACHE: dict[str, dict[str, str]] = {}


def _type_checking_imports(module: types.ModuleType) -> dict[str, str]:
    """Names imported under ``if TYPE_CHECKING:`` (absent at run time): name -> full path."""
    if module.__name__ not in _TYPE_CHECKING_CACHE:
        _TYPE_CHECKING_CACHE[module.__name__] = _parse_type_checking_imports(module)
    return _TYPE_CHECKING_CACHE[module.__name__]


def _parse_type_checking_imports(module: types.ModuleType) -> dict[str, str]:
    import ast

    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return {}
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        test = getattr(node, "test", None)
        if not isinstance(node, ast.If) or "TYPE_CHECKING" not in ast.unparse(test):
            continue
        for statement in ast.walk(node):
            if isinstance(statement, ast.Import):
                for alias in statement.names:
                    names[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
            elif isinstance(statement, ast.ImportFrom):
                base = statement.module or ""
                if statement.level:
                    package = module.__name__.rsplit(".", statement.level)[0]
                    base = f"{package}.{base}" if base else package
                for alias in statement.names:
                    names[alias.asname or alias.name] = f"{base}.{alias.name}"
    return names


def _full_name(obj: Any) -> str | None:
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else None


def _names_in_modules(target: str) -> set[str]:
    """Full names that ``target`` (e.g. ``nn.Module``, ``UNet``) denotes in ddpm_lib's modules.

    Type hints under ``from __future__ import annotations`` that autodoc cannot evaluate (names
    imported only for type checking) reach Sphinx as written; this finds what they mean.
    """
    import sys

    head, _, rest = target.partition(".")
    found = set()
    for name, module in list(sys.modules.items()):
        if not (name == PACKAGE or name.startswith(PACKAGE + ".")) or module is None:
            continue
        if head in vars(module):
            obj = vars(module)[head]
            try:
                for part in rest.split(".") if rest else []:
                    obj = getattr(obj, part)
            except AttributeError:
                continue
            full = _full_name(obj)
        else:
            base = _type_checking_imports(module).get(head)
            full = f"{base}.{rest}" if base and rest else base
        if full:
            found.add(full)
    return found


def _inherited_member(target: str, node: Any) -> str | None:
    """``sample`` referenced in ``DDIMSampler``'s docs -> ``ddpm_lib.samplers.Sampler.sample``."""
    candidates = [target]
    module, cls = node.get("py:module"), node.get("py:class")
    if module and cls:
        candidates.insert(0, f"{module}.{cls}.{target}")
    elif module:
        candidates.insert(0, f"{module}.{target}")
    for candidate in candidates:
        owner_path, _, member = candidate.rpartition(".")
        owner_module, _, owner_name = owner_path.rpartition(".")
        try:
            owner = getattr(importlib.import_module(owner_module), owner_name)
        except (ImportError, AttributeError, ValueError):
            continue
        if not inspect.isclass(owner):
            continue
        for base in owner.__mro__[1:]:
            if member in vars(base):
                return f"{_full_name(base)}.{member}"
    return None


def _resolve(app: Sphinx, env: Any, node: Any, contnode: Any, target: str) -> Any:
    domain = env.get_domain("py")
    for reftype in dict.fromkeys([node["reftype"], "obj"]):
        resolved = domain.resolve_xref(env, node["refdoc"], app.builder, reftype, target, node,
                                       contnode)
        if resolved is not None:
            return resolved
    return None


def _on_missing_reference(app: Sphinx, env: Any, node: Any, contnode: nodes.Element) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    aliases = getattr(env, "ddpm_aliases", None) or {}
    candidates: list[str] = []
    if target.startswith(PACKAGE + "."):
        candidates.append(_resolve_alias(target, aliases) or target)
    else:
        candidates.extend(sorted(_names_in_modules(target)))
    inherited = _inherited_member(candidates[0] if len(candidates) == 1 else target, node)
    if inherited:
        candidates.append(inherited)
    for candidate in candidates:
        canonical = _resolve_alias(candidate, aliases) or candidate
        resolved = _resolve(app, env, node, contnode, canonical)
        if resolved is None and not canonical.startswith(PACKAGE + "."):
            from sphinx.ext import intersphinx

            external = node.deepcopy()
            external["reftarget"] = canonical
            resolved = intersphinx.missing_reference(app, env, external, contnode)
            if resolved is None and _is_ignored(app, node["reftype"], canonical):
                return contnode  # a third-party name without an inventory: plain text
        if resolved is not None:
            return resolved
    return None


def _is_ignored(app: Sphinx, reftype: str, target: str) -> bool:
    import re

    for type_pattern, target_pattern in app.config.nitpick_ignore_regex:
        if re.fullmatch(type_pattern, f"py:{reftype}") and re.fullmatch(target_pattern, target):
            return True
    return False


def _on_process_bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list) -> None:
    """Show public bases only: a private base is replaced by its own bases."""
    i = 0
    while i < len(bases):
        base = bases[i]
        if inspect.isclass(base) and base.__name__.startswith("_"):
            bases[i:i + 1] = [b for b in base.__bases__ if b is not object]
            continue
        i += 1


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", _on_builder_inited)
    app.connect("missing-reference", _on_missing_reference)
    app.connect("autodoc-process-bases", _on_process_bases)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
