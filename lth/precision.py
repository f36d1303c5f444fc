"""Precision and device: what "auto" means on each device, the CPU tricks that make bf16 and training fast there,
and how a record names the machine that computed it."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

import helpers as H
from lth.spec import plural

PRECISION_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lottery-ticket" / "precision.json"


def resolve(hp: H.HParams, dev: torch.device, used: set[str] = frozenset(), where: str = "this folder") -> H.HParams:
    """`hp` with "auto" precision resolved: to the one precision in `used` (what a results folder's runs were made
    with, so a study resumed on another machine does not mix two), else to what suits `dev`."""
    if hp.precision != "auto":
        return hp
    if len(used) > 1:
        raise ValueError(f"{where} holds runs made with precisions {sorted(used)}: pass precision explicitly "
                         "(HParams(precision=...), or run_all.py --precision) to say which this run uses.")
    return replace(hp, precision=next(iter(used)) if used else pick_precision(dev))


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
            PRECISION_CACHE.parent.mkdir(parents=True, exist_ok=True)
            PRECISION_CACHE.write_text(json.dumps(cache, indent=1))
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
    model = H.CNN().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    best = math.inf
    cpu = torch.device("cpu")
    for step in range(steps + 1):  # the first step warms up the kernels
        start = time.perf_counter()
        with kernels(cpu, precision), torch.autocast("cpu", H.AUTOCAST[precision],
                                                     enabled=H.AUTOCAST[precision] is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        best = min(best, time.perf_counter() - start) if step else math.inf
    return batch / best


@contextlib.contextmanager
def kernels(dev: torch.device, precision: str):
    """Around training: on the CPU, glibc keeps freed memory, and bf16 convolutions run through `Bf16Conv` where
    this CPU has no bf16 kernels of its own."""
    if dev.type == "cpu":
        keep_freed_memory()
    with Bf16ConvOnFp32Kernels() if bf16_on_fp32_kernels(dev, precision) else contextlib.nullcontext():
        yield


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


def describe_device(dev: torch.device, precision: str | None = None) -> str:
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)}"
    kernels = ", bf16 convolutions on fp32 kernels (Bf16Conv)" if bf16_on_fp32_kernels(dev, precision) else ""
    return f"cpu: {cpu_model()}, {plural(torch.get_num_threads(), 'thread')}{kernels}"


def versions() -> dict:
    import torchvision  # imported where needed: it costs 170 MB of resident memory
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}


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
