"""A results folder holds one data set, named in its manifest: runs on other data get a folder of their own, a quick
run never touches the published study, masks and phases 0 carry their identity, every damaged file is named, and
the runner's small defects stay fixed. One test (at least) per defect found by probing, each seen failing before
its fix."""
import contextlib
import json
import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nbformat
import numpy as np
import papermill as pm
import pytest
import torch

import helpers as H
import run_all as R
from conftest import FAST, TINY, dies_at_call, fake_arrays, name_of, resolved, run, run_all, said_set_aside
from lth.data import data_identity, data_source, load_data
from lth.explore import VIEWS, default_choice
from lth.files import save_atomic
from lth.identity import DamagedFile, ResultMismatch
from lth.masks import mask_findings
from lth.readme import write_readme_results
from lth.runs import resolve_hparams
from lth.spec import RunSpec, as_bool
from lth.store import (
    MANIFEST,
    checkpoint_path,
    claim_folder,
    folder_note,
    load_masks,
    load_phase0,
    load_records,
    load_theta0,
    masks_path,
    one_data_set,
    phase0_path,
    record_path,
    results_root,
    run_lock,
    theta0_path,
    write_json,
)

ROOT = H.ROOT



def tracked_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                          text=True).stdout


# 0. The main command, and a notebook run by hand, work for everyone whose CIFAR-10 differs from the committed copy.

@pytest.fixture
def other_data(tmp_path):
    """Data that differs from the committed study's, and the folder the runs on it get; removed afterwards."""
    np.savez(tmp_path / "cifar10.npz", **fake_arrays(n_train=600, n_test=100, seed=7))
    folder = ROOT / f"results_{data_source(tmp_path / 'cifar10.npz')['sha256'][:12]}"
    shutil.rmtree(folder, ignore_errors=True)
    yield tmp_path / "cifar10.npz", folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not (ROOT / "results" / "runs").is_dir(), reason="needs the committed study's results/")
@pytest.mark.slow
def test_the_main_command_and_a_notebook_on_other_data_write_a_folder_of_their_own(other_data, tmp_path):
    npz, folder = other_data
    before = tracked_state()
    out = run_all("--data-dir", str(npz), "--only", "02_lottery_sweep:sparsity=0.5,seed=0", timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"results: {folder.name}/ (results/ holds runs on other data" in out.stdout
    assert len(list((folder / "runs" / "lottery").glob(f"{RunSpec.of('lottery', sparsity=0.5).name}*.json"))) == 1
    listed = run_all("--list", "--data-dir", str(npz), timeout=300)
    assert f"results: {folder.name}/" in listed.stdout and "to do    01_baseline" in listed.stdout
    executed = tmp_path / "02.ipynb"  # the notebook with its default parameters, as in Jupyter or Colab
    pm.execute_notebook(ROOT / "notebooks" / "02_lottery_sweep.ipynb", executed, cwd=ROOT / "notebooks",
                        parameters={"data_dir": str(npz)}, progress_bar=False)
    text = "".join(o.get("text", "") for c in nbformat.read(executed, as_version=4).cells for o in c.get("outputs", []))
    assert f"results: {folder.name}/" in text
    assert tracked_state() == before  # every committed file untouched


def test_a_named_folder_that_holds_other_data_is_refused_with_the_fix(data, tmp_path):
    run(TINY, data, tmp_path)
    np.savez(tmp_path / "other.npz", **fake_arrays(seed=1))
    other = load_data(tmp_path / "other.npz")
    with pytest.raises(ResultMismatch, match="holds runs on other data.*leave results_dir unset"):
        run(replace(TINY, seed=1), other, tmp_path)  # another seed: no record to compare with, the folder refuses
    assert json.loads((tmp_path / MANIFEST).read_text())["data"] == data_identity(data.source)


def test_runs_on_other_data_go_beside_the_default_folder(data, tmp_path, monkeypatch):
    monkeypatch.setenv("LTH_RESULTS", str(tmp_path))
    assert results_root(source=data.source) == tmp_path / "results"  # a new folder: the first run fixes it
    claim_folder(tmp_path / "results", data.source)
    assert results_root(source=data.source) == tmp_path / "results"
    other = {**data.source, "sha256": "f" * 64}
    assert results_root(source=other) == tmp_path / f"results_{'f' * 12}"
    sha = data.source["sha256"][:12]
    assert folder_note(tmp_path / f"results_{'f' * 12}") == (
        f"{tmp_path}/results_{'f' * 12}/ (results/ holds runs on other data, CIFAR-10 from a local .npz copy (sha256 "
        f"{sha}…); runs on this data get a folder of their own)")
    assert folder_note(tmp_path / "results") == f"{tmp_path}/results/"
    # a named folder is said as it is, wherever it lies and whatever it is called
    assert folder_note(tmp_path / "mine_1") == f"{tmp_path}/mine_1/"
    assert folder_note(tmp_path / "elsewhere" / "results_1") == f"{tmp_path}/elsewhere/results_1/"
    assert folder_note(H.ROOT / "results_mine") == "results_mine/"


# A. A quick run never touches the published study, and executed notebooks never share a file.

def test_a_quick_run_is_refused_in_the_published_results(fake_npz):
    out = run_all("--quick", "--list", "--data-dir", str(fake_npz), "--results-dir", "results", timeout=300)
    assert out.returncode == 2 and "a quick run never writes under results/" in out.stderr


def test_executed_notebook_names_carry_epochs_and_quick():
    spec = RunSpec.of("lottery", quick=True, sparsity=0.5, seed=0)
    quick = R.output_path(Path("r"), R.Job("02_lottery_sweep", {"sparsity": 0.5, "seed": 0}, spec, quick=True))
    real = R.output_path(Path("r"), R.Job("02_lottery_sweep", {"sparsity": 0.5, "seed": 0},
                                          RunSpec.of("lottery", sparsity=0.5, seed=0)))
    assert quick.name == "02_lottery_sweep__sparsity=0.5__epochs=1__quick=True__seed=0.ipynb"
    assert real.name == "02_lottery_sweep__sparsity=0.5__seed=0.ipynb"  # the committed names stay


def test_the_readme_is_written_only_from_the_published_study_on_one_data_set(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results: written by notebooks/06_summary.ipynb from the records -->\nold\n"
                      "<!-- end of results -->\n")
    record = {"name": "x", "data": {"sha256": "b" * 64}}
    said = write_readme_results("new", tmp_path / "scratch", [record], readme)
    assert "written from results/ only" in said and "old" in readme.read_text()
    monkeypatch.setattr("lth.store.PUBLISHED_RESULTS", tmp_path / "published")
    write_json(tmp_path / "published" / MANIFEST, {"data": {"sha256": "a" * 64, "subset": None}})
    said = write_readme_results("new", tmp_path / "published", [record], readme)
    assert "were not rewritten: 1 runs (x)" in said and "old" in readme.read_text()


# B. One folder, one data set; nothing pools across data sets.

def test_the_summary_refuses_to_pool_records_of_different_data():
    a, b = {"data": {"sha256": "a" * 64, "description": "A"}}, {"data": {"sha256": "b" * 64, "description": "B"}}
    assert one_data_set([a, a]) == [a, a]
    import re
    with pytest.raises(ResultMismatch, match=re.escape(
            f"these records were made on different data, so they are not pooled: 2 runs on A (sha256 {'a' * 12}…); "
            f"1 runs on B (sha256 {'b' * 12}…). Keep each data set in a results folder of its own.")):
        one_data_set([a, b, a])


# C. Masks carry their run's identity; a forced run writes nothing beside the old record until it is complete.

def test_masks_copied_from_another_run_are_refused_naming_both_files(data, tmp_path):
    lottery = run(TINY, data, tmp_path)
    random_spec = RunSpec.of("random", sparsity=0.5, rounds=2, epochs=1, model="tiny")
    run(random_spec, data, tmp_path)
    shutil.copy(masks_path(tmp_path, random_spec, resolved()), masks_path(tmp_path, TINY, resolved()))
    with pytest.raises(ResultMismatch, match=rf"{name_of(TINY)}\.masks\.npz holds the masks of another run than .*"
                                               rf"{name_of(TINY)}\.json \(params\.experiment saved 'random'"):
        load_masks(tmp_path, lottery)
    skipped = []
    mask_findings(load_records(tmp_path), tmp_path, skipped=skipped)
    assert any("holds the masks of another run" in s for s in skipped)


def test_a_forced_run_killed_before_its_record_leaves_the_old_run_whole(data, tmp_path, monkeypatch):
    run(TINY, data, tmp_path)
    before = {p: p.read_bytes() for p in [record_path(tmp_path, TINY, resolved()),
                                          masks_path(tmp_path, TINY, resolved()),
                                          *tmp_path.glob("checkpoints/phase0/*.pt")]}
    real_write_json = write_json

    def killed_at_the_record(path, obj):
        if path == record_path(tmp_path, TINY, resolved()):
            raise KeyboardInterrupt
        real_write_json(path, obj)
    monkeypatch.setattr("lth.store.write_json", killed_at_the_record)
    with pytest.raises(KeyboardInterrupt):
        run(TINY, data, tmp_path, force=True)
    assert {p: p.read_bytes() for p in before} == before  # record, masks and the shared phase 0 as they were
    monkeypatch.undo()
    record = run(TINY, data, tmp_path, force=True)  # resumes, then completes
    assert load_masks(tmp_path, record) and not checkpoint_path(tmp_path, TINY, resolved()).exists()


def test_a_phase0_file_whose_content_is_not_its_name_is_refused(data, tmp_path):
    run(TINY, data, tmp_path)
    other = replace(TINY, experiment="random", strategy="random")
    path, = tmp_path.glob("checkpoints/phase0/*.pt")
    saved = torch.load(path)
    saved["identity"]["model"]["epochs"] = 3  # a phase 0 of another length, under this one's name
    save_atomic(saved, path)  # written by the project, with other content
    with pytest.raises(ResultMismatch, match=r"phase0/.*model\.epochs saved 3, asked 1"):
        run(other, data, tmp_path)


# D. `auto` keeps the precision of a folder's interrupted runs too, and a mismatch names the precision to use.

def test_auto_keeps_the_precision_of_an_interrupted_run(data, tmp_path, monkeypatch):
    dies_at_call(monkeypatch, 3)  # dies in round 2: phase 0 and round 1 are saved, no record
    with pytest.raises(KeyboardInterrupt):
        run(TINY, data, tmp_path, replace(FAST, precision="fp32"))
    monkeypatch.undo()
    monkeypatch.setattr("lth.precision.pick_precision", lambda dev: "bf16")  # what this device alone would pick
    assert resolve_hparams(replace(FAST, precision="auto"), torch.device("cpu"), tmp_path).precision == "fp32"
    ckpt = checkpoint_path(tmp_path, TINY, replace(FAST, precision="fp32"))
    saved = ckpt.read_bytes()
    other = run(TINY, data, tmp_path, replace(FAST, precision="bf16"))  # another precision: a run of its own
    assert other["hparams"]["precision"] == "bf16" and ckpt.read_bytes() == saved


@pytest.mark.parametrize("kept", ["its record", "its checkpoint", "its phase 0"])
def test_auto_takes_the_precision_of_each_kind_of_file_a_folder_holds(kept, data, tmp_path, monkeypatch):
    fp32 = replace(FAST, precision="fp32")
    with monkeypatch.context() as m:
        if kept != "its record":
            dies_at_call(m, 3)  # dies in round 2: its phase 0 and a checkpoint after round 1 are saved
        with pytest.raises(KeyboardInterrupt) if kept != "its record" else contextlib.nullcontext():
            run(TINY, data, tmp_path, fp32)
    for path in tmp_path.glob("checkpoints/**/*.pt"):
        if not (kept == "its phase 0" and path.parent.name == "phase0" or kept == "its checkpoint"
                and path.parent.name == "checkpoints"):
            path.unlink()
    monkeypatch.setattr("lth.precision.pick_precision", lambda dev: "bf16")  # what this device alone would pick
    assert resolve_hparams(replace(FAST, precision="auto"), torch.device("cpu"), tmp_path).precision == "fp32"
    assert resolve_hparams(replace(FAST, precision="auto"), torch.device("cpu"), tmp_path / "new").precision == "bf16"
    if kept == "its checkpoint":  # and the run asked with "auto" resumes in it
        assert run(TINY, data, tmp_path, replace(FAST, precision="auto"))["hparams"]["precision"] == "fp32"


# E. Every file a notebook reads is named when it cannot be read, and the rest goes on.

def flip_middle(path: Path, n: int = 64) -> None:
    """64 bytes in the middle of the file's largest entry (.pt and .npz files are zip archives), inverted: numbers of
    a tensor become other numbers, and the archive stays readable."""
    import zipfile
    with zipfile.ZipFile(path) as z:
        entry = max(z.infolist(), key=lambda i: i.compress_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = int.from_bytes(data[entry.header_offset + 26:entry.header_offset + 28], "little"), \
        int.from_bytes(data[entry.header_offset + 28:entry.header_offset + 30], "little")
    middle = entry.header_offset + 30 + name_length + extra_length + entry.compress_size // 2
    data[middle:middle + n] = bytes(b ^ 0xFF for b in data[middle:middle + n])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["phase 0", "θ0", "checkpoint", "masks"])
def test_a_damaged_byte_in_a_binary_file_is_never_read_as_a_weight(kind, data, tmp_path, capsys, monkeypatch):
    record = run(TINY, data, tmp_path)
    if kind == "checkpoint":  # an interrupted run: its checkpoint after round 1 is damaged, so it restarts
        spec = replace(TINY, seed=1)
        with monkeypatch.context() as m:
            dies_at_call(m, 3)
            with pytest.raises(KeyboardInterrupt):
                run(spec, data, tmp_path)
        ckpt = checkpoint_path(tmp_path, spec, resolved())
        flip_middle(ckpt)
        resumed = run(spec, data, tmp_path)
        assert said_set_aside(capsys.readouterr().out, ckpt, "the run restarts after its phase 0")
        again = run(spec, data, tmp_path / "uninterrupted")
        numbers = lambda r: [(e["round"], e["val_acc"], e["train_loss"]) for e in r["history"]]
        assert numbers(resumed) == numbers(again)
        return
    path = {"phase 0": phase0_path(tmp_path, TINY, resolved(), data.source), "θ0": theta0_path(tmp_path, TINY),
            "masks": masks_path(tmp_path, TINY, resolved())}[kind]
    flip_middle(path)
    if kind == "θ0":  # set aside and drawn again, bit for bit
        theta0 = load_theta0(tmp_path, TINY)
        assert f"{path} is damaged" in capsys.readouterr().out and path.with_suffix(".pt.damaged").exists()
        drawn = H.snapshot(H.build_model(TINY.seed, TINY.batchnorm, TINY.dropout, TINY.model))
        assert all(torch.equal(theta0[k], v) for k, v in drawn.items())
        return
    with pytest.raises(DamagedFile, match=f"{path} is damaged"):  # masks: zip's CRC; .pt: the file's checksum
        load_phase0(tmp_path, record) if kind == "phase 0" else load_masks(tmp_path, record)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_masks_or_phase0_file_is_named_and_the_summary_goes_on(damage, data, tmp_path):
    run(TINY, data, tmp_path)
    run(RunSpec.of("random", sparsity=0.5, rounds=2, epochs=1, model="tiny"), data, tmp_path)
    phase0 = list(tmp_path.glob("checkpoints/phase0/*.pt"))
    masks = masks_path(tmp_path, TINY, resolved())
    for path in phase0 + [masks] * (damage == "truncate"):  # a run without masks is no error
        path.write_bytes(path.read_bytes()[:300]) if damage == "truncate" else path.unlink()
    skipped, records = [], load_records(tmp_path)
    mask_findings(records, tmp_path, skipped=skipped)  # no BadZipFile, no PytorchStreamReader error
    assert skipped and all(str(tmp_path) in s for s in skipped)
    for view in VIEWS.values():
        assert view(records, tmp_path, {**default_choice(records), "sparsity": 0.5}).axes


def test_a_relative_results_dir_is_where_the_user_stands_and_said_in_full(fake_npz, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "run_all.py"), "--list", "--quick", "--data-dir", str(fake_npz),
                          "--results-dir", "mine", "--only", "01_baseline"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"results: {tmp_path.resolve() / 'mine'}/\n")


# F. Reading never writes: --list works on a read-only folder.

def test_list_works_on_a_read_only_folder(fake_npz, tmp_path):
    run(TINY, load_data(fake_npz), tmp_path / "results")
    (tmp_path / "read-only").mkdir()
    mount = subprocess.run(["mount", "--bind", "-o", "ro", str(tmp_path / "results"), str(tmp_path / "read-only")],
                           capture_output=True, text=True)
    if mount.returncode:
        pytest.skip(f"a read-only bind mount is not permitted here: {mount.stderr.strip()}")
    try:
        out = run_all("--list", "--data-dir", str(fake_npz), "--results-dir", str(tmp_path / "read-only"), "--only",
                      "02_lottery_sweep", timeout=300)
    finally:
        subprocess.run(["umount", str(tmp_path / "read-only")], check=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("to do    02_lottery_sweep") == 7  # the sweep, the classic curve, and the classic curve
    assert "= the run above: late rewinding shares its phase 0" in out.stdout  # from late rewinding's phase 0


# G. Inputs that passed silently.

def test_an_only_filter_that_matches_nothing_lists_the_values(fake_npz):
    out = run_all("--list", "--data-dir", str(fake_npz), "--only", "02_lottery_sweep:sparsity=0.55", timeout=300)
    assert out.returncode == 2 and "matches no run" in out.stderr and "0.1, 0.2, 0.3, 0.4, 0.5" in out.stderr
    out = run_all("--list", "--data-dir", str(fake_npz), "--only", "02_lottery_sweep:sparsty=0.5", timeout=300)
    assert out.returncode == 2 and "sparsty: None" in out.stderr


@pytest.mark.parametrize("text, value", [("True", True), ("no", False), ("YES", True), ("0", False), (1, True)])
def test_flags_accept_the_usual_spellings(text, value):
    assert as_bool("force", text) is value


def test_a_flag_that_is_not_a_boolean_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"force='nope': must be True or False \(papermill: -p force True\)"):
        as_bool("force", "nope")


@pytest.mark.slow
def test_papermill_no_means_no(tmp_path):
    np.savez(tmp_path / "cifar10.npz", **fake_arrays(n_train=600, n_test=100))
    params = {"data_dir": str(tmp_path / "cifar10.npz"), "results_dir": str(tmp_path / "results"),
              "progress": False, "quick": "yes"}
    pm.execute_notebook(ROOT / "notebooks" / "05_random_reinit.ipynb", tmp_path / "a.ipynb", parameters=params,
                        cwd=ROOT / "notebooks", progress_bar=False)
    record, = (tmp_path / "results").glob("runs/reinit/*.json")
    before = record.read_bytes()
    pm.execute_notebook(ROOT / "notebooks" / "05_random_reinit.ipynb", tmp_path / "b.ipynb",
                        parameters={**params, "force": "no"}, cwd=ROOT / "notebooks", progress_bar=False)
    assert record.read_bytes() == before  # not recomputed


# H. Smaller.

def test_a_run_another_runner_took_meanwhile_is_skipped_not_executed_again(data, tmp_path, monkeypatch):
    hp = resolve_hparams(FAST, torch.device("cpu"))
    study = R.Study(tmp_path, data, hp)
    job = R.Job("02_lottery_sweep", {"sparsity": 0.5, "seed": 0}, TINY)
    executed = []
    monkeypatch.setattr(R, "execute", lambda *a, **k: executed.append(a))
    lock = run_lock(tmp_path, name_of(TINY))  # another runner holds it, as after this one's triage
    lock.acquire()
    try:
        args, done = R.parse_args(["--data-dir", "x"]), []
        R.run_sequential(args, [job], study, [], done)
        assert done == []
    finally:
        lock.release()
    assert executed == [] and not (tmp_path / "timing.csv").exists()


def test_an_execution_never_leaves_a_temporary_notebook_in_the_results(tmp_path, monkeypatch):
    seen = []

    def killed(src, out, **kw):
        seen.append(Path(out))
        Path(out).write_text("{}")
        raise RuntimeError("kernel died")
    monkeypatch.setattr(pm, "execute_notebook", killed)
    out = tmp_path / "notebooks" / "05_random_reinit__seed=0.ipynb"
    with pytest.raises(RuntimeError):
        R.execute(R.Job("05_random_reinit", {"seed": 0}, None), out, {})
    assert seen[0].parent != out.parent and not seen[0].exists()
    assert stat.S_IMODE(out.with_suffix(".failed.ipynb").stat().st_mode) == 0o644


def test_epochs_to_train_count_only_runs_that_will_train(data, tmp_path, monkeypatch):
    run(TINY, data, tmp_path)
    differs = replace(TINY, seed=1)
    dies_at_call(monkeypatch, 3)  # a checkpoint after round 1, whose content is then not what its name says
    with pytest.raises(KeyboardInterrupt):
        run(differs, data, tmp_path)
    monkeypatch.undo()
    ckpt = checkpoint_path(tmp_path, differs, resolved())
    saved = torch.load(ckpt, weights_only=False)
    save_atomic({**saved, "identity": {**saved["identity"], "hparams": {**saved["identity"]["hparams"], "lr": 0.01}}},
               ckpt)
    study = R.Study(tmp_path, data, resolve_hparams(FAST, torch.device("cpu")))
    assert study.status(TINY) == "done" and study.status(differs) == "differs"
    assert study.epochs_left([TINY, differs]) == 0
    assert study.epochs_left([replace(TINY, seed=2)]) == 3  # its phase 0 and two rounds


@pytest.mark.slow
def test_a_damaged_file_set_aside_is_said_on_the_console(tmp_path):
    np.savez(tmp_path / "cifar10.npz", **fake_arrays(n_train=600, n_test=100))
    args = ["--quick", "--data-dir", str(tmp_path / "cifar10.npz"), "--results-dir", str(tmp_path / "results")]
    assert run_all(*args, "--only", "05_random_reinit:rounds=5", timeout=600).returncode == 0
    path, = (tmp_path / "results").glob("checkpoints/phase0/*.pt")
    path.write_bytes(path.read_bytes()[:500])
    out = run_all(*args, "--only", "02_lottery_sweep:sparsity=0.5", timeout=600)
    assert out.returncode == 0 and f"{path} was damaged and is set aside" in out.stderr


def test_a_record_names_every_device_that_computed_it(data, tmp_path, monkeypatch):
    monkeypatch.setattr("lth.precision.describe_device", lambda dev, precision=None: "machine A")
    dies_at_call(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(TINY, data, tmp_path)
    monkeypatch.undo()
    monkeypatch.setattr("lth.precision.describe_device", lambda dev, precision=None: "machine B")
    record = run(TINY, data, tmp_path)
    assert [e["device"] for e in record["history"]] == ["machine A", "machine B", "machine B"]
    assert record["device"] == "machine A; machine B"


# G. Results integrity, third round: one record per run, no stale checkpoint finishes a run, no source overwritten.

def test_a_partial_checkpoint_of_a_forced_rerun_never_replaces_a_finished_runs_masks(data, tmp_path, monkeypatch):
    first = run(TINY, data, tmp_path)
    masks = masks_path(tmp_path, TINY, resolved()).read_bytes()
    dies_at_call(monkeypatch, 2)  # the forced rerun (phase 0 loaded) dies in round 2: its checkpoint holds round 1
    with pytest.raises(KeyboardInterrupt):
        run(TINY, data, tmp_path, force=True)
    monkeypatch.undo()
    assert run(TINY, data, tmp_path) == first  # the finished run, as it was
    assert masks_path(tmp_path, TINY, resolved()).read_bytes() == masks and len(load_masks(tmp_path, first)) == 2
    assert checkpoint_path(tmp_path, TINY, resolved()).exists()  # the forced run is still in progress


@pytest.mark.parametrize("copy", ["X (copy).json", "X.bak.json", "../random/X.json"])
def test_a_copied_record_is_a_stray_file_never_another_seed(copy, data, tmp_path):
    record = run(TINY, data, tmp_path)
    path = record_path(tmp_path, TINY, resolved())
    target = (path.parent / copy.replace("X", path.stem)).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, target)
    skipped = []
    with pytest.warns(UserWarning, match="is a stray file"):
        assert load_records(tmp_path, skipped=skipped) == [load_records(tmp_path, "lottery")[0]]
    assert len(skipped) == 1 and str(target) in skipped[0] and record["name"] in skipped[0]


def test_where_runs_go_named_quick_or_of_their_data_and_each_refusal_says_the_fix(data, tmp_path, monkeypatch):
    """results_root in one process: the default folders, a named one as it is, a folder of the data's own beside the
    default, and each refusal in full (what was wrong, and what to do)."""
    import re
    monkeypatch.setenv("LTH_RESULTS", str(tmp_path))
    assert results_root() == tmp_path / "results" and results_root(quick="yes") == tmp_path / "results_quick"
    assert results_root(quick=True, source=data.source) == tmp_path / "results_quick"
    with pytest.raises(ValueError, match=re.escape("quick='maybe': must be True or False (papermill: -p quick True).")):
        results_root(quick="maybe")
    assert results_root(tmp_path / "mine", quick=True) == tmp_path / "mine"
    with pytest.raises(ValueError, match=re.escape(
            "results_dir='results/mine': a quick run never writes under results/, the published study; leave "
            "results_dir unset (quick runs go to results_quick/) or name another folder.")):
        results_root("results/mine", quick=True)
    for name in ("code.py", "notebook.ipynb"):  # either kind of source file alone
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text("")
        with pytest.raises(ValueError, match=re.escape(
                f"results_dir={str(folder)!r} holds source files (the repository, notebooks/, ...): runs and executed "
                "notebooks written there would overwrite them. Name a folder of its own, e.g. results_mine, or leave "
                "results_dir unset.")):
            results_root(folder)
    claim_folder(tmp_path / "results", {**data.source, "sha256": "f" * 64})
    assert results_root() == tmp_path / "results"  # no data named: the default folder, whatever it holds
    assert results_root(source=data.source) == tmp_path / f"results_{data.source['sha256'][:12]}"


def test_a_notebook_says_its_data_folder_device_and_precision_before_anything_trains(fake_npz, tmp_path, capsys):
    from lth.precision import describe_device
    from lth.runs import notebook_setup
    data, results, hp = notebook_setup(str(fake_npz), "yes", str(tmp_path / "mine"), "cpu", "fp32")
    assert len(data.x_train) == min(256, 2048) and data.source["subset"] == [2048, 1024]
    assert results == tmp_path / "mine" and hp == H.HParams(precision="fp32")
    assert not (results / "data.json").exists()  # checked, not claimed: the first run claims the folder
    assert capsys.readouterr().out == (
        f"data: CIFAR-10 from a local .npz copy (sha256 {data.source['sha256'][:12]}…, quick subset of 2048/1024 "
        f"images), cifar10.npz\nresults: {tmp_path}/mine/\ndevice: {describe_device(torch.device('cpu'), 'fp32')}\n"
        "precision: fp32 (asked: fp32)\n")
    claim_folder(tmp_path / "mine", {**data.source, "sha256": "f" * 64})
    with pytest.raises(ResultMismatch):
        notebook_setup(str(fake_npz), True, str(tmp_path / "mine"), "cpu", "fp32")


def test_a_notebook_without_a_named_folder_uses_its_datas_own_and_the_precision_of_its_runs(fake_npz, tmp_path,
                                                                                               monkeypatch, capsys):
    from lth.runs import notebook_setup
    monkeypatch.setenv("LTH_RESULTS", str(tmp_path))
    claim_folder(tmp_path / "results_quick", {"sha256": "f" * 64, "subset": [2048, 1024], "description": "other"})
    data, results, _ = notebook_setup(str(fake_npz), True, None, "cpu", "fp32")
    own = tmp_path / f"results_quick_{data.source['sha256'][:12]}"
    assert results == own and f"results: {own}/ (results_quick/ holds runs on other data" in capsys.readouterr().out
    run(TINY, data, own, replace(FAST, precision="fp32"))
    monkeypatch.setattr("lth.precision.pick_precision", lambda dev: "bf16")  # what this device alone would pick
    assert notebook_setup(str(fake_npz), True, None, "cpu", "auto")[2].precision == "fp32"


@pytest.mark.parametrize("folder", [".", "notebooks", "lth", ".."])
def test_a_results_folder_holding_source_files_is_refused(folder):
    with pytest.raises(ValueError, match="holds source files"):
        results_root(folder)
