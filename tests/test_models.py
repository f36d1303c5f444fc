"""Your own CNN: a model is one file (or one registered class), a run's identity includes what its network computes,
and another setting or network is another run, saved beside the first. An edit to the network never gets the saved
run of the old one back; an edit to a comment does."""
import json

import pytest
import torch
import torch.nn as nn

import helpers as H
from conftest import FAST, resolved
from lth.batch import Study
from lth.identity import fingerprint_of, network_of, phase0_file_identity, phase0_identity, run_identity, run_name
from lth.runs import run_experiment
from lth.spec import RunSpec
from lth.store import record_path, write_json

SPEC = RunSpec.of("lottery", sparsity=0.5)


def saved_study(tmp_path, data) -> Study:
    """A folder holding SPEC's record as today's CNN made it (written by hand: nothing trains)."""
    hp = resolved()
    record = {"experiment": "lottery", "name": run_name(SPEC, hp), "params": vars(SPEC), "hparams": vars(hp),
              "history": [{"round": 0, "val_acc": 0.5, "seconds": 1.0}], "final_val_acc": 0.5, "final_sparsity": 0.5,
              "data": data.source, "network": network_of(SPEC)}
    write_json(record_path(tmp_path, SPEC, hp), record)
    return Study(tmp_path, data, hp)


class GELUCNN(H.CNN):
    def __init__(self, **flags):
        super().__init__(**flags)
        for block in self.modules():
            for name, child in block.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(block, name, nn.GELU())


class CommentedCNN(H.CNN):
    """The lab's CNN with another docstring: the same network."""


EDITS = {
    "width 32 -> 48": lambda mp: mp.setitem(H.MODELS, "cnn", lambda **flags: H.CNN(width=48, **flags)),
    "ReLU -> GELU": lambda mp: mp.setitem(H.MODELS, "cnn", GELUCNN),
    "the residual's x + removed": lambda mp: mp.setattr(H.Residual, "forward", lambda self, x: self.f(x)),
    "another initialisation": lambda mp: mp.setattr(H, "init_weight", lambda w, generator=None:
                                                    nn.init.xavier_uniform_(w)),
}


@pytest.fixture(autouse=True)
def fresh_fingerprints():
    fingerprint_of.cache_clear()  # a fingerprint is kept per registered factory; these tests edit one in place
    yield
    fingerprint_of.cache_clear()


def test_the_saved_run_is_done_for_the_network_that_made_it(data, tmp_path):
    assert saved_study(tmp_path, data).status(SPEC) == "done"


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_network_never_gets_the_saved_run_back(edit, data, tmp_path, monkeypatch):
    study = saved_study(tmp_path, data)
    before = run_name(SPEC, study.hp)
    EDITS[edit](monkeypatch)
    fingerprint_of.cache_clear()
    assert study.status(SPEC) == "to do"  # another network: another run, under another name
    assert run_name(SPEC, study.hp) != before and record_path(tmp_path, SPEC, study.hp).parent.exists()


def test_a_changed_comment_keeps_the_saved_run_done(data, tmp_path, monkeypatch):
    study = saved_study(tmp_path, data)
    monkeypatch.setitem(H.MODELS, "cnn", CommentedCNN)
    assert study.status(SPEC) == "done"


def test_the_committed_cnn_is_the_studys_network_so_its_names_stay():
    study = H.HParams(precision="bf16")
    assert run_name(SPEC, study) == SPEC.name == "lottery_p0.5_R5_E5_magnitude_rewind_bn1_do0_seed0"


def test_another_learning_rate_or_precision_is_another_run_beside_the_first(data, tmp_path):
    spec = RunSpec.of("lottery", sparsity=0.5, rounds=1, epochs=1, model="tiny")
    first = run_experiment(spec, data, "cpu", tmp_path, FAST, progress=False)
    saved = record_path(tmp_path, spec, resolved()).read_bytes()
    other = run_experiment(spec, data, "cpu", tmp_path, H.HParams(batch_size=64, lr=0.1), progress=False)
    assert other["name"] != first["name"] and other["hparams"]["lr"] == 0.1
    assert record_path(tmp_path, spec, resolved()).read_bytes() == saved  # kept, untouched
    bf16 = run_experiment(spec, data, "cpu", tmp_path, H.HParams(batch_size=64, lr=0.05, precision="bf16"),
                          progress=False)
    assert len({first["name"], other["name"], bf16["name"]}) == 3
    assert len(list(tmp_path.glob("runs/lottery/*.json"))) == 3


def test_a_model_written_in_a_notebook_cell_runs_at_once(data, tmp_path):
    class Cell(nn.Module):
        def __init__(self, batchnorm=True, dropout=0.0, num_classes=10):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(4 * 8 * 8, num_classes))

        def forward(self, x):
            return self.net(x)
    H.MODELS["cell"] = Cell  # a cell of a notebook: the class, and one line that names it
    try:
        record = run_experiment(RunSpec.of("lottery", sparsity=0.5, rounds=1, epochs=1, model="cell"), data, "cpu",
                                tmp_path, FAST, progress=False)
        assert "_cell_bn1_do0_seed0_" in record["name"] and record["final_sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert record["network"] == network_of(RunSpec(**record["params"]))
        assert json.loads(record_path(tmp_path, RunSpec(**record["params"]), resolved()).read_text()) == record
    finally:
        H.MODELS.pop("cell")


def test_a_model_with_nothing_to_prune_or_no_registration_is_refused_with_the_fix():
    H.MODELS["empty"] = lambda **flags: nn.Sequential(nn.Flatten())
    try:
        with pytest.raises(ValueError, match="has no Conv2d or Linear layer"):
            H.build_model(0, model="empty")
    finally:
        H.MODELS.pop("empty")
    with pytest.raises(ValueError, match=r"model='vgg' is not registered.*MODELS\[NAME\] = YourModule.*models/"):
        RunSpec.of("lottery", sparsity=0.5, model="vgg")


@pytest.mark.parametrize("model, weights", [("conv2", 4_300_992), ("conv4", 2_425_024), ("conv6", 2_261_184)])
def test_the_papers_networks_have_their_layers_and_counts(model, weights):
    net = H.build_model(0, model=model)
    assert sum(w.numel() for w in H.prunable_weights(net).values()) == weights
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_run_identity_carries_the_network_fingerprint():
    identity = run_identity(SPEC, resolved(), {"sha256": "x"})
    assert identity["network"] == network_of(SPEC) and set(identity["network"]) == {"parameters", "outputs"}


MADE_UP = '''import torch.nn as nn
import helpers as H


class MadeUp(nn.Module):
    def __init__(self, batchnorm=True, dropout=0.0, num_classes=10):
        super().__init__()
        self.net = nn.Sequential(H.conv_block(3, 4, batchnorm, pool=True), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                                 nn.Dropout(dropout), nn.Linear(4, num_classes))

    def forward(self, x):
        return self.net(x)


H.MODELS["made_up"] = MadeUp
'''


@pytest.mark.slow
def test_a_model_file_is_planned_trained_stated_and_offered(tmp_path):
    """Adding a model costs one file: saved in models/ of a copy of the repository, run_all.py plans it, a quick run
    trains it, the summary states it and the explorer offers it."""
    import re
    import subprocess
    import sys

    import nbformat
    import numpy as np

    from conftest import fake_arrays
    repo = tmp_path / "repo"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=H.ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in [n for n in listed if not n.startswith("results/") and (H.ROOT / n).is_file()]:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes((H.ROOT / name).read_bytes())
    (repo / "models" / "made_up.py").write_text(MADE_UP)
    np.savez(tmp_path / "cifar10.npz", **fake_arrays(n_train=600, n_test=200))
    results = tmp_path / "results"
    common = ["--quick", "--data-dir", str(tmp_path / "cifar10.npz"), "--results-dir", str(results), "--model",
              "made_up", "--only", "01_baseline:batchnorm=True,dropout=0.0", "02_lottery_sweep:sparsity=0.5"]
    run = lambda *args: subprocess.run([sys.executable, "run_all.py", *args], cwd=repo, capture_output=True,
                                       text=True, timeout=900)
    plan = run(*common, "--list")
    assert plan.returncode == 0, plan.stderr
    assert "to do    02_lottery_sweep {'sparsity': 0.5, 'model': 'made_up', 'seed': 0}" in plan.stdout
    done = run(*common, "06_summary", "07_explore")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {p.parent.name for p in results.glob("runs/*/*made_up*.json")} == {"baseline", "lottery"}
    summary = nbformat.read(results / "notebooks" / "06_summary__quick=True.ipynb", as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", "")) for c in summary.cells
                   if c.cell_type == "code" for o in c.outputs)
    assert re.search(r"the findings below are those of made_up(, precision \w+)?\.", text)  # its settings' hash
    assert re.search(r"The findings below are those of made_up(, precision \w+)?: 2 runs", text)
    offered = subprocess.run([sys.executable, "-c", "from lth import explore, store; import sys; print(explore."
                              "default_choice(store.load_records(sys.argv[1]))['model'])", str(results)], cwd=repo,
                             capture_output=True, text=True, timeout=300)
    assert offered.stdout.startswith("made_up, BatchNorm, dropout 0"), offered.stderr


def test_a_missing_theta0_is_drawn_again_bit_for_bit(data, tmp_path):
    from lth import store
    spec = RunSpec.of("lottery", sparsity=0.5, rounds=1, epochs=1, model="tiny")
    run_experiment(spec, data, "cpu", tmp_path, FAST, progress=False)
    path = store.theta0_path(tmp_path, spec)
    saved = torch.load(path, weights_only=True)["state"]
    path.unlink()  # θ0 is not committed
    again = store.load_theta0(tmp_path, spec)
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved) and path.exists()


def test_a_learning_rate_edited_in_helpers_is_another_run_not_the_studys(monkeypatch):
    """A student edits HParams' default lr in helpers.py: the study's record keeps its name; the new run gets one."""
    from dataclasses import field, make_dataclass
    edited = make_dataclass("HParams", [("lr", float, field(default=0.1))], bases=(H.HParams,), frozen=True)
    study = H.HParams(precision="bf16")
    monkeypatch.setattr(H, "HParams", edited)
    assert run_name(SPEC, study) == SPEC.name  # the committed run, read back under the edited code
    assert run_name(SPEC, edited(precision="bf16")) != SPEC.name
    source = {"sha256": "x"}  # and its phase 0 is its own: a saved one says lr only by leaving it out
    saved = {"model": {"batchnorm": True, "dropout": 0.0, "epochs": 5, "seed": 0}, "hparams": {"precision": "bf16"},
             "data": source, "network": network_of(SPEC)}
    assert phase0_file_identity({"identity": saved}, None) == phase0_identity(SPEC, study, source)
    assert phase0_file_identity({"identity": saved}, None) != phase0_identity(SPEC, edited(precision="bf16"), source)


def test_the_runs_of_a_model_written_in_a_notebook_are_read_anywhere(data, tmp_path):
    """The summary's kernel never saw the cell that registered the model: its runs are still records, stated apart,
    and their masks are named as unreadable here rather than stopping the summary."""
    from lth.identity import configurations
    from lth.masks import mask_findings
    from lth.store import load_records
    H.MODELS["cell"] = H.MODELS["tiny"]
    try:
        run_experiment(RunSpec.of("lottery", sparsity=0.5, rounds=1, epochs=1, model="cell"), data, "cpu", tmp_path,
                       FAST, progress=False)
    finally:
        H.MODELS.pop("cell")
    records = load_records(tmp_path)
    assert len(records) == 1 and [name.split(",")[0] for name in configurations(records)] == ["cell"]
    skipped = []
    mask_findings(records, tmp_path, skipped=skipped)
    assert skipped and "'cell' is not registered here" in skipped[0]
    with pytest.raises(ValueError, match="model='cell' is not registered"):
        RunSpec.of("lottery", sparsity=0.5, model="cell")


def test_the_runner_runs_its_plan_on_a_model_and_selects_within_it():
    from lth.batch import jobs, settings
    assert settings(["model=conv2", "batchnorm=no", "dropout=0.2"]) == {"model": "conv2", "batchnorm": False,
                                                                        "dropout": 0.2}
    with pytest.raises(ValueError, match="--set lr=0.1: write KEY=VALUE with KEY one of model, batchnorm, dropout"):
        settings(["lr=0.1"])
    planned = jobs(1, False, [("01_baseline", {}), ("02_lottery_sweep", {"sparsity": "0.5"})], {"model": "conv2"})
    assert [(j.notebook, j.spec.model, j.params["model"]) for j in planned] == [("01_baseline", "conv2", "conv2")] * 4 \
        + [("02_lottery_sweep", "conv2", "conv2")]
    flags = jobs(1, False, [("01_baseline", {})], {"batchnorm": False, "dropout": 0.0})
    assert len(flags) == 1  # the four planned variants become one run: planned once
