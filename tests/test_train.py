"""Trainer: losses fall, exact resume, phase 2 trains only the decoder, baselines, CLI errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mimflow_core.checkpoint import load_checkpoint
from mimflow_core.errors import MIMFlowError
from mimflow_core.train import MaskPolicy, TrainOptions, train
from mimflow_lab import load_model
from tests.conftest import SHORT_RECIPE


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_sixty_steps_every_loss_term_falls_and_outputs_are_written(phase1_run):
    out, result = phase1_run
    lines = [r for r in _log(out) if "loss" in r]
    assert [r["step"] for r in lines] == list(range(5, 61, 5))
    for term in ("rec_l2", "nll", "aux_hog", "loss"):
        first, last = np.mean([r[term] for r in lines[:2]]), np.mean([r[term] for r in lines[-2:]])
        assert last < first, (term, first, last)
    assert all(0.4 <= r["mask_ratio"] <= 0.6 for r in lines)
    # eval.json agrees with an independent recomputation from the saved checkpoint's EMA weights
    saved = json.loads((out / "eval.json").read_text())
    assert saved["heldout_images"] == 300 and saved == json.loads(json.dumps(result))
    model, info = load_model(out / "ckpt.pt")
    from mimflow_core.data import load_dataset
    test = load_dataset("digits", 32, "test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    with torch.no_grad():
        mse = (model.decode(model.encode(x).z) - x).pow(2).flatten(1).mean(1)
    assert abs(mse.mean().item() - saved["recon_mse"]) < 1e-4
    assert abs((10 * torch.log10(4 / mse)).mean().item() - saved["recon_psnr_db"]) < 1e-3
    assert info.step == 60 and info.phase == 1 and info.weights == "ema"
    for key, value in dict(data="digits", mask_ratio="0.4-0.6", variant="mimflow", num_tokens=16, noise_sigma=0.3,
                           aux="hog", steps=60, batch_size=32, flow_weight=0.03, phase=1).items():
        assert info.train[key] == value, key
    grid = np.asarray(Image.open(out / "samples.png"))
    assert grid.ndim == 3 and grid.std() > 1  # an actual image, not a blank canvas


def test_resume_continues_exactly_across_an_epoch_boundary_with_beta_warmup(tmp_path):
    rng = np.random.default_rng(0)  # 36 training images (10% held out), batch 8: 4 batches per epoch; flips on
    np.savez(tmp_path / "d.npz", rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 4)
    common = dict(data=str(tmp_path / "d.npz"), batch_size=8, log_every=1, evaluate=False, aux="hog",
                  flow_warmup_steps=4, lr=1e-4, warmup_steps=0, flow_weight=1.0)  # the paper's recipe: beta -> 1
    train(TrainOptions(out=str(tmp_path / "straight"), steps=7, **common))
    train(TrainOptions(out=str(tmp_path / "split"), steps=4, **common))
    train(TrainOptions(out=str(tmp_path / "split"), steps=7, **common), resume=True)
    a, b = (load_checkpoint(tmp_path / name / "ckpt.pt") for name in ("straight", "split"))
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a["resume"]["optimizer"]["state"], b["resume"]["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert (b["resume"]["epoch"], b["resume"]["batch_in_epoch"]) == (1, 3)
    lines = [r for r in _log(tmp_path / "split") if "loss" in r]
    assert [r["step"] for r in lines] == list(range(1, 8))
    assert [r["beta"] for r in lines] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]  # --flow-warmup-steps 4


def test_phase2_trains_only_the_decoder_and_discriminator(phase1_run, tmp_path):
    out1, _ = phase1_run
    train(TrainOptions(out=str(tmp_path), phase=2, init=str(out1 / "ckpt.pt"), steps=4, batch_size=8,
                       log_every=2, evaluate=False, lr=1e-3))
    init, ckpt = load_checkpoint(out1 / "ckpt.pt"), load_checkpoint(tmp_path / "ckpt.pt")
    changed = {k.split(".")[0] for k in ckpt["model"] if not torch.equal(ckpt["model"][k], init["ema"][k])}
    assert changed == {"decoder"}
    assert ckpt["phase"] == 2 and ckpt["train"]["phase1"]["steps"] == 60
    assert ckpt["train"]["mask_ratio"] == "0.4-0.6" and "disc" in ckpt["resume"]
    lines = [r for r in _log(tmp_path) if "loss" in r]
    assert all({"gan_d", "gan_g", "rec_l2"} <= set(r) and "nll" not in r for r in lines)


def test_starflow_trains_autoencoder_then_flow_with_softplus_and_no_gate(tmp_path):
    train(TrainOptions(out=str(tmp_path), variant="starflow", steps=4, ae_steps=2, batch_size=8, log_every=1,
                       evaluate=False))
    lines = [r for r in _log(tmp_path) if "loss" in r]
    assert [r["stage"] for r in lines] == ["autoencoder"] * 2 + ["flow"] * 2
    assert all("nll" not in r and r["mask_ratio"] == 0 for r in lines[:2])
    assert all("rec_l2" not in r and "nll" in r for r in lines[2:])
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert ckpt["config"]["flow_scale"] == "softplus" and ckpt["config"]["flow_gated_attn"] is False
    assert ckpt["config"]["aux_dim"] == 0 and ckpt["train"]["variant"] == "starflow"


def test_table5_ablations_are_expressible():
    for text, kind in (("none", "none"), ("0.2-0.4", "range"), ("0.4-0.6", "range"), ("0.6-0.8", "range"),
                       ("mix", "mix")):
        policy = MaskPolicy.parse(text)
        assert policy.kind == kind and str(policy) == text
    g = torch.Generator().manual_seed(0)
    ratios = np.array([MaskPolicy.parse("mix").sample(g) for _ in range(2000)])
    assert 0.45 < (ratios == 0).mean() < 0.55 and ratios[ratios > 0].min() >= 0.4 and ratios.max() <= 0.6
    ratios = np.array([MaskPolicy.parse("0.6-0.8").sample(g) for _ in range(2000)])
    assert ratios.min() >= 0.6 and ratios.max() <= 0.8 and abs(ratios.mean() - 0.7) < 0.01
    opts = TrainOptions(out="x", tokens=8, sigma=0.5, aux="none", mask_ratio="mix").resolved()
    assert (opts.tokens, opts.sigma, opts.aux, opts.mask_ratio) == (8, 0.5, "none", "mix")
    assert TrainOptions(out="x", variant="e2e-nomask").resolved().mask_ratio == "none"


def test_a_preset_carries_its_training_recipe_and_given_options_win():
    tiny = TrainOptions(out="x").resolved()
    assert (tiny.lr, tiny.warmup_steps, tiny.flow_weight, tiny.batch_size) == (1e-3, 50, 0.03, 32)
    paper = TrainOptions(out="x", preset="L").resolved()
    assert (paper.lr, paper.warmup_steps, paper.flow_weight, paper.batch_size) == (1e-4, 0, 1.0, 256)
    given = TrainOptions(out="x", lr=2e-3, flow_weight=1.0).resolved()
    assert (given.lr, given.warmup_steps, given.flow_weight) == (2e-3, 50, 1.0)
    gan = TrainOptions(out="x", phase=2, init="p1/ckpt.pt").resolved()  # phase 2: the paper's lr, no warm-up
    assert (gan.lr, gan.warmup_steps) == (1e-4, 0)
    with pytest.raises(MIMFlowError, match="unknown preset"):
        TrainOptions(out="x", preset="XL").resolved()
    assert "[preset's: 0.001 for tiny/digits/small, 0.0001 for base/L; phase 2: 0.0001]" in " ".join(
        _cli("--help").stdout.split())


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "train", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("args, message", [
    (["--perceptual-weight", "1.1"], "--lpips-backbone PATH"),
    (["--phase", "2"], "--init"),
    (["--variant", "e2e-nomask", "--mask-ratio", "0.4-0.6"], "without masking"),
    (["--mask-ratio", "0.9-0.2"], "LO <= HI"),
    (["--data", "/nonexistent/folder"], "no such dataset"),
])
def test_cli_bad_options_fail_with_one_line(tmp_path, args, message):
    proc = _cli("--out", str(tmp_path / "run"), "--steps", "1", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_refuses_to_overwrite_and_resumes(phase1_run):
    out, _ = phase1_run
    proc = _cli("--out", str(out), "--steps", "90")
    assert proc.returncode == 2 and "--resume" in proc.stderr
    proc = _cli("--out", str(out), "--steps", "90", "--resume", "--mask-ratio", "0.2-0.4")
    assert proc.returncode == 2 and "differs from the run" in proc.stderr


def test_an_evaluation_only_resume_reports_the_training_it_evaluates(phase1_run, tmp_path):
    """Resuming a finished run only evaluates; eval.json must still say how long the training took."""
    import shutil

    out, first = phase1_run
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    second = train(TrainOptions(out=str(copy), steps=60, log_every=5, ckpt_every=30, **SHORT_RECIPE), resume=True)
    assert second["step"] == first["step"] == 60
    assert second["recon_psnr_db"] == first["recon_psnr_db"]
    # the checkpoint stores the loop's time at its last save (step 60), just before the first evaluation
    assert 0.8 * first["train_wall_s"] <= second["train_wall_s"] <= first["train_wall_s"] + 1.0
