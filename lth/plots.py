"""Plots: the study's figures, each saved under a name declared once (`lth.spec.figure_names`), so no two notebooks
write one file."""
from __future__ import annotations

from pathlib import Path

from lth.spec import ARMS, figure_names, is_classic


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
    fig.savefig(path, dpi=120, bbox_inches="tight")
    print(f"figure saved: figures/{path.name}")  # which execution wrote which file: each has one owner
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


def arm_curves(records: list[dict], name: str) -> list[tuple[str, object]]:
    """An arm's validation accuracy through training, one figure per parameter family (the classic curve apart),
    each with the name `ARMS` declares for it; the lines are what varies within the family."""
    from lth.report import history_table
    arm, out = ARMS[name], []
    for classic in (False, True):
        family = [r for r in records if r["experiment"] == name and is_classic(r["params"]) == classic]
        if not family:
            continue
        history = history_table(family)
        history["schedule"] = history["rounds"].astype(str) + " × " + history["epochs"].astype(str)
        hue = next((k for k in ("sparsity", "schedule", "model") if history[k].nunique() > 1), "sparsity")
        title = f"{arm.label}{', classic curve' if classic else ''}: validation accuracy by {hue}"
        out.append((f"{arm.figure}{'_classic' if classic else ''}",
                    plot_curves(history, hue=hue, title=title, palette="deep" if hue != "sparsity" else "viridis")))
    return out
