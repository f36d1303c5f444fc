"""Regenerate every result: each notebook executed by papermill once per parameter set, in order, then the summary.

Resumable: a finished run is skipped, an interrupted one continues from its last finished phase.

    python run_all.py                    # everything, seed 0
    python run_all.py --seeds 3          # three seeds of everything; the summary shows mean and spread
    python run_all.py --only 02_lottery_sweep 06_summary --device cuda
    python run_all.py --quick            # the whole pipeline on a tiny subset, 1 epoch a phase, in results_quick/
    python run_all.py --list             # what would run, and what is done
    python run_all.py --model conv2      # the same plan on Conv-2 (models/); --set batchnorm=False ...
    python run_all.py --workers 4 --gpus-per-run 0.25      # four runs at once on one GPU, on a local Ray
    python run_all.py --address auto --workers 16          # on a Ray cluster started with `ray start`
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

import torch

import helpers as H
from lth import precision, store
from lth.batch import (
    Job,
    Study,
    execute,
    jobs,
    log_timing,
    notebook_finished,
    output_path,
    parameters,
    plan,
    problem,
    settings,
    short,
    timing_row,
)
from lth.data import describe_data, load_data
from lth.identity import DamagedFile, ResultMismatch
from lth.runs import resolve_hparams

RAY_INSTALL = "pip install -r requirements-ray.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK[:PARAM=VALUE]",
                   help=f"run only these notebooks ({', '.join(plan())}), or only their parameter sets that match, "
                        "e.g. 02_lottery_sweep:rounds=13")
    p.add_argument("--model", help="run the plan on this registered network (cnn, conv2, conv4, conv6, tiny, or a "
                                   "file of yours in models/); the same as --set model=NAME")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override the plan's model, batchnorm or dropout in every run, e.g. --set model=conv2 "
                        "batchnorm=False")
    p.add_argument("--data-dir", help="CIFAR-10 folder or .npz file (default: $CIFAR10_DATA, else ./data)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--precision", default="auto", choices=H.PRECISIONS,
                   help="autocast precision (default auto: that of the runs already in the results folder, else "
                        "the fastest safe one on the device)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for every parameter set (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch a phase, saved in results_quick/")
    p.add_argument("--results-dir", help="where runs and executed notebooks go (default: results/, or results_quick/; "
                                         "a folder of the data's own when that one holds other data)")
    p.add_argument("--force", action="store_true",
                   help="compute runs again even if done; each record is replaced only once its new run is complete")
    p.add_argument("--list", action="store_true", help="show what would run and what is done, then stop")
    p.add_argument("--workers", type=int, help="run up to N executions at once on Ray (local, or --address)")
    p.add_argument("--address", help="attach to a Ray cluster (auto, HOST:PORT or ray://HOST:PORT) instead of "
                                     "starting a local one; needs --workers")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPU share of each run on Ray, e.g. 0.25: four "
                                                                     "runs a GPU (default 0: CPU runs)")
    p.add_argument("--threads-per-run", type=int, help="torch CPU threads in each run (default: torch's own)")
    args = p.parse_args(argv)
    unknown = [n for n in args.only or [] if n.split(":")[0] not in plan()]
    if unknown:
        p.error(f"unknown notebook(s) {unknown} in --only; choose from {', '.join(plan())}")
    try:
        args.only = [(n.split(":")[0], dict(kv.split("=", 1) for kv in n.split(":")[1].split(",")) if ":" in n
                      else {}) for n in args.only or []]
    except ValueError:
        p.error(f"--only {args.only}: write NOTEBOOK or NOTEBOOK:PARAM=VALUE[,PARAM=VALUE], e.g. "
                "02_lottery_sweep:rounds=13")
    try:
        args.set = settings(args.set + ([f"model={args.model}"] if args.model else []))
    except ValueError as e:
        p.error(str(e))
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: must be at least 1")
    for name in ("workers", "threads_per_run"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if not 0 <= args.gpus_per_run <= 1:
        p.error(f"--gpus-per-run {args.gpus_per_run}: must be a fraction of one GPU, in [0, 1]")
    if (args.address or args.gpus_per_run) and not args.workers:
        p.error("--address and --gpus-per-run need --workers N (how many runs at once)")
    if args.gpus_per_run and args.device is None:
        args.device = "cuda"  # the runs land on GPU workers, whatever this machine has
    try:
        args.device = torch.device(args.device) if args.gpus_per_run else precision.resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers:
        try:
            import ray  # noqa: F401  (an optional dependency: only --workers needs it)
        except ImportError:
            print(f"run_all.py: error: --workers needs Ray, which is not installed: {RAY_INSTALL}", file=sys.stderr)
            return 2
    if args.results_dir:  # as --data-dir: against where the user stands, and said in full
        args.results_dir = str(Path(args.results_dir).resolve())
    try:
        executions = jobs(args.seeds, args.quick, args.only, args.set)
        data = load_data(args.data_dir, args.quick)  # once, up front: a bad --data-dir fails here, not per notebook
        results = store.results_root(args.results_dir, args.quick, data.source)
        store.check_folder(results, data.source)
        hp = resolve_hparams(H.HParams(precision=args.precision), args.device, results)
    except (ValueError, H.DataError, ResultMismatch, DamagedFile) as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2
    study = Study(results, data, hp)
    where = f"{results}/" if args.results_dir else store.folder_note(results, args.quick)
    print(f"results: {where}\ndata: {describe_data(data.source)}; precision "
          f"{hp.precision} on {args.device}")
    if args.list:
        for job in executions:
            same = job.spec and study.as_run(job.spec) != job.spec
            print(f"{study.status(job.spec) if job.spec else 'summary':8s} {job.notebook} {job.params or ''}"
                  + (" = the run above: late rewinding shares its phase 0" if same else ""))
        print(f"{study.epochs_left([j.spec for j in executions if j.spec])} epochs to train")
        return 0
    if args.data_dir:  # the kernels read it from the environment, so no machine path lands in the notebooks
        os.environ["CIFAR10_DATA"] = str(Path(args.data_dir).resolve())
    os.environ["LTH_BATCH"] = "1"  # the notebooks' Colab setup cell stays idle in batch runs
    if args.threads_per_run:
        os.environ["OMP_NUM_THREADS"] = str(args.threads_per_run)  # torch's intra-op threads in each kernel
    start, failed, done = time.time(), [], []
    pending, finished = triage(executions, study, args, failed)
    previous_handler = signal.signal(signal.SIGINT, quiet_ctrl_c)
    try:
        if args.workers:
            from lth.cluster import run_parallel
            run_parallel(args, pending, study, failed, done)
        else:
            run_sequential(args, pending, study, failed, done)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {finished + len(done)} of {len(executions)} executions finished; runs in progress "
              "keep their last finished phase. Run the same command again to resume.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    print(f"finished in {(time.time() - start) / 60:.1f} min; executed notebooks in {results / 'notebooks'}")
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def quiet_ctrl_c(signum, frame):
    """Ctrl-C reaches the kernels too (one process group), so a kernel that died is expected then, not news: silence
    papermill's "Kernel died" and the cell task it leaves behind before they can print, then stop as Python would."""
    for name in ("papermill", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    raise KeyboardInterrupt


def triage(executions: list[Job], study: Study, args, failed: list[str]) -> tuple[list[Job], int]:
    """The executions still to do, and how many are finished; runs that cannot be executed go to `failed`."""
    pending, finished = [], 0
    for job in executions:
        state = study.status(job.spec) if job.spec else "summary"
        if state in ("differs", "damaged") and not args.force:
            failed.append(f"{job.notebook} {job.params}: {problem(study, job.spec, state)}")
        elif state == "running":
            print(f"{job.notebook} {job.params}: another process is computing it; skipped")
        elif state == "done" and not args.force and notebook_finished(output_path(study.results, job)):
            finished += 1
        else:
            pending.append(job)
    return pending, finished


def run_sequential(args, pending: list[Job], study: Study, failed: list[str], done: list[Job]) -> None:
    """One execution after another in this process's kernels; each that finishes joins `done` at once, so an
    interruption counts it."""
    start, trained_epochs = time.time(), 0
    for i, job in enumerate(pending, 1):
        todo = [j.spec for j in pending[i - 1:] if j.spec]
        left = study.epochs_left(todo)
        elapsed = time.time() - start
        eta = f"{left * elapsed / trained_epochs / 60:.0f} min" if trained_epochs else "after the first run"
        print(f"[{i}/{len(pending)}] {job.notebook} {job.params or ''}"
              + (f" · {left} epochs to train · {elapsed / 60:.0f} min so far · ETA {eta}" if left else ""), flush=True)
        state = study.status(job.spec) if job.spec else "summary"
        if state == "running" or (state == "done" and not args.force
                                  and notebook_finished(output_path(study.results, job))):
            print(f"{job.notebook} {job.params}: another runner took it meanwhile; skipped")
            continue
        t0, damaged = time.time(), set(study.results.rglob("*.damaged"))
        try:
            execute(job, output_path(study.results, job), parameters(study, job, args.device, args.force))
            result = "ok"
            done.append(job)
        except Exception as e:  # a failed run is logged and the others go on; its checkpoints are kept
            failed.append(f"{job.notebook} {job.params}: {short(e)}")
            result = "failed"
        for path in sorted(set(study.results.rglob("*.damaged")) - damaged):
            print(f"WARNING: {path.with_suffix('')} was damaged and is set aside as {path.name}; its work was "
                  "computed again", file=sys.stderr)
        trained_epochs += left - study.epochs_left(todo)
        log_timing(study.results, timing_row(job, time.time() - t0, result))


if __name__ == "__main__":
    sys.exit(main())
