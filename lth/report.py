"""The report: tables of runs, the findings as sentences with a verdict against the range over seeds, the README's
results section and each run's reading; every number is computed from the records when a notebook runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lth import store
from lth.identity import DamagedFile, ResultMismatch, configuration
from lth.spec import ARMS, CLASSIC, RunSpec, is_classic, model_label, plural, pruned_arms

UNREADABLE = (FileNotFoundError, DamagedFile, ResultMismatch)  # a saved file that is skipped, and named


def runs_table(records: list[dict]):
    """One row per run: its parameters, final accuracy (and its dense phase 0's), sparsity, seconds."""
    import pandas as pd
    rows = [{**r["params"], **labels(r), "final_val_acc": r["final_val_acc"],
             "phase0_val_acc": phase0_acc(r), "final_sparsity": r["final_sparsity"], "seconds": r["seconds"],
             "name": r["name"]} for r in records]
    return pd.DataFrame(rows)


def study_markdown() -> str:
    """The study as run_all.py runs it, from `ARMS`: one row per arm, with its parameter sets."""
    rows = ["| notebook | arm | pruning + reset | parameter sets (each for every seed) |", "| --- | --- | --- | --- |"]
    for name, arm in ARMS.items():
        specs = [RunSpec.of(name, **params) for params in arm.plan]
        how = "dense" if not specs[0].rounds else f"{specs[0].strategy} + {specs[0].reset}"
        rows.append(f"| {arm.notebook} | {arm.label} | {how} | {'; '.join(map(describe_run, specs))} |")
    return "\n".join(rows)


def describe_run(spec: RunSpec) -> str:
    if not spec.rounds:
        return f"{model_label(vars(spec))}, {spec.epochs} epochs"
    if is_classic(vars(spec)):
        return (f"classic curve: {spec.rounds} rounds × {spec.epochs} epochs, 20% of the survivors a round, to "
                f"{1 - spec.sparsity:.1%} of the weights")
    return f"p = {spec.sparsity:g}, {spec.rounds} × {spec.epochs}"


def history_table(records: list[dict]):
    """One row per epoch of every run, with the run's parameters; `sparsity` is the run's final p and
    `sparsity_now` the sparsity during that epoch."""
    import pandas as pd
    epoch = lambda e: {("sparsity_now" if k == "sparsity" else k): v for k, v in e.items() if k != "layer_sparsity"}
    return pd.DataFrame([{**r["params"], **labels(r), "name": r["name"], **epoch(e)}
                         for r in records for e in r["history"]])


def labels(record: dict) -> dict:
    """How figures and tables name a run's arm, model and schedule, and its series: one arm on one schedule, so
    that no line or mark joins two protocols."""
    p = record["params"]
    schedule = f"{p['rounds']} × {p['epochs']}" if p["rounds"] else f"dense, {p['epochs']} epochs"
    schedule = f"classic curve, {schedule}" if is_classic(p) else schedule
    arm = arm_label(record)
    series = f"{arm}, {'classic curve' if is_classic(p) else schedule}"
    return {"arm": arm, "model": model_label(p), "schedule": schedule, "series": series, "quick": is_quick([record])}


def arm_label(record: dict) -> str:
    """The arm's label, with the epoch its survivors are rewound to when it is not θ0."""
    epoch = record["params"].get("rewind_epoch", 0)
    return ARMS[record["experiment"]].label + (f" to epoch {epoch}" if epoch else "")


def seed_table(table, index: str, columns: str = "arm"):
    """Final accuracy as 'mean (range, seeds)' for each `index` and `columns` value: a table to read ('-' where
    nothing ran)."""
    cells = table.groupby([index, columns]).final_val_acc.agg(lambda accs: spread(list(accs)))
    return cells.unstack(columns).fillna("-")


def phase0_acc(record: dict) -> float:
    """Validation accuracy of the dense network at the end of phase 0: trained as long as each pruned phase."""
    return [e for e in record["history"] if e["round"] == 0][-1]["val_acc"]


def spread(accs: list[float]) -> str:
    """Mean accuracy, with the range over seeds when there are several: '79.98%' or '79.2% (78.9-79.6, 3 seeds)'."""
    if len(accs) == 1:
        return f"{accs[0]:.2%} (1 seed)"
    return f"{np.mean(accs):.2%} (range {min(accs):.2%}-{max(accs):.2%}, {len(accs)} seeds)"


def verdict(a: list[float], b: list[float], quick: bool = False) -> str:
    """Whether the difference between two arms exceeds what their seeds spread over."""
    if quick:
        return "no verdict on a quick run"
    if min(len(a), len(b)) < 2:
        return "one seed: no range to judge it against"
    if min(a) > max(b) or max(a) < min(b):
        return "beyond the seed range: the ranges do not overlap"
    return "within the seed range: the ranges overlap"


def findings(records: list[dict], batchnorm: bool = True, dropout: float = 0.0, rounds: int = 5,
             epochs: int = 5) -> list[str]:
    """The study's findings as sentences, every number computed from `records` (means, ranges over seeds): each arm
    of `ARMS` in turn, by the block its entry names, then the classic curve."""
    ask = Findings(records, dict(batchnorm=batchnorm, dropout=dropout), rounds, epochs)
    out = [QUICK_CAVEAT] if ask.quick else []
    for name, arm in ARMS.items():
        out += getattr(ask, arm.findings)(name) if arm.findings != "levels" else []
    out += classic_findings(records, ask.model)
    for name, arm in ARMS.items():  # level by level on the classic curve, once the curve itself is stated
        out += ask.levels(name) if arm.findings == "levels" else []
    return out


class Findings:
    """The blocks of findings an arm's entry can name, over one model's records and one schedule (R rounds x E)."""

    def __init__(self, records: list[dict], model: dict, rounds: int, epochs: int):
        self.records, self.model, self.rounds, self.epochs = records, model, rounds, epochs
        self.quick = is_quick(records)

    def verdict(self, a: list[float], b: list[float]) -> str:
        return verdict(a, b, self.quick)

    def runs(self, experiment: str, **where) -> list[dict]:
        return [r for r in self.records if r["experiment"] == experiment and
                all(np.isclose(r["params"][k], v) for k, v in {**self.model, **where}.items())]

    def accs(self, experiment: str, **where) -> list[float]:
        return [r["final_val_acc"] for r in self.runs(experiment, **where)]

    def gain(self, experiment: str, **where) -> str:
        """Against the dense phase 0 of the same seeds, so that an arm with fewer seeds is not read against others'."""
        return points(np.mean([r["final_val_acc"] - phase0_acc(r) for r in self.runs(experiment, **where)]))

    def schedule(self, sparsity: float) -> dict:
        return dict(sparsity=sparsity, rounds=self.rounds, epochs=self.epochs)

    def sparsities(self, *experiments: str) -> list[float]:
        return sorted({r["params"]["sparsity"] for e in experiments for r in self.runs(e, rounds=self.rounds,
                                                                                         epochs=self.epochs)})

    def dense(self, name: str) -> list[str]:
        accs = self.accs(name)
        epochs = "/".join(sorted({str(r["params"]["epochs"]) for r in self.records if r["experiment"] == name}))
        return [f"Dense baseline ({epochs} epochs): {spread(accs)}."] if accs else []

    def sweep(self, name: str) -> list[str]:
        """The ticket against the arm it is compared with, at every sparsity of the lab's figure."""
        other = ARMS[name].against[0]
        phase0 = {r["params"]["seed"]: phase0_acc(r) for e in (name, other)
                  for r in self.runs(e, rounds=self.rounds, epochs=self.epochs)}
        out = [f"Dense network after phase 0 ({self.epochs} epochs, the fair reference): "
               f"{spread(list(phase0.values()))}."] if phase0 else []
        for p in self.sparsities(name, other):
            ticket, control = self.accs(name, **self.schedule(p)), self.accs(other, **self.schedule(p))
            if ticket and control:
                a, b = ARMS[name].label, ARMS[other].label
                out.append(f"Sparsity {p:.0%}: {a} {spread(ticket)}, {b} {spread(control)}: the ticket leads "
                           f"by {points(np.mean(ticket) - np.mean(control))}, {self.verdict(ticket, control)}; "
                           f"against the phase 0 of the same seeds: {a} {self.gain(name, **self.schedule(p))}, "
                           f"{b} {self.gain(other, **self.schedule(p))}.")
        return out

    def in_sweep(self, name: str) -> list[str]:
        return []  # stated by the arm that is compared with it

    def reinit(self, name: str) -> list[str]:
        ticket, control = ARMS[name].against
        out = []
        for p in self.sparsities(name):
            arm, a, b = (self.accs(e, **self.schedule(p)) for e in (name, ticket, control))
            if arm and a:
                out.append(f"{ARMS[name].label.capitalize()} at {p:.0%}: {spread(arm)}, "
                           f"{points(np.mean(arm) - np.mean(a))} against the rewound ticket ({self.verdict(arm, a)})"
                           + (f" and {points(np.mean(arm) - np.mean(b))} against random pruning "
                              f"({self.verdict(arm, b)})" if b else "") + ".")
        return out

    def rounds_vs_epochs(self, name: str) -> list[str]:
        out = []
        for rounds, epochs in sorted({(r["params"]["rounds"], r["params"]["epochs"]) for r in self.runs(name)}):
            same = self.runs(name, rounds=rounds, epochs=epochs)
            accs, dense = [r["final_val_acc"] for r in same], [phase0_acc(r) for r in same]
            out.append(f"{plural(rounds, 'round')} × {epochs} epochs to 50%: {spread(accs)}, "
                       f"{points(np.mean(accs) - np.mean(dense))} against the dense network trained as long as its "
                       f"last phase ({epochs} epochs, the same seeds: {spread(dense)}; {self.verdict(accs, dense)}).")
        return out

    def levels(self, name: str) -> list[str]:
        """A classic-curve arm against each arm its entry names, at each level (the end of each round), and where
        each first falls more than 2 points below the dense phase 0 of its seed."""
        curve = classic_curve(self.records, self.model)
        out = []
        for other in ARMS[name].against:
            a, b = (curve[(curve.experiment == e) & (curve["round"] > 0)] for e in (name, other))
            if a.empty or b.empty:
                continue
            pairs = [(k, list(rows.val_acc), list(b[b["round"] == k].val_acc), rows["remaining (%)"].mean())
                     for k, rows in a.groupby("round") if (b["round"] == k).any()]
            said = {k: self.verdict(x, y) for k, x, y, _ in pairs}
            beyond = [f"{left:.1f}% left ({points(np.mean(x) - np.mean(y))})" for k, x, y, left in pairs
                      if said[k].startswith("beyond")]
            line = (f"{ARMS[name].label.capitalize()} against {ARMS[other].label} on the classic curve, level by "
                    f"level ({plural(a.seed.nunique(), 'seed')} against {b.seed.nunique()}): ")
            if not any(v.startswith(("beyond", "within")) for v in said.values()):  # quick, or one seed
                line += (f"{points(np.mean([np.mean(x) - np.mean(y) for _, x, y, _ in pairs]))} on average; "
                         f"{next(iter(said.values()))}")
            else:
                line += (f"beyond the seed range at {len(beyond)} of {len(pairs)} levels"
                         + (f": {', '.join(beyond)}" if beyond else "")
                         + (f"; within it at the other {len(pairs) - len(beyond)}" if len(beyond) < len(pairs) else ""))
            drops = [first_drops(curve, e) for e in (name, other)]
            if all(drops):
                a_left, b_left = (" / ".join(levels_left(d)) for d in drops)
                line += (f". First more than 2 points below the dense phase 0, seed by seed: {a_left} of the weights "
                         f"left against {b_left} ({self.verdict(drops[0], drops[1])})")
            out.append(line + ".")
        return out

    def compare(self, name: str) -> list[str]:
        """Any other arm: at each sparsity of the schedule, against each arm its entry names, with the verdict."""
        out = []
        for p in self.sparsities(name):
            arm = self.accs(name, **self.schedule(p))
            line = (f"{ARMS[name].label} at {p:.0%}: {spread(arm)}, {self.gain(name, **self.schedule(p))} against "
                    "its phase 0")
            for other in ARMS[name].against:
                accs = self.accs(other, **self.schedule(p))
                if accs:
                    line += (f"; {points(np.mean(arm) - np.mean(accs))} against {ARMS[other].label} "
                             f"({self.verdict(arm, accs)})")
            out.append(line + ".")
        return out


QUICK_CAVEAT = ("**Quick run: not meaningful.** A few thousand images and one epoch a phase check that the pipeline "
                "runs; the accuracies below are near chance, and no verdict is drawn from them.")


def is_quick(records: list[dict]) -> bool:
    """Runs on a subset of the data (run_all.py --quick): they check the pipeline, they measure nothing."""
    return any(r["data"].get("subset") for r in records)


def points(x: float) -> str:
    return f"{100 * x:+.2f} points"


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
        rows += [{"experiment": r["experiment"], "arm": arm_label(r), "seed": p["seed"], "round": k,
                  "remaining (%)": 100 * (1 - e["sparsity"]), "val_acc": e["val_acc"]} for k, e in ends.items()]
    return pd.DataFrame(rows, columns=["experiment", "arm", "seed", "round", "remaining (%)", "val_acc"])


def shared_phase0(curve):
    """Per seed, the dense phase 0 the arms of the classic curve share: the first arm's in the table's order. Only a
    late-rewinding run whose replay of phase 0 left the saved one's path (another machine) has one of its own."""
    phase0 = curve[curve["round"] == 0]
    order = phase0.experiment.map({name: i for i, name in enumerate(ARMS)})
    return phase0.iloc[order.argsort(kind="stable")].groupby("seed").val_acc.first()


def phase0_by_seed(curve, experiment: str):
    """An arm's own dense phase 0 accuracy per seed: the shared one, but for a replay kept whole (`shared_phase0`)."""
    return curve[(curve.experiment == experiment) & (curve["round"] == 0)].groupby("seed").val_acc.first()


def first_drops(curve, experiment: str) -> list[float]:
    """Per seed, the % of weights left where an arm first falls more than 2 points below its own dense phase 0
    (0 when it never does: further than any level); empty when the arm is not on the curve."""
    phase0 = phase0_by_seed(curve, experiment)
    out = []
    for seed, rows in curve[(curve.experiment == experiment) & (curve["round"] > 0)].groupby("seed"):
        below = rows[rows.val_acc < phase0[seed] - 0.02]
        out.append(below["remaining (%)"].iloc[0] if len(below) else 0.0)
    return out


def levels_left(drops: list[float]) -> list[str]:
    return [f"{x:.1f}%" if x else "never" for x in drops]


def classic_findings(records: list[dict], model: dict) -> list[str]:
    curve = classic_curve(records, model)
    if curve.empty:
        return []
    out = [f"Classic curve (20% of the survivors pruned a round, {CLASSIC['epochs']} epochs a round): dense phase 0 "
           f"{spread(list(shared_phase0(curve)))}."]
    pruned = curve[curve["round"] > 0]
    for arm in [a for a in ARMS if a in set(pruned.experiment)]:  # in the order of the table of arms
        rows = pruned[pruned.experiment == arm]
        # each arm against its own seeds' phase 0, so that an arm with fewer seeds is not read against others'
        seeds = sorted(rows.seed.unique())
        dense = phase0_by_seed(curve, arm)[seeds].mean()
        mean = rows.groupby("round").agg(val_acc=("val_acc", "mean"), remaining=("remaining (%)", "mean"))
        below, best = mean[mean.val_acc < dense - 0.02].head(1), mean.loc[mean.val_acc.idxmax()]
        who = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, seeds))}"
        line = f"{ARMS[arm].label.capitalize()} ({who}; their phase 0 {dense:.2%}): " + (
            f"first more than 2 points below the dense phase 0 at {below.remaining.iloc[0]:.1f}% of the weights "
            f"left ({below.val_acc.iloc[0]:.2%})" if len(below) else
            f"never more than 2 points below it, down to {mean.remaining.min():.1f}% of the weights left "
            f"({mean.val_acc.iloc[-1]:.2%})") + f"; best {best.val_acc:.2%} at {best.remaining:.1f}% left."
        if len(seeds) > 1:
            each = ", ".join(levels_left(first_drops(curve, arm)))
            line += f" Seed by seed, first more than 2 points below at: {each}."
        out.append(line)
    return out


def reading(record: dict, results_dir: Path | str) -> str:
    """A run's result in words: against the dense baseline of its model and the other arms at its sparsity."""
    p = record["params"]
    same_model = lambda r: configuration(r) == configuration(record) and all(  # the same network and settings
        r["params"][k] == p[k] for k in ("batchnorm", "dropout", "seed"))
    text = (f"{record['name']}: {record['final_val_acc']:.2%} validation accuracy at sparsity "
            f"{record['final_sparsity']:.1%}")
    if is_quick([record]):
        return (f"{record['name']} is a quick run ({record['data']['subset'][0]:,} training images, {p['epochs']} "
                f"epoch a phase): it checks that the pipeline runs and measures nothing. Its accuracy, "
                f"{record['final_val_acc']:.2%}, is not a result; run it without quick for one.")
    records = store.load_records(results_dir)
    dense = [r for r in records if r["experiment"] == "baseline" and same_model(r)]
    if dense and record["experiment"] != "baseline":
        d = dense[0]["final_val_acc"]
        text += f", {100 * (record['final_val_acc'] - d):+.2f} points against the dense 25-epoch baseline ({d:.2%})"
    if p["rounds"]:  # the fairer reference: the same dense network after the same E epochs
        d = phase0_acc(record)
        text += (f", {100 * (record['final_val_acc'] - d):+.2f} points against its dense phase 0 ({p['epochs']} "
                 f"epochs: {d:.2%})")
    for other in records:
        if other["experiment"] in pruned_arms() and other["experiment"] != record["experiment"] \
                and same_model(other) and all(other["params"][k] == p[k] for k in ("sparsity", "rounds", "epochs")):
            label = ARMS[other["experiment"]].label
            text += f"; {label} at the same sparsity and schedule: {other['final_val_acc']:.2%}"
    return text + "."
