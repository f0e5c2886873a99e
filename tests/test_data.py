"""Datasets: digits split and upscaling, ADM centre crop, folders with bad files, npz files."""
from __future__ import annotations

import io
import json
import os
import re
import struct
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from mimflow_core.atomic import write_json
from mimflow_core.data import center_crop_arr, load_dataset
from mimflow_core.errors import MIMFlowError


def test_digits_split_is_fixed_stratified_and_complete():
    train = load_dataset("digits", 16, "train")
    test = load_dataset("digits", 16, "test")
    full = load_dataset("digits", 16, "all")
    assert (len(train), len(test), len(full)) == (1497, 300, 1797)
    assert train.num_classes == test.num_classes == 10 and train.class_names[3] == "3"
    # every image lands in exactly one split: the two splits together are the full set (as a multiset)
    def rows(ds):
        return sorted(map(tuple, ds.images.reshape(len(ds), -1).tolist()))
    assert sorted(rows(train) + rows(test)) == rows(full)
    counts = np.bincount(test.labels, minlength=10)
    expected = np.bincount(load_digits().target) * 300 / 1797
    assert np.all(np.abs(counts - expected) <= 1)  # stratified
    assert np.array_equal(load_dataset("digits", 16, "test").labels, test.labels)  # fixed
    assert np.bincount(train.labels, minlength=10).sum() + counts.sum() == 1797


def test_digits_pixels_match_pil_bilinear_upscale():
    ds = load_dataset("digits", 32, "all")
    raw = load_digits()
    for i in (0, 17, 1796):
        ref = Image.fromarray((raw.images[i] / 16.0).astype(np.float32), mode="F").resize((32, 32), Image.BILINEAR)
        ref = np.asarray(ref) * 2 - 1
        image, label = ds[i]
        assert image.shape == (3, 32, 32) and label == raw.target[i]
        assert torch.equal(image[0], image[2])
        np.testing.assert_allclose(image[1].numpy(), ref, atol=1e-5)
    assert ds.images.min() >= -1 and ds.images.max() <= 1


def test_flip_is_deterministic_per_epoch_and_off_by_default():
    plain = load_dataset("digits", 16, "train")
    flipped = load_dataset("digits", 16, "train", flip=True, seed=3)
    n = 200
    first = [torch.equal(flipped[i][0], plain[i][0].flip(-1)) for i in range(n)]
    again = [torch.equal(flipped[i][0], plain[i][0].flip(-1)) for i in range(n)]
    assert first == again and 60 < sum(first) < 140
    for i in range(n):  # every image is either itself or its mirror
        assert first[i] or torch.equal(flipped[i][0], plain[i][0])
    flipped.set_epoch(1)
    assert [torch.equal(flipped[i][0], plain[i][0].flip(-1)) for i in range(n)] != first


def test_center_crop_box_halving_is_exact_and_crop_is_centred():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((4, 4, 1), np.uint8))  # 32x32 of 4x4 blocks
    assert np.array_equal(center_crop_arr(Image.fromarray(big), 8), base)
    wide = rng.integers(0, 256, (16, 40, 3), dtype=np.uint8)  # no resize needed, crop (40-16)//2 = 12
    assert np.array_equal(center_crop_arr(Image.fromarray(wide), 16), wide[:, 12:28])
    small = center_crop_arr(Image.fromarray(rng.integers(0, 256, (10, 13, 3), dtype=np.uint8)), 16)
    assert small.shape == (16, 16, 3)


def _write_folder(root, rng):
    for cls, n in (("cat", 3), ("dog", 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "empty").mkdir()
    (root / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(root / "dog" / "dot.png")


def test_image_folder_skips_bad_files_with_warning_or_fails_when_strict(tmp_path):
    rng = np.random.default_rng(1)
    _write_folder(tmp_path, rng)
    with pytest.warns(UserWarning, match=r"1 class folder.*empty.*1 unreadable.*1 odd-sized"):
        ds = load_dataset(str(tmp_path), 8, "all")
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1]
    image, label = ds[4]
    ref = np.asarray(Image.open(tmp_path / "dog" / "1.png"))
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), ref / 127.5 - 1, atol=1e-6)
    with pytest.raises(MIMFlowError, match="strict"):
        load_dataset(str(tmp_path), 8, "all", strict=True)


def test_image_folder_uses_train_val_subfolders(tmp_path):
    rng = np.random.default_rng(2)
    _write_folder(tmp_path / "train", rng)
    for cls in ("cat", "dog"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(tmp_path / "val" / cls / "v.png")
    (tmp_path / "val" / "empty").mkdir()
    with pytest.warns(UserWarning):
        test = load_dataset(str(tmp_path), 8, "test")
    assert len(test) == 2 and test.labels.tolist() == [0, 1] and test[0][0].shape == (3, 8, 8)


def test_npz_roundtrip_labels_resize_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "s.npz", arr, labels)
    ds = load_dataset(str(tmp_path / "s.npz"), 8, "all")
    assert ds.num_classes == 4 and np.array_equal(ds.labels, labels)
    np.testing.assert_allclose(ds[7][0].permute(1, 2, 0).numpy(), arr[7] / 127.5 - 1, atol=1e-6)
    train, test = (load_dataset(str(tmp_path / "s.npz"), 8, s) for s in ("train", "test"))
    assert len(train) + len(test) == 40 and np.bincount(test.labels).tolist() == [1, 1, 1, 1]
    halved = load_dataset(str(tmp_path / "s.npz"), 4, "all")
    expected = arr.reshape(40, 4, 2, 4, 2, 3).astype(np.float64).mean(axis=(2, 4))  # BOX halving
    np.testing.assert_allclose((halved.images.permute(0, 2, 3, 1).numpy() + 1) * 127.5, expected, atol=1.0)  # PIL rounds in fixed point
    np.savez(tmp_path / "nolabels.npz", arr)
    assert load_dataset(str(tmp_path / "nolabels.npz"), 8, "all").num_classes == 1
    np.savez(tmp_path / "bad.npz", arr.astype(np.float32))
    with pytest.raises(MIMFlowError, match="uint8"):
        load_dataset(str(tmp_path / "bad.npz"), 8)


def test_bad_specs_raise_one_line_errors(tmp_path):
    with pytest.raises(MIMFlowError, match="no such dataset"):
        load_dataset(str(tmp_path / "missing"), 8)
    with pytest.raises(MIMFlowError, match="split"):
        load_dataset("digits", 8, "validation")  # "val" names the held-out split now (test below)
    (tmp_path / "only_empty").mkdir()
    with pytest.raises(MIMFlowError, match="no usable images"):
        load_dataset(str(tmp_path / "only_empty"), 8)


def test_balanced_subset_is_exact_seeded_and_class_balanced():
    from mimflow_core.data import balanced_subset

    labels = np.repeat(np.arange(10), [30] * 9 + [2])  # sorted by class, as an ImageFolder is; class 9 is rare
    for n in (7, 10, 25, 100):
        chosen = balanced_subset(labels, n, seed=3)
        counts = np.bincount(labels[chosen], minlength=10)
        assert chosen.size == n and np.array_equal(chosen, np.unique(chosen))
        assert counts[:9].max() - counts[:9].min() <= 1 and counts[9] == min(2, counts[:9].min())
    assert np.array_equal(balanced_subset(labels, 25, 3), balanced_subset(labels, 25, 3))
    assert not np.array_equal(balanced_subset(labels, 25, 3), balanced_subset(labels, 25, 4))
    assert not np.array_equal(balanced_subset(labels, 10, 0), np.arange(10))  # not the first files


def test_val_names_the_held_out_split_in_the_library_too():
    from mimflow_core.data import load_dataset

    val, test = load_dataset("digits", 8, "val"), load_dataset("digits", 8, "test")
    assert len(val) == len(test) == 300 and np.array_equal(val.labels, test.labels)
    with pytest.raises(MIMFlowError, match="'holdout' is not one of train, test, all"):
        load_dataset("digits", 8, "holdout")


# ---------------------------------------------------------------------------- hostile files (issue 14)
def _image(path, side=16, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def _two_classes(root, n=3):
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _image(root / cls / f"{i}.png", seed=i)


def test_16_bit_grey_png_keeps_its_range(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "a" / "grey16.png")
    assert Image.open(tmp_path / "a" / "grey16.png").mode == "I;16"  # what PIL reopens it as
    image, _ = load_dataset(str(tmp_path), 8, "all")[0]
    np.testing.assert_allclose(image.numpy(), 30000 / 65535 * 2 - 1, atol=1 / 127.5)  # not 1.0 (white)


def test_truncated_png_and_jpeg_are_skipped_or_refused_when_strict(tmp_path):
    _two_classes(tmp_path)
    png = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(png[: len(png) // 2])
    _image(tmp_path / "whole.jpg", side=64)
    jpeg = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "b" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "b" / "padded.jpg").write_bytes(jpeg + bytes(1000))  # zeros after the EOI marker: whole
    with pytest.warns(UserWarning, match=r"2 unreadable or truncated image\(s\) \(first: .*cut\.png\)") as caught:
        ds = load_dataset(str(tmp_path), 8, "all")
    assert len(caught) == 1 and len(ds) == 7 and all("cut" not in f.name for f in ds.files)
    assert ds[ds.files.index(tmp_path / "b" / "padded.jpg")][0].shape == (3, 8, 8)
    with pytest.raises(MIMFlowError, match=r"cut\.png.*strict") as refused:
        load_dataset(str(tmp_path), 8, "all", strict=True)
    assert "\n" not in str(refused.value)


def test_a_file_that_fails_to_decode_at_load_names_itself(tmp_path):
    _two_classes(tmp_path)
    ds = load_dataset(str(tmp_path), 8, "all")
    png = ds.files[0].read_bytes()
    ds.files[0].write_bytes(png[:40] + bytes(len(png) - 52) + png[-12:])  # header and IEND intact, data zeroed
    with pytest.raises(MIMFlowError, match=r"a/0\.png: cannot decode image") as failed:
        ds[0]
    assert "\n" not in str(failed.value)


def test_decompression_bombs_are_skipped_as_too_large(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    for name, side in (("fine.png", 8), ("warns.png", 12), ("raises.png", 16)):  # 64, 144 > 100, 256 > 2 x 100
        _image(tmp_path / "a" / name, side)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(str(tmp_path), 8, "all")
    assert [f.name for f in ds.files] == ["fine.png"]
    assert [w.category for w in caught] == [UserWarning]  # no stray DecompressionBombWarning
    assert re.search(r"2 too-large image\(s\), over PIL's limit of 100 pixels", str(caught[0].message))


def test_odd_file_names_scan_load_and_report(tmp_path, capsys):
    _two_classes(tmp_path, n=2)
    odd = [os.fsdecode(b"\xff\xfe.png"), "with space.png", "new\nline.png", "\u00fcn\u00ef\U0001f600.png"]
    for i, name in enumerate(odd):
        _image(tmp_path / "a" / name, seed=10 + i)
    (tmp_path / "a" / os.fsdecode(b"bad\xff\nname.png")).write_bytes(b"junk")
    odd_class = os.fsdecode(b"cl\xffass\nname")
    (tmp_path / odd_class).mkdir()
    _image(tmp_path / odd_class / "x.png")
    with pytest.warns(UserWarning) as caught:
        ds = load_dataset(str(tmp_path), 8, "all")
    assert sorted(f.name for f in ds.files if f.name not in ("0.png", "1.png", "x.png")) == sorted(odd)
    assert all(ds[i][0].shape == (3, 8, 8) for i in range(len(ds)))
    message = str(caught[0].message)
    assert "\n" not in message and r"bad\udcff\nname.png" in message
    print(message)  # printing it must not raise UnicodeEncodeError
    message.encode("utf-8")
    assert "1 unreadable" in capsys.readouterr().out
    assert ds.class_names == ["a", "b", odd_class]
    write_json(tmp_path / "names.json", {"class_names": ds.class_names})  # as the analyses record them
    assert json.loads((tmp_path / "names.json").read_text())["class_names"] == ds.class_names


def test_small_folders_split_unstratified_or_refuse(tmp_path):
    _two_classes(tmp_path / "four", n=2)  # 1 held out < 2 classes: stratifying is impossible, a plain split works
    train, test = (load_dataset(str(tmp_path / "four"), 8, s) for s in ("train", "test"))
    assert (len(train), len(test)) == (3, 1) and not set(train.files) & set(test.files)
    (tmp_path / "one" / "a").mkdir(parents=True)
    _image(tmp_path / "one" / "a" / "only.png")
    assert len(load_dataset(str(tmp_path / "one"), 8, "all")) == 1
    with pytest.raises(MIMFlowError, match=r"one: 1 image\(s\) in 1 class\(es\); holding out 1 needs at least 2; "
                                           r"use split 'all'"):
        load_dataset(str(tmp_path / "one"), 8, "test")


def _forge_stored_size(path, size):
    """Patch the uncompressed size of a zip's only (stored) member, in its local and central headers."""
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    data[22:26] = data[central + 24: central + 28] = struct.pack("<I", size)
    path.write_bytes(bytes(data))


def _npy_header(shape):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _bad_npz(tmp_path, case):
    path, images = tmp_path / f"{case}.npz", np.zeros((10, 8, 8, 3), np.uint8)
    if case == "truncated":
        np.savez(path, images, np.arange(10) % 2)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case in ("huge", "forged"):
        shape = (10**12, 32, 32, 3) if case == "huge" else (10**6, 32, 32, 3)  # 3 TB; 3 GB within a forged 4 GB
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("arr_0.npy", _npy_header(shape) + bytes(1000))
        if case == "forged":
            _forge_stored_size(path, 0xFFFFFFF0)
    elif case == "objects":
        np.savez(path, np.array([1, "a", None], dtype=object))
    elif case == "string labels":
        np.savez(path, images, np.array(["cat"] * 10))
    elif case == "float labels":
        np.savez(path, images, np.linspace(0, 1, 10))
    elif case == "huge label":
        np.savez(path, images, np.full(10, 10**12))
    elif case == "empty":
        np.savez(path, np.zeros((0, 8, 8, 3), np.uint8))
    return path


@pytest.mark.parametrize("case, message", [
    ("truncated", r"not an npz file, or a truncated one"),
    ("huge", r"arr_0 declares shape \(1000000000000, 32, 32, 3\) of uint8 \(3072000000000000 bytes\) "
             r"but holds 1000 bytes; the file is truncated or corrupt"),
    ("forged", r"arr_0 declares shape \(1000000, 32, 32, 3\) .* but holds \d+ bytes"),
    ("objects", r"arr_0 holds Python objects"),
    ("string labels", r"arr_1 must hold integer class labels, got <U3 \(10,\)"),
    ("float labels", r"arr_1 must hold integer class labels, got float64 \(10,\)"),
    ("huge label", r"arr_1 labels must lie in 0\.\.99999, got 1000000000000\.\.1000000000000"),
    ("empty", r"arr_0 holds no images"),
])
def test_bad_npz_files_raise_one_line_errors(tmp_path, case, message):
    path = _bad_npz(tmp_path, case)
    with pytest.raises(MIMFlowError, match=message) as refused:
        load_dataset(str(path), 8, "all")
    assert str(refused.value).startswith(f"{path}: ") and "\n" not in str(refused.value)
