"""Tests that would catch a wrong control: each guards one behaviour that a wrong implementation would break while
every other test passes (the break that each was seen failing under is named in its docstring)."""
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers as H
from conftest import FAST, dies_at_call, fake_record, resolved, run, starts_of_training
from lth.identity import ResultMismatch
from lth.report import findings
from lth.spec import RunSpec
from lth.store import claim_folder, load_masks, record_file, write_json

SCHEDULE = dict(sparsity=0.5, rounds=2, epochs=2, model="tiny")




def test_evaluation_over_batches_that_split_the_test_set_unevenly_equals_one_pass(data):
    """Broken by: pairing a batch's predictions with the previous batch's labels; skipping the last partial batch."""
    torch.manual_seed(0)
    model = H.build_model(0, model="tiny")
    H.train(model, data, 1, hp=FAST, progress=False)
    model.eval()
    with torch.no_grad():
        predicted = model(H.normalize(data.x_test, FAST.channels_last)).argmax(1)
    one_pass = (predicted == data.y_test).float().mean().item()
    assert len(data.x_test) % 50 != 0  # 3 batches, the last one partial
    assert H.evaluate(model, data, FAST, batch_size=50) == pytest.approx(one_pass, abs=1e-9)
    assert 0 < one_pass < 1  # a model that is right on some images and wrong on others, so pairing matters


def test_the_reinit_control_draws_new_values_every_round_and_they_follow_the_seed(data, monkeypatch):
    """Broken by: one generator state for every round (round 2 re-draws round 1's values: a lottery ticket of
    another initialisation), or draws that ignore the run's seed."""
    def survivors(seed):
        starts = starts_of_training(monkeypatch)
        H.lottery_ticket(data, **{**SCHEDULE, "rounds": 2}, reset="reinit", seed=seed, hp=FAST, device="cpu",
                         progress=False)
        monkeypatch.undo()
        return starts[1:]  # the start of round 1 and of round 2
    a, again, other = survivors(0), survivors(0), survivors(1)
    name = "classifier.weight"  # a Linear weight: drawn in one layout every round, so equal states draw equal values
    both = (a[0][name] != 0) & (a[1][name] != 0)  # alive in both rounds
    assert both.sum() > 50 and not torch.equal(a[0][name][both], a[1][name][both])
    assert all(torch.equal(x[name], y[name]) for x, y in zip(a, again))
    alive = (a[0][name] != 0) & (other[0][name] != 0)  # survivors of both seeds' round 1
    assert alive.sum() > 50 and not torch.equal(a[0][name][alive], other[0][name][alive])


@pytest.mark.parametrize("arm", ["late_rewind", "fixed_mask"])
def test_an_interrupted_run_resumes_its_later_rounds_from_the_same_reset(arm, data, tmp_path, monkeypatch):
    """Broken by: a resumed late-rewinding run that takes θ0 as its rewind point; a resumed fixed-mask run that
    takes the masks of the round it resumed at for the next one."""
    params = dict(**SCHEDULE, rewind_epoch=1) if arm == "late_rewind" else dict(SCHEDULE)
    spec = RunSpec.of(arm, **params)
    for folder in ("whole", "interrupted"):
        if arm == "fixed_mask":
            run(RunSpec.of("lottery", **SCHEDULE), data, tmp_path / folder)
    starts = starts_of_training(monkeypatch)
    whole = run(spec, data, tmp_path / "whole")
    expected = starts[-1]  # the start of round 2, uninterrupted
    monkeypatch.undo()
    with monkeypatch.context() as m:
        dies_at_call(m, 2 if arm == "fixed_mask" else 3)  # in round 2: phase 0 and round 1 are saved
        with pytest.raises(KeyboardInterrupt):
            run(spec, data, tmp_path / "interrupted")
    starts = starts_of_training(monkeypatch)
    resumed = run(spec, data, tmp_path / "interrupted")
    assert len(starts) == 1 and all(torch.equal(starts[0][k], v) for k, v in expected.items())
    numbers = lambda r: [(e["round"], e["val_acc"], e["train_loss"]) for e in r["history"]]
    assert numbers(resumed) == numbers(whole)


def test_the_fixed_mask_arm_takes_masks_only_from_the_lottery_run_of_its_own_settings(data, tmp_path):
    """Broken by: looking the lottery run up by its spec alone, so one made with another learning rate lends its
    masks."""
    other_lr = replace(FAST, lr=0.01)
    run(RunSpec.of("lottery", **SCHEDULE), data, tmp_path, other_lr)
    with pytest.raises(FileNotFoundError, match="run it first"):
        run(RunSpec.of("fixed_mask", **SCHEDULE), data, tmp_path)
    lottery = run(RunSpec.of("lottery", **SCHEDULE), data, tmp_path)
    fixed = run(RunSpec.of("fixed_mask", **SCHEDULE), data, tmp_path)
    assert resolved().lr != other_lr.lr
    ticket, used = load_masks(tmp_path, lottery), load_masks(tmp_path, fixed)
    assert all(torch.equal(used[r][k], m) for r in ticket for k, m in ticket[r].items())
    path = record_file(tmp_path, lottery)
    write_json(path, {**lottery, "data": {**lottery["data"], "sha256": "f" * 64}})  # its record, edited
    with pytest.raises(ResultMismatch, match=f"^{re.escape(str(path))} was made with other settings than asked"):
        run(RunSpec.of("fixed_mask", **SCHEDULE), data, tmp_path, force=True)


def test_each_verdict_compares_the_arms_it_names():
    """Re-init each round is far below the ticket in every seed and level with random pruning: each sentence says
    its own. Broken by: judging re-init against random pruning twice, or against the ticket twice."""
    seeds = range(3)
    records = [fake_record("lottery", 0.80 + 0.01 * s, sparsity=0.5, seed=s) for s in seeds]
    records += [fake_record("random", 0.74 + 0.01 * s, sparsity=0.5, seed=s) for s in seeds]
    records += [fake_record("reinit", a, sparsity=0.5, seed=s) for s, a in zip(seeds, (0.75, 0.74, 0.77))]
    line = next(x for x in findings(records) if x.startswith("Re-init each round at 50%"))
    ticket, random = line.split(" and ")
    assert "-5.67 points against the rewound ticket (paired by seed, clear" in ticket
    assert "+0.33 points against random pruning (paired by seed, not clear" in random


@pytest.mark.parametrize("other", ["no BatchNorm", "another model"])
def test_findings_never_pool_runs_of_other_settings(other):
    """Broken by: filtering the study's runs by arm and sparsity alone."""
    records = [fake_record(arm, acc + 0.01 * s, sparsity=0.5, seed=s) for s in range(3)
               for arm, acc in (("lottery", 0.80), ("random", 0.74))]
    settings = dict(batchnorm=False) if other == "no BatchNorm" else dict(model="tiny")
    extra = [fake_record(arm, 0.30, sparsity=0.5, seed=3, **settings) for arm in ("lottery", "random")]
    assert findings(records + extra) == findings(records)


def test_a_folder_without_a_manifest_holding_runs_on_other_data_is_refused_not_claimed(data, tmp_path):
    """Broken by: writing the manifest of the data asked whenever none is there."""
    record = fake_record("lottery", 0.8, sparsity=0.5)
    write_json(tmp_path / "runs" / "lottery" / f"{record['name']}.json", record)
    with pytest.raises(ResultMismatch, match="has no data.json and holds runs on other data"):
        claim_folder(tmp_path, data.source)
    assert not (tmp_path / "data.json").exists()
    assert not np.isnan(record["final_val_acc"])


def test_whether_a_run_prunes_by_late_rewindings_own_phase0_is_read_from_its_files(tmp_path):
    """own_phase0, every case: the rewind point kept with a replayed phase 0 (True), a plain one (False), a damaged
    one (None: not known until a run reads it), none yet while the shared phase 0 is there (None: late rewinding
    will replay it) or is not (False: a phase 0 trained here keeps its rewind points, so the two share it)."""
    from lth.files import save_atomic
    from lth.runs import own_phase0
    from lth.store import phase0_path, rewind_point_path
    spec, hp, source = RunSpec.of("lottery", sparsity=0.5, model="tiny", phase0_of_late_rewind=1), H.HParams(), \
        {"sha256": "0" * 64}
    point = rewind_point_path(tmp_path, spec.late_rewind_source, hp, source)
    shared = phase0_path(tmp_path, spec.late_rewind_source, hp, source)
    assert own_phase0(tmp_path, spec, hp, source) is False
    shared.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"state": {}}, shared)
    assert own_phase0(tmp_path, spec, hp, source) is None
    point.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"state": {}}, point)
    assert own_phase0(tmp_path, spec, hp, source) is False
    save_atomic({"state": {}, "phase0": {}}, point)
    assert own_phase0(tmp_path, spec, hp, source) is True
    point.write_bytes(point.read_bytes()[:-9])
    assert own_phase0(tmp_path, spec, hp, source) is None
    shared.unlink()
    assert own_phase0(tmp_path, spec, hp, source) is None  # the point decides, whatever else is there


def test_a_replay_that_left_the_saved_phase0_says_how_many_tensors_and_by_how_much():
    from lth.runs import replayed_exactly
    saved, said = {"a": torch.ones(3), "b": torch.ones(2)}, []
    same = {k: v.clone() for k, v in saved.items()}
    assert replayed_exactly(Path("p0.pt"), saved, same, "run", said.append) and said == []
    assert not replayed_exactly(Path("p0.pt"), saved, {"a": torch.tensor([1.0, 0.75, 1.0]), "b": torch.ones(2)},
                                "run", said.append)
    assert said == ["run: replaying p0.pt here did not end on its saved weights (1 tensors differ, by up to 0.25: "
                    "another device, thread count or library version). The run prunes by the replay's own weights, "
                    "kept beside its rewind point, so mask and rewind point come from one phase 0; p0.pt is left as it "
                    "is."]
