"""The layout: helpers.py is the student's file and the package depends on it, never the reverse; an arm is one
entry in one table; identities survive new fields with defaults; every figure file has one owner."""
import ast
import io
import json
import subprocess
from dataclasses import dataclass, make_dataclass
from pathlib import Path

import nbformat
import numpy as np
import pytest

import helpers as H
from lth import batch, explore, identity, report, spec, store
from lth.batch import Study, jobs
from lth.spec import ARMS, Arm, RunSpec

ROOT = H.ROOT
PRE_MIGRATION, MIGRATION = "d8810b3", "d0dc83c"  # before and after records lost the `bf16` hparams key


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "lth"
              for a in n.names}
    return names


def test_imports_run_one_way_helpers_then_the_package_then_run_all():
    assert not {m for m in imports(ROOT / "helpers.py") if m.startswith("lth") or m == "run_all"}
    graph = {p.stem: {m.removeprefix("lth.") for m in imports(p) if m.startswith("lth.")}
             for p in (ROOT / "lth").glob("*.py") if p.stem != "__init__"}
    assert not any("run_all" in imports(p) for p in (ROOT / "lth").glob("*.py"))

    def reaches(start: str, seen: tuple = ()) -> None:
        assert start not in seen, f"import cycle: {' -> '.join((*seen, start))}"
        for nxt in graph.get(start, ()):
            reaches(nxt, (*seen, start))
    for module in graph:
        reaches(module)


def test_helpers_is_read_in_one_sitting_and_no_module_is_long():
    assert len((ROOT / "helpers.py").read_text().splitlines()) <= 520  # 500 before the table of models
    assert max(len(p.read_text().splitlines()) for p in (ROOT / "lth").glob("*.py")) <= 350


# One table of arms.

@pytest.fixture
def made_up_arm(monkeypatch):
    """An arm nobody wrote code for: random pruning with the re-init reset, in its own (imaginary) notebook."""
    arm = Arm("05b_random_reinit", "random survivors re-drawn", dict(strategy="random", reset="reinit", sparsity=0.5),
              (dict(),), "random_reinit_curves", against=("lottery",))
    monkeypatch.setitem(ARMS, "random_reinit", arm)
    return arm


def test_an_arm_added_to_the_table_is_planned_stated_and_offered(made_up_arm):
    assert batch.plan()["05b_random_reinit"] == ("random_reinit", (dict(),))
    assert [j.spec.experiment for j in jobs(2, False, [("05b_random_reinit", {})])] == ["random_reinit"] * 2
    records = [fake_record("random_reinit", 0.70, seed=s) for s in (0, 1)] + \
              [fake_record("lottery", 0.80, seed=s, sparsity=0.5) for s in (0, 1)]
    text = "\n".join(report.findings(records))
    assert ("random survivors re-drawn at 50%: 70.00% (range 70.00%-70.00%, 2 seeds), -5.00 points against its "
            "phase 0; -10.00 points against lottery ticket (paired by seed, clear: 95% interval -10.00 to -10.00 "
            "points (width 0.00), 2 of 2 seeds below).") in text
    assert "random_reinit" in explore.default_choice(records)["arms"]
    assert spec.figure_names()["random_reinit_curves"] == "06_summary"


def fake_record(experiment: str, acc: float, **params) -> dict:
    run = RunSpec.of(experiment, **params)
    history = [{"round": 0, "val_acc": 0.75, "sparsity": 0.0, "seconds": 1.0}] + [
        {"round": r, "val_acc": acc, "sparsity": 0.5, "seconds": 1.0} for r in range(1, run.rounds + 1)]
    return {"experiment": experiment, "name": run.name, "params": vars(run), "final_val_acc": acc,
            "final_sparsity": run.sparsity, "history": history, "device": "cpu: test",
            "hparams": {"precision": "bf16"}, "data": {"sha256": "test"}}


# Identities that survive growth, and the one-time migration of the committed records.

def committed_records() -> list[dict]:
    return store.load_records(store.PUBLISHED_RESULTS)


needs_results = pytest.mark.skipif(not (ROOT / "results" / "data.json").exists(), reason="needs the committed study")


@needs_results
@pytest.mark.parametrize("grows", ["nothing", "RunSpec", "HParams"])
def test_a_new_field_with_a_default_leaves_every_committed_run_done(grows, monkeypatch):
    """"nothing": the code as it is, with the fields added since the runs were made (rewind_epoch among them)."""
    if grows == "RunSpec":
        grown = make_dataclass("RunSpec", [("warmup_rounds", int, 0)], bases=(RunSpec,), frozen=True)
        for module in (identity, batch, spec):
            monkeypatch.setattr(module, "RunSpec", grown)
    elif grows == "HParams":
        grown = make_dataclass("HParams", [("rewind_steps", int, 0)], bases=(H.HParams,), frozen=True)
        monkeypatch.setattr(H, "HParams", grown)
    manifest = json.loads((store.PUBLISHED_RESULTS / store.MANIFEST).read_text())

    @dataclass
    class Source:  # what Study reads of the data: its identity only
        source: dict
    records = committed_records()
    assert len(records) >= 51
    for record in records:
        run = identity.RunSpec(**record["params"])
        hp = H.HParams(**record["hparams"])
        study = Study(store.PUBLISHED_RESULTS, Source({**manifest["data"]}), hp)
        assert study.status(run) == "done", record["name"]


@needs_results
def test_the_migration_renamed_one_key_and_kept_every_value():
    paths = subprocess.run(["git", "ls-tree", "-r", "--name-only", MIGRATION, "results/runs"], cwd=ROOT,
                           capture_output=True, text=True)
    if paths.returncode:
        pytest.skip("the repository's history is not here")
    show = lambda commit, path: subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True,
                                               check=True).stdout
    records = [p for p in paths.stdout.split() if p.endswith(".json")]
    assert len(records) == 51
    for path in records:
        before, after = json.loads(show(PRE_MIGRATION, path)), json.loads(show(MIGRATION, path))
        if "bf16" in before["hparams"]:
            renamed = {("precision" if k == "bf16" else k): ("bf16" if v else "fp32") if k == "bf16" else v
                       for k, v in before["hparams"].items()}
            assert list(renamed) == list(after["hparams"])  # the key keeps its place
            before = {**before, "hparams": renamed}
        assert before == after, path  # so each loads to the identity it had: the old code read `bf16` as this
    for path in [p for p in paths.stdout.split() if p.endswith(".masks.npz")]:
        try:
            old = np.load(io.BytesIO(show(PRE_MIGRATION, path)))
        except subprocess.CalledProcessError:
            continue  # masks saved after the migration
        new = np.load(io.BytesIO(show(MIGRATION, path)))
        assert set(new.files) - set(old.files) == {"identity"}, path
        assert all(np.array_equal(old[k], new[k]) for k in old.files), path


# Every figure file has one owner.

def test_figure_names_are_declared_once_and_the_summary_owns_the_arms_curves():
    owners = spec.figure_names()
    assert len(owners) == len(set(owners))
    for arm in ARMS.values():
        assert owners[arm.figure] == "06_summary"
    with pytest.raises(ValueError, match="figure 'lottery' is not declared"):
        from lth.plots import save_figure
        save_figure(None, "lottery", "results")
    assert owners["explore"] == "07_explore" and owners["classic_curve"] == "06_summary"
    assert set(owners) == {"explore", *spec.SUMMARY_FIGURES, *(f for a in ARMS.values() for f in a.figures),
                           *(f"{a.figure}{end}" for a in ARMS.values() for end in ("", "_classic")),
                           *(f"{a.figure}_panels" for a in ARMS.values() if a.panels)}
    assert "rounds_vs_epochs_curves_panels" in owners and "lottery_curves_panels" not in owners


def test_the_labels_a_reader_meets_name_the_network_the_flags_and_the_rewind_point():
    assert spec.pruned_arms() == [name for name in ARMS if name != "baseline"]
    assert spec.model_label(dict(batchnorm=True, dropout=0.0)) == "BatchNorm, dropout 0"
    assert spec.model_label(dict(batchnorm=False, dropout=0.2, model="cnn")) == "no BatchNorm, dropout 0.2"
    assert spec.model_label(dict(batchnorm=True, dropout=0.0, model="conv2")) == "conv2, BatchNorm, dropout 0"
    assert spec.arm_label(dict(experiment="lottery", params={})) == "lottery ticket"
    assert spec.arm_label(dict(experiment="late_rewind", params=dict(rewind_epoch=1))) == "late rewinding to epoch 1"
    assert spec.is_classic(dict(rounds=13, sparsity=0.9450244186112))
    assert not spec.is_classic(dict(rounds=13, sparsity=0.5))
    assert not spec.is_classic(dict(rounds=5, sparsity=spec.CLASSIC["sparsity"]))


@pytest.mark.slow
def test_no_figure_file_is_written_by_two_executions_of_the_quick_plan(quick_study):
    _, results, out = quick_study
    assert out.returncode == 0, out.stderr[-2000:]
    writers: dict[str, list[str]] = {}
    for path in sorted(results.glob("notebooks/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        for line in text.splitlines():
            if line.startswith("figure saved: "):
                writers.setdefault(line.removeprefix("figure saved: "), []).append(path.name)
    assert writers and all(len(w) == 1 for w in writers.values()), writers
    assert {w.removeprefix("figures/").removesuffix(".png") for w in writers} <= set(spec.figure_names())
