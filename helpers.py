"""The Lottery Ticket Hypothesis on CIFAR-10, read top to bottom: the data, the CNN, manual pruning, the training
loop, and the procedure (Frankle & Carbin, 2019): train, prune the smallest surviving weights of each layer, reset the
survivors to their initial values θ0, train again. The machinery around it lives in the `lth` package, which uses
this file and is never used by it."""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent


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


# ----------------------------------------------------------------------------- data

MEAN = (0.4914, 0.4822, 0.4465)  # per-channel statistics of the CIFAR-10 training set
STD = (0.2470, 0.2435, 0.2616)


class DataError(RuntimeError):
    """CIFAR-10 could not be found or read; the message says where it looked and what to do."""


@dataclass
class Data:
    """CIFAR-10 in memory: uint8 NCHW images (channels_last in memory, as decoded) and int64 labels; the test set is
    the validation set. `source` says what was read (saved with every run); `files` are the files it came from."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: dict
    files: tuple[Path, ...] = ()

    def to(self, device: torch.device | str) -> "Data":
        move = lambda t: t.to(device, non_blocking=True)
        return Data(move(self.x_train), move(self.y_train), move(self.x_test), move(self.y_test), self.source,
                    self.files)


def load_cifar10(root: str | os.PathLike = "data", download: bool = True) -> Data:
    """CIFAR-10's official 50,000/10,000 split through torchvision, from `root`/cifar-10-batches-py, downloaded
    there the first time when `download` is set. (`lth.data.load_data` also reads local .npz copies.)"""
    import torchvision  # imported where needed: it costs 170 MB of resident memory
    root = Path(root).expanduser()
    local = (root / "cifar-10-batches-py").is_dir()
    try:
        splits = [torchvision.datasets.CIFAR10(root, train=t, download=download and not local) for t in (True, False)]
    except Exception as e:
        hint = ("it is not there" if not download else f"downloading failed ({type(e).__name__}: {e})")
        raise DataError(f"CIFAR-10 not found under {root.resolve()}: {hint}. On an offline machine, point "
                        "data_dir or $CIFAR10_DATA at a folder holding cifar-10-batches-py, or at a cifar10.npz "
                        "(x_train, y_train, x_test, y_test).") from None
    files = tuple(sorted(p for p in (root / "cifar-10-batches-py").iterdir() if p.is_file()))
    (tr, te) = splits
    return to_data(tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets),
                   {"kind": "folder" if local else "torchvision download", "file": "cifar-10-batches-py"}, files)


def to_data(x_train, y_train, x_test, y_test, source: dict, files: tuple[Path, ...]) -> Data:
    """NHWC uint8 arrays (as CIFAR-10 is stored) as a Data; NHWC memory is channels_last: no copy."""
    nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
    label = lambda y: torch.from_numpy(np.asarray(y, dtype=np.int64))
    return Data(nchw(x_train), label(y_train), nchw(x_test), label(y_test), source, files)


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
        check_fraction("dropout", dropout)
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
        for weight in prunable_weights(self).values():
            init_weight(weight)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


# The models a run can name (`model="cnn"`): name -> a class or function taking batchnorm, dropout, num_classes.
# models/ holds one file per other model, each adding itself here: MODELS["mine"] = Mine (docs/models.md).
MODELS: dict[str, Callable[..., nn.Module]] = {"cnn": CNN}


def init_weight(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """He-uniform initialisation for ReLU networks; the same call draws the re-init control's fresh values."""
    return nn.init.kaiming_uniform_(weight, nonlinearity="relu", generator=generator)


def build_model(seed: int, batchnorm: bool = True, dropout: float = 0.0, model: str = "cnn") -> nn.Module:
    """The initial network θ0 of a run: a function of the model and the seed alone."""
    if model not in MODELS:
        raise ValueError(f"model={model!r} is not registered; registered: {', '.join(map(repr, MODELS))}. Add "
                         "yours: helpers.MODELS[NAME] = YourModule, in a notebook cell or a file in models/.")
    torch.manual_seed(seed)
    net = MODELS[model](batchnorm=batchnorm, dropout=dropout, num_classes=10)
    if not prunable_weights(net):
        raise ValueError(f"model={model!r} has no Conv2d or Linear layer: there is no weight to prune.")
    return net


# ----------------------------------------------------------------------------- pruning

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor of its shape, True = alive


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The `.weight` of every Conv2d and Linear layer; biases and BatchNorm are never pruned."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def dense_masks(model: nn.Module) -> Masks:
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in prunable_weights(model).items()}


def magnitude_scores(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Lottery tickets keep the largest |w|."""
    return {name: w.detach().abs().float() for name, w in weights.items()}


def random_scores(weights: dict[str, torch.Tensor], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Random pruning: every alive weight is equally likely to go (drawn without replacement)."""
    return {name: torch.rand(w.shape, generator=generator, device=w.device) for name, w in weights.items()}


STRATEGIES = ("magnitude", "random", "ticket")  # ticket: a finished lottery run's masks, round by round
SCOPES = ("layer", "global")


def prune(model: nn.Module, masks: Masks, sparsity: float, strategy: str = "magnitude", scope: str = "layer",
          generator: torch.Generator | None = None) -> Masks:
    """New masks with exactly round(sparsity * n) weights pruned, per layer or across all layers.

    Only alive weights are removed: the ones with the lowest scores. Masks come from scores, never from
    `weight == 0`, so a weight that trains through zero stays alive.
    """
    check_choice("strategy", strategy, STRATEGIES[:2])  # a ticket's masks are given, never computed here
    check_choice("scope", scope, SCOPES)
    check_fraction("sparsity", sparsity)
    weights = prunable_weights(model)
    scores = magnitude_scores(weights) if strategy == "magnitude" else random_scores(weights, generator)
    scores = {k: s.masked_fill(~masks[k], -math.inf) for k, s in scores.items()}
    if scope == "layer":
        return {k: keep_top(s, s.numel() - round(sparsity * s.numel()), masks[k]) for k, s in scores.items()}
    flat = torch.cat([s.flatten() for s in scores.values()])
    alive = torch.cat([m.flatten() for m in masks.values()])
    keep = keep_top(flat, flat.numel() - round(sparsity * flat.numel()), alive)
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


def rewind(model: nn.Module, theta0: dict[str, torch.Tensor], masks: Masks) -> None:
    """The lottery-ticket reset: survivors, biases and BatchNorm back to their initial values."""
    model.load_state_dict(theta0)
    apply_masks(model, masks)


def reinit(model: nn.Module, theta0: dict[str, torch.Tensor], masks: Masks, generator: torch.Generator | None = None,
           layout: torch.memory_format = torch.contiguous_format) -> None:
    """The control: survivors get fresh kaiming_uniform_ values, drawn in the memory `layout` (conv weights) whatever
    the model's own; biases and BatchNorm go back to θ0."""
    model.load_state_dict(theta0)
    with torch.no_grad():
        for w in prunable_weights(model).values():
            fresh = torch.empty_like(w, memory_format=layout if w.dim() == 4 else torch.contiguous_format)
            w.copy_(init_weight(fresh, generator))
    apply_masks(model, masks)


RESETS = ("rewind", "reinit")


def round_sparsities(sparsity: float, rounds: int) -> list[float]:
    """Sparsity after each round when every round prunes q = 1 - (1 - p)^(1/R) of the surviving weights."""
    return [1 - (1 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def phase_seed(seed: int, phase: int) -> int:
    """Seed of data order, augmentation, dropout and random draws in one phase: resuming replays it exactly."""
    return seed * 1000 + phase


def prune_and_reset(model: nn.Module, masks: Masks, theta0: dict[str, torch.Tensor], r: int, sparsity: float,
                    rounds: int, strategy: str, reset: str, scope: str, seed: int, channels_last: bool,
                    ticket: dict[int, Masks] | None = None) -> Masks:
    """Round r's pruning to the schedule's sparsity (or the ticket's round-r masks), then the reset of the
    survivors to `theta0` (θ0, or the rewind point); returns the new masks."""
    dev = next(model.parameters()).device
    gen = torch.Generator(dev).manual_seed(phase_seed(seed, r))
    masks = ({k: m.to(dev) for k, m in ticket[r].items()} if strategy == "ticket" else
             prune(model, masks, round_sparsities(sparsity, rounds)[r - 1], strategy, scope, gen))
    # Re-init draws fill memory in order, so their layout is fixed by the round, never by how the model happens to
    # be laid out: round 1 follows phase 0 loaded into a fresh (contiguous) model, later rounds follow training
    # (channels_last). A resumed run, whose model is rebuilt contiguous, then draws what an uninterrupted one drew.
    layout = torch.channels_last if channels_last and r > 1 else torch.contiguous_format
    theta0 = {k: v.to(dev) for k, v in theta0.items()}
    rewind(model, theta0, masks) if reset == "rewind" else reinit(model, theta0, masks, gen, layout)
    return masks


# ----------------------------------------------------------------------------- training

PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # autocast dtype; "auto": the fastest that is safe on the device
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}  # fp16 also takes a GradScaler


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
    precision: str = "auto"
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


def default_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or None (auto).") from None


def autocast_dtype(precision: str, dev: torch.device) -> torch.dtype | None:
    """"auto" here is the safe choice: bf16 on GPUs with bf16 tensor cores (compute capability 8.0+), fp16 below
    (T4, V100), fp32 on the CPU; `lth.precision` refines the CPU's by timing it."""
    if precision == "auto":
        precision = "fp32" if dev.type == "cpu" else "bf16" if torch.cuda.get_device_capability(dev)[0] >= 8 else "fp16"
    return AUTOCAST[precision]


def train(model: nn.Module, data: Data, epochs: int, masks: Masks | None = None, seed: int = 0,
          device: str | torch.device | None = None, hp: HParams = HParams(), desc: str = "train",
          progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Train with a fresh optimiser and schedule; pruned weights stay exactly zero. One dict per epoch, also given
    to `on_epoch` as it ends."""
    check_positive("epochs", epochs)
    dev = default_device(device)
    if data.x_train.device != dev:
        data = data.to(dev)
    model.to(dev, memory_format=torch.channels_last if hp.channels_last else torch.contiguous_format)
    masks = {k: m.to(dev) for k, m in masks.items()} if masks else None
    dtype = autocast_dtype(hp.precision, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)  # fp16 gradients would underflow
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
            with torch.autocast(dev.type, dtype, enabled=dtype is not None):
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


def warmup_then_decay(total_steps: int, warmup: float) -> Callable[[int], float]:
    peak = max(1, round(warmup * total_steps))
    return lambda step: step / peak if step < peak else max(0.0, (total_steps - step) / max(1, total_steps - peak))


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, hp: HParams = HParams(), batch_size: int = 1000) -> float:
    """Accuracy on the test (= validation) set, as a fraction."""
    model.eval()
    dev = next(model.parameters()).device
    dtype = autocast_dtype(hp.precision, dev)
    correct = torch.zeros((), device=dev, dtype=torch.long)
    for i in range(0, len(data.x_test), batch_size):
        x = normalize(data.x_test[i:i + batch_size].to(dev), hp.channels_last)
        with torch.autocast(dev.type, dtype, enabled=dtype is not None):
            correct += (model(x).argmax(1) == data.y_test[i:i + batch_size].to(dev)).sum()
    model.train()
    return correct.item() / len(data.x_test)


# ----------------------------------------------------------------------------- the lottery-ticket procedure

def annotate(epochs: list[dict], phase: str, round_: int, cum_start: int, masks: Masks) -> list[dict]:
    report = sparsity_report(masks)
    return [{"phase": phase, "round": round_, **e, "cum_epoch": cum_start + e["epoch"], "sparsity": report["overall"],
             "layer_sparsity": report["layers"]} for e in epochs]


def lottery_ticket(data: Data, sparsity: float, rounds: int, epochs: int, strategy: str = "magnitude",
                   reset: str = "rewind", scope: str = "layer", batchnorm: bool = True, dropout: float = 0.0,
                   seed: int = 0, rewind_epoch: int = 0, model: str = "cnn", hp: HParams = HParams(),
                   device: str | torch.device | None = None, ticket: dict[int, Masks] | None = None,
                   phase0: tuple[dict, dict, list[dict]] | None = None, resume: dict | None = None,
                   on_phase0: Callable | None = None, keep_epochs: tuple[int, ...] = (),
                   on_round: Callable | None = None,
                   on_epoch: Callable[[dict], None] | None = None, progress: bool = True) -> tuple[list[dict], Masks]:
    """Phase 0 trains the dense network from θ0 for `epochs`; each of `rounds` rounds then prunes to the schedule's
    sparsity (`strategy`: magnitude finds the ticket, random is the control, ticket takes a lottery run's masks
    `ticket[r]`), resets the survivors (`reset`: rewind to θ0, or to phase 0 after `rewind_epoch` epochs; reinit:
    fresh draws) and trains `epochs` more. rounds=0 is the dense network alone. `model` names a registered network
    (`MODELS`), built with `batchnorm` and `dropout`.

    No file is read or written here; a caller that saves checkpoints passes:
      phase0 = (reset point, state, history) of a phase 0 trained before (it is not trained again);
      resume = {"state", "masks", "history"} after the last finished round;
      on_phase0(θ0, reset point, state, history, {epoch: weights} for `keep_epochs`) and
      on_round(r, model, masks, history) after each phase.
    Returns the history (one dict per epoch, every phase) and the final masks."""
    dev = default_device(device)
    data = data.to(dev)
    if strategy == "ticket" and not set(range(1, rounds + 1)) <= set(ticket or {}):
        raise ValueError(f"strategy='ticket' needs `ticket`: a finished lottery run's masks for rounds 1-{rounds}.")
    if phase0 is None:
        net = build_model(seed, batchnorm, dropout, model).to(dev)
        theta0, points = snapshot(net), {}

        def keep_rewind_points(epoch: dict) -> None:
            if epoch["epoch"] in (rewind_epoch, *keep_epochs):
                points[epoch["epoch"]] = snapshot(net)
            if on_epoch:
                on_epoch(epoch)
        epochs_run = train(net, data, epochs, None, phase_seed(seed, 0), dev, hp, desc="dense", progress=progress,
                           on_epoch=keep_rewind_points)
        phase0 = points.get(rewind_epoch, theta0), snapshot(net), annotate(epochs_run, "dense", 0, 0, dense_masks(net))
        if on_phase0:
            on_phase0(theta0, *phase0, points)
    reset_point, state, history = phase0
    net = build_model(seed, batchnorm, dropout, model).to(dev)  # phase 0 loaded into a fresh model, resumed or not
    net.load_state_dict(state)
    masks = dense_masks(net)
    if resume is not None:
        net.load_state_dict(resume["state"])
        masks, history = {k: m.to(dev) for k, m in resume["masks"].items()}, resume["history"]
    for r in range(history[-1]["round"] + 1, rounds + 1):
        masks = prune_and_reset(net, masks, reset_point, r, sparsity, rounds, strategy, reset, scope, seed,
                                hp.channels_last, ticket)
        epochs_run = train(net, data, epochs, masks, phase_seed(seed, r), dev, hp, desc=f"round {r}/{rounds}",
                           progress=progress, on_epoch=on_epoch)
        history = history + annotate(epochs_run, "pruned", r, history[-1]["cum_epoch"], masks)
        if on_round:
            on_round(r, net, masks, history)
    return history, masks
