"""A run, resumable: `helpers.lottery_ticket` with its phase 0 shared between arms, a checkpoint after every phase,
and a record, masks and identity saved when it finishes. Also the first cell every run notebook calls."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

import helpers as H
from lth import precision, store
from lth.data import describe_data, load_data
from lth.identity import (
    check_identity,
    checkpoint_identity,
    phase0_file_identity,
    phase0_identity,
    record_identity,
    run_identity,
    run_name,
)
from lth.spec import RunSpec, as_bool, rewind_epochs


def resolve_hparams(hp: H.HParams, dev: torch.device, results_dir: Path | str | None = None) -> H.HParams:
    """`hp` with "auto" precision resolved: to the precision of what `results_dir` holds, finished or interrupted,
    else to what suits `dev`. Explicit precisions are kept."""
    if hp.precision != "auto" or not results_dir:
        return precision.resolve(hp, dev)
    return precision.resolve(hp, dev, saved_precisions(results_dir), str(results_dir))


def saved_precisions(results_dir: Path | str) -> set[str]:
    """The precisions of what a results folder holds: its records, and the checkpoints of its unfinished runs."""
    used = {H.HParams(**r["hparams"]).precision for r in store.load_records(results_dir)}
    for path in [*Path(results_dir).glob("checkpoints/*.pt"), *Path(results_dir).glob("checkpoints/phase0/*.pt")]:
        try:  # its identity is what counts; loading checks the file's checksum too
            saved = store.load_pt(path, mmap=True)
            used.add(H.HParams(**saved["identity"]["hparams"]).precision)
        except Exception:
            pass  # a damaged checkpoint is named, and set aside, when its run resumes
    return used


def run_experiment(spec: RunSpec, data: H.Data, device: str | torch.device | None = None,
                   results_dir: Path | str | None = None, hp: H.HParams = H.HParams(), progress: bool = True,
                   force: bool = False) -> dict:
    """Run (or resume, or just load) one run; returns its record, also saved as <results>/runs/<experiment>/<name>.json.

    A checkpoint after every phase means an interruption loses at most the phase in progress. A saved record,
    checkpoint, phase 0 or mask file is reused only when made with the same spec, hparams and data (else
    ResultMismatch); `force` recomputes the run, and writes nothing beside its old record until the new run is complete.
    """
    dev = precision.resolve_device(device)
    results_dir = Path(results_dir) if results_dir else store.results_root(source=data.source)
    progress, force = as_bool("progress", progress), as_bool("force", force)
    hp = resolve_hparams(hp, dev, results_dir)
    say = print if not progress else tqdm.write
    store.claim_folder(results_dir, data.source)
    if spec.phase0_of_late_rewind:  # late rewinding's rewind point first: it says which phase 0 this run prunes by
        with precision.kernels(dev, hp.precision):
            load_or_train_phase0(spec.late_rewind_source, data.to(dev), dev, results_dir, hp, progress, say)
        plain = as_run(results_dir, spec, hp, data.source)
        if plain != spec:
            say(f"{run_name(spec, hp)}: late rewinding's phase 0 is the shared one here, so this run is "
                f"{run_name(plain, hp)}")
            return run_experiment(plain, data, device, results_dir, hp, progress, force)
    asked, name = run_identity(spec, hp, data.source), run_name(spec, hp)
    out, ckpt = store.record_path(results_dir, spec, hp), store.checkpoint_path(results_dir, spec, hp)
    with store.holding(store.run_lock(results_dir, name), say, name):
        saved = store.read_pt(ckpt, say, "the run restarts after its phase 0") if ckpt.exists() else None
        if out.exists() and not force:
            record = store.read_record(out)
            check_identity(out, record_identity(record), asked)
            # a checkpoint of this very run (stopped between its record and its masks) finishes it; any other is a
            # forced run in progress, and the record beside it stays the old one until that run completes
            if saved is not None and checkpoint_identity(saved, ckpt) == asked \
                    and saved["history"] == record["history"]:
                finish_run(results_dir, spec, hp, saved["round_masks"], asked)
            return record
        if saved is not None and force and checkpoint_identity(saved, ckpt) != asked:
            saved = None  # forced: a checkpoint of other settings is overwritten by the new run's first round
        if saved is not None:
            check_identity(ckpt, checkpoint_identity(saved, ckpt), asked)
        done = saved["history"][-1]["round"] if saved else 0
        left = spec.epochs * (spec.rounds - done + (not store.phase0_ready(results_dir, spec, hp, data.source)))
        device_name = precision.describe_device(dev, hp.precision)
        say(f"{name}: {left} epochs to train on {device_name}, precision {hp.precision}")
        eta = running_time(first_epoch_eta(left, say))
        round_masks = dict(saved["round_masks"]) if saved else {}

        def on_round(r: int, model: torch.nn.Module, masks: H.Masks, history: list[dict]) -> None:
            round_masks[r] = store.pack_masks(masks)
            for e in history:
                if e["round"] == r:
                    e["device"] = device_name
            store.save_atomic({"identity": asked, "state": store.to_cpu(model.state_dict()),
                               "masks": store.to_cpu(masks), "history": history, "round_masks": round_masks}, ckpt)
            say(f"{name}: round {r}/{spec.rounds} at sparsity {history[-1]['sparsity']:.3f}: "
                f"val_acc {history[-1]['val_acc']:.4f}")

        ticket = ticket_masks(results_dir, spec, hp, data.source) if spec.strategy == "ticket" else None
        with precision.kernels(dev, hp.precision):
            phase0 = load_or_train_phase0(spec, data.to(dev), dev, results_dir, hp, progress, say, eta, device_name)
            if saved is not None:
                say(f"{name}: resumed after round {done}")
            history, masks = H.lottery_ticket(data, **spec.procedure, hp=hp, device=dev, ticket=ticket,
                                              phase0=phase0, resume=saved, on_round=on_round, on_epoch=eta,
                                              progress=progress)
        devices = dict.fromkeys(e["device"] for e in history if "device" in e)  # every machine that computed it
        record = {"experiment": spec.experiment, "name": name, "params": asdict(spec), "hparams": asdict(hp),
                  "history": history, "final_val_acc": history[-1]["val_acc"],
                  "final_sparsity": H.sparsity_report(masks)["overall"],
                  "seconds": sum(e["seconds"] for e in history), "device": "; ".join(devices),
                  "versions": precision.versions(), "data": data.source, "network": asked["network"]}
        store.write_json(out, record)  # first: until the run is complete, nothing new lies beside an old record
        finish_run(results_dir, spec, hp, round_masks, asked)
    return record


def own_phase0(results_dir: Path | str, spec: RunSpec, hp: H.HParams, source: dict) -> bool | None:
    """Whether the phase 0 a `phase0_of_late_rewind` run names is late rewinding's own (a replay that left the saved
    phase 0's path, kept with the rewind point), not the shared one; None while that is not known yet."""
    late = spec.late_rewind_source
    point = store.rewind_point_path(results_dir, late, hp, source)
    if point.exists():
        try:
            return "phase0" in store.load_pt(point, mmap=True)
        except Exception:
            return None  # damaged: named, and set aside, when a run reads it
    return False if not store.phase0_path(results_dir, late, hp, source).exists() else None


def as_run(results_dir: Path | str, spec: RunSpec, hp: H.HParams, source: dict) -> RunSpec:
    """The run `spec` is: one asked to prune by late rewinding's phase 0 is the plain run wherever that phase 0 is the
    shared one (a phase 0 trained here keeps its rewind points, so late rewinding never replays it)."""
    if spec.phase0_of_late_rewind and own_phase0(results_dir, spec, hp, source) is False:
        return replace(spec, phase0_of_late_rewind=0)
    return spec


def finish_run(results_dir: Path, spec: RunSpec, hp: H.HParams, round_masks: dict, identity: dict) -> None:
    """After the record: the run's masks, then its checkpoint goes."""
    if round_masks:
        store.save_masks(store.masks_path(results_dir, spec, hp), round_masks, identity)
    store.checkpoint_path(results_dir, spec, hp).unlink(missing_ok=True)


def ticket_masks(results_dir: Path, spec: RunSpec, hp: H.HParams, source: dict) -> dict[int, H.Masks]:
    """The masks, round by round, of the finished lottery run that a strategy='ticket' run trains afresh."""
    lottery = spec.ticket_source
    path = store.record_path(results_dir, lottery, hp)
    if not path.exists():
        raise FileNotFoundError(f"{run_name(spec, hp)} trains the masks of the lottery run {path.stem}, which is not "
                                f"finished in {results_dir}: run it first (notebook 02 with sparsity="
                                f"{lottery.sparsity}, rounds={lottery.rounds}, epochs={lottery.epochs}, seed="
                                f"{lottery.seed}; run_all.py runs 02 before 08).")
    record = store.read_record(path)
    check_identity(path, record_identity(record), run_identity(lottery, hp, source))
    return store.load_masks(results_dir, record)


def load_or_train_phase0(spec: RunSpec, data: H.Data, dev: torch.device, results_dir: Path, hp: H.HParams,
                         progress: bool, say: Callable, on_epoch: Callable | None = None,
                         device_name: str = "") -> tuple[dict, dict, list[dict]]:
    """The reset point (θ0, or the weights after `spec.rewind_epoch` epochs), the weights after phase 0 and its
    history: loaded when another arm already trained it. A phase 0 is named by its identity, so a run with other
    settings trains one of its own and never replaces a shared one. A rewind point not saved yet is taken by
    replaying the saved phase 0; a replay that leaves its path (phase 0 made on another machine) is kept whole beside
    the rewind point, so the run prunes by the weights its rewind point led to."""
    if spec.phase0_of_late_rewind:  # late rewinding's phase 0, rewound to θ0
        _, state, history = load_or_train_phase0(spec.late_rewind_source, data, dev, results_dir, hp, progress, say,
                                                 on_epoch, device_name)
        return store.load_theta0(results_dir, spec), state, history
    path = store.phase0_path(results_dir, spec, hp, data.source)
    point = store.rewind_point_path(results_dir, spec, hp, data.source)
    asked = phase0_identity(spec, hp, data.source)
    with store.holding(store.run_lock(results_dir, f"phase0-{path.stem}"), say, f"phase 0 {path.stem}"):
        saved = read_phase0_file(path, asked, say, "phase 0 is trained again")
        rewind_point = (read_phase0_file(point, asked, say, "it is taken again")
                        if saved is not None and spec.rewind_epoch else None)
        if saved is not None and (not spec.rewind_epoch or rewind_point is not None):
            say(f"{spec.name}: phase 0 loaded from {path.name}")
            if rewind_point and "phase0" in rewind_point:
                own = rewind_point["phase0"]
                return rewind_point["state"], own["state"], own["history"]
            reset_point = rewind_point["state"] if rewind_point else store.load_theta0(results_dir, spec)
            return reset_point, saved["state"], saved["history"]
        if saved is not None:
            say(f"{spec.name}: replaying phase 0 ({spec.epochs} epochs) to keep its weights after epoch "
                f"{spec.rewind_epoch}")
        trained = []

        def keep(theta0: dict, reset_point: dict, state: dict, history: list[dict], points: dict) -> None:
            on_saved_path = saved is not None and replayed_exactly(path, saved["state"], state, spec.name, say)
            if on_saved_path:
                history = saved["history"]
            for e in history:
                e.setdefault("device", device_name or precision.describe_device(dev, hp.precision))
            if not store.theta0_path(results_dir, spec).exists():
                store.save_atomic({"network": asked["network"], "state": store.to_cpu(theta0)},  # what drew it
                                  store.theta0_path(results_dir, spec))
            if saved is not None:  # a replay for its rewind point: kept whole where it left the saved path
                own = {} if on_saved_path else {"phase0": {"state": store.to_cpu(state), "history": history}}
                store.save_atomic({"identity": asked, "epoch": spec.rewind_epoch,
                                   "state": store.to_cpu(reset_point), **own}, point)
            else:  # trained here: every planned rewind point is kept as it passes, so none is ever replayed
                for epoch, weights in points.items():
                    store.save_atomic({"identity": asked, "epoch": epoch, "state": store.to_cpu(weights)},
                                      store.rewind_point_path(results_dir, replace(spec, rewind_epoch=epoch), hp,
                                                              data.source))
                store.save_atomic({"identity": asked, "state": store.to_cpu(state), "history": history}, path)
            trained.append((reset_point, state, history))
        H.lottery_ticket(data, **{**spec.procedure, "rounds": 0}, hp=hp, device=dev, on_phase0=keep,
                         keep_epochs=rewind_epochs(spec.epochs), on_epoch=on_epoch, progress=progress)
    say(f"{spec.name}: phase 0 ({spec.epochs} epochs dense): val_acc {trained[0][2][-1]['val_acc']:.4f}")
    return trained[0]


def read_phase0_file(path: Path, asked: dict, say: Callable, otherwise: str) -> dict | None:
    """A saved phase 0 (or rewind point) checked against the identity asked; None when there is none, or it is
    unreadable (`otherwise` says what happens then)."""
    saved = store.read_pt(path, say, otherwise) if path.exists() else None
    if saved is not None:
        check_identity(path, phase0_file_identity(saved, path), asked)
    return saved


def replayed_exactly(path: Path, saved: dict, replayed: dict, name: str, say: Callable) -> bool:
    """Whether a replayed phase 0 ended where the saved one did; if not, says by how much and what follows."""
    differ = [k for k in saved if not torch.equal(saved[k], replayed[k].to(saved[k].device))]
    if differ:
        worst = max((saved[k].float() - replayed[k].float().cpu()).abs().max().item() for k in differ)
        say(f"{name}: replaying {path.name} here did not end on its saved weights ({len(differ)} tensors differ, "
            f"by up to {worst:.3g}: another device, thread count or library version). The run prunes by the "
            "replay's own weights, kept beside its rewind point, so mask and rewind point come from one phase 0; "
            f"{path.name} is left as it is.")
    return not differ


class StoppedTime:
    """When this process was stopped (SIGSTOP, Ctrl-Z, a paused machine), which an epoch's wall time would count: a
    daemon thread wakes every TICK s, and a wake-up more than GAP s after the last means the whole process was stopped
    in between (a busy CPU delays a wake-up by milliseconds, not seconds)."""
    TICK, GAP = 0.5, 5.0

    def __init__(self):
        self.stops, self.last, self.lock = [], time.monotonic(), threading.Lock()
        threading.Thread(target=self.watch, daemon=True, name="stopped-time").start()

    def watch(self) -> None:
        while True:
            time.sleep(self.TICK)
            self.between(0, 0)

    def between(self, start: float, end: float) -> float:
        """Seconds stopped between two `time.monotonic()` readings, a stop not woken from yet included."""
        with self.lock:
            now = time.monotonic()
            if now - self.last > self.GAP:
                self.stops.append((self.last + self.TICK, now))
            self.last = now
            return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.stops)


STOPPED = StoppedTime()


def running_time(on_epoch: Callable[[dict], None]) -> Callable[[dict], None]:
    """An `on_epoch` that first takes out of each epoch's `seconds` the time the process was stopped during it, and
    marks the epoch with `stopped_seconds`: a record's seconds count only time the process ran."""
    def on(epoch: dict) -> None:
        end = time.monotonic()
        stopped = STOPPED.between(end - epoch["seconds"], end)
        if stopped > 0:
            epoch["seconds"] -= stopped
            epoch["stopped_seconds"] = stopped
        on_epoch(epoch)
    return on


def first_epoch_eta(epochs: int, say: Callable) -> Callable[[dict], None]:
    """An `on_epoch` that says, once the first epoch is timed, how long all `epochs` should take on this device."""
    said = []

    def on_epoch(epoch: dict) -> None:
        if not said:
            said.append(True)
            say(f"first epoch: {epoch['seconds']:.1f} s, so about {epoch['seconds'] * epochs / 60:.1f} min for the "
                f"{epochs} epochs of this run on this device")
    return on_epoch


def notebook_setup(data_dir: str | None, quick: bool, results_dir: str | None, device: str | None,
                   precision_asked: str) -> tuple[H.Data, Path, H.HParams]:
    """A run notebook's first step: its data, results folder and precision, said before anything trains."""
    from lth.plots import style
    style()
    quick = as_bool("quick", quick)
    dev = precision.resolve_device(device)
    data = load_data(data_dir, quick)
    results = store.results_root(results_dir, quick, data.source)
    store.check_folder(results, data.source)
    hp = resolve_hparams(H.HParams(precision=precision_asked), dev, results)
    print(f"data: {describe_data(data.source)}, {data.source['file']}\nresults: {store.folder_note(results, quick)}\n"
          f"device: {precision.describe_device(dev, hp.precision)}\nprecision: {hp.precision} (asked: "
          f"{precision_asked})")
    return data, results, hp
