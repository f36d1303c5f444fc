"""Every refusal says in full what was wrong and how to fix it. The message is what a user reads instead of a
traceback, so each one is pinned whole here: a check that raises a vaguer error, or a different one, fails."""
import re

import numpy as np
import pytest

import helpers as H
from conftest import FAST, TINY, refused, resolved, run
from lth.data import load_data
from lth.files import write_json
from lth.identity import DamagedFile, ResultMismatch
from lth.spec import RunSpec
from lth.store import (
    MANIFEST,
    check_folder,
    claim_folder,
    folder_data,
    load_masks,
    load_phase0,
    load_records,
    phase0_path,
    record_file,
)

MUST_BE_BOOL = "{}: must be True or False (papermill: -p {} True)."
DENSE_IS_BASELINE = "a dense run is the 'baseline' experiment."


@pytest.mark.parametrize("params, message", [
    (dict(model=""), "model='': must be the name of a model, e.g. 'cnn' or 'conv2'."),
    (dict(model=3), "model=3: must be the name of a model, e.g. 'cnn' or 'conv2'."),
    (dict(batchnorm="maybe"), MUST_BE_BOOL.format("batchnorm='maybe'", "batchnorm")),
    (dict(phase0_of_late_rewind=5), "phase0_of_late_rewind=5: names the phase 0 of a late-rewinding run, at an epoch "
     "0 < k < epochs (5), for a run with rewind_epoch=0 (a late-rewinding run prunes by its own phase 0 already)."),
    (dict(strategy="ticket"), "strategy='ticket' trains a lottery run's masks from fresh values: reset must be "
     "'reinit' (with 'rewind' it would be the lottery run itself)."),
    (dict(rounds=0), f"rounds=0: must be a whole number >= 1 for a 'lottery' run; {DENSE_IS_BASELINE}"),
    (dict(sparsity=0), f"sparsity=0 with rounds=5: a pruned run needs a sparsity in (0, 1); {DENSE_IS_BASELINE}"),
])
def test_a_run_spec_that_cannot_be_run_is_refused_saying_why(params, message):
    with refused(ValueError, message):
        RunSpec("lottery", **{"sparsity": 0.5, **params})


@pytest.mark.parametrize("rounds, sparsity", [(0, 0.5), (2, 0)])
def test_a_dense_run_with_rounds_or_a_sparsity_is_refused(rounds, sparsity):
    with refused(ValueError, f"rounds={rounds}, sparsity={sparsity}: a 'baseline' run is dense (rounds=0, "
                             "sparsity=0); pruned runs are 'lottery', 'random', ..."):
        RunSpec("baseline", rounds=rounds, sparsity=sparsity)


def test_flags_from_papermill_are_read_as_booleans_and_a_bad_one_is_named():
    assert RunSpec.of("lottery", sparsity=0.5, batchnorm="no").batchnorm is False
    with refused(ValueError, MUST_BE_BOOL.format("quick='maybe'", "quick")):
        RunSpec.of("lottery", sparsity=0.5, quick="maybe")


@pytest.mark.parametrize("flag", ["progress", "force"])
def test_a_runs_flags_are_checked_before_anything_is_written(flag, data, tmp_path):
    from lth.runs import run_experiment
    with refused(ValueError, MUST_BE_BOOL.format(f"{flag}='maybe'", flag)):
        run_experiment(TINY, data, "cpu", tmp_path / "results", FAST, **{"progress": False, flag: "maybe"})
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------------------------ data


def test_a_bad_quick_flag_is_refused_before_any_data_is_read(fake_npz, tmp_path):
    from lth.runs import notebook_setup
    with refused(ValueError, MUST_BE_BOOL.format("quick='maybe'", "quick")):
        load_data(fake_npz, quick="maybe")
    with refused(ValueError, MUST_BE_BOOL.format("quick='maybe'", "quick")):
        notebook_setup(str(fake_npz), "maybe", str(tmp_path / "results"), "cpu", "fp32")


LABELS = "whole-number labels in 0..9 (fractional labels are not truncated for you)."


@pytest.mark.parametrize("change, message", [
    (dict(x_train=lambda x: x.astype(np.float32)), "x_train is float32 (256, 32, 32, 3); expected uint8 (N, 32, 32, "
                                                   "3) images, N > 0."),
    (dict(x_test=lambda x: x[..., 0]), "x_test is uint8 (128, 32, 32); expected uint8 (N, 32, 32, 3) images, N > 0."),
    (dict(x_test=lambda x: x[:, :16]), "x_test is uint8 (128, 16, 32, 3); expected uint8 (N, 32, 32, 3) images, "
                                       "N > 0."),
    (dict(x_test=lambda x: x[:0]), "x_test is uint8 (0, 32, 32, 3); expected uint8 (N, 32, 32, 3) images, N > 0."),
    (dict(y_train=lambda y: y[:, None]), f"y_train is int64 (256, 1) with values 0..9; expected 256 {LABELS}"),
    (dict(y_train=lambda y: y[:-1]), f"y_train is int64 (255,) with values 0..9; expected 256 {LABELS}"),
    (dict(y_test=lambda y: y + 0.5), f"y_test is float64 (128,) with values 0.5..9.5; expected 128 {LABELS}"),
    (dict(y_test=lambda y: y - 1), f"y_test is int64 (128,) with values -1..8; expected 128 {LABELS}"),
    (dict(y_test=lambda y: y + 1), f"y_test is int64 (128,) with values 1..10; expected 128 {LABELS}"),
])
def test_a_data_file_of_the_wrong_shape_or_labels_is_refused_saying_what_it_holds(change, message, tmp_path):
    from conftest import fake_arrays
    arrays = fake_arrays()
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    assert labels.min() == 0 and labels.max() == 9  # the edges themselves are accepted
    path = tmp_path / "wrong.npz"
    np.savez(path, **{k: change.get(k, lambda v: v)(v) for k, v in arrays.items()})
    with refused(H.DataError, f"{path}: {message}"):
        load_data(path)


def test_a_data_file_that_is_missing_unreadable_or_incomplete_is_refused_with_the_fix(tmp_path):
    from conftest import fake_arrays
    with refused(H.DataError, f"CIFAR-10 file {tmp_path / 'missing.npz'} does not exist. Point data_dir or "
                              "$CIFAR10_DATA at an existing cifar10.npz or at a folder holding cifar-10-batches-py."):
        load_data(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(H.DataError, match=rf"^{re.escape(str(tmp_path / 'bad.npz'))} is not a readable \.npz file "
                                          r"\(\w+Error: .+\)\. Re-copy it, or point data_dir at another copy\.$"):
        load_data(tmp_path / "bad.npz")
    np.savez(tmp_path / "part.npz", **{k: v for k, v in fake_arrays().items() if k not in ("y_train", "x_test")})
    with refused(H.DataError, f"{tmp_path / 'part.npz'} lacks the array(s) ['y_train', 'x_test']; a CIFAR-10 .npz "
                              "needs x_train, y_train, x_test, y_test."):
        load_data(tmp_path / "part.npz")


# ------------------------------------------------------------------------------------------------ the store


def test_a_manifest_that_is_not_one_is_named_with_the_fix(tmp_path):
    for content in ([], {"data": []}, {"data": {"subset": None}}):
        write_json(tmp_path / MANIFEST, content)
        with refused(DamagedFile, f"{tmp_path / MANIFEST} is not a results folder's manifest (it needs "
                                  '{"data": {"sha256": ...}}). Restore it (`git checkout -- PATH` if it is '
                                  "committed)."):
            folder_data(tmp_path)


def test_a_folder_of_other_data_is_refused_naming_both_data_sets(data, tmp_path):
    other = {**data.source, "sha256": "f" * 64, "description": "other data"}
    claim_folder(tmp_path, other)
    assert folder_data(tmp_path) == {"data": {"sha256": "f" * 64, "subset": None}, "description": "other data"}
    claim_folder(tmp_path / "bare", {"sha256": "e" * 64})  # a source without a description
    assert folder_data(tmp_path / "bare") == {"data": {"sha256": "e" * 64, "subset": None}, "description": ""}
    with refused(ResultMismatch, f"{tmp_path} holds runs on other data: other data (sha256 ffffffffffff…), not "
                                 f"CIFAR-10 from a local .npz copy (sha256 {data.source['sha256'][:12]}…). One folder "
                                 "holds one data set, so nothing is mixed: leave results_dir unset (run_all.py "
                                 "without --results-dir) and runs on this data go to a folder of their own, or name "
                                 "another."):
        check_folder(tmp_path, data.source)


@pytest.mark.parametrize("n, listed", [(3, "a0, a1, a2"), (4, "a0, a1, a2, ...")])
def test_a_folder_without_a_manifest_lists_at_most_three_runs_of_other_data(n, listed, data, tmp_path, monkeypatch):
    import lth.store as store
    monkeypatch.setattr(store, "load_records", lambda folder: [{"name": f"a{i}", "data": {"sha256": "f"}}
                                                               for i in range(n)])
    with refused(ResultMismatch, f"{tmp_path} has no {MANIFEST} and holds runs on other data than CIFAR-10 from a "
                                 f"local .npz copy (sha256 {data.source['sha256'][:12]}…) ({listed}): move them to a "
                                 "folder of their own, or pass another results_dir."):
        claim_folder(tmp_path, data.source)


def test_a_record_that_is_not_one_is_named_with_what_it_lacks(data, tmp_path):
    record = run(TINY, data, tmp_path)
    path = record_file(tmp_path, record)
    write_json(path, {k: v for k, v in record.items() if k not in ("history", "seconds")})
    with pytest.warns(UserWarning) as caught:
        assert load_records(tmp_path) == []
    assert not caught[0].filename.endswith("store.py")  # it points at the caller, who asked for the records
    assert str(caught[0].message) == (
        f"{path} is not a run record (ValueError: the record must contain ['history'] properties). Restore it (`git "
        f"checkout -- {path}` if it is committed), or delete it to compute the run again.")


def test_a_stray_record_is_named_with_where_it_belongs(data, tmp_path):
    record = run(TINY, data, tmp_path)
    stray = record_file(tmp_path, record).with_name("copy.json")
    stray.write_bytes(record_file(tmp_path, record).read_bytes())
    with pytest.warns(UserWarning) as caught:
        assert [r["name"] for r in load_records(tmp_path)] == [record["name"]]
    assert [str(w.message) for w in caught] == [
        f"{stray} is a stray file: the record in it belongs at runs/lottery/{record['name']}.json (a copy, or a "
        "renamed file?). It is left out, so no run counts twice; move it there, or delete it."]


def test_masks_that_fail_their_checksum_are_named_with_the_fix(data, tmp_path):
    record = run(TINY, data, tmp_path)
    path = record_file(tmp_path, record, ".masks.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays[next(k for k in arrays if k.startswith("round1/"))] ^= 1  # one bit flipped
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    with refused(DamagedFile, f"{path} is damaged (ValueError: its content no longer matches its checksum). Restore "
                              "it (`git checkout -- PATH` if it is committed), or compute the run again (force=True)."):
        load_masks(tmp_path, record)


def test_masks_of_another_run_are_named_with_what_differs(data, tmp_path):
    record = run(TINY, data, tmp_path)
    other = run(RunSpec.of("lottery", sparsity=0.4, rounds=2, epochs=1, model="tiny", seed=1), data, tmp_path)
    path = record_file(tmp_path, record, ".masks.npz")
    path.write_bytes(record_file(tmp_path, other, ".masks.npz").read_bytes())
    with refused(ResultMismatch, f"{path} holds the masks of another run than {record_file(tmp_path, record)} "
                                 "(params.seed saved 1, asked None; params.sparsity saved 0.4, asked 0.5): restore the "
                                 "run's own masks, or compute the run again (force=True)."):
        load_masks(tmp_path, record)


def test_a_file_that_cannot_be_read_is_named_with_the_first_line_of_why(data, tmp_path, monkeypatch):
    import lth.store as store
    record = run(TINY, data, tmp_path)

    def unreadable(*args, **kwargs):
        raise ValueError("x" * 130 + "\nthe rest of a long story")
    monkeypatch.setattr(store.np, "load", unreadable)
    monkeypatch.setattr(store, "load_pt", unreadable)
    for load, fix in ((load_masks, "or compute the run again (force=True)."), (load_phase0, "or delete it to train "
                                                                                            "it again.")):
        with pytest.raises(DamagedFile, match=re.escape(f" is damaged (ValueError: {'x' * 120}). Restore it (`git "
                                                        f"checkout -- PATH` if it is committed), {fix}") + "$"):
            load(tmp_path, record)


def test_a_phase0_file_that_is_not_a_torch_file_is_named_with_the_fix(data, tmp_path):
    record = run(TINY, data, tmp_path)
    path = phase0_path(tmp_path, TINY, resolved(FAST), record["data"])
    path.write_bytes(b"not a torch file\nsecond line")
    with pytest.raises(DamagedFile) as caught:
        load_phase0(tmp_path, record)
    kind, detail = re.fullmatch(rf"{re.escape(str(path))} is damaged \((\w+): (.*)\)\. Restore it \(`git checkout -- "
                                r"PATH` if it is committed\), or delete it to train it again\.",
                                str(caught.value)).groups()
    assert kind == "UnpicklingError" and "\n" not in detail and 0 < len(detail) <= 120


def test_a_missing_phase0_is_named_with_what_is_committed(data, tmp_path):
    record = run(TINY, data, tmp_path)
    path = phase0_path(tmp_path, TINY, resolved(FAST), record["data"])
    path.unlink()
    with refused(FileNotFoundError, f"{path} does not exist: the phase 0 of {record['name']} is not in this folder "
                                    "(only the shared 5-epoch phases 0 are committed); run it again to recompute it."):
        load_phase0(tmp_path, record)
