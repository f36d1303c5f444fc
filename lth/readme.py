"""The study's results as text: the full statement the summary shows (one row per run, seeds pooled; the findings;
the compute), and the README's digest of it, written between its markers from the published study only."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

import helpers as H
from lth import store
from lth.classic import classic_curve, drop_text, mean_levels
from lth.data import data_identity
from lth.report import Findings, findings, phase0_acc
from lth.spec import ARMS, RunSpec, arm_label, exact, is_classic, model_label, plural
from lth.verdicts import phase0_key, standing


def results_markdown(records: list[dict], partners: list[dict] = (), **model) -> str:
    """The README's results: one row per run (seeds pooled: mean, range, how many), then the findings."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        p = r["params"]
        label = arm_label(r)
        arm = f"{label}, classic curve (20% a round)" if is_classic(p) else f"{label} p={exact(p['sparsity'])}"
        label = (f"dense baseline, {model_label(p)}, {p['epochs']} epochs" if not p["rounds"] else
                 f"{arm} R={p['rounds']} E={p['epochs']}" +
                 ("" if p["batchnorm"] and not p["dropout"] else f", {model_label(p)}"))
        groups.setdefault(label, []).append(r)
    lines = ["| run | final val acc | seeds | its phase 0 (dense, E epochs) | final sparsity |",
             "| --- | --- | --- | --- | --- |"]
    for label, rs in groups.items():
        accs = [r["final_val_acc"] for r in rs]
        rng = f" ({min(accs):.2%}-{max(accs):.2%})" if len(rs) > 1 else ""
        p0 = "-" if not rs[0]["params"]["rounds"] else f"{np.mean([phase0_acc(r) for r in rs]):.2%}"
        lines.append(f"| {label} | {np.mean(accs):.2%}{rng} | {len(rs)} | {p0} | {rs[0]['final_sparsity']:.4f} |")
    compute = compute_line([*records, *partners])
    said = findings(records, partners=partners, **model)
    return "\n".join(lines + ["", *[f"- {line}" for line in said], "", compute])


def digest(records: list[dict], partners: list[dict] = (), batchnorm: bool = True, dropout: float = 0.0,
           rounds: int = 5, epochs: int = 5) -> str:
    """The README's few lines: each headline comparison, paired by seed, computed from `records` like the full
    findings the summary states."""
    ask = Findings(records, dict(batchnorm=batchnorm, dropout=dropout), rounds, epochs, partners)
    lines = []
    sweep = [(p, ask.pair(ask.runs("lottery", **ask.schedule(p)), ask.runs("random", **ask.schedule(p))))
             for p in ask.sparsities("lottery", "random") if ask.runs("lottery", **ask.schedule(p))
             and ask.runs("random", **ask.schedule(p))]
    if sweep:
        seeds, diffs = len(ask.runs("lottery", **ask.schedule(sweep[-1][0]))), [c.diff for _, c in sweep]
        lines.append(f"**Lottery tickets against random pruning** ({rounds} rounds × {epochs} epochs, "
                     f"{sweep[0][0]:.0%} to {sweep[-1][0]:.0%} sparsity): the ticket "
                     f"{standing(min(diffs), max(diffs))}, clear (paired over {plural(seeds, 'seed')}, the 95% "
                     f"interval excludes zero) at {sum(bool(c.clear) for _, c in sweep)} of {len(sweep)} "
                     "sparsities.")
        p, ticket = sweep[-1][0], ask.runs("lottery", **ask.schedule(sweep[-1][0]))
        converged = ask.accs("baseline")
        lines.append(f"At {p:.0%}, the ticket reaches {np.mean([r['final_val_acc'] for r in ticket]):.2%}, "
                     f"{ask.gain('lottery', **ask.schedule(p))} over the dense network trained as long as each "
                     f"phase ({epochs} epochs, {np.mean([phase0_acc(r) for r in ticket]):.2%}); random pruning "
                     f"{ask.gain('random', **ask.schedule(p))}" + (f". Trained to convergence (25 epochs), the dense "
                                                                     f"network reaches {np.mean(converged):.2%}."
                                                                     if converged else "."))
    curve = classic_curve(records, dict(batchnorm=batchnorm, dropout=dropout))
    if not curve.empty:
        said = [f"{ARMS[a].label} {drop_text((first_drop_of_mean(curve, a), None))}"
                for a in ARMS if a in set(curve.experiment)]
        lines.append(f"**The classic curve** (20% a round, to {curve['remaining (%)'].min():.1f}% of the weights): "
                     f"first more than 2 points below its dense phase 0 (mean of seeds): {'; '.join(said)}.")
    lines += [line.split(". First more")[0] + "." for line in ask.levels("late_rewind")]
    return "\n".join(f"- {line}" for line in lines) + f"\n\n{compute_line([*records, *partners])}"


def first_drop_of_mean(curve, experiment: str) -> float:
    """% of the weights left where an arm's mean over seeds first falls more than 2 points below its phase 0."""
    below = mean_levels(curve, experiment)[2].query("state == 'below'")
    return float(below.remaining.iloc[0]) if len(below) else 0.0


def compute_line(records: list[dict]) -> str:
    """Hours of training in `records`, each shared phase 0 once, by machine. Epoch seconds count only time the
    process ran (`stopped_seconds` were taken out); an epoch timed before that was measured and marked as holding a
    stop of unknown length counts at its run's median epoch."""
    hours, unknown, phase0_seen = Counter(), 0, set()
    for r in records:
        phase0 = (RunSpec(**r["params"]).phase0_name, phase0_key(r))
        median = float(np.median([e["seconds"] for e in r["history"]]))
        for e in r["history"]:
            if e["round"] == 0 and phase0 in phase0_seen:
                continue
            stopped = "stopped_seconds" in e and e["stopped_seconds"] is None
            unknown += stopped
            hours[machine(e.get("device") or r["device"])] += (median if stopped else e["seconds"]) / 3600
        phase0_seen.add(phase0)
    machines = ", ".join(f"{name} {h:.2f} h" for name, h in sorted(hours.items(), key=lambda item: -item[1]))
    return (f"Compute: {sum(hours.values()):.2f} hours of training in these records (each shared phase 0 once; only "
            f"time the process ran), by machine: {machines}."
            + (f" {unknown} epochs timed before stops were measured held a stop of unknown length (longer than "
               f"10 times their run's median epoch): each counts as that median." if unknown else ""))


def machine(device: str) -> str:
    """A record's device as a machine: 'cpu: AMD EPYC, 2 threads, ...' -> 'AMD EPYC (CPU)'; several -> the first."""
    first = device.split("; ")[0]
    kind, _, rest = first.partition(": ")
    return f"{rest.split(', ')[0]} ({kind.upper()})" if rest else first


def write_readme_results(text: str, results_dir: Path | str, records: list[dict],
                         readme: Path = H.ROOT / "README.md") -> str:
    """Replace the README's results between its two markers with `text`, computed from `records`: only from the
    published study, and only when every run in it was made on the folder's data. Says what it did."""
    if not store.is_published(results_dir):
        return f"The README's results are written from {store.PUBLISHED_RESULTS.name}/ only; {results_dir} is not it."
    saved = store.folder_data(results_dir)
    other = [r["name"] for r in records if saved is None or data_identity(r["data"]) != saved["data"]]
    if other:
        return (f"The README's results were not rewritten: {len(other)} runs ({', '.join(other[:3])}) were not made on "
                f"the data named in {Path(results_dir) / store.MANIFEST}.")
    start, end = "<!-- results: written by notebooks/06_summary.ipynb from the records -->", "<!-- end of results -->"
    before, rest = readme.read_text().split(start)
    write_text = before + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    store.atomic_write(readme, lambda f: f.write_text(write_text))
    return f"The README's results were rewritten from these {len(records)} runs."
