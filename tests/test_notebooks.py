"""The notebooks outside the batch runner: their Colab setup cell, and papermill started from anywhere."""
import json
import subprocess
import sys

import nbformat
import numpy as np
import papermill as pm
import pytest

import colab_setup
import helpers as H
from conftest import fake_arrays

ROOT = H.ROOT
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

DRIVER = """
import importlib.util, json, subprocess, sys, types
calls, real_run, real_find = [], subprocess.run, importlib.util.find_spec
def run(cmd, *a, **k):  # git really runs (a file:// clone); pip is only recorded
    calls.append(cmd)
    return real_run(cmd, *a, **k) if cmd[0] == "git" else subprocess.CompletedProcess(cmd, 0)
subprocess.run = run
importlib.util.find_spec = lambda name, *a: None if name in {missing!r} else real_find(name, *a)
if {colab!r}:  # a stand-in for the module Colab's kernel imports at start-up
    sys.modules["google"], sys.modules["google.colab"] = types.ModuleType("google"), types.ModuleType("google.colab")
sys.path = [p for p in sys.path if p not in ("", {root!r})]
exec({cell!r})
import helpers
print(json.dumps({{"calls": calls, "helpers": helpers.__file__}}))
"""


def run_cell(tmp_path, colab: bool, repo: str = colab_setup.REPO, branch: str = "main", env: dict | None = None,
             missing=("seaborn", "papermill", "torch", "torchvision")):
    code = DRIVER.format(missing=set(missing), colab=colab, root=str(ROOT), cell=colab_setup.cell(repo, branch))
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})})


def test_every_notebook_starts_with_the_setup_cell_and_a_colab_badge():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0].source == colab_setup.cell(), path.name
        assert colab_setup.badge(path.stem) in nb.cells[0].source, path.name
        assert colab_setup.badge(path.stem) in (ROOT / "README.md").read_text(), path.name


@pytest.mark.slow
def test_in_colab_the_setup_cell_clones_installs_what_is_missing_but_torch_and_imports_helpers(tmp_path):
    bare = tmp_path / "lottery.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(ROOT), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "branch", "-f", "colab-test", "HEAD"], check=True)
    out = run_cell(tmp_path, colab=True, repo=f"file://{bare}", branch="colab-test")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["helpers"] == str(tmp_path / "lottery" / "helpers.py")  # the clone's, not this checkout's
    git, pip = [c for c in result["calls"] if c[0] == "git"], [c for c in result["calls"] if "pip" in c]
    assert len(git) == 1 and git[0][-1] == str(tmp_path / "lottery")
    assert len(pip) == 1 and {a.split(">")[0] for a in pip[0][pip[0].index("-q") + 1:]} == {"seaborn", "papermill"}
    again = run_cell(tmp_path, colab=True, repo=f"file://{bare}", branch="colab-test")  # a second notebook
    assert [c for c in json.loads(again.stdout.splitlines()[-1])["calls"] if c[0] == "git"] == []


def test_outside_colab_the_setup_cell_clones_and_installs_nothing(tmp_path):
    out = run_cell(tmp_path, colab=False)
    assert out.returncode != 0 and "helpers.py not found above this directory" in out.stderr
    out = run_cell(tmp_path, colab=False, env={"LTH_ROOT": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.splitlines()[-1]) == {"calls": [], "helpers": str(ROOT / "helpers.py")}
    out = run_cell(tmp_path, colab=True, env={"LTH_ROOT": str(ROOT), "LTH_BATCH": "1"})  # run_all.py inside Colab
    assert json.loads(out.stdout.splitlines()[-1])["calls"] == []


@pytest.mark.slow
def test_a_notebook_runs_under_papermill_started_outside_notebooks(tmp_path):
    np.savez(tmp_path / "cifar10.npz", **fake_arrays(n_train=600, n_test=100))
    out = tmp_path / "executed.ipynb"
    pm.execute_notebook(ROOT / "notebooks" / "05_random_reinit.ipynb", out, cwd=ROOT / "tests", progress_bar=False,
                        parameters={"quick": True, "data_dir": str(tmp_path / "cifar10.npz"),
                                    "results_dir": str(tmp_path / "results"), "progress": False})
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "precision: " in text and "epochs to train" in text and "final validation accuracy" in text
    assert (tmp_path / "results" / "runs" / "reinit").is_dir()
