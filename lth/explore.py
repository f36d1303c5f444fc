"""The explorer's views (07_explore): each draws from saved runs only (records, masks, θ0, phase 0) and returns a
figure; `choice` says what to draw: arms, sparsity (None: all), model (model_label), seeds ("mean" with its range,
or "each"), and the seed whose masks are shown."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from lth import store
from lth.report import UNREADABLE, chosen, history_table, one_shot_masks, overlap, runs_table, runs_with_masks
from lth.spec import ARMS, RunSpec, model_label, pruned_arms


def default_choice(records: list[dict]) -> dict:
    """What the views show first: the arms `ARMS` marks as shown, at 50% when there are runs there."""
    pruned = [r for r in records if r["experiment"] in pruned_arms()]
    sparsities = sorted({r["params"]["sparsity"] for r in pruned})
    return {"arms": [name for name in pruned_arms() if ARMS[name].shown],
            "sparsity": 0.5 if 0.5 in sparsities else None,
            "model": model_label(RunSpec.of("lottery", sparsity=0.5).__dict__), "seeds": "mean", "seed": 0}


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


def view_init_magnitudes(records: list[dict], results_dir: Path | str, choice: dict):
    import pandas as pd
    import seaborn as sns
    runs = runs_with_masks(records, results_dir, choice)
    fig, ax = _figure("|θ0| of the weights each mask kept and pruned (relative to the layer's largest)",
                      None if runs else "no saved masks for this choice (runs from before masks were kept)")
    rows = []
    for arm, (r, masks) in runs.items():
        try:
            theta0 = store.load_theta0(results_dir, RunSpec(**r["params"]))
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
    runs = runs_with_masks(records, results_dir, choice)
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
                state = store.load_phase0(results_dir, r)["state"]
            except UNREADABLE:
                continue
            rows.append((f"{arm} vs one-shot at round 1", overlap(final, one_shot_masks(
                {k: state[k] for k in final}, r["params"]["sparsity"]))))
    for arm in runs:  # the same arm's ticket across seeds, where several seeds saved masks
        others = [r for r in chosen(records, {**choice, "arms": [arm]}) if r["params"]["seed"] != choice["seed"]
                  and store.masks_path(results_dir, RunSpec(**r["params"])).exists()]
        for o in others:
            try:
                m = store.load_masks(results_dir, o)
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


VIEWS: dict[str, Callable] = {"accuracy curves": view_curves, "final accuracy": view_final,
                              "layer sparsity": view_layers, "initial magnitudes": view_init_magnitudes,
                              "mask overlap": view_overlap}
