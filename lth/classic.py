"""The classic curve as a table: each CLASSIC run's accuracy at the end of every round against the weights
remaining, which phase 0 each run starts from, and where each arm first falls 2 points below its phase 0."""
from __future__ import annotations

from lth.spec import ARMS, arm_label, is_classic
from lth.verdicts import against_threshold, phase0_key


def classic_curve(records: list[dict], model: dict | None = None):
    """The classic lottery-ticket curve: accuracy at the end of every round against the weights remaining, one
    row per (run, round) of the CLASSIC runs; round 0 is the dense phase 0, `phase0` says which (`phase0_key`)."""
    import pandas as pd
    rows = []
    for r in records:
        p = r["params"]
        if not is_classic(p) or any(p[k] != v for k, v in (model or {}).items()):
            continue
        ends = {}
        for e in r["history"]:
            ends[e["round"]] = e  # the last epoch of each round
        rows += [{"experiment": r["experiment"], "arm": arm_label(r), "seed": p["seed"], "round": k,
                  "remaining (%)": 100 * (1 - e["sparsity"]), "val_acc": e["val_acc"], "name": r["name"],
                  "phase0": phase0_key(r)} for k, e in ends.items()]
    return pd.DataFrame(rows, columns=["experiment", "arm", "seed", "round", "remaining (%)", "val_acc", "name",
                                       "phase0"])


def sharing_phase0(a, b):
    """The runs of curve rows `b` to compare with `a`'s, seed by seed: the one that shares the phase 0 of a's run of
    that seed (a run made from late rewinding's own phase 0 pairs with it), else the study's own run of the seed."""
    a0, b0 = a[a["round"] == 0], b[b["round"] == 0]
    chosen = []
    for seed, runs in b0.groupby("seed"):
        keys = set(a0[a0.seed == seed].phase0)
        same = runs[runs.phase0.isin(keys)]
        chosen.append((same if len(same) else runs).name.iloc[0])
    return b[b.name.isin(chosen)]


def shared_phase0(curve):
    """Per seed, the dense phase 0 the arms of the classic curve share: the first arm's in the table's order. Only a
    late-rewinding run whose replay of phase 0 left the saved one's path (another machine) has one of its own."""
    phase0 = curve[curve["round"] == 0]
    order = phase0.experiment.map({name: i for i, name in enumerate(ARMS)})
    return phase0.iloc[order.argsort(kind="stable")].groupby("seed").val_acc.first()


def phase0_by_seed(curve, experiment: str):
    """An arm's own dense phase 0 accuracy per seed: the shared one, but for a replay kept whole (`shared_phase0`)."""
    return curve[(curve.experiment == experiment) & (curve["round"] == 0)].groupby("seed").val_acc.first()


def first_drops(curve, experiment: str) -> dict[int, tuple[float, float | None]]:
    """Per seed, the % of weights left at the first level more than 2 points below the arm's own dense phase 0 (0
    when it never is: further than any level), and the level before it (or that one) found at the threshold, within
    one test image of it, if any; empty when the arm is not on the curve."""
    phase0 = phase0_by_seed(curve, experiment)
    out = {}
    for seed, rows in curve[(curve.experiment == experiment) & (curve["round"] > 0)].groupby("seed"):
        states = [(left, against_threshold(acc, phase0[seed]))
                  for left, acc in rows.sort_values("round")[["remaining (%)", "val_acc"]].to_numpy()]
        below = next((left for left, state in states if state == "below"), 0.0)
        at = next((left for left, state in states if state == "at" and left > below), None)
        out[int(seed)] = (float(below), at)
    return out


def drop_text(drop: tuple[float, float | None]) -> str:
    below, at = drop
    text = f"{below:.1f}%" if below else "never"
    return f"at the threshold at {at:.1f}%, then {text}" if at is not None else text


def mean_levels(curve, experiment: str):
    """An arm's seeds, their mean phase 0, and the mean over those seeds at each level (`val_acc`, `remaining`),
    each level's `state` against 2 points below that phase 0 (`against_threshold`)."""
    rows = curve[(curve.experiment == experiment) & (curve["round"] > 0)]
    seeds = sorted(rows.seed.unique())
    dense = phase0_by_seed(curve, experiment)[seeds].mean()
    mean = rows.groupby("round").agg(val_acc=("val_acc", "mean"), remaining=("remaining (%)", "mean"))
    return seeds, dense, mean.assign(state=[against_threshold(acc, dense) for acc in mean.val_acc])
