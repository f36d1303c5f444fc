import math

import pytest
import torch
import torch.nn as nn

import helpers as H


def model(seed: int = 0, **kw) -> H.CNN:
    torch.manual_seed(seed)
    return H.CNN(**kw)


@pytest.mark.parametrize("batchnorm", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_every_variant_maps_images_to_ten_logits(batchnorm, dropout):
    net = model(batchnorm=batchnorm, dropout=dropout)
    assert net(torch.randn(5, 3, 32, 32)).shape == (5, 10)
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == batchnorm
    assert any(isinstance(m, nn.Dropout) and m.p == dropout for m in net.modules())


def test_prunable_tensors_are_conv_and_linear_weights_only():
    net = model()
    names = H.prunable_weights(net)
    assert len(names) == 8 and all(n.endswith(".weight") for n in names)
    convs_and_linears = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert {id(w) for w in names.values()} == {id(m.weight) for m in convs_and_linears}
    bn = {id(p) for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert bn and not bn & {id(w) for w in names.values()}


def test_bad_model_parameters():
    with pytest.raises(ValueError, match="dropout=1.5"):
        H.CNN(dropout=1.5)


@pytest.mark.parametrize("strategy", ["magnitude", "random"])
@pytest.mark.parametrize("sparsity", [0.1, 0.37, 0.5, 0.9])
def test_layerwise_counts_are_exact(strategy, sparsity):
    net = model()
    masks = H.prune(net, H.dense_masks(net), sparsity, strategy, generator=torch.Generator().manual_seed(1))
    for name, m in masks.items():
        assert int((~m).sum()) == round(sparsity * m.numel()), name


@pytest.mark.parametrize("strategy", ["magnitude", "random"])
def test_global_counts_are_exact_and_only_alive_weights_go(strategy):
    net = model()
    n = sum(w.numel() for w in H.prunable_weights(net).values())
    gen = torch.Generator().manual_seed(1)
    first = H.prune(net, H.dense_masks(net), 0.3, strategy, "global", gen)
    assert sum(int((~m).sum()) for m in first.values()) == round(0.3 * n)
    second = H.prune(net, first, 0.6, strategy, "global", gen)
    assert sum(int((~m).sum()) for m in second.values()) == round(0.6 * n)
    assert all(not (s & ~f).any() for s, f in zip(second.values(), first.values()))  # nothing comes back


def test_a_second_round_removes_a_fraction_of_the_survivors():
    net = model()
    masks = H.dense_masks(net)
    for s in H.round_sparsities(0.5, 5):
        new = H.prune(net, masks, s)
        for k in masks:
            alive, n = int(masks[k].sum()), masks[k].numel()
            removed = alive - int(new[k].sum())
            assert removed == alive - (n - round(s * n))
            assert abs(removed - (1 - 0.5 ** 0.2) * alive) <= 1  # q of the survivors, to within rounding
            assert not (new[k] & ~masks[k]).any()
        masks = new
    assert all(int((~m).sum()) == round(0.5 * m.numel()) for m in masks.values())


def test_magnitude_pruning_removes_the_smallest_alive_weights():
    net = model()
    masks = H.prune(net, H.dense_masks(net), 0.4)
    for name, w in H.prunable_weights(net).items():
        assert w[~masks[name]].abs().max() <= w[masks[name]].abs().min()


def test_random_pruning_is_not_magnitude_pruning_and_is_reproducible():
    net = model()
    mag = H.prune(net, H.dense_masks(net), 0.5, "magnitude")
    rnd = H.prune(net, H.dense_masks(net), 0.5, "random", generator=torch.Generator().manual_seed(3))
    again = H.prune(net, H.dense_masks(net), 0.5, "random", generator=torch.Generator().manual_seed(3))
    assert any(not torch.equal(mag[k], rnd[k]) for k in mag)
    assert all(torch.equal(rnd[k], again[k]) for k in rnd)


def test_masks_are_not_derived_from_zero_weights():
    net = model()
    masks = H.prune(net, H.dense_masks(net), 0.2)
    w = net.features[0][0].weight
    alive = masks["features.0.0.weight"]
    with torch.no_grad():
        w[alive] = torch.where(torch.arange(int(alive.sum())) % 2 == 0, 0.0, -1.0)  # alive weights at 0 and below
    same = H.prune(net, masks, 0.2)  # no further pruning asked: every alive weight stays alive
    assert all(torch.equal(same[k], masks[k]) for k in masks)


def test_bad_pruning_parameters():
    net = model()
    dense = H.dense_masks(net)
    for bad in (1.0, -0.1, 1.5, "0.5"):
        with pytest.raises(ValueError, match=f"sparsity={bad!r}: must be a number in \\[0, 1\\)"):
            H.prune(net, dense, bad)
    with pytest.raises(ValueError, match="strategy='magnitud': must be one of 'magnitude', 'random'"):
        H.prune(net, dense, 0.5, "magnitud")
    with pytest.raises(ValueError, match="scope='local'"):
        H.prune(net, dense, 0.5, scope="local")
    half = H.prune(net, dense, 0.5)
    with pytest.raises(ValueError, match="below the current one"):
        H.prune(net, half, 0.2)


def test_sparsity_report():
    net = model()
    masks = H.prune(net, H.dense_masks(net), 0.3)
    report = H.sparsity_report(masks)
    n = sum(m.numel() for m in masks.values())
    assert report["overall"] == sum(round(0.3 * m.numel()) for m in masks.values()) / n
    assert set(report["layers"]) == set(masks) and all(abs(v - 0.3) < 0.01 for v in report["layers"].values())


def test_snapshot_does_not_alias_and_rewind_restores_theta0_exactly():
    net = model()
    theta0 = H.snapshot(net)
    before = {k: v.clone() for k, v in theta0.items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(8, 3, 32, 32)).sum().backward()
    opt.step()  # the live weights and BatchNorm statistics move ...
    assert all(torch.equal(theta0[k], before[k]) for k in theta0)  # ... the snapshot does not
    assert not torch.equal(net.features[0][0].weight, theta0["features.0.0.weight"])
    masks = H.prune(net, H.dense_masks(net), 0.5)
    H.rewind(net, theta0, masks)
    state = net.state_dict()
    for k, v in theta0.items():
        expected = v * masks[k] if k in masks else v
        assert torch.equal(state[k], expected), k  # alive weights, biases, BatchNorm (running stats too)


def test_reinit_draws_fresh_kaiming_values_for_survivors_only():
    net = model()
    theta0 = H.snapshot(net)
    masks = H.prune(net, H.dense_masks(net), 0.5)
    H.reinit(net, theta0, masks, torch.Generator().manual_seed(7))
    state = net.state_dict()
    for k, v in theta0.items():
        if k in masks:
            w = state[k]
            assert (w[~masks[k]] == 0).all()
            assert (w[masks[k]] != v[masks[k]]).float().mean() > 0.99
            fan_in = w[0].numel()
            assert w.abs().max() <= math.sqrt(2) * math.sqrt(3 / fan_in) + 1e-6  # kaiming_uniform_, ReLU gain
        else:
            assert torch.equal(state[k], v), k


def test_schedule_prunes_the_same_fraction_each_round_and_ends_at_p():
    for p in (0.1, 0.2, 0.3, 0.4, 0.5, 0.9):
        for rounds in (1, 2, 3, 4, 5):
            s = H.round_sparsities(p, rounds)
            q = 1 - (1 - p) ** (1 / rounds)
            assert len(s) == rounds and math.isclose(s[-1], p)
            assert all(math.isclose(1 - (1 - b) / (1 - a), q) for a, b in zip([0.0] + s, s))
    assert [round(x, 4) for x in H.round_sparsities(0.5, 5)] == [0.1294, 0.2421, 0.3402, 0.4257, 0.5]
