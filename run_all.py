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
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

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
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 for every parameter set (default 1)")
    p.add_argument("--quick", action="store_true", help="tiny subset, 1 epoch a phase, saved in results_quick/")
    p.add_argument("--results-dir", help="where runs and executed notebooks go (default: results/, or results_quick/)")
    p.add_argument("--force", action="store_true", help="retrain runs that are already done (phase 0 stays shared)")
    p.add_argument("--list", action="store_true", help="show what would run and what is done, then stop")
    args = p.parse_args(argv)
    unknown = [n for n in args.only or [] if n not in PLAN]
    if unknown:
        p.error(f"unknown notebook(s) {unknown} in --only; choose from {', '.join(PLAN)}")
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: must be at least 1")
    if args.device is not None:
        try:
            H.resolve_device(args.device)
        except ValueError as e:
            p.error(str(e))
    return args


def jobs(args: argparse.Namespace) -> list[tuple[str, dict, H.RunSpec | None]]:
    """(notebook, its parameters, the run it makes) in order; every spec is validated before anything trains."""
    out = []
    for notebook, (experiment, param_sets) in PLAN.items():
        if args.only and notebook not in args.only:
            continue
        for params in param_sets:
            for seed in range(args.seeds) if experiment else [None]:
                run_params = {**params, "seed": seed} if experiment else {}
                spec = H.RunSpec.of(experiment, quick=args.quick, **run_params) if experiment else None
                out.append((notebook, run_params, spec))
    return out


def output_path(results: Path, notebook: str, params: dict) -> Path:
    suffix = "".join(f"__{k}={v}" for k, v in params.items())
    return results / "notebooks" / f"{notebook}{suffix}.ipynb"


def status(results: Path, spec: H.RunSpec | None) -> str:
    if spec is None:
        return "summary"
    if H.record_path(results, spec).exists():
        return "done"
    return "partial" if H.checkpoint_path(results, spec).exists() else "to do"


def epochs_left(results: Path, todo: list[H.RunSpec]) -> int:
    """Epochs still to train, counting each shared phase 0 once."""
    phase0 = {s.phase0_name: s.epochs for s in todo
              if not H.phase0_path(results, s).exists()}
    return sum(phase0.values()) + sum((s.rounds - rounds_done(results, s)) * s.epochs for s in todo)


def rounds_done(results: Path, spec: H.RunSpec) -> int:
    """Rounds an interrupted run has finished (its checkpoint), 0 for a run not started."""
    ckpt = H.checkpoint_path(results, spec)
    return torch.load(ckpt, map_location="cpu")["history"][-1]["round"] if ckpt.exists() else 0


def log_timing(results: Path, row: dict) -> None:
    path = results / "timing.csv"
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def main(argv: list[str] | None = None) -> int:
    import papermill as pm

    args = parse_args(argv)
    results = H.results_root(args.results_dir, args.quick)
    try:
        plan = jobs(args)
    except ValueError as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for notebook, params, spec in plan:
            print(f"{status(results, spec):8s} {notebook} {params or ''}")
        print(f"{epochs_left(results, [s for _, _, s in plan if s and status(results, s) != 'done'])} epochs to train")
        return 0
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None  # notebooks run in notebooks/
    common = {"data_dir": data_dir, "device": args.device, "quick": args.quick,
              "results_dir": str(results), "progress": False}
    failed, start, trained_epochs = [], time.time(), 0
    for i, (notebook, params, spec) in enumerate(plan, 1):
        out = output_path(results, notebook, params)
        if spec and args.force:
            H.record_path(results, spec).unlink(missing_ok=True)
            H.checkpoint_path(results, spec).unlink(missing_ok=True)
        if spec and status(results, spec) == "done" and out.exists():
            continue
        todo = [s for _, _, s in plan[i - 1:] if s and status(results, s) != "done"]
        left = epochs_left(results, todo)
        elapsed = time.time() - start
        eta = f"{left * elapsed / trained_epochs / 60:.0f} min" if trained_epochs else "after the first run"
        print(f"[{i}/{len(plan)}] {notebook} {params or ''} · {left} epochs to train · "
              f"{elapsed / 60:.0f} min so far · ETA {eta}", flush=True)
        t0 = time.time()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            parameters = {**common, **params} if spec else {"results_dir": str(results), "quick": args.quick}
            pm.execute_notebook(NOTEBOOKS / f"{notebook}.ipynb", out, parameters=parameters,
                                cwd=NOTEBOOKS, progress_bar=False, log_output=True)
            result = "ok"
        except Exception as e:  # a failed run is logged and the others go on; its checkpoints are kept
            failed.append(f"{notebook} {params}: {type(e).__name__}: {str(e).strip().splitlines()[-1:]}")
            result = "failed"
        trained_epochs += left - epochs_left(results, [s for s in todo if status(results, s) != "done"])
        log_timing(results, {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "notebook": notebook, "params": params, "seconds": round(time.time() - t0, 1),
                             "status": result})
    print(f"finished in {(time.time() - start) / 60:.1f} min; executed notebooks in {results / 'notebooks'}")
    if failed:
        print("FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
