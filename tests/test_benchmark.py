import subprocess
import sys

import helpers as H


def test_speed_benchmark_prints_both_paths_and_the_ratio(tmp_path):
    out = subprocess.run([sys.executable, str(H.ROOT / "benchmarks" / "speed.py"), "--device", "cpu", "--images", "512",
                          "--batch-size", "256", "--repeats", "1", "--data-dir", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert {"reference", "project"} <= set(rows)
    assert "| 1.00x |" in rows["reference"] and "random images of CIFAR-10's shape" in out.stdout


def test_speed_benchmark_rejects_bad_options():
    out = subprocess.run([sys.executable, str(H.ROOT / "benchmarks" / "speed.py"), "--images", "100"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "--images 100 is fewer than one batch of 512" in out.stderr
