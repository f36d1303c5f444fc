"""Regenerate every result: each notebook executed by papermill once per parameter set, in order, then the summary.

Resumable: a finished run is skipped, an interrupted one continues from its last finished phase.

    python run_all.py                    # everything, seed 0
    python run_all.py --seeds 3          # three seeds of everything; the summary shows mean and spread
    python run_all.py --only 02_lottery_sweep 06_summary --device cuda
    python run_all.py --quick            # the whole pipeline on a tiny subset, 1 epoch a phase, in results_quick/
    python run_all.py --list             # what would run, and what is done
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import torch

import helpers as H

SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5)
ROUNDS_X_EPOCHS = ((1, 30), (2, 15), (3, 10), (4, 7), (5, 6))
PLAN = {  # notebook -> (experiment it runs, one dict of parameters per execution)
    "01_baseline": ("baseline", [dict(batchnorm=bn, dropout=do) for bn in (True, False) for do in (0.0, 0.2)]),
    "02_lottery_sweep": ("lottery", [dict(sparsity=p) for p in SPARSITIES]),
    "03_random_sweep": ("random", [dict(sparsity=p) for p in SPARSITIES]),
    "04_rounds_vs_epochs": ("rounds_vs_epochs", [dict(rounds=r, epochs=e) for r, e in ROUNDS_X_EPOCHS]),
    "05_random_reinit": ("reinit", [dict()]),
    "06_summary": (None, [dict()]),
}
NOTEBOOKS = H.ROOT / "notebooks"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", help=f"run only these notebooks: {', '.join(PLAN)}")
    p.add_argument("--data-dir", help="CIFAR-10 folder or .npz file (default: $CIFAR10_DATA, else ./data)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    p.add_argument("--precision", default="auto", choices=H.PRECISIONS,
                   help="autocast precision (default auto: that of the runs already in the results folder, else "
                        "the fastest safe one on the device)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for every parameter set (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch a phase, saved in results_quick/")
    p.add_argument("--results-dir", help="where runs and executed notebooks go (default: results/, or results_quick/)")
    p.add_argument("--force", action="store_true",
                   help="compute runs again even if done; each record is replaced only once its new run is complete")
    p.add_argument("--list", action="store_true", help="show what would run and what is done, then stop")
    args = p.parse_args(argv)
    unknown = [n for n in args.only or [] if n not in PLAN]
    if unknown:
        p.error(f"unknown notebook(s) {unknown} in --only; choose from {', '.join(PLAN)}")
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: must be at least 1")
    try:
        args.device = H.resolve_device(args.device)
    except ValueError as e:
        p.error(str(e))
    return args


@dataclass(frozen=True)
class Job:
    """One notebook execution: the notebook, its parameters, and the run it makes (None for the summary)."""
    notebook: str
    params: dict
    spec: H.RunSpec | None


def jobs(args: argparse.Namespace) -> list[Job]:
    """Every execution in order; every spec is validated before anything trains."""
    out = []
    for notebook, (experiment, param_sets) in PLAN.items():
        if args.only and notebook not in args.only:
            continue
        for params in param_sets:
            for seed in range(args.seeds) if experiment else [None]:
                run_params = {**params, "seed": seed} if experiment else {}
                spec = H.RunSpec.of(experiment, quick=args.quick, **run_params) if experiment else None
                out.append(Job(notebook, run_params, spec))
    return out


def output_path(results: Path, job: Job) -> Path:
    suffix = "".join(f"__{k}={v}" for k, v in job.params.items())
    return results / "notebooks" / f"{job.notebook}{suffix}.ipynb"


class Study:
    """The results folder seen from the runner: what each run's status is, for the data and precision asked."""

    def __init__(self, results: Path, data: H.Data, hp: H.HParams):
        self.results, self.data, self.hp = results, data, hp

    def identity(self, spec: H.RunSpec) -> dict:
        return H.run_identity(spec, self.hp, self.data.source)

    def status(self, spec: H.RunSpec) -> str:
        """done, differs (made with other settings), damaged, running (another process), partial or to do."""
        record = H.record_path(self.results, spec)
        if record.exists():
            try:
                same = H.record_identity(H.read_record(record)) == self.identity(spec)
            except H.DamagedFile:
                return "damaged"
            return "done" if same else "differs"
        if is_locked(self.results, spec.name):
            return "running"
        return "partial" if H.checkpoint_path(self.results, spec).exists() else "to do"

    def epochs_left(self, todo: list[H.RunSpec]) -> int:
        """Epochs still to train, counting each shared phase 0 once."""
        phase0 = {s.phase0_name: s.epochs for s in todo if not H.phase0_path(self.results, s).exists()}
        return sum(phase0.values()) + sum((s.rounds - self.rounds_done(s)) * s.epochs for s in todo)

    def rounds_done(self, spec: H.RunSpec) -> int:
        """Rounds an interrupted run has finished (its checkpoint), 0 for a run not started or a damaged checkpoint."""
        try:
            return torch.load(H.checkpoint_path(self.results, spec), map_location="cpu")["history"][-1]["round"]
        except Exception:
            return 0


def is_locked(results: Path, name: str) -> bool:
    from filelock import Timeout
    lock = H.run_lock(results, name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def notebook_finished(path: Path) -> bool:
    """An executed notebook counts only when papermill ran every code cell to the end."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:
        return False
    meta = nb.metadata.get("papermill", {})
    return bool(meta.get("end_time")) and not meta.get("exception") and all(
        c.metadata.get("papermill", {}).get("status") == "completed" for c in nb.cells if c.cell_type == "code")


def execute(job: Job, out: Path, parameters: dict) -> None:
    """Execute into a temporary file and move it to `out` only when it finished: `out` is never half a notebook.

    A failed execution is kept as <out>.failed.ipynb to read its error; the previous `out`, if any, stays."""
    import papermill as pm
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".running.ipynb")
    os.close(fd)
    try:
        pm.execute_notebook(NOTEBOOKS / f"{job.notebook}.ipynb", tmp, parameters=parameters, cwd=NOTEBOOKS,
                            progress_bar=False, log_output=True,
                            shutdown_kernel="immediate")  # Ctrl-C: killed, not torn down mid-reply (tracebacks)
    except BaseException:
        if Path(tmp).exists() and Path(tmp).stat().st_size:
            os.replace(tmp, out.with_suffix(".failed.ipynb"))
        Path(tmp).unlink(missing_ok=True)
        raise
    nb = nbformat.read(tmp, as_version=4)
    meta = nb.metadata.get("papermill", {})
    meta["input_path"] = f"notebooks/{job.notebook}.ipynb"  # no machine paths in what is committed
    meta["output_path"] = relative(out)
    nb.metadata.pop("widgets", None)  # widget state is not saved in batch runs; GitHub refuses to render without it
    nbformat.validate(nb)
    H.atomic_write(out, lambda f: nbformat.write(nb, str(f)))
    Path(tmp).unlink()
    out.with_suffix(".failed.ipynb").unlink(missing_ok=True)


def relative(path: Path) -> str:
    """A path inside the repository as seen from its root; outside it, as given."""
    path = Path(path).resolve()
    return str(path.relative_to(H.ROOT)) if path.is_relative_to(H.ROOT) else str(path)


def log_timing(results: Path, row: dict) -> None:
    """One line per execution; a full or read-only disk costs the line, never the batch or its real error."""
    path = results / "timing.csv"
    try:
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
    except OSError as e:
        print(f"WARNING: could not write {path} ({e}); the runs themselves are unaffected.", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = H.results_root(args.results_dir, args.quick)
    try:
        plan = jobs(args)
        data = H.load_data(args.data_dir, args.quick)  # once, up front: a bad --data-dir fails here, not per notebook
        hp = H.resolve_hparams(H.HParams(precision=args.precision), args.device, results)
    except (ValueError, H.DataError) as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2
    study = Study(results, data, hp)
    if args.list:
        for job in plan:
            print(f"{study.status(job.spec) if job.spec else 'summary':8s} {job.notebook} {job.params or ''}")
        todo = [j.spec for j in plan if j.spec and study.status(j.spec) != "done"]
        print(f"{study.epochs_left(todo)} epochs to train; data: {data.source['description']}; "
              f"precision {hp.precision} on {args.device}")
        return 0
    print(f"data: {data.source['description']} ({data.source['file']}); precision {hp.precision} on {args.device}")
    if args.data_dir:  # the kernels read it from the environment, so no machine path lands in the notebooks
        os.environ["CIFAR10_DATA"] = str(Path(args.data_dir).resolve())
    os.environ["LTH_BATCH"] = "1"  # the notebooks' Colab setup cell stays idle in batch runs
    common = {"device": str(args.device), "precision": hp.precision, "quick": args.quick,
              "results_dir": relative(results), "progress": False, "force": args.force}
    failed, finished, start, trained_epochs = [], 0, time.time(), 0
    try:
        for i, job in enumerate(plan, 1):
            out = output_path(results, job)
            state = study.status(job.spec) if job.spec else "summary"
            if state in ("differs", "damaged") and not args.force:
                failed.append(f"{job.notebook} {job.params}: {problem(study, job.spec, state)}")
                continue
            if state == "running":
                print(f"[{i}/{len(plan)}] {job.notebook} {job.params}: another process is computing it; skipped")
                continue
            if state == "done" and not args.force and notebook_finished(out):
                finished += 1
                continue
            todo = [j.spec for j in plan[i - 1:] if j.spec and (args.force or study.status(j.spec) != "done")]
            left = study.epochs_left(todo)
            elapsed = time.time() - start
            eta = f"{left * elapsed / trained_epochs / 60:.0f} min" if trained_epochs else "after the first run"
            print(f"[{i}/{len(plan)}] {job.notebook} {job.params or ''} · {left} epochs to train · "
                  f"{elapsed / 60:.0f} min so far · ETA {eta}", flush=True)
            t0 = time.time()
            try:
                execute(job, out, {**common, **job.params} if job.spec else
                        {"results_dir": common["results_dir"], "quick": args.quick})
                result = "ok"
                finished += 1
            except Exception as e:  # a failed run is logged and the others go on; its checkpoints are kept
                failed.append(f"{job.notebook} {job.params}: {type(e).__name__}: {str(e).strip().splitlines()[-1:]}")
                result = "failed"
            trained_epochs += left - study.epochs_left([s for s in todo if s != job.spec or study.status(s) != "done"])
            log_timing(results, {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                 "notebook": job.notebook, "params": job.params,
                                 "seconds": round(time.time() - t0, 1), "status": result})
    except KeyboardInterrupt:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the cell task papermill left behind, at exit
        print(f"\ninterrupted: {finished} of {len(plan)} executions finished; the run in progress keeps its last "
              "finished phase. Run the same command again to resume.", file=sys.stderr)
        return 130
    print(f"finished in {(time.time() - start) / 60:.1f} min; executed notebooks in {results / 'notebooks'}")
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


def problem(study: Study, spec: H.RunSpec, state: str) -> str:
    """Why a run is not executed: what differs from the saved record, or which file is damaged, and the fix."""
    path = H.record_path(study.results, spec)
    try:
        H.check_identity(path, H.record_identity(H.read_record(path)), study.identity(spec))
    except (H.ResultMismatch, H.DamagedFile) as e:
        return str(e).replace("force=True (run_all.py --force)", "--force")
    return state


if __name__ == "__main__":
    sys.exit(main())
