"""Regenerate every result: each notebook executed by papermill once per parameter set, in order, then the summary.

Resumable: a finished run is skipped, an interrupted one continues from its last finished phase.

    python run_all.py                    # everything, seed 0
    python run_all.py --seeds 3          # three seeds of everything; the summary shows mean and spread
    python run_all.py --only 02_lottery_sweep 06_summary --device cuda
    python run_all.py --quick            # the whole pipeline on a tiny subset, 1 epoch a phase, in results_quick/
    python run_all.py --list             # what would run, and what is done
    python run_all.py --workers 4 --gpus-per-run 0.25      # four runs at once on one GPU, on a local Ray
    python run_all.py --address auto --workers 16          # on a Ray cluster started with `ray start`
"""
from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import signal
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
    "02_lottery_sweep": ("lottery", [dict(sparsity=p) for p in SPARSITIES] + [H.CLASSIC]),
    "03_random_sweep": ("random", [dict(sparsity=p) for p in SPARSITIES] + [H.CLASSIC]),
    "04_rounds_vs_epochs": ("rounds_vs_epochs", [dict(rounds=r, epochs=e) for r, e in ROUNDS_X_EPOCHS]),
    "05_random_reinit": ("reinit", [dict(), H.CLASSIC]),  # H.CLASSIC: the classic curve, to 5.5% of the weights
    "06_summary": (None, [dict()]),
    "07_explore": (None, [dict()]),  # reads what the runs saved, trains nothing
}
NOTEBOOKS = H.ROOT / "notebooks"
RAY_INSTALL = "pip install -r requirements-ray.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK[:PARAM=VALUE]",
                   help=f"run only these notebooks ({', '.join(PLAN)}), or only their parameter sets that match, "
                        "e.g. 02_lottery_sweep:rounds=13")
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
    unknown = [n for n in args.only or [] if n.split(":")[0] not in PLAN]
    if unknown:
        p.error(f"unknown notebook(s) {unknown} in --only; choose from {', '.join(PLAN)}")
    try:
        args.only = [(n.split(":")[0], dict(kv.split("=", 1) for kv in n.split(":")[1].split(",")) if ":" in n
                      else {}) for n in args.only or []]
    except ValueError:
        p.error(f"--only {args.only}: write NOTEBOOK or NOTEBOOK:PARAM=VALUE[,PARAM=VALUE], e.g. "
                "02_lottery_sweep:rounds=13")
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
        args.device = torch.device(args.device) if args.gpus_per_run else H.resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    return args


@dataclass(frozen=True)
class Job:
    """One notebook execution: the notebook, its parameters, and the run it makes (None for the summary)."""
    notebook: str
    params: dict
    spec: H.RunSpec | None
    quick: bool = False


def jobs(args: argparse.Namespace) -> list[Job]:
    """Every execution in order; every spec is validated before anything trains. An --only filter that matches no
    parameter set is an error that lists the values there are."""
    out, used = [], set()
    for notebook, (experiment, param_sets) in PLAN.items():
        for params in param_sets:
            for seed in range(args.seeds) if experiment else [None]:
                run_params = {**params, "seed": seed} if experiment else {}
                spec = H.RunSpec.of(experiment, quick=args.quick, **run_params) if experiment else None
                hits = {i for i, (nb, where) in enumerate(args.only or []) if nb == notebook and matches(spec, where)}
                used |= hits
                if not args.only or hits:
                    out.append(Job(notebook, run_params, spec, args.quick))
    for nb, where in [f for i, f in enumerate(args.only or []) if i not in used]:
        experiment, param_sets = PLAN[nb]
        specs = [H.RunSpec.of(experiment, quick=args.quick, **p, seed=s) for p in param_sets for s in
                 range(args.seeds)] if experiment else []
        values = "; ".join(f"{k}: {', '.join(sorted({str(getattr(s, k, None)) for s in specs}))}" for k in where)
        raise ValueError(f"--only {nb}:{','.join(f'{k}={v}' for k, v in where.items())} matches no run of the plan"
                         + (f" (with --seeds {args.seeds}, {nb} has {values})" if specs else
                            f" ({nb} takes no parameters)"))
    return out


def matches(spec: H.RunSpec | None, where: dict[str, str]) -> bool:
    """Whether a run has every PARAM=VALUE of an --only filter (values compared as written)."""
    return all(str(getattr(spec, k, None)) == v for k, v in where.items())


def output_path(results: Path, job: Job) -> Path:
    """The executed notebook: its name carries every parameter that differs from the notebook's defaults (the
    plan's parameter set, what `quick` changes, and `quick` itself), so no two executions share a file."""
    params = {k: v for k, v in job.params.items() if k != "seed"}
    if job.spec is not None:
        planned = H.RunSpec.of(job.spec.experiment, **job.params)
        params |= {k: v for k, v in H.non_default(job.spec).items() if getattr(planned, k) != v}
    if job.quick:
        params["quick"] = True
    if "seed" in job.params:
        params["seed"] = job.params["seed"]
    return results / "notebooks" / f"{job.notebook}{''.join(f'__{k}={v}' for k, v in params.items())}.ipynb"


class Study:
    """The results folder seen from the runner: what each run's status is, for the data and precision asked."""

    def __init__(self, results: Path, data: H.Data, hp: H.HParams):
        self.results, self.data, self.hp = results, data, hp

    def identity(self, spec: H.RunSpec) -> dict:
        return H.run_identity(spec, self.hp, self.data.source)

    def status(self, spec: H.RunSpec) -> str:
        """done, differs (made with other settings), damaged, running (another process), partial or to do. Reads
        only: it works on a read-only folder."""
        record = H.record_path(self.results, spec)
        if record.exists():
            try:
                same = H.record_identity(H.read_record(record)) == self.identity(spec)
            except H.DamagedFile:
                return "damaged"
            return "done" if same else "differs"
        if is_locked(self.results, spec.name):
            return "running"
        if not H.checkpoint_path(self.results, spec).exists():
            return "to do"
        try:
            saved = torch.load(H.checkpoint_path(self.results, spec), map_location="cpu", mmap=True)
        except Exception:
            return "partial"  # a damaged checkpoint is set aside and the run restarts after its phase 0
        try:
            same = H.checkpoint_identity(saved, H.checkpoint_path(self.results, spec)) == self.identity(spec)
        except H.DamagedFile:
            return "partial"
        return "partial" if same else "differs"

    def epochs_left(self, todo: list[H.RunSpec]) -> int:
        """Epochs still to train for the runs that will train (to do or partial), counting each shared phase 0 once."""
        todo = [s for s in todo if self.status(s) in ("to do", "partial")]
        phase0 = {s.phase0_name: s.epochs for s in todo
                  if not H.phase0_path(self.results, s, self.hp, self.data.source).exists()}
        return sum(phase0.values()) + sum((s.rounds - self.rounds_done(s)) * s.epochs for s in todo)

    def rounds_done(self, spec: H.RunSpec) -> int:
        """Rounds an interrupted run has finished (its checkpoint), 0 for a run not started or a damaged checkpoint."""
        try:
            saved = torch.load(H.checkpoint_path(self.results, spec), map_location="cpu", mmap=True)
            return saved["history"][-1]["round"]
        except Exception:
            return 0


def is_locked(results: Path, name: str) -> bool:
    """Whether another process holds a run's lock; without touching the folder when nobody ever took it, and False
    where the folder is read-only (no writer can hold a lock there)."""
    from filelock import FileLock, Timeout
    path = results / ".locks" / f"{name}.lock"
    if not path.exists():
        return False
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:
        return False
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


def execute(job: Job, out: Path, parameters: dict, recorded_as: str | None = None) -> None:
    """Execute into a temporary file outside the results (a killed runner leaves nothing there) and move it to
    `out` only when it finished: `out` is never half a notebook.

    A failed execution is kept as <out>.failed.ipynb to read its error; the previous `out`, if any, stays."""
    import papermill as pm
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{out.stem}.", suffix=".running.ipynb")
    os.close(fd)
    try:
        pm.execute_notebook(NOTEBOOKS / f"{job.notebook}.ipynb", tmp, parameters=parameters, cwd=NOTEBOOKS,
                            progress_bar=False, log_output=True,
                            shutdown_kernel="immediate")  # Ctrl-C: killed, not torn down mid-reply (tracebacks)
    except BaseException:
        if Path(tmp).exists() and Path(tmp).stat().st_size:
            H.atomic_write(out.with_suffix(".failed.ipynb"), lambda f: f.write_bytes(Path(tmp).read_bytes()))
        Path(tmp).unlink(missing_ok=True)
        raise
    nb = nbformat.read(tmp, as_version=4)
    meta = nb.metadata.get("papermill", {})
    meta["input_path"] = f"notebooks/{job.notebook}.ipynb"  # no machine paths in what is committed
    meta["output_path"] = recorded_as or relative(out)
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
    if args.workers:
        try:
            import ray  # noqa: F401  (an optional dependency: only --workers needs it)
        except ImportError:
            print(f"run_all.py: error: --workers needs Ray, which is not installed: {RAY_INSTALL}", file=sys.stderr)
            return 2
    try:
        plan = jobs(args)
        data = H.load_data(args.data_dir, args.quick)  # once, up front: a bad --data-dir fails here, not per notebook
        results = H.results_root(args.results_dir, args.quick, data.source)
        H.check_folder(results, data.source)
        hp = H.resolve_hparams(H.HParams(precision=args.precision), args.device, results)
    except (ValueError, H.DataError, H.ResultMismatch, H.DamagedFile) as e:
        print(f"run_all.py: error: {e}", file=sys.stderr)
        return 2
    study = Study(results, data, hp)
    print(f"results: {H.folder_note(results, args.quick)}")
    if args.list:
        for job in plan:
            print(f"{study.status(job.spec) if job.spec else 'summary':8s} {job.notebook} {job.params or ''}")
        print(f"{study.epochs_left([j.spec for j in plan if j.spec])} epochs to train; data: "
              f"{H.describe_data(data.source)}; precision {hp.precision} on {args.device}")
        return 0
    if args.data_dir:  # the kernels read it from the environment, so no machine path lands in the notebooks
        os.environ["CIFAR10_DATA"] = str(Path(args.data_dir).resolve())
    os.environ["LTH_BATCH"] = "1"  # the notebooks' Colab setup cell stays idle in batch runs
    if args.threads_per_run:
        os.environ["OMP_NUM_THREADS"] = str(args.threads_per_run)  # torch's intra-op threads in each kernel
    start, failed = time.time(), []
    pending, finished = triage(plan, study, args, failed)
    previous_handler = signal.signal(signal.SIGINT, quiet_ctrl_c)
    try:
        if args.workers:
            finished += run_parallel(args, pending, study, failed)
        else:
            print(f"data: {H.describe_data(data.source)}; precision {hp.precision} on {args.device}")
            finished += run_sequential(args, pending, study, failed)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {finished} of {len(plan)} executions finished; runs in progress keep their last "
              "finished phase. Run the same command again to resume.", file=sys.stderr)
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


def triage(plan: list[Job], study: Study, args, failed: list[str]) -> tuple[list[Job], int]:
    """The executions still to do, and how many are finished; runs that cannot be executed go to `failed`."""
    pending, finished = [], 0
    for job in plan:
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


def parameters(args, study: Study, job: Job) -> dict:
    """The notebook's parameters, writing into the study's results folder as the repository sees it."""
    where = relative(study.results)
    if job.spec is None:
        return {"results_dir": where, "quick": args.quick}
    return {"device": str(args.device), "precision": study.hp.precision, "quick": args.quick, "results_dir": where,
            "progress": False, "force": args.force, **job.params}


def run_sequential(args, pending: list[Job], study: Study, failed: list[str]) -> int:
    """One execution after another in this process's kernels; returns how many finished."""
    finished, start, trained_epochs = 0, time.time(), 0
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
            print(f"{job.notebook} {job.params}: {'another process is computing it' if state == 'running' else 'done by another process'}; skipped")
            continue  # another runner took it since this one started
        t0, damaged = time.time(), set(study.results.rglob("*.damaged"))
        try:
            execute(job, output_path(study.results, job), parameters(args, study, job))
            result = "ok"
            finished += 1
        except Exception as e:  # a failed run is logged and the others go on; its checkpoints are kept
            failed.append(f"{job.notebook} {job.params}: {short(e)}")
            result = "failed"
        for path in sorted(set(study.results.rglob("*.damaged")) - damaged):
            print(f"WARNING: {path.with_suffix('')} was damaged and is set aside as {path.name}; its work was "
                  "computed again", file=sys.stderr)
        trained_epochs += left - study.epochs_left(todo)
        log_timing(study.results, timing_row(job, time.time() - t0, result))
    return finished


def timing_row(job: Job, seconds: float, result: str, where: str = "") -> dict:
    return {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "notebook": job.notebook,
            "params": job.params, "seconds": round(seconds, 1), "status": result, "where": where}


# ----------------------------------------------------------------------------- in parallel, on Ray
# The command's machine (the driver) decides what runs, trains each shared phase 0 once as a task of its own before
# the arms that need it, and is the only writer of results/: a worker on another machine runs its notebook in a
# scratch folder and sends back what it wrote. A worker on the driver's own machine writes in place, so an
# interrupted run there resumes from its last phase, as in the sequential runner.

def run_parallel(args, pending: list[Job], study: Study, failed: list[str]) -> int:
    """Up to --workers executions at once on Ray; the summary last, here. Returns how many finished."""
    import ray
    from tqdm.auto import tqdm
    excludes = ["/data", "/results*", "**/*.pt", "**/*.npz", "**/.locks"]  # the code travels, not results
    ray.init(address=args.address, runtime_env={"working_dir": str(H.ROOT), "excludes": excludes},
             include_dashboard=False, log_to_driver=False, configure_logging=False,
             **({} if args.address else {"num_cpus": args.workers * (args.threads_per_run or 1)}))
    try:
        return schedule(ray, args, pending, study, failed, tqdm)
    except ValueError as e:
        failed.append(str(e))
        return 0
    finally:
        ray.shutdown()


def schedule(ray, args, pending: list[Job], study: Study, failed: list[str], tqdm) -> int:
    env = {k: os.environ[k] for k in ("CIFAR10_DATA", "LTH_BATCH", "OMP_NUM_THREADS") if k in os.environ}
    resources = {"num_cpus": args.threads_per_run or 1, "num_gpus": args.gpus_per_run}
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if not any(n.get("CPU", 0) >= resources["num_cpus"] and n.get("GPU", 0) >= resources["num_gpus"] for n in nodes):
        raise ValueError(f"no node of the Ray cluster has {resources['num_cpus']} CPUs and {resources['num_gpus']} "
                         f"GPU for one run (nodes: {nodes}): lower --threads-per-run or --gpus-per-run, or add nodes.")
    run_task = ray.remote(max_retries=0)(remote_execute).options(**resources)
    phase0_task = ray.remote(max_retries=0)(remote_phase0).options(**resources)
    here = ray.get_runtime_context().get_node_id()
    runs = [j for j in pending if j.spec]
    groups = {}  # phase 0 not on disk yet -> the runs that wait for it
    for job in runs:
        if job.spec.rounds and not H.phase0_path(study.results, job.spec, study.hp, study.data.source).exists():
            groups.setdefault(job.spec.phase0_name, []).append(job)
    ready = [j for j in runs if not any(j in g for g in groups.values())]
    queue = [phase0_task.remote(g[0].spec, study.hp, args.quick, str(args.device), env) for g in groups.values()]
    waiting = dict(zip(queue, groups))
    in_flight, finished = {}, 0
    bar = tqdm(total=study.epochs_left([j.spec for j in runs]), unit="epoch", desc="study", smoothing=0)
    print(f"Ray: {len(runs)} runs, {len(groups)} shared phase 0 first; up to {args.workers} at once; "
          f"precision {study.hp.precision}", flush=True)
    while ready or in_flight or waiting:
        while ready and len(in_flight) + len(waiting) < args.workers:
            job = ready.pop(0)
            inputs = {str(p.relative_to(study.results)): p.read_bytes() for p in inputs_of(study, job.spec)}
            ref = run_task.remote(job, parameters(args, study, job), inputs, here, str(study.results.resolve()),
                                  relative(output_path(study.results, job)), env)
            in_flight[ref] = (job, time.time())
        done, _ = ray.wait([*in_flight, *waiting], num_returns=1)
        ref = done[0]
        if ref in waiting:
            name = waiting.pop(ref)
            try:
                for rel, data in ray.get(ref).items():  # its phase 0, and θ0 if it is the first of its seed
                    H.atomic_write(study.results / rel, lambda f, data=data: f.write_bytes(data))
                bar.update(groups[name][0].spec.epochs)
                ready += groups.pop(name)
            except Exception as e:
                failed += [f"{j.notebook} {j.params}: phase 0 failed: {short(e)}" for j in groups.pop(name)]
            continue
        job, t0 = in_flight.pop(ref)
        try:
            out = ray.get(ref)
            for rel, data in out["files"].items():  # the driver is the only writer of results/
                H.atomic_write(study.results / rel, lambda f, data=data: f.write_bytes(data))
            result, where = "ok", out["where"]
            finished += 1
        except Exception as e:
            failed.append(f"{job.notebook} {job.params}: {short(e)}")
            result, where = "failed", "?"
        bar.update(job.spec.epochs * job.spec.rounds if job.spec.rounds else job.spec.epochs)
        tqdm.write(f"{result:6s} {job.notebook} {job.params} on {where} in {time.time() - t0:.0f} s")
        log_timing(study.results, timing_row(job, time.time() - t0, result, where))
    bar.close()
    for job in [j for j in pending if j.spec is None]:  # the summary reads everything: last, here
        t0 = time.time()
        execute(job, output_path(study.results, job), parameters(args, study, job))
        log_timing(study.results, timing_row(job, time.time() - t0, "ok", "driver"))
        finished += 1
    return finished


def inputs_of(study: Study, spec: H.RunSpec) -> list[Path]:
    """What a run on another machine needs from results/: its phase 0, its checkpoint if interrupted, the records
    its notebook's figures read."""
    paths = [H.phase0_path(study.results, spec, study.hp, study.data.source), H.theta0_path(study.results, spec),
             H.checkpoint_path(study.results, spec), study.results / H.MANIFEST]
    return [p for p in paths if p.exists()] + sorted(study.results.glob("runs/*/*.json"))


def short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


def remote_phase0(spec: H.RunSpec, hp: H.HParams, quick: bool, device: str, env: dict) -> dict[str, bytes]:
    """A Ray task: the dense phase 0 that a group of runs shares, trained once; returns its files' bytes."""
    os.environ.update(env)
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", torch.get_num_threads())))
    scratch = Path(tempfile.mkdtemp(prefix="lth-phase0-"))
    dev = H.resolve_device(device)
    data = H.load_data(None, quick)
    H.dense_phase(spec, data.to(dev), dev, scratch, hp, False, lambda *a: None)
    paths = [H.phase0_path(scratch, spec, hp, data.source), H.theta0_path(scratch, spec)]
    return {str(p.relative_to(scratch)): p.read_bytes() for p in paths}


def remote_execute(job: Job, params: dict, inputs: dict[str, bytes], driver_node: str, results: str,
                   recorded_as: str, env: dict) -> dict:
    """A Ray task: one notebook execution. On the driver's machine it writes in place (and so resumes in place);
    elsewhere it runs in a scratch folder seeded with `inputs` and returns every file it wrote there."""
    import ray
    os.environ.update(env)
    node = ray.get_runtime_context().get_node_id()
    where = f"{platform.node()} ({'driver' if node == driver_node else 'node ' + node[:8]}, pid {os.getpid()})"
    out = output_path(Path(results), job)
    if node == driver_node:
        execute(job, out, {**params, "results_dir": results}, recorded_as)
        return {"where": where, "files": {}}
    scratch = Path(tempfile.mkdtemp(prefix="lth-run-"))
    for rel, data in inputs.items():
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(data)
    before = {p: p.stat().st_mtime_ns for p in scratch.rglob("*") if p.is_file()}
    execute(job, output_path(scratch, job), {**params, "results_dir": str(scratch)}, recorded_as)
    wrote = [p for p in scratch.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns
             and ".locks" not in p.parts and "checkpoints" not in p.parts[len(scratch.parts):][:1]]
    return {"where": where, "files": {str(p.relative_to(scratch)): p.read_bytes() for p in wrote}}


def problem(study: Study, spec: H.RunSpec, state: str) -> str:
    """Why a run is not executed: what differs from the saved record, or which file is damaged, and the fix."""
    path = H.record_path(study.results, spec)
    try:
        if path.exists():
            H.check_identity(path, H.record_identity(H.read_record(path)), study.identity(spec))
        else:
            path = H.checkpoint_path(study.results, spec)
            saved = torch.load(path, map_location="cpu", mmap=True)
            H.check_identity(path, H.checkpoint_identity(saved, path), study.identity(spec))
    except (H.ResultMismatch, H.DamagedFile) as e:
        return str(e).replace("force=True (run_all.py --force)", "--force")
    return state


if __name__ == "__main__":
    sys.exit(main())
