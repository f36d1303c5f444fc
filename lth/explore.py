"""The explorer's views (07_explore): each draws from saved runs only (records, masks, θ0, phase 0) and returns a
figure; `choice` says what to draw: arms, sparsity ("all" or one), model (`setup_label`: network, flags, settings),
seeds ("mean" with its range, or "each"), and the seed whose masks are shown."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from lth import store
from lth.identity import setup_label
from lth.masks import chosen, one_shot_masks, overlap, runs_with_masks
from lth.plots import caveat, level, outside_legend, percent, seed_range, words
from lth.report import UNREADABLE, history_table, labels
from lth.spec import ARMS, RunSpec, is_classic, model_label, pruned_arms


def png(fig) -> bytes:
    """A figure as PNG bytes, for an image widget: replacing its value redraws in place, from a button's callback
    too, where a displayed figure would go to JupyterLab's log console."""
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def live(widget, note: str) -> None:
    """Display `widget`, with `note` as its text: what a static copy of the notebook (nbconvert, GitHub) shows in
    its place, rather than the widget's repr."""
    from IPython.display import display
    display({**widget._repr_mimebundle_(), "text/plain": note}, raw=True)


def default_choice(records: list[dict], results_dir: Path | str | None = None) -> dict:
    """What the views show first: the arms `ARMS` marks as shown, at 50% when there are runs there, on the lab's CNN
    (or the first model with pruned runs), and the masks of the first seed whose runs saved them (runs made before
    masks were kept have none to show)."""
    pruned = [r for r in records if r["experiment"] in pruned_arms()]
    sparsities = sorted({r["params"]["sparsity"] for r in pruned})
    labels = [setup_label(r) for r in pruned]
    study = model_label(RunSpec.of("lottery", sparsity=0.5).__dict__)
    choice = {"arms": [name for name in pruned_arms() if ARMS[name].shown],
              "sparsity": 0.5 if 0.5 in sparsities else "all",
              "model": study if study in labels or not labels else sorted(labels)[0], "seeds": "mean", "seed": 0}
    seeds = sorted({r["params"]["seed"] for r in pruned})
    if results_dir is not None:
        choice["seed"] = next((s for s in seeds if "lottery" in runs_with_masks(records, results_dir,
                                                                                 {**choice, "seed": s})), 0)
    return choice


def options(records: list[dict], folder: Path | str) -> dict[str, tuple[list, object]]:
    """Every choice the explorer offers for the runs of one folder, with the value it opens on: rebuilt whenever the
    folder shown changes, so no option of another folder's runs lingers."""
    pruned = [r for r in records if r["params"]["rounds"]]
    first = default_choice(records, folder)
    return {"sparsity": ([("all", "all")] + [(f"{p:.3g}", p) for p in sorted({r["params"]["sparsity"]
                                                                             for r in pruned})], first["sparsity"]),
            "model": (sorted({setup_label(r) for r in records} | {first["model"]}), first["model"]),
            "seed": (sorted({r["params"]["seed"] for r in pruned}) or [0], first["seed"]),
            "arms": ([(ARMS[a].label, a) for a in pruned_arms()], tuple(first["arms"]))}


def opening_folder(results: Path, records: list[dict], published: list[dict],
                   quick: bool) -> tuple[Path, list[dict], str]:
    """The folder the explorer opens on, its runs, and what to say: the asked one, or, while it holds no runs, the
    committed study (its runs: `published`) as a reference, labelled with its data, with how to fill the asked one."""
    if records or store.is_published(results):
        return results, records, f"{len(records)} runs in {store.folder_note(results, quick)}"
    if not published:
        return results, records, f"No runs in {store.folder_note(results, quick)} yet, and no committed study here."
    from lth.data import describe_data
    return store.PUBLISHED_RESULTS, published, (
        f"No runs in {store.folder_note(results, quick)} yet: fill it with `python run_all.py{' --quick' * quick} "
        f"--data-dir <your CIFAR-10>` (or the notebooks 01-05, 08, 09). Until then the views show the committed "
        f"study, as a reference: {len(published)} runs on {describe_data(published[0]['data'])}.")


def _figure(title: str, message: str | None = None):
    """A figure outside pyplot: the inline backend never shows it by itself (from a widget's callback it would go
    to JupyterLab's log console); the notebook displays it, or an image widget shows its PNG."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4.8))
    ax = fig.subplots()
    ax.set_title(title)
    if message:
        ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
        ax.set_axis_off()
    return fig, ax


def _spread(choice: dict) -> dict:
    """Mean with the min-max range over seeds, or one line per seed."""
    return dict(units="seed", estimator=None) if choice["seeds"] == "each" else dict(errorbar=seed_range)


def view_curves(records: list[dict], results_dir: Path | str, choice: dict):
    """One panel per sparsity (small multiples where the choice is "all"), a line per arm and schedule in each."""
    import seaborn as sns
    from matplotlib.figure import Figure
    runs = chosen(records, choice)
    if not runs:
        return _figure("Validation accuracy against cumulative epoch", "no runs for this choice")[0]
    h = history_table(runs).assign(sparsity=lambda t: t.sparsity.map(level))
    levels = sorted(h.sparsity.unique(), key=float)
    series = list(dict.fromkeys(h.series))
    palette = dict(zip(series, sns.color_palette("deep", len(series))))  # one colour per series in every panel
    cols, rows = min(3, len(levels)), -(-len(levels) // 3)
    fig = Figure(figsize=(10, 4.8) if cols == 1 else (4.2 * cols, 3.2 * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    for ax, p in zip(axes, levels):
        sns.lineplot(data=h[h.sparsity == p], x="cum_epoch", y="val_acc", hue="series", hue_order=series,
                     palette=palette, ax=ax, legend=False, **_spread(choice))
        ax.set(xlabel=words("cum_epoch"), ylabel=words("val_acc"), title=f"sparsity {p}")
        percent(ax)
    for ax in axes[len(levels):]:
        ax.set_axis_off()
    from matplotlib.lines import Line2D
    fig.legend([Line2D([], [], color=palette[s]) for s in series], series, loc="outside lower center",
               ncol=min(3, len(series)), fontsize=9)
    fig.suptitle("Validation accuracy against cumulative epoch" + (", a panel per sparsity" if cols > 1 else ""))
    caveat(axes[0], h)
    return fig


def view_final(records: list[dict], results_dir: Path | str, choice: dict):
    """One series per arm and schedule: the 5-round sweep joins its sparsities, the classic curve is drawn round by
    round, and a schedule measured at one sparsity is a mark of its own; no line joins two protocols."""
    import seaborn as sns
    runs = chosen(records, {**choice, "sparsity": "all"})
    fig, ax = _figure("Final validation accuracy against sparsity (the classic curve: after each of its rounds)\n"
                      + ("one line per seed" if choice["seeds"] == "each" else "mean over seeds; bars: min-max"),
                      None if runs else "no runs for this choice")
    if runs:
        points = final_points(runs)
        sns.lineplot(data=points.assign(sparsity=100 * points.sparsity), x="sparsity", y="val_acc", hue="arm",
                     style="schedule", marker="o", ax=ax, err_style="bars", **_spread(choice))
        ax.set(xlabel="sparsity (% of the weights pruned)", ylabel=words("val_acc"))
        percent(ax)
        outside_legend(ax)
        caveat(ax, points)
    return fig


def final_points(runs: list[dict]):
    """One row per run and series: its final accuracy at its sparsity; a classic-curve run gives a row per round."""
    import pandas as pd
    rows = []
    for r in runs:
        ends = {e["round"]: e for e in r["history"] if e["round"] > 0}  # the last epoch of each round
        rounds = ends if is_classic(r["params"]) else {max(ends): ends[max(ends)]}
        rows += [{**labels(r), "seed": r["params"]["seed"], "sparsity": e["sparsity"], "val_acc": e["val_acc"]}
                 for e in rounds.values()]
    return pd.DataFrame(rows)


def view_layers(records: list[dict], results_dir: Path | str, choice: dict):
    import pandas as pd
    import seaborn as sns
    runs = chosen(records, choice)
    fig, ax = _figure("Sparsity of each layer at the end of the run", None if runs else "no runs for this choice")
    if runs:
        rows = [{"run": f"{labels(r)['series']}, p = {level(r['params']['sparsity'])}", "seed": r["params"]["seed"],
                 "layer": k.removesuffix(".weight"), "layer sparsity": v}
                for r in runs for k, v in r["history"][-1]["layer_sparsity"].items()]
        sns.barplot(data=pd.DataFrame(rows), x="layer", y="layer sparsity", hue="run", errorbar=seed_range, ax=ax)
        ax.tick_params(axis="x", rotation=45)
        outside_legend(ax)
    return fig


def view_init_magnitudes(records: list[dict], results_dir: Path | str, choice: dict):
    import pandas as pd
    import seaborn as sns
    runs = runs_with_masks(records, results_dir, choice)
    if "lottery" in runs:  # the ticket-mask arm trains the ticket's own masks: its curves would hide the ticket's
        runs.pop("fixed_mask", None)
    fig, ax = _figure("|θ0| of the weights each mask kept and pruned (relative to the layer's largest)"
                      + ("\nticket mask, fresh init: the ticket's own masks, drawn once as the ticket's"
                         if "fixed_mask" in choice["arms"] and "lottery" in runs else ""),
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
            rows += [{"arm": ARMS[arm].label, "kept": kept, "|θ0|": float(v)}
                     for kept, vals in (("kept", w[m]), ("pruned", w[~m]))
                     for v in vals[torch.randperm(len(vals), generator=torch.Generator().manual_seed(0))[:2000]]]
    if rows:
        df = pd.DataFrame(rows)
        df["mask"] = df.arm + ", " + df.kept
        sns.kdeplot(data=df, x="|θ0|", hue="mask", common_norm=False, ax=ax, clip=(0, 1))
        ax.set(ylim=(0, None), ylabel="density (each mask's own)")
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1))
    return fig


def view_overlap(records: list[dict], results_dir: Path | str, choice: dict):
    """Mask overlap (fraction of the first mask's survivors the second keeps), each beside its chance value; masks
    compare at one sparsity."""
    import pandas as pd
    import seaborn as sns
    if choice["sparsity"] == "all":
        return _figure("Mask overlap: shared survivors, against chance", "choose one sparsity: masks compare at one")[0]
    runs = runs_with_masks(records, results_dir, choice)
    rows = []
    if "lottery" in runs and "random" in runs:
        rows.append((f"{ARMS['lottery'].label} vs {ARMS['random'].label}, same sparsity",
                     overlap(*(runs[a][1][max(runs[a][1])] for a in ("lottery", "random")))))
    for arm, (r, masks) in runs.items():
        final = masks[max(masks)]
        # Masks nest (a round prunes only survivors), so a ticket against its own earlier masks says nothing; what
        # round 1 would have kept, pruning to p at once from the same weights, says how early the ticket was chosen.
        if r["params"]["strategy"] == "magnitude":
            try:
                state = store.load_phase0(results_dir, r)["state"]
            except UNREADABLE:
                continue
            rows.append((f"{ARMS[arm].label} vs one-shot at round 1", overlap(final, one_shot_masks(
                {k: state[k] for k in final}, r["params"]["sparsity"]))))
    for arm in runs:  # the same arm's ticket across seeds, where several seeds saved masks
        others = [r for r in chosen(records, {**choice, "arms": [arm]}) if r["params"]["seed"] != choice["seed"]
                  and store.record_file(results_dir, r, ".masks.npz").exists()]
        for o in others:
            try:
                m = store.load_masks(results_dir, o)
            except UNREADABLE:
                continue
            rows.append((f"{ARMS[arm].label}: seed {choice['seed']} vs seed {o['params']['seed']}",
                         overlap(runs[arm][1][max(runs[arm][1])], m[max(m)])))
    fig, ax = _figure("Mask overlap: shared survivors, against chance",
                      None if rows else "no saved masks for this choice (runs from before masks were kept)")
    if rows:
        df = pd.DataFrame([{"comparison": name, "value": o[key], "what": what} for name, o in rows
                           for key, what in (("shared", "measured"), ("shared_chance", "chance"))])
        sns.barplot(data=df, y="comparison", x="value", hue="what", ax=ax)
        ax.set(xlim=(0, 1), xlabel="fraction of the first mask's survivors the second keeps", ylabel="")
        outside_legend(ax)
    return fig


VIEWS: dict[str, Callable] = {"accuracy curves": view_curves, "final accuracy": view_final,
                              "layer sparsity": view_layers, "initial magnitudes": view_init_magnitudes,
                              "mask overlap": view_overlap}
