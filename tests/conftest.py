import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lth.data import load_data
from lth.identity import network_of
from lth.spec import RunSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import helpers as H  # noqa: E402

# Two threads, the machines' cores; mutation testing asks for one (LTH_TEST_THREADS=1): mutmut forks a process per
# mutant, and a forked child of a process whose OpenMP pool is running deadlocks in its first parallel op.
torch.set_num_threads(int(os.environ.get("LTH_TEST_THREADS", 2)))
# tqdm's default lock is a multiprocessing lock that every process mutmut forks shares: a mutant stopped while it drew
# a bar held it for good, and every later mutant that drew one hung in its first bar. A thread lock is enough here.
H.tqdm.set_lock(threading.RLock())


def fake_arrays(n_train: int = 256, n_test: int = 128, seed: int = 0) -> dict[str, np.ndarray]:
    """Random CIFAR-shaped images whose class is readable from the colour of their centre (so a net can learn it)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        x[:, 8:24, 8:24, :] = (y[:, None, None, None] * 25).astype(np.uint8)
        out[f"x_{split}"], out[f"y_{split}"] = x, y.astype(np.int64)
    return out


@pytest.fixture
def fake_npz(tmp_path) -> Path:
    path = tmp_path / "cifar10.npz"
    np.savez(path, **fake_arrays())
    return path


@pytest.fixture
def data(fake_npz) -> H.Data:
    return load_data(fake_npz)


FAST = H.HParams(batch_size=64, lr=0.05)  # the fake set's 256 images make 4 steps an epoch
TINY = RunSpec.of("lottery", sparsity=0.5, rounds=2, epochs=1, model="tiny")  # models/tiny.py: seconds a run


def name_of(spec: RunSpec, hp: H.HParams = FAST) -> str:
    """The name a run of `spec` with `hp` gets on this CPU."""
    from lth.identity import run_name
    return run_name(spec, resolved(hp))


def resolved(hp: H.HParams = FAST) -> H.HParams:
    """`hp` as a run on this CPU resolves it ("auto" precision made explicit): what its run's name is made of."""
    from lth.runs import resolve_hparams
    return resolve_hparams(hp, torch.device("cpu"))


def run(spec: RunSpec, data: H.Data, results, hp: H.HParams = FAST, **kw) -> dict:
    """One run as a notebook makes it, on the CPU, quietly."""
    from lth.runs import run_experiment
    return run_experiment(spec, data, "cpu", results, hp, progress=False, **kw)


def starts_of_training(monkeypatch) -> list[dict]:
    """The model's weights as each call of `train` begins: what a phase starts from."""
    starts, train = [], H.train
    monkeypatch.setattr(H, "train", lambda model, *a, **k: starts.append(H.snapshot(model)) or train(model, *a, **k))
    return starts


def dies_at_call(monkeypatch, n: int, error=KeyboardInterrupt) -> None:
    """The n-th call of train() raises `error`: the session ends in the middle of that phase."""
    calls, train = [], H.train

    def dying(*a, **k):
        calls.append(k.get("desc"))
        if len(calls) == n:
            raise error
        return train(*a, **k)
    monkeypatch.setattr(H, "train", dying)


def refused(error, message: str):
    """pytest.raises for `error` with exactly `message`: a refusal says in full what was wrong and what to do."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


def said_set_aside(said: str, path: Path, then: str) -> bool:
    """Whether `said` holds the line that a damaged file at `path` was set aside, and what happens instead."""
    return re.search(rf"^WARNING: {re.escape(str(path))} is damaged \(.+\); set aside as "
                     rf"{re.escape(path.name)}\.damaged, {re.escape(then)}\.$", said, flags=re.M) is not None


def run_all(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(H.ROOT / "run_all.py"), *args], capture_output=True, text=True,
                          cwd=H.ROOT, **kw)


def comparable(results: Path) -> dict[str, dict]:
    """Every record under `results`, less what differs between identical runs: timings and where they ran."""
    out = {}
    for path in sorted(results.glob("runs/*/*.json")):
        r = json.loads(path.read_text())
        out[r["name"]] = {**{k: v for k, v in r.items() if k not in ("seconds", "device")},
                          "history": [{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]]}
    return out


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory) -> tuple[list[str], Path, subprocess.CompletedProcess]:
    """The whole study, --quick, sequential, on fake data: its options, results folder and output; run once."""
    tmp = tmp_path_factory.mktemp("quick")
    np.savez(tmp / "cifar10.npz", **fake_arrays(n_train=600, n_test=200))
    common = ["--quick", "--data-dir", str(tmp / "cifar10.npz"), "--threads-per-run", "2"]
    return common, tmp / "results", run_all(*common, "--results-dir", str(tmp / "results"), timeout=900)


def pytest_collection_modifyitems(items):
    """A test that needs the whole quick study is slow, whatever else it does."""
    for item in items:
        if "quick_study" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def fake_record(experiment: str, acc: float, phase0: float = 0.75, quick: bool = False, **params) -> dict:
    """A record built by hand: phase 0 at `phase0`, every round at `acc`; `quick` marks it as made on a subset."""
    spec = RunSpec.of(experiment, **params)
    history = [{"round": 0, "val_acc": phase0, "sparsity": 0.0, "seconds": 1.0}] + [
        {"round": r, "val_acc": acc, "sparsity": H.round_sparsities(spec.sparsity, spec.rounds)[r - 1],
         "seconds": 1.0} for r in range(1, spec.rounds + 1)]
    return {"experiment": experiment, "name": spec.name, "params": vars(spec), "final_val_acc": acc, "seconds": 1.0,
            "final_sparsity": spec.sparsity, "history": history, "device": "cpu: test",
            "hparams": {"precision": "bf16"},
            "data": {"sha256": "test", "description": "test data", **({"subset": [2048, 1024]} if quick else {})},
            "network": network_of(spec)}
