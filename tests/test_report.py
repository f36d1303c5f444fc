"""The report as a reader sees it: findings rendered as Markdown, figures whose lines each hold one protocol, a
quick run that says it measures nothing, a static explorer with no widget reprs, and clean source notebooks."""
import ast
import subprocess
from pathlib import Path

import matplotlib
import nbformat
import numpy as np
import pytest

import helpers as H
from conftest import fake_record
from lth import plots
from lth.classic import classic_curve, first_drops
from lth.explore import view_final
from lth.readme import results_markdown
from lth.report import QUICK_CAVEAT, findings, labels, reading, runs_table, study_markdown
from lth.spec import ARMS, CLASSIC, RunSpec

matplotlib.use("Agg")


def test_no_line_of_the_final_accuracy_view_joins_two_protocols():
    sweep = [fake_record(arm, acc + p / 10, sparsity=p, seed=s) for arm, acc in (("lottery", 0.8), ("random", 0.7))
             for p in (0.1, 0.3, 0.5) for s in (0, 1)]
    classic = [fake_record("lottery", 0.78, seed=s, **CLASSIC) for s in (0, 1)]
    rve = [fake_record("rounds_vs_epochs", 0.8, rounds=r, epochs=e) for r, e in ((1, 30), (2, 15))]
    choice = {"arms": ["lottery", "random", "rounds_vs_epochs"], "model": "BatchNorm, dropout 0", "sparsity": "all",
              "seeds": "mean", "seed": 0}
    ax = view_final(sweep + classic + rve, "unused", choice).axes[0]
    protocols = [{0.1, 0.3, 0.5}, set(np.round(H.round_sparsities(CLASSIC["sparsity"], CLASSIC["rounds"]), 6))]
    drawn = [set(np.round(np.asarray(line.get_xdata(), float) / 100, 6))  # the axis in percent
              for line in ax.lines if len(line.get_xdata()) > 1]
    assert drawn, "the view drew no lines"
    assert all(any(xs <= p for p in protocols) for xs in drawn), drawn  # every line within one protocol
    assert any(len(xs) == CLASSIC["rounds"] for xs in drawn)  # the classic curve, round by round
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"lottery ticket", "random pruning", "rounds against epochs", "5 × 5", "classic curve, 13 × 5", "1 × 30",
            "2 × 15"} <= labels


def test_the_findings_render_as_markdown_with_integer_counts_and_words():
    records = [fake_record(arm, acc, sparsity=0.5, seed=s) for arm, acc in (("lottery", 0.8), ("random", 0.7))
               for s in range(3)] + [fake_record("rounds_vs_epochs", 0.8, rounds=1, epochs=30)]
    text = results_markdown(records)
    lines = text.splitlines()
    header = lines.index("| run | final val acc | seeds | its phase 0 (dense, E epochs) | final sparsity |")
    assert lines[header + 1] == "| --- | --- | --- | --- | --- |"
    assert "| lottery ticket p=0.5 R=5 E=5 | 80.00% (80.00%-80.00%) | 3 |" in text
    assert all(line.startswith("- ") for line in lines if line.startswith(("Sparsity", "Dense")))  # bullets
    assert "1 round × 30 epochs" in text and "round(s)" not in text and "nan" not in text.lower()
    table = study_markdown()
    assert "classic curve: 13 rounds × 5 epochs" in table and table.count("\n") == len(ARMS) + 1


def test_a_quick_run_says_it_measures_nothing_and_draws_no_verdict():
    records = [fake_record(arm, 0.1, sparsity=0.5, seed=s, quick=True) for arm in ("lottery", "random")
               for s in range(3)]
    text = "\n".join(findings(records))
    assert text.startswith(QUICK_CAVEAT)
    assert "seed range" not in text and "no verdict on a quick run" in text
    assert "not a result" in reading(records[0], "unused")
    ax = plots.plot_final(runs_table(records), x="sparsity", hue="arm", title="t")
    assert "not meaningful" in ax.get_title() and ax.get_ylim() == (0, 1)
    real = [fake_record("lottery", 0.8, sparsity=0.5)]
    assert QUICK_CAVEAT not in findings(real) and "not meaningful" not in plots.plot_final(
        runs_table(real), x="sparsity", hue="arm", title="t").get_title()


def test_the_static_explorer_shows_figures_and_text_but_no_widget_repr(quick_study):
    from nbconvert import HTMLExporter
    _, results, out = quick_study
    assert out.returncode == 0, out.stderr[-2000:]
    nb = nbformat.read(results / "notebooks" / "07_explore__quick=True.ipynb", as_version=4)
    html, _ = HTMLExporter().from_notebook_node(nb)
    assert "needs a live kernel" in html and html.count("<img") >= 5
    assert not any(r in html for r in ("VBox(children", "HBox(children", "Dropdown(", "Image(value"))
    summary = nbformat.read(results / "notebooks" / "06_summary__quick=True.ipynb", as_version=4)
    shown = [o for c in summary.cells for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
    assert any("| run | final val acc |" in o["data"]["text/markdown"] for o in shown)


PARAMETERS = dict(seed=0, batchnorm=True, dropout=0.0, data_dir=None, device=None, precision="auto", quick=False,
                  results_dir=None, progress=True, force=False)


def as_committed(path: Path) -> str:
    """A notebook as git holds it (the index: what a commit takes, after the nbstripout filter strips the outputs a
    Jupyter session saved on disk); as on disk outside a git checkout."""
    out = subprocess.run(["git", "show", f":{path.relative_to(H.ROOT).as_posix()}"], cwd=H.ROOT, capture_output=True,
                         text=True)
    return out.stdout if out.returncode == 0 else path.read_text()


@pytest.mark.parametrize("path", sorted((H.ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_the_source_notebooks_are_clean_and_keep_their_defaults(path):
    nb = nbformat.reads(as_committed(path), as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, (f"{path.name}: cells {dirty} hold outputs in what git would commit; let git strip them: "
                       "set up nbstripout once (docs/testing.md), then `git add` the notebook again")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {t.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
              for t in node.targets}
    arm = next((name for name, a in ARMS.items() if a.notebook == path.stem), None)
    if arm is None:  # the summary and the explorer read; their defaults find the study's own folder
        assert {k: values[k] for k in ("results_dir", "quick", "data_dir")} == dict(results_dir=None, quick=False,
                                                                                    data_dir=None), path.name
        return
    assert {k: values[k] for k in PARAMETERS} == PARAMETERS, path.name
    run = {k: values[k] for k in ("sparsity", "rounds", "epochs") if k in values}
    planned = [{k: getattr(RunSpec.of(arm, **params), k) for k in run} for params in ARMS[arm].plan]
    assert run in planned, f"{path.name}: parameters {run} are none of the runs it makes: {planned}"


def test_the_classic_curves_controls_are_judged_level_by_level_against_the_seed_range():
    arm = lambda e, accs: [fake_record(e, a, seed=s, **CLASSIC) for s, a in enumerate(accs)]
    records = (arm("lottery", (0.80, 0.81)) + arm("random", (0.71, 0.73)) + arm("fixed_mask", (0.70, 0.72))
               + arm("late_rewind", (0.805, 0.82)))
    text = "\n".join(findings(records))
    assert ("Ticket mask, fresh init against lottery ticket on the classic curve, level by level (2 seeds against 2): "
            "paired by seed, clear (the 95% interval of the mean difference excludes zero) at 13 of 13 levels: 80.0% "
            "left (-9.50 points), 64.0% left (-9.50 points)") in text
    assert ("Ticket mask, fresh init against random pruning on the classic curve, level by level (2 seeds against 2): "
            "paired by seed, clear (the 95% interval of the mean difference excludes zero) at 13 of 13 levels") in text
    assert ("First more than 2 points below the dense phase 0, seed by seed: 80.0% / 80.0% of the weights left against "
            "80.0% / at the threshold at 80.0%, then never (paired by seed: later in 0 of 2 seeds, at the same level "
            "in 1, earlier in 1).") in text  # random's seed 1 is at 73%: exactly 2 points below its 75%
    assert ("Late rewinding against lottery ticket on the classic curve, level by level (2 seeds against 2): paired "
            "by seed, not clear at any of the 13 levels (the 95% interval of the mean difference includes zero at "
            "each) (interval widths 6.35-6.35 points). First more than 2 points below the dense phase 0, seed by "
            "seed: never / never of the weights left against never / never (paired by seed: later in 0 of 2 seeds, "
            "at the same level in 2, earlier in 0).") in text
    assert labels(records[-1])["arm"] == "late rewinding to epoch 1"


def test_a_figure_whose_points_average_different_numbers_of_seeds_says_so():
    import pandas as pd
    runs = [(1, 30, seed) for seed in (0, 1, 2)] + [(5, 6, 0)]
    table = pd.DataFrame([{"rounds": r, "epochs": e, "seed": s, "final_val_acc": 0.8 + s / 100,
                           "phase0_val_acc": 0.75} for r, e, s in runs])
    title = plots.plot_rounds_vs_epochs(table).get_title()
    assert title.endswith("mean of 1-3 seeds a point; bars: min-max over the seeds")
    assert plots.plot_rounds_vs_epochs(table[table.rounds == 1]).get_title().endswith("mean of 3 seeds; bars: "
                                                                                     "min-max over the seeds")
    assert plots.plot_rounds_vs_epochs(table[table.rounds == 5]).get_title().endswith("\n1 seed")


def test_a_late_rewinding_run_with_a_phase0_of_its_own_is_judged_against_it():
    """A replay of phase 0 made elsewhere keeps its own phase 0 (docs/results.md): the arm's drop below the dense
    network is read against that, and the shared one stays the figure's reference."""
    arm = lambda e, accs, phase0: [fake_record(e, a, phase0=p, seed=s, **CLASSIC)
                                   for s, (a, p) in enumerate(zip(accs, phase0))]
    records = arm("lottery", (0.80, 0.80), (0.75, 0.75)) + arm("late_rewind", (0.72, 0.72), (0.75, 0.70))
    curve = classic_curve(records, {})
    assert first_drops(curve, "late_rewind") == {0: (80.0, None), 1: (0.0, None)}  # 72%: not 2 points below 70%
    text = "\n".join(findings(records))
    assert "dense phase 0 75.00% (range 75.00%-75.00%, 2 seeds)" in text
    assert "Late rewinding (mean of seeds 0, 1; their phase 0 72.50%)" in text
    lines = {line.get_label(): line.get_ydata()[0] for line in plots.plot_classic(curve).get_lines()
             if len(line.get_ydata())}
    assert lines["dense phase 0 (75.00%)"] == pytest.approx(0.75)  # the shared one, and the arm's own beside it
    assert lines["late rewinding's own phase 0 (seed 1 apart; mean of its seeds 72.50%)"] == pytest.approx(0.725)


def test_runs_of_other_settings_are_stated_apart_never_pooled():
    """A bf16 folder where someone ran seed 1 in fp32: two configurations, each with one seed, never one with two."""
    from lth.explore import default_choice
    from lth.identity import configurations, setup_label
    from lth.masks import chosen
    bf16 = [fake_record("lottery", 0.80, sparsity=0.5, seed=0), fake_record("random", 0.74, sparsity=0.5, seed=0)]
    fp32 = [{**fake_record("lottery", 0.10, sparsity=0.5, seed=1), "hparams": {"precision": "fp32"}}]
    groups = configurations(fp32 + bf16)
    assert list(groups) == ["cnn", "cnn, precision fp32"] and groups["cnn"] == bf16
    text = "\n".join(findings(groups["cnn"]))
    assert "lottery ticket 80.00% (1 seed)" in text and "10.00%" not in text
    choice = default_choice(fp32 + bf16)
    assert choice["model"] == "BatchNorm, dropout 0" and setup_label(fp32[0]) == "BatchNorm, dropout 0; precision fp32"
    assert chosen(fp32 + bf16, {**choice, "arms": ["lottery"]}) == bf16[:1]


def test_the_mask_findings_name_a_seed_whose_lottery_run_has_no_saved_masks(tmp_path):
    from lth.masks import mask_findings
    records = [fake_record("lottery", 0.8, sparsity=0.5, seed=0)]
    assert mask_findings(records, tmp_path) == [
        "Seed 0, 50%: its lottery run was made before masks were saved, so it has none to compare (magnitude masks "
        "cannot be rebuilt without retraining)."]


def test_the_readme_digest_states_each_headline_from_the_records():
    from lth.readme import digest
    records = [fake_record(arm, acc + 0.01 * s, sparsity=p, seed=s) for s in range(3) for p in (0.1, 0.5)
               for arm, acc in (("lottery", 0.80), ("random", 0.74))]
    text = digest(records)
    assert ("the ticket leads by +6.00 points, clear (paired over 3 seeds, the 95% interval excludes zero) at 2 of 2 "
            "sparsities.") in text
    assert "At 50%, the ticket reaches 81.00%, +6.00 points over the dense network trained as long" in text
    assert text.splitlines()[-1].startswith("Compute: ")
