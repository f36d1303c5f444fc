"""The results store as lth/store.py's docstring lays it out: where each file of a run lies, what a masks file holds
and how it reads back, which folder a summary reads, and every file refused by its path."""
import fnmatch
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import FAST, TINY, dies_at_call, name_of, resolved, run, said_set_aside
from lth.data import load_data
from lth.files import save_atomic
from lth.identity import DamagedFile, ResultMismatch, network_of
from lth.store import (
    checkpoint_path,
    claim_folder,
    default_folder,
    folder_note,
    load_masks,
    load_phase0,
    load_theta0,
    phase0_path,
    phase0_ready,
    record_file,
    rewind_point_path,
    run_lock,
    save_masks,
    study_folder,
    theta0_path,
)


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".locks" not in p.parts)


def matches(names: list[str], patterns: list[str]) -> bool:
    return len(names) == len(patterns) and all(fnmatch.fnmatchcase(n, p) for n, p in zip(names, patterns))


def test_a_finished_run_and_an_interrupted_one_lie_where_the_layout_says(data, tmp_path, monkeypatch):
    name = name_of(TINY)
    shared = ["checkpoints/phase0/tiny_bn1_do0_E1_seed0_*.pt", "checkpoints/theta0/tiny_bn1_do0_seed0_*.pt"]
    run(TINY, data, tmp_path / "done")
    assert matches(files_under(tmp_path / "done"),
                   [*shared, "data.json", f"runs/lottery/{name}.json", f"runs/lottery/{name}.masks.npz"])
    assert phase0_ready(tmp_path / "done", TINY, resolved(), data.source)
    dies_at_call(monkeypatch, 3)  # phase 0, round 1, then round 2 dies
    with pytest.raises(KeyboardInterrupt):
        run(TINY, data, tmp_path / "stopped")
    assert matches(files_under(tmp_path / "stopped"), [f"checkpoints/{name}.pt", *shared, "data.json"])
    assert checkpoint_path(tmp_path / "stopped", TINY, resolved()) == tmp_path / "stopped" / f"checkpoints/{name}.pt"
    assert theta0_path(tmp_path, TINY).parent == tmp_path / "checkpoints" / "theta0"


def test_a_phase0_is_ready_with_its_rewind_point_or_without_one_when_it_needs_none(data, tmp_path):
    late = replace(TINY, experiment="late_rewind", epochs=2, rewind_epoch=1)
    assert not phase0_ready(tmp_path, late, resolved(), data.source)
    run(late, data, tmp_path)
    assert phase0_ready(tmp_path, late, resolved(), data.source)
    assert phase0_ready(tmp_path, replace(late, rewind_epoch=0), resolved(), data.source)
    rewind_point_path(tmp_path, late, resolved(), data.source).unlink()
    assert not phase0_ready(tmp_path, late, resolved(), data.source)  # phase 0 alone: replayed for the point
    assert phase0_ready(tmp_path, replace(late, rewind_epoch=0), resolved(), data.source)


def test_a_lock_is_made_in_a_folder_that_does_not_exist_yet(tmp_path):
    with run_lock(tmp_path / "new" / "results", "a run"):
        assert (tmp_path / "new" / "results" / ".locks" / "a run.lock").exists()


def masks_identity(path) -> str:
    with np.load(path) as f:
        return str(f["identity"])


def test_a_masks_files_identity_is_canonical_json_whatever_order_or_numpy_type(tmp_path):
    masks = {1: {"w": torch.from_numpy(np.packbits(np.ones(8, bool)))}}
    save_masks(tmp_path / "a.npz", masks, {"seed": np.int64(3), "sparsity": np.float32(0.5)})
    save_masks(tmp_path / "b.npz", masks, {"sparsity": 0.5, "seed": 3})
    assert masks_identity(tmp_path / "a.npz") == masks_identity(tmp_path / "b.npz") == '{"seed": 3, "sparsity": 0.5}'


def test_masks_saved_before_files_carried_a_checksum_still_load(data, tmp_path):
    record = run(TINY, data, tmp_path)
    path = record_file(tmp_path, record, ".masks.npz")
    before = load_masks(tmp_path, record)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "checksum"}
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    after = load_masks(tmp_path, record)
    assert list(after) == list(before) == [1, 2]
    assert all(torch.equal(after[r][k], before[r][k]) for r in before for k in before[r])


def test_a_summary_reads_the_folder_its_data_was_run_in(fake_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("LTH_RESULTS", str(tmp_path))
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # no ./data here
    assert default_folder() == study_folder() == tmp_path / "results"
    assert default_folder(True) == study_folder(quick=True) == tmp_path / "results_quick"
    assert study_folder(str(tmp_path / "mine"), data_dir=str(fake_npz)) == tmp_path / "mine"
    full, quick = load_data(fake_npz).source, load_data(fake_npz, quick=True).source
    claim_folder(tmp_path / "results_quick", quick)
    assert study_folder(quick=True, data_dir=str(fake_npz)) == tmp_path / "results_quick"
    claim_folder(tmp_path / "results", {**full, "sha256": "f" * 64, "description": "other data"})
    own = tmp_path / f"results_{full['sha256'][:12]}"
    assert study_folder(data_dir=str(fake_npz)) == own
    assert folder_note(own) == (f"{own}/ (results/ holds runs on other data, other data (sha256 ffffffffffff…); "
                                "runs on this data get a folder of their own)")
    (tmp_path / "results_quick" / "data.json").unlink()
    claim_folder(tmp_path / "results_quick", {**quick, "sha256": "f" * 64, "description": "other data"})
    own_quick = tmp_path / f"results_quick_{full['sha256'][:12]}"
    assert study_folder(quick=True, data_dir=str(fake_npz)) == own_quick
    assert folder_note(own_quick, quick=True) == (
        f"{own_quick}/ (results_quick/ holds runs on other data, other data (sha256 ffffffffffff…, quick subset of "
        "2048/1024 images); runs on this data get a folder of their own)")


def test_a_damaged_theta0_is_set_aside_and_drawn_again_bit_for_bit(data, tmp_path, capsys):
    theta0 = load_theta0(tmp_path, TINY)
    path = theta0_path(tmp_path, TINY)
    path.write_bytes(b"damaged")
    capsys.readouterr()
    again = load_theta0(tmp_path, TINY)
    assert all(torch.equal(again[k], theta0[k]) for k in theta0)
    said = capsys.readouterr().out
    assert said.count("\n") == 1 and said_set_aside(said, path, "it is drawn again")  # that line, and nothing else


def test_a_theta0_or_phase0_of_another_network_is_refused_by_its_path(data, tmp_path):
    record = run(TINY, data, tmp_path)
    path = theta0_path(tmp_path, TINY)
    save_atomic({**torch.load(path), "network": network_of(replace(TINY, batchnorm=False))}, path)
    with pytest.raises(ResultMismatch, match=f"^{path} was made with other settings than asked"):
        load_theta0(tmp_path, TINY)
    path = phase0_path(tmp_path, TINY, resolved(FAST), record["data"])
    saved = torch.load(path)
    saved["identity"]["model"]["epochs"] = 3
    save_atomic(saved, path)
    with pytest.raises(ResultMismatch, match=f"^{path} was made with other settings than asked"):
        load_phase0(tmp_path, record)
    save_atomic({"state": saved["state"]}, path)
    with pytest.raises(DamagedFile, match=f"^{path} carries no readable identity"):
        load_phase0(tmp_path, record)


def test_a_run_without_a_named_folder_goes_to_its_datas_folder(data, tmp_path, monkeypatch):
    monkeypatch.setenv("LTH_RESULTS", str(tmp_path))
    claim_folder(tmp_path / "results", {"sha256": "f" * 64})  # the default folder holds other data
    record = run(TINY, data, None)
    assert record_file(tmp_path / f"results_{data.source['sha256'][:12]}", record).exists()
