"""What a run is: the table of arms (each declared once, with its notebook, defaults, plan, figures and what it is
compared with) and `RunSpec`, everything that fixes one run. Adding an arm is one entry in `ARMS`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

import helpers as H
from lth.models import load_models

TRUE, FALSE = ("true", "yes", "y", "on", "1"), ("false", "no", "n", "off", "0")


def as_bool(name: str, value) -> bool:
    """A flag as papermill may pass it (`-p force no` arrives as the string 'no'): True/False and their usual
    spellings, anything else refused, since a non-empty string would otherwise count as true."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise ValueError(f"{name}={value!r}: must be True or False (papermill: -p {name} True).")


SWEEP = tuple(dict(sparsity=p) for p in (0.1, 0.2, 0.3, 0.4, 0.5))  # the lab's figure: 5 rounds of 5 epochs each
CLASSIC = dict(sparsity=1 - 0.8 ** 13, rounds=13, epochs=5)  # 20% of the survivors a round, to 5.5% of the weights


@dataclass(frozen=True)
class Arm:
    """One arm of the study, declared once; the plan, the findings, the report's tables, the explorer's choices and
    the tests all read it from here."""
    notebook: str                          # the notebook that runs it, once per parameter set and seed
    label: str                             # how the report and the figures name it
    defaults: dict                         # the RunSpec fields it sets
    plan: tuple[dict, ...]                 # the parameter sets run_all.py executes
    figure: str                            # its curve figure, drawn by the summary; the classic family gets its own
    findings: str = "compare"              # which block of lth.report states its findings
    against: tuple[str, ...] = ()          # the arms it is compared with, at the same sparsity and schedule
    shown: bool = True                     # among the explorer's default arms
    figures: tuple[str, ...] = ()          # other figures the summary draws for it
    panels: bool = False                   # its lines also as small multiples, a panel each: `{figure}_panels`


ARMS: dict[str, Arm] = {  # in the order the findings state them
    "baseline": Arm("01_baseline", "dense baseline", dict(rounds=0, epochs=25),
                    tuple(dict(batchnorm=bn, dropout=do) for bn in (True, False) for do in (0.0, 0.2)),
                    "baseline_variants", findings="dense", shown=False),
    "lottery": Arm("02_lottery_sweep", "lottery ticket", dict(strategy="magnitude", reset="rewind"),
                   (*SWEEP, CLASSIC, dict(CLASSIC, phase0_of_late_rewind=1)), "lottery_curves", findings="sweep",
                   against=("random",)),
    "random": Arm("03_random_sweep", "random pruning", dict(strategy="random", reset="rewind"), (*SWEEP, CLASSIC),
                  "random_curves", findings="in_sweep"),
    "reinit": Arm("05_random_reinit", "re-init each round", dict(strategy="magnitude", reset="reinit",
                                                                       sparsity=0.5),
                  (dict(), CLASSIC), "reinit_curves", findings="reinit", against=("lottery", "random")),
    "fixed_mask": Arm("08_fixed_mask_reinit", "ticket mask, fresh init", dict(strategy="ticket", reset="reinit"),
                      (CLASSIC,), "fixed_mask_curves", findings="levels", against=("lottery", "random")),
    "late_rewind": Arm("09_late_rewinding", "late rewinding", dict(strategy="magnitude", reset="rewind",
                                                                   rewind_epoch=1),
                       (CLASSIC,), "late_rewind_curves", findings="levels", against=("lottery",)),
    "rounds_vs_epochs": Arm("04_rounds_vs_epochs", "rounds against epochs", dict(strategy="magnitude",
                                                                                 reset="rewind", sparsity=0.5),
                            tuple(dict(rounds=r, epochs=e) for r, e in ((1, 30), (2, 15), (3, 10), (4, 7), (5, 6))),
                            "rounds_vs_epochs_curves", findings="rounds_vs_epochs", shown=False,
                            figures=("rounds_vs_epochs_final",), panels=True),
}
SUMMARY_FIGURES = ("final_accuracy_vs_sparsity", "sweep_curves", "classic_curve", "configurations")


def figure_names() -> dict[str, str]:
    """Every figure file's stem -> the notebook that writes it, once: the summary draws each arm's curves (one file
    per parameter family: the classic curve gets its own) and the study's figures; the explorer its showcase."""
    owners = {stem: "06_summary" for arm in ARMS.values()
              for stem in (arm.figure, f"{arm.figure}_classic", *arm.figures,
                           *((f"{arm.figure}_panels",) if arm.panels else ()))}
    return owners | {stem: "06_summary" for stem in SUMMARY_FIGURES} | {"explore": "07_explore"}


def rewind_epochs(epochs: int) -> tuple[int, ...]:
    """The phase-0 epochs some arm's plan rewinds to, within a phase 0 of `epochs`: saved as phase 0 trains."""
    planned = {params.get("rewind_epoch", arm.defaults.get("rewind_epoch", 0)) for arm in ARMS.values()
               for params in arm.plan}
    return tuple(sorted(k for k in planned if 0 < k < epochs))


def pruned_arms() -> list[str]:
    return [name for name, arm in ARMS.items() if arm.defaults.get("rounds") != 0]


@dataclass(frozen=True)
class RunSpec:
    """Everything that fixes one run. Phase 0 trains the dense net for `epochs`; then each of `rounds` rounds
    prunes, resets the survivors and trains `epochs` more, ending at `sparsity`."""
    experiment: str
    sparsity: float = 0.0
    rounds: int = 5
    epochs: int = 5
    strategy: str = "magnitude"
    reset: str = "rewind"
    scope: str = "layer"
    batchnorm: bool = True
    dropout: float = 0.0
    seed: int = 0
    rewind_epoch: int = 0  # late rewinding: survivors go back to the weights after this many epochs of phase 0
    model: str = "cnn"     # a registered network (helpers.MODELS, models/): the lab's CNN by default
    phase0_of_late_rewind: int = 0  # k: prune by the phase 0 kept with the epoch-k rewind point, the late-rewinding
    #                                 run's own where it could not replay the shared one, so the two share phase 0

    @classmethod
    def of(cls, experiment: str, quick: bool = False, **params) -> "RunSpec":
        """The arm's defaults overridden by `params`; `quick` cuts every phase to one epoch (one past the rewind
        point when rewinding late)."""
        H.check_choice("experiment", experiment, ARMS)
        unknown = set(params) - {f for f in cls.__dataclass_fields__ if f != "experiment"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}; RunSpec takes {list(cls.__dataclass_fields__)}.")
        if "batchnorm" in params:
            params["batchnorm"] = as_bool("batchnorm", params["batchnorm"])
        spec = cls(experiment, **{**ARMS[experiment].defaults, **params})
        if spec.model not in load_models():  # a run asked for must be buildable; a saved one may name any model
            H.build_model(0, model=spec.model)  # the error that lists the models and says how to add one
        last_kept = max(spec.rewind_epoch, spec.phase0_of_late_rewind)
        return replace(spec, epochs=last_kept + 1) if as_bool("quick", quick) else spec

    def __post_init__(self):
        H.check_choice("experiment", self.experiment, ARMS)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model={self.model!r}: must be the name of a model, e.g. 'cnn' or 'conv2'.")
        H.check_choice("strategy", self.strategy, H.STRATEGIES)
        H.check_choice("reset", self.reset, H.RESETS)
        H.check_choice("scope", self.scope, H.SCOPES)
        H.check_positive("epochs", self.epochs)
        H.check_fraction("sparsity", self.sparsity)
        H.check_fraction("dropout", self.dropout)
        if not isinstance(self.batchnorm, (bool, np.bool_)):  # papermill's `-p batchnorm maybe` passes a string
            raise ValueError(f"batchnorm={self.batchnorm!r}: must be True or False (papermill: -p batchnorm True).")
        for name in ("seed", "rewind_epoch", "phase0_of_late_rewind"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}={value!r}: must be a whole number >= 0.")
        if self.rewind_epoch and (self.rewind_epoch >= self.epochs or self.reset != "rewind"):
            raise ValueError(f"rewind_epoch={self.rewind_epoch!r}: late rewinding goes back to a point inside phase 0 "
                             f"of a rewound run: 0 <= rewind_epoch < epochs ({self.epochs}), with reset='rewind'.")
        if self.phase0_of_late_rewind and (self.phase0_of_late_rewind >= self.epochs or self.rewind_epoch):
            raise ValueError(f"phase0_of_late_rewind={self.phase0_of_late_rewind!r}: names the phase 0 of a late-"
                             f"rewinding run, at an epoch 0 < k < epochs ({self.epochs}), for a run with rewind_epoch=0"
                             " (a late-rewinding run prunes by its own phase 0 already).")
        if self.strategy == "ticket" and self.reset != "reinit":
            raise ValueError("strategy='ticket' trains a lottery run's masks from fresh values: reset must be "
                             "'reinit' (with 'rewind' it would be the lottery run itself).")
        if ARMS[self.experiment].defaults.get("rounds") == 0:  # a dense arm: phase 0 only
            if self.rounds != 0 or self.sparsity != 0:
                raise ValueError(f"rounds={self.rounds!r}, sparsity={self.sparsity!r}: a {self.experiment!r} run is "
                                 "dense (rounds=0, sparsity=0); pruned runs are 'lottery', 'random', ...")
            return
        if self.rounds == 0:
            raise ValueError(f"rounds=0: must be a whole number >= 1 for a {self.experiment!r} run; "
                             "a dense run is the 'baseline' experiment.")
        H.check_positive("rounds", self.rounds)
        if self.sparsity == 0:
            raise ValueError(f"sparsity=0 with rounds={self.rounds}: a pruned run needs a sparsity in (0, 1); "
                             "a dense run is the 'baseline' experiment.")

    @property
    def name(self) -> str:
        model = self.model_name
        if self.rounds == 0:
            return f"{self.experiment}_{model}_E{self.epochs}_seed{self.seed}"
        scope = "" if self.scope == "layer" else f"_{self.scope}"
        rewind = f"{self.rewind_epoch}" if self.rewind_epoch else ""
        phase0 = f"_phase0late{self.phase0_of_late_rewind}" if self.phase0_of_late_rewind else ""
        return (f"{self.experiment}_p{exact(self.sparsity)}_R{self.rounds}_E{self.epochs}_{self.strategy}_"
                f"{self.reset}{rewind}{scope}{phase0}_{model}_seed{self.seed}")

    @property
    def phase0_name(self) -> str:
        """Phase 0 depends only on the model, the seed and the epochs: every arm that shares them shares it."""
        return f"{self.model_name}_E{self.epochs}_seed{self.seed}"

    @property
    def late_rewind_source(self) -> "RunSpec":
        """The late-rewinding run whose own phase 0 a run with `phase0_of_late_rewind` prunes by."""
        return replace(self, experiment="late_rewind", rewind_epoch=self.phase0_of_late_rewind,
                       phase0_of_late_rewind=0)

    @property
    def ticket_source(self) -> "RunSpec":
        """The lottery run whose masks a strategy='ticket' run trains from fresh values."""
        return replace(self, experiment="lottery", strategy="magnitude", reset="rewind", rewind_epoch=0)

    @property
    def model_name(self) -> str:
        """The network and its flags; the lab's CNN, the default, goes unnamed."""
        flags = f"bn{int(self.batchnorm)}_do{exact(self.dropout)}"
        return flags if self.model == "cnn" else f"{self.model}_{flags}"

    @property
    def procedure(self) -> dict:
        """The arguments of `helpers.lottery_ticket` that this run fixes: every field but the arm's name and which
        saved phase 0 it starts from."""
        return {k: v for k, v in asdict(self).items() if k not in ("experiment", "phase0_of_late_rewind")}


def exact(x: float) -> str:
    """A number as short as it reads back exactly: 0.5 -> '0.5'; two sparsities never share a name."""
    text = f"{x:g}"
    return text if float(text) == x else repr(float(x))


def plural(n: int, word: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def is_classic(params: dict) -> bool:
    return params["rounds"] == CLASSIC["rounds"] and bool(np.isclose(params["sparsity"], CLASSIC["sparsity"]))


def model_label(params: dict) -> str:
    """'BatchNorm, dropout 0' for the lab's CNN; other networks are named first: 'conv2, BatchNorm, dropout 0'."""
    model = params.get("model", "cnn")
    flags = f"{'BatchNorm' if params['batchnorm'] else 'no BatchNorm'}, dropout {params['dropout']:g}"
    return flags if model == "cnn" else f"{model}, {flags}"


def arm_label(record: dict) -> str:
    """The arm's label, with the epoch its survivors are rewound to when it is not θ0."""
    epoch = record["params"].get("rewind_epoch", 0)
    return ARMS[record["experiment"]].label + (f" to epoch {epoch}" if epoch else "")
