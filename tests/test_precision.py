"""Precision per device: what "auto" picks, that a study keeps its precision, and fp16 with a GradScaler."""
import json
import platform

import pytest
import torch

import helpers as H
import lth.precision
from lth.identity import network_of, run_name
from lth.precision import Bf16Conv, Bf16ConvOnFp32Kernels, kernels, pick_precision, probe_speed
from lth.runs import resolve_hparams, run_experiment
from lth.spec import RunSpec
from lth.store import record_file, write_json

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")],
                         ids=["T4", "A100", "H100"])
def test_auto_on_cuda_is_bf16_from_ampere_on_and_fp16_before(capability, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what emulation reports on a T4
    assert pick_precision(CUDA) == expected


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """An x86 CPU with AVX-512 whose bf16 and fp32 speeds the test sets; counts the probes."""
    monkeypatch.setattr("lth.precision.PRECISION_CACHE", tmp_path / "precision.json")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr("lth.precision.cpu_capability", lambda: "AVX512")
    monkeypatch.setattr("lth.precision.cpu_model", lambda: "Some Xeon")
    speeds, probes = {}, []
    monkeypatch.setattr("lth.precision.probe_speed", lambda p: probes.append(p) or speeds[p])
    return speeds, probes


@pytest.mark.parametrize("fp32, bf16, expected", [(1500, 1133, "fp32"), (1206, 2076, "bf16")],
                         ids=["Xeon without AMX: bf16 slower", "Zen 4: bf16 faster"])
def test_auto_on_a_cpu_is_the_faster_of_fp32_and_bf16_probed_once(cpu, fp32, bf16, expected):
    speeds, probes = cpu
    speeds.update(fp32=fp32, bf16=bf16)
    assert pick_precision(CPU) == expected and sorted(probes) == ["bf16", "fp32"]
    assert pick_precision(CPU) == expected and len(probes) == 2  # cached per CPU model and torch version
    cached = json.loads(lth.precision.PRECISION_CACHE.read_text())
    assert cached == {f"Some Xeon | AVX512 | torch {torch.__version__}": expected}


def test_auto_on_x86_without_avx512_is_fp32_without_probing(cpu, monkeypatch):
    monkeypatch.setattr("lth.precision.cpu_capability", lambda: "AVX2")  # no native bf16 kernels: measured 13x slower
    assert pick_precision(CPU) == "fp32" and cpu[1] == []


def test_the_probe_measures_both_precisions_for_real():
    assert probe_speed("fp32", batch=16, steps=1) > 0 and probe_speed("bf16", batch=16, steps=1) > 0


def conv_in_bf16(kind: str, bias: bool):
    """One convolution's output and gradients in bf16 autocast: on fp32 kernels (Bf16Conv), or summed in float64 from
    the same bf16-rounded operands (what a bf16 kernel summing in fp32 computes, up to summation order)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, 8, 8, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = (torch.randn(32, 16, 3, 3, generator=g) * 0.1).requires_grad_()
    b = torch.randn(32, generator=g).requires_grad_() if bias else None
    grad = torch.randn(8, 32, 4, 4, generator=g).to(torch.bfloat16)
    if kind == "float64":
        leaves = [t.to(torch.bfloat16).double().detach().requires_grad_() for t in (x, w, b) if t is not None]
        out = torch.nn.functional.conv2d(*leaves, stride=2, padding=1).to(torch.bfloat16)
        out.float().backward(grad.float())
        return [out, *(t.grad.to(torch.bfloat16).float() for t in leaves)]
    with Bf16ConvOnFp32Kernels(), torch.autocast("cpu", torch.bfloat16):
        out = torch.nn.functional.conv2d(x, w, b, stride=2, padding=1)
    out.backward(grad)
    return [out, *(t.grad for t in (x, w, b) if t is not None)]


@pytest.mark.parametrize("bias", [False, True], ids=["no bias", "bias"])
def test_bf16_convolution_on_fp32_kernels_rounds_like_a_bf16_kernel(bias):
    emulated, exact = conv_in_bf16("fp32 kernels", bias), conv_in_bf16("float64", bias)
    assert emulated[0].dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in emulated[1:])
    for got, want in zip(emulated, exact):
        assert torch.equal(got.float().to(torch.bfloat16).float(), got.float())  # every value is a bf16 value
        assert (got.float() == want.float()).float().mean() > 0.99  # a few last-bit flips from summation order


def test_bf16_autocast_uses_fp32_kernels_only_where_the_cpu_lacks_bf16_convolutions(monkeypatch):
    calls = []
    monkeypatch.setattr(Bf16Conv, "apply", lambda *args: calls.append(args[3:]))
    conv = torch.nn.Conv2d(1, 1, 3, stride=2, padding=1)
    for native, precision, expected in [(True, "bf16", 0), (False, "bf16", 1), (False, "fp32", 1)]:
        monkeypatch.setattr("lth.precision.native_bf16_conv", lambda: native)
        with kernels(CPU, precision), torch.autocast("cpu", H.AUTOCAST[precision],
                                                     enabled=H.AUTOCAST[precision] is not None):
            conv(torch.randn(1, 1, 4, 4))
        assert len(calls) == expected
    assert calls == [((2, 2), (1, 1), (1, 1), 1)]  # nn.Conv2d's stride, padding, dilation and groups reach it


def record(precision: str) -> dict:
    spec = RunSpec.of("lottery", sparsity=0.5)
    hp = H.HParams(precision=precision)
    return {"experiment": "lottery", "name": run_name(spec, hp), "params": vars(spec), "hparams": vars(hp),
            "history": [{"round": 0, "val_acc": 0.5, "seconds": 1.0}], "final_val_acc": 0.5, "final_sparsity": 0.5,
            "data": {"sha256": "test"}, "network": network_of(spec)}


def test_a_study_keeps_the_precision_its_runs_used(tmp_path, monkeypatch):
    monkeypatch.setattr("lth.precision.pick_precision", lambda dev: "fp32")  # what this device alone would pick
    assert resolve_hparams(H.HParams(), CPU, tmp_path).precision == "fp32"
    write_json(record_file(tmp_path, record("bf16")), record("bf16"))
    assert resolve_hparams(H.HParams(), CPU, tmp_path).precision == "bf16"
    assert resolve_hparams(H.HParams(precision="fp16"), CPU, tmp_path).precision == "fp16"  # explicit wins
    write_json(record_file(tmp_path, record("fp32")), record("fp32"))
    with pytest.raises(ValueError, match=r"precisions \['bf16', 'fp32'\]: pass precision explicitly"):
        resolve_hparams(H.HParams(), CPU, tmp_path)


def test_the_resolved_precision_is_part_of_a_runs_identity(data, tmp_path):
    """Another precision is another run, saved beside the first: its numbers differ slightly."""
    spec = RunSpec.of("lottery", sparsity=0.5, rounds=1, epochs=1, model="tiny")
    fp32 = run_experiment(spec, data, "cpu", tmp_path, H.HParams(batch_size=64, lr=0.05, precision="fp32"),
                          progress=False)
    assert fp32["hparams"]["precision"] == "fp32"
    bf16 = run_experiment(spec, data, "cpu", tmp_path, H.HParams(batch_size=64, lr=0.05, precision="bf16"),
                          progress=False)
    assert bf16["hparams"]["precision"] == "bf16" and bf16["name"] != fp32["name"]
    assert {p.stem for p in tmp_path.glob("runs/lottery/*.json")} == {fp32["name"], bf16["name"]}


@pytest.mark.slow  # fp16 autocast on a CPU: about a minute
def test_fp16_with_a_skipped_step_keeps_pruned_weights_at_zero(data, monkeypatch):
    torch.manual_seed(0)
    model = H.CNN()
    masks = H.prune(model, H.dense_masks(model), 0.5)
    H.apply_masks(model, masks)
    steps, skipped = [], []
    sgd_step = torch.optim.SGD.step
    monkeypatch.setattr(torch.optim.SGD, "step", lambda self, *a, **k: steps.append(self) or sgd_step(self, *a, **k))

    def overflow_once(grad):  # the first backward overflows, as fp16 gradients do: the scaler must skip that step
        if not skipped:
            skipped.append(True)
            return torch.full_like(grad, float("inf"))
        return grad
    model.classifier.weight.register_hook(overflow_once)
    hp = H.HParams(batch_size=64, lr=0.05, precision="fp16", weight_decay=5e-2)
    history = H.train(model, data, 2, masks, hp=hp, progress=False)
    assert len(steps) == 2 * (len(data.x_train) // 64) - 1  # exactly one step skipped
    opt = steps[-1]
    for name, w in H.prunable_weights(model).items():
        assert (w[~masks[name]] == 0).all(), name
        assert (opt.state[w]["momentum_buffer"][~masks[name]] == 0).all(), name
        assert torch.isfinite(w).all(), name
    assert all(torch.equal(m, H.prune(model, masks, 0.5)[k]) for k, m in masks.items())
    assert history[-1]["train_loss"] < history[0]["train_loss"] or history[-1]["val_acc"] > 0.1
