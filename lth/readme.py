"""The README's results section: one row per run (seeds pooled), the findings, the compute; written between its
markers from the published study only."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

import helpers as H
from lth import store
from lth.data import data_identity
from lth.report import findings, phase0_acc
from lth.spec import RunSpec, arm_label, exact, is_classic, model_label
from lth.verdicts import phase0_key


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
