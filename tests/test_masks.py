"""Masks kept with every pruned run, read back exactly, and compared with each other."""
import pytest
import torch

import helpers as H
from conftest import FAST, refused, resolved
from lth.masks import one_shot_masks, overlap
from lth.runs import run_experiment
from lth.spec import RunSpec
from lth.store import load_masks, masks_path


class Odd(torch.nn.Module):
    """Layers of 135 and 50 weights, so 8 bits a byte leave a partial last byte, and a module name holding a '/',
    which the masks file also uses to put a round before a parameter name."""
    def __init__(self, batchnorm: bool = True, dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        self.add_module("conv/3x3", torch.nn.Conv2d(3, 5, 3))
        self.fc = torch.nn.Linear(5, num_classes)

    def forward(self, x):
        return self.fc(getattr(self, "conv/3x3")(x).amax((2, 3)))


@pytest.mark.parametrize("model", ["cnn", "odd"])
def test_saved_masks_round_trip_exactly_and_match_the_records_sparsity(model, data, tmp_path, monkeypatch):
    monkeypatch.setitem(H.MODELS, "odd", Odd)
    spec = RunSpec.of("lottery", sparsity=0.5, rounds=3, epochs=1, model=model)
    kept = {}
    prune_and_reset = H.prune_and_reset
    monkeypatch.setattr(H, "prune_and_reset", lambda model, masks, theta0, r, *args: kept.setdefault(
        r, prune_and_reset(model, masks, theta0, r, *args)))
    record = run_experiment(spec, data, "cpu", tmp_path, FAST, progress=False)
    saved = load_masks(tmp_path, record)
    assert list(saved) == [1, 2, 3]
    for r, masks in saved.items():
        assert all(m.dtype == torch.bool and torch.equal(m, kept[r][k]) for k, m in masks.items())
        assert H.sparsity_report(masks)["layers"] == [e for e in record["history"] if e["round"] == r][-1][
            "layer_sparsity"]
    if model == "cnn":
        assert masks_path(tmp_path, spec, resolved()).stat().st_size < 3 * 62_000  # 8 weights a byte: 60 KB a round


def replay_random_masks(spec: RunSpec) -> dict[int, H.Masks]:
    """A random-pruning run's masks after every round, rebuilt without training: its scores are draws of the round's
    generator, whatever the weights."""
    model = H.build_model(spec.seed, spec.batchnorm, spec.dropout)
    masks, out = H.dense_masks(model), {}
    for r in range(1, spec.rounds + 1):
        gen = torch.Generator().manual_seed(H.phase_seed(spec.seed, r))
        masks = out[r] = H.prune(model, masks, H.round_sparsities(spec.sparsity, spec.rounds)[r - 1], spec.strategy,
                                 spec.scope, gen)
    return out


def test_random_masks_are_the_rounds_draws_whatever_the_weights(data, tmp_path):
    spec = RunSpec.of("random", sparsity=0.5, rounds=2, epochs=1)
    record = run_experiment(spec, data, "cpu", tmp_path, FAST, progress=False)
    saved, replayed = load_masks(tmp_path, record), replay_random_masks(spec)
    assert all(torch.equal(saved[r][k], replayed[r][k]) for r in saved for k in saved[r])


def test_a_run_without_saved_masks_says_so(tmp_path):
    spec = RunSpec.of("lottery", sparsity=0.5)
    path = tmp_path / "runs" / "lottery" / f"{spec.name}.masks.npz"
    with refused(FileNotFoundError, f"{path} does not exist: {spec.name} is not finished, or ran before masks were "
                                    "saved (run it again with force=True to save them)."):
        load_masks(tmp_path, {"experiment": "lottery", "name": spec.name, "params": vars(spec)})


def test_overlap_of_masks_built_by_hand():
    a = {"x": torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)}
    b = {"x": torch.tensor([1, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool)}
    o = overlap(a, b)
    assert o["shared"] == 0.5 and o["jaccard"] == 2 / 6
    assert o["shared_chance"] == 0.5 and o["jaccard_chance"] == 2 / 6  # 4 x 4 / 8 survivors in common by chance
    assert overlap(a, a) == {"shared": 1.0, "shared_chance": 0.5, "jaccard": 1.0, "jaccard_chance": 2 / 6}
    two = {"x": a["x"], "y": torch.tensor([1, 0, 0, 0], dtype=torch.bool)}  # chance is counted layer by layer
    assert overlap(two, two)["shared_chance"] == pytest.approx((4 * 4 / 8 + 1 * 1 / 4) / 5)


def test_one_shot_masks_keep_the_largest_weights_of_each_layer():
    w = {"x": torch.tensor([0.1, -3.0, 2.0, 0.5])}
    assert one_shot_masks(w, 0.5)["x"].tolist() == [False, True, True, False]
