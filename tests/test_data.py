import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import helpers as H
from conftest import fake_arrays
from lth.data import (
    KNOWN_COPIES,
    QUICK_SUBSET,
    data_identity,
    data_path,
    data_source,
    describe_data,
    load_data,
    sha256,
    subset,
)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_npz_is_loaded_as_uint8_nchw(fake_npz):
    data = load_data(fake_npz)
    assert data.x_train.shape == (256, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (128, 3, 32, 32) and data.y_test.dtype == torch.int64
    raw = fake_arrays()
    assert torch.equal(data.x_train[5].permute(1, 2, 0), torch.from_numpy(raw["x_train"][5]))
    assert data.source == {"kind": "npz", "file": "cifar10.npz", "sha256": sha256([fake_npz]),
                           "description": "CIFAR-10 from a local .npz copy"}  # no machine path


def test_folder_holding_the_npz_and_the_environment_variable(fake_npz, monkeypatch):
    assert load_data(fake_npz.parent).source["kind"] == "npz"
    monkeypatch.setenv("CIFAR10_DATA", str(fake_npz))
    assert len(load_data().x_train) == 256


def test_torchvision_folder(tmp_path, monkeypatch):
    raw = fake_arrays(n_train=50, n_test=20)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    chunks = np.array_split(np.arange(50), 5)
    batches = [(f"data_batch_{i + 1}", idx, "train") for i, idx in enumerate(chunks)] + [("test_batch", None, "test")]
    for name, idx, split in batches:
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if idx is not None:
            x, y = x[idx], y[idx]
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # the CIFAR pickles store CHW rows
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, "labels": y.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES)}, f)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    data = H.load_cifar10(tmp_path, download=False)
    assert data.source["kind"] == "folder"
    assert torch.equal(data.x_train.permute(0, 2, 3, 1), torch.from_numpy(raw["x_train"]))
    assert torch.equal(data.y_test, torch.from_numpy(raw["y_test"]))


def test_the_data_a_run_would_read_is_named_without_decoding_it_in_every_layout(fake_npz, tmp_path, monkeypatch):
    """data_source: the identity load_data gives (content hash, quick subset) from the files alone: an .npz, a folder
    holding one, a torchvision folder (its files in name order), $CIFAR10_DATA; None where there is no data yet."""
    full, quick = load_data(fake_npz), load_data(fake_npz, quick=True)
    assert data_identity(data_source(fake_npz)) == data_identity(full.source)
    assert data_identity(data_source(fake_npz.parent, quick=True)) == data_identity(quick.source)
    assert data_source(fake_npz) == {"sha256": sha256([fake_npz])}
    assert data_source(fake_npz, quick=True) == {"sha256": sha256([fake_npz]), "subset": list(QUICK_SUBSET)}
    monkeypatch.setenv("CIFAR10_DATA", str(fake_npz))
    assert data_source() == {"sha256": sha256([fake_npz])}
    folder = tmp_path / "tv" / "cifar-10-batches-py"
    (folder / "a_subfolder").mkdir(parents=True)
    for name in ("test_batch", "data_batch_1", "batches.meta"):
        (folder / name).write_bytes(name.encode())
    assert data_source(folder.parent) == {"sha256": sha256(sorted(p for p in folder.iterdir() if p.is_file()))}
    assert data_source(folder.parent)["sha256"] != sha256([folder / n for n in ("test_batch", "data_batch_1",
                                                                                 "batches.meta")])
    assert data_source(tmp_path / "nothing") is None and data_source(tmp_path / "tv2") is None


def test_torchvision_downloads_only_into_data_or_a_named_folder_that_exists(fake_npz, tmp_path, monkeypatch):
    """load_data hands a folder to torchvision with download on for ./data or a named folder that exists, off for a
    named one that does not (a typo creates nothing) or when the caller says so; the copy is described as the
    original images, or by name when its hash is a known re-encoded copy."""
    asked = []

    def load_cifar10(root, download):
        asked.append((root, download))
        return H.to_data(*(fake_arrays()[k] for k in ("x_train", "y_train", "x_test", "y_test")),
                         {"kind": "folder", "file": "cifar-10-batches-py"}, (fake_npz,))
    monkeypatch.setattr(H, "load_cifar10", load_cifar10)
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    data = load_data()
    load_data(tmp_path / "typo")
    load_data(tmp_path / "mine")
    load_data(tmp_path / "mine", download=False)
    monkeypatch.setenv("CIFAR10_DATA", str(tmp_path / "typo"))
    load_data()
    assert asked == [(Path("data"), True), (tmp_path / "typo", False), (tmp_path / "mine", True),
                     (tmp_path / "mine", False), (tmp_path / "typo", False)]
    assert data.source["description"] == "CIFAR-10, original images via torchvision"
    monkeypatch.setitem(KNOWN_COPIES, sha256([fake_npz]), "a re-encoded copy")
    assert load_data(tmp_path / "mine").source["description"] == "a re-encoded copy"
    assert load_data(fake_npz).source["description"] == "a re-encoded copy"


def test_the_data_read_is_data_here_unless_named_and_a_torchvision_folder_wins_over_an_npz(tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    assert data_path() == Path("data")
    (tmp_path / "cifar10.npz").touch()
    assert data_path(tmp_path) == tmp_path / "cifar10.npz"
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert data_path(tmp_path) == tmp_path
    assert data_identity({"sha256": "a", "subset": [2, 1], "file": "x"}) == {"sha256": "a", "subset": [2, 1]}


def test_a_subset_is_the_first_images_of_each_split_and_says_so(fake_npz):
    data = load_data(fake_npz)
    small = subset(data, 7, 3)
    assert torch.equal(small.x_train, data.x_train[:7]) and torch.equal(small.y_train, data.y_train[:7])
    assert torch.equal(small.x_test, data.x_test[:3]) and torch.equal(small.y_test, data.y_test[:3])
    assert small.source == {**data.source, "subset": [7, 3]} and small.files == data.files
    assert describe_data(small.source) == f"CIFAR-10 from a local .npz copy (sha256 {data.source['sha256'][:12]}…, " \
                                          "quick subset of 7/3 images)"
    assert describe_data({"sha256": "0123456789abcdef"}) == "CIFAR-10 (sha256 0123456789ab…)"
    assert len(load_data(fake_npz, quick="yes").x_train) == min(QUICK_SUBSET[0], len(data.x_train))


def test_missing_data_offline_says_where_it_looked(tmp_path):
    with pytest.raises(H.DataError, match="not found under .*CIFAR10_DATA"):
        H.load_cifar10(tmp_path / "nothing", download=False)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(self):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    with pytest.raises(H.DataError, match="downloading failed .*no route to host.*offline machine"):
        H.load_cifar10(tmp_path)


def test_corrupt_and_wrong_shaped_files_are_named(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(H.DataError, match="bad.npz is not a readable .npz"):
        load_data(bad)
    wrong = tmp_path / "wrong.npz"
    arrays = fake_arrays()
    np.savez(wrong, **{**arrays, "x_test": arrays["x_test"][:, :16]})
    with pytest.raises(H.DataError, match=r"wrong.npz: x_test is uint8 \(128, 16, 32, 3\)"):
        load_data(wrong)
    np.savez(wrong, **{k: v for k, v in arrays.items() if k != "y_train"})
    with pytest.raises(H.DataError, match=r"lacks the array\(s\) \['y_train'\]"):
        load_data(wrong)
    with pytest.raises(H.DataError, match="does not exist"):
        load_data(tmp_path / "missing.npz")


def test_augment_crops_and_flips_the_image_itself(data):
    x = data.x_train[:64]
    gen = torch.Generator().manual_seed(0)
    out = H.augment(x, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):  # each output is a 32x32 window of the padded image, possibly mirrored
        windows = padded[i].unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4)  # 9x9 windows
        assert any(torch.equal(w, out[i]) or torch.equal(w.flip(2), out[i]) for w in windows.reshape(-1, 3, 32, 32))
    assert not torch.equal(out, x)
    assert torch.equal(H.augment(x, torch.Generator().manual_seed(0)), out)  # same seed, same augmentation


def test_normalize_is_channels_last_and_standardised(data):
    x = H.normalize(data.x_train)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x[0, :, 0, 0], (data.x_train[0, :, 0, 0] / 255 - torch.tensor(H.MEAN)) / torch.tensor(H.STD))
