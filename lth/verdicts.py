"""How two arms are judged: seed by seed where their runs share θ0 and phase 0 (the mean paired difference, its 95%
interval from Student's t, how many seeds agree), by their ranges over seeds where they do not; and a threshold that
no difference smaller than one test image can cross."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ONE_IMAGE = 1e-4  # one of CIFAR-10's 10,000 test images, as accuracy: no verdict turns on less than that


def range_verdict(a: list[float], b: list[float]) -> str:
    """Two arms whose seeds share no phase 0: whether their ranges over seeds overlap."""
    if min(len(a), len(b)) < 2:
        return "one seed: no range to judge it against"
    if min(a) > max(b) or max(a) < min(b):
        return "beyond the seed range: the ranges do not overlap"
    return "within the seed range: the ranges overlap"


def interval(diffs: list[float]) -> tuple[float, float]:
    """The 95% interval of the mean of per-seed differences: Student's t with n - 1 degrees of freedom."""
    from scipy import stats
    mean, sem = float(np.mean(diffs)), float(stats.sem(diffs))
    return (mean, mean) if sem == 0 else tuple(stats.t.interval(0.95, len(diffs) - 1, loc=mean, scale=sem))


@dataclass(frozen=True)
class Comparison:
    """Arm a against arm b: the mean difference, and the verdict in words; `clear` and `width` (points) when paired."""
    diff: float
    said: str
    clear: bool | None = None
    width: float | None = None
    left_out: str = ""


def paired(diffs: list[float], quick: bool = False, left_out: str = "") -> Comparison:
    """Per-seed differences of runs that share their phase 0: 'clear' only when the 95% interval of their mean
    excludes zero; the interval's width says what this many seeds can tell."""
    n, mean = len(diffs), float(np.mean(diffs))
    if quick:
        return Comparison(mean, "no verdict on a quick run")
    if n == 1:
        said = "paired on one seed: no interval from one seed" + (f"; {left_out}" if left_out else "")
        return Comparison(mean, said, left_out=left_out)
    low, high = interval(diffs)
    clear, width = bool(low > 0 or high < 0), 100 * (high - low)
    agree = sum(np.sign(d) == np.sign(mean) and abs(d) >= ONE_IMAGE for d in diffs)
    said = (f"paired by seed, {'clear' if clear else 'not clear'}: 95% interval {100 * low:+.2f} to {100 * high:+.2f} "
            f"points (width {width:.2f}), {agree} of {n} seeds {'above' if mean > 0 else 'below'}")
    return Comparison(mean, said + (f"; {left_out}" if left_out else ""), clear, width, left_out)


def compare_seeds(a: dict[int, tuple[float, str]], b: dict[int, tuple[float, str]],
                  quick: bool = False) -> Comparison:
    """Arm a against arm b, each seed -> (accuracy, its phase 0). Paired by seed where both runs of a seed share their
    phase 0 (θ0, phase 0 and data order are the seed's); otherwise unpaired, and the sentence says so."""
    both = sorted(s for s in set(a) & set(b) if a[s][1] == b[s][1])
    if not both:
        accs_a, accs_b = [v for v, _ in a.values()], [v for v, _ in b.values()]
        said = "no verdict on a quick run" if quick else \
            f"unpaired, as no seed shares its phase 0: {range_verdict(accs_a, accs_b)}"
        return Comparison(float(np.mean(accs_a) - np.mean(accs_b)), said)
    apart = sorted((set(a) | set(b)) - set(both))
    left_out = (f"seed{'s' if len(apart) > 1 else ''} {', '.join(map(str, apart))} left out: not run by both arms, or "
                "not from the same phase 0") if apart else ""
    return paired([a[s][0] - b[s][0] for s in both], quick, left_out)


def phase0_key(record: dict) -> str:
    """A run's dense phase 0, epoch by epoch: two runs of a seed share it when their keys are equal."""
    return repr([(e.get("train_loss"), e["val_acc"]) for e in record["history"] if e["round"] == 0])


def by_seed(records: list[dict]) -> dict[int, tuple[float, str]]:
    return {r["params"]["seed"]: (r["final_val_acc"], phase0_key(r)) for r in records}


def against_threshold(acc: float, reference: float) -> str:
    """'below', 'at' or 'above' 2 points under `reference`: a difference smaller than one test image is 'at'."""
    d = acc - (reference - 0.02)
    return "at" if abs(d) < ONE_IMAGE - 1e-9 else "below" if d < 0 else "above"


def points(x: float) -> str:
    return f"{100 * x:+.2f} points"


def standing(low: float, high: float | None = None) -> str:
    """How one arm stands against another, by a difference or a range of them: 'leads by +1.80 points to +5.86
    points', 'trails by 1.03 points', or 'differs by -0.40 points to +1.20 points' across zero."""
    high = low if high is None else high
    if high < 0:  # said as the gap behind, unsigned
        return f"trails by {100 * -high:.2f}{'' if high == low else f' to {100 * -low:.2f}'} points"
    span = points(low) if high == low else f"{points(low)} to {points(high)}"
    return f"{'leads' if low >= 0 else 'differs'} by {span}"


def later_count(a: dict, b: dict, shared: set[int]) -> str:
    """Seed by seed, which arm falls 2 points below later (at fewer weights left), among seeds that share phase 0."""
    seeds = sorted(set(a) & set(b) & shared)
    if not seeds:
        return "unpaired: no seed shares its phase 0"
    left = lambda x: x[0] or 0.0  # never: beyond the last level
    later = sum(left(a[s]) < left(b[s]) for s in seeds)
    same = sum(left(a[s]) == left(b[s]) for s in seeds)
    return (f"paired by seed: later in {later} of {len(seeds)} seeds, at the same level in {same}, earlier in "
            f"{len(seeds) - later - same}")
