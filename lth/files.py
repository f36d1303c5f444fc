"""How the project writes and reads a file: atomically (a reader sees the old file or the new one, never half),
every binary file with a checksum of its content checked on every load, and a damaged file named with what to do."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lth.identity import DamagedFile


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a temporary file unique to this writer, then rename it over `path`: a reader sees the old file or
    the new one, never half of one; two writers never share a temporary file; a failed write leaves nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

def save_atomic(obj: dict, path: Path) -> None:
    """torch.save, atomically (a killed process never leaves half a checkpoint), with a checksum of the content that
    every load checks (`load_pt`)."""
    atomic_write(path, lambda tmp: torch.save({**obj, "checksum": content_digest(obj)}, tmp))

def content_digest(obj) -> str:
    """sha256 of what a file holds: every tensor's and array's dtype, shape and bytes, every other value, by key."""
    h = hashlib.sha256()

    def walk(x, key: str) -> None:
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k], f"{key}/{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{key}/{i}")
        elif isinstance(x, (torch.Tensor, np.ndarray)):
            a = x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() if isinstance(x, torch.Tensor) \
                else np.ascontiguousarray(x)
            h.update(f"{key}:{x.dtype}:{tuple(x.shape)}:".encode())
            h.update(a.tobytes())
        else:
            h.update(f"{key}={x!r};".encode())
    walk({k: v for k, v in obj.items() if k != "checksum"}, "")
    return h.hexdigest()

def load_pt(path: Path, mmap: bool = False) -> dict:
    """A saved .pt file, its checksum checked: DamagedFile, naming the file, when a byte of it changed. Files saved
    before checksums were carry none (scripts/migrate_results.py adds them)."""
    saved = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    if isinstance(saved, dict) and "checksum" in saved and saved["checksum"] != content_digest(saved):
        raise DamagedFile(f"{path} is damaged: its content no longer matches its checksum. Restore it (`git checkout "
                          f"-- {path}` if it is committed), or delete it to compute it again.")
    return saved

def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))

def not_a_number(constant: str):
    raise ValueError(f"{constant} is not a number a record holds")

def read_json(path: Path):
    try:
        return json.loads(path.read_text(), parse_constant=not_a_number)
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path} is damaged ({e}). Restore it (`git checkout -- {path}` if it is committed), or "
                          "delete it to compute the run again.") from None

def read_pt(path: Path, say: Callable, then: str):
    """A checkpoint, or None when it is damaged: it is then set aside as <name>.damaged and the caller goes on."""
    try:
        return load_pt(path)
    except Exception as e:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        say(f"WARNING: {path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}); set aside as "
            f"{aside.name}, {then}.")
        return None
