"""Per-depth features: equal to a hand-written forward pass, cached = recomputed, split across ranks."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from mimflow_core.checkpoint import save_checkpoint
from mimflow_core.config import get_preset
from mimflow_core.data import load_dataset
from mimflow_core.errors import MIMFlowError
from mimflow_core.model import MIMFlow
from mimflow_lab import depth_features as F
from mimflow_lab import load_model
from mimflow_lab.cli import main
from mimflow_lab.jacobian.synthetic import randomise_outputs
from mimflow_lab.shards import read_finished

MICRO = dict(image_size=16, patch_size=4, enc_depth=1, enc_width=32, enc_heads=2, num_tokens=8, latent_dim=4,
             flow_blocks=(1, 1, 2), flow_width=32, flow_heads=2, dec_depth=1, dec_width=32, dec_heads=2)


def make_checkpoint(path, seed: int = 0, train: dict | None = None, **overrides) -> str:
    """A micro MIMFlow with random (non-identity) flow blocks, saved as a real checkpoint."""
    torch.manual_seed(seed)
    model = MIMFlow(get_preset("tiny", **{**MICRO, **overrides}))
    randomise_outputs(model.flow, std=0.1)
    save_checkpoint(path, model, step=0, train=train or {"variant": "mimflow", "mask_ratio": "0.4-0.6"})
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "micro.pt")


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", 16, "test")


def test_depth_names_and_parsing():
    cfg = get_preset("tiny", **MICRO)
    assert F.depth_names(cfg) == ["encoder", "latent", "0", "1", "2"]
    assert F.depth_names(cfg, layers=True) == ["encoder", "latent", "0", "1", "2.0", "2.1", "2"]
    assert F.parse_depths("all", cfg) == ["encoder", "latent", "0", "1", "2"]
    assert F.parse_depths("2,block:0,latent,latent", cfg) == ["latent", "0", "2"]  # forward order, no repeats
    assert F.parse_depths("2.1", cfg) == ["2.1"] and F.needs_layers(["2.1"])
    with pytest.raises(MIMFlowError, match=r"unknown depth 'deep'; valid: all, encoder, latent, 0, 1, 2\.0, 2\.1, 2"):
        F.parse_depths("encoder,deep", cfg)
    with pytest.raises(MIMFlowError, match="unknown depth '3'"):
        F.parse_depths("3", cfg)


def _manual_pass(model, images, mask_ratio, generator):
    """Every depth by hand: encoder tokens, z, and each block as (x - mu) * exp(-a) in its own token order."""
    enc = model.encoder(images, mask_ratio, generator)
    y = torch.full((images.shape[0],), -1)
    out = {"encoder": enc.features, "latent": enc.z}
    x = enc.z
    for i, block in enumerate(model.flow.blocks):
        x_perm = x.flip(1) if i % 2 == 1 else x
        mu, log_scale = block.conditioner(x_perm, y)
        x_perm = (x_perm - mu) * torch.exp(-log_scale)
        x = x_perm.flip(1) if i % 2 == 1 else x_perm
        out[str(i)] = x
    # the deep block's layers, run one by one on the same inputs its conditioner builds
    deep, last = model.flow.blocks[-1], len(model.flow.blocks) - 1
    z_in = out[str(last - 1)]
    z_perm = z_in.flip(1) if deep.flip else z_in
    h = torch.cat([deep.start.expand(len(images), 1, -1), deep.proj_in(z_perm[:, :-1])], 1)
    h = h + deep.pos_embed + deep.class_embed.weight[-1]  # the "no label" row
    for l, layer in enumerate(deep.transformer.layers):
        h = layer(h)
        out[f"{last}.{l}"] = h.flip(1) if deep.flip else h
    return out


@pytest.mark.parametrize("pool", ["mean", "flat"])
def test_features_equal_manual_forward(ckpt, digits_test, pool):
    model, _ = load_model(ckpt)
    images = torch.stack([digits_test[i][0] for i in range(40)])
    got = F.extract_batch(model, images, 0.5, pool=pool, layers=True, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = _manual_pass(model, images, 0.5, torch.Generator().manual_seed(3))
    assert set(got) == set(want) == set(F.depth_names(model.config, layers=True))
    for name, x in want.items():
        expected = x.mean(1) if pool == "mean" else x.flatten(1)
        torch.testing.assert_close(got[name], expected, rtol=1e-5, atol=1e-5, msg=name)
    # the blocks really transform (randomised outputs), so the comparison is not trivially z == z
    assert not torch.allclose(got["0"], got["latent"], atol=1e-3)


def test_flow_features_use_the_unconditional_label(ckpt, digits_test):
    """With the true label the deep block's output would carry the class: features must not depend on it."""
    model, _ = load_model(ckpt)
    images = torch.stack([digits_test[i][0] for i in range(16)])
    labels = torch.as_tensor(digits_test.labels[:16])
    with torch.no_grad():
        z = model.encode(images).z
        conditional = model.flow(z, labels).block_outputs[-1].mean(1)
        unconditional = model.flow(z, torch.full_like(labels, -1)).block_outputs[-1].mean(1)
    got = F.extract_batch(model, images, 0.0, generator=torch.Generator().manual_seed(0))["2"]
    torch.testing.assert_close(got, unconditional, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, conditional, atol=1e-4)


def test_cache_equals_recomputed_and_resumes(ckpt, digits_test, tmp_path, monkeypatch):
    model, info = load_model(ckpt)
    settings = F.FeatureSettings(split="test", mask_ratio=0.5, layers=True, shard_size=64)  # 300 -> 5 shards
    fresh = F.extract_depth_features(model, digits_test, info.sha256, settings, cache=None, progress=False)
    assert fresh["encoder"].shape == (300, 32) and np.array_equal(fresh["labels"], digits_test.labels)

    calls = []
    real = F.extract_batch

    def crash_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # a crash mid-run
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "extract_batch", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        F.extract_depth_features(model, digits_test, info.sha256, settings, cache=tmp_path, progress=False)
    folder = F.cache_dir(tmp_path, info.sha256, settings, digits_test.fingerprint)
    assert len(list(folder.glob("shard_*.npz"))) == 2 and not list(folder.glob(".*tmp"))

    calls.clear()
    monkeypatch.setattr(F, "extract_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = F.extract_depth_features(model, digits_test, info.sha256, settings, cache=tmp_path, progress=False)
    assert len(calls) == 3  # only the missing shards
    cached = F.extract_depth_features(model, digits_test, info.sha256, settings, cache=tmp_path, progress=False)
    assert len(calls) == 3  # served from features.npz
    without_layers = F.extract_depth_features(model, digits_test, info.sha256,
                                        F.FeatureSettings(split="test", mask_ratio=0.5, shard_size=64),
                                        cache=tmp_path, progress=False)
    assert len(calls) == 3  # an entry with the deep-block layers serves a request without them
    np.testing.assert_array_equal(without_layers["2"], fresh["2"])
    for name in fresh:
        np.testing.assert_array_equal(resumed[name], fresh[name])
        np.testing.assert_array_equal(cached[name], fresh[name])
    # another setting is another cache entry
    other = F.FeatureSettings(split="test", mask_ratio=0.25, layers=True, shard_size=64)
    assert F.cache_dir(tmp_path, info.sha256, other, digits_test.fingerprint) != folder


def test_select_indices_is_class_balanced(digits_test):
    idx = F.select_indices(digits_test.labels, 100, None, seed=0)
    assert np.bincount(digits_test.labels[idx]).tolist() == [10] * 10
    assert np.array_equal(idx, np.sort(idx)) and np.array_equal(idx, F.select_indices(digits_test.labels, 100, None, 0))
    first3 = F.select_indices(digits_test.labels, None, 3, seed=0)
    assert set(digits_test.labels[first3]) == {0, 1, 2} and len(first3) == (digits_test.labels < 3).sum()
    with pytest.raises(MIMFlowError, match="fewer than the 10 classes"):
        F.select_indices(digits_test.labels, 5, None, seed=0)


def _rank_main(rank: int, world: int, init: str, ckpt: str, cache: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model, info = load_model(ckpt)
        dataset = load_dataset("digits", 16, "test")
        settings = F.FeatureSettings(split="test", mask_ratio=0.5, shard_size=64)
        feats = F.extract_depth_features(model, dataset, info.sha256, settings, cache=cache, progress=False)
        np.savez(f"{out}_{rank}.npz", **feats)
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_features(ckpt, digits_test, tmp_path):
    """Rank r computes shards r, r+2, ...; rank 0 merges; every rank gets the same arrays as one process."""
    mp.spawn(_rank_main, args=(2, f"file://{tmp_path / 'init'}", ckpt, str(tmp_path / "cache"),
                               str(tmp_path / "out")), nprocs=2, join=True)
    model, info = load_model(ckpt)
    single = F.extract_depth_features(model, digits_test, info.sha256,
                                F.FeatureSettings(split="test", mask_ratio=0.5, shard_size=64), cache=None,
                                progress=False)
    for rank in (0, 1):
        with np.load(tmp_path / f"out_{rank}.npz") as got:
            for name in single:
                np.testing.assert_allclose(got[name], single[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_refuses_other_image_sizes_before_any_work(ckpt, tmp_path):
    other = make_checkpoint(tmp_path / "big.pt", image_size=32)
    with pytest.raises(MIMFlowError, match=r"big\.pt: trained on 32 px .*micro\.pt on 16 px"):
        F.check_checkpoints([ckpt, other], "digits")
    npz = tmp_path / "imgs.npz"
    np.savez(npz, arr_0=np.zeros((20, 24, 24, 3), np.uint8), arr_1=np.arange(20) % 2)
    with pytest.raises(MIMFlowError, match=r"trained on 16 px images, but .*imgs\.npz holds 24 px"):
        F.check_checkpoints([ckpt], str(npz))


def _image_folder(root, per_class=10):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_cache_follows_the_images_not_only_their_path(ckpt, tmp_path):
    """An image edited in place (same path, new content and mtime) is a new cache entry, never old features."""
    _image_folder(tmp_path / "data")
    model, info = load_model(ckpt)
    settings = F.FeatureSettings(data=str(tmp_path / "data"), split="all", shard_size=8)

    def extract(cache):
        dataset = load_dataset(settings.data, 16, "all")  # scanned again: the fingerprint of what is there now
        return F.extract_depth_features(model, dataset, info.sha256, settings, cache=cache, progress=False)

    before = extract(tmp_path / "cache")
    edited = tmp_path / "data" / "a" / "3.png"
    mtime = edited.stat().st_mtime_ns
    Image.fromarray(np.full((16, 16, 3), 255, np.uint8)).save(edited)
    os.utime(edited, ns=(mtime + 10**9, mtime + 10**9))
    after, fresh = extract(tmp_path / "cache"), extract(None)
    assert not np.allclose(after["encoder"][3], before["encoder"][3])
    np.testing.assert_array_equal(np.delete(after["encoder"], 3, 0), np.delete(before["encoder"], 3, 0))
    for name in fresh:
        np.testing.assert_array_equal(after[name], fresh[name])


@pytest.mark.parametrize("damage, problem", [("truncated", r"unreadable \(File is not a zip file\)"),
                                             ("missing depth", r"lacks 2")])
def test_damaged_cache_entry_is_named_and_recomputed(ckpt, digits_test, tmp_path, damage, problem):
    model, info = load_model(ckpt)
    settings = F.FeatureSettings(split="test", max_samples=40, shard_size=16)
    first = F.extract_depth_features(model, digits_test, info.sha256, settings, cache=tmp_path, progress=False)
    merged = F.cache_dir(tmp_path, info.sha256, settings, digits_test.fingerprint) / "features.npz"
    if damage == "truncated":
        merged.write_bytes(merged.read_bytes()[:100])
    else:
        np.savez(merged, **{k: v for k, v in first.items() if k != "2"})
    with pytest.warns(UserWarning, match=rf"features\.npz: {problem}; discarded, computing it again"):
        again = F.extract_depth_features(model, digits_test, info.sha256, settings, cache=tmp_path, progress=False)
    assert set(again) == set(first)
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])
    assert read_finished(merged, first["indices"], first) is not None  # rewritten whole


def test_cli_bad_data_file_is_one_line_and_exit_2(ckpt, tmp_path, capsys):
    bad = tmp_path / "cut.npz"
    np.savez(bad, np.zeros((10, 16, 16, 3), np.uint8))
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(SystemExit) as exit_info:
        main(["features", ckpt, "--data", str(bad), "--out", str(tmp_path / "out"), "--no-cache"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{bad}: not an npz file, or a truncated one" in err
