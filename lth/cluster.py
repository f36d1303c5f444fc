"""The study on Ray (`run_all.py --workers N`, `--address`): the command's machine (the driver) decides what runs,
trains each shared phase 0 once as a task of its own before the arms that need it, and is the only writer of the
results folder: a worker on another machine runs its notebook in a scratch folder and sends back what it wrote. A
worker on the driver's own machine writes in place, so an interrupted run there resumes from its last phase."""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import torch

import helpers as H
from lth import precision, runs, store
from lth.batch import Job, Study, execute, log_timing, output_path, parameters, relative, short, timing_row
from lth.data import load_data
from lth.spec import RunSpec


def run_parallel(args, pending: list[Job], study: Study, failed: list[str], done: list[Job]) -> None:
    """Up to --workers executions at once on Ray; the summary last, here. Each that finishes joins `done`."""
    import ray
    from tqdm.auto import tqdm
    excludes = ["/data", "/results*", "**/*.pt", "**/*.npz", "**/.locks"]  # the code travels, not results
    try:
        ray.init(address=args.address, runtime_env={"working_dir": str(H.ROOT), "excludes": excludes},
                 include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({} if args.address else {"num_cpus": args.workers * (args.threads_per_run or 1)}))
    except Exception as e:  # Ray's own traceback names its internals, not the fix
        where = f"the Ray cluster at {args.address}" if args.address else "a local Ray node"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        check = ", or check --address" if args.address else ""
        failed.append(f"{where} did not start ({type(e).__name__}: {first}). Nothing ran. Run without --workers "
                      f"(one run at a time, no Ray), or clear a stale node with `ray stop`{check}, then run again.")
        return
    try:
        schedule(ray, args, pending, study, failed, done, tqdm)
    except ValueError as e:
        failed.append(str(e))
    finally:
        ray.shutdown()


def schedule(ray, args, pending: list[Job], study: Study, failed: list[str], done: list[Job], tqdm) -> None:
    env = {k: os.environ[k] for k in ("CIFAR10_DATA", "LTH_BATCH", "OMP_NUM_THREADS") if k in os.environ}
    resources = {"num_cpus": args.threads_per_run or 1, "num_gpus": args.gpus_per_run}
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    if not any(n.get("CPU", 0) >= resources["num_cpus"] and n.get("GPU", 0) >= resources["num_gpus"] for n in nodes):
        raise ValueError(f"no node of the Ray cluster has {resources['num_cpus']} CPUs and {resources['num_gpus']} "
                         f"GPU for one run (nodes: {nodes}): lower --threads-per-run or --gpus-per-run, or add nodes.")
    run_task = ray.remote(max_retries=0)(remote_execute).options(**resources)
    phase0_task = ray.remote(max_retries=0)(remote_phase0).options(**resources)
    here = ray.get_runtime_context().get_node_id()
    run_jobs = [j for j in pending if j.spec]
    groups = {}  # phase 0 not on disk yet -> the run_jobs that wait for it
    for job in run_jobs:
        if job.spec.rounds and not store.phase0_ready(study.results, job.spec, study.hp, study.data.source):
            groups.setdefault(job.spec.phase0_name, []).append(job)
    ready = [j for j in run_jobs if not any(j in g for g in groups.values())]
    queue = [phase0_task.remote(g[0].spec, study.hp, args.quick, str(args.device), env, files(study, g[0].spec))
             for g in groups.values()]
    waiting = dict(zip(queue, groups))
    in_flight = {}
    bar = tqdm(total=study.epochs_left([j.spec for j in run_jobs]), unit="epoch", desc="study", smoothing=0)
    print(f"Ray: {len(run_jobs)} run_jobs, {len(groups)} shared phase 0 first; up to {args.workers} at once; "
          f"precision {study.hp.precision}", flush=True)
    while ready or in_flight or waiting:
        unfinished = {j.spec.name for j in [*ready, *(j for j, _ in in_flight.values()), *sum(groups.values(), [])]}
        while len(in_flight) + len(waiting) < args.workers:
            # a ticket-mask run starts once the lottery run whose masks it trains has finished
            job = next((j for j in ready if j.spec.strategy != "ticket" or j.spec.ticket_source.name not in
                        unfinished), None)
            if job is None:
                break
            ready.remove(job)
            inputs = files(study, job.spec, inputs_of(study, job.spec))
            ref = run_task.remote(job, parameters(study, job, args.device, args.force), inputs, here,
                                  str(study.results.resolve()),
                                  relative(output_path(study.results, job)), env)
            in_flight[ref] = (job, time.time())
        returned, _ = ray.wait([*in_flight, *waiting], num_returns=1)
        ref = returned[0]
        if ref in waiting:
            name = waiting.pop(ref)
            try:
                for rel, data in ray.get(ref).items():  # its phase 0, and θ0 if it is the first of its seed
                    store.atomic_write(study.results / rel, lambda f, data=data: f.write_bytes(data))
                bar.update(groups[name][0].spec.epochs)
                ready += groups.pop(name)
            except Exception as e:
                failed += [f"{j.notebook} {j.params}: phase 0 failed: {short(e)}" for j in groups.pop(name)]
            continue
        job, t0 = in_flight.pop(ref)
        try:
            out = ray.get(ref)
            for rel, data in out["files"].items():  # the driver is the only writer of results/
                store.atomic_write(study.results / rel, lambda f, data=data: f.write_bytes(data))
            result, where = "ok", out["where"]
            done.append(job)
        except Exception as e:
            failed.append(f"{job.notebook} {job.params}: {short(e)}")
            result, where = "failed", "?"
        bar.update(job.spec.epochs * job.spec.rounds if job.spec.rounds else job.spec.epochs)
        tqdm.write(f"{result:6s} {job.notebook} {job.params} on {where} in {time.time() - t0:.0f} s")
        log_timing(study.results, timing_row(job, time.time() - t0, result, where))
    bar.close()
    for job in [j for j in pending if j.spec is None]:  # the summary reads everything: last, here
        t0 = time.time()
        execute(job, output_path(study.results, job), parameters(study, job, args.device, args.force))
        log_timing(study.results, timing_row(job, time.time() - t0, "ok", "driver"))
        done.append(job)


def phase0_files(results: Path, spec: RunSpec, hp: H.HParams, source: dict) -> list[Path]:
    return [store.phase0_path(results, spec, hp, source), store.rewind_point_path(results, spec, hp, source),
            store.theta0_path(results, spec)]


def files(study: Study, spec: RunSpec, paths: list[Path] | None = None) -> dict[str, bytes]:
    """The bytes of the files of results/ a task needs (by default its phase 0 and θ0), by relative path."""
    paths = phase0_files(study.results, spec, study.hp, study.data.source) if paths is None else paths
    return {str(p.relative_to(study.results)): p.read_bytes() for p in paths if p.exists()}


def inputs_of(study: Study, spec: RunSpec) -> list[Path]:
    """What a run on another machine needs from results/: its phase 0 and rewind point, its checkpoint if
    interrupted, the masks it trains (a ticket-mask run), the records its notebook's figures read."""
    paths = [*phase0_files(study.results, spec, study.hp, study.data.source),
             store.checkpoint_path(study.results, spec, study.hp), study.results / store.MANIFEST]
    if spec.strategy == "ticket":  # only a ticket-mask run has a lottery run to name
        paths.append(store.masks_path(study.results, spec.ticket_source, study.hp))
    return [p for p in paths if p.exists()] + sorted(study.results.glob("runs/*/*.json"))


def remote_phase0(spec: RunSpec, hp: H.HParams, quick: bool, device: str, env: dict,
                  inputs: dict[str, bytes]) -> dict[str, bytes]:
    """A Ray task: the dense phase 0 that a group of runs shares, trained once (or replayed from `inputs` for a
    rewind point); returns the bytes of the files it wrote."""
    os.environ.update(env)
    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", torch.get_num_threads())))
    scratch = Path(tempfile.mkdtemp(prefix="lth-phase0-"))
    for rel, data in inputs.items():
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(data)
    dev = precision.resolve_device(device)
    data = load_data(None, quick)
    with precision.kernels(dev, hp.precision):
        runs.load_or_train_phase0(spec, data.to(dev), dev, scratch, hp, False, lambda *a: None)
    wrote = [p for p in phase0_files(scratch, spec, hp, data.source) if p.exists()]
    return {rel: p.read_bytes() for p in wrote if (rel := str(p.relative_to(scratch))) not in inputs}


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
