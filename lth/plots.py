"""Plots: the study's figures, each saved under a name declared once (`lth.spec.figure_names`), so no two notebooks
write one file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lth import report
from lth.files import atomic_write
from lth.spec import ARMS, figure_names, is_classic, plural


def style() -> None:
    import seaborn as sns
    sns.set_theme(style="whitegrid", context="notebook")


def save_figure(fig, name: str, results_dir: Path | str) -> Path:
    """Save under <results>/figures/ as PNG, readable on GitHub; `name` must be declared in `figure_names()`."""
    if name not in figure_names():
        raise ValueError(f"figure {name!r} is not declared: add it to lth.spec (an arm's figures, or "
                         "SUMMARY_FIGURES), so that no two notebooks write one file.")
    path = Path(results_dir) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))  # never half a PNG
    print(f"figure saved: figures/{path.name}")  # which execution wrote which file: each has one owner
    return path


WORDS = {"cum_epoch": "cumulative epoch", "val_acc": "validation accuracy",
         "final_val_acc": "final validation accuracy", "schedule": "rounds × epochs a round", "series": "arm, schedule"}


def seed_range(values):
    """Min-max over seeds, never inside the mean: seeds of equal accuracy give a mean a rounding error above their
    max, and matplotlib refuses the negative error bar that makes."""
    return min(values.min(), values.mean()), max(values.max(), values.mean())


def words(column: str) -> str:
    """An axis or legend title in words, not a field name."""
    return WORDS.get(column, column.replace("_", " "))


def level(value) -> str:
    """A legend entry: 0.9450244186112 -> '0.945'."""
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def seeds_note(table, by: list[str], bars: str = "band") -> str:
    """How many seeds each point (a group of `by`) averages: points of one figure may have different counts."""
    counts = table.groupby(by)["seed"].nunique() if by else table[["seed"]].nunique()
    lo, hi = counts.min(), counts.max()
    if hi == 1:
        return "1 seed"
    counted = f"mean of {lo}-{hi} seeds a point" if lo < hi else f"mean of {hi} seeds"
    return f"{counted}; {bars}: min-max over the seeds"


def percent(ax) -> None:
    """Accuracy on the y axis in percent, as every label and finding states it."""
    from matplotlib.ticker import PercentFormatter
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def outside_legend(ax, title: str | None = None) -> None:
    """Legends right of the axes, never over the data."""
    if ax.get_legend() is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9,
                  title=title if title is not None else ax.get_legend().get_title().get_text() or None)


def caveat(ax, table) -> None:
    """A quick run measures nothing: the figure says so, and shows accuracy on its full scale rather than magnify
    the noise around chance."""
    if "quick" in table and table["quick"].any():
        ax.set_title(f"{ax.get_title()}\nquick run: not meaningful (a pipeline check on a few images)")
        ax.set_ylim(0, 1)


def plot_curves(history, hue: str | None, title: str, ax=None, baseline=None, palette: str = "viridis",
                style: str | None = None):
    """Validation accuracy against cumulative epoch, one line per `hue` (and `style`) value, mean and range over
    seeds; dotted verticals mark where a round pruned and reset the survivors; `baseline`, dense runs on a schedule
    of their own, is the level they ended at (dashed)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 5.5))
    order = [level(v) for v in sorted(history[hue].unique())] if hue else None
    history = history.assign(**{hue: history[hue].map(level)}) if hue else history
    # solid against dotted: two arms told apart at a glance, and neither like the baseline's long dashes
    dashes = dict(zip(sorted(history[style].unique()), ("", (1.5, 1.5), (4, 1.5, 1, 1.5)))) if style else True
    sns.lineplot(data=history, x="cum_epoch", y="val_acc", hue=hue, hue_order=order, style=style, dashes=dashes,
                 palette=palette if hue else None, marker=None if style else "o", markersize=3, errorbar=seed_range,
                 ax=ax)
    round_edges(ax, history)
    reference(ax, baseline)
    note = seeds_note(history, [c for c in (hue, style) if c])
    ax.set(xlabel=words("cum_epoch"), ylabel=words("val_acc"), title=f"{title}\n{note}")
    percent(ax)
    outside_legend(ax)
    caveat(ax, history)
    return ax


def round_edges(ax, history) -> None:
    """Dotted verticals where a round pruned and reset the survivors."""
    for edge in history.loc[history["round"] > 0].groupby(["name", "round"])["cum_epoch"].min().unique() - 0.5:
        ax.axvline(edge, color="grey", lw=0.6, ls=":")


def reference(ax, baseline) -> None:
    """The dense baseline as the level its runs ended at: it trains on a schedule of its own (25 epochs, one
    learning-rate decay), so its curve would not meet a pruned run's phases."""
    if baseline is not None and len(baseline):
        final, epochs = baseline.groupby("name").val_acc.last().mean(), int(baseline.cum_epoch.max())
        ax.axhline(final, color="black", ls="--", lw=1.2,
                   label=f"dense baseline after {epochs} epochs, its own schedule ({final:.1%})")


def plot_panels(history, col: str, title: str, baseline=None, style: str | None = None):
    """Small multiples: one panel per `col` value (a sparsity, a schedule), the arms in each told apart by `style`,
    rounds dotted, the dense baseline a dashed level; one scale (percent) for all. Returns the figure."""
    import seaborn as sns
    values = sorted(history[col].unique())
    history = history.assign(**{col: history[col].map(level)})
    grid = sns.relplot(data=history, x="cum_epoch", y="val_acc", col=col, col_order=[level(v) for v in values],
                       hue=style, style=style, kind="line", errorbar=seed_range, col_wrap=min(3, len(values)),
                       height=3.3, aspect=1.25, facet_kws={"sharex": False})
    for value, ax in grid.axes_dict.items():
        round_edges(ax, history[history[col] == value])
        reference(ax, baseline)
        percent(ax)
    grid.set_axis_labels(words("cum_epoch"), words("val_acc"))
    grid.set_titles(f"{words(col)} {{col_name}}")
    level_note = "; dashed: the dense baseline's final level" if baseline is not None and len(baseline) else ""
    quick = " · quick run: not meaningful" if "quick" in history and history["quick"].any() else ""
    grid.figure.suptitle(f"{title}{quick}\n{seeds_note(history, [col, style] if style else [col])}; dotted: a round "
                         f"prunes and resets the survivors{level_note}", y=1.04)
    return grid.figure


def plot_final(table, x: str, hue: str, title: str, ax=None, references: dict[str, float] | None = None):
    """Final validation accuracy against `x`, one line per `hue` (mean, with the range over seeds as bars), the arms
    set side by side at each x so no mark hides another; each of `references` (label -> accuracy, e.g. the dense
    baseline) is a horizontal line."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    arms = list(dict.fromkeys(table[hue]))
    sns.pointplot(data=table, x=x, y="final_val_acc", hue=hue, hue_order=arms, dodge=0.35 if len(arms) > 1 else False,
                  errorbar=seed_range,
                  capsize=0.1, markers=["o", "s", "^", "D", "v"][:len(arms)], markersize=6, linewidth=1.5,
                  err_kws={"linewidth": 1.2}, ax=ax)
    for (label, acc), ls in zip((references or {}).items(), ("--", ":", "-.")):
        ax.axhline(acc, color="black", ls=ls, lw=1.2, label=f"{label} ({acc:.2%})")
    note = seeds_note(table, [x, hue], "bars")
    ax.set(xlabel=words(x), ylabel=words("final_val_acc"), title=f"{title}\n{note}")
    percent(ax)
    outside_legend(ax, words(hue))
    caveat(ax, table)
    return ax


def configurations_table(groups: dict[str, list[dict]], batchnorm: bool, dropout: float, rounds: int, epochs: int,
                         sparsity: float = 0.5):
    """The lab's figure at `sparsity` for every configuration: its runs of the lab's arms (lottery, random
    pruning, re-init each round) on that schedule, with its configuration and its own 25-epoch baseline."""
    import pandas as pd
    panels = []
    for name, records in groups.items():
        runs = report.runs_table(records)
        flags = (runs.batchnorm == batchnorm) & (runs.dropout == dropout)
        lab = runs[flags & runs.experiment.isin(["lottery", "random", "reinit"]) & (runs.rounds == rounds)
                   & (runs.epochs == epochs) & np.isclose(runs.sparsity, sparsity)]
        dense = runs[flags & (runs.experiment == "baseline")].final_val_acc
        panels.append(lab.assign(configuration=name, baseline=dense.mean() if len(dense) else np.nan))
    return pd.concat(panels) if panels else pd.DataFrame()


def plot_configurations(table):
    """The lab's figure at one sparsity, one panel per configuration (model, settings): each arm's final accuracy
    in percent (mean, with the range over seeds), beside the panel's dense phase 0 and 25-epoch baseline."""
    import seaborn as sns
    table = table.assign(accuracy=100 * table.final_val_acc)
    grid = sns.catplot(data=table, x="arm", y="accuracy", col="configuration", kind="point", errorbar=seed_range,
                       capsize=0.2, linestyle="none", height=4, aspect=0.9, color="C0")
    for name, ax in grid.axes_dict.items():
        panel = table[table.configuration == name]
        for column, ls, label in (("phase0_val_acc", ":", "dense phase 0"), ("baseline", "--", "dense, 25 epochs")):
            value = panel[column].dropna().mean()
            if np.isfinite(value):  # a configuration without a baseline (or phase 0) draws no line
                ax.axhline(100 * value, color="black", ls=ls, lw=1.2, label=f"{label} ({value:.2%})")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), fontsize="small")  # below: never over a point
    grid.set_axis_labels("", "final validation accuracy (%)")
    grid.set_titles("{col_name}")
    sparsity = table.sparsity.iloc[0]
    grid.figure.suptitle(f"Each network at sparsity {sparsity:.0%} (its own dense references), "
                         f"{seeds_note(table, ['configuration', 'arm'], 'bars')}", y=1.04)
    return grid


def plot_rounds_vs_epochs(table, ax=None):
    """Each schedule's final accuracy at 50% beside the dense network trained as long as its last phase (its phase
    0, E epochs): the fair reference, since fewer rounds leave more epochs to each phase."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    both = table.melt(id_vars=["rounds", "epochs", "seed"], value_vars=["final_val_acc", "phase0_val_acc"],
                      var_name="what", value_name="accuracy")
    both["what"] = both["what"].map({"final_val_acc": "pruned to 50%, after the last round",
                                     "phase0_val_acc": "dense, trained as long as the last phase (E epochs)"})
    sns.lineplot(data=both, x="rounds", y="accuracy", hue="what", style="what", markers=True, dashes=["", (4, 2)],
                 errorbar=seed_range, err_style="bars", err_kws={"capsize": 4}, ax=ax)
    schedules = table.groupby("rounds").epochs.first()
    ax.set_xticks(list(schedules.index), labels=[f"{r} × {e}" for r, e in schedules.items()])
    ax.set(xlabel="rounds R × epochs a round E", ylabel=words("val_acc"),
           title=f"Rounds against epochs at 50% sparsity\n{seeds_note(table, ['rounds'], 'bars')}")
    outside_legend(ax, "")
    caveat(ax, table)
    return ax


def plot_classic(curve, ax=None):
    """The classic lottery-ticket figure: accuracy at the end of each round against the weights remaining (log
    axis), one line per arm (mean and range over seeds), the dense phase 0 dotted."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 5))
    pruned = curve[curve["round"] > 0]
    n = pruned.groupby("arm").seed.nunique()
    pruned = pruned.assign(arm=[f"{a} ({plural(n[a], 'seed')})" for a in pruned.arm])
    # the two re-init controls dashed, the rewound tickets solid: five arms told apart without colour alone
    dashes = {a: (4, 1.5) if "init" in a else (1.5, 1.5) if a.startswith(ARMS["random"].label) else ""
              for a in pruned.arm.unique()}
    sns.lineplot(data=pruned, x="remaining (%)", y="val_acc", hue="arm", style="arm", dashes=dashes, marker="o",
                 errorbar=seed_range, ax=ax)
    from lth.classic import phase0_by_seed, shared_phase0
    shared = shared_phase0(curve)
    dense = shared.mean()
    ax.axhline(dense, color="black", ls=":", lw=1.2, label=f"dense phase 0 ({dense:.2%})")
    for name in dict.fromkeys(curve.experiment):  # an arm whose seeds trained a phase 0 of their own says so
        own = phase0_by_seed(curve, name)
        apart = [int(s) for s in own.index if s in shared.index and own[s] != shared[s]]
        if apart:
            ax.axhline(own.mean(), color="grey", ls=":", lw=1,
                       label=f"{ARMS[name].label}'s own phase 0 (seed{'s' * (len(apart) > 1)} "
                             f"{', '.join(map(str, apart))} apart; mean of its seeds {own.mean():.2%})")
    ax.set_xscale("log")
    ax.set_xlim(100, 5)
    ax.set_xticks([100, 50, 20, 10, 5], labels=["100", "50", "20", "10", "5"])
    percent(ax)
    ax.set(xlabel="weights remaining (%, log scale)", ylabel="validation accuracy at the end of the round",
           title=f"Iterative pruning to {pruned['remaining (%)'].min():.1f}% of the weights\n"
                 "mean over each arm's seeds; band: min-max")
    outside_legend(ax)
    return ax


def arm_curves(records: list[dict], name: str) -> list[tuple[str, object]]:
    """An arm's validation accuracy through training, one figure per parameter family (the classic curve apart),
    each under the name `ARMS` declares for it: the lab's multi-line graph, a line per sparsity or schedule where the
    family has several, one line where it has one; for an arm with `panels`, the same lines a panel each beside it."""
    from lth.report import history_table
    arm, out = ARMS[name], []
    for classic in (False, True):
        family = [r for r in records if r["experiment"] == name and is_classic(r["params"]) == classic]
        if not family:
            continue
        history = history_table(family)
        varies = next((k for k in ("sparsity", "schedule", "model") if history[k].nunique() > 1), None)
        title = (f"{arm.label}{', classic curve (20% a round)' if classic else ''}: validation accuracy against "
                 f"cumulative epoch{f', a line per {words(varies)}' if varies else ''}")
        ax = plot_curves(history, hue=varies, title=title, palette="deep" if varies != "sparsity" else "viridis")
        out.append((f"{arm.figure}{'_classic' if classic else ''}", ax.figure))
        if arm.panels and varies and not classic:
            title = f"{arm.label}: validation accuracy against cumulative epoch, a panel per {words(varies)}"
            out.append((f"{arm.figure}_panels", plot_panels(history, col=varies, title=title)))
    return out
