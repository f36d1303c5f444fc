"""The results store: where a folder is, what it holds (one data set, named in its manifest), and every file in it,
written atomically under a lock and read through one loader that names the path, says what is wrong and what to do.

    <results>/data.json                          the folder's data identity
    <results>/runs/<experiment>/<run>.json       a finished run's record (its name: lth.identity.run_name)
    <results>/runs/<experiment>/<run>.masks.npz  its masks after every round, with its identity
    <results>/checkpoints/<run>.pt               an unfinished run, after its last finished round
    <results>/checkpoints/phase0/<name>_<identity hash>.pt   a dense phase 0, shared by the arms that start there
    <results>/checkpoints/theta0/<model>_seed<seed>.pt       θ0, once per network and seed (drawn again if missing)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import helpers as H
from lth.data import data_identity, data_source, describe_data
from lth.files import atomic_write, content_digest, load_pt, read_json, read_pt, save_atomic, write_json
from lth.identity import (
    DamagedFile,
    ResultMismatch,
    check_identity,
    differences,
    network_of,
    phase0_file_hash,
    phase0_file_identity,
    phase0_identity,
    record_identity,
    record_name,
    run_name,
    saved_identity,
    theta0_name,
)
from lth.schema import schema_error
from lth.spec import RunSpec, as_bool

PUBLISHED_RESULTS = H.ROOT / "results"  # the study this repository publishes: its README's numbers come from here

MANIFEST = "data.json"

def folder_data(results_dir: Path | str) -> dict | None:
    """The data a results folder's runs were made on ({"data": identity, "description": ...}); None for a new one."""
    path = Path(results_dir) / MANIFEST
    if not path.exists():
        return None
    saved = read_json(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("data"), dict) or "sha256" not in saved["data"]:
        raise DamagedFile(f"{path} is not a results folder's manifest (it needs {{\"data\": {{\"sha256\": ...}}}}). "
                          "Restore it (`git checkout -- PATH` if it is committed).")
    return saved

def check_folder(results_dir: Path | str, source: dict) -> None:
    """Refuse a results folder whose runs were made on other data than `source`."""
    saved = folder_data(results_dir)
    if saved is not None and saved["data"] != data_identity(source):
        raise ResultMismatch(
            f"{results_dir} holds runs on other data: {describe_data({**saved['data'], **saved})}, not "
            f"{describe_data(source)}. One folder holds one data set, so nothing is mixed: leave results_dir unset "
            "(run_all.py without --results-dir) and runs on this data go to a folder of their own, or name another.")

def claim_folder(results_dir: Path | str, source: dict) -> None:
    """Fix a new results folder's data to `source` (its first run does), or check that it is the same."""
    check_folder(results_dir, source)
    path = Path(results_dir) / MANIFEST
    if path.exists():
        return
    other = [r["name"] for r in load_records(results_dir) if data_identity(r["data"]) != data_identity(source)]
    if other:
        raise ResultMismatch(f"{results_dir} has no {MANIFEST} and holds runs on other data than "
                             f"{describe_data(source)} ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): "
                             "move them to a folder of their own, or pass another results_dir.")
    write_json(path, {"data": data_identity(source), "description": source.get("description", "")})

def results_root(path: str | os.PathLike | None = None, quick: bool = False, source: dict | None = None) -> Path:
    """Where runs are saved. A named `path` (relative to the repository root) is used as it is. Unnamed: results/,
    or results_quick/ for quick runs, under the repository root or $LTH_RESULTS (Colab: a Drive folder); when that
    folder holds runs on other data than `source`, a folder of this data's own beside it, results_<sha256 prefix>/.
    A quick run never writes under the repository's results/, the published study."""
    quick = as_bool("quick", quick)
    if path:
        folder = H.ROOT / path
        if H.ROOT.resolve().is_relative_to(folder.resolve()) or any(folder.glob("*.py")) or any(folder.glob("*.ipynb")):
            raise ValueError(f"results_dir={str(path)!r} holds source files (the repository, notebooks/, ...): runs "
                             "and executed notebooks written there would overwrite them. Name a folder of its own, "
                             "e.g. results_mine, or leave results_dir unset.")
        if quick and folder.resolve().is_relative_to(PUBLISHED_RESULTS.resolve()):
            raise ValueError(f"results_dir={str(path)!r}: a quick run never writes under {PUBLISHED_RESULTS.name}/, "
                             "the published study; leave results_dir unset (quick runs go to results_quick/) or "
                             "name another folder.")
        return folder
    default = default_folder(quick)
    saved = folder_data(default) if source else None
    if saved is None or saved["data"] == data_identity(source):
        return default
    return default.with_name(f"{default.name}_{source['sha256'][:12]}")

def default_folder(quick: bool = False) -> Path:
    """results/ (results_quick/ for quick runs) under the repository root, or under $LTH_RESULTS (Colab: Drive)."""
    return Path(os.environ.get("LTH_RESULTS") or H.ROOT) / ("results_quick" if quick else "results")


def study_folder(results_dir: str | None = None, quick: bool = False, data_dir: str | None = None) -> Path:
    """The folder a summary or the explorer reads: a named one, else that of the data in `data_dir` (as the runs
    chose it), else the default one when there is no data here."""
    return results_root(results_dir, quick, None if results_dir else data_source(data_dir, quick))

def is_published(results_dir: Path | str) -> bool:
    return Path(results_dir).resolve() == PUBLISHED_RESULTS.resolve()

def folder_note(results: Path, quick: bool = False) -> str:
    """Where runs go, and why when it is not the default folder."""
    default = default_folder(quick)
    where = results.relative_to(H.ROOT) if results.is_relative_to(H.ROOT) else results
    if results.parent != default.parent or not results.name.startswith(f"{default.name}_"):
        return f"{where}/"
    saved = folder_data(default)
    return (f"{where}/ ({default.name}/ holds runs on other data, {describe_data({**saved['data'], **saved})}; "
            "runs on this data get a folder of their own)")

def record_path(results_dir: Path | str, spec: RunSpec, hp: H.HParams) -> Path:
    """A finished run's record: results/runs/<experiment>/<run name>.json."""
    return Path(results_dir) / "runs" / spec.experiment / f"{run_name(spec, hp)}.json"

def masks_path(results_dir: Path | str, spec: RunSpec, hp: H.HParams) -> Path:
    """A finished pruned run's masks after every round, bit-packed, next to its record."""
    return record_path(results_dir, spec, hp).with_suffix(".masks.npz")

def record_file(results_dir: Path | str, record: dict, kind: str = ".json") -> Path:
    """Where a record lies, or its masks (kind=".masks.npz"): its arm's folder, under its own name."""
    return Path(results_dir) / "runs" / record["experiment"] / f"{record['name']}{kind}"

def checkpoint_path(results_dir: Path | str, spec: RunSpec, hp: H.HParams) -> Path:
    """An unfinished run's state after its last finished round: results/checkpoints/<run name>.pt."""
    return Path(results_dir) / "checkpoints" / f"{run_name(spec, hp)}.pt"

def phase0_path(results_dir: Path | str, spec: RunSpec, hp: H.HParams, source: dict) -> Path:
    """The dense phase 0 shared by every arm with the same network, seed, epochs, hparams and data."""
    name = f"{spec.phase0_name}_{phase0_file_hash(phase0_identity(spec, hp, source))}.pt"
    return Path(results_dir) / "checkpoints" / "phase0" / name

def rewind_point_path(results_dir: Path | str, spec: RunSpec, hp: H.HParams, source: dict) -> Path:
    """The weights after `spec.rewind_epoch` epochs of that phase 0: saved as phase 0 trains (for a phase 0 saved
    before rewind points were, by replaying it)."""
    path = phase0_path(results_dir, spec, hp, source)
    return path.with_name(f"{path.stem}_epoch{spec.rewind_epoch}.pt")

def phase0_ready(results_dir: Path | str, spec: RunSpec, hp: H.HParams, source: dict) -> bool:
    """Whether a run's phase 0 (and its rewind point) is saved, or is still to train (or to replay)."""
    return phase0_path(results_dir, spec, hp, source).exists() and (
        not spec.rewind_epoch or rewind_point_path(results_dir, spec, hp, source).exists())

def theta0_path(results_dir: Path | str, spec: RunSpec) -> Path:
    """The initial weights θ0 of a network and seed: one file, whatever the epochs and hparams of its phases 0."""
    return Path(results_dir) / "checkpoints" / "theta0" / f"{theta0_name(spec)}.pt"

def run_lock(results_dir: Path | str, name: str):
    """One lock per run and per phase 0, across processes: no two writers ever compute the same thing."""
    from filelock import FileLock  # a dependency of torch
    path = Path(results_dir) / ".locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path)

@contextlib.contextmanager
def holding(lock, say: Callable, what: str):
    from filelock import Timeout
    try:
        lock.acquire(timeout=0)
    except Timeout:
        say(f"{what}: another process is computing it; waiting for it to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()

def to_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in tensors.items()}

def read_record(path: Path) -> dict:
    """A finished run's record; DamagedFile, naming the file, for anything that is not one."""
    record = read_json(path)
    try:
        error = schema_error(record)
        if error:
            raise ValueError(error)
        record_identity(record)  # its params, hparams and data are ones a run can have
    except (TypeError, ValueError, AttributeError) as e:
        raise DamagedFile(f"{path} is not a run record ({type(e).__name__}: {e}). Restore it (`git checkout -- "
                          f"{path}` if it is committed), or delete it to compute the run again.") from None
    return {**record, "params": asdict(RunSpec(**record["params"]))}  # every field, those added since included

def load_records(results_dir: Path | str | None = None, experiment: str | None = None,
                 skipped: list[str] | None = None) -> list[dict]:
    """Every finished run's record; a damaged one is named in a warning (and in `skipped`) and left out, so the
    others still count."""
    records = []
    for path in sorted(Path(results_dir or results_root()).glob(f"runs/{experiment or '*'}/*.json")):
        try:
            record = read_record(path)
            if path != record_file(path.parents[2], record) or record["name"] != record_name(record):
                raise DamagedFile(f"{path} is a stray file: the record in it belongs at runs/{record['experiment']}/"
                                  f"{record_name(record)}.json (a copy, or a renamed file?). It is left out, so no "
                                  "run counts twice; move it there, or delete it.")
            records.append(record)
        except DamagedFile as e:
            warnings.warn(str(e), stacklevel=2)
            if skipped is not None:
                skipped.append(str(e))
    return records

def one_data_set(records: list[dict]) -> list[dict]:
    """`records`, refused when they were made on different data: such records are never pooled."""
    sets = Counter(describe_data(r["data"]) for r in records)
    if len(sets) > 1:
        raise ResultMismatch("these records were made on different data, so they are not pooled: "
                             + "; ".join(f"{n} runs on {d}" for d, n in sets.items())
                             + ". Keep each data set in a results folder of its own.")
    return records

def pack_masks(masks: H.Masks) -> dict[str, torch.Tensor]:
    """H.Masks as bits: 8 weights a byte, about 58 KB for the whole network."""
    return {name: torch.from_numpy(np.packbits(m.cpu().numpy().ravel())) for name, m in masks.items()}

def save_masks(path: Path, round_masks: dict[int, dict[str, torch.Tensor]], identity: dict) -> None:
    """Every round's masks, with the identity of the run that made them: masks are never read for another run."""
    arrays = {f"round{r}/{name}": bits.numpy() for r, layers in round_masks.items() for name, bits in layers.items()}
    arrays["identity"] = np.array(json.dumps(identity, sort_keys=True, default=lambda v: v.item()))
    arrays["checksum"] = np.array(content_digest(arrays))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
            np.savez_compressed(f, **arrays)  # a quarter smaller: sparse rounds' masks are mostly zeros
    atomic_write(path, write)

def load_masks(results_dir: Path | str, record: dict) -> dict[int, H.Masks]:
    """The masks a finished pruned run had in each round, as bool tensors: {round: {parameter name: mask}}; checked
    against the identity of the run's record."""
    spec = RunSpec(**record["params"])
    path, owner = record_file(results_dir, record, ".masks.npz"), record_file(results_dir, record)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {record['name']} is not finished, or ran before masks were "
                                "saved (run it again with force=True to save them).")
    if spec.model not in H.MODELS:
        raise FileNotFoundError(f"{record['name']}: its model {spec.model!r} is not registered here (models/, MODELS).")
    model = H.build_model(spec.seed, spec.batchnorm, spec.dropout, spec.model)
    shapes = {name: w.shape for name, w in H.prunable_weights(model).items()}
    out: dict[int, H.Masks] = {}
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        if "checksum" in arrays and str(arrays["checksum"]) != content_digest(arrays):
            raise ValueError("its content no longer matches its checksum")
        identity = saved_identity(**json.loads(str(arrays.pop("identity"))))
        arrays.pop("checksum", None)
        for key, packed in arrays.items():
            r, name = key.split("/", 1)
            bits = np.unpackbits(packed, count=math.prod(shapes[name])).astype(bool)
            out.setdefault(int(r.removeprefix("round")), {})[name] = torch.from_numpy(bits.reshape(shapes[name]))
    except Exception as e:
        raise DamagedFile(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}). Restore it "
                          "(`git checkout -- PATH` if it is committed), or compute the run again (force=True)."
                          ) from None
    if identity != record_identity(record):
        raise ResultMismatch(f"{path} holds the masks of another run than {owner} "
                             f"({'; '.join(differences(identity, record_identity(record)))}): restore the run's own "
                             "masks, or compute the run again (force=True).")
    return dict(sorted(out.items()))

def load_phase0(results_dir: Path | str, record: dict) -> dict:
    """The phase 0 a finished run started from: {"state", "history", "identity"}, checked against the record."""
    spec, hp = RunSpec(**record["params"]), H.HParams(**record["hparams"])
    path = phase0_path(results_dir, spec, hp, record["data"])
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: the phase 0 of {record['name']} is not in this folder "
                                "(only the shared 5-epoch phases 0 are committed); run it again to recompute it.")
    try:
        saved = load_pt(path)
    except DamagedFile:
        raise
    except Exception as e:
        raise DamagedFile(f"{path} is damaged ({type(e).__name__}: {str(e).splitlines()[0][:120]}). Restore it "
                          "(`git checkout -- PATH` if it is committed), or delete it to train it again.") from None
    check_identity(path, phase0_file_identity(saved, path), phase0_identity(spec, hp, record["data"]))
    point = rewind_point_path(results_dir, spec, hp, record["data"]) if spec.rewind_epoch else None
    if point and point.exists():  # a replay that left the saved phase 0's path is the run's own phase 0
        own = load_pt(point).get("phase0")
        return {**saved, **own} if own else saved
    return saved

def load_theta0(results_dir: Path | str, spec: RunSpec) -> dict[str, torch.Tensor]:
    """The initial weights of a run's network and seed, shared by every phase 0 that starts there; checked against
    the network asked. θ0 is a function of the network's code and the seed alone, so a missing file (θ0 is not
    committed) is drawn again, bit for bit, and saved."""
    path = theta0_path(results_dir, spec)
    saved = read_pt(path, print, "it is drawn again") if path.exists() else None
    if saved is None:
        saved = {"network": network_of(spec), "state": H.snapshot(H.build_model(spec.seed, spec.batchnorm,
                                                                                spec.dropout, spec.model))}
        save_atomic(saved, path)
    check_identity(path, {"network": saved.get("network")}, {"network": network_of(spec)})
    return saved["state"]
