"""The Lottery Ticket Hypothesis on CIFAR-10, in one file.

Sections, in order: checks, data, model, pruning, training, experiments, results, plots, the explorer's views.
Every notebook in notebooks/ is a few calls into this file.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import hashlib
import json
import math
import os
import platform
import tempfile
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent
PUBLISHED_RESULTS = ROOT / "results"  # the study this repository publishes: its README's numbers come from here


# ----------------------------------------------------------------------------- checks (used by every section below)

def check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: must be a whole number >= 1.")


def check_fraction(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r}: must be a number in [0, 1), e.g. 0.5 for half the weights pruned.")


def check_number(name: str, value, low: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (low_open and value == low):
        raise ValueError(f"{name}={value!r}: must be a finite number {'>' if low_open else '>='} {low}.")


def check_choice(name: str, value, allowed: Iterable) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: must be one of {', '.join(map(repr, allowed))}.")


TRUE, FALSE = ("true", "yes", "y", "on", "1"), ("false", "no", "n", "off", "0")


def as_bool(name: str, value) -> bool:
    """A flag as papermill may pass it (`-p force no` arrives as the string 'no'): True/False and their usual
    spellings, anything else refused, since a non-empty string would otherwise count as true."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ValueError(f"{name}={value!r}: must be True or False (papermill: -p {name} True).")


# ----------------------------------------------------------------------------- data

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of the CIFAR-10 training set
STD = (0.2470, 0.2435, 0.2616)
KNOWN_COPIES = {  # sha256 of local copies whose pixels are not the originals; results must say so
    "ab19cd54e7f40e49ef38c6fde4a48427c053f0413ccca64e3af9455236bb7530":
        "CIFAR-10, JPEG-q75 offline copy (labels and split exact, pixels re-encoded; PSNR 30 dB)",
}


class DataError(RuntimeError):
    """CIFAR-10 could not be found or read; the message says where it looked and what to do."""


@dataclass
class Data:
    """CIFAR-10 in memory: uint8 NCHW images (channels_last in memory, as decoded) and int64 labels.

    The test set is the validation set."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: dict

    def to(self, device: torch.device | str) -> "Data":
        move = lambda t: t.to(device, non_blocking=True)
        return Data(move(self.x_train), move(self.y_train), move(self.x_test), move(self.y_test), self.source)

    def subset(self, n_train: int, n_test: int) -> "Data":
        """The first images of each split: for quick end-to-end checks, never for results."""
        return Data(self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test], self.y_test[:n_test],
                    {**self.source, "subset": [n_train, n_test]})


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = True) -> Data:
    """CIFAR-10's official 50,000/10,000 split from torchvision, a `cifar-10-batches-py` folder or a `.npz` file.

    `data_dir` defaults to $CIFAR10_DATA, else ./data. torchvision downloads into ./data or into a named folder that
    exists, never into one it would have to create (a typo creates nothing). A folder holding `cifar10.npz` is read
    as that file.
    """
    named = data_dir or os.environ.get("CIFAR10_DATA")
    path = data_path(data_dir)
    if path.suffix == ".npz" or path.is_file():
        return _load_npz(path)
    return _load_torchvision(path, download and (not named or path.is_dir()))


def data_path(data_dir: str | os.PathLike | None = None) -> Path:
    """The file or folder `load_cifar10` reads: `data_dir`, else $CIFAR10_DATA, else ./data."""
    path = Path(data_dir or os.environ.get("CIFAR10_DATA") or "data").expanduser()
    if path.is_dir() and (path / "cifar10.npz").is_file() and not (path / "cifar-10-batches-py").is_dir():
        return path / "cifar10.npz"
    return path


def data_source(data_dir: str | os.PathLike | None = None, quick: bool = False) -> dict | None:
    """The identity of the data `load_data` would read, from its content hash, without decoding or downloading it;
    None when there is no data there yet."""
    path = data_path(data_dir)
    folder = path / "cifar-10-batches-py"
    files = [path] if path.is_file() else sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files:
        return None
    return {"sha256": _sha256(files), **({"subset": list(QUICK_SUBSET)} if quick else {})}


def _load_npz(path: Path) -> Data:
    if not path.is_file():
        raise DataError(f"CIFAR-10 file {path} does not exist. Point data_dir or $CIFAR10_DATA at an existing "
                        "cifar10.npz or at a folder holding cifar-10-batches-py.")
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in keys if k in f.files}
    except Exception as e:  # zip, pickle and header errors all mean the same to the user
        raise DataError(f"{path} is not a readable .npz file ({type(e).__name__}: {e}). "
                        "Re-copy it, or point data_dir at another copy.") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks the array(s) {missing}; a CIFAR-10 .npz needs {', '.join(keys)}.")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) == 0:
            raise DataError(f"{path}: x_{split} is {x.dtype} {x.shape}; expected uint8 (N, 32, 32, 3) images, N > 0.")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() > 9:
            raise DataError(f"{path}: y_{split} is {y.dtype} {y.shape} with values {y.min()}..{y.max()}; expected "
                            f"{len(x)} whole-number labels in 0..9 (fractional labels are not truncated for you).")
    source = {"kind": "npz", "file": path.name, "sha256": _sha256([path])}
    source["description"] = KNOWN_COPIES.get(source["sha256"], "CIFAR-10 from a local .npz copy")
    return _to_data(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], source)


def _load_torchvision(root: Path, download: bool) -> Data:
    import torchvision  # imported where needed: it costs 170 MB of resident memory
    local = (root / "cifar-10-batches-py").is_dir()
    try:
        splits = [torchvision.datasets.CIFAR10(root, train=t, download=download and not local) for t in (True, False)]
    except Exception as e:
        hint = ("it is not there" if not download else f"downloading failed ({type(e).__name__}: {e})")
        raise DataError(f"CIFAR-10 not found under {root.resolve()}: {hint}. On an offline machine, point "
                        "data_dir or $CIFAR10_DATA at a folder holding cifar-10-batches-py, or at a cifar10.npz "
                        "(x_train, y_train, x_test, y_test).") from None
    files = sorted(p for p in (root / "cifar-10-batches-py").iterdir() if p.is_file())
    source = {"kind": "folder" if local else "torchvision download", "file": "cifar-10-batches-py",
              "sha256": _sha256(files), "description": "CIFAR-10, original images via torchvision"}
    (tr, te) = splits
    return _to_data(tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets), source)


def _to_data(x_train, y_train, x_test, y_test, source: dict) -> Data:
    nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)  # NHWC memory is channels_last: no copy
    label = lambda y: torch.from_numpy(np.asarray(y, dtype=np.int64))
    return Data(nchw(x_train), label(y_train), nchw(x_test), label(y_test), source)


def _sha256(paths: list[Path]) -> str:
    """The data's identity is its content: the same file anywhere (a copy, a symlink) is the same data."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def data_identity(source: dict) -> dict:
    """What of a data source decides the numbers: the content hash and the subset, never the path."""
    return {"sha256": source.get("sha256"), "subset": source.get("subset")}


def normalize(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 NCHW images to normalised float32, in channels_last by default (the format oneDNN and cuDNN prefer)."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1) * 255
    return ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last if channels_last else
                                                  torch.contiguous_format)


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip of a uint8 batch, as one gather on its device."""
    n, c, h, w = x.shape
    dev = x.device
    x = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
    flip = torch.rand(n, 1, device=dev, generator=generator) < 0.5
    rows = dy + torch.arange(h, device=dev)
    cols = dx + torch.arange(w, device=dev)
    cols = torch.where(flip, cols.flip(1), cols)
    return x[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


# ----------------------------------------------------------------------------- model

def conv_block(c_in: int, c_out: int, batchnorm: bool, pool: bool) -> nn.Sequential:
    """3x3 conv, optional 2x2 max-pool (before BN: 4x cheaper), BatchNorm or conv bias, ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + f(x), where f is two conv blocks of the same width."""

    def __init__(self, channels: int, batchnorm: bool):
        super().__init__()
        self.f = nn.Sequential(conv_block(channels, channels, batchnorm, False),
                               conv_block(channels, channels, batchnorm, False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class CNN(nn.Module):
    """A ResNet-9-shaped CNN that pools early: 8 prunable layers, 0.46M weights, 20M multiply-adds an image.

    32x32 -> stem (w) -> 16x16 -> conv (2w) -> 8x8 -> residual -> conv (4w) -> 4x4 -> residual -> max -> linear.
    """

    def __init__(self, batchnorm: bool = True, dropout: float = 0.0, width: int = 32, num_classes: int = 10):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r}: must be in [0, 1).")
        w = width
        self.features = nn.Sequential(
            conv_block(3, w, batchnorm, pool=True),
            conv_block(w, 2 * w, batchnorm, pool=True),
            Residual(2 * w, batchnorm),
            conv_block(2 * w, 4 * w, batchnorm, pool=True),
            Residual(4 * w, batchnorm),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(4 * w, num_classes)
        for name, weight in prunable_weights(self).items():
            init_weight(weight)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


def init_weight(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """He-uniform initialisation for ReLU networks; the same call draws the re-init control's fresh values."""
    return nn.init.kaiming_uniform_(weight, nonlinearity="relu", generator=generator)


# ----------------------------------------------------------------------------- pruning

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor of its shape, True = alive


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The `.weight` of every Conv2d and Linear layer; biases and BatchNorm are never pruned."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def dense_masks(model: nn.Module) -> Masks:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in prunable_weights(model).items()}


def magnitude_scores(weights: dict[str, torch.Tensor], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Lottery tickets keep the largest |w|."""
    return {name: w.detach().abs().float() for name, w in weights.items()}


def random_scores(weights: dict[str, torch.Tensor], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Random pruning: every alive weight is equally likely to go (drawn without replacement)."""
    return {name: torch.rand(w.shape, generator=generator, device=w.device) for name, w in weights.items()}


STRATEGIES: dict[str, Callable] = {"magnitude": magnitude_scores, "random": random_scores}
SCOPES = ("layer", "global")


def prune(model: nn.Module, masks: Masks, sparsity: float, strategy: str = "magnitude", scope: str = "layer",
          generator: torch.Generator | None = None) -> Masks:
    """New masks with exactly round(sparsity * n) weights pruned, per layer or across all layers.

    Only alive weights are removed: the ones with the lowest scores. Masks come from scores, never from
    `weight == 0`, so a weight that trains through zero stays alive.
    """
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("scope", scope, SCOPES)
    check_fraction("sparsity", sparsity)
    weights = prunable_weights(model)
    scores = {k: s.masked_fill(~masks[k], -math.inf) for k, s in STRATEGIES[strategy](weights, generator).items()}
    if scope == "layer":
        return {k: keep_top(s, s.numel() - round(sparsity * s.numel()), masks[k]) for k, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = keep_top(flat, flat.numel() - round(sparsity * flat.numel()), torch.cat([m.flatten() for m in masks.values()]))
    return dict(zip(scores, (part.view_as(s) for part, s in zip(keep.split([s.numel() for s in scores.values()]),
                                                                    scores.values()))))


def keep_top(scores: torch.Tensor, keep: int, alive: torch.Tensor) -> torch.Tensor:
    """A mask keeping the `keep` highest scores; pruned entries score -inf and must not be needed."""
    if keep > int(alive.sum()):
        raise ValueError(f"cannot keep {keep} weights when only {int(alive.sum())} are alive: the target sparsity "
                         "is below the current one.")
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[scores.flatten().topk(keep, sorted=False).indices] = True
    return mask.view_as(scores)


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    """Zero the pruned weights in place."""
    for name, w in prunable_weights(model).items():
        w.mul_(masks[name])


def sparsity_report(masks: Masks) -> dict:
    """Fraction of pruned weights, overall and per layer."""
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    return {"overall": pruned / total, "layers": {k: int((~m).sum()) / m.numel() for k, m in masks.items()}}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer (a plain state_dict() would alias the live tensors)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rewind(model: nn.Module, theta0: dict[str, torch.Tensor], masks: Masks,
           generator: torch.Generator | None = None, layout: torch.memory_format = torch.contiguous_format) -> None:
    """The lottery-ticket reset: survivors, biases and BatchNorm back to their initial values."""
    model.load_state_dict(theta0)
    apply_masks(model, masks)


def reinit(model: nn.Module, theta0: dict[str, torch.Tensor], masks: Masks,
           generator: torch.Generator | None = None, layout: torch.memory_format = torch.contiguous_format) -> None:
    """The control: survivors get fresh kaiming_uniform_ values, drawn in the memory `layout` (conv weights) whatever
    the model's own; biases and BatchNorm go back to theta0."""
    model.load_state_dict(theta0)
    with torch.no_grad():
        for name, w in prunable_weights(model).items():
            fresh = torch.empty_like(w, memory_format=layout if w.dim() == 4 else torch.contiguous_format)
            w.copy_(init_weight(fresh, generator))
    apply_masks(model, masks)


RESETS: dict[str, Callable] = {"rewind": rewind, "reinit": reinit}


def round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each round when every round prunes q = 1 - (1 - p)^(1/R) of the surviving weights."""
    return [1 - (1 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


# ----------------------------------------------------------------------------- training

PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # "auto": the fastest that is safe on the device (pick_precision)


@dataclass(frozen=True)
class HParams:
    """Optimisation defaults for every phase, chosen for 85%+ in 25 epochs (see README, "Model")."""
    batch_size: int = 512
    lr: float = 0.2                # peak; linear warm-up then linear decay to zero, restarted every phase
    lr_no_batchnorm: float = 0.05  # without BatchNorm, 0.1 and 0.2 diverge to chance in the first epoch
    warmup: float = 0.2            # fraction of the phase spent warming up
    momentum: float = 0.9          # Nesterov
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    precision: str = "auto"        # autocast dtype; "auto" is resolved per device before a run starts
    channels_last: bool = True

    def __post_init__(self):
        check_positive("batch_size", self.batch_size)
        for name in ("lr", "lr_no_batchnorm"):
            check_number(name, getattr(self, name), low=0, low_open=True)
        for name in ("warmup", "momentum", "label_smoothing"):
            check_fraction(name, getattr(self, name))
        check_number("weight_decay", self.weight_decay, low=0)
        check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.channels_last, bool):
            raise ValueError(f"channels_last={self.channels_last!r}: must be True or False.")

    @classmethod
    def from_record(cls, saved: dict) -> "HParams":
        """The HParams a record or checkpoint was made with; fields it predates take their defaults."""
        return cls(**saved)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` picks CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or None (auto).") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: only 'cpu' and 'cuda' are supported.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this machine has no CUDA GPU; use 'cpu' or None.")
    return dev


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # fp16 also takes a GradScaler
PRECISION_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lottery-ticket" / "precision.json"


def pick_precision(dev: torch.device) -> str:
    """What precision "auto" means on `dev`.

    CUDA: bf16 on compute capability 8.0+ (A100, L4, H100: bf16 tensor cores); below that (T4, V100) fp16 with a
    GradScaler, because `torch.cuda.is_bf16_supported()` also says yes to bf16 emulated many times slower.
    CPU: whichever of fp32 and bf16 trains faster on this CPU. x86 without AVX-512 has no bf16 kernels (bf16 runs
    there on fp32 kernels, `Bf16Conv`, about as fast as fp32); elsewhere no flag predicts it (AVX512-BF16 won on
    a Zen 4 and lost on a Xeon without AMX), so a short timed probe decides, once per CPU model and torch version.
    """
    if dev.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(dev)[0] >= 8 else "fp16"
    if platform.machine().lower() in ("x86_64", "amd64") and not cpu_capability().startswith("AVX512"):
        return "fp32"
    key = f"{cpu_model()} | {cpu_capability()} | torch {torch.__version__}"
    try:
        cache = json.loads(PRECISION_CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        speed = {p: probe_speed(p) for p in ("fp32", "bf16")}
        cache[key] = max(speed, key=speed.get)
        try:
            write_json(PRECISION_CACHE, cache)
        except OSError:
            pass  # a read-only home: probe again next time
    return cache[key]


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def cpu_model() -> str:
    if Path("/proc/cpuinfo").exists():
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def probe_speed(precision: str, batch: int = 256, steps: int = 3) -> float:
    """Training images a second of this CPU at `precision` (channels_last, random images): the best of `steps`."""
    torch.manual_seed(0)
    model = CNN().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    best = math.inf
    for _ in range(steps + 1):  # the first step warms up the kernels
        start = time.perf_counter()
        with autocast(torch.device("cpu"), HParams(precision=precision)):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - start) if _ else math.inf
    return batch / best


def resolve_hparams(hp: HParams, dev: torch.device, results_dir: Path | str | None = None) -> HParams:
    """`hp` with "auto" precision resolved: to the precision the runs already in `results_dir` used, finished or
    interrupted (a study resumed on another machine does not mix two), else to what suits `dev`. Explicit precisions
    are kept."""
    if hp.precision != "auto":
        return hp
    used = saved_precisions(results_dir) if results_dir else set()
    if len(used) > 1:
        raise ValueError(f"{results_dir} holds runs made with precisions {sorted(used)}: pass precision explicitly "
                         "(HParams(precision=...), or run_all.py --precision) to say which this run uses.")
    return replace(hp, precision=used.pop() if used else pick_precision(dev))


def saved_precisions(results_dir: Path | str) -> set[str]:
    """The precisions of what a results folder holds: its records, and the checkpoints of its unfinished runs."""
    used = {HParams.from_record(r["hparams"]).precision for r in load_records(results_dir)}
    for path in [*Path(results_dir).glob("checkpoints/*.pt"), *Path(results_dir).glob("checkpoints/phase0/*.pt")]:
        try:  # mmap: only the small identity is read, not the weights
            used.add(HParams.from_record(torch.load(path, map_location="cpu", mmap=True)["identity"]["hparams"])
                     .precision)
        except Exception:
            pass  # a damaged checkpoint is named, and set aside, when its run resumes
    return used


@functools.cache
def keep_freed_memory() -> None:
    """CPU: stop glibc from handing each step's freed activations back to the OS and faulting them in again, zeroed,
    at the next step (hundreds of thousands of page faults an epoch); freed blocks stay in the heap for reuse."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (macOS, Windows, musl): nothing to tune
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: blocks up to 1 GiB come from the heap, not from fresh mappings
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap instead of returning it


def train(model: nn.Module, data: Data, epochs: int, masks: Masks | None = None, seed: int = 0,
          device: str | torch.device | None = None, hp: HParams = HParams(), desc: str = "train",
          progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train with a fresh optimiser and schedule; pruned weights stay exactly zero. One dict per epoch, also given
    to `on_epoch` as it ends."""
    check_positive("epochs", epochs)
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    if data.x_train.device != dev:
        data = data.to(dev)
    model.to(dev, memory_format=torch.channels_last if hp.channels_last else torch.contiguous_format)
    masks = {k: m.to(dev) for k, m in masks.items()} if masks else None
    hp = resolve_hparams(hp, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=hp.precision == "fp16")  # fp16 gradients would underflow
    torch.manual_seed(seed)  # dropout
    gen = torch.Generator(dev).manual_seed(seed)  # data order and augmentation
    steps = len(data.x_train) // hp.batch_size
    if steps < 1:
        raise ValueError(f"batch_size={hp.batch_size} is larger than the {len(data.x_train)} training images.")
    if len(data.x_test) == 0:
        raise ValueError("the test set is empty: validation needs at least one test image.")
    lr = hp.lr if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) else hp.lr_no_batchnorm
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=hp.momentum, nesterov=True,
                          weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_then_decay(steps * epochs, hp.warmup))
    weights = prunable_weights(model)
    history = []
    bar = tqdm(total=steps * epochs, desc=desc, disable=not progress, leave=False, unit="step")
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=dev)
        order = torch.randperm(len(data.x_train), device=dev, generator=gen)
        for step in range(steps):
            idx = order[step * hp.batch_size:(step + 1) * hp.batch_size]
            x = normalize(augment(data.x_train[idx], gen), hp.channels_last)
            with autocast(dev, hp):
                loss = F.cross_entropy(model(x), data.y_train[idx], label_smoothing=hp.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if masks:  # no gradient, hence no momentum, reaches a pruned weight ...
                for name, w in weights.items():
                    w.grad.mul_(masks[name])
            scaler.step(opt)  # skipped when fp16 gradients overflowed; the masks hold either way
            scaler.update()
            if masks:  # ... and weight decay of a zero is zero; this re-zeroing makes it a guarantee
                apply_masks(model, masks)
            sched.step()
            loss_sum += loss.detach()  # stays on the device: no host sync inside the epoch
            bar.update()
        history.append({"epoch": epoch, "train_loss": loss_sum.item() / steps,
                        "val_acc": evaluate(model, data, hp), "seconds": time.perf_counter() - start})
        bar.set_postfix(val_acc=f"{history[-1]['val_acc']:.3f}")
        if on_epoch:
            on_epoch(history[-1])
    bar.close()
    return history


@contextlib.contextmanager
def autocast(dev: torch.device, hp: HParams):
    dtype = AUTOCAST[hp.precision]
    with torch.autocast(dev.type, dtype, enabled=dtype is not None):
        if bf16_on_fp32_kernels(dev, hp.precision):
            with Bf16ConvOnFp32Kernels():
                yield
        else:
            yield


def bf16_on_fp32_kernels(dev: torch.device, precision: str) -> bool:
    """Whether `precision` on `dev` runs its convolutions through `Bf16Conv`."""
    return precision == "bf16" and dev.type == "cpu" and not native_bf16_conv()


def native_bf16_conv() -> bool:
    """Whether PyTorch runs bf16 convolutions on oneDNN here. Without it (x86 without AVX-512) they fall back to a
    loop of bf16 matrix products that is ~14x slower than fp32 and accumulates weight gradients in bf16."""
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


class Bf16Conv(torch.autograd.Function):
    """A bf16 convolution computed by fp32 kernels: operands rounded to bf16, their products exact in fp32, summed in
    fp32, the result rounded to bf16. That is what oneDNN's bf16 kernels compute, so bf16 runs stay comparable across
    CPUs (tests/test_precision.py checks it against float64 sums), at fp32's speed where bf16 kernels are missing."""

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            out = F.conv2d(xb.float(), wb.float(), None if b is None else b.to(torch.bfloat16).float(),
                           stride, padding, dilation, groups)
        ctx.save_for_backward(xb, wb)  # bf16: half the memory of their fp32 copies
        ctx.args = stride, padding, dilation, groups, None if b is None else list(b.shape), x.dtype, w.dtype
        return out.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad):
        xb, wb = ctx.saved_tensors
        stride, padding, dilation, groups, bias_shape, x_dtype, w_dtype = ctx.args
        pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]
        with torch.autocast("cpu", enabled=False):
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad.float(), xb.float(), wb.float(), bias_shape, pair(stride), pair(padding), pair(dilation), False,
                [0, 0], groups, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias_shape is not None])
        as_bf16 = lambda g, dtype: None if g is None else g.to(torch.bfloat16).to(dtype)  # as autocast's casts do
        return as_bf16(gx, x_dtype), as_bf16(gw, w_dtype), as_bf16(gb, w_dtype), None, None, None, None


CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")  # F.conv2d's, in order
CONV_DEFAULTS = (None, None, None, 1, 0, 1, 1)


class Bf16ConvOnFp32Kernels(torch.overrides.TorchFunctionMode):
    """Inside bf16 autocast, sends every `F.conv2d` (hence every nn.Conv2d) through `Bf16Conv`; other ops run as
    autocast has them. The model needs no change."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d and torch.is_autocast_enabled("cpu"):
            x, w, b, stride, padding, dilation, groups = \
                [*args, *(kwargs.get(k, d) for k, d in zip(CONV_ARGS[len(args):], CONV_DEFAULTS[len(args):]))]
            if not isinstance(padding, str):  # padding="same" is left to PyTorch
                return Bf16Conv.apply(x, w, b, stride, padding, dilation, groups)
        return func(*args, **kwargs)


def warmup_then_decay(total_steps: int, warmup: float) -> Callable[[int], float]:
    peak = max(1, round(warmup * total_steps))
    return lambda step: step / peak if step < peak else max(0.0, (total_steps - step) / max(1, total_steps - peak))


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, hp: HParams = HParams(), batch_size: int = 1000) -> float:
    """Accuracy on the test (= validation) set, as a fraction."""
    model.eval()
    dev = next(model.parameters()).device
    correct = torch.zeros((), device=dev, dtype=torch.long)
    for i in range(0, len(data.x_test), batch_size):
        x = normalize(data.x_test[i:i + batch_size].to(dev), hp.channels_last)
        with autocast(dev, resolve_hparams(hp, dev)):
            correct += (model(x).argmax(1) == data.y_test[i:i + batch_size].to(dev)).sum()
    model.train()
    return correct.item() / len(data.x_test)


# ----------------------------------------------------------------------------- experiments

EXPERIMENTS = {  # experiment -> its defaults; every field of RunSpec can be overridden
    "baseline": dict(rounds=0, epochs=25),
    "lottery": dict(strategy="magnitude", reset="rewind"),
    "random": dict(strategy="random", reset="rewind"),
    "reinit": dict(strategy="magnitude", reset="reinit", sparsity=0.5),
    "rounds_vs_epochs": dict(strategy="magnitude", reset="rewind", sparsity=0.5),
}


@dataclass(frozen=True)
class RunSpec:
    """Everything that fixes one run. Phase 0 trains the dense net for `epochs`; then each of `rounds` rounds
    prunes, resets the survivors and trains `epochs` more, ending at `sparsity`."""
    experiment: str
    sparsity: float = 0.0
    rounds: int = 5
    epochs: int = 5
    strategy: str = "magnitude"
    reset: str = "rewind"
    scope: str = "layer"
    batchnorm: bool = True
    dropout: float = 0.0
    seed: int = 0

    @classmethod
    def of(cls, experiment: str, quick: bool = False, **params) -> "RunSpec":
        """The experiment's defaults overridden by `params`; `quick` cuts every phase to one epoch."""
        check_choice("experiment", experiment, EXPERIMENTS)
        unknown = set(params) - {f for f in cls.__dataclass_fields__ if f != "experiment"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; RunSpec takes {list(cls.__dataclass_fields__)}.")
        if "batchnorm" in params:
            params["batchnorm"] = as_bool("batchnorm", params["batchnorm"])
        spec = cls(experiment, **{**EXPERIMENTS[experiment], **params})
        return replace(spec, epochs=1) if as_bool("quick", quick) else spec

    def __post_init__(self):
        check_choice("experiment", self.experiment, EXPERIMENTS)
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("reset", self.reset, RESETS)
        check_choice("scope", self.scope, SCOPES)
        check_positive("epochs", self.epochs)
        check_fraction("sparsity", self.sparsity)
        check_fraction("dropout", self.dropout)
        if not isinstance(self.batchnorm, (bool, np.bool_)):  # papermill's `-p batchnorm yes` passes a string
            raise ValueError(f"batchnorm={self.batchnorm!r}: must be True or False (papermill: -p batchnorm True).")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed={self.seed!r}: must be a whole number >= 0.")
        if EXPERIMENTS[self.experiment].get("rounds") == 0:  # a dense experiment: phase 0 only
            if self.rounds != 0 or self.sparsity != 0:
                raise ValueError(f"rounds={self.rounds!r}, sparsity={self.sparsity!r}: a {self.experiment!r} run is "
                                 "dense (rounds=0, sparsity=0); pruned runs are 'lottery', 'random', ...")
            return
        if self.rounds == 0:
            raise ValueError(f"rounds=0: must be a whole number >= 1 for a {self.experiment!r} run; "
                             "a dense run is the 'baseline' experiment.")
        check_positive("rounds", self.rounds)
        if self.sparsity == 0:
            raise ValueError(f"sparsity=0 with rounds={self.rounds}: a pruned run needs a sparsity in (0, 1); "
                             "a dense run is the 'baseline' experiment.")

    @property
    def name(self) -> str:
        model = f"bn{int(self.batchnorm)}_do{exact(self.dropout)}"
        if self.rounds == 0:
            return f"{self.experiment}_{model}_E{self.epochs}_seed{self.seed}"
        scope = "" if self.scope == "layer" else f"_{self.scope}"
        return (f"{self.experiment}_p{exact(self.sparsity)}_R{self.rounds}_E{self.epochs}_{self.strategy}_"
                f"{self.reset}{scope}_{model}_seed{self.seed}")

    @property
    def phase0_name(self) -> str:
        """Phase 0 depends only on the model, the seed and the epochs: every arm that shares them shares it."""
        return f"bn{int(self.batchnorm)}_do{exact(self.dropout)}_E{self.epochs}_seed{self.seed}"


def exact(x: float) -> str:
    """A number as short as it reads back exactly: 0.5 -> '0.5'; two sparsities never share a name."""
    text = f"{x:g}"
    return text if float(text) == x else repr(float(x))


def record_path(results_dir: Path | str, spec: RunSpec) -> Path:
    """A finished run's record: results/runs/<experiment>/<name>.json."""
    return Path(results_dir) / "runs" / spec.experiment / f"{spec.name}.json"


def masks_path(results_dir: Path | str, spec: RunSpec) -> Path:
    """A finished pruned run's masks after every round, bit-packed, next to its record."""
    return record_path(results_dir, spec).with_suffix(".masks.npz")


def checkpoint_path(results_dir: Path | str, spec: RunSpec) -> Path:
    """An unfinished run's state after its last finished round: results/checkpoints/<name>.pt."""
    return Path(results_dir) / "checkpoints" / f"{spec.name}.pt"


def phase0_path(results_dir: Path | str, spec: RunSpec, hp: HParams, source: dict) -> Path:
    """The dense phase 0 shared by every arm with the same model, seed, epochs, hparams and data."""
    name = f"{spec.phase0_name}_{identity_hash(phase0_identity(spec, hp, source))}.pt"
    return Path(results_dir) / "checkpoints" / "phase0" / name


def record_phase0_path(results_dir: Path | str, record: dict) -> Path:
    """The phase 0 a finished run started from."""
    return phase0_path(results_dir, RunSpec(**record["params"]), HParams.from_record(record["hparams"]),
                       record["data"])


def theta0_path(results_dir: Path | str, spec: RunSpec) -> Path:
    """The initial weights θ0 of a model and seed: one file, whatever the epochs and hparams of its phases 0."""
    return Path(results_dir) / "checkpoints" / "theta0" / f"bn{int(spec.batchnorm)}_do{exact(spec.dropout)}_seed{spec.seed}.pt"


def phase_seed(seed: int, phase: int) -> int:
    """Seed of data order, augmentation, dropout and random draws in one phase: resuming replays it exactly."""
    return seed * 1000 + phase


# A run's identity is everything that decides its numbers: what is saved is reused only for the same identity. Fields
# at their defaults are left out (as open_lth does), so a new field with a default never changes an old identity.

class ResultMismatch(RuntimeError):
    """A saved result was made with other settings or data than asked; the message says what differs."""


class DamagedFile(RuntimeError):
    """A saved result cannot be read; the message names the file and what to do."""


def non_default(obj) -> dict:
    """A dataclass's fields that differ from their defaults."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if f.default is MISSING or getattr(obj, f.name) != f.default}


def run_identity(spec: RunSpec, hp: HParams, source: dict) -> dict:
    return {"params": non_default(spec), "hparams": non_default(hp), "data": data_identity(source)}


def saved_identity(params: dict, hparams: dict, data: dict) -> dict:
    """The identity of what was saved with these params, hparams and data, in any schema they were saved in."""
    return {"params": non_default(RunSpec(**params)), "hparams": non_default(HParams.from_record(hparams)),
            "data": data_identity(data)}


def record_identity(record: dict) -> dict:
    return saved_identity(record["params"], record["hparams"], record["data"])


def phase0_identity(spec: RunSpec, hp: HParams, source: dict) -> dict:
    model = {k: getattr(spec, k) for k in ("batchnorm", "dropout", "epochs", "seed")}
    return {"model": model, "hparams": non_default(hp), "data": data_identity(source)}


def identity_hash(identity: dict) -> str:
    """A short name for an identity: files named by it never collide across settings."""
    text = json.dumps(identity, sort_keys=True, default=lambda v: v.item())  # numpy scalars as Python numbers
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def check_identity(path: Path, saved: dict, asked: dict) -> None:
    diffs = differences(saved, asked)
    if not diffs:
        return
    precision = saved.get("hparams", {}).get("precision")
    if all(d.startswith("hparams.precision ") for d in diffs):
        fix = (f"Resume it with the precision it was made with: run_all.py --precision {precision} (notebooks: "
               f"precision=\"{precision}\").")
    else:
        fix = ("Keep both: pass another results_dir (run_all.py --results-dir) for the new settings; or replace it: "
               "force=True (run_all.py --force).")
    raise ResultMismatch(f"{path} was made with other settings than asked ({'; '.join(diffs)}), so it is not "
                         f"reused. {fix}")


def differences(saved: dict, asked: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(asked)):
        a, b = saved.get(k), asked.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} saved {a!r}, asked {b!r}")
    return out


# A results folder holds runs on one data set, named in its manifest: the first run fixes it.

MANIFEST = "data.json"


def folder_data(results_dir: Path | str) -> dict | None:
    """The data a results folder's runs were made on ({"data": identity, "description": ...}); None for a new one."""
    path = Path(results_dir) / MANIFEST
    if not path.exists():
        return None
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("data"), dict) or "sha256" not in saved["data"]:
        raise DamagedFile(f"{path} is not a results folder's manifest (it needs {{\"data\": {{\"sha256\": ...}}}}). "
                          "Restore it (`git checkout -- PATH` if it is committed).")
    return saved


def describe_data(source: dict) -> str:
    subset = source.get("subset")
    return (f"{source.get('description', 'CIFAR-10')} (sha256 {str(source.get('sha256'))[:12]}…"
            f"{f', quick subset of {subset[0]}/{subset[1]} images' if subset else ''})")


def check_folder(results_dir: Path | str, source: dict) -> None:
    """Refuse a results folder whose runs were made on other data than `source`."""
    saved = folder_data(results_dir)
    if saved is not None and saved["data"] != data_identity(source):
        raise ResultMismatch(
            f"{results_dir} holds runs on other data: {describe_data({**saved['data'], **saved})}, not "
            f"{describe_data(source)}. One folder holds one data set, so nothing is mixed: leave results_dir unset "
            "(run_all.py without --results-dir) and runs on this data go to a folder of their own, or name another.")


def claim_folder(results_dir: Path | str, source: dict) -> None:
    """Fix a new results folder's data to `source` (its first run does), or check that it is the same."""
    check_folder(results_dir, source)
    path = Path(results_dir) / MANIFEST
    if path.exists():
        return
    other = [r["name"] for r in load_records(results_dir) if data_identity(r["data"]) != data_identity(source)]
    if other:
        raise ResultMismatch(f"{results_dir} has no {MANIFEST} and holds runs on other data than "
                             f"{describe_data(source)} ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): "
                             "move them to a folder of their own, or pass another results_dir.")
    write_json(path, {"data": data_identity(source), "description": source.get("description", "")})


def results_root(path: str | os.PathLike | None = None, quick: bool = False, source: dict | None = None) -> Path:
    """Where runs are saved. A named `path` (relative to the repository root) is used as it is. Unnamed: results/,
    or results_quick/ for quick runs, under the repository root or $LTH_RESULTS (Colab: a Drive folder); when that
    folder holds runs on other data than `source`, a folder of this data's own beside it, results_<sha256 prefix>/.
    A quick run never writes under the repository's results/, the published study."""
    quick = as_bool("quick", quick)
    if path:
        folder = ROOT / path
        if quick and folder.resolve().is_relative_to(PUBLISHED_RESULTS.resolve()):
            raise ValueError(f"results_dir={str(path)!r}: a quick run never writes under {PUBLISHED_RESULTS.name}/, "
                             "the published study; leave results_dir unset (quick runs go to results_quick/) or "
                             "name another folder.")
        return folder
    default = Path(os.environ.get("LTH_RESULTS") or ROOT) / ("results_quick" if quick else "results")
    saved = folder_data(default) if source else None
    if saved is None or saved["data"] == data_identity(source):
        return default
    return default.with_name(f"{default.name}_{source['sha256'][:12]}")


def study_folder(results_dir: str | None = None, quick: bool = False, data_dir: str | None = None) -> Path:
    """The folder a summary or the explorer reads: a named one, else that of the data in `data_dir` (as the runs
    chose it), else the default one when there is no data here."""
    return results_root(results_dir, quick, None if results_dir else data_source(data_dir, quick))


def is_published(results_dir: Path | str) -> bool:
    return Path(results_dir).resolve() == PUBLISHED_RESULTS.resolve()


def folder_note(results: Path, quick: bool = False) -> str:
    """Where runs go, and why when it is not the default folder."""
    default = Path(os.environ.get("LTH_RESULTS") or ROOT) / ("results_quick" if quick else "results")
    where = results.relative_to(ROOT) if results.is_relative_to(ROOT) else results
    if results.parent != default.parent or not results.name.startswith(f"{default.name}_"):
        return f"{where}/"
    saved = folder_data(default)
    return (f"{where}/ ({default.name}/ holds runs on other data, {describe_data({**saved['data'], **saved})}; "
            "runs on this data get a folder of their own)")


def run_lock(results_dir: Path | str, name: str):
    """One lock per run and per phase 0, across processes: no two writers ever compute the same thing."""
    from filelock import FileLock  # a dependency of torch
    path = Path(results_dir) / ".locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)


@contextlib.contextmanager
def holding(lock, say: Callable, what: str):
    from filelock import Timeout
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"{what}: another process is computing it; waiting for it to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def run_experiment(spec: RunSpec, data: Data, device: str | torch.device | None = None,
                   results_dir: Path | str | None = None, hp: HParams = HParams(), progress: bool = True,
                   force: bool = False) -> dict:
    """Run (or resume, or just load) one run; returns its record, also saved as <results>/runs/<experiment>/<name>.json.

    A checkpoint after every phase means an interruption loses at most the phase in progress. A saved record,
    checkpoint, phase 0 or mask file is reused only when made with the same spec, hparams and data (else
    ResultMismatch); `force` recomputes the run, and writes nothing beside its old record until the new run is complete.
    """
    dev = resolve_device(device)
    results_dir = Path(results_dir) if results_dir else results_root(source=data.source)
    progress, force = as_bool("progress", progress), as_bool("force", force)
    hp = resolve_hparams(hp, dev, results_dir)
    asked = run_identity(spec, hp, data.source)
    out, ckpt = record_path(results_dir, spec), checkpoint_path(results_dir, spec)
    say = print if not progress else tqdm.write
    claim_folder(results_dir, data.source)
    with holding(run_lock(results_dir, spec.name), say, spec.name):
        saved = read_pt(ckpt, say, "the run restarts after its phase 0") if ckpt.exists() else None
        if out.exists() and not force:
            record = read_record(out)
            check_identity(out, record_identity(record), asked)
            if saved is not None and checkpoint_identity(saved, ckpt) == asked:  # stopped between record and masks
                finish_run(results_dir, spec, saved, asked)
            return record
        if saved is not None and force and checkpoint_identity(saved, ckpt) != asked:
            saved = None  # forced: a checkpoint of other settings is overwritten by the new run's first round
        if saved is not None:
            check_identity(ckpt, checkpoint_identity(saved, ckpt), asked)
        done = saved["history"][-1]["round"] if saved else 0
        left = spec.epochs * (spec.rounds - done + (not phase0_path(results_dir, spec, hp, data.source).exists()))
        device_name = describe_device(dev, hp.precision)
        say(f"{spec.name}: {left} epochs to train on {device_name}, precision {hp.precision}")
        eta = first_epoch_eta(left, say)
        data = data.to(dev)
        theta0, state, history = dense_phase(spec, data, dev, results_dir, hp, progress, say, eta)
        model = build_model(spec).to(dev)
        model.load_state_dict(state)
        masks, round_masks = dense_masks(model), {}
        if saved is not None:
            model.load_state_dict(saved["state"])
            masks, history, round_masks = saved["masks"], saved["history"], saved["round_masks"]
            say(f"{spec.name}: resumed after round {done}")
        for r in range(history[-1]["round"] + 1, spec.rounds + 1):
            masks = prune_and_reset(model, masks, theta0, spec, r, hp)
            round_masks[r] = pack_masks(masks)
            epochs = train(model, data, spec.epochs, masks, phase_seed(spec.seed, r), dev, hp,
                           desc=f"round {r}/{spec.rounds}", progress=progress, on_epoch=eta)
            history += annotate(epochs, "pruned", r, history[-1]["cum_epoch"], sparsity_report(masks), device_name)
            save_atomic({"identity": asked, "state": to_cpu(model.state_dict()), "masks": to_cpu(masks),
                         "history": history, "round_masks": round_masks}, ckpt)
            say(f"{spec.name}: round {r}/{spec.rounds} at sparsity {history[-1]['sparsity']:.3f}: "
                f"val_acc {history[-1]['val_acc']:.4f}")
        devices = dict.fromkeys(e.get("device", device_name) for e in history)  # every machine that computed a phase
        record = {"experiment": spec.experiment, "name": spec.name, "params": asdict(spec), "hparams": asdict(hp),
                  "history": history, "final_val_acc": history[-1]["val_acc"],
                  "final_sparsity": sparsity_report(masks)["overall"],
                  "seconds": sum(e["seconds"] for e in history), "device": "; ".join(devices),
                  "versions": versions(), "data": data.source}
        write_json(out, record)  # first: until the run is complete, nothing new lies beside an old record
        finish_run(results_dir, spec, {"round_masks": round_masks}, asked)
    return record


def finish_run(results_dir: Path, spec: RunSpec, saved: dict, identity: dict) -> None:
    """After the record: the run's masks, then its checkpoint goes."""
    if saved["round_masks"]:
        save_masks(masks_path(results_dir, spec), saved["round_masks"], identity)
    checkpoint_path(results_dir, spec).unlink(missing_ok=True)


def checkpoint_identity(saved: dict, path: Path) -> dict:
    try:
        return saved_identity(**saved["identity"])
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(f"{path} carries no readable identity ({type(e).__name__}: {e}); delete it, and the run "
                          "restarts after its phase 0.") from None


def prune_and_reset(model: nn.Module, masks: Masks, theta0: dict[str, torch.Tensor], spec: RunSpec, r: int,
                    hp: HParams = HParams()) -> Masks:
    """Round r's pruning to the schedule's sparsity, then the reset of the survivors; returns the new masks."""
    dev = next(model.parameters()).device
    gen = torch.Generator(dev).manual_seed(phase_seed(spec.seed, r))
    masks = prune(model, masks, round_sparsities(spec.sparsity, spec.rounds)[r - 1], spec.strategy, spec.scope, gen)
    # Re-init draws fill memory in order, so their layout is fixed by the round, never by how the model happens to
    # be laid out: round 1 follows phase 0 loaded into a fresh (contiguous) model, later rounds follow training
    # (channels_last). A resumed run, whose model is rebuilt contiguous, then draws what an uninterrupted one drew.
    layout = torch.channels_last if hp.channels_last and r > 1 else torch.contiguous_format
    RESETS[spec.reset](model, {k: v.to(dev) for k, v in theta0.items()}, masks, gen, layout)
    return masks


def dense_phase(spec: RunSpec, data: Data, dev: torch.device, results_dir: Path | str, hp: HParams, progress: bool,
                say: Callable, on_epoch: Callable | None = None) -> tuple[dict, dict, list[dict]]:
    """Theta0, the weights after phase 0 and its history: loaded when another arm already trained it. A phase 0 is
    named by its identity, so a run with other settings trains one of its own and never replaces a shared one."""
    path = phase0_path(results_dir, spec, hp, data.source)
    asked = phase0_identity(spec, hp, data.source)
    with holding(run_lock(results_dir, f"phase0-{path.stem}"), say, f"phase 0 {path.stem}"):
        saved = read_pt(path, say, "phase 0 is trained again") if path.exists() else None
        if saved is not None:
            check_identity(path, phase0_file_identity(saved, path), asked)
            say(f"{spec.name}: phase 0 loaded from {path.name}")
            return load_theta0(results_dir, spec), saved["state"], saved["history"]
        model = build_model(spec).to(dev)
        theta0 = snapshot(model)
        epochs = train(model, data, spec.epochs, None, phase_seed(spec.seed, 0), dev, hp, desc="dense",
                       progress=progress, on_epoch=on_epoch)
        history = annotate(epochs, "dense", 0, 0, sparsity_report(dense_masks(model)), describe_device(dev,
                                                                                                        hp.precision))
        if not theta0_path(results_dir, spec).exists():
            save_atomic(to_cpu(theta0), theta0_path(results_dir, spec))
        save_atomic({"identity": asked, "state": to_cpu(model.state_dict()), "history": history}, path)
    say(f"{spec.name}: phase 0 ({spec.epochs} epochs dense): val_acc {history[-1]['val_acc']:.4f}")
    return theta0, model.state_dict(), history


def phase0_file_identity(saved: dict, path: Path) -> dict:
    try:
        identity = saved["identity"]
        return {"model": identity["model"], "hparams": non_default(HParams.from_record(identity["hparams"])),
                "data": data_identity(identity["data"])}
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(f"{path} carries no readable identity ({type(e).__name__}: {e}); delete it, and phase 0 is "
                          "trained again.") from None


def load_phase0(results_dir: Path | str, record: dict) -> dict:
    """The phase 0 a finished run started from: {"state", "history", "identity"}, checked against the record."""
    path = record_phase0_path(results_dir, record)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the phase 0 of {record['name']} is not in this folder "
                                "(only the shared 5-epoch phases 0 are committed); run it again to recompute it.")
    try:
        saved = torch.load(path, map_location="cpu")
    except Exception as e:
        raise DamagedFile(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}). Restore it "
                          "(`git checkout -- PATH` if it is committed), or delete it to train it again.") from None
    spec = RunSpec(**record["params"])
    check_identity(path, phase0_file_identity(saved, path),
                   phase0_identity(spec, HParams.from_record(record["hparams"]), record["data"]))
    return saved


def load_theta0(results_dir: Path | str, spec: RunSpec) -> dict[str, torch.Tensor]:
    """The initial weights of a run's model and seed, saved once and shared by every phase 0 that starts there."""
    path = theta0_path(results_dir, spec)
    theta0 = read_pt(path, print, "phase 0 cannot start without it") if path.exists() else None
    if theta0 is None:
        raise DamagedFile(f"{path} is missing or damaged: it holds the initial weights of {spec.phase0_name}'s "
                          "model. Restore it (`git checkout -- PATH`), or delete the phase-0 files of this seed to "
                          "train them again.")
    return theta0


def first_epoch_eta(epochs: int, say: Callable) -> Callable[[dict], None]:
    """An `on_epoch` that says, once the first epoch is timed, how long all `epochs` should take on this device."""
    said = []

    def on_epoch(epoch: dict) -> None:
        if not said:
            said.append(True)
            say(f"first epoch: {epoch['seconds']:.1f} s, so about {epoch['seconds'] * epochs / 60:.1f} min for the "
                f"{epochs} epochs of this run on this device")
    return on_epoch


def pack_masks(masks: Masks) -> dict[str, torch.Tensor]:
    """Masks as bits: 8 weights a byte, about 58 KB for the whole network."""
    return {name: torch.from_numpy(np.packbits(m.cpu().numpy().ravel())) for name, m in masks.items()}


def save_masks(path: Path, round_masks: dict[int, dict[str, torch.Tensor]], identity: dict) -> None:
    """Every round's masks, with the identity of the run that made them: masks are never read for another run."""
    arrays = {f"round{r}/{name}": bits.numpy() for r, layers in round_masks.items() for name, bits in layers.items()}
    arrays["identity"] = np.array(json.dumps(identity, sort_keys=True, default=lambda v: v.item()))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez(f, **arrays)
    atomic_write(path, write)


def load_masks(results_dir: Path | str, record: dict) -> dict[int, Masks]:
    """The masks a finished pruned run had in each round, as bool tensors: {round: {parameter name: mask}}; checked
    against the identity of the run's record."""
    spec = RunSpec(**record["params"])
    path, owner = masks_path(results_dir, spec), record_path(results_dir, spec)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {spec.name} is not finished, or ran before masks were "
                                "saved (run it again with force=True to save them).")
    shapes = {name: w.shape for name, w in prunable_weights(build_model(spec)).items()}
    out: dict[int, Masks] = {}
    try:
        with np.load(path) as f:
            identity = saved_identity(**json.loads(str(f["identity"])))
            for key in f.files:
                if key != "identity":
                    r, name = key.split("/", 1)
                    bits = np.unpackbits(f[key], count=math.prod(shapes[name])).astype(bool)
                    out.setdefault(int(r.removeprefix("round")), {})[name] = torch.from_numpy(
                        bits.reshape(shapes[name]))
    except Exception as e:
        raise DamagedFile(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}). Restore it "
                          "(`git checkout -- PATH` if it is committed), or compute the run again (force=True).") from None
    if identity != record_identity(record):
        raise ResultMismatch(f"{path} holds the masks of another run than {owner} "
                             f"({'; '.join(differences(identity, record_identity(record)))}): restore the run's own "
                             "masks, or compute the run again (force=True).")
    return dict(sorted(out.items()))


def replay_random_masks(spec: RunSpec) -> dict[int, Masks]:
    """A random-pruning run's masks after every round, rebuilt without training: its scores are draws of the round's
    generator, whatever the weights (used for runs saved before masks were kept)."""
    if spec.strategy != "random":
        raise ValueError(f"strategy={spec.strategy!r}: only random pruning's masks can be rebuilt without training; "
                         "magnitude masks need the trained weights (run it again with force=True).")
    model = build_model(spec)
    masks, out = dense_masks(model), {}
    for r in range(1, spec.rounds + 1):
        gen = torch.Generator().manual_seed(phase_seed(spec.seed, r))
        masks = out[r] = prune(model, masks, round_sparsities(spec.sparsity, spec.rounds)[r - 1], spec.strategy,
                               spec.scope, gen)
    return out


def overlap(a: Masks, b: Masks) -> dict[str, float]:
    """How much two masks keep the same weights: the fraction of a's survivors that b keeps too, and the Jaccard
    index of the two survivor sets, each beside its value for independent masks with the same per-layer counts."""
    both = sum(int((a[k] & b[k]).sum()) for k in a)
    na, nb = sum(int(a[k].sum()) for k in a), sum(int(b[k].sum()) for k in a)
    chance = sum(int(a[k].sum()) * int(b[k].sum()) / a[k].numel() for k in a)
    return {"shared": both / na, "shared_chance": chance / na,
            "jaccard": both / (na + nb - both), "jaccard_chance": chance / (na + nb - chance)}


def one_shot_masks(weights: dict[str, torch.Tensor], sparsity: float) -> Masks:
    """Magnitude masks pruning `sparsity` of every layer at once: what a one-shot prune of `weights` would keep."""
    return {k: keep_top(w.abs().float(), w.numel() - round(sparsity * w.numel()), torch.ones_like(w, dtype=torch.bool))
            for k, w in weights.items()}


def build_model(spec: RunSpec) -> CNN:
    """The initial network theta0 of a run: a function of the seed alone."""
    torch.manual_seed(spec.seed)
    return CNN(batchnorm=spec.batchnorm, dropout=spec.dropout)


def annotate(epochs: list[dict], phase: str, round_: int, cum_start: int, report: dict, device: str) -> list[dict]:
    return [{"phase": phase, "round": round_, **e, "cum_epoch": cum_start + e["epoch"], "sparsity": report["overall"],
             "layer_sparsity": report["layers"], "device": device} for e in epochs]


QUICK_SUBSET = (2048, 1024)  # training and test images of a quick run


def load_data(data_dir: str | None = None, quick: bool = False) -> Data:
    """The notebooks' data: all of CIFAR-10, or a small subset for a quick end-to-end check."""
    data = load_cifar10(data_dir)
    return data.subset(*QUICK_SUBSET) if as_bool("quick", quick) else data


def notebook_setup(data_dir: str | None, quick: bool, results_dir: str | None, device: str | None,
                   precision: str) -> tuple[Data, Path, HParams]:
    """A run notebook's first step: its data, results folder and precision, said before anything trains."""
    style()
    quick = as_bool("quick", quick)
    dev = resolve_device(device)
    data = load_data(data_dir, quick)
    results = results_root(results_dir, quick, data.source)
    check_folder(results, data.source)
    hp = resolve_hparams(HParams(precision=precision), dev, results)
    print(f"data: {describe_data(data.source)}, {data.source['file']}\nresults: {folder_note(results, quick)}\n"
          f"device: {describe_device(dev, hp.precision)}\nprecision: {hp.precision} (asked: {precision})")
    return data, results, hp


# ----------------------------------------------------------------------------- results

def to_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in tensors.items()}


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


def save_atomic(obj, path: Path) -> None:
    """torch.save, atomically: a killed process never leaves half a checkpoint."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def read_pt(path: Path, say: Callable, then: str):
    """A checkpoint, or None when it is damaged: it is then set aside as <name>.damaged and the caller goes on."""
    try:
        return torch.load(path, map_location="cpu")
    except Exception as e:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        say(f"WARNING: {path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}); set aside as "
            f"{aside.name}, {then}.")
        return None


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path} is damaged ({e}). Restore it (`git checkout -- {path}` if it is committed), or "
                          "delete it to compute the run again.") from None


RECORD_KEYS = ("experiment", "name", "params", "hparams", "history", "final_val_acc", "final_sparsity", "data")


def read_record(path: Path) -> dict:
    """A finished run's record; DamagedFile, naming the file, for anything that is not one."""
    record = read_json(path)
    try:
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        record_identity(record)  # its params, hparams and data are ones a run can have
        if not record["history"] or not all(isinstance(e, dict) and "val_acc" in e for e in record["history"]):
            raise ValueError("its history is not a list of epochs")
    except (TypeError, ValueError, AttributeError) as e:
        raise DamagedFile(f"{path} is not a run record ({type(e).__name__}: {e}). Restore it (`git checkout -- "
                          f"{path}` if it is committed), or delete it to compute the run again.") from None
    return record


def describe_device(dev: torch.device, precision: str | None = None) -> str:
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    kernels = ", bf16 convolutions on fp32 kernels (Bf16Conv)" if bf16_on_fp32_kernels(dev, precision) else ""
    return f"cpu: {cpu_model()}, {torch.get_num_threads()} threads{kernels}"


def versions() -> dict:
    import torchvision  # imported where needed: it costs 170 MB of resident memory
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}


def load_records(results_dir: Path | str | None = None, experiment: str | None = None,
                 skipped: list[str] | None = None) -> list[dict]:
    """Every finished run's record; a damaged one is named in a warning (and in `skipped`) and left out, so the
    others still count."""
    records = []
    for path in sorted(Path(results_dir or results_root()).glob(f"runs/{experiment or '*'}/*.json")):
        try:
            records.append(read_record(path))
        except DamagedFile as e:
            warnings.warn(str(e), stacklevel=2)
            if skipped is not None:
                skipped.append(str(e))
    return records


def one_data_set(records: list[dict]) -> list[dict]:
    """`records`, refused when they were made on different data: such records are never pooled."""
    sets = collections.Counter(describe_data(r["data"]) for r in records)
    if len(sets) > 1:
        raise ResultMismatch("these records were made on different data, so they are not pooled: "
                             + "; ".join(f"{n} runs on {d}" for d, n in sets.items())
                             + ". Keep each data set in a results folder of its own.")
    return records


def runs_table(records: list[dict]):
    """One row per run: its parameters, final accuracy (and its dense phase 0's), sparsity, seconds."""
    import pandas as pd
    rows = [{**r["params"], "model": model_label(r["params"]), "final_val_acc": r["final_val_acc"],
             "phase0_val_acc": phase0_acc(r), "final_sparsity": r["final_sparsity"], "seconds": r["seconds"],
             "name": r["name"]} for r in records]
    return pd.DataFrame(rows)


def model_label(params: dict) -> str:
    return f"{'BatchNorm' if params['batchnorm'] else 'no BatchNorm'}, dropout {params['dropout']:g}"


def history_table(records: list[dict]):
    """One row per epoch of every run, with the run's parameters; `sparsity` is the run's final p and
    `sparsity_now` the sparsity during that epoch."""
    import pandas as pd
    epoch = lambda e: {("sparsity_now" if k == "sparsity" else k): v for k, v in e.items() if k != "layer_sparsity"}
    return pd.DataFrame([{**r["params"], "model": model_label(r["params"]), "name": r["name"], **epoch(e)}
                         for r in records for e in r["history"]])


def phase0_acc(record: dict) -> float:
    """Validation accuracy of the dense network at the end of phase 0: trained as long as each pruned phase."""
    return [e for e in record["history"] if e["round"] == 0][-1]["val_acc"]


def spread(accs: list[float]) -> str:
    """Mean accuracy, with the range over seeds when there are several: '79.98%' or '79.2% (78.9-79.6, 3 seeds)'."""
    if len(accs) == 1:
        return f"{accs[0]:.2%} (1 seed)"
    return f"{np.mean(accs):.2%} (range {min(accs):.2%}-{max(accs):.2%}, {len(accs)} seeds)"


def verdict(a: list[float], b: list[float]) -> str:
    """Whether the difference between two arms exceeds what their seeds spread over."""
    if min(len(a), len(b)) < 2:
        return "one seed: no range to judge it against"
    if min(a) > max(b) or max(a) < min(b):
        return "beyond the seed range: the ranges do not overlap"
    return "within the seed range: the ranges overlap"


CLASSIC = dict(sparsity=1 - 0.8 ** 13, rounds=13, epochs=5)  # 20% of the survivors a round, to 5.5% of the weights


def findings(records: list[dict], batchnorm: bool = True, dropout: float = 0.0, rounds: int = 5,
             epochs: int = 5) -> list[str]:
    """The study's findings as sentences, every number computed from `records` (means, ranges over seeds)."""
    model = dict(batchnorm=batchnorm, dropout=dropout)

    def runs(experiment: str, **where) -> list[dict]:
        return [r for r in records if r["experiment"] == experiment and
                all(np.isclose(r["params"][k], v) for k, v in {**model, **where}.items())]
    accs = lambda experiment, **where: [r["final_val_acc"] for r in runs(experiment, **where)]
    pts = lambda x: f"{100 * x:+.2f} points"
    # against the dense phase 0 of the same seeds, so that an arm with fewer seeds is not read against other seeds'
    gain = lambda experiment, **where: pts(np.mean([r["final_val_acc"] - phase0_acc(r) for r in runs(experiment,
                                                                                                       **where)]))
    out = []
    dense = accs("baseline")
    if dense:
        out.append(f"Dense baseline ({records_epochs(records, 'baseline')} epochs): {spread(dense)}.")
    sweep = [r for r in records if r["experiment"] in ("lottery", "random") and r["params"]["rounds"] == rounds
             and r["params"]["epochs"] == epochs and all(r["params"][k] == v for k, v in model.items())]
    phase0 = {r["params"]["seed"]: phase0_acc(r) for r in sweep}
    if phase0:
        out.append(f"Dense network after phase 0 ({epochs} epochs, the fair reference): {spread(list(phase0.values()))}.")
    for p in sorted({r["params"]["sparsity"] for r in sweep}):
        lot, rnd = accs("lottery", sparsity=p, rounds=rounds, epochs=epochs), accs("random", sparsity=p,
                                                                                    rounds=rounds, epochs=epochs)
        if lot and rnd:
            out.append(f"Sparsity {p:.0%}: lottery {spread(lot)}, random {spread(rnd)}: the ticket leads by "
                       f"{pts(np.mean(lot) - np.mean(rnd))}, {verdict(lot, rnd)}; against the phase 0 of the same "
                       f"seeds: lottery {gain('lottery', sparsity=p, rounds=rounds, epochs=epochs)}, random "
                       f"{gain('random', sparsity=p, rounds=rounds, epochs=epochs)}.")
    for p in sorted({r["params"]["sparsity"] for r in records if r["experiment"] == "reinit"
                     and r["params"]["rounds"] == rounds}):
        re_, lot = accs("reinit", sparsity=p, rounds=rounds, epochs=epochs), accs("lottery", sparsity=p,
                                                                                   rounds=rounds, epochs=epochs)
        rnd = accs("random", sparsity=p, rounds=rounds, epochs=epochs)
        if re_ and lot:
            out.append(f"Re-initialised survivors at {p:.0%}: {spread(re_)}, {pts(np.mean(re_) - np.mean(lot))} "
                       f"against the rewound ticket ({verdict(re_, lot)})" + (
                           f" and {pts(np.mean(re_) - np.mean(rnd))} against random pruning ({verdict(re_, rnd)})"
                           if rnd else "") + ".")
    for r_, e_ in sorted({(r["params"]["rounds"], r["params"]["epochs"]) for r in records
                          if r["experiment"] == "rounds_vs_epochs"}):
        runs = [r for r in records if r["experiment"] == "rounds_vs_epochs" and r["params"]["rounds"] == r_
                and r["params"]["epochs"] == e_]
        out.append(f"{r_} round(s) × {e_} epochs to 50%: {spread([r['final_val_acc'] for r in runs])}, "
                   f"{pts(np.mean([r['final_val_acc'] - phase0_acc(r) for r in runs]))} against the dense network "
                   f"trained as long ({e_} epochs).")
    out += classic_findings(records, model)
    return out


def records_epochs(records: list[dict], experiment: str) -> str:
    return "/".join(sorted({str(r["params"]["epochs"]) for r in records if r["experiment"] == experiment}))


def is_classic(params: dict) -> bool:
    return params["rounds"] == CLASSIC["rounds"] and bool(np.isclose(params["sparsity"], CLASSIC["sparsity"]))


def classic_curve(records: list[dict], model: dict | None = None):
    """The classic lottery-ticket curve: accuracy at the end of every round against the weights remaining, one
    row per (arm, seed, round) of the CLASSIC runs; round 0 is the shared dense phase 0."""
    import pandas as pd
    rows = []
    for r in records:
        p = r["params"]
        if not is_classic(p) or any(p[k] != v for k, v in (model or {}).items()):
            continue
        ends = {}
        for e in r["history"]:
            ends[e["round"]] = e  # the last epoch of each round
        rows += [{"experiment": r["experiment"], "seed": p["seed"], "round": k,
                  "remaining (%)": 100 * (1 - e["sparsity"]), "val_acc": e["val_acc"]} for k, e in ends.items()]
    return pd.DataFrame(rows, columns=["experiment", "seed", "round", "remaining (%)", "val_acc"])


def classic_findings(records: list[dict], model: dict) -> list[str]:
    curve = classic_curve(records, model)
    if curve.empty:
        return []
    phase0 = curve[curve["round"] == 0].groupby("seed").val_acc.first()  # the arms of a seed share their phase 0
    out = [f"Classic curve (20% of the survivors pruned a round, {CLASSIC['epochs']} epochs a round): dense phase 0 "
           f"{spread(list(phase0))}."]
    first_below = lambda rows, dense: rows[rows.val_acc < dense - 0.02].head(1)
    for arm, rows in curve[curve["round"] > 0].groupby("experiment"):
        # each arm against the phase 0 of its own seeds, so that an arm with fewer seeds is not read against others'
        seeds = sorted(rows.seed.unique())
        dense = phase0[seeds].mean()
        mean = rows.groupby("round").agg(val_acc=("val_acc", "mean"), remaining=("remaining (%)", "mean"))
        below, best = first_below(mean, dense), mean.loc[mean.val_acc.idxmax()]
        who = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, seeds))}"
        line = f"{arm} ({who}; their phase 0 {dense:.2%}): " + (
            f"first more than 2 points below the dense phase 0 at {below.remaining.iloc[0]:.1f}% of the weights "
            f"left ({below.val_acc.iloc[0]:.2%})" if len(below) else
            f"never more than 2 points below it, down to {mean.remaining.min():.1f}% of the weights left "
            f"({mean.val_acc.iloc[-1]:.2%})") + f"; best {best.val_acc:.2%} at {best.remaining:.1f}% left."
        if len(seeds) > 1:
            each = [first_below(rows[rows.seed == s], phase0[s]) for s in seeds]
            line += " Seed by seed, first more than 2 points below at: " + ", ".join(
                f"{b['remaining (%)'].iloc[0]:.1f}%" if len(b) else "never" for b in each) + "."
        out.append(line)
    return out


def results_markdown(records: list[dict], **model) -> str:
    """The README's results: one row per run (seeds pooled: mean, range, how many), then the findings."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        p = r["params"]
        arm = f"{r['experiment']}, classic curve (20% a round)" if is_classic(p) else \
            f"{r['experiment']} p={exact(p['sparsity'])}"
        label = (f"dense baseline, {model_label(p)}, {p['epochs']} epochs" if not p["rounds"] else
                 f"{arm} R={p['rounds']} E={p['epochs']}" +
                 ("" if p["batchnorm"] and not p["dropout"] else f", {model_label(p)}"))
        groups.setdefault(label, []).append(r)
    lines = ["| run | final val acc | seeds | its phase 0 (dense, E epochs) | final sparsity |",
             "| --- | --- | --- | --- | --- |"]
    for label, rs in groups.items():
        accs = [r["final_val_acc"] for r in rs]
        rng = f" ({min(accs):.2%}-{max(accs):.2%})" if len(rs) > 1 else ""
        p0 = "-" if not rs[0]["params"]["rounds"] else f"{np.mean([phase0_acc(r) for r in rs]):.2%}"
        lines.append(f"| {label} | {np.mean(accs):.2%}{rng} | {len(rs)} | {p0} | {rs[0]['final_sparsity']:.4f} |")
    phase0 = {RunSpec(**r["params"]).phase0_name: sum(e["seconds"] for e in r["history"] if e["round"] == 0)
              for r in records}
    pruned = sum(e["seconds"] for r in records for e in r["history"] if e["round"] > 0)
    devices = collections.Counter(r["device"] for r in records)
    compute = (f"Compute: {(sum(phase0.values()) + pruned) / 3600:.2f} hours of training in these records (each "
               f"shared phase 0 once), on {'; '.join(f'{d} ({n} runs)' for d, n in sorted(devices.items()))}.")
    return "\n".join(lines + ["", *[f"- {line}" for line in findings(records, **model)], "", compute])


def write_readme_results(text: str, results_dir: Path | str, records: list[dict],
                         readme: Path = ROOT / "README.md") -> str:
    """Replace the README's results between its two markers with `text`, computed from `records`: only from the
    published study, and only when every run in it was made on the folder's data. Says what it did."""
    if not is_published(results_dir):
        return f"The README's results are written from {PUBLISHED_RESULTS.name}/ only; {results_dir} is not it."
    saved = folder_data(results_dir)
    other = [r["name"] for r in records if saved is None or data_identity(r["data"]) != saved["data"]]
    if other:
        return (f"The README's results were not rewritten: {len(other)} runs ({', '.join(other[:3])}) were not made on "
                f"the data named in {Path(results_dir) / MANIFEST}.")
    start, end = "<!-- results: written by notebooks/06_summary.ipynb from the records -->", "<!-- end of results -->"
    before, rest = readme.read_text().split(start)
    write_text = before + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    atomic_write(readme, lambda f: f.write_text(write_text))
    return f"The README's results were rewritten from these {len(records)} runs."


def reading(record: dict, results_dir: Path | str) -> str:
    """A run's result in words: against the dense baseline of its model and the other arms at its sparsity."""
    p = record["params"]
    same_model = lambda r: all(r["params"][k] == p[k] for k in ("batchnorm", "dropout", "seed"))
    text = f"{record['name']}: {record['final_val_acc']:.2%} validation accuracy at sparsity {record['final_sparsity']:.1%}"
    records = load_records(results_dir)
    dense = [r for r in records if r["experiment"] == "baseline" and same_model(r)]
    if dense and record["experiment"] != "baseline":
        d = dense[0]["final_val_acc"]
        text += f", {100 * (record['final_val_acc'] - d):+.2f} points against the dense 25-epoch baseline ({d:.2%})"
    if p["rounds"]:  # the fairer reference: the same dense network after the same E epochs
        d = phase0_acc(record)
        text += f", {100 * (record['final_val_acc'] - d):+.2f} points against its dense phase 0 ({p['epochs']} epochs: {d:.2%})"
    for other in records:
        if other["experiment"] in ("lottery", "random", "reinit") and other["experiment"] != record["experiment"] \
                and same_model(other) and all(other["params"][k] == p[k] for k in ("sparsity", "rounds", "epochs")):
            text += f"; {other['experiment']} at the same sparsity and schedule: {other['final_val_acc']:.2%}"
    return text + "."


# ----------------------------------------------------------------------------- plots

def style() -> None:
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook")


def save_figure(fig, name: str, results_dir: Path | str) -> Path:
    """Save under results/figures/ as PNG, readable on GitHub."""
    path = Path(results_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_curves(history, hue: str, title: str, ax=None, baseline=None, palette: str = "viridis",
                style: str | None = None):
    """Validation accuracy against cumulative epoch, one line per `hue` (and `style`) value, mean and range over
    seeds; dotted verticals mark where a round pruned and reset the survivors; `baseline`, a dense run, is dashed."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 5.5))
    sns.lineplot(data=history, x="cum_epoch", y="val_acc", hue=hue, style=style, palette=palette, marker="o",
                 markersize=3, errorbar=("pi", 100), ax=ax)
    for edge in history.loc[history["round"] > 0].groupby(["name", "round"])["cum_epoch"].min().unique() - 0.5:
        ax.axvline(edge, color="grey", lw=0.6, ls=":")
    if baseline is not None and len(baseline):
        sns.lineplot(data=baseline, x="cum_epoch", y="val_acc", color="black", ls="--", lw=1.2,
                     errorbar=("pi", 100), label="dense baseline", ax=ax)
    ax.set(xlabel="cumulative epoch", ylabel="validation accuracy", title=title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return ax


def plot_final(table, x: str, hue: str, title: str, ax=None, references: dict[str, float] | None = None):
    """Final validation accuracy against `x`, one line per `hue` (mean, with the range over seeds); each of
    `references` (label -> accuracy, e.g. the dense baseline) is a dashed horizontal line."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    # the range as bars: a band has no width at a point measured at one x only (the re-init control)
    sns.lineplot(data=table, x=x, y="final_val_acc", hue=hue, marker="o", errorbar=("pi", 100), err_style="bars",
                 err_kws={"capsize": 4}, ax=ax)
    for (label, acc), ls in zip((references or {}).items(), ("--", ":", "-.")):
        ax.axhline(acc, color="black", ls=ls, lw=1.2, label=f"{label} ({acc:.3f})")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set(ylabel="final validation accuracy", title=title)
    return ax


def plot_classic(curve, ax=None):
    """The classic lottery-ticket figure: accuracy at the end of each round against the weights remaining (log
    axis, 100% to 5%), one line per arm (mean and range over seeds), the dense phase 0 dotted."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    pruned = curve[curve["round"] > 0]
    n = pruned.groupby("experiment").seed.nunique()
    pruned = pruned.assign(arm=[f"{e} ({n[e]} {'seeds' if n[e] > 1 else 'seed'})" for e in pruned.experiment])
    sns.lineplot(data=pruned, x="remaining (%)", y="val_acc", hue="arm", marker="o", errorbar=("pi", 100), ax=ax)
    dense = curve[curve["round"] == 0].groupby("seed").val_acc.first().mean()  # one shared phase 0 a seed
    ax.axhline(dense, color="black", ls=":", lw=1.2, label=f"dense phase 0 ({dense:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(100, 5)
    ax.set_xticks([100, 50, 20, 10, 5], labels=["100", "50", "20", "10", "5"])
    ax.set(ylabel="validation accuracy at the end of the round", title="Iterative pruning to 5% of the weights")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return ax


# ----------------------------------------------------------------------------- the explorer's views (07_explore)
# Each view draws from saved runs only (records, masks, phase 0) and returns a figure; `choice` says what to draw:
# arms (experiments), sparsity (None: all), model (model_label), seeds ("mean" with range, or "each"), seed.

ARMS = tuple(e for e, defaults in EXPERIMENTS.items() if defaults.get("rounds") != 0)


def default_choice(records: list[dict]) -> dict:
    pruned = [r for r in records if r["experiment"] in ARMS]
    sparsities = sorted({r["params"]["sparsity"] for r in pruned})
    return {"arms": ["lottery", "random", "reinit"], "sparsity": 0.5 if 0.5 in sparsities else None,
            "model": model_label(RunSpec.of("lottery", sparsity=0.5).__dict__), "seeds": "mean", "seed": 0}


def chosen(records: list[dict], choice: dict) -> list[dict]:
    return [r for r in records if r["experiment"] in choice["arms"] and model_label(r["params"]) == choice["model"]
            and (choice["sparsity"] is None or np.isclose(r["params"]["sparsity"], choice["sparsity"]))]


def _figure(title: str, message: str | None = None):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.set_title(title)
    if message:
        ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    return fig, ax


def view_curves(records: list[dict], results_dir: Path | str, choice: dict):
    import seaborn as sns
    runs = chosen(records, choice)
    fig, ax = _figure("Validation accuracy against cumulative epoch", None if runs else "no runs for this choice")
    if runs:
        h = history_table(runs)
        each = dict(units="seed", estimator=None) if choice["seeds"] == "each" else dict(errorbar=("pi", 100))
        sns.lineplot(data=h, x="cum_epoch", y="val_acc", hue="experiment", style="sparsity", ax=ax, **each)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return fig


def view_final(records: list[dict], results_dir: Path | str, choice: dict):
    import seaborn as sns
    runs = chosen(records, {**choice, "sparsity": None})
    fig, ax = _figure("Final validation accuracy against sparsity", None if runs else "no runs for this choice")
    if runs:
        each = dict(units="seed", estimator=None) if choice["seeds"] == "each" else dict(errorbar=("pi", 100))
        sns.lineplot(data=runs_table(runs), x="sparsity", y="final_val_acc", hue="experiment", marker="o", ax=ax,
                     **each)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def view_layers(records: list[dict], results_dir: Path | str, choice: dict):
    import pandas as pd
    import seaborn as sns
    runs = chosen(records, choice)
    fig, ax = _figure("Sparsity of each layer at the end of the run", None if runs else "no runs for this choice")
    if runs:
        rows = [{"experiment": r["experiment"], "sparsity": r["params"]["sparsity"], "layer": k.removesuffix(".weight"),
                 "layer sparsity": v} for r in runs for k, v in r["history"][-1]["layer_sparsity"].items()]
        sns.barplot(data=pd.DataFrame(rows), x="layer", y="layer sparsity", hue="experiment", errorbar=("pi", 100),
                    ax=ax)
        ax.tick_params(axis="x", rotation=45)
    return fig


UNREADABLE = (FileNotFoundError, DamagedFile, ResultMismatch)  # a saved file a view skips, and names


def _with_masks(records: list[dict], results_dir: Path | str, choice: dict,
                skipped: list[str] | None = None) -> dict[str, tuple[dict, dict]]:
    """The chosen runs (at choice['seed']) whose masks were saved: experiment -> (record, {round: masks})."""
    out = {}
    for r in chosen(records, choice):
        spec = RunSpec(**r["params"])
        if spec.seed == choice["seed"] and masks_path(results_dir, spec).exists() and r["experiment"] not in out:
            try:
                out[r["experiment"]] = (r, load_masks(results_dir, r))
            except UNREADABLE as e:
                (skipped if skipped is not None else []).append(str(e))
    return out


def view_init_magnitudes(records: list[dict], results_dir: Path | str, choice: dict):
    import pandas as pd
    import seaborn as sns
    runs = _with_masks(records, results_dir, choice)
    fig, ax = _figure("|θ0| of the weights each mask kept and pruned (relative to the layer's largest)",
                      None if runs else "no saved masks for this choice (runs from before masks were kept)")
    rows = []
    for arm, (r, masks) in runs.items():
        try:
            theta0 = load_theta0(results_dir, RunSpec(**r["params"]))
        except UNREADABLE:
            continue
        final = masks[max(masks)]
        for k, m in final.items():
            w = theta0[k].abs() / theta0[k].abs().max()
            rows += [{"arm": arm, "kept": kept, "|θ0|": float(v)} for kept, vals in (("kept", w[m]), ("pruned", w[~m]))
                     for v in vals[torch.randperm(len(vals), generator=torch.Generator().manual_seed(0))[:2000]]]
    if rows:
        df = pd.DataFrame(rows)
        df["mask"] = df.arm + ", " + df.kept
        sns.kdeplot(data=df, x="|θ0|", hue="mask", common_norm=False, ax=ax, clip=(0, 1))
    return fig


def view_overlap(records: list[dict], results_dir: Path | str, choice: dict):
    """Mask overlap (fraction of the first mask's survivors the second keeps), each beside its chance value."""
    import pandas as pd
    import seaborn as sns
    runs = _with_masks(records, results_dir, choice)
    rows = []
    if "lottery" in runs and "random" in runs:
        rows.append(("lottery vs random, same sparsity", overlap(*(runs[a][1][max(runs[a][1])] for a in ("lottery",
                                                                                                       "random")))))
    for arm, (r, masks) in runs.items():
        final = masks[max(masks)]
        # Masks nest (a round prunes only survivors), so a ticket against its own earlier masks says nothing; what
        # round 1 would have kept, pruning to p at once from the same weights, says how early the ticket was chosen.
        if r["params"]["strategy"] == "magnitude":
            try:
                state = load_phase0(results_dir, r)["state"]
            except UNREADABLE:
                continue
            rows.append((f"{arm} vs one-shot at round 1", overlap(final, one_shot_masks(
                {k: state[k] for k in final}, r["params"]["sparsity"]))))
    for arm in runs:  # the same arm's ticket across seeds, where several seeds saved masks
        others = [r for r in chosen(records, {**choice, "arms": [arm]}) if r["params"]["seed"] != choice["seed"]
                  and masks_path(results_dir, RunSpec(**r["params"])).exists()]
        for o in others:
            try:
                m = load_masks(results_dir, o)
            except UNREADABLE:
                continue
            rows.append((f"{arm}: seed {choice['seed']} vs seed {o['params']['seed']}",
                         overlap(runs[arm][1][max(runs[arm][1])], m[max(m)])))
    fig, ax = _figure("Mask overlap: shared survivors, against chance",
                      None if rows else "no saved masks for this choice (runs from before masks were kept)")
    if rows:
        df = pd.DataFrame([{"comparison": name, "value": o[key], "what": what} for name, o in rows
                           for key, what in (("shared", "measured"), ("shared_chance", "chance"))])
        sns.barplot(data=df, y="comparison", x="value", hue="what", ax=ax)
        ax.set(xlim=(0, 1), xlabel="fraction of survivors shared")
    return fig


def mask_findings(records: list[dict], results_dir: Path | str, sparsity: float = 0.5,
                  skipped: list[str] | None = None) -> list[str]:
    """Findings from the saved masks at `sparsity`, per seed that has them: lottery against random, and how much of
    the ticket a one-shot prune at round 1 would already have chosen; each beside its chance value. A file that
    cannot be read is named in `skipped`, and the rest goes on."""
    out, skipped = [], skipped if skipped is not None else []
    for seed in sorted({r["params"]["seed"] for r in records}):
        runs = _with_masks(records, results_dir, {**default_choice(records), "sparsity": sparsity, "seed": seed,
                                                  "arms": ["lottery", "random"]}, skipped)
        if "lottery" not in runs:
            continue
        r, masks = runs["lottery"]
        final = masks[max(masks)]
        if "random" in runs:
            o = overlap(final, runs["random"][1][max(runs["random"][1])])
            out.append(f"Seed {seed}, {sparsity:.0%}: the ticket and random pruning share {o['shared']:.1%} of their "
                       f"survivors (chance {o['shared_chance']:.1%}; Jaccard {o['jaccard']:.3f}, chance "
                       f"{o['jaccard_chance']:.3f}).")
        try:
            state = load_phase0(results_dir, r)["state"]
        except UNREADABLE as e:
            skipped.append(str(e))
            continue
        o = overlap(final, one_shot_masks({k: state[k] for k in final}, sparsity))
        out.append(f"Seed {seed}, {sparsity:.0%}: {o['shared']:.1%} of the ticket's survivors after {max(masks)} "
                   f"rounds are among those a one-shot prune to {sparsity:.0%} would have kept at round 1 (chance "
                   f"{o['shared_chance']:.1%}).")
    return out or [f"No lottery run at {sparsity:.0%} has saved masks yet (the runs made before masks were kept lack "
                   "them; magnitude masks cannot be rebuilt without retraining)."]


VIEWS: dict[str, Callable] = {"accuracy curves": view_curves, "final accuracy": view_final,
                              "layer sparsity": view_layers, "initial magnitudes": view_init_magnitudes,
                              "mask overlap": view_overlap}
