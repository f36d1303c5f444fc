"""The explorer (07): every view draws from saved runs, its widgets redraw in a real kernel, and every executed
notebook is one GitHub renders."""
import json

import matplotlib
import nbformat
import pytest
from nbclient import NotebookClient

import helpers as H
from lth.explore import VIEWS, default_choice, view_overlap
from lth.identity import setup_label
from lth.masks import mask_findings
from lth.store import load_records

matplotlib.use("Agg")


def test_every_view_returns_a_figure_from_saved_runs(quick_study):
    _, results, out = quick_study
    assert out.returncode == 0
    records = load_records(results)
    choice = {**default_choice(records), "sparsity": 0.5}
    for name, view in VIEWS.items():
        for seeds in ("mean", "each"):
            fig = view(records, results, {**choice, "seeds": seeds})
            assert fig.axes and fig.axes[0].get_title(), name
            assert not any(t.get_text().startswith("no ") for t in fig.axes[0].texts), name  # it drew the runs
    overlap = view_overlap(records, results, choice).axes[0]
    labels = [t.get_text() for t in overlap.get_yticklabels()]
    assert "lottery ticket vs random pruning, same sparsity" in labels
    assert "lottery ticket vs one-shot at round 1" in labels
    assert any("no saved masks" in t.get_text() for t in view_overlap([], results, choice).axes[0].texts)


def test_mask_findings_compare_the_ticket_with_random_and_with_round_one(quick_study):
    _, results, _ = quick_study
    text = "\n".join(mask_findings(load_records(results), results))
    assert "the ticket and random pruning share" in text and "(chance 50.0%" in text
    assert "would have kept at round 1" in text


def test_the_explorers_widgets_redraw_in_a_live_kernel(quick_study):
    _, results, _ = quick_study
    nb = nbformat.read(H.ROOT / "notebooks" / "07_explore.ipynb", as_version=4)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells[params].source = f"results_dir = {str(results)!r}\nquick = False\ndata_dir = None"
    nb.cells.append(nbformat.v4.new_code_cell(  # as a person would: change two widgets, look at what is drawn
        "import json\n"
        "n = len(shown)\n"
        "controls['view'].value = 'layer sparsity'\n"
        "controls['arms'].value = ('lottery',)\n"
        "print(json.dumps({'redraws': len(shown) - n, 'before': shown[n - 1].axes[0].get_title(),\n"
        "                  'after': shown[-1].axes[0].get_title(),\n"
        "                  'legend': [t.get_text() for t in shown[-1].axes[0].get_legend().get_texts()]}))"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(H.ROOT)}}).execute()
    seen = json.loads("".join(o.get("text", "") for o in nb.cells[-1].outputs))
    assert seen["redraws"] == 2 and seen["before"].startswith("Final validation accuracy against sparsity")
    assert seen["after"] == "Sparsity of each layer at the end of the run"
    assert seen["legend"] == ["lottery ticket, 5 × 1, p = 0.5"]


@pytest.mark.parametrize("folder", ["results", "results_quick"])
def test_every_executed_notebook_is_valid_and_renders_on_github(folder):
    for path in sorted((H.ROOT / folder).glob("**/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        widgets = nb.metadata.get("widgets")
        assert widgets is None or all("state" in v for v in widgets.values()), path


def test_the_views_name_each_arm_by_its_label_never_its_key(data, tmp_path):
    """The paper's control is 'ticket mask, fresh init' wherever a reader sees it, never `fixed_mask`."""
    from conftest import FAST
    from lth.runs import run_experiment
    from lth.spec import ARMS, RunSpec
    for arm in ("lottery", "random", "fixed_mask", "reinit"):
        spec = RunSpec.of(arm, sparsity=0.5, rounds=2, epochs=1, model="tiny", seed=0)
        run_experiment(spec, data, "cpu", tmp_path, FAST, progress=False)
    records = load_records(tmp_path)
    choice = {**default_choice(records), "arms": ["lottery", "random", "fixed_mask", "reinit"], "sparsity": 0.5,
              "model": setup_label(records[0]), "seed": 0}
    for name, view in VIEWS.items():
        fig = view(records, tmp_path, choice)
        text = " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
        assert not any(key in text for key in ("fixed_mask", "reinit", "late_rewind")), (name, text)
        assert name in ("accuracy curves", "final accuracy", "layer sparsity") or "ticket mask, fresh init" in text \
            or "lottery ticket" in text, name
    assert ARMS["fixed_mask"].label == "ticket mask, fresh init"


@pytest.mark.slow
def test_on_data_of_its_own_with_no_runs_the_explorer_opens_on_the_study_and_rebuilds_every_choice(fake_npz, tmp_path):
    """A user's own CIFAR-10, nothing run yet: 07 opens on the committed study (labelled as the reference), saves no
    blank figure, and switching to the user's folder and back rebuilds every choice from that folder's runs."""
    mine = tmp_path / "mine"
    nb = nbformat.read(H.ROOT / "notebooks" / "07_explore.ipynb", as_version=4)
    params = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells[params].source = f"results_dir = {str(mine)!r}\nquick = False\ndata_dir = {str(fake_npz)!r}"
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json\n"
        "seen = {'opened': str(controls['folder'].value), 'sparsities': len(controls['sparsity'].options)}\n"
        "controls['folder'].value = results\n"
        "seen |= {'mine': len(controls['sparsity'].options), 'seeds': list(controls['seed'].options)}\n"
        "controls['folder'].value = store.PUBLISHED_RESULTS\n"
        "seen['back'] = len(controls['sparsity'].options)\n"
        "print(json.dumps(seen))"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(H.ROOT)}}).execute()
    said = "".join(o.get("text", "") for o in nb.cells[3].outputs)
    assert "No runs in" in said and "the views show the committed study, as a reference" in said
    seen = json.loads("".join(o.get("text", "") for o in nb.cells[-1].outputs))
    assert seen["opened"] == str(H.ROOT / "results") and seen["sparsities"] > 5  # every sparsity of the study
    assert seen["mine"] == 1 and seen["seeds"] == [0]  # "all" alone: no run there
    assert seen["back"] == seen["sparsities"]
    assert not (mine / "figures").exists()  # no blank showcase
