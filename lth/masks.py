"""What the saved masks say: the runs of a choice whose masks were kept, how much two masks share (beside chance),
what a one-shot prune would have kept, and the findings the summary states from them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import helpers as H
from lth import store
from lth.identity import setup_label
from lth.report import UNREADABLE


def overlap(a: H.Masks, b: H.Masks) -> dict[str, float]:
    """How much two masks keep the same weights: the fraction of a's survivors that b keeps too, and the Jaccard
    index of the two survivor sets, each beside its value for independent masks with the same per-layer counts."""
    both = sum(int((a[k] & b[k]).sum()) for k in a)
    na, nb = sum(int(a[k].sum()) for k in a), sum(int(b[k].sum()) for k in a)
    chance = sum(int(a[k].sum()) * int(b[k].sum()) / a[k].numel() for k in a)
    return {"shared": both / na, "shared_chance": chance / na,
            "jaccard": both / (na + nb - both), "jaccard_chance": chance / (na + nb - chance)}


def one_shot_masks(weights: dict[str, torch.Tensor], sparsity: float) -> H.Masks:
    """Magnitude masks pruning `sparsity` of every layer at once: what a one-shot prune of `weights` would keep."""
    keep = lambda w: w.numel() - round(sparsity * w.numel())
    return {k: H.keep_top(w.abs().float(), keep(w), torch.ones_like(w, dtype=torch.bool)) for k, w in weights.items()}


def chosen(records: list[dict], choice: dict) -> list[dict]:
    """The records of `choice`: its arms, its model, and its sparsity ("all": every one)."""
    return [r for r in records if r["experiment"] in choice["arms"] and setup_label(r) == choice["model"]
            and (choice["sparsity"] == "all" or np.isclose(r["params"]["sparsity"], choice["sparsity"]))]


def runs_with_masks(records: list[dict], results_dir: Path | str, choice: dict,
                    skipped: list[str] | None = None) -> dict[str, tuple[dict, dict]]:
    """The chosen runs (at choice['seed']) whose masks were saved: experiment -> (record, {round: masks}); a mask
    file that cannot be read is named in `skipped`."""
    out = {}
    for r in chosen(records, choice):
        if (r["params"]["seed"] == choice["seed"] and store.record_file(results_dir, r, ".masks.npz").exists()
                and r["experiment"] not in out):
            try:
                out[r["experiment"]] = (r, store.load_masks(results_dir, r))
            except UNREADABLE as e:
                (skipped if skipped is not None else []).append(str(e))
    return out


def mask_findings(records: list[dict], results_dir: Path | str, sparsity: float = 0.5,
                  skipped: list[str] | None = None) -> list[str]:
    """Findings from the saved masks at `sparsity`, per seed that has them: lottery against random, and how much of
    the ticket a one-shot prune at round 1 would already have chosen; each beside its chance value. A file that
    cannot be read is named in `skipped`, and the rest goes on."""
    out, skipped = [], skipped if skipped is not None else []
    models = sorted({setup_label(r) for r in records if r["experiment"] == "lottery"})
    for model, seed in [(m, s) for m in models for s in sorted({r["params"]["seed"] for r in records})]:
        choice = {"arms": ["lottery", "random"], "model": model, "sparsity": sparsity, "seed": seed}
        who = f"{model}: " if len(models) > 1 else ""
        runs = runs_with_masks(records, results_dir, choice, skipped)
        if "lottery" not in runs:
            if any(r["params"]["seed"] == seed for r in chosen(records, {**choice, "arms": ["lottery"]})):
                out.append(f"{who}Seed {seed}, {sparsity:.0%}: its lottery run was made before masks were saved, so "
                           "it has none to compare (magnitude masks cannot be rebuilt without retraining).")
            continue
        r, masks = runs["lottery"]
        final = masks[max(masks)]
        if "random" in runs:
            o = overlap(final, runs["random"][1][max(runs["random"][1])])
            out.append(f"{who}Seed {seed}, {sparsity:.0%}: the ticket and random pruning share {o['shared']:.1%} "
                       f"of their survivors (chance {o['shared_chance']:.1%}; Jaccard {o['jaccard']:.3f}, chance "
                       f"{o['jaccard_chance']:.3f}).")
        try:
            state = store.load_phase0(results_dir, r)["state"]
        except UNREADABLE as e:
            skipped.append(str(e))
            continue
        o = overlap(final, one_shot_masks({k: state[k] for k in final}, sparsity))
        out.append(f"{who}Seed {seed}, {sparsity:.0%}: {o['shared']:.1%} of the ticket's survivors after {max(masks)} "
                   f"rounds are among those a one-shot prune to {sparsity:.0%} would have kept at round 1 (chance "
                   f"{o['shared_chance']:.1%}).")
    return out or [f"No lottery run at {sparsity:.0%} has saved masks yet (the runs made before masks were kept lack "
                   "them; magnitude masks cannot be rebuilt without retraining)."]
