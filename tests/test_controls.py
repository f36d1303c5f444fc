"""The paper's re-init control (the ticket's own masks, fresh values) and late rewinding (survivors back to their
values after k epochs of phase 0), through `run_experiment` as the notebooks call it."""
import pytest
import torch

import helpers as H
from conftest import FAST, name_of, refused, run, starts_of_training
from lth import precision
from lth.files import save_atomic
from lth.runs import resolve_hparams, run_experiment
from lth.spec import RunSpec
from lth.store import load_masks, load_phase0, load_theta0, phase0_path, rewind_point_path

SCHEDULE = dict(sparsity=0.5, rounds=2, epochs=2, model="tiny")  # models/tiny.py: seconds a run
HP = resolve_hparams(FAST, torch.device("cpu"))  # as run_experiment resolves it: the files are named by it


def test_the_fixed_mask_arm_trains_exactly_the_saved_masks_of_its_lottery_run_from_fresh_values(data, tmp_path,
                                                                                                  monkeypatch):
    lottery = run(RunSpec.of("lottery", **SCHEDULE, seed=3), data, tmp_path)
    starts = starts_of_training(monkeypatch)
    fixed = run(RunSpec.of("fixed_mask", **SCHEDULE, seed=3), data, tmp_path)
    ticket, used = load_masks(tmp_path, lottery), load_masks(tmp_path, fixed)
    assert list(used) == [1, 2]
    for r in (1, 2):
        for name, mask in ticket[r].items():
            assert torch.equal(used[r][name], mask), (r, name)
    theta0 = load_theta0(tmp_path, RunSpec(**fixed["params"]))
    for r, start in zip((1, 2), starts):  # phase 0 is the lottery run's, loaded: each train call is a round
        for name, v in theta0.items():
            if name in ticket[r]:
                assert torch.equal(start[name] != 0, ticket[r][name]), (r, name)  # the ticket's survivors ...
                assert not torch.equal(start[name], v * ticket[r][name]), (r, name)  # ... with fresh values
            else:
                assert torch.equal(start[name], v), (r, name)  # biases and BatchNorm at θ0
    assert [e["sparsity"] for e in fixed["history"] if e["round"]] == \
           [e["sparsity"] for e in lottery["history"] if e["round"]]


def test_the_fixed_mask_arm_without_its_lottery_run_says_which_to_run(data, tmp_path):
    fixed = RunSpec.of("fixed_mask", **SCHEDULE)
    with refused(FileNotFoundError, f"{name_of(fixed)} trains the masks of the lottery run "
                                    f"{name_of(fixed.ticket_source)}, which is not finished in {tmp_path}: run it "
                                    "first (notebook 02 with sparsity=0.5, rounds=2, epochs=2, seed=0; run_all.py runs "
                                    "02 before 08)."):
        run(fixed, data, tmp_path)


def phase0_weights_at(data, epoch: int, epochs: int, seed: int = 0) -> tuple[dict, dict]:
    """An uninterrupted phase 0 as the procedure trains it (in the precision a run resolves "auto" to here), and its
    weights after `epoch` epochs."""
    model, at = H.build_model(seed, model=SCHEDULE["model"]), {}
    with precision.kernels(torch.device("cpu"), HP.precision):
        H.train(model, data, epochs, None, H.phase_seed(seed, 0), "cpu", HP, progress=False,
                on_epoch=lambda e: at.update(H.snapshot(model)) if e["epoch"] == epoch else None)
    return at, H.snapshot(model)


@pytest.mark.parametrize("phase0", ["trained with it", "replayed"])
def test_a_rewind_point_equals_the_weights_of_an_uninterrupted_phase0_at_that_epoch(phase0, data, tmp_path,
                                                                                    monkeypatch, capsys):
    spec = RunSpec.of("late_rewind", **SCHEDULE, rewind_epoch=1)
    if phase0 == "replayed":  # a phase 0 saved before rewind points were, by a run that rewinds to θ0
        run(RunSpec.of("lottery", **SCHEDULE), data, tmp_path)
        rewind_point_path(tmp_path, spec, HP, data.source).unlink()
        before = phase0_path(tmp_path, spec, HP, data.source).read_bytes()
    expected, final = phase0_weights_at(data, 1, 2)
    starts = starts_of_training(monkeypatch)
    record = run(spec, data, tmp_path)
    point = torch.load(rewind_point_path(tmp_path, spec, HP, data.source))
    assert point["epoch"] == 1
    assert expected.keys() == point["state"].keys()
    for name, v in expected.items():
        assert torch.equal(point["state"][name], v), name
    saved = torch.load(phase0_path(tmp_path, spec, HP, data.source))["state"]
    assert all(torch.equal(saved[k], v) for k, v in final.items())  # phase 0 itself is unchanged
    if phase0 == "replayed":
        assert phase0_path(tmp_path, spec, HP, data.source).read_bytes() == before
        assert f"{spec.name}: replaying phase 0 (2 epochs) to keep its weights after epoch 1" in \
            capsys.readouterr().out.splitlines()
    assert "phase0" not in point  # the replay ended on the saved weights: that phase 0 is the run's own
    masks = load_masks(tmp_path, record)[1]  # round 1 starts from the rewind point, masked
    round1 = starts[-2]
    for name, v in expected.items():
        assert torch.equal(round1[name], v * masks[name] if name in masks else v), name


def test_a_replay_that_leaves_the_saved_phase0s_path_prunes_by_its_own_weights(data, tmp_path):
    """A phase 0 saved on another machine does not replay bit for bit here: the late-rewinding run then prunes by the
    replay's own weights, as if no phase 0 had been saved, and the saved one stays as it was."""
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    run(RunSpec.of("lottery", **SCHEDULE), data, shared)
    spec = RunSpec.of("late_rewind", **SCHEDULE, rewind_epoch=1)
    path = phase0_path(shared, spec, HP, data.source)
    saved, draw = torch.load(path), torch.Generator().manual_seed(0)
    saved["state"] = {k: torch.randn(v.shape, generator=draw) if v.is_floating_point() else v  # other magnitudes
                      for k, v in saved["state"].items()}
    save_atomic(saved, path)  # written by the project, with other content
    rewind_point_path(shared, spec, HP, data.source).unlink()  # saved before rewind points were: replayed
    before = path.read_bytes()
    expected = run(spec, data, alone)
    accuracies = lambda record: [(e["round"], e["val_acc"], e["train_loss"]) for e in record["history"]]
    for force in (False, True):  # the replay, then a rerun that loads what the replay kept
        record = run_experiment(spec, data, "cpu", shared, FAST, progress=False, force=force)
        assert accuracies(record) == accuracies(expected)
        masks, expected_masks = load_masks(shared, record), load_masks(alone, expected)
        assert all(torch.equal(masks[r][k], m) for r in expected_masks for k, m in expected_masks[r].items())
        own, alone_phase0 = load_phase0(shared, record)["state"], load_phase0(alone, expected)["state"]
        assert all(torch.equal(own[k], v) for k, v in alone_phase0.items())
    assert path.read_bytes() == before
    # rewinding to θ0 from that same phase 0, to pair with it: the lottery run of a phase 0 trained here
    partner = run(RunSpec.of("lottery", **SCHEDULE, phase0_of_late_rewind=1), data, shared)
    plain = run(RunSpec.of("lottery", **SCHEDULE), data, alone)
    assert "phase0late1" in partner["name"] and accuracies(partner) == accuracies(plain)
    assert accuracies(partner)[:SCHEDULE["epochs"]] == accuracies(expected)[:SCHEDULE["epochs"]]
    masks, plain_masks = load_masks(shared, partner), load_masks(alone, plain)
    assert all(torch.equal(masks[r][k], m) for r in plain_masks for k, m in plain_masks[r].items())


def test_a_phase0_trained_now_keeps_its_rewind_point_so_late_rewinding_shares_it(data, tmp_path, monkeypatch,
                                                                                   capsys):
    lottery = run(RunSpec.of("lottery", **SCHEDULE), data, tmp_path)
    starts = starts_of_training(monkeypatch)
    late = run(RunSpec.of("late_rewind", **SCHEDULE, rewind_epoch=1), data, tmp_path)
    assert len(starts) == SCHEDULE["rounds"]  # its rounds only: phase 0 was neither trained nor replayed
    first = lambda record: record["history"][:SCHEDULE["epochs"]]
    assert first(late) == first(lottery)
    # so rewinding to θ0 from late rewinding's phase 0 is the lottery run itself: loaded, nothing trains
    capsys.readouterr()
    asked = RunSpec.of("lottery", **SCHEDULE, phase0_of_late_rewind=1)
    partner = run(asked, data, tmp_path)
    assert partner == lottery and len(starts) == SCHEDULE["rounds"]
    assert capsys.readouterr().out.splitlines()[1] == (  # after "phase 0 loaded from ..."
        f"{name_of(asked)}: late rewinding's phase 0 is the shared one here, so this run is {lottery['name']}")
    forced = run(asked, data, tmp_path, force=True)  # forced, the plain run it is trains its rounds again
    assert len(starts) == 2 * SCHEDULE["rounds"] and forced["name"] == lottery["name"]
    assert not list((tmp_path / "runs" / "lottery").glob("*phase0late*"))


@pytest.mark.parametrize("params, error", [
    (dict(rewind_epoch=5), "0 <= rewind_epoch < epochs"),
    (dict(rewind_epoch=-1), "whole number >= 0"),
    (dict(rewind_epoch=1, reset="reinit"), "reset='rewind'"),
])
def test_a_rewind_point_outside_phase0_is_refused(params, error):
    with pytest.raises(ValueError, match=error):
        RunSpec.of("late_rewind", **{**SCHEDULE, "epochs": 5, **params})


def test_late_rewinding_is_in_the_runs_name_only_when_it_is_not_theta0():
    assert RunSpec.of("lottery", sparsity=0.5).name == "lottery_p0.5_R5_E5_magnitude_rewind_bn1_do0_seed0"
    assert RunSpec.of("late_rewind", sparsity=0.5).name == "late_rewind_p0.5_R5_E5_magnitude_rewind1_bn1_do0_seed0"
    assert RunSpec.of("late_rewind", sparsity=0.5, quick=True).epochs == 2  # one epoch past the rewind point
