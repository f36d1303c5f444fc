"""A run's identity: everything that decides its numbers (its RunSpec, its HParams with the precision resolved, its
data's content, what its network computes). What is saved is reused only for the same identity. Fields at their
defaults are left out, as open_lth does, so a new field with a default never changes the identity of the runs saved
before it; and a run's name carries a short hash of whatever sets it apart from the committed study's settings, so
another setting or network is another run, saved beside the first."""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path

import torch

import helpers as H
from lth.data import data_identity
from lth.spec import RunSpec, model_label

PROBE = (4, 3, 32, 32)  # the fixed batch a network's θ0 is asked about
DECIMALS = 6  # outputs rounded so that another CPU's last bits (about 1e-14 here) never count, and any edit does

# The HParams defaults the committed study ran with, as values: hyper-parameters are identified by how they differ
# from these, not from the code's defaults, which a student may edit (another lr must never pass for the study's).
# A field added later is compared with its own default. The study's runs differ by their precision alone, and their
# names carry no hash (STUDY_HPARAMS).
HPARAMS_BASE = {"batch_size": 512, "lr": 0.2, "lr_no_batchnorm": 0.05, "warmup": 0.2, "momentum": 0.9,
                "weight_decay": 0.0005, "label_smoothing": 0.1, "precision": "auto", "channels_last": True}
STUDY_HPARAMS = {**HPARAMS_BASE, "precision": "bf16"}
STUDY_NETWORKS = {  # what the lab's CNN computed in the committed study, checked against its θ0 files
    ("cnn", True): {"parameters": "a91f689c563115bd", "outputs": "88190b80ad8c2872"},
    ("cnn", False): {"parameters": "db4eee8e434cf3af", "outputs": "e7617db99829840b"},
}


class ResultMismatch(RuntimeError):
    """A saved result was made with other settings or data than asked; the message says what differs."""

class DamagedFile(RuntimeError):
    """A saved result cannot be read; the message names the file and what to do."""

def hparams_identity(hparams: H.HParams | dict, base: dict = HPARAMS_BASE) -> dict:
    """Hyper-parameters as they differ from `base`; a saved dict (that difference, or every field) is read the same
    way, so what a file says never depends on today's defaults."""
    hp = hparams if is_dataclass(hparams) else H.HParams(**{**HPARAMS_BASE, **hparams})
    return {f.name: getattr(hp, f.name) for f in fields(hp) if getattr(hp, f.name) != base.get(f.name, f.default)}

def non_default(obj) -> dict:
    """A dataclass's fields that differ from their defaults."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)
            if f.default is MISSING or getattr(obj, f.name) != f.default}

def digest(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]

def network_fingerprint(model: str, batchnorm: bool, dropout: float) -> dict:
    """What a network computes: the names and shapes of its parameters and buffers, and the outputs of its θ0 (seed
    0, float64 on the CPU, eval mode) on a fixed probe batch. Any change to the layers, the forward pass or the
    initialisation changes it; a comment or a docstring does not."""
    return fingerprint_of(H.MODELS[model] if model in H.MODELS else model, model, batchnorm, dropout)

@functools.lru_cache(maxsize=64)
def fingerprint_of(factory, model: str, batchnorm: bool, dropout: float) -> dict:  # once per factory, as registered
    with torch.random.fork_rng(devices=[]):
        net = H.build_model(0, batchnorm, dropout, model).double().eval()
        probe = torch.randn(PROBE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        with torch.no_grad():
            outputs = net(probe).flatten().tolist()
    shapes = [[name, list(t.shape)] for name, t in net.state_dict().items()]
    return {"parameters": digest(shapes), "outputs": digest([round(v, DECIMALS) + 0.0 for v in outputs])}

def network_of(spec: RunSpec) -> dict:
    return network_fingerprint(spec.model, bool(spec.batchnorm), float(spec.dropout))

def run_identity(spec: RunSpec, hp: H.HParams, source: dict) -> dict:
    return {"params": non_default(spec), "hparams": hparams_identity(hp), "data": data_identity(source),
            "network": network_of(spec)}

def saved_identity(params: dict, hparams: dict, data: dict, network: dict | None = None) -> dict:
    """The identity of what was saved with these params, hparams, data and network, in any schema they were saved in
    (a file saved before networks were fingerprinted has none, and matches no run)."""
    return {"params": non_default(RunSpec(**params)), "hparams": hparams_identity(hparams),
            "data": data_identity(data), "network": network}

def record_identity(record: dict) -> dict:
    return saved_identity(record["params"], record["hparams"], record["data"], record.get("network"))

def phase0_identity(spec: RunSpec, hp: H.HParams, source: dict) -> dict:
    model = {k: getattr(spec, k) for k in ("batchnorm", "dropout", "epochs", "seed")}
    model |= {} if spec.model == "cnn" else {"model": spec.model}
    return {"model": model, "hparams": hparams_identity(hp), "data": data_identity(source),
            "network": network_of(spec)}

def is_study_network(model: str, batchnorm: bool, network: dict | None) -> bool:
    return STUDY_NETWORKS.get((model, bool(batchnorm))) == network

def apart(spec: RunSpec, hp: H.HParams, network: dict | None = None) -> dict:
    """What sets a run apart from the committed study beyond the fields its name spells out: hyper-parameters other
    than the study's, and a network (today's, unless given) that computes something other than the study's CNN."""
    out = hparams_identity(hp, STUDY_HPARAMS)
    network = network or network_of(spec)
    return out if is_study_network(spec.model, spec.batchnorm, network) else {**out, "network": network}

def name_suffix(part: dict) -> str:
    return f"_{identity_hash(part)}" if part else ""

def run_name(spec: RunSpec, hp: H.HParams) -> str:
    """A run's name: its spec's, plus a short hash of what sets it apart from the committed study (open_lth's rule),
    so each setting and each network is a run of its own and the study's names stay as they were."""
    return spec.name + name_suffix(apart(spec, hp))

def record_name(record: dict) -> str:
    """The name a record's own identity gives it (its network as saved, which may be an earlier version's)."""
    spec = RunSpec(**record["params"])
    return spec.name + name_suffix(apart(spec, H.HParams(**record["hparams"]), record.get("network")))

def theta0_name(spec: RunSpec) -> str:
    """θ0 is a function of the network and the seed alone: named by them, and by the network's fingerprint when it
    is not the study's."""
    network = network_of(spec)
    study = is_study_network(spec.model, spec.batchnorm, network)
    return f"{spec.model_name}_seed{spec.seed}" + ("" if study else name_suffix(network))

def phase0_file_hash(identity: dict) -> str:
    """A phase 0's file is named by its identity; the study's network is left out, so its names stay as they were."""
    model = identity["model"]
    study = is_study_network(model.get("model", "cnn"), model["batchnorm"], identity["network"])
    return identity_hash({k: v for k, v in identity.items() if k != "network" or not study})

def configuration(record: dict, own_phase0: bool = True) -> str:
    """What a run's numbers depend on beyond its arm, schedule, flags and seed: its network, its hyper-parameters and
    (unless `own_phase0` is False) a phase 0 other than the shared one. Runs of two configurations are never pooled;
    the summary states each apart."""
    spec, network = RunSpec(**record["params"]), record_identity(record)["network"]
    settings = hparams_identity(record["hparams"], STUDY_HPARAMS)
    parts = [spec.model] + [f"{k} {v}" for k, v in settings.items()]
    if spec.phase0_of_late_rewind and own_phase0:  # paired with late rewinding, never pooled with the shared one
        parts.append(f"phase 0 of late rewinding to epoch {spec.phase0_of_late_rewind}")
    if spec.model in H.MODELS and network != network_of(spec):  # a model not registered here: as saved
        parts.append(f"an earlier version of it (network {(network or {}).get('outputs', 'unknown')[:8]})")
    return ", ".join(parts)

def setup_label(record: dict) -> str:
    """A run's network and flags, with its settings when they are not the study's: 'BatchNorm, dropout 0',
    'conv2, BatchNorm, dropout 0', 'BatchNorm, dropout 0; lr 0.1'. The explorer's model choice: never two pooled."""
    extra = configuration(record).removeprefix(record["params"]["model"]).removeprefix(", ")
    return model_label(record["params"]) + (f"; {extra}" if extra else "")


def configurations(records: list[dict]) -> dict[str, list[dict]]:
    """`records` by configuration: the committed study's (the lab's CNN, the study's settings) first, then the
    others by name. Labels read 'cnn', 'conv2', 'cnn, lr 0.1'."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(configuration(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda item: (item[0] != "cnn", item[0])))

def late_rewind_partners(groups: dict[str, list[dict]], name: str) -> list[dict]:
    """The runs of configuration `name` made from late rewinding's own phase 0: stated apart, they pair with it."""
    return [r for runs in groups.values() for r in runs
            if r["params"].get("phase0_of_late_rewind") and configuration(r, own_phase0=False) == name]

def identity_hash(identity: dict) -> str:
    """A short name for an identity: files named by it never collide across settings."""
    text = json.dumps(identity, sort_keys=True, default=lambda v: v.item())  # numpy scalars as Python numbers
    return hashlib.sha256(text.encode()).hexdigest()[:8]

def check_identity(path: Path, saved: dict, asked: dict) -> None:
    """Refuse a saved file whose content is not the run asked for (a run of other settings is named apart, so this is
    a file that was copied, edited or saved by an older version), saying what differs."""
    diffs = differences(saved, asked)
    if diffs:
        raise ResultMismatch(f"{path} was made with other settings than asked ({'; '.join(diffs)}), so it is not "
                             "reused. Keep it: pass another results_dir (run_all.py --results-dir); or replace it: "
                             "force=True (run_all.py --force).")

def differences(saved: dict, asked: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(asked)):
        a, b = saved.get(k), asked.get(k)
        if k == "network" and a != b:
            out.append(network_difference(a, b))
        elif isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} saved {a!r}, asked {b!r}")
    return out

def network_difference(saved: dict | None, asked: dict | None) -> str:
    if not saved or not asked:
        return "the network: it was saved before networks were fingerprinted (scripts/migrate_results.py)"
    if saved["parameters"] != asked["parameters"]:
        return "the network: its parameter names and shapes differ"
    return "the network: it computes other outputs at θ0 (its forward pass or initialisation changed)"

def checkpoint_identity(saved: dict, path: Path) -> dict:
    try:
        return saved_identity(**saved["identity"])
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(f"{path} carries no readable identity ({type(e).__name__}: {e}); delete it, and the run "
                          "restarts after its phase 0.") from None


def phase0_file_identity(saved: dict, path: Path) -> dict:
    try:
        identity = saved["identity"]
        return {"model": identity["model"], "hparams": hparams_identity(identity["hparams"]),
                "data": data_identity(identity["data"]), "network": identity.get("network")}
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFile(f"{path} carries no readable identity ({type(e).__name__}: {e}); delete it, and phase 0 is "
                          "trained again.") from None
