"""Results integrity: a saved result is reused only for the run asked, resumes are exact, nothing is destroyed,
damaged files are named, and concurrent writers do not clash. One test (at least) per defect found by probing."""
import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import helpers as H
from conftest import FAST, TINY, dies_at_call, fake_arrays, name_of, resolved, run, said_set_aside
from lth.data import load_data, subset
from lth.identity import DamagedFile, ResultMismatch, run_name
from lth.runs import resolve_hparams
from lth.spec import RunSpec
from lth.store import checkpoint_path, load_masks, load_records, record_path, save_atomic, write_json

ROOT = H.ROOT



def count_training(monkeypatch) -> list[str]:
    calls, train = [], H.train
    monkeypatch.setattr(H, "train", lambda *a, **k: calls.append(k.get("desc")) or train(*a, **k))
    return calls


def run_all(*args, **kw):
    return subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, **kw)


def quick_args(tmp_path, n_train=600, n_test=100):
    np.savez(tmp_path / "cifar10.npz", **fake_arrays(n_train=n_train, n_test=n_test))
    return ["--quick", "--data-dir", str(tmp_path / "cifar10.npz"), "--results-dir", str(tmp_path / "results")]


# 1. A finished record or a round checkpoint is reused only when it is the run asked for.

def test_a_record_whose_content_is_not_its_runs_is_not_returned(data, tmp_path):
    run(TINY, data, tmp_path)
    path = record_path(tmp_path, TINY, resolved())
    path.write_text(path.read_text().replace('"lr": 0.05', '"lr": 0.01'))  # copied from, or edited to, another run
    with pytest.raises(ResultMismatch, match="hparams.lr saved 0.01, asked 0.05.*--force"):
        run(TINY, data, tmp_path)


def test_a_checkpoint_whose_content_is_not_its_runs_is_not_resumed(data, tmp_path, monkeypatch):
    dies_at_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(TINY, data, tmp_path)  # dies in round 2: phase 0 and round 1 are saved
    phase0 = {p: p.read_bytes() for p in tmp_path.glob("checkpoints/phase0/*.pt")}
    ckpt = checkpoint_path(tmp_path, TINY, resolved())
    saved = torch.load(ckpt, weights_only=False)
    save_atomic({**saved, "identity": {**saved["identity"], "hparams": {**saved["identity"]["hparams"], "lr": 0.01}}},
                ckpt)
    monkeypatch.undo()
    with pytest.raises(ResultMismatch, match=r"\.pt was made with other settings .*hparams.lr"):
        run(TINY, data, tmp_path)
    assert {p: p.read_bytes() for p in phase0} == phase0  # the shared phase 0 was not overwritten


def test_a_record_made_on_other_data_is_not_returned(data, tmp_path):
    run(TINY, data, tmp_path)
    np.savez(tmp_path / "other.npz", **fake_arrays(seed=1))
    with pytest.raises(ResultMismatch, match="holds runs on other data"):
        run(TINY, load_data(tmp_path / "other.npz"), tmp_path)


# 2. The data is its content, not its path; results carry no machine paths.

def test_the_same_data_file_elsewhere_reuses_phase0_and_no_path_is_saved(fake_npz, tmp_path, monkeypatch):
    run(TINY, load_data(fake_npz), tmp_path / "results")
    (tmp_path / "moved").mkdir()
    os.symlink(fake_npz, tmp_path / "moved" / "cifar10.npz")
    calls = count_training(monkeypatch)
    other = RunSpec.of("random", sparsity=0.5, rounds=1, epochs=1, model="tiny")
    record = run(other, load_data(tmp_path / "moved"), tmp_path / "results")
    assert calls == ["round 1/1"]  # phase 0 came from the first run
    saved = record_path(tmp_path / "results", other, resolved()).read_text()
    assert str(tmp_path) not in saved and record["data"]["file"] == "cifar10.npz"


# 3. --force never destroys what it has not replaced.

def test_force_keeps_the_old_record_until_the_new_run_is_complete(data, tmp_path, monkeypatch):
    run(TINY, data, tmp_path)
    before = record_path(tmp_path, TINY, resolved()).read_text()
    dies_at_call(monkeypatch, 2, RuntimeError("disk full"))  # phase 0 is loaded; round 2 fails
    with pytest.raises(RuntimeError, match="disk full"):
        run(TINY, data, tmp_path, force=True)
    assert record_path(tmp_path, TINY, resolved()).read_text() == before
    monkeypatch.undo()
    new = run(TINY, data, tmp_path, force=True)  # resumes the forced run from its round 1, then replaces
    assert json.loads(record_path(tmp_path, TINY, resolved()).read_text()) == new
    assert new["seconds"] != json.loads(before)["seconds"]


@pytest.mark.slow
def test_force_with_a_mistyped_data_dir_destroys_nothing(tmp_path):
    args = quick_args(tmp_path)
    assert run_all(*args, "--only", "05_random_reinit:rounds=5", timeout=600).returncode == 0
    results = tmp_path / "results"
    saved = {p: p.read_bytes() for p in [*results.glob("runs/*/*"), *results.glob("notebooks/*.ipynb")]}
    out = run_all(*args[:1], "--data-dir", str(tmp_path / "cifar10.npzz"), "--results-dir", str(results),
                  "--only", "05_random_reinit:rounds=5", "--force")
    assert out.returncode == 2 and "cifar10.npzz" in out.stderr
    assert {p: p.read_bytes() for p in saved} == saved


# 4. Every arm resumes exactly, whatever the memory layout of the model it resumes into.

@pytest.mark.parametrize("experiment", ["lottery", "random", "reinit"])
@pytest.mark.parametrize("dies_at", [2, 3], ids=["after phase 0", "after round 1 of 3"])
def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(experiment, dies_at, data, tmp_path, monkeypatch):
    spec = RunSpec.of(experiment, sparsity=0.5, rounds=3, epochs=1, dropout=0.1, model="tiny")
    whole = run(spec, data, tmp_path / "whole")
    dies_at_call(monkeypatch, dies_at)
    with pytest.raises(KeyboardInterrupt):
        run(spec, data, tmp_path / "resumed")
    monkeypatch.undo()
    resumed = run(spec, data, tmp_path / "resumed")
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]
    assert strip(resumed["history"]) == strip(whole["history"])
    assert all(torch.equal(a[k], b[k]) for (a, b) in zip(load_masks(tmp_path / "whole", whole).values(),
                                                         load_masks(tmp_path / "resumed", resumed).values()) for k in a)


# 5. A notebook counts as done only when its executed copy finished.

@pytest.mark.slow
def test_a_half_written_notebook_is_executed_again(tmp_path):
    args = quick_args(tmp_path)
    assert run_all(*args, "--only", "05_random_reinit:rounds=5", timeout=600).returncode == 0
    out = tmp_path / "results" / "notebooks" / "05_random_reinit__epochs=1__quick=True__seed=0.ipynb"
    nb = nbformat.read(out, as_version=4)
    for cell in nb.cells[-3:]:  # as papermill leaves it when killed: the last cells never ran
        cell.metadata["papermill"]["status"] = "pending"
        cell.outputs = []
    nb.metadata["papermill"]["end_time"] = None
    nbformat.write(nb, out)
    import run_all as R
    assert not R.notebook_finished(out)
    again = run_all(*args, "--only", "05_random_reinit:rounds=5", timeout=600)
    assert again.returncode == 0 and "[1/1] 05_random_reinit" in again.stdout
    assert R.notebook_finished(out)


# 6. A damaged file is named, with what to do, and does not stop unrelated runs.

def test_a_truncated_checkpoint_is_set_aside_and_the_run_restarts(data, tmp_path, monkeypatch, capsys):
    dies_at_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(TINY, data, tmp_path)
    monkeypatch.undo()
    ckpt = checkpoint_path(tmp_path, TINY, resolved())
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    import run_all as R
    study = R.Study(tmp_path, data, resolve_hparams(FAST, torch.device("cpu")))
    assert study.status(TINY) == "partial" and study.rounds_done(TINY) == 0  # --list does not crash
    record = run(TINY, data, tmp_path)
    assert [e["round"] for e in record["history"]] == [0, 1, 2]
    assert f"{ckpt} is damaged" in capsys.readouterr().out and ckpt.with_name(ckpt.name + ".damaged").exists()


def test_a_truncated_record_is_named_and_the_others_still_load(data, tmp_path):
    run(TINY, data, tmp_path)
    other = RunSpec.of("random", sparsity=0.5, rounds=1, epochs=1, model="tiny")
    run(other, data, tmp_path)
    path = record_path(tmp_path, TINY, resolved())
    path.write_text(path.read_text()[:200])
    with pytest.warns(UserWarning, match=f"{path.name} is damaged.*git checkout"):
        assert [r["name"] for r in load_records(tmp_path)] == [run_name(other, resolved())]
    with pytest.raises(DamagedFile, match=f"{path} is damaged.*delete it to compute the run again"):
        run(TINY, data, tmp_path)


def test_a_truncated_phase0_is_set_aside_and_trained_again(data, tmp_path, capsys):
    first = run(TINY, data, tmp_path)
    path, = tmp_path.glob("checkpoints/phase0/*.pt")
    path.write_bytes(path.read_bytes()[:500])
    other = RunSpec.of("random", sparsity=0.5, rounds=2, epochs=1, model="tiny")
    record = run(other, data, tmp_path)
    assert record["history"][0]["val_acc"] == first["history"][0]["val_acc"]
    assert f"{path} is damaged" in capsys.readouterr().out


# 7. Two writers never clash; a failing disk never hides the real error.

def _save_many(path: str, n: int) -> None:
    for i in range(n):
        save_atomic({"i": torch.tensor(i)}, Path(path))
        write_json(Path(path).with_suffix(".json"), {"i": i})


def test_two_processes_saving_the_same_files_do_not_clash(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(str(tmp_path / "x.pt"), 150)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert torch.load(tmp_path / "x.pt")["i"] == 149 and json.loads((tmp_path / "x.json").read_text())["i"] == 149
    assert not list(tmp_path.glob("*.tmp"))


TWO_RUNNERS = """
import sys; sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
import torch; torch.set_num_threads(1)
from conftest import FAST
from lth.data import load_data
from lth.runs import run_experiment
from lth.spec import RunSpec
spec = RunSpec.of("lottery", sparsity=0.5, rounds=2, epochs=1)
run_experiment(spec, load_data({npz!r}), "cpu", {results!r}, FAST, progress=False)
"""


@pytest.mark.slow
def test_two_processes_on_one_results_folder_train_everything_once(fake_npz, tmp_path):
    code = TWO_RUNNERS.format(root=str(ROOT), tests=str(ROOT / "tests"), npz=str(fake_npz),
                              results=str(tmp_path / "results"))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    both = "".join(outputs)
    assert both.count("phase 0 (1 epochs dense)") == 1 and both.count("round 2/2 at sparsity") == 1, outputs


def test_a_failed_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full_disk(obj, f):
        open(f, "wb").write(b"half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"x": 1}, tmp_path / "ckpt.pt")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_timing_log_does_not_stop_the_batch(tmp_path, capsys):
    import run_all as R
    (tmp_path / "timing.csv").mkdir()  # writing it fails as a read-only or full disk would
    R.log_timing(tmp_path, {"notebook": "x", "seconds": 1})
    assert "could not write" in capsys.readouterr().err


@pytest.mark.parametrize("what", ["figure", "timing.csv"])
def test_a_summary_killed_while_writing_leaves_the_previous_figure_and_timing_log_whole(what, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    import run_all as R
    from lth.plots import save_figure
    write = lambda: save_figure(plt.figure(), "classic_curve", tmp_path) if what == "figure" else \
        R.log_timing(tmp_path, {"notebook": "06_summary", "seconds": 7})
    write()
    path = tmp_path / ("figures/classic_curve.png" if what == "figure" else "timing.csv")
    before = path.read_bytes()

    def killed(self, *a, **k):  # half the bytes reach the disk, then the process is killed
        Path(a[0] if what == "figure" else self).write_bytes(before[:len(before) // 2])
        raise KeyboardInterrupt
    monkeypatch.setattr(*(("matplotlib.figure.Figure.savefig", killed) if what == "figure" else
                          ("pathlib.Path.write_text", killed)))
    with pytest.raises(KeyboardInterrupt):
        write()
    assert path.read_bytes() == before and not list(path.parent.glob(".*.tmp"))


# 8. Smaller defects, each a clear error with its fix.

def test_ctrl_c_counts_the_executions_that_finished_before_it(fake_npz, tmp_path, monkeypatch, capsys):
    import run_all as R
    calls = []

    def execute(job, out, parameters):  # two notebooks finish, then the user presses Ctrl-C in the third
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
    monkeypatch.setattr(R, "execute", execute)
    monkeypatch.setattr(R, "log_timing", lambda *a: None)
    code = R.main(["--quick", "--data-dir", str(fake_npz), "--results-dir", str(tmp_path / "r"), "--only",
                   "01_baseline"])
    assert code == 130 and "interrupted: 2 of 4 executions finished" in capsys.readouterr().err

def test_a_ray_node_that_fails_to_start_names_what_failed_and_the_fix(monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")
    from types import SimpleNamespace

    from lth.cluster import run_parallel

    def fails(*a, **k):
        raise ConnectionError("Failed to start the GCS server: port 6379 is in use\n(long Ray traceback)")
    monkeypatch.setattr(ray, "init", fails)
    failed = []
    args = SimpleNamespace(address=None, workers=2, threads_per_run=None)
    run_parallel(args, [], None, failed, [])
    assert failed == ["a local Ray node did not start (ConnectionError: Failed to start the GCS server: port 6379 is "
                      "in use). Nothing ran. Run "
                      "without --workers (one run at a time, no Ray), or clear a stale node with `ray stop`, then "
                      "run again."]

@pytest.mark.slow
def test_ctrl_c_ends_with_one_line_saying_how_to_resume(tmp_path):
    args = quick_args(tmp_path, n_train=2048, n_test=200)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_all.py"), *args, "--only",
                             "02_lottery_sweep:rounds=5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while not list((tmp_path / "results" / "checkpoints").glob("phase0/*.pt")) and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the runner and its kernel
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip() and "IPKernelApp" not in line]
    assert len(lines) == 1 and "interrupted: 0 of 5 executions finished" in lines[0] and "again to resume" in lines[0]


def test_a_bad_data_dir_fails_once_and_creates_nothing(tmp_path):
    out = run_all("--data-dir", str(tmp_path / "nope"), "--only", "02_lottery_sweep", timeout=120)
    assert out.returncode == 2 and out.stderr.count("CIFAR-10 not found") == 1
    assert not (tmp_path / "nope").exists()


def test_empty_and_fractional_data_are_named(tmp_path):
    arrays = fake_arrays()
    np.savez(tmp_path / "empty.npz", **{**arrays, "x_test": arrays["x_test"][:0], "y_test": arrays["y_test"][:0]})
    with pytest.raises(H.DataError, match=r"empty.npz: x_test is uint8 \(0, 32, 32, 3\).*N > 0"):
        load_data(tmp_path / "empty.npz")
    np.savez(tmp_path / "frac.npz", **{**arrays, "y_train": arrays["y_train"] + 0.5})
    with pytest.raises(H.DataError, match="frac.npz: y_train is float64.*whole-number labels"):
        load_data(tmp_path / "frac.npz")


def test_an_empty_test_set_is_a_clear_error(data):
    with pytest.raises(ValueError, match="the test set is empty"):
        H.train(H.CNN(), subset(data, 256, 0), 1, hp=FAST, progress=False)


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("lr", float("nan")), ("lr", -0.1),
                                          ("momentum", 1.5), ("weight_decay", float("inf")), ("precision", "fp8")])
def test_bad_hparams_name_the_parameter(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        H.HParams(**{field: value})


def test_a_pruned_experiment_with_zero_rounds_is_refused():
    with pytest.raises(ValueError, match="rounds=0: must be a whole number >= 1 for a 'lottery' run.*'baseline'"):
        RunSpec.of("lottery", rounds=0)


def test_a_non_boolean_batchnorm_is_refused():
    with pytest.raises(ValueError, match="batchnorm='maybe': must be True or False"):
        RunSpec.of("lottery", sparsity=0.5, batchnorm="maybe")


def test_sparsities_that_differ_anywhere_have_different_names():
    a, b = RunSpec.of("lottery", sparsity=0.5), RunSpec.of("lottery", sparsity=0.5000001)
    assert a.name == "lottery_p0.5_R5_E5_magnitude_rewind_bn1_do0_seed0" and a.name != b.name


def test_every_load_of_a_saved_file_refuses_pickled_code():
    """torch 2.4-2.5 (allowed by requirements.txt) still run pickled code by default: every load says weights_only."""
    import re
    sources = [*(ROOT / "lth").glob("*.py"), ROOT / "run_all.py", *(ROOT / "scripts").glob("*.py")]
    loads = [(p.name, m) for p in sources for m in re.findall(r"torch\.load\((?:[^()]|\([^()]*\))*\)", p.read_text())]
    assert loads and all("weights_only=True" in m for _, m in loads), [x for x in loads if "weights_only" not in x[1]]


@contextlib.contextmanager
def held_elsewhere(lock, seconds: float = 0.5):
    """`lock` taken by another thread for `seconds`, as another process would hold it, from the start of the block."""
    held = threading.Event()

    def another_process():
        with lock:
            held.set()
            time.sleep(seconds)
    thread = threading.Thread(target=another_process)
    thread.start()
    held.wait()
    yield
    thread.join()


def test_a_run_being_computed_elsewhere_is_waited_for_and_said(data, tmp_path, capsys):
    from lth.store import run_lock
    with held_elsewhere(run_lock(tmp_path, name_of(TINY))):
        run(TINY, data, tmp_path)
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{name_of(TINY)}: another process is computing it; waiting for it to finish")


def test_a_phase0_being_computed_elsewhere_is_waited_for_and_a_damaged_one_trained_again(data, tmp_path):
    """load_or_train_phase0 waits on the lock named after the phase 0's file, saying so, and sets a damaged phase 0
    aside saying that it is trained again."""
    from lth.runs import load_or_train_phase0
    from lth.store import phase0_path, run_lock
    hp, cpu = resolved(), torch.device("cpu")
    path = phase0_path(tmp_path, TINY, hp, data.source)
    said = []
    with held_elsewhere(run_lock(tmp_path, f"phase0-{path.stem}")):
        load_or_train_phase0(TINY, data, cpu, tmp_path, hp, False, said.append)
    assert said[0] == f"phase 0 {path.stem}: another process is computing it; waiting for it to finish"
    path.write_bytes(b"damaged")
    said.clear()
    load_or_train_phase0(TINY, data, cpu, tmp_path, hp, False, said.append)
    assert said_set_aside(said[0], path, "phase 0 is trained again")


def test_every_epoch_names_the_device_that_trained_it_late_rewindings_phase0_included(data, tmp_path):
    from dataclasses import replace

    from lth.precision import describe_device
    record = run(replace(TINY, epochs=2, phase0_of_late_rewind=1), data, tmp_path)
    assert {e["device"] for e in record["history"]} == {describe_device(torch.device("cpu"), resolved().precision)}


def test_every_phase_of_a_bf16_run_is_computed_in_bf16_late_rewindings_phase0_included(data, tmp_path, monkeypatch):
    from dataclasses import replace

    from lth import precision
    asked, on_fp32_kernels = [], precision.bf16_on_fp32_kernels  # what kernels() is asked for, each phase
    monkeypatch.setattr(precision, "bf16_on_fp32_kernels", lambda dev, p: asked.append(p) or on_fp32_kernels(dev, p))
    record = run(replace(TINY, epochs=2, phase0_of_late_rewind=1), data, tmp_path, replace(FAST, precision="bf16"))
    assert record["hparams"]["precision"] == "bf16" and asked and set(asked) == {"bf16"}


def test_late_rewindings_phase0_trained_for_a_partner_run_reports_its_epochs_and_device(data, tmp_path, capsys):
    """load_or_train_phase0 of a run that prunes by late rewinding's phase 0, in a folder without it: that phase 0
    trains with the caller's progress bar, epoch callback and device name, and the partner starts from θ0."""
    from dataclasses import replace

    from lth.runs import load_or_train_phase0
    from lth.store import load_theta0
    spec, epochs = replace(TINY, epochs=2, phase0_of_late_rewind=1), []
    reset_point, _, history = load_or_train_phase0(spec, data, torch.device("cpu"), tmp_path, resolved(), True,
                                                   print, epochs.append, "a device")
    assert [e["epoch"] for e in epochs] == [1, 2] and {e["device"] for e in history} == {"a device"}
    assert "dense" in capsys.readouterr().err
    theta0 = load_theta0(tmp_path, spec)
    assert all(torch.equal(reset_point[k], v) for k, v in theta0.items())


def test_a_run_stopped_between_its_record_and_its_masks_is_finished_from_its_checkpoint(data, tmp_path, monkeypatch):
    import lth.runs as runs
    whole = run(TINY, data, tmp_path / "whole")
    finish_run = runs.finish_run

    def killed_right_there(*args):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(runs, "finish_run", killed_right_there)
        with pytest.raises(KeyboardInterrupt):
            run(TINY, data, tmp_path)
    assert record_path(tmp_path, TINY, resolved()).exists() and checkpoint_path(tmp_path, TINY, resolved()).exists()
    finished = []
    monkeypatch.setattr(runs, "finish_run", lambda *a: finished.append(a) or finish_run(*a))
    record = run(TINY, data, tmp_path)
    assert len(finished) == 1 and not checkpoint_path(tmp_path, TINY, resolved()).exists()
    masks, expected = load_masks(tmp_path, record), load_masks(tmp_path / "whole", whole)
    assert all(torch.equal(masks[r][k], v) for r in expected for k, v in expected[r].items())
    run(TINY, data, tmp_path)
    assert len(finished) == 1  # finished: nothing to finish again


def test_a_forced_rerun_resumes_its_own_checkpoint_and_overwrites_one_of_other_settings(data, tmp_path, monkeypatch,
                                                                                         capsys):
    from dataclasses import replace
    spec = replace(TINY, epochs=2)  # phases of two epochs: a checkpoint's last history entry is not its second
    run(spec, data, tmp_path)
    with monkeypatch.context() as m:
        dies_at_call(m, 2)  # the forced rerun (phase 0 loaded) dies in round 2: its checkpoint holds round 1
        with pytest.raises(KeyboardInterrupt):
            run(spec, data, tmp_path, force=True)
    with monkeypatch.context() as m:
        calls = count_training(m)
        capsys.readouterr()
        run(spec, data, tmp_path, force=True)
    assert calls == ["round 2/2"]  # resumed after round 1, and says so
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"{name_of(spec)}: 2 epochs to train on ")  # round 2's two epochs
    assert f"{name_of(spec)}: resumed after round 1" in said
    ckpt = checkpoint_path(tmp_path, spec, resolved())
    with monkeypatch.context() as m:
        dies_at_call(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run(spec, data, tmp_path, force=True)
    saved = torch.load(ckpt)
    saved["identity"]["hparams"]["lr"] = 0.5  # a checkpoint of other settings under this run's name
    save_atomic(saved, ckpt)
    assert run(spec, data, tmp_path, force=True)["hparams"]["lr"] == resolved().lr  # computed afresh


def test_a_record_or_checkpoint_that_is_not_the_run_asked_is_named_by_its_path(data, tmp_path, monkeypatch):
    record = run(TINY, data, tmp_path)
    out = record_path(tmp_path, TINY, resolved())
    write_json(out, {**record, "hparams": {**record["hparams"], "lr": 0.5}})
    with pytest.raises(ResultMismatch, match=f"^{out} was made with other settings than asked"):
        run(TINY, data, tmp_path)
    out.unlink()
    spec = RunSpec.of("lottery", sparsity=0.5, rounds=2, epochs=1, model="tiny", seed=3)
    dies_at_call(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run(spec, data, tmp_path)
    monkeypatch.undo()
    ckpt = checkpoint_path(tmp_path, spec, resolved())
    save_atomic({k: v for k, v in torch.load(ckpt).items() if k != "identity"}, ckpt)
    with pytest.raises(DamagedFile, match=f"^{ckpt} carries no readable identity"):
        run(spec, data, tmp_path)


def test_a_damaged_rewind_point_is_set_aside_and_taken_again(data, tmp_path, capsys):
    from dataclasses import replace

    from lth.store import rewind_point_path
    late = RunSpec.of("late_rewind", sparsity=0.5, rounds=2, epochs=2, model="tiny", rewind_epoch=1)
    run(late, data, tmp_path)
    point = rewind_point_path(tmp_path, late, resolved(), data.source)
    point.write_bytes(b"damaged")
    capsys.readouterr()
    run(replace(late, sparsity=0.4), data, tmp_path)  # another run from that phase 0 and rewind point
    said = capsys.readouterr().out
    assert said_set_aside(said, point, "it is taken again")
