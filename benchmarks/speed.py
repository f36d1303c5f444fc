"""Training throughput of the project's path against the usual CIFAR-10 tutorial loop, side by side.

    python benchmarks/speed.py                 # project vs reference, alternating, 3 repeats, on CUDA if present
    python benchmarks/speed.py --switches      # also what each switch of the fast path buys, one at a time
    python benchmarks/speed.py --device cpu --images 10240 --repeats 5
    python benchmarks/speed.py --accuracy 5    # both paths trained 5 epochs on CIFAR-10: the fast path's accuracy

One measurement = one epoch over `--images` training images plus validation over a fifth as many test images,
which is what an epoch of the notebooks does. Each measurement runs in its own subprocess (after one warm-up epoch)
so that its peak memory is its own; the variants alternate (a, b, a, b, ...) and the medians are compared.

(a) project: `helpers.train` as the notebooks' runs call it (inside `lth.precision.kernels`): uint8 data resident on
    the device, crop + flip as one
    batched gather, the precision "auto" picks on this device (its row says which), channels_last, no host sync
    inside the epoch; on the CPU glibc keeps freed memory. The --switches rows show each precision beside it.
(b) reference: `torchvision.datasets.CIFAR10` with Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(),
    ToTensor(), Normalize]) per image through PIL, a DataLoader (shuffle, 2 workers), float32, default memory
    format, `loss.item()` every step; the same CNN, optimiser, schedule, batch size and number of images.
CIFAR-10 comes from --data-dir / $CIFAR10_DATA when found, else random images of its shape (speed does not depend
on the pixels).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import helpers as H  # noqa: E402
from lth import precision  # noqa: E402
from lth.data import load_data, subset  # noqa: E402
from lth.runs import resolve_hparams  # noqa: E402

VARIANTS = {  # name -> (path, HParams overrides, torch.compile, glibc keeps freed memory)
    "reference": ("reference", {}, False, False),
    "project": ("project", {}, False, True),
}
NATIVE_BF16 = "the same, bf16 autocast, PyTorch's bf16 convolutions"  # no Bf16Conv, even where it would step in
SWITCHES = {  # the fast path's switches, added one at a time from the reference's float32, NCHW, batch 512
    "tensor data path, fp32, NCHW": ("project", dict(precision="fp32", channels_last=False), False, False),
    "+ channels_last, fp32": ("project", dict(precision="fp32"), False, False),
    "+ glibc keeps freed memory, fp32": ("project", dict(precision="fp32"), False, True),
    "the same, bf16 autocast": ("project", dict(precision="bf16"), False, True),
    NATIVE_BF16: ("project", dict(precision="bf16"), False, True),
    "the same, fp16 autocast + GradScaler": ("project", dict(precision="fp16"), False, True),
    "project at batch 128": ("project", dict(batch_size=128), False, True),
    "project + torch.compile": ("project", {}, True, True),
    "reference + glibc keeps freed memory": ("reference", {}, False, True),
}
CPU_ONLY = ("reference + glibc keeps freed memory", NATIVE_BF16)  # no-ops on CUDA


def load(args) -> H.Data:
    try:
        data = load_data(args.data_dir, download=False)
    except H.DataError:
        g = torch.Generator().manual_seed(0)
        x = lambda n: torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
        y = lambda n: torch.randint(0, 10, (n,), generator=g)
        data = H.Data(x(50_000), y(50_000), x(10_000), y(10_000), {"description": "random images of CIFAR-10's shape"})
    return subset(data, args.images, args.images // 5)


def reference_train(model: torch.nn.Module, data: H.Data, hp: H.HParams, dev: torch.device, epochs: int = 1) -> float:
    """The tutorial loop: per-image PIL transforms in DataLoader workers, float32, a host sync every step.

    Returns the validation accuracy after `epochs` epochs (one warm-up, linear-decay schedule, as in helpers.train)."""
    import torchvision  # only this path pays for it (170 MB of resident memory)
    import torchvision.transforms as T

    class ArrayCIFAR10(torchvision.datasets.CIFAR10):
        """torchvision's CIFAR10 class, its own __getitem__ (PIL image -> transforms), fed from arrays in memory."""

        def __init__(self, images, labels, transform):
            torchvision.datasets.VisionDataset.__init__(self, "", transform=transform)
            self.data, self.targets = images, labels

    norm = T.Normalize(H.MEAN, H.STD)
    train_set = ArrayCIFAR10(data.x_train.permute(0, 2, 3, 1).numpy(), data.y_train.tolist(),
                             T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), norm]))
    test_set = ArrayCIFAR10(data.x_test.permute(0, 2, 3, 1).numpy(), data.y_test.tolist(),
                            T.Compose([T.ToTensor(), norm]))
    loader = torch.utils.data.DataLoader(train_set, batch_size=hp.batch_size, shuffle=True, num_workers=2,
                                         drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum, nesterov=True,
                          weight_decay=hp.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, H.warmup_then_decay(epochs * len(loader), hp.warmup))
    for _ in range(epochs):
        model.train()
        running_loss = 0.0
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            loss = F.cross_entropy(model(x), y, label_smoothing=hp.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running_loss += loss.item()
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test_set, batch_size=1000, num_workers=2):
            correct += (model(x.to(dev)).argmax(1) == y.to(dev)).sum().item()
    return correct / len(test_set)


def measure(args) -> dict:
    """One variant in this process: a warm-up epoch, then the timed one; images per second and peak memory."""
    path, overrides, compile_, keep_freed_memory = (VARIANTS | SWITCHES)[args.worker]
    dev = precision.resolve_device(args.device)
    if not keep_freed_memory:  # glibc's default thresholds; lth.precision.kernels would raise them on the CPU
        precision.keep_freed_memory = lambda: None
    elif path == "reference":  # a CPU-only row: what the project's runs do, given to the tutorial loop
        precision.keep_freed_memory()
    if args.worker == NATIVE_BF16:
        precision.native_bf16_conv = lambda: True
    data = load(args)
    hp = resolve_hparams(H.HParams(**{"batch_size": args.batch_size, **overrides}), dev)
    torch.manual_seed(0)
    model = H.CNN().to(dev)
    if compile_:
        model = torch.compile(model)
    if path == "project":
        data = data.to(dev)
        def run(epochs: int) -> float:
            with precision.kernels(dev, hp.precision):
                return H.train(model, data, epochs, device=dev, hp=hp, progress=False)[-1]["val_acc"]
    else:
        run = lambda epochs: reference_train(model, data, hp, dev, epochs)
    if args.accuracy:
        start = time.perf_counter()
        return {"val_acc": run(args.accuracy), "seconds": time.perf_counter() - start,
                "data": data.source["description"]}
    epoch = lambda: run(1)
    epoch()  # warm-up: kernel selection, worker start-up, compilation
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    epoch()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    used = hp.precision if path == "project" else "fp32"
    # CPU: this process's own high-water mark (KiB on Linux). Children are left out: a forked child's RSS counts the
    # pages it shares with this process (the reference's DataLoader workers, the `ldconfig -p` that importing torch
    # runs).
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
    return {"images_per_s": args.images // hp.batch_size * hp.batch_size / seconds, "peak_mib": peak,
            "data": data.source["description"],
            "precision": used + (" on fp32 kernels" if precision.bf16_on_fp32_kernels(dev, used) else "")}


def worker(variant: str, dev: torch.device, args) -> dict:
    """Measure one variant in a fresh process (its peak memory is its own); the arguments are this script's."""
    forward = ["--images", str(args.images), "--batch-size", str(args.batch_size)]
    forward += ["--data-dir", args.data_dir] if args.data_dir else []
    forward += ["--accuracy", str(args.accuracy)] if args.accuracy else []
    out = subprocess.run([sys.executable, __file__, *forward, "--device", str(dev), "--worker", variant],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{variant}: failed\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--images", type=int, help="training images per epoch (default 10240; all 50000 with --accuracy)")
    p.add_argument("--batch-size", type=int, default=H.HParams.batch_size)
    p.add_argument("--repeats", type=int, default=3, help="measurements of each variant (default 3)")
    p.add_argument("--switches", action="store_true", help="also measure each switch of the fast path on its own")
    p.add_argument("--variants", nargs="+", metavar="ROW", help="measure only these rows (and the reference), "
                   "named as in the table, e.g. project 'the same, bf16 autocast'")
    p.add_argument("--accuracy", type=int, metavar="EPOCHS",
                   help="instead of speed: train each path for EPOCHS epochs and compare validation accuracy")
    p.add_argument("--data-dir", help="CIFAR-10 folder or .npz (default: $CIFAR10_DATA, else ./data, else random)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.images = args.images or (50_000 if args.accuracy else 10_240)
    if args.worker:
        print(json.dumps(measure(args)))
        return 0
    for name, value in (("--images", args.images), ("--repeats", args.repeats), ("--batch-size", args.batch_size),
                        ("--accuracy", args.accuracy or 1)):
        if value < 1:
            p.error(f"{name} {value}: must be at least 1")
    unknown = set(args.variants or []) - set(VARIANTS) - set(SWITCHES)
    if unknown:
        p.error(f"--variants {sorted(unknown)}: unknown; choose from {', '.join(map(repr, [*VARIANTS, *SWITCHES]))}")
    if args.images < args.batch_size:
        p.error(f"--images {args.images} is fewer than one batch of {args.batch_size}")
    try:
        dev = precision.resolve_device(args.device)
        if args.accuracy:
            load_data(args.data_dir, download=False)  # a real copy, or the error that says where it looked
    except H.DataError as e:
        p.error(f"--accuracy needs CIFAR-10, not random images: {e}")
    except ValueError as e:
        p.error(str(e))
    print(f"device: {precision.describe_device(dev)}; versions: {precision.versions()}")
    try:
        return compare_accuracy(args, dev) if args.accuracy else compare_speed(args, dev)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1


def compare_speed(args, dev: torch.device) -> int:
    switches = [v for v in SWITCHES if dev.type == "cpu" or v not in CPU_ONLY] if args.switches else []
    variants = ["reference", *[v for v in args.variants if v != "reference"]] if args.variants else \
        list(VARIANTS) + switches
    print(f"settings: {args.images} training + {args.images // 5} test images an epoch, batch {args.batch_size}, "
          f"{args.repeats} repeats, alternating {', '.join(variants)}")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants:
            runs[v].append(worker(v, dev, args))
            print(f"  repeat {rep + 1} {v}: {runs[v][-1]['images_per_s']:.0f} img/s", flush=True)
    print(f"data: {runs[variants[0]][0]['data']}")
    ref = statistics.median(r["images_per_s"] for r in runs["reference"])
    memory = "peak GPU memory" if dev.type == "cuda" else "peak RSS, main process"
    print(f"\n| path | precision | images/s (median of {args.repeats}) | vs reference | {memory} (MiB) |\n"
          "| --- | --- | --- | --- | --- |")
    for v, rs in runs.items():
        speed = statistics.median(r["images_per_s"] for r in rs)
        peak = max(r['peak_mib'] for r in rs)
        print(f"| {v} | {rs[0]['precision']} | {speed:.0f} | {speed / ref:.2f}x | {peak:.0f} |")
    return 0


def compare_accuracy(args, dev: torch.device) -> int:
    print(f"settings: {args.accuracy} epochs on {args.images} training images, validation on {args.images // 5}, "
          f"batch {args.batch_size}, the same initial weights (seed 0)")
    runs = {v: worker(v, dev, args) for v in VARIANTS}
    print(f"data: {runs['reference']['data']}")
    print(f"\n| path | val acc after {args.accuracy} epochs | seconds |\n| --- | --- | --- |")
    for v, r in runs.items():
        print(f"| {v} | {100 * r['val_acc']:.2f}% | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
