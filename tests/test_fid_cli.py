"""``mimflow-lab fid``: sampling + features on the fly, shards, resume, torchrun (2 Gloo processes), rFID.

A tiny random-init MIMFlow (flow outputs randomised, so the flow is not the
identity) samples a handful of 32 px images; the Inception is the real one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mimflow_core.checkpoint import save_checkpoint
from mimflow_core.config import get_preset
from mimflow_core.data import load_dataset
from mimflow_core.model import MIMFlow
from mimflow_lab import sampling
from mimflow_lab.cli import main
from mimflow_lab.metrics import to_uint8
from mimflow_lab.sampling import balanced_labels, sample_noise
from mimflow_lab.shards import ShardPlan, merge_shards
from mimflow_lab.jacobian.synthetic import randomise_outputs
from tests.test_metrics_cli import run_cli
from tests.test_metrics_inception import foolbox_images, torchscript_or_skip

METRIC_KEYS = ("fid", "sfid", "precision", "recall")
SAMPLES, BATCH = 6, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torchscript_or_skip()
    root = tmp_path_factory.mktemp("fid")
    torch.manual_seed(0)
    model = MIMFlow(get_preset("tiny"))
    randomise_outputs(model.flow, std=0.05, generator=torch.Generator().manual_seed(1))
    save_checkpoint(root / "tiny.pt", model, step=1, train={"variant": "mimflow"})
    np.savez(root / "ref.npz", foolbox_images("cifar10", 8), np.arange(8))
    return root


def fid_args(root: Path, out: str, *extra: str) -> list[str]:
    return ["fid", str(root / "tiny.pt"), "--samples", str(SAMPLES), "--batch-size", str(BATCH), "--cfg", "2.0",
            "--seed", "3", "--ref", str(root / "ref.npz"), "--out", str(root / out), *extra]


@pytest.fixture(scope="module")
def single_run(setup):
    """One uninterrupted single-process run that also saves its samples as an ADM npz."""
    run_cli(fid_args(setup, "run1", "--save-npz", str(setup / "samples.npz")))
    return json.loads((setup / "run1" / "metrics.json").read_text())


def merged(out: Path) -> dict[str, np.ndarray]:
    return merge_shards(ShardPlan(SAMPLES, BATCH, out / "shards"))


def test_samples_saved_and_reevaluated_give_the_same_metrics(setup, single_run):
    """Features on the fly == features of the same samples written to npz and read back by `evaluate`."""
    with np.load(setup / "samples.npz") as saved:
        assert saved["arr_0"].shape == (SAMPLES, 32, 32, 3) and saved["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(saved["arr_1"], balanced_labels(3, SAMPLES, 10))
        np.testing.assert_array_equal(saved["arr_0"], merged(setup / "run1")["images"])
    run_cli(["evaluate", str(setup / "ref.npz"), str(setup / "samples.npz"), "--out", str(setup / "ev")])
    evaluated = json.loads((setup / "ev" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert single_run[key] == evaluated[key], key
    assert single_run["inception_score"] is None and single_run["run"]["cfg"] == 2.0


def test_interrupted_run_resumes_to_identical_metrics(setup, single_run, monkeypatch):
    out = setup / "run_resume"
    out.mkdir()
    real = sampling.inception_features
    calls = []

    def crash_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "inception_features", crash_on_second_shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_cli(fid_args(setup, "run_resume", "--save-npz", str(setup / "resumed.npz")))
    plan = ShardPlan(SAMPLES, BATCH, out / "shards")
    assert plan.missing() == [1] and not (out / "metrics.json").exists()
    first_shard = plan.path(0).stat().st_mtime_ns
    monkeypatch.setattr(sampling, "inception_features", real)
    run_cli(fid_args(setup, "run_resume", "--save-npz", str(setup / "resumed.npz")))
    assert plan.path(0).stat().st_mtime_ns == first_shard  # the finished shard was not redone
    resumed = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert resumed[key] == single_run[key], key
    for key, value in merged(setup / "run1").items():
        np.testing.assert_array_equal(merged(out)[key], value, err_msg=key)


def test_changed_options_refuse_to_resume(setup, single_run, capsys):
    before = ShardPlan(SAMPLES, BATCH, setup / "run1" / "shards").path(0).stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:  # the last --cfg wins
        main(fid_args(setup, "run1", "--save-npz", str(setup / "samples.npz"), "--cfg", "1.5"))
    assert exit_info.value.code == 2
    assert "cfg 2.0 -> 1.5" in capsys.readouterr().err
    assert ShardPlan(SAMPLES, BATCH, setup / "run1" / "shards").path(0).stat().st_mtime_ns == before


def test_two_gloo_processes_give_the_same_samples_and_metrics(setup, single_run):
    out = setup / "run_ddp"
    out.mkdir()
    # Same threads per process as the in-process run: CPU kernels' summation order depends on the thread count.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mimflow_lab.cli", *fid_args(setup, "run_ddp", "--save-npz", str(setup / "ddp.npz"))],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "shards (rank 1)" in result.stderr  # both ranks did work
    ddp = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert ddp[key] == single_run[key], key
    for key, value in merged(setup / "run1").items():
        np.testing.assert_array_equal(merged(out)[key], value, err_msg=key)


def test_rfid_equals_evaluate_of_originals_and_reconstructions(setup, tmp_path):
    run_cli(["fid", str(setup / "tiny.pt"), "--rfid", "digits", "--split", "test", "--samples", "4", "--batch-size", "2",
             "--save-npz", str(tmp_path / "recon.npz"), "--out", str(tmp_path / "rfid")])
    metrics = json.loads((tmp_path / "rfid" / "metrics.json").read_text())
    dataset = load_dataset("digits", 32, "test")
    originals = to_uint8(torch.stack([dataset[i][0] for i in range(4)])).numpy()
    np.savez(tmp_path / "originals.npz", originals)
    run_cli(["evaluate", str(tmp_path / "originals.npz"), str(tmp_path / "recon.npz"), "--out",
             str(tmp_path / "ev")])
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(evaluated[key], rel=1e-12, abs=1e-12), key
    assert metrics["run"]["mode"] == "reconstruction" and metrics["fid"] > 0


def test_rfid_against_a_reference_batch_skips_the_originals_and_equals_evaluate(setup, tmp_path):
    """With --ref the originals are not run through the Inception (no real_* features), and the numbers are
    those of `evaluate REF RECONSTRUCTIONS`."""
    ref = tmp_path / "ref.npz"
    np.savez(ref, foolbox_images("cifar10", 6), np.arange(6))
    run_cli(["fid", str(setup / "tiny.pt"), "--rfid", "digits", "--samples", "4", "--batch-size", "2", "--ref", str(ref),
             "--save-npz", str(tmp_path / "recon.npz"), "--out", str(tmp_path / "rfid")])
    metrics = json.loads((tmp_path / "rfid" / "metrics.json").read_text())
    with np.load(tmp_path / "rfid" / "shards" / "shard_000000.npz") as shard:
        assert "pool" in shard.files and not any(k.startswith("real_") for k in shard.files)
    run_cli(["evaluate", str(ref), str(tmp_path / "recon.npz"), "--out", str(tmp_path / "ev")])
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(evaluated[key], rel=1e-12, abs=1e-12), key
    assert metrics["run"]["reference"] == str(ref)


def test_noise_and_labels_depend_only_on_seed_and_index():
    whole = sample_noise(7, np.arange(8), (4, 2))
    torch.testing.assert_close(sample_noise(7, np.array([5, 2]), (4, 2)), whole[[5, 2]], atol=0, rtol=0)
    assert not torch.equal(sample_noise(8, np.arange(8), (4, 2)), whole)
    labels = balanced_labels(0, 1003, 10)
    assert np.bincount(labels).tolist() == [101, 101, 101] + [100] * 7
    assert (balanced_labels(0, 5, 0) == -1).all()


def _copy_of_run1(setup, name: str) -> Path:
    import shutil

    out = setup / name
    shutil.copytree(setup / "run1", out)
    (out / "metrics.json").unlink()
    return out


@pytest.mark.parametrize("damage", ["run.json", "shard"])
def test_a_damaged_run_json_or_shard_is_named_discarded_and_recomputed(setup, single_run, capsys, damage):
    out = _copy_of_run1(setup, f"damaged_{damage}")
    shard = ShardPlan(SAMPLES, BATCH, out / "shards").path(1)
    if damage == "run.json":
        (out / "run.json").write_text('{"checkpoint_sha256": "ab')
    else:
        shard.write_bytes(shard.read_bytes()[:500])
    main(fid_args(setup, f"damaged_{damage}", "--save-npz", str(out / "samples.npz")))
    named = [line for line in capsys.readouterr().err.splitlines() if str(out) in line and "wrote" not in line]
    assert len(named) == 1 and "warning" in named[0] and "discarded" in named[0], named
    assert (damage if damage == "run.json" else shard.name) in named[0]
    resumed = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert resumed[key] == single_run[key], key


def _full_disk_for(monkeypatch, name: str) -> None:
    """Make the atomic writer's fsync fail with ENOSPC for temp files of ``name`` only (the disk fills there)."""
    import errno

    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").rsplit("/", 1)[-1].startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to tell which file is being written")
@pytest.mark.parametrize("target", ["samples.npz", "shard_000001.npz"])
def test_a_full_disk_is_one_line_and_leaves_earlier_results_byte_identical(setup, single_run, monkeypatch, capsys,
                                                                           target):
    out = setup / f"full_{target}"
    out.mkdir()
    earlier = out / "samples.npz"
    earlier.write_bytes(b"an earlier result")
    _full_disk_for(monkeypatch, target)
    with pytest.raises(SystemExit) as exit_info:
        main(fid_args(setup, out.name, "--save-npz", str(earlier)))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # progress bars and warnings besides
    assert exit_info.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert target in errors[0] and "No space left on device" in errors[0] and "unchanged" in errors[0]
    assert earlier.read_bytes() == b"an earlier result"
    assert not list(out.rglob("*.tmp")) and not (out / "metrics.json").exists()
    if target.startswith("shard"):
        assert ShardPlan(SAMPLES, BATCH, out / "shards").missing() == [1]  # the finished shard is kept
    monkeypatch.undo()
    main(fid_args(setup, out.name, "--save-npz", str(earlier)))  # space again: the run finishes where it stopped
    resumed = json.loads((out / "metrics.json").read_text())
    assert all(resumed[key] == single_run[key] for key in METRIC_KEYS)


def test_fid_bootstrap_zero_is_refused_before_any_sampling(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fid", "missing.pt", "--ref", str(tmp_path / "ref.npz"), "--bootstrap", "0",
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "--bootstrap 0: need at least 1 replicate" in err[-1]
    assert not (tmp_path / "out").exists()


def test_fid_encoder_features_live_in_the_shards_and_equal_evaluate_of_the_saved_samples(setup, single_run, tmp_path,
                                                                                         monkeypatch):
    """--encoder on fid: the Inception metrics are those of the run without it; the encoder's equal `evaluate
    --encoder` on the saved samples; a rerun samples nothing; another preset is another run (refused)."""
    from tests.test_metrics_encoder import PooledProjection
    from tests.test_metrics_inception import save_torchscript

    enc = save_torchscript(PooledProjection(), tmp_path / "proj.pt")
    args = fid_args(setup, "run_enc", "--save-npz", str(tmp_path / "s.npz"), "--encoder", f"proj={enc}:dinov2")
    run_cli(args)
    metrics = json.loads((setup / "run_enc" / "metrics.json").read_text())
    assert all(metrics[key] == single_run[key] for key in METRIC_KEYS)
    with np.load(setup / "run_enc" / "shards" / "shard_000000.npz") as shard:
        assert shard["encoder_proj"].shape == (BATCH, 4)
    run_cli(["evaluate", str(setup / "ref.npz"), str(tmp_path / "s.npz"), "--encoder", f"proj={enc}:dinov2",
             "--out", str(tmp_path / "ev")])
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())["encoders"]["proj"]
    for key in ("fd", "precision", "recall", "kid", "density", "coverage"):
        assert metrics["encoders"]["proj"][key] == pytest.approx(evaluated[key], rel=1e-5, abs=1e-9), key
    assert metrics["run"]["encoders"] == [{"name": "proj", "sha256": evaluated["identity"]["sha256"],
                                           "preset": "dinov2"}]

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished run sampled again")

    monkeypatch.setattr(sampling, "inception_features", no_sampling)
    run_cli(args)
    with pytest.raises(SystemExit) as exit_info:
        main(args[:-1] + [f"proj={enc}:clip"])
    assert exit_info.value.code == 2


def test_fid_bad_encoder_is_refused_before_sampling_and_keeps_metrics(setup, tmp_path, capsys):
    from tests.test_metrics_encoder import Identity
    from tests.test_metrics_inception import save_torchscript

    out = setup / "bad_enc"
    out.mkdir()
    (out / "metrics.json").write_text('{"fid": 1.0}')
    bad = save_torchscript(Identity(), tmp_path / "id.pt")
    for spec, needle in ((str(tmp_path / "nope.pt"), "no such file"), (bad, "an encoder must return one (N, d)")):
        with pytest.raises(SystemExit) as exit_info:
            main(fid_args(setup, "bad_enc", "--encoder", spec))
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and needle in err[-1] and "Traceback" not in "".join(err)
    assert (out / "metrics.json").read_text() == '{"fid": 1.0}' and not (out / "shards").exists()


def test_rfid_encoder_compares_reconstructions_with_the_originals_in_the_encoder_space(setup, tmp_path):
    """--rfid without --ref: the originals' encoder features come from the dataset (real_encoder_*), and FD is
    that of the encoder's features of the saved reconstructions against those of the originals."""
    from tests.test_metrics import exact_frechet
    from tests.test_metrics_encoder import PooledProjection, hand_dinov2
    from tests.test_metrics_inception import save_torchscript

    enc = save_torchscript(PooledProjection(), tmp_path / "proj.pt")
    run_cli(["fid", str(setup / "tiny.pt"), "--rfid", "digits", "--samples", "6", "--batch-size", "3",
             "--save-npz", str(tmp_path / "recon.npz"), "--encoder", f"{enc}:dinov2", "--out", str(tmp_path / "r")])
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    dataset = load_dataset("digits", 32, "test")
    originals = to_uint8(torch.stack([dataset[i][0] for i in range(6)])).numpy()
    with np.load(tmp_path / "recon.npz") as saved, torch.no_grad():
        fake = PooledProjection()(hand_dinov2(saved["arr_0"])).double().numpy()
        real = PooledProjection()(hand_dinov2(originals)).double().numpy()
    assert metrics["encoders"]["proj"]["fd"] == pytest.approx(exact_frechet(fake, real), rel=1e-4)


def test_fid_ref_val_is_scored_from_finished_shards_like_evaluate(setup, single_run, tmp_path):
    """--ref-val is not part of the run's identity: added to a finished run it rescores the shards and gives FID_r,
    with the denominator `evaluate REF VAL` computes."""
    np.savez(tmp_path / "val.npz", foolbox_images("cifar10", 14)[8:])
    out = _copy_of_run1(setup, "ref_val")
    run_cli(fid_args(setup, "ref_val", "--save-npz", str(out / "samples.npz"), "--ref-val", str(tmp_path / "val.npz")))
    metrics = json.loads((out / "metrics.json").read_text())
    run_cli(["evaluate", str(setup / "ref.npz"), str(tmp_path / "val.npz"), "--out", str(tmp_path / "ev")])
    val_fid = json.loads((tmp_path / "ev" / "metrics.json").read_text())["fid"]
    assert metrics["fid"] == single_run["fid"] and metrics["fid_val"] == pytest.approx(val_fid, rel=1e-9)
    assert metrics["fid_r"] == pytest.approx(single_run["fid"] / val_fid, rel=1e-9)
    assert metrics["ref_val"] == str(tmp_path / "val.npz")


def test_fid_bootstrap_rescores_finished_shards_like_evaluate_and_a_big_kid_subset_is_refused(setup, single_run,
                                                                                              tmp_path, capsys):
    out = _copy_of_run1(setup, "bootstrap")
    extra = ("--bootstrap", "3", "--kid-subset-size", "5")
    run_cli(fid_args(setup, "bootstrap", "--save-npz", str(out / "samples.npz"), *extra))
    metrics = json.loads((out / "metrics.json").read_text())
    run_cli(["evaluate", str(setup / "ref.npz"), str(out / "samples.npz"), *extra, "--out", str(tmp_path / "ev")])
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["fid"] == single_run["fid"] and metrics["kid_subset_size"] == 5
    for key in ("fid", "sfid", "precision", "recall", "density", "coverage", "kid"):
        assert metrics["bootstrap"][key] == evaluated["bootstrap"][key], key  # the same features: the same draws
    before = (out / "metrics.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(fid_args(setup, "bootstrap", "--kid-subset-size", str(SAMPLES + 1)))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].endswith(
        f"--kid-subset-size {SAMPLES + 1}: the samples holds {SAMPLES} images, fewer than one subset (KID draws "
        f"subsets without replacement); pass at most {SAMPLES} or leave the option out")
    assert (out / "metrics.json").read_text() == before
