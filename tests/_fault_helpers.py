"""Fault injection shared by tests/test_io.py and tests/test_faults.py: a disk that fills up
after N bytes (for every way the library writes bytes), file snapshots and bit flips."""

from __future__ import annotations

import io
from pathlib import Path

from ddpm_lib import _io


class DiskFull(OSError):
    pass


class Budget:
    """Bytes the disk still takes; ``written`` counts what every writer wrote."""

    def __init__(self, limit: float) -> None:
        self.limit, self.written = limit, 0

    def write(self, handle, data) -> int:
        data = bytes(data)
        room = int(min(self.limit - self.written, len(data)))
        if room < len(data):
            handle.write(data[:max(room, 0)])
            handle.flush()
            self.written += max(room, 0)
            raise DiskFull("no space left on device")
        self.written += len(data)
        return handle.write(data)


def fail_after(monkeypatch, limit: float) -> Budget:
    """The disk is full after ``limit`` more bytes (``float("inf")``: never, only counted), for
    every byte the library writes: the handles of ``_io.atomic_open`` (JSON, text, torch.save,
    .npz), safetensors' ``save_file`` and PIL's ``Image.save`` (PNG grids)."""
    import PIL.Image
    import safetensors.torch

    budget = Budget(limit)
    real_open = _io._open_for_write
    real_save_image = PIL.Image.Image.save

    class Limited:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            return budget.write(self.handle, data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def save_file(tensors, filename, metadata=None):
        data = safetensors.torch.save(tensors, metadata=metadata)
        with open(filename, "wb") as handle:
            budget.write(handle, data)

    def save_image(self, fp, format=None, **params):
        buffer = io.BytesIO()
        real_save_image(self, buffer, format=format or "png", **params)
        with open(fp, "wb") as handle:
            budget.write(handle, buffer.getvalue())

    monkeypatch.setattr(_io, "_open_for_write", lambda *args: Limited(real_open(*args)))
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    monkeypatch.setattr(PIL.Image.Image, "save", save_image)
    return budget


def names(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def snapshot(target) -> dict[str, bytes]:
    """Every file of a folder (or the file itself) by relative path, with its bytes."""
    target = Path(target)
    if target.is_file():
        return {".": target.read_bytes()}
    return {p.relative_to(target).as_posix(): p.read_bytes()
            for p in sorted(target.rglob("*")) if p.is_file()}


def flip_bit(path, offset: int, bit: int = 4) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 1 << bit
    Path(path).write_bytes(bytes(data))


def safetensors_offsets(path) -> dict[str, tuple[int, int]]:
    """``{tensor: (start, end)}`` byte ranges of each tensor's data in a safetensors file."""
    import json

    data = Path(path).read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    return {name: (8 + size + entry["data_offsets"][0], 8 + size + entry["data_offsets"][1])
            for name, entry in header.items() if name != "__metadata__"}
