import platform
import resource

import numpy as np
import pytest
import torch

import helpers as H
from conftest import FAST, fake_arrays
from lth.data import load_data
from lth.precision import kernels, resolve_device


def net(seed: int = 0, **kw) -> H.CNN:
    torch.manual_seed(seed)
    return H.CNN(**kw)


def record_optimizers(monkeypatch) -> list:
    """Every SGD that train() creates, with how many parameters had state when its first step began."""
    seen = []
    step = torch.optim.SGD.step

    def spy(self, *a, **k):
        if not any(o is self for o, _ in seen):
            seen.append((self, len(self.state)))
        return step(self, *a, **k)
    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    return seen


def test_history_has_one_entry_per_epoch(data):
    history = H.train(net(), data, 2, hp=FAST, progress=False)
    assert [e["epoch"] for e in history] == [1, 2]
    assert all(0 <= e["val_acc"] <= 1 and e["train_loss"] > 0 and e["seconds"] > 0 for e in history)


def test_it_learns(data):
    history = H.train(net(), data, 6, hp=H.HParams(batch_size=32, lr=0.05), progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.5  # chance is 0.1; the class is written in each image's centre


def test_pruned_weights_stay_zero_and_get_no_momentum(data, monkeypatch):
    model = net()
    masks = H.prune(model, H.dense_masks(model), 0.5)
    H.apply_masks(model, masks)
    alive_before = {k: w[masks[k]].clone() for k, w in H.prunable_weights(model).items()}
    optimizers = record_optimizers(monkeypatch)
    hp = H.HParams(batch_size=64, momentum=0.9, weight_decay=5e-2)  # a large decay, to be sure
    H.train(model, data, 2, masks, hp=hp, progress=False)
    (opt, _), = optimizers
    for name, w in H.prunable_weights(model).items():
        assert (w[~masks[name]] == 0).all(), name
        assert (opt.state[w]["momentum_buffer"][~masks[name]] == 0).all(), name
        assert not torch.equal(w[masks[name]], alive_before[name])  # the survivors did train
    assert all(torch.equal(m, H.prune(model, masks, 0.5)[k]) for k, m in masks.items())


def test_every_phase_starts_with_a_fresh_optimizer(data, monkeypatch):
    optimizers = record_optimizers(monkeypatch)
    model = net()
    H.train(model, data, 1, hp=FAST, progress=False)
    H.train(model, data, 1, hp=FAST, progress=False)
    assert len(optimizers) == 2 and [n for _, n in optimizers] == [0, 0]


def test_same_seed_same_history_and_weights_on_cpu(data):
    runs = []
    for _ in range(2):
        model = net(seed=3, dropout=0.2)
        history = H.train(model, data, 2, seed=11, device="cpu", hp=FAST, progress=False)
        runs.append(([{k: v for k, v in e.items() if k != "seconds"} for e in history], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    other = H.train(net(seed=3, dropout=0.2), data, 2, seed=12, device="cpu", hp=FAST, progress=False)
    assert [e["train_loss"] for e in other] != [e["train_loss"] for e in runs[0][0]]


def test_bad_training_parameters(data):
    for bad in (-1, 0, 2.5, "3"):
        with pytest.raises(ValueError, match=f"epochs={bad!r}: must be a whole number >= 1"):
            H.train(net(), data, bad, progress=False)
    with pytest.raises(ValueError, match="device='gpu' is not a device"):
        H.train(net(), data, 1, device="gpu", progress=False)
    with pytest.raises(ValueError, match="only 'cpu' and 'cuda'"):
        resolve_device("meta")  # what a run checks before it trains
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="batch_size=512 is larger than the 256 training images"):
        H.train(net(), data, 1, progress=False)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning is glibc's mallopt")
def test_cpu_epochs_reuse_freed_activations_instead_of_faulting_them_in(tmp_path):
    np.savez(tmp_path / "cifar10.npz", **fake_arrays(n_train=1024, n_test=16))
    big, model = load_data(tmp_path), net()
    faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with kernels(torch.device("cpu"), "fp32"):  # as a run trains: glibc keeps what it frees
        H.train(model, big, 2, device="cpu", progress=False)  # batches of 512: 32-64 MiB blocks glibc would unmap
        counts = []
        for _ in range(5):
            before = faults()
            H.train(model, big, 1, device="cpu", progress=False)
            counts.append(faults() - before)
    # glibc's defaults fault in 16,000 (bf16) to 120,000 (fp32) pages an epoch here; tuned, most epochs fault none,
    # and an occasional one some thousands (oneDNN's per-thread scratch), hence the median
    assert sorted(counts)[2] < 2000, counts
