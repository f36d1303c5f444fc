"""Mutation testing of the core: which of mutmut's mutants the tests kill, the survivors that are equivalent (no
input can tell them from the original, each with its reason), and the score among the others.

    python scripts/mutation_score.py --run    # mutmut run on the core's functions: hours on 2 cores, resumable
    python scripts/mutation_score.py          # the score, from mutmut's saved results

mutmut keeps its results in mutants/*.meta, on one machine. The score also copies them to scripts/mutmut_results/
(gzip'd), which is committed, and fills mutants/ from there: a fresh clone scores the committed results, and a run
goes on where another machine left it.

The core is what the science rests on: pruning, the resets, the training loop, the lottery-ticket procedure, a
run's identity and the verdicts, and the whole of what runs, stores, plans and loads them (lth.runs, lth.store,
lth.spec, lth.data). The score is stated per module. mutmut's configuration (files, test selection) is in
pyproject.toml."""
import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

CORE = {
    "helpers": ["prunable_weights", "dense_masks", "magnitude_scores", "random_scores", "prune", "keep_top",
                "apply_masks", "sparsity_report", "snapshot", "rewind", "reinit", "init_weight", "round_sparsities",
                "phase_seed", "prune_and_reset", "normalize", "augment", "train", "warmup_then_decay", "evaluate",
                "annotate", "lottery_ticket"],
    "lth.identity": ["non_default", "run_identity", "saved_identity", "record_identity", "phase0_identity",
                     "identity_hash", "check_identity", "differences", "checkpoint_identity", "phase0_file_identity"],
    "lth.verdicts": ["range_verdict", "interval", "paired", "compare_seeds", "against_threshold"],
    **{module: ["*"] for module in ("lth.runs", "lth.store", "lth.spec", "lth.data")},  # every function
}
TOPK_ORDER = "topk's `sorted` orders the indices it returns; the mask they set is the same set either way"
BROADCAST = "a (3, 1, 1) view broadcasts over an NCHW batch exactly as (1, 3, 1, 1) does"
MOVED_AGAIN = "train() moves the model and the data to its device itself, so a move left out before it changes nothing"
ZERO_GRAD = ("zero_grad zeroes the gradients in place instead of freeing them; every parameter gets a gradient each "
             "step, and 0 + g is g, so the step is the same (only memory differs)")
NO_EPOCH0_POINT = "a run without late rewinding has no epoch-0 rewind point file to find"
RANDINT_LOW = "torch.randint(high, size) is torch.randint(0, high, size): the same draws from the same generator"
EQUIVALENT: dict[str, str] = {  # mutant -> why no input can tell it from the original
    "helpers.x_keep_top__mutmut_18": TOPK_ORDER,
    "helpers.x_keep_top__mutmut_19": TOPK_ORDER,
    "helpers.x_normalize__mutmut_8": BROADCAST,
    "helpers.x_normalize__mutmut_27": BROADCAST,
    "helpers.x_lottery_ticket__mutmut_15": MOVED_AGAIN,
    "helpers.x_lottery_ticket__mutmut_35": MOVED_AGAIN,
    "helpers.x_prune_and_reset__mutmut_42": "load_state_dict copies θ0 into the model's own tensors wherever θ0 lies",
    "helpers.x_warmup_then_decay__mutmut_13": "at step == peak both branches of the schedule give exactly 1",
    "helpers.x_train__mutmut_140": ZERO_GRAD,
    "helpers.x_train__mutmut_141": ZERO_GRAD,
    "helpers.x_augment__mutmut_15": RANDINT_LOW,
    "helpers.x_augment__mutmut_32": RANDINT_LOW,
    "helpers.x_init_weight__mutmut_5": "kaiming_uniform_'s default, leaky_relu with slope 0, has relu's gain √2",
    "helpers.x_augment__mutmut_53": "a float32 uniform draw is exactly 0.5 with probability 2^-24: < and <= agree",
    **dict.fromkeys(["lth.spec.xǁRunSpecǁof__mutmut_6", "lth.spec.xǁRunSpecǁof__mutmut_7"],
                    "`experiment` is of()'s first argument: Python refuses it as a keyword, so no params hold it"),
    **dict.fromkeys(["lth.spec.xǁRunSpecǁof__mutmut_30", "lth.spec.xǁRunSpecǁof__mutmut_34"],
                    "build_model refuses an unregistered model before it reads the seed"),
    **dict.fromkeys(["lth.spec.x_arm_label__mutmut_3", "lth.spec.x_arm_label__mutmut_5"],
                    "a rewind_epoch read as None is falsy as 0 is: the same label"),
    **dict.fromkeys([f"lth.data.x_sha256__mutmut_{n}" for n in (13, 15, 16)],
                    "a file's digest is the same whatever the size of the blocks it is read in"),
    **dict.fromkeys([f"lth.runs.x_{f}__mutmut_{n}" for f in ("own_phase0", "saved_precisions") for n in (15, 17, 18)],
                    "mmap changes how a file is read into memory, not what it holds"),
    **dict.fromkeys(["lth.runs.x_run_experiment__mutmut_292", "lth.runs.x_run_experiment__mutmut_301"],
                    "run_experiment's device_name is describe_device(dev, precision), load_or_train_phase0's fallback"),
    "lth.runs.x_load_or_train_phase0__mutmut_73": NO_EPOCH0_POINT,
    **dict.fromkeys(["lth.runs.x_first_epoch_eta__mutmut_3", "lth.runs.x_first_epoch_eta__mutmut_4"],
                    "a list holding any element is true: what it holds is never read"),
    **dict.fromkeys(["lth.runs.xǁStoppedTimeǁwatch__mutmut_7", "lth.runs.xǁStoppedTimeǁwatch__mutmut_8"],
                    "the watcher calls between() for its wake-up alone; the window only shapes a sum it drops"),
    "lth.store.x_load_masks__mutmut_30": "only the prunable weights' shapes are read, which BatchNorm never changes",
    "lth.store.x_load_phase0__mutmut_53": NO_EPOCH0_POINT,
    "lth.store.x_study_folder__mutmut_8": "a named folder is used as it is: the data only chooses a default folder",
    "lth.verdicts.x_against_threshold__mutmut_17": "a difference of exactly 0 is 'at' before its sign is read",
    **dict.fromkeys([f"lth.runs.x_run_experiment__mutmut_{n}" for n in (31, 32, 33)],
                    "print and tqdm.write put the same line on stdout; tqdm.write first clears a bar drawn on the same "
                    "terminal line, which no captured stream has"),
}

# A device argument dropped (`device=None`, `.to(None)`, `Generator(None)`): on a machine without a GPU every tensor is
# on the CPU already, so these survive whatever the tests; they are not equivalent (on a GPU they mix devices) and stay
# in the score as survivors. `--run` tries a surviving one again only where CUDA is available: a survivor runs every
# test that reaches its function (about 10 minutes for one of train's on 2 cores).
DEVICE_ONLY = {f"helpers.x_{name}" for name in [
    "keep_top__mutmut_10", "keep_top__mutmut_13", "prune_and_reset__mutmut_1", "prune_and_reset__mutmut_5",
    "prune_and_reset__mutmut_13", "lottery_ticket__mutmut_99", "lottery_ticket__mutmut_114",
    *(f"augment__mutmut_{n}" for n in (3, 13, 18, 30, 35, 46, 50, 58, 60, 64, 66, 77, 79, 81, 83)),
    *(f"train__mutmut_{n}" for n in (7, 8, 9, 10, 12, 19, 26, 34, 100, 102, 105, 108))]} | {
    "lth.runs.x_replayed_exactly__mutmut_7",
    *(f"lth.runs.x_notebook_setup__mutmut_{n}" for n in (9, 28)),
    *(f"lth.runs.x_run_experiment__mutmut_{n}" for n in (4, 56, 78, 286, 302, 308, 318)),
    *(f"lth.runs.x_load_or_train_phase0__mutmut_{n}" for n in (5, 229, 237))}

RESULTS = [f"{module.replace('.', '/')}.py.meta" for module in CORE]  # mutmut's results, a file per module
SAVED = Path(__file__).parent / "mutmut_results"


def share_results() -> None:
    """mutants/ and the committed copy both get every result either holds: mutants/ names the current mutants and
    their functions' hashes, and a saved result stands for a mutant not checked there whose function is unchanged
    (mutmut forgets a file's results when it generates its mutants again, even of functions it did not change). The
    committed copy is gzip'd (a tenth of the size), with no timestamp, so the same results are the same bytes."""
    for name in RESULTS:
        current, saved = Path("mutants") / name, SAVED / f"{name}.gz"
        if not current.exists():
            if saved.exists():  # a clone without a run of its own: the committed results
                current.parent.mkdir(parents=True, exist_ok=True)
                current.write_bytes(gzip.decompress(saved.read_bytes()))
            continue
        new = json.loads(current.read_text())
        if saved.exists():
            old = json.loads(gzip.decompress(saved.read_bytes()))
            same = {f for f, h in new["hash_by_function_name"].items() if old["hash_by_function_name"].get(f) == h}
            for key, code in old["exit_code_by_key"].items():
                if code is not None and new["exit_code_by_key"].get(key, 0) is None and function_of(key) in same:
                    new["exit_code_by_key"][key] = code
        saved.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(new, indent=4)
        current.write_text(text)
        saved.write_bytes(gzip.compress(text.encode(), mtime=0))


def patterns() -> list[str]:
    return [f"{module}.{name if name.startswith(('xǁ', '*')) else 'x_' + name}__mutmut_*"
            for module, names in CORE.items() for name in names]


def module_of(mutant: str) -> str:
    return mutant.split(".x")[0]


def function_of(mutant: str) -> str:
    """'lth.spec.xǁRunSpecǁof__mutmut_3' -> 'xǁRunSpecǁof', as mutmut keys its functions' hashes."""
    return mutant.split(".")[-1].rsplit("__mutmut_", 1)[0]


def results() -> dict[str, str]:
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s*([\w.ǁ]+__mutmut_\d+): ([\w ]+)$", out, flags=re.M))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="store_true", help="run mutmut on the core's mutants not killed yet first")
    core = re.compile("|".join(re.escape(x).replace(r"\*", ".*") for x in patterns()))
    if p.parse_args().run:
        # one thread a test process: mutmut forks a child per mutant, and a child forked while torch's OpenMP pool
        # runs deadlocks at its first parallel op (every mutant that reached torch timed out with two threads)
        # and a default results folder outside mutants/: a mutant that loses a test's results_dir writes a run there,
        # and in mutants/results it would be read as the committed study by every later mutant's tests; each test
        # session's temporary folders go when it ends (pytest keeps the last three sessions', but the sessions of
        # mutmut's forked children left theirs, and they filled this machine's disk)
        env = {**os.environ, "LTH_TEST_THREADS": "1", "OMP_NUM_THREADS": "1",
               "LTH_RESULTS": tempfile.mkdtemp(prefix="mutmut-results-"),
               "PYTEST_ADDOPTS": "-o tmp_path_retention_policy=none"}
        shutil.rmtree("mutants/results", ignore_errors=True)
        # one mutant first: mutmut regenerates the mutants of changed functions and forgets their results, and
        # (without its saved stats) traces which tests reach which function again, tests added since included; then
        # every core mutant without a result, the timeouts (a hang may have been the harness's), those no test reached
        # and the survivors, but not the equivalent ones, nor the device-only ones on a machine without CUDA
        Path("mutants/mutmut-stats.json").unlink(missing_ok=True)
        subprocess.run(["mutmut", "run", "helpers.x_prune__mutmut_1"], check=True, env=env)
        share_results()
        import torch
        gpu = torch.cuda.is_available()
        retry = lambda k, v: v in ("timeout", "no tests") or v == "survived" and (gpu or k not in DEVICE_ONLY)
        todo = [k for k, v in results().items()
                if core.fullmatch(k) and (v == "not checked" or k not in EQUIVALENT and retry(k, v))]
        if todo:
            subprocess.run(["mutmut", "run", *todo], check=True, env=env)
    share_results()
    status = {k: v for k, v in results().items() if core.fullmatch(k)}
    counts = Counter(status.values())
    survivors = sorted(k for k, v in status.items() if v != "killed")
    # a mutant no test reaches survives as surely as one the tests run and miss
    judged = [k for k in status if k not in EQUIVALENT and status[k] in ("killed", "survived", "timeout", "no tests")]
    killed = sum(status[k] in ("killed", "timeout") for k in judged)
    print(f"core mutants: {len(status)} ({', '.join(f'{n} {s}' for s, n in counts.most_common())})")
    print(f"equivalent survivors set apart: {sum(k in EQUIVALENT for k in status)}")
    print(f"score: {killed} killed of {len(judged)} non-equivalent mutants run = {killed / max(1, len(judged)):.1%}")
    for module in CORE:
        mine = [k for k in judged if module_of(k) == module]
        done = sum(status[k] in ("killed", "timeout") for k in mine)
        device = sum(status[k] == "survived" and k in DEVICE_ONLY for k in mine)
        untested = sum(status[k] == "no tests" for k in mine)
        unrun = sum(module_of(k) == module and v == "not checked" for k, v in status.items())
        print(f"  {module:13s} {done:4d} killed of {len(mine):4d} = {done / max(1, len(mine)):6.1%}"
              + (f"  ({device} device-only survivors on a CPU)" if device else "")
              + (f"  ({untested} that no test reaches)" if untested else "")
              + (f"  ({unrun} not run yet)" if unrun else ""))
    for k in survivors:
        print(f"  {status[k]:10s} {k}" + (f"  (equivalent: {EQUIVALENT[k]})" if k in EQUIVALENT else
                                           "  (a device argument dropped)" if k in DEVICE_ONLY else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
