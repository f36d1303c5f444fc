"""run_all.py on Ray: the same records as the sequential runner, phase 0 once per group, a two-node cluster on
this machine, and an interrupted parallel study that resumes. Every address is loopback."""
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

import helpers as H
from conftest import comparable, run_all
from lth.spec import ARMS, CLASSIC, RunSpec

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")
pytestmark = pytest.mark.slow  # Ray clusters and whole studies
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a throwaway local cluster: no token needed
ONLY = ["--only", "02_lottery_sweep:rounds=5", "05_random_reinit:rounds=5"]  # six runs sharing one phase 0


def one_run_of_every_arm() -> list[str]:
    """An --only that keeps one run of each arm: its classic curve where it has one (the ticket-mask arm needs the
    lottery run's), else its first parameter set."""
    keep = []
    for name, arm in ARMS.items():
        params = CLASSIC if CLASSIC in arm.plan else arm.plan[0]
        spec = RunSpec.of(name, quick=True, **params)
        keep.append(f"{arm.notebook}:" + ",".join(f"{k}={getattr(spec, k)}" for k in params))
    return ["--only", *keep]


def outputs(results: Path) -> str:
    return "".join(o.get("text", "") for p in sorted(results.glob("notebooks/*.ipynb"))
                   for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code" for o in c.outputs)


def test_without_workers_ray_is_never_imported(quick_study):
    common, results, _ = quick_study
    code = ("import sys, run_all; run_all.main(sys.argv[1:]); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    out = subprocess.run([sys.executable, "-c", code, *common, "--results-dir", str(results), "--list"],
                         cwd=H.ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_workers_without_ray_installed_stop_at_once_with_the_fix(tmp_path):
    code = "import sys; sys.modules['ray'] = None; import run_all; sys.exit(run_all.main(sys.argv[1:]))"
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code, "--workers", "2", "--data-dir", str(tmp_path / "none")],
                         cwd=H.ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "pip install -r requirements-ray.txt" in out.stderr
    assert time.time() - start < 30


def test_workers_give_the_records_of_the_sequential_runner_with_phase0_trained_once(quick_study, tmp_path):
    common, sequential, _ = quick_study
    out = run_all(*common, "--results-dir", str(tmp_path / "results"), "--workers", "2", *ONLY, env=ENV,
                  timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parallel = comparable(tmp_path / "results")
    assert len(parallel) == 6 and all(parallel[name] == comparable(sequential)[name] for name in parallel)
    assert "1 shared phase 0 first" in out.stdout
    text = outputs(tmp_path / "results")
    assert text.count("phase 0 loaded from bn1_do0_E1_seed0_") == 6 and "epochs dense)" not in text
    assert len((tmp_path / "results" / "timing.csv").read_text().splitlines()) == 1 + 6


def test_workers_run_every_arm_of_the_plan_as_the_sequential_runner_does(quick_study, tmp_path):
    common, sequential, _ = quick_study
    out = run_all(*common, "--results-dir", str(tmp_path / "results"), "--workers", "2", *one_run_of_every_arm(),
                  env=ENV, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    parallel = comparable(tmp_path / "results")
    assert {r["experiment"] for r in parallel.values()} == set(ARMS)
    assert all(parallel[name] == comparable(sequential)[name] for name in parallel)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_two_node_cluster_runs_the_study_and_every_result_lands_here(quick_study, tmp_path):
    common, _, _ = quick_study
    port = free_port()  # each node fits one run of --threads-per-run 2
    head_tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    (tmp_path / "worker-cwd").mkdir()
    try:
        subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
                        f"--temp-dir={head_tmp}", "--include-dashboard=false"], env=ENV, check=True,
                       capture_output=True, timeout=120)
        subprocess.run(["ray", "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=2"], env=ENV, check=True, capture_output=True, timeout=120,
                       cwd=tmp_path / "worker-cwd")
        out = run_all(*common, "--results-dir", str(tmp_path / "results"), "--address", f"127.0.0.1:{port}",
                      "--workers", "2", "--only", "02_lottery_sweep:rounds=5", env=ENV, timeout=900)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        where = re.findall(r"^ok +02_lottery_sweep .* on \S+ \((driver|node \w+)", out.stdout, re.M)
        assert len(where) == 5 and "driver" in where and any(w.startswith("node") for w in where), out.stdout
        results = tmp_path / "results"
        assert len(list(results.glob("runs/lottery/*.json"))) == 5
        assert len(list(results.glob("runs/lottery/*.masks.npz"))) == 5
        assert len(list(results.glob("notebooks/02_lottery_sweep__*.ipynb"))) == 5
    finally:
        subprocess.run(["ray", "stop", "--force"], env=ENV, capture_output=True, timeout=120)


def test_a_parallel_study_killed_midway_resumes_to_the_same_records(quick_study, tmp_path):
    common, sequential, _ = quick_study
    args = [sys.executable, str(H.ROOT / "run_all.py"), *common, "--results-dir", str(tmp_path / "results"),
            "--workers", "2", *ONLY]
    proc = subprocess.Popen(args, cwd=H.ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while len(list((tmp_path / "results").glob("runs/*/*.json"))) < 2 and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(3)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=60)
    subprocess.run(["ray", "stop", "--force"], env=ENV, capture_output=True, timeout=120)
    before = len(list((tmp_path / "results").glob("runs/*/*.json")))
    assert 2 <= before < 6
    again = run_all(*args[2:], env=ENV, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    executed = re.findall(r"^ok +\S+", again.stdout, re.M)
    assert len(executed) <= 6 - before + 2  # what was finished is skipped; at most the runs in flight are redone
    parallel = comparable(tmp_path / "results")
    assert len(parallel) == 6 and all(parallel[name] == comparable(sequential)[name] for name in parallel)
