"""Datasets: digits split and upscaling, ADM centre crop, folders with bad files, npz files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

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
