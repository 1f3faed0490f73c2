"""Atomic writes: the one way ddpm_lib puts anything on disk.

Every file the library saves (weights, configurations, checkpoints, caches, tables, FID
statistics, ``cli_args.json``) and every multi-part folder (``save_pretrained`` of a model,
a checkpoint) goes through this module, with one guarantee: a reader sees the old version or
the new one, never a partial or mixed one, even when the process is killed or the disk fills
up at any instant.

Single files (:func:`atomic_path` and the helpers built on it): the data goes to a temporary
sibling ``.tmp-<name>-<pid>-<token>``, is flushed and ``fsync``-ed, renamed over the target
with :func:`os.replace` (atomic on POSIX and Windows), and the parent folder is ``fsync``-ed so
that the rename itself survives a power cut. A failed write removes its temporary file.

Folders (:func:`atomic_folder`): the parts are written into a temporary sibling folder, a
``manifest.json`` with the size and SHA-256 of every file is written last, and the folder is
swapped in as a whole. On Linux the swap is one ``renameat2(RENAME_EXCHANGE)``: the target
name always points at a complete folder. Elsewhere (or on a file system without it) the old
folder is first renamed to ``.old-<name>-<pid>-<token>`` and the new one renamed into place;
a crash between the two renames leaves no folder under the target name, and
:func:`recover_folder` (run by every later save and by the loaders) renames the complete new
folder into place. Leftovers of dead processes are deleted by the same call. Files in the old
folder that no save wrote (not in its manifest: a user's notes, a run's checkpoints) are
carried into the new one as hard links. :func:`verify_folder` checks the manifest and refuses
a folder whose parts come from different saves.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "MANIFEST_FILE",
    "atomic_path",
    "atomic_open",
    "write_bytes",
    "write_text",
    "write_json",
    "save_safetensors",
    "torch_save",
    "save_npz",
    "atomic_folder",
    "write_manifest",
    "verify_folder",
    "recover_folder",
    "clean_leftovers",
    "fsync_dir",
]

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
_TMP = ".tmp-"
_OLD = ".old-"
_CHUNK = 1 << 20

# temporary paths that this process is writing right now (never cleaned as leftovers)
_ACTIVE: set[str] = set()


# ----------------------------------------------------------------------------- primitives
def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a folder so that the renames in it are durable (a no-op where folders
    cannot be opened, as on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that refuse to fsync a folder
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _temporary_name(prefix: str, name: str) -> str:
    return f"{prefix}{name}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _split_leftover(name: str) -> tuple[str, str, int] | None:
    """``(prefix, target name, pid)`` of a leftover ``<prefix><name>-<pid>-<token>``."""
    for prefix in (_TMP, _OLD):
        if name.startswith(prefix):
            parts = name[len(prefix):].rsplit("-", 2)
            if len(parts) == 3 and parts[1].isdigit() and parts[0]:
                return prefix, parts[0], int(parts[1])
    return None


def _owner_alive(leftover: Path, pid: int) -> bool:
    """Whether the process that made ``leftover`` may still be writing it."""
    if str(leftover) in _ACTIVE:
        return True
    if pid == os.getpid():
        return False  # this process is not writing it (not in _ACTIVE): a failed save's rest
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _leftovers(path: Path, prefix: str) -> list[Path]:
    """The leftovers ``<prefix><path.name>-<pid>-<token>`` of processes that are gone."""
    if not path.parent.is_dir():
        return []
    found = []
    for candidate in path.parent.iterdir():
        parsed = _split_leftover(candidate.name)
        if parsed is not None and parsed[:2] == (prefix, path.name) and not _owner_alive(
                candidate, parsed[2]):
            found.append(candidate)
    return sorted(found)


def _absolute(path: str | os.PathLike) -> Path:
    """``path`` made absolute and normalised (``"."`` and ``"a/.."`` have no name to swap)."""
    return Path(os.path.abspath(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ----------------------------------------------------------------------------- single files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write by any means; on a normal exit it is
    ``fsync``-ed and renamed over ``path`` (and the folder ``fsync``-ed), on an exception
    it is deleted and ``path`` is left as it was. The parent folder is created."""
    path = _absolute(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for leftover in _leftovers(path, _TMP):
        _remove(leftover)
    tmp = path.with_name(_temporary_name(_TMP, path.name))
    _ACTIVE.add(str(tmp))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        _ACTIVE.discard(str(tmp))
        if tmp.exists():
            _remove(tmp)
    fsync_dir(path.parent)


def _open_for_write(path: Path, mode: str, encoding: str | None) -> IO[Any]:
    # the one place a handle is opened for writing (tests replace it to inject faults)
    return open(path, mode, encoding=encoding)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb",
                encoding: str | None = None) -> Iterator[IO[Any]]:
    """``open`` for writing, atomically: the handle writes a temporary sibling that replaces
    ``path`` when the block ends without an exception. ``mode`` is ``"wb"`` or ``"w"``."""
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w'; got {mode!r}")
    with atomic_path(path) as tmp:
        handle = _open_for_write(tmp, mode, encoding if "b" not in mode else None)
        try:
            yield handle
            handle.flush()
        finally:
            handle.close()


def write_bytes(path: str | os.PathLike, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path`` atomically; returns its manifest entry
    ``{"bytes": n, "sha256": hex}``."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def write_text(path: str | os.PathLike, text: str) -> dict[str, Any]:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns its manifest entry."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, **dumps: Any) -> dict[str, Any]:
    """Write ``json.dumps(value, indent=2, **dumps)`` and a newline to ``path`` atomically."""
    dumps.setdefault("indent", 2)
    return write_text(path, json.dumps(value, **dumps) + "\n")


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any],
                     metadata: Mapping[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` to a temporary sibling, then renamed into place (the
    file is streamed, never held in memory twice)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata) if metadata else None)


def torch_save(value: Any, path: str | os.PathLike) -> None:
    """``torch.save(value, path)``, atomically."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(value, handle)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, Any], *,
             compressed: bool = False) -> Path:
    """``numpy.savez(path, **arrays)`` (``savez_compressed`` when ``compressed``) atomically;
    like numpy, adds ``.npz`` to a name without it. Returns the path written."""
    import numpy as np

    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    with atomic_open(path, "wb") as handle:
        (np.savez_compressed if compressed else np.savez)(handle, **arrays)
    return path


# ----------------------------------------------------------------------------- manifests
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every file below ``folder`` except its own manifest."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST_FILE)


def _manifest_files(folder: Path) -> list[Path]:
    """The files a manifest of ``folder`` lists: a sub-folder with a manifest of its own is
    listed by that manifest alone (which pins its parts; its loader checks them), any other
    file by itself."""
    listed = []
    for file in _files(folder):
        inner = file.parent
        while inner != folder and not (inner / MANIFEST_FILE).is_file():
            inner = inner.parent
        if inner == folder or file == inner / MANIFEST_FILE:
            listed.append(file)
    return listed


def write_manifest(folder: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """Write ``folder/manifest.json``: the size and SHA-256 of every file below ``folder``
    (a sub-folder that has its own manifest by that manifest), plus ``extra`` entries;
    returns the manifest."""
    folder = Path(folder)
    files = {}
    for file in _manifest_files(folder):
        files[file.relative_to(folder).as_posix()] = {
            "bytes": file.stat().st_size, "sha256": _sha256_file(file)}
    manifest = {"format": MANIFEST_FORMAT, **extra, "files": files}
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def verify_folder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Check ``folder/manifest.json`` against the files; return the manifest, or ``None``
    for a folder without one (written by an older version: nothing to check).

    Raises:
        ValueError: the manifest is unreadable, or a file it lists is missing or differs
            from what was saved with the others (a mix of two saves, a truncated or
            corrupted part); the message names the folder and the file.
    """
    folder = _absolute(folder)
    recover_folder(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        entries = [(name, int(entry["bytes"]), str(entry["sha256"]))
                   for name, entry in files.items()]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{folder}: {MANIFEST_FILE} is unreadable ({type(error).__name__}: "
                         f"{error}); the folder may be damaged") from None
    for name, size, sha256 in entries:
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{folder}: {name} is missing; the folder does not hold one "
                             f"complete save (its {MANIFEST_FILE} lists it)")
        if file.stat().st_size != size:
            raise ValueError(
                f"{folder}: {name} has {file.stat().st_size} bytes, {MANIFEST_FILE} says "
                f"{size}: the folder mixes parts of different saves (or the file is truncated; "
                f"after editing a file on purpose, delete {MANIFEST_FILE})")
        if _sha256_file(file) != sha256:
            raise ValueError(
                f"{folder}: {name} does not match its SHA-256 in {MANIFEST_FILE}: the folder "
                "mixes parts of different saves (or the file is corrupted; after editing a "
                f"file on purpose, delete {MANIFEST_FILE})")
    return manifest


# ----------------------------------------------------------------------------- folders
def recover_folder(path: str | os.PathLike) -> None:
    """Finish or undo a folder swap that a crash interrupted, and delete the leftovers of
    dead processes: afterwards ``path`` is the newest complete save (or absent when none
    completed)."""
    path = _absolute(path)
    old = _leftovers(path, _OLD)
    new = _leftovers(path, _TMP)
    if not path.exists() and old:
        # crashed between "old aside" and "new in place": the new folder of that swap is
        # complete (it is only swapped once its manifest is written)
        token = old[-1].name[len(_OLD):]
        partner = path.with_name(f"{_TMP}{token}")
        os.replace(partner if partner.is_dir() else old[-1], path)
        fsync_dir(path.parent)
        old = _leftovers(path, _OLD)
        new = _leftovers(path, _TMP)
    for leftover in old + new:
        _remove(leftover)


def clean_leftovers(parent: str | os.PathLike) -> list[Path]:
    """:func:`recover_folder` for every target in ``parent`` that has leftovers; returns the
    leftovers that were there."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    found = [p for p in parent.iterdir() if _split_leftover(p.name) is not None]
    targets = {_split_leftover(p.name)[1] for p in found}  # type: ignore[index]
    for name in sorted(targets):
        recover_folder(parent / name)
    return [p for p in found if not p.exists()]


def _exchange(first: Path, second: Path) -> bool:
    """Atomically exchange two paths (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where
    the platform or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = function(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second),
                      rename_exchange)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, getattr(errno, "ENOTSUP", -1)):
        return False
    raise OSError(code, os.strerror(code), str(first))


def _carry_foreign(old: Path, new: Path) -> None:
    """Hard-link into ``new`` the files of ``old`` that no save wrote (absent from its
    manifest) and that the new save did not write either."""
    manifest_path = old / MANIFEST_FILE
    owned: set[str] = set()
    if manifest_path.is_file():
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            owned = set(json.loads(manifest_path.read_text(encoding="utf-8"))["files"])
    # a listed sub-folder manifest owns everything below its folder
    owned_folders = {Path(name).parent for name in owned if Path(name).name == MANIFEST_FILE}
    owned.add(MANIFEST_FILE)
    for file in sorted(old.rglob("*")):
        relative = file.relative_to(old)
        target = new / relative
        if (relative.as_posix() in owned or target.exists() or relative in owned_folders
                or owned_folders.intersection(relative.parents)
                or any(parent.exists() and not parent.is_dir() for parent in target.parents)):
            continue
        if file.is_dir() and not file.is_symlink():
            target.mkdir(parents=True)  # empty folders too (a working folder, a log folder)
            continue
        if not file.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)


def _swap_in(tmp: Path, path: Path) -> None:
    try:
        cwd: Path | None = Path.cwd()
    except OSError:  # pragma: no cover - the working folder was deleted
        cwd = None
    _swap(tmp, path)
    if cwd is not None and (cwd == path or path in cwd.parents):
        # the working folder was in the old folder: move it to the same path in the new one
        os.chdir(cwd if cwd.is_dir() else path)


def _swap(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        _remove(tmp)  # now the old folder
    else:
        token = tmp.name[len(_TMP):]
        old = path.with_name(f"{_OLD}{token}")
        _ACTIVE.add(str(old))
        try:
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the old folder back before giving up
                raise
        finally:
            _ACTIVE.discard(str(old))
        _remove(old)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, **manifest_extra: Any) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``path`` to write a multi-part save into;
    on a normal exit its ``manifest.json`` is written (with ``manifest_extra`` entries), every
    file and folder is ``fsync``-ed and the folder replaces ``path`` as a whole. On an
    exception the temporary folder is deleted and ``path`` is left as it was.

    Saves may nest: a part's ``save_pretrained(tmp / "unet")`` writes ``unet/`` with its own
    manifest, and the outer manifest, written last, covers every file.
    """
    path = _absolute(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder; cannot save a folder there")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    tmp = path.with_name(_temporary_name(_TMP, path.name))
    _ACTIVE.add(str(tmp))
    try:
        tmp.mkdir()
        yield tmp
        for file in _files(tmp):
            _fsync_file(file)
        write_manifest(tmp, **manifest_extra)
        if path.is_dir():  # after the manifest, which lists only what this save wrote
            _carry_foreign(path, tmp)
        for folder in sorted({f.parent for f in tmp.rglob("*")} | {tmp}, reverse=True):
            fsync_dir(folder)
        _swap_in(tmp, path)
    finally:
        _ACTIVE.discard(str(tmp))
        if tmp.exists():
            _remove(tmp)
