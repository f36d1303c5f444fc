"""The report: tables of runs, the findings as sentences, each comparison with its verdict (paired by seed where the
runs share phase 0: lth.verdicts), and each run's reading; every number is computed from the records when a notebook
runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lth import store
from lth.classic import (
    classic_curve,
    drop_text,
    first_drops,
    mean_levels,
    shared_phase0,
    sharing_phase0,
)
from lth.identity import DamagedFile, ResultMismatch, configuration, configurations
from lth.spec import ARMS, CLASSIC, RunSpec, arm_label, is_classic, model_label, plural, pruned_arms
from lth.verdicts import Comparison, by_seed, compare_seeds, later_count, paired, points, standing

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


def findings(records: list[dict], batchnorm: bool = True, dropout: float = 0.0, rounds: int = 5,
             epochs: int = 5, partners: list[dict] = ()) -> list[str]:
    """The study's findings as sentences, every number computed from `records` (means, ranges over seeds): each arm
    of `ARMS` in turn, by the block its entry names, then the classic curve."""
    groups = configurations(records)  # one network and its settings: the study's first, never two pooled
    records = next(iter(groups.values())) if groups else []
    ask = Findings(records, dict(batchnorm=batchnorm, dropout=dropout), rounds, epochs, partners)
    out = [QUICK_CAVEAT] if ask.quick else []
    for name, arm in ARMS.items():
        out += getattr(ask, arm.findings)(name) if arm.findings != "levels" else []
    out += classic_findings(records, ask.model)
    for name, arm in ARMS.items():  # level by level on the classic curve, once the curve itself is stated
        out += ask.levels(name) if arm.findings == "levels" else []
    return out


class Findings:
    """The blocks of findings an arm's entry can name, over one model's records and one schedule (R rounds x E).
    Every comparison is paired by seed where the two runs share their phase 0 (`compare_seeds`)."""

    def __init__(self, records: list[dict], model: dict, rounds: int, epochs: int, partners: list[dict] = ()):
        self.records, self.model, self.rounds, self.epochs = records, model, rounds, epochs
        self.partners = list(partners)  # runs from late rewinding's own phase 0: they pair with it, never pool
        self.quick = is_quick(records)

    def pair(self, a: list[dict], b: list[dict]) -> Comparison:
        return compare_seeds(by_seed(a), by_seed(b), self.quick)

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
        return [f"Dense baseline ({epochs} epochs, trained to convergence): {spread(accs)}."] if accs else []

    def sweep(self, name: str) -> list[str]:
        """The ticket against the arm it is compared with, at every sparsity of the lab's figure."""
        other = ARMS[name].against[0]
        phase0 = {r["params"]["seed"]: phase0_acc(r) for e in (name, other)
                  for r in self.runs(e, rounds=self.rounds, epochs=self.epochs)}
        converged, p0 = self.accs("baseline"), list(phase0.values())
        out = [f"Dense network after phase 0 ({self.epochs} epochs, as long as each pruned phase: the equal-epochs "
               f"reference of every gain stated below): {spread(p0)}" + (
                   f"; the 25-epoch baseline, trained to convergence, is {points(np.mean(converged) - np.mean(p0))} "
                   f"above it ({spread(converged)})" if converged else "") + "."] if phase0 else []
        for p in self.sparsities(name, other):
            ticket, control = self.runs(name, **self.schedule(p)), self.runs(other, **self.schedule(p))
            if ticket and control:
                a, b = ARMS[name].label, ARMS[other].label
                lead = self.pair(ticket, control)
                out.append(f"Sparsity {p:.0%}: {a} {spread(acc(ticket))}, {b} {spread(acc(control))}: the ticket "
                           f"{standing(lead.diff)} ({lead.said}); against the phase 0 of the same seeds "
                           f"(equal epochs): {a} {self.gain(name, **self.schedule(p))}, "
                           f"{b} {self.gain(other, **self.schedule(p))}.")
        return out

    def in_sweep(self, name: str) -> list[str]:
        return []  # stated by the arm that is compared with it

    def reinit(self, name: str) -> list[str]:
        out = []
        for p in self.sparsities(name):
            arm = self.runs(name, **self.schedule(p))
            line = f"{ARMS[name].label.capitalize()} at {p:.0%}: {spread(acc(arm))}"
            for other, said_as in zip(ARMS[name].against, ("the rewound ticket", "random pruning")):
                runs = self.runs(other, **self.schedule(p))
                if runs:
                    c = self.pair(arm, runs)
                    line += f"{',' if other == ARMS[name].against[0] else ' and'} {points(c.diff)} against {said_as} " \
                            f"({c.said})"
            out.append(line + ".")
        return out

    def rounds_vs_epochs(self, name: str) -> list[str]:
        out = []
        for rounds, epochs in sorted({(r["params"]["rounds"], r["params"]["epochs"]) for r in self.runs(name)}):
            same = self.runs(name, rounds=rounds, epochs=epochs)
            accs, dense = acc(same), [phase0_acc(r) for r in same]
            diffs = [a - d for a, d in zip(accs, dense)]
            said = paired(diffs, self.quick).said
            out.append(f"{plural(rounds, 'round')} × {epochs} epochs to 50% ({epochs * (rounds + 1)} epochs in all, "
                       f"phase 0 included): {spread(accs)}, {points(np.mean(diffs))} against the dense network trained "
                       f"as long as its last phase ({epochs} epochs, the same seeds: {spread(dense)}; {said}).")
        return out

    def levels(self, name: str) -> list[str]:
        """A classic-curve arm against each arm its entry names, level by level (the end of each round), paired by
        seed where the runs share phase 0; and where each first falls more than 2 points below its phase 0."""
        curve = classic_curve(self.records + self.partners, self.model)
        out = []
        for other in ARMS[name].against:
            a = curve[curve.experiment == name]
            b = sharing_phase0(a, curve[curve.experiment == other])
            a, b = a[a["round"] > 0], b[b["round"] > 0]
            if a.empty or b.empty:
                continue
            pairs = [(rows["remaining (%)"].mean(), compare_seeds(seed_values(rows), seed_values(b[b["round"] == k]),
                                                                  self.quick))
                     for k, rows in a.groupby("round") if (b["round"] == k).any()]
            clear = [f"{left:.1f}% left ({points(c.diff)})" for left, c in pairs if c.clear]
            line = (f"{ARMS[name].label.capitalize()} against {ARMS[other].label} on the classic curve, level by "
                    f"level ({plural(a.seed.nunique(), 'seed')} against {b.seed.nunique()}): ")
            widths = [c.width for _, c in pairs if c.width is not None]
            if not widths:  # quick, unpaired, or one seed
                line += f"{points(np.mean([c.diff for _, c in pairs]))} on average; {pairs[0][1].said}"
            else:
                line += ((f"paired by seed, clear (the 95% interval of the mean difference excludes zero) at "
                          f"{len(clear)} of {len(pairs)} levels: {', '.join(clear)}" if clear else
                          f"paired by seed, not clear at any of the {len(pairs)} levels (the 95% interval of the mean "
                          "difference includes zero at each)")
                         + (f"; not clear at the other {len(pairs) - len(clear)}" if clear and len(clear) < len(pairs)
                            else "")
                         + f" (interval widths {min(widths):.2f}-{max(widths):.2f} points)"
                         + "".join(f"; {x}" for x in sorted({c.left_out for _, c in pairs if c.left_out})))
            both = curve[curve.name.isin(set(a.name) | set(b.name))]
            drops = [first_drops(both, e) for e in (name, other)]
            if all(drops):
                shared = {s for s in set(a.seed) if set(a[a.seed == s].phase0) == set(b[b.seed == s].phase0)}
                line += (f". First more than 2 points below the dense phase 0, seed by seed: "
                         f"{' / '.join(map(drop_text, drops[0].values()))} of the weights left against "
                         f"{' / '.join(map(drop_text, drops[1].values()))} ({later_count(*drops, shared)})")
            out.append(line + ".")
        return out

    def compare(self, name: str) -> list[str]:
        """Any other arm: at each sparsity of the schedule, against each arm its entry names, with the verdict."""
        out = []
        for p in self.sparsities(name):
            arm = self.runs(name, **self.schedule(p))
            line = (f"{ARMS[name].label} at {p:.0%}: {spread(acc(arm))}, {self.gain(name, **self.schedule(p))} "
                    "against its phase 0")
            for other in ARMS[name].against:
                runs = self.runs(other, **self.schedule(p))
                if runs:
                    c = self.pair(arm, runs)
                    line += f"; {points(c.diff)} against {ARMS[other].label} ({c.said})"
            out.append(line + ".")
        return out


def acc(records: list[dict]) -> list[float]:
    return [r["final_val_acc"] for r in records]


def seed_values(rows) -> dict[int, tuple[float, str]]:
    """Classic-curve rows of one arm and level: seed -> (accuracy, its phase 0)."""
    return {int(r.seed): (r.val_acc, r.phase0) for r in rows.itertuples()}


QUICK_CAVEAT = ("**Quick run: not meaningful.** A few thousand images and one epoch a phase check that the pipeline "
                "runs; the accuracies below are near chance, and no verdict is drawn from them.")


def is_quick(records: list[dict]) -> bool:
    """Runs on a subset of the data (run_all.py --quick): they check the pipeline, they measure nothing."""
    return any(r["data"].get("subset") for r in records)



def classic_findings(records: list[dict], model: dict) -> list[str]:
    curve = classic_curve(records, model)
    if curve.empty:
        return []
    out = [f"Classic curve (20% of the survivors pruned a round, {CLASSIC['epochs']} epochs a round): dense phase 0 "
           f"{spread(list(shared_phase0(curve)))}."]
    pruned = curve[curve["round"] > 0]
    for arm in [a for a in ARMS if a in set(pruned.experiment)]:  # in the order of the table of arms
        # each arm against its own seeds' phase 0, so that an arm with fewer seeds is not read against others'
        seeds, dense, mean = mean_levels(curve, arm)
        below, best = mean[mean.state == "below"].head(1), mean.loc[mean.val_acc.idxmax()]
        at = mean[mean.state == "at"]
        at = at[at.remaining > (below.remaining.iloc[0] if len(below) else 0)].head(1)
        who = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, seeds))}"
        line = f"{ARMS[arm].label.capitalize()} ({who}; their phase 0 {dense:.2%}): " + (
            f"at the threshold, within one test image of 2 points below the dense phase 0, at "
            f"{at.remaining.iloc[0]:.1f}% of the weights left ({at.val_acc.iloc[0]:.3%}); " if len(at) else "") + (
            f"first more than 2 points below the dense phase 0 at {below.remaining.iloc[0]:.1f}% of the weights "
            f"left ({below.val_acc.iloc[0]:.2%})" if len(below) else
            f"never more than 2 points below it, down to {mean.remaining.min():.1f}% of the weights left "
            f"({mean.val_acc.iloc[-1]:.2%})") + f"; best {best.val_acc:.2%} at {best.remaining:.1f}% left."
        if len(seeds) > 1:
            each = ", ".join(map(drop_text, first_drops(curve, arm).values()))
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
