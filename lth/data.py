"""Data sources and their identity: a data set is its content (sha256), never its path, so the same file anywhere
is the same data, and results made on one copy never pass for another's."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

import helpers as H
from lth.spec import as_bool

KNOWN_COPIES = {  # sha256 of local copies whose pixels are not the originals; results must say so
    "ab19cd54e7f40e49ef38c6fde4a48427c053f0413ccca64e3af9455236bb7530":
        "CIFAR-10, JPEG-q75 offline copy (labels and split exact, pixels re-encoded; PSNR 30 dB)",
}
QUICK_SUBSET = (2048, 1024)  # training and test images of a quick run


def load_data(data_dir: str | os.PathLike | None = None, quick: bool = False, download: bool = True) -> H.Data:
    """The notebooks' data: CIFAR-10 from `data_dir`, else $CIFAR10_DATA, else ./data (a torchvision folder, or a
    .npz copy), all of it or a small subset for a quick end-to-end check, with its identity in `source` (content
    hash, description). torchvision downloads into ./data or into a named folder that exists, never into one it
    would have to create (a typo creates nothing)."""
    named = data_dir or os.environ.get("CIFAR10_DATA")
    path = data_path(data_dir)
    if path.suffix == ".npz" or path.is_file():
        data = load_npz(path)
    else:
        data = H.load_cifar10(path, download and (not named or path.is_dir()))
    sha = sha256(data.files)
    description = KNOWN_COPIES.get(sha, "CIFAR-10, original images via torchvision" if data.source["kind"] != "npz"
                                   else "CIFAR-10 from a local .npz copy")
    data.source = {**data.source, "sha256": sha, "description": description}
    return subset(data, *QUICK_SUBSET) if as_bool("quick", quick) else data


def subset(data: H.Data, n_train: int, n_test: int) -> H.Data:
    """The first images of each split: for quick end-to-end checks, never for results."""
    return H.Data(data.x_train[:n_train], data.y_train[:n_train], data.x_test[:n_test], data.y_test[:n_test],
                  {**data.source, "subset": [n_train, n_test]}, data.files)


def data_path(data_dir: str | os.PathLike | None = None) -> Path:
    """The file or folder `load_data` reads: `data_dir`, else $CIFAR10_DATA, else ./data."""
    path = Path(data_dir or os.environ.get("CIFAR10_DATA") or "data").expanduser()
    if path.is_dir() and (path / "cifar10.npz").is_file() and not (path / "cifar-10-batches-py").is_dir():
        return path / "cifar10.npz"
    return path


def load_npz(path: Path) -> H.Data:
    if not path.is_file():
        raise H.DataError(f"CIFAR-10 file {path} does not exist. Point data_dir or $CIFAR10_DATA at an existing "
                        "cifar10.npz or at a folder holding cifar-10-batches-py.")
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in keys if k in f.files}
    except Exception as e:  # zip, pickle and header errors all mean the same to the user
        raise H.DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}). "
                        "Re-copy it, or point data_dir at another copy.") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise H.DataError(f"{path} lacks the array(s) {missing}; a CIFAR-10 .npz needs {', '.join(keys)}.")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) == 0:
            raise H.DataError(f"{path}: x_{split} is {x.dtype} {x.shape}; expected uint8 (N, 32, 32, 3) images, N > 0.")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise H.DataError(f"{path}: y_{split} is {y.dtype} {y.shape} with values {y.min()}..{y.max()}; expected "
                            f"{len(x)} whole-number labels in 0..9 (fractional labels are not truncated for you).")
    return H.to_data(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                      {"kind": "npz", "file": path.name}, (path,))


def data_source(data_dir: str | os.PathLike | None = None, quick: bool = False) -> dict | None:
    """The identity of the data `load_data` would read, from its content hash, without decoding or downloading it;
    None when there is no data there yet."""
    path = data_path(data_dir)
    folder = path / "cifar-10-batches-py"
    files = [path] if path.is_file() else sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files:
        return None
    return {"sha256": sha256(files), **({"subset": list(QUICK_SUBSET)} if quick else {})}


def sha256(paths) -> str:
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def data_identity(source: dict) -> dict:
    """What of a data source decides the numbers: the content hash and the subset, never the path."""
    return {"sha256": source.get("sha256"), "subset": source.get("subset")}


def describe_data(source: dict) -> str:
    subset = source.get("subset")
    return (f"{source.get('description', 'CIFAR-10')} (sha256 {str(source.get('sha256'))[:12]}…"
            f"{f', quick subset of {subset[0]}/{subset[1]} images' if subset else ''})")
