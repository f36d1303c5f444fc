"""A run's identity: everything that decides its numbers (its RunSpec, its HParams with the precision resolved, its
data's content). What is saved is reused only for the same identity. Fields at their defaults are left out, as
open_lth does, so a new field with a default never changes the identity of the runs saved before it."""
from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, fields
from pathlib import Path

import helpers as H
from lth.data import data_identity
from lth.spec import RunSpec


class ResultMismatch(RuntimeError):
    """A saved result was made with other settings or data than asked; the message says what differs."""

class DamagedFile(RuntimeError):
    """A saved result cannot be read; the message names the file and what to do."""

def non_default(obj) -> dict:
    """A dataclass's fields that differ from their defaults."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if f.default is MISSING or getattr(obj, f.name) != f.default}

def run_identity(spec: RunSpec, hp: H.HParams, source: dict) -> dict:
    return {"params": non_default(spec), "hparams": non_default(hp), "data": data_identity(source)}

def saved_identity(params: dict, hparams: dict, data: dict) -> dict:
    """The identity of what was saved with these params, hparams and data, in any schema they were saved in."""
    return {"params": non_default(RunSpec(**params)), "hparams": non_default(H.HParams(**hparams)),
            "data": data_identity(data)}

def record_identity(record: dict) -> dict:
    return saved_identity(record["params"], record["hparams"], record["data"])

def phase0_identity(spec: RunSpec, hp: H.HParams, source: dict) -> dict:
    model = {k: getattr(spec, k) for k in ("batchnorm", "dropout", "epochs", "seed")}
    return {"model": model, "hparams": non_default(hp), "data": data_identity(source)}

def identity_hash(identity: dict) -> str:
    """A short name for an identity: files named by it never collide across settings."""
    text = json.dumps(identity, sort_keys=True, default=lambda v: v.item())  # numpy scalars as Python numbers
    return hashlib.sha256(text.encode()).hexdigest()[:8]

def check_identity(path: Path, saved: dict, asked: dict) -> None:
    diffs = differences(saved, asked)
    if not diffs:
        return
    precision = saved.get("hparams", {}).get("precision")
    if all(d.startswith("hparams.precision ") for d in diffs):
        fix = (f"Resume it with the precision it was made with: run_all.py --precision {precision} (notebooks: "
               f"precision=\"{precision}\").")
    else:
        fix = ("Keep both: pass another results_dir (run_all.py --results-dir) for the new settings; or replace it: "
               "force=True (run_all.py --force).")
    raise ResultMismatch(f"{path} was made with other settings than asked ({'; '.join(diffs)}), so it is not "
                         f"reused. {fix}")

def differences(saved: dict, asked: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(asked)):
        a, b = saved.get(k), asked.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} saved {a!r}, asked {b!r}")
    return out
def checkpoint_identity(saved: dict, path: Path) -> dict:
    try:
        return saved_identity(**saved["identity"])
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(f"{path} carries no readable identity ({type(e).__name__}: {e}); delete it, and the run "
                          "restarts after its phase 0.") from None


def phase0_file_identity(saved: dict, path: Path) -> dict:
    try:
        identity = saved["identity"]
        return {"model": identity["model"], "hparams": non_default(H.HParams(**identity["hparams"])),
                "data": data_identity(identity["data"])}
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(f"{path} carries no readable identity ({type(e).__name__}: {e}); delete it, and phase 0 is "
                          "trained again.") from None
