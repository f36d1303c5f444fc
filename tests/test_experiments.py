import json
from dataclasses import replace

import nbformat
import numpy as np
import pytest
import torch

import helpers as H
from conftest import TINY, dies_at_call, fake_record, resolved, run, run_all
from lth.batch import jobs, plan
from lth.identity import run_name
from lth.plots import plot_classic
from lth.readme import results_markdown, write_readme_results
from lth.report import classic_curve, findings, reading
from lth.spec import ARMS, CLASSIC, RunSpec
from lth.store import MANIFEST, checkpoint_path, record_file, record_path, write_json

ROOT = H.ROOT



def without_seconds(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


@pytest.mark.parametrize("experiment", ["lottery", "random", "reinit"])
def test_a_tiny_run_ends_exactly_at_p(experiment, data, tmp_path):
    spec = RunSpec.of(experiment, sparsity=0.5, rounds=3, epochs=1)
    record = run(spec, data, tmp_path)
    assert record["final_sparsity"] == sum(round(0.5 * w.numel()) for w in H.prunable_weights(H.CNN()).values()) / \
        sum(w.numel() for w in H.prunable_weights(H.CNN()).values())
    assert [e["round"] for e in record["history"]] == [0, 1, 2, 3]
    assert record["final_val_acc"] == record["history"][-1]["val_acc"]
    assert [e["cum_epoch"] for e in record["history"]] == [1, 2, 3, 4]
    assert np.allclose([e["sparsity"] for e in record["history"][1:]], H.round_sparsities(0.5, 3), atol=1e-4)
    assert record["params"]["strategy"] == ARMS[experiment].defaults["strategy"]
    saved = json.loads(record_path(tmp_path, spec, resolved()).read_text())
    assert saved == record and {"device", "versions", "data", "seconds", "final_val_acc"} <= set(saved)
    assert not checkpoint_path(tmp_path, spec, resolved()).exists()  # a finished run leaves no checkpoint


def test_a_dense_baseline_is_its_phase_0_alone_and_saves_no_masks(data, tmp_path):
    spec = RunSpec.of("baseline", epochs=2, model="tiny")
    record = run(spec, data, tmp_path)
    assert [(e["round"], e["cum_epoch"], e["sparsity"]) for e in record["history"]] == [(0, 1, 0.0), (0, 2, 0.0)]
    assert record["final_sparsity"] == 0.0 and record["final_val_acc"] == record["history"][-1]["val_acc"]
    folder = record_path(tmp_path, spec, resolved()).parent
    assert sorted(p.name for p in folder.iterdir()) == [f"{record['name']}.json"]
    assert not checkpoint_path(tmp_path, spec, resolved()).exists()
    assert run(spec, data, tmp_path) == record  # done: loaded, not trained again


def test_a_run_says_what_it_will_train_each_phases_accuracy_and_where_a_resume_starts(data, tmp_path, capsys,
                                                                                       monkeypatch):
    import re

    from lth.precision import describe_device, versions
    from lth.store import phase0_path
    spec = TINY
    hp = resolved()
    name, device = run_name(spec, hp), describe_device(torch.device("cpu"), hp.precision)
    with monkeypatch.context() as m:
        dies_at_call(m, 3)  # round 2 dies
        with pytest.raises(KeyboardInterrupt):
            run(spec, data, tmp_path)
    first = capsys.readouterr().out.splitlines()
    record = run(spec, data, tmp_path)
    resumed = capsys.readouterr().out.splitlines()
    acc = [f"{e['val_acc']:.4f}" for e in record["history"]]
    assert first[0] == resumed[0].replace(": 1 epochs", ": 3 epochs") == \
        f"{name}: 3 epochs to train on {device}, precision {hp.precision}"
    assert first[2:] == [f"{spec.name}: phase 0 (1 epochs dense): val_acc {acc[0]}",
                         f"{name}: round 1/2 at sparsity 0.293: val_acc {acc[1]}"]
    assert resumed[1:3] == [f"{spec.name}: phase 0 loaded from {phase0_path(tmp_path, spec, hp, data.source).name}",
                            f"{name}: resumed after round 1"]
    assert resumed[4:] == [f"{name}: round 2/2 at sparsity 0.500: val_acc {acc[2]}"]
    assert record["seconds"] == sum(e["seconds"] for e in record["history"])  # its epochs', resumed ones included
    assert record["versions"] == versions() and record["data"] == data.source
    for line, epochs in ((first[1], 3), (resumed[3], 1)):
        seconds, minutes = re.fullmatch(rf"first epoch: (\d+\.\d) s, so about (\d+\.\d) min for the {epochs} epochs "
                                        "of this run on this device", line).groups()
        assert abs(float(seconds) * epochs / 60 - float(minutes)) <= 0.05 + 0.05 * epochs / 60


def test_a_round_rewinds_or_reinitialises_the_survivors():
    torch.manual_seed(0)
    model = H.CNN()
    theta0 = H.snapshot(model)
    with torch.no_grad():
        for w in model.parameters():
            w.add_(torch.randn_like(w))  # stands for training
    trained = H.snapshot(model)
    masks = {}
    for experiment in ("lottery", "random", "reinit"):
        model.load_state_dict(trained)
        spec = RunSpec.of(experiment, sparsity=0.5, rounds=5)
        masks[experiment] = H.prune_and_reset(model, H.dense_masks(model), theta0, 1, spec.sparsity, spec.rounds,
                                              spec.strategy, spec.reset, spec.scope, spec.seed, True)
        for name, w in H.prunable_weights(model).items():
            m = masks[experiment][name]
            assert (w[~m] == 0).all()
            if experiment == "reinit":
                assert (w[m] != theta0[name][m]).float().mean() > 0.99
            else:
                assert torch.equal(w[m], theta0[name][m])
    assert any(not torch.equal(masks["lottery"][k], masks["random"][k]) for k in masks["lottery"])
    assert all(torch.equal(masks["lottery"][k], masks["reinit"][k]) for k in masks["lottery"])


def test_phase0_is_trained_once_and_shared(data, tmp_path, monkeypatch):
    calls = []
    train = H.train
    monkeypatch.setattr(H, "train", lambda *a, **k: calls.append(k.get("desc")) or train(*a, **k))
    a = run(RunSpec.of("lottery", sparsity=0.2, rounds=1, epochs=1), data, tmp_path)
    b = run(RunSpec.of("random", sparsity=0.4, rounds=1, epochs=1), data, tmp_path)
    assert calls.count("dense") == 1 and len(calls) == 3
    assert a["history"][0] == b["history"][0]
    run(RunSpec.of("lottery", sparsity=0.2, rounds=1, epochs=1), data, tmp_path)  # done: loaded, not trained
    assert len(calls) == 3


def test_resume_gives_the_same_numbers_as_an_uninterrupted_run(data, tmp_path, monkeypatch):
    spec = RunSpec.of("random", sparsity=0.5, rounds=3, epochs=1, dropout=0.1)
    whole = run(spec, data, tmp_path / "whole")
    train, calls = H.train, []

    def dies_in_round_2(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the session ends in the middle of round 2
        return train(*a, **k)
    monkeypatch.setattr(H, "train", dies_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        run(spec, data, tmp_path / "resumed")
    assert checkpoint_path(tmp_path / "resumed", spec, resolved()).exists()
    monkeypatch.setattr(H, "train", train)
    resumed = run(spec, data, tmp_path / "resumed")
    assert without_seconds(resumed["history"]) == without_seconds(whole["history"])


def test_reading_compares_with_the_dense_baseline_and_the_other_arms(tmp_path):
    def record(experiment, acc, **params):
        spec = RunSpec.of(experiment, **params)
        history = [{"round": 0, "val_acc": 0.75, "seconds": 1.0}] + \
            [{"round": 1, "val_acc": acc, "seconds": 1.0}] * (spec.rounds > 0)
        r = {"experiment": experiment, "name": spec.name, "params": vars(spec), "final_val_acc": acc,
             "final_sparsity": spec.sparsity, "history": history, "hparams": {"precision": "bf16"},
             "data": {"sha256": "test"}}
        write_json(record_file(tmp_path, r), r)
        return r
    record("baseline", 0.85)
    record("baseline", 0.80, batchnorm=False)  # another model: not its baseline
    record("random", 0.79, sparsity=0.5)
    record("random", 0.81, sparsity=0.2)  # another sparsity: not compared
    text = reading(record("lottery", 0.84, sparsity=0.5), tmp_path)
    assert text == ("lottery_p0.5_R5_E5_magnitude_rewind_bn1_do0_seed0: 84.00% validation accuracy at sparsity 50.0%, "
                    "-1.00 points against the dense 25-epoch baseline (85.00%), +9.00 points against its dense phase 0 "
                    "(5 epochs: 75.00%); random pruning at the same sparsity and schedule: 79.00%.")


def test_bad_run_parameters_name_the_parameter():
    cases = [(dict(sparsity=1.0), "sparsity=1.0: must be a number in \\[0, 1\\)"),
             (dict(sparsity=0.5, rounds=0), "rounds=0: must be a whole number >= 1"),
             (dict(sparsity=0.5, epochs=0), "epochs=0: must be a whole number >= 1"),
             (dict(sparsity=0.5, strategy="largest"), "strategy='largest': must be one of 'magnitude', 'random'"),
             (dict(sparsity=0.5, reset="rewinds"), "reset='rewinds': must be one of 'rewind', 'reinit'"),
             (dict(sparsity=0.0), "sparsity=0 with rounds=5"),
             (dict(sparsity=0.5, sparsty=0.3), "unknown parameter\\(s\\) \\['sparsty'\\]")]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            RunSpec.of("lottery", **params)
    with pytest.raises(ValueError, match="experiment='lotery'"):
        RunSpec.of("lotery")


def test_run_all_rejects_bad_options():
    out = run_all("--only", "02_lotery")
    assert out.returncode == 2 and "unknown notebook(s) ['02_lotery']" in out.stderr
    out = run_all("--device", "tpu", "--list")
    assert out.returncode == 2 and "device='tpu'" in out.stderr


def test_run_all_quick_executes_every_notebook_without_errors(quick_study):
    common, results, out = quick_study
    common = [*common, "--results-dir", str(results)]
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    executed = sorted((results / "notebooks").glob("*.ipynb"))
    assert {p.name.split("__")[0].removesuffix(".ipynb") for p in executed} == set(
        p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    runs = sum(len(sets) for experiment, sets in plan().values() if experiment)
    assert len(executed) == runs + sum(1 for experiment, _ in plan().values() if experiment is None)
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
        assert not errors, path.name
        assert "widgets" not in nb.metadata and str(ROOT) not in path.read_text(), path.name
    # one record per run: the lottery run from late rewinding's phase 0 is a plain lottery run here (they share
    # phase 0: in quick runs, one of late rewinding's length), and 10_your_model adds its network's baseline and ticket
    own = {replace(j.spec, phase0_of_late_rewind=0) for j in jobs(1, True) if j.spec}
    assert len(list((results / "runs").glob("*/*.json"))) == len(own) + 2
    assert len(list((results / "figures").glob("*.png"))) >= 6
    explorer = nbformat.read(results / "notebooks" / "07_explore__quick=True.ipynb", as_version=4)
    assert sum("image/png" in o.get("data", {}) for c in explorer.cells for o in c.get("outputs", [])) >= 5
    listing = run_all(*common, "--list")
    assert listing.returncode == 0 and listing.stdout.count("done ") == runs and "0 epochs to train" in listing.stdout


def test_more_seeds_give_the_summary_a_range(quick_study):
    common, results, _ = quick_study
    seeds = run_all(*common, "--results-dir", str(results), "--seeds", "2", "--only",
                    "02_lottery_sweep:sparsity=0.5,rounds=5", "06_summary", timeout=600)
    assert seeds.returncode == 0, seeds.stdout[-3000:] + seeds.stderr[-3000:]
    seed1 = [p.name for p in (results / "runs" / "lottery").glob("*_seed1*.json")]  # a hash follows, unless bf16
    assert len(seed1) == 1 and seed1[0].startswith("lottery_p0.5_R5_E1_magnitude_rewind_bn1_do0_seed1")
    summary = nbformat.read(results / "notebooks" / "06_summary__quick=True.ipynb", as_version=4)
    assert "(range " in "".join(o.get("data", {}).get("text/markdown", "") for c in summary.cells
                                if c.cell_type == "code" for o in c.outputs)


def test_findings_compute_gap_range_and_whether_it_exceeds_the_seed_range():
    records = [fake_record("lottery", a, sparsity=0.5, seed=s) for s, a in enumerate((0.80, 0.82, 0.81))]
    records += [fake_record("random", a, sparsity=0.5, seed=s) for s, a in enumerate((0.75, 0.76, 0.77))]
    records += [fake_record("lottery", a, sparsity=0.2, seed=s) for s, a in enumerate((0.78, 0.80))]
    records += [fake_record("random", a, sparsity=0.2, seed=s) for s, a in enumerate((0.79, 0.77))]
    records += [fake_record("reinit", 0.78, sparsity=0.5)]
    text = "\n".join(findings(records))
    assert ("Sparsity 50%: lottery ticket 81.00% (range 80.00%-82.00%, 3 seeds), random pruning 76.00% (range "
            "75.00%-77.00%, 3 seeds): the ticket leads by +5.00 points (paired by seed, clear: 95% interval +2.52 to "
            "+7.48 points (width 4.97), 3 of 3 seeds above)") in text
    assert ("Sparsity 20%: lottery ticket 79.00% (range 78.00%-80.00%, 2 seeds), random pruning 78.00% (range "
            "77.00%-79.00%, 2 seeds): the ticket leads by +1.00 points (paired by seed, not clear: 95% interval "
            "-24.41 to +26.41 points (width 50.82), 1 of 2 seeds above)") in text
    assert ("Re-init each round at 50%: 78.00% (1 seed), -2.00 points against the rewound ticket (paired on one "
            "seed: no interval from one seed; seeds 1, 2 left out: not run by both arms") in text
    assert ("Dense network after phase 0 (5 epochs, as long as each pruned phase: the equal-epochs reference of every "
            "gain stated below): 75.00% (range 75.00%-75.00%, 3 seeds).") in text
    assert ("against the phase 0 of the same seeds (equal epochs): lottery ticket +6.00 points, random pruning +1.00 "
            "points.") in text
    few = [fake_record(arm, 0.74, phase0=0.70, sparsity=0.3, seed=3) for arm in ("lottery", "random")]  # one seed
    assert ("Sparsity 30%: lottery ticket 74.00% (1 seed), random pruning 74.00% (1 seed): the ticket leads by +0.00 "
            "points (paired on one seed: no interval from one seed); against the phase 0 of the same seeds (equal "
            "epochs): lottery ticket +4.00 points, random pruning +4.00 points.") in "\n".join(findings(records + few))
    behind = [fake_record(arm, acc, phase0=0.70, sparsity=0.3, seed=3) for arm, acc in (("lottery", 0.7397),
                                                                                        ("random", 0.75))]
    assert ("the ticket trails by 1.03 points (paired on one seed: no interval from one seed)"
            in "\n".join(findings(records + behind)))  # a negative lead is said as what it is


def test_the_classic_curve_finds_where_each_arm_falls_two_points_below_phase0():
    classic = dict(CLASSIC)
    lottery = fake_record("lottery", 0.74, **classic)
    random = fake_record("random", 0.60, **classic)
    for e in random["history"][1:]:  # random pruning falls below 73% from round 4 on (0.8^4: 41% of the weights left)
        e["val_acc"] = 0.76 if e["round"] < 4 else 0.60
    text = "\n".join(findings([lottery, random]))
    assert ("Lottery ticket (seed 0; their phase 0 75.00%): never more than 2 points below it, down to 5.5% of the "
            "weights left (74.00%)") in text
    assert ("Random pruning (seed 0; their phase 0 75.00%): first more than 2 points below the dense phase 0 at 41.0% "
            "of the weights left (60.00%); best 76.00% at 80.0% left.") in text
    # a second seed of random only, with a weaker phase 0: random is read against the phase 0 of its own seeds, and
    # each seed's own crossing is given (seed 1 never falls 2 points below its 70% phase 0)
    random1 = fake_record("random", 0.69, phase0=0.70, seed=1, **classic)
    text = "\n".join(findings([lottery, random, random1]))
    assert "dense phase 0 72.50% (range 70.00%-75.00%, 2 seeds)" in text
    assert ("Random pruning (mean of seeds 0, 1; their phase 0 72.50%): first more than 2 points below the dense "
            "phase 0 at 41.0% of the weights left (64.50%); best 72.50% at 80.0% left. Seed by seed, first more "
            "than 2 points below at: 41.0%, never.") in text
    assert "Lottery ticket (seed 0; their phase 0 75.00%): never" in text
    table = results_markdown([lottery, random])
    assert "| random pruning, classic curve (20% a round) R=13 E=5 | 60.00% | 1 |" in table
    ax = plot_classic(classic_curve([lottery, random, random1]))
    assert ax.get_xscale() == "log" and ax.get_xlim() == (100, 5)
    assert {"lottery ticket (1 seed)", "random pruning (2 seeds)", "dense phase 0 (72.50%)"} <= {
        t.get_text() for t in ax.get_legend().get_texts()}


def test_the_readme_results_are_rewritten_between_their_markers(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results: written by notebooks/06_summary.ipynb from the records -->\nold\n"
                      "<!-- end of results -->\noutro\n")
    monkeypatch.setattr("lth.store.PUBLISHED_RESULTS", tmp_path / "results")
    write_json(tmp_path / "results" / MANIFEST, {"data": {"sha256": "test", "subset": None}})
    records = [fake_record("lottery", 0.8, sparsity=0.5)]
    said = write_readme_results(results_markdown(records), tmp_path / "results", records, readme)
    assert said == "The README's results were rewritten from these 1 runs."
    text = readme.read_text()
    assert "old" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "| lottery ticket p=0.5 R=5 E=5 | 80.00% | 1 | 75.00% | 0.5000 |" in text


def test_the_cluster_names_the_inputs_of_every_job_of_the_plan(data, tmp_path):
    """Ray asks each job for the files it needs: only a ticket-mask run names a lottery run's masks (a baseline,
    rounds=0, has no lottery run to name, and asking for one aborted the whole schedule)."""
    from lth import store
    from lth.batch import Study
    from lth.cluster import inputs_of
    study = Study(tmp_path, data, resolved())
    specs = [job.spec for job in jobs(seeds=1, quick=True) if job.spec]
    assert {s.experiment for s in specs} == set(ARMS)
    ticket = next(s for s in specs if s.strategy == "ticket").ticket_source
    masks = store.masks_path(tmp_path, ticket, resolved())
    masks.parent.mkdir(parents=True)
    masks.write_bytes(b"masks")
    for spec in specs:
        assert (masks in inputs_of(study, spec)) == (spec.strategy == "ticket")


def test_a_run_draws_progress_bars_unless_asked_not_to(data, tmp_path, capsys):
    """A run that prunes by late rewinding's phase 0 trains that phase 0 first: with bars too."""
    from lth.runs import run_experiment
    spec = RunSpec.of("lottery", sparsity=0.5, rounds=2, epochs=2, model="tiny")
    run_experiment(spec, data, "cpu", tmp_path / "shown", resolved())
    bars = capsys.readouterr().err
    assert "dense" in bars and "round 2/2" in bars
    run_experiment(replace(spec, phase0_of_late_rewind=1), data, "cpu", tmp_path / "partner", resolved())
    assert "dense" in capsys.readouterr().err
    run_experiment(spec, data, "cpu", tmp_path / "quiet", resolved(), progress=False)
    assert capsys.readouterr().err == ""
