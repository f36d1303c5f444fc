"""A run's identity, to the character: the hashes that name the committed phase-0 files, and the messages that say
why a saved result is not reused and what to do."""
from pathlib import Path

import numpy as np
import pytest
import torch

from lth import store
from lth.identity import (
    DamagedFile,
    ResultMismatch,
    check_identity,
    checkpoint_identity,
    differences,
    identity_hash,
    non_default,
    phase0_file_hash,
    phase0_file_identity,
)
from lth.spec import RunSpec

COMMITTED_PHASE0 = sorted((store.PUBLISHED_RESULTS / "checkpoints" / "phase0").glob("bn1_do0_E5_seed*_*.pt"))


def test_an_identity_hash_sorts_keys_and_reads_numpy_scalars_as_numbers():
    assert identity_hash({"b": 1, "a": np.float64(0.5), "c": {"z": np.int64(2), "y": "x"}}) == "f0564e8c"
    assert identity_hash({"a": 0.5, "c": {"y": "x", "z": 2}, "b": 1}) == "f0564e8c"


@pytest.mark.skipif(not COMMITTED_PHASE0, reason="needs the committed study")
@pytest.mark.parametrize("path", COMMITTED_PHASE0, ids=lambda p: p.stem)
def test_the_committed_phase0_files_and_rewind_points_are_named_by_the_hash_of_their_identity(path):
    saved = torch.load(path, map_location="cpu", mmap=True)
    named = path.stem.split("_epoch")[0].rsplit("_", 1)[1]  # a rewind point is named after its phase 0
    assert named == phase0_file_hash(phase0_file_identity(saved, path))


def test_differences_are_each_named_with_both_ways_out():
    with pytest.raises(ResultMismatch) as e:
        check_identity(Path("r.json"), {"params": {"seed": 1}, "hparams": {}},
                       {"params": {"seed": 2}, "hparams": {"lr": 0.1}})
    assert str(e.value) == ("r.json was made with other settings than asked (hparams.lr saved None, asked 0.1; "
                            "params.seed saved 1, asked 2), so it is not reused. Keep it: pass another results_dir "
                            "(run_all.py --results-dir); or replace it: force=True (run_all.py --force).")
    check_identity(Path("r.json"), {"params": {"seed": 1}}, {"params": {"seed": 1}})  # the same: no error


def test_a_network_difference_says_what_the_network_changed():
    net = {"parameters": "a", "outputs": "b"}
    assert differences({"network": net}, {"network": {**net, "parameters": "c"}}) == [
        "the network: its parameter names and shapes differ"]
    assert differences({"network": net}, {"network": {**net, "outputs": "c"}}) == [
        "the network: it computes other outputs at θ0 (its forward pass or initialisation changed)"]
    assert "before networks were fingerprinted" in differences({"network": None}, {"network": net})[0]


def test_differences_name_nested_keys_and_keys_on_one_side():
    assert differences({"a": {"b": 1}, "x": 1}, {"a": {"b": 2}, "y": 2}) == [
        "a.b saved 1, asked 2", "x saved 1, asked None", "y saved None, asked 2"]
    assert differences({"a": {"b": 1}}, {"a": {"b": 1}}) == []


def test_a_file_without_a_readable_identity_is_named_with_what_to_do():
    with pytest.raises(DamagedFile) as e:
        checkpoint_identity({}, Path("c.pt"))
    assert str(e.value) == ("c.pt carries no readable identity (KeyError: 'identity'); delete it, and the run "
                            "restarts after its phase 0.")
    with pytest.raises(DamagedFile) as e:
        phase0_file_identity({"identity": {}}, Path("c.pt"))
    assert str(e.value) == ("c.pt carries no readable identity (KeyError: 'model'); delete it, and phase 0 is "
                            "trained again.")


def test_a_setting_that_is_a_group_on_one_side_only_is_named_whole():
    assert differences({"a": {"b": 1}}, {"a": 5}) == ["a saved {'b': 1}, asked 5"]
    with pytest.raises(ResultMismatch, match=r"\(params.seed saved 1, asked 2\), so it is not reused. Keep it"):
        check_identity(Path("r.json"), {"params": {"seed": 1}}, {"params": {"seed": 2}})  # no hparams saved


def test_an_identity_leaves_out_the_fields_at_their_defaults():
    assert non_default(RunSpec("lottery", sparsity=0.5)) == {"experiment": "lottery", "sparsity": 0.5}
    assert non_default(RunSpec("lottery", sparsity=0.5, rewind_epoch=0)) == {"experiment": "lottery", "sparsity": 0.5}


def test_a_sparsity_is_named_as_short_as_it_reads_back_exactly():
    from lth.spec import CLASSIC, exact
    assert exact(0.5) == "0.5" and exact(0.1) == "0.1"
    assert exact(CLASSIC["sparsity"]) == repr(CLASSIC["sparsity"])  # 1 - 0.8**13: '%g' would round it
    assert float(exact(CLASSIC["sparsity"])) == CLASSIC["sparsity"]


def test_phase0_keeps_the_rewind_points_the_plans_name_inside_it(monkeypatch):
    """rewind_epochs: every rewind_epoch an arm's plan or defaults name, strictly inside a phase 0 of that length."""
    from dataclasses import replace

    from lth.spec import ARMS, CLASSIC, rewind_epochs
    assert rewind_epochs(5) == (1,) and rewind_epochs(1) == ()
    plan = (dict(CLASSIC, rewind_epoch=3), dict(CLASSIC, rewind_epoch=2), dict(CLASSIC, rewind_epoch=0))
    monkeypatch.setitem(ARMS, "late_rewind", replace(ARMS["late_rewind"], plan=plan))
    assert rewind_epochs(5) == (2, 3) and rewind_epochs(3) == (2,)


def test_a_phase0s_identity_names_its_model_unless_it_is_the_labs_cnn():
    """The default goes unnamed, so the committed phases 0 keep their identity; any other model is named in it."""
    import helpers as H
    from lth.identity import phase0_identity
    flags = {"batchnorm": True, "dropout": 0.0, "epochs": 5, "seed": 0}
    for model, named in (("cnn", {}), ("tiny", {"model": "tiny"})):
        spec = RunSpec.of("lottery", sparsity=0.5, model=model)
        assert phase0_identity(spec, H.HParams(), {"sha256": "a"})["model"] == flags | named
