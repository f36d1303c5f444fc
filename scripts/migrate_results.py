"""Bring a results folder written by earlier versions to today's layout, once, in place; values are unchanged.

    python scripts/migrate_results.py results [--data-dir DIR]

- `data.json`: the folder's data identity, taken from its records (they must agree).
- phase 0: `checkpoints/phase0/<model>_E<epochs>_seed<seed>.pt` held θ0 and the trained state; θ0 now lives once per
  model and seed in `checkpoints/theta0/`, and each phase 0 is named by its identity and carries it.
- masks: each `*.masks.npz` gains the identity of the run that made it (from its record).
- records: the old `bf16: true/false` hparams key becomes `precision: "bf16"/"fp32"`.
- checksums: every .pt and mask file gains a checksum of its content, checked on every load.
- stops: an epoch timed before stops of the process were measured, and longer than 10 times its run's median
  epoch, is marked `stopped_seconds: null` (it held a stop of unknown length).
- networks: every record, mask file, checkpoint, phase 0 and θ0 gains the fingerprint of the network that made it
  (`lth.identity.network_fingerprint`), once every θ0 in the folder is rebuilt bit for bit by today's code: a folder
  whose θ0 today's networks do not draw again is left as it is, and the script says which.
Running it again changes nothing.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers as H  # noqa: E402
from lth import data, identity, spec, store  # noqa: E402

STOPPED_EPOCH = 10  # contention on 2 cores slowed epochs up to 9x their run's median here; a stop, far more
OLD_PHASE0 = re.compile(r"bn(?P<bn>[01])_do(?P<do>[^_]+)_E(?P<epochs>\d+)_seed(?P<seed>\d+)\.pt")


def today(hparams: dict) -> dict:
    """Hparams saved before `precision` said `bf16: bool`; the key keeps its place."""
    return {("precision" if k == "bf16" else k): (("bf16" if v else "fp32") if k == "bf16" else v)
            for k, v in hparams.items()}


def migrate_records(results: Path) -> int:
    changed = 0
    for path in sorted(results.glob("runs/*/*.json")):
        record = json.loads(path.read_text())
        if "bf16" in record["hparams"]:
            store.write_json(path, {**record, "hparams": today(record["hparams"])})
            changed += 1
    return changed


def migrate_manifest(results: Path) -> None:
    records = store.load_records(results)
    identities = {json.dumps(data.data_identity(r["data"]), sort_keys=True): r["data"] for r in records}
    if len(identities) != 1:
        sys.exit(f"{results}: its records were made on {len(identities)} data sets; split them by hand first.")
    if not (results / store.MANIFEST).exists():
        store.claim_folder(results, next(iter(identities.values())))


def migrate_phase0(results: Path) -> int:
    changed = 0
    for path in sorted((results / "checkpoints" / "phase0").glob("*.pt")):
        match = OLD_PHASE0.fullmatch(path.name)
        if not match:
            continue
        saved = torch.load(path, map_location="cpu", weights_only=True)
        run = spec.RunSpec("baseline", rounds=0, epochs=int(match["epochs"]), batchnorm=match["bn"] == "1",
                           dropout=float(match["do"]), seed=int(match["seed"]))
        hp = H.HParams(**today(saved["hparams"]))
        theta0 = store.theta0_path(results, run)
        if theta0.exists():
            kept = torch.load(theta0, map_location="cpu", weights_only=True)
            assert all(torch.equal(kept[k], v) for k, v in saved["theta0"].items()), f"{path}: another θ0"
        else:
            store.save_atomic(saved["theta0"], theta0)
        store.save_atomic({"identity": identity.phase0_identity(run, hp, saved["data"]), "state": saved["state"],
                           "history": saved["history"]}, store.phase0_path(results, run, hp, saved["data"]))
        path.unlink()
        changed += 1
    return changed


def migrate_masks(results: Path) -> int:
    changed = 0
    for record in store.load_records(results):
        path = store.record_file(results, record, ".masks.npz")
        if not path.exists():
            continue
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        if "identity" in arrays:
            continue
        rewrite_masks(path, arrays, identity.record_identity(record))
        changed += 1
    return changed


def rewrite_masks(path: Path, arrays: dict[str, np.ndarray], run_identity: dict) -> None:
    """A mask file's bits as they are, under `run_identity`."""
    rounds = {}
    for key, bits in arrays.items():
        if key not in ("identity", "checksum"):
            r, name = key.split("/", 1)
            rounds.setdefault(int(r.removeprefix("round")), {})[name] = torch.from_numpy(bits)
    store.save_masks(path, rounds, run_identity)


def migrate_networks(results: Path) -> int:
    """The fingerprint of today's network into every file of a folder whose θ0 it draws again bit for bit."""
    records = store.load_records(results)
    runs = {spec.RunSpec(**r["params"]) for r in records}
    for run in sorted(runs, key=lambda r: r.name):
        path = store.theta0_path(results, run)
        if path.exists():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            saved = saved.get("state", saved)
            built = H.snapshot(H.build_model(run.seed, run.batchnorm, run.dropout, run.model))
            if saved.keys() != built.keys() or not all(torch.equal(saved[k], built[k]) for k in saved):
                sys.exit(f"{path}: today's {run.model} does not draw this θ0 again bit for bit; nothing migrated.")
    changed = 0
    for record in records:
        run, path = spec.RunSpec(**record["params"]), store.record_file(results, record)
        if record.get("network") is None:
            record = {**record, "network": identity.network_of(run)}
            store.write_json(path, record)
            changed += 1
        masks = store.record_file(results, record, ".masks.npz")
        if masks.exists():
            with np.load(masks) as f:
                arrays = {k: f[k] for k in f.files}
            if json.loads(str(arrays["identity"])).get("network") is None:
                rewrite_masks(masks, arrays, identity.record_identity(record))
                changed += 1
        theta0 = store.theta0_path(results, run)
        if theta0.exists():
            saved = torch.load(theta0, map_location="cpu", weights_only=True)
            if "network" not in saved:
                store.save_atomic({"network": identity.network_of(run), "state": saved}, theta0)
                changed += 1
    for path in [*results.glob("checkpoints/*.pt"), *results.glob("checkpoints/phase0/*.pt")]:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["identity"].get("network") is None:
            model = saved["identity"].get("model", {})
            run = spec.RunSpec(**saved["identity"]["params"]) if "params" in saved["identity"] else spec.RunSpec(
                "baseline", rounds=0, **{k: model[k] for k in ("batchnorm", "dropout", "epochs", "seed")},
                model=model.get("model", "cnn"))
            saved["identity"] = {**saved["identity"], "network": identity.network_of(run)}
            store.save_atomic(saved, path)
            changed += 1
    return changed


def mark_unmeasured_stops(results: Path) -> int:
    """Epochs timed before stops were measured whose seconds exceed STOPPED_EPOCH times their run's median held a stop
    of the process: marked `stopped_seconds: null` (unknown), so the compute line counts them at that median."""
    changed = 0
    for path in sorted(results.glob("runs/*/*.json")):
        record = json.loads(path.read_text())
        median = float(np.median([e["seconds"] for e in record["history"]]))
        marked = [e for e in record["history"] if "stopped_seconds" not in e and e["seconds"] > STOPPED_EPOCH * median]
        for e in marked:
            e["stopped_seconds"] = None
        if marked:
            store.write_json(path, record)
            changed += 1
    return changed


def add_checksums(results: Path) -> int:
    """A checksum of its content into every .pt and mask file saved before files carried one (values unchanged)."""
    changed = 0
    for path in sorted(results.glob("checkpoints/**/*.pt")):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(saved, dict) and "checksum" not in saved:
            store.save_atomic(saved, path)
            changed += 1
    for path in sorted(results.glob("runs/*/*.masks.npz")):
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        if "checksum" not in arrays:
            rewrite_masks(path, arrays, json.loads(str(arrays["identity"])))
            changed += 1
    return changed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    results = p.parse_args().results
    print(f"records: {migrate_records(results)} migrated")
    migrate_manifest(results)
    print(f"phase 0: {migrate_phase0(results)} migrated; masks: {migrate_masks(results)} migrated")
    print(f"networks: {migrate_networks(results)} files gained their network's fingerprint")
    print(f"checksums: {add_checksums(results)} files gained a checksum of their content")
    print(f"stops: {mark_unmeasured_stops(results)} records have epochs marked as holding a stop of unknown length")


if __name__ == "__main__":
    main()
