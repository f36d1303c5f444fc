"""The study as a batch of notebook executions: the plan (from the table of arms), each run's status in a results
folder, and one execution by papermill, written into place only when it finished."""
from __future__ import annotations

import csv
import functools
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import helpers as H
from lth import runs, store
from lth.identity import (
    DamagedFile,
    ResultMismatch,
    check_identity,
    checkpoint_identity,
    non_default,
    record_identity,
    run_identity,
    run_name,
)
from lth.spec import ARMS, RunSpec, as_bool

NOTEBOOKS = H.ROOT / "notebooks"
def plan() -> dict[str, tuple[str | None, tuple[dict, ...]]]:
    """Notebook -> (the arm it runs, its parameter sets), in notebook order, from `ARMS`; then 10 (a model of your own,
    whose runs the summary states apart), the summary and the
    explorer last."""
    arms = sorted(ARMS.items(), key=lambda item: item[1].notebook)
    return {**{arm.notebook: (name, arm.plan) for name, arm in arms}, "10_your_model": (None, (dict(),)),
            "06_summary": (None, (dict(),)), "07_explore": (None, (dict(),))}


@dataclass(frozen=True)
class Job:
    """One notebook execution: the notebook, its parameters, and the run it makes (None for the summary)."""
    notebook: str
    params: dict
    spec: RunSpec | None
    quick: bool = False


SETTABLE = {"model": str, "batchnorm": lambda v: as_bool("batchnorm", v), "dropout": float}  # every run notebook's


def settings(pairs: list[str]) -> dict:
    """`--set KEY=VALUE` pairs as notebook parameters that override the plan's, e.g. model=conv2."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SETTABLE:
            raise ValueError(f"--set {pair}: write KEY=VALUE with KEY one of {', '.join(SETTABLE)} (e.g. "
                             "--set model=conv2); the other settings are the plan's, and --only selects among them.")
        try:
            out[key] = SETTABLE[key](value)
        except ValueError as e:
            raise ValueError(f"--set {pair}: {e}") from None
    return out


def jobs(seeds: int = 1, quick: bool = False, only: list[tuple[str, dict]] | None = None,
         overrides: dict | None = None) -> list[Job]:
    """Every execution in order, for seeds 0..seeds-1, with `overrides` (--set) on every run, or those that `only`
    keeps ((notebook, {param: value})); every spec is validated before anything trains. A filter that matches no
    parameter set is an error that lists the values there are."""
    out, used, seen = [], set(), set()
    for notebook, (experiment, param_sets) in plan().items():
        for params in param_sets:
            for seed in range(seeds) if experiment else [None]:
                run_params = {**params, **(overrides or {}), "seed": seed} if experiment else {}
                spec = RunSpec.of(experiment, quick=quick, **run_params) if experiment else None
                hits = {i for i, (nb, where) in enumerate(only or []) if nb == notebook and matches(spec, where)}
                used |= hits
                if (not only or hits) and (spec is None or spec not in seen):  # an override can make two sets one
                    out.append(Job(notebook, run_params, spec, quick))
                    seen.add(spec)
    for nb, where in [f for i, f in enumerate(only or []) if i not in used]:
        experiment, param_sets = plan()[nb]
        specs = [RunSpec.of(experiment, quick=quick, **{**p, **(overrides or {})}, seed=s) for p in param_sets
                 for s in range(seeds)] if experiment else []
        values = "; ".join(f"{k}: {', '.join(sorted({str(getattr(s, k, None)) for s in specs}))}" for k in where)
        raise ValueError(f"--only {nb}:{','.join(f'{k}={v}' for k, v in where.items())} matches no run of the plan"
                         + (f" (with --seeds {seeds}, {nb} has {values})" if specs else
                            f" ({nb} takes no parameters)"))
    return out


def matches(spec: RunSpec | None, where: dict[str, str]) -> bool:
    """Whether a run has every PARAM=VALUE of an --only filter (values compared as written)."""
    return all(str(getattr(spec, k, None)) == v for k, v in where.items())


def output_path(results: Path, job: Job) -> Path:
    """The executed notebook: its name carries every parameter that differs from the notebook's defaults (the
    plan's parameter set, what `quick` changes, and `quick` itself), so no two executions share a file."""
    params = {k: v for k, v in job.params.items() if k != "seed"}
    if job.spec is not None:
        planned = RunSpec.of(job.spec.experiment, **job.params)
        params |= {k: v for k, v in non_default(job.spec).items() if getattr(planned, k) != v}
    if job.quick:
        params["quick"] = True
    if "seed" in job.params:
        params["seed"] = job.params["seed"]
    return results / "notebooks" / f"{job.notebook}{''.join(f'__{k}={v}' for k, v in params.items())}.ipynb"


class Study:
    """The results folder seen from the runner: what each run's status is, for the data and precision asked."""

    def __init__(self, results: Path, data: H.Data, hp: H.HParams):
        self.results, self.data, self.hp = results, data, hp

    def identity(self, spec: RunSpec) -> dict:
        return run_identity(spec, self.hp, self.data.source)

    def as_run(self, spec: RunSpec) -> RunSpec:
        return runs.as_run(self.results, spec, self.hp, self.data.source)

    def status(self, spec: RunSpec) -> str:
        """done, differs (made with other settings), damaged, running (another process), partial or to do. Reads
        only: it works on a read-only folder."""
        spec = self.as_run(spec)
        record = store.record_path(self.results, spec, self.hp)
        if record.exists():
            try:
                same = record_identity(store.read_record(record)) == self.identity(spec)
            except DamagedFile:
                return "damaged"
            return "done" if same else "differs"
        if is_locked(self.results, run_name(spec, self.hp)):
            return "running"
        ckpt = store.checkpoint_path(self.results, spec, self.hp)
        if not ckpt.exists():
            return "to do"
        try:
            saved = store.load_pt(ckpt, mmap=True)
        except Exception:
            return "partial"  # a damaged checkpoint is set aside and the run restarts after its phase 0
        try:
            same = checkpoint_identity(saved, ckpt) == self.identity(spec)
        except DamagedFile:
            return "partial"
        return "partial" if same else "differs"

    def epochs_left(self, todo: list[RunSpec]) -> int:
        """Epochs still to train for the runs that will train (to do or partial), counting each shared phase 0 once."""
        todo = [s for s in dict.fromkeys(map(self.as_run, todo)) if self.status(s) in ("to do", "partial")]
        phase0 = {s.phase0_name: s.epochs for s in todo if not store.phase0_ready(self.results, s, self.hp,
                                                                                  self.data.source)}
        return sum(phase0.values()) + sum((s.rounds - self.rounds_done(s)) * s.epochs for s in todo)

    def rounds_done(self, spec: RunSpec) -> int:
        """Rounds an interrupted run has finished (its checkpoint), 0 for a run not started or a damaged checkpoint."""
        try:
            saved = store.load_pt(store.checkpoint_path(self.results, spec, self.hp), mmap=True)
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
    import nbformat  # with jsonschema, a second to import: only where a notebook is read
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:
        return False
    meta = nb.metadata.get("papermill", {})
    return bool(meta.get("end_time")) and not meta.get("exception") and all(
        c.metadata.get("papermill", {}).get("status") == "completed" for c in nb.cells if c.cell_type == "code")


def local_kernel(folder: str) -> dict:
    """The kernel on Unix sockets in `folder` rather than TCP on 127.0.0.1: nothing listens on the network, and
    ipykernel has no unencrypted TCP to warn about once a notebook. Windows has no Unix sockets: TCP there."""
    if os.name == "nt":
        return {}
    from jupyter_client.manager import AsyncKernelManager

    class SocketFileKernel(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport, self.ip = "ipc", os.path.join(folder, "kernel")

    return {"kernel_manager_class": SocketFileKernel}


def execute(job: Job, out: Path, parameters: dict, recorded_as: str | None = None) -> None:
    """Execute into a temporary file outside the results (a killed runner leaves nothing there) and move it to
    `out` only when it finished: `out` is never half a notebook.

    A failed execution is kept as <out>.failed.ipynb to read its error; the previous `out`, if any, stays."""
    import nbformat
    import papermill as pm
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{out.stem}.", suffix=".running.ipynb")
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="lth-kernel-") as sockets:
            pm.execute_notebook(NOTEBOOKS / f"{job.notebook}.ipynb", tmp, parameters=parameters, cwd=NOTEBOOKS,
                                progress_bar=False, log_output=True, **local_kernel(sockets),
                                shutdown_kernel="immediate")  # Ctrl-C: killed, not torn down mid-reply (tracebacks)
    except BaseException:
        if Path(tmp).exists() and Path(tmp).stat().st_size:
            store.atomic_write(out.with_suffix(".failed.ipynb"), lambda f: f.write_bytes(Path(tmp).read_bytes()))
        Path(tmp).unlink(missing_ok=True)
        raise
    nb = nbformat.read(tmp, as_version=4)
    meta = nb.metadata.get("papermill", {})
    meta["input_path"] = f"notebooks/{job.notebook}.ipynb"  # no machine paths in what is committed
    meta["output_path"] = recorded_as or relative(out)
    nb.metadata.pop("widgets", None)  # widget state is not saved in batch runs; GitHub refuses to render without it
    nbformat.validate(nb)
    store.atomic_write(out, lambda f: nbformat.write(nb, str(f)))
    Path(tmp).unlink()
    out.with_suffix(".failed.ipynb").unlink(missing_ok=True)


def relative(path: Path) -> str:
    """A path inside the repository as seen from its root; outside it, as given."""
    path = Path(path).resolve()
    return str(path.relative_to(H.ROOT)) if path.is_relative_to(H.ROOT) else str(path)


def log_timing(results: Path, row: dict) -> None:
    """One line per execution, written whole (a killed runner never leaves half a line) under a lock (two runners
    never lose each other's); a full or read-only disk costs the line, never the batch or its real error."""
    path = results / "timing.csv"
    try:
        with store.run_lock(results, "timing.csv"):
            before = path.read_text() if path.exists() else ""
            line = io.StringIO()
            w = csv.DictWriter(line, fieldnames=list(row), lineterminator="\n")
            if not before:
                w.writeheader()
            w.writerow(row)
            store.atomic_write(path, lambda tmp: tmp.write_text(before + line.getvalue()))
    except OSError as e:
        print(f"WARNING: could not write {path} ({e}); the runs themselves are unaffected.", file=sys.stderr)


def timing_row(job: Job, seconds: float, result: str, where: str = "") -> dict:
    return {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "notebook": job.notebook,
            "params": job.params, "seconds": round(seconds, 1), "status": result, "where": where}


def short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


def problem(study: Study, spec: RunSpec, state: str) -> str:
    """Why a run is not executed: what differs from the saved record, or which file is damaged, and the fix."""
    path = store.record_path(study.results, spec, study.hp)
    try:
        if path.exists():
            check_identity(path, record_identity(store.read_record(path)), study.identity(spec))
        else:
            path = store.checkpoint_path(study.results, spec, study.hp)
            saved = store.load_pt(path, mmap=True)
            check_identity(path, checkpoint_identity(saved, path), study.identity(spec))
    except (ResultMismatch, DamagedFile) as e:
        return str(e).replace("force=True (run_all.py --force)", "--force")
    return state


def parameters(study: Study, job: Job, device: str, force: bool) -> dict:
    """The notebook's parameters, writing into the study's results folder as the repository sees it."""
    where = relative(study.results)
    every = {"device": str(device), "precision": study.hp.precision, "quick": job.quick, "results_dir": where,
             "progress": False, "force": force}
    if job.spec is None:  # the summary, the explorer, your model's notebook: what each declares
        return {k: v for k, v in every.items() if k in declared_parameters(job.notebook)}
    return {**every, **job.params}


@functools.cache
def declared_parameters(notebook: str) -> frozenset[str]:
    """The names a notebook's `parameters` cell assigns."""
    import ast
    import json
    cells = json.loads((NOTEBOOKS / f"{notebook}.ipynb").read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    return frozenset(t.id for node in ast.parse("".join(cell["source"])).body for t in node.targets)
