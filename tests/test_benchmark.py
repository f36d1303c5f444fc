import subprocess
import sys

import pytest

import helpers as H
from lth.precision import pick_precision, resolve_device


@pytest.mark.slow
def test_speed_benchmark_prints_both_paths_and_the_ratio(tmp_path):
    out = subprocess.run([sys.executable, str(H.ROOT / "benchmarks" / "speed.py"), "--device", "cpu", "--images", "512",
                          "--batch-size", "256", "--repeats", "1", "--data-dir", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert {"reference", "project"} <= set(rows)
    assert "| 1.00x |" in rows["reference"] and "random images of CIFAR-10's shape" in out.stdout
    assert rows["project"].split("|")[2].strip() == pick_precision(resolve_device("cpu"))


def test_speed_benchmark_rejects_bad_options():
    out = subprocess.run([sys.executable, str(H.ROOT / "benchmarks" / "speed.py"), "--images", "100"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--images 100 is fewer than one batch of 512" in out.stderr


@pytest.mark.slow
def test_accuracy_mode_trains_both_paths_on_the_same_data(fake_npz):
    out = subprocess.run([sys.executable, str(H.ROOT / "benchmarks" / "speed.py"), "--device", "cpu", "--accuracy", "1",
                          "--images", "256", "--batch-size", "128", "--data-dir", str(fake_npz)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert [r[1].strip() for r in rows] == ["reference", "project"]
    assert all(0 <= float(r[2].strip().rstrip("%")) <= 100 for r in rows)


def test_accuracy_mode_refuses_random_images(tmp_path):
    out = subprocess.run([sys.executable, str(H.ROOT / "benchmarks" / "speed.py"), "--accuracy", "1",
                          "--data-dir", str(tmp_path / "none.npz")], capture_output=True, text=True)
    assert out.returncode == 2 and "--accuracy needs CIFAR-10, not random images" in out.stderr
