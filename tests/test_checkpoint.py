"""Checkpoint round trip, the public loader, and every bad-file case (CLI: one line, exit code 2)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from mimflow_core.checkpoint import FORMAT, save_checkpoint
from mimflow_core.errors import MIMFlowError
from mimflow_core.model import MIMFlow
from mimflow_lab import load_model
from mimflow_lab.jacobian.synthetic import randomise_outputs


@pytest.fixture
def saved(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = MIMFlow(tiny_config).eval()
    randomise_outputs(model.flow)
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, ema_state=ema, step=42, phase=2,
                    train={"data": "digits", "mask_ratio": "0.4-0.6", "variant": "mimflow"})
    return path, model


def test_round_trip_reproduces_outputs_exactly(saved):
    path, model = saved
    loaded, info = load_model(path, weights="raw")
    assert info.step == 42 and info.phase == 2 and info.weights == "raw" and info.variant == "mimflow"
    assert info.config == model.config
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.tensor([1, 2])
    with torch.no_grad():
        a = model.encode(x, 0.5, torch.Generator().manual_seed(0))
        b = loaded.encode(x, 0.5, torch.Generator().manual_seed(0))
        assert torch.equal(a.z, b.z)
        assert torch.equal(model.flow(a.z, y).eps, loaded.flow(b.z, y).eps)
        assert torch.equal(model.decode(a.z), loaded.decode(b.z))


def test_ema_weights_are_the_default(saved):
    path, model = saved
    ema_model, info = load_model(path)
    assert info.weights == "ema"
    name = "decoder.head.bias"
    assert torch.allclose(ema_model.state_dict()[name], model.state_dict()[name] + 0.01)
    assert not ema_model.training


def _write(path, obj):
    torch.save(obj, path)
    return path


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


def bad_files(tmp_path, good):
    ckpt = torch.load(good, weights_only=True)
    wrong_shape = dict(ckpt, model={**ckpt["model"], "decoder.head.bias": torch.zeros(3)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    return {
        "missing": (tmp_path / "absent.pt", "no such checkpoint file"),
        "not a checkpoint": (text, "not a PyTorch checkpoint"),
        "truncated": (truncated, "truncated or corrupt"),
        "wrong format": (_write(tmp_path / "v9.pt", dict(ckpt, format="mimflow-lab/9")), "unsupported checkpoint format"),
        "foreign dict": (_write(tmp_path / "sd.pt", ckpt["model"]), "not a mimflow-lab checkpoint"),
        "mismatched weights": (_write(tmp_path / "shape.pt", wrong_shape), "do not match the stored config"),
        "bad config": (_write(tmp_path / "cfg.pt", dict(ckpt, config={**ckpt["config"], "patch_size": 5})), "patch_size"),
        "malicious pickle": (_write(tmp_path / "evil.pt", {"format": FORMAT, "payload": _RunsCode()}), "refused to load"),
        **{f"config {key}={value!r:.20}": (_write(tmp_path / f"cfg-{i}.pt", dict(ckpt, config={**ckpt["config"], key: value})),
                                          message)
           for i, (key, value, message) in enumerate(BAD_CONFIGS)},
        **{f"field {key}={value!r}": (_write(tmp_path / f"field-{i}.pt", dict(ckpt, **{key: value})), message)
           for i, (key, value, message) in enumerate(BAD_FIELDS)},
        "integer weights": (_write(tmp_path / "int.pt", dict(ckpt, model={k: v.long() for k, v in ckpt["model"].items()})),
                            "wrong dtype (e.g. decoder.head.bias)"),
        "NaN weights": (_write(tmp_path / "nan.pt", dict(ckpt, ema=_poisoned(ckpt["ema"], float("nan")))),
                        "ema weights: 1 tensor(s) hold NaN or Inf (first: decoder.head.bias, 1 of"),
        "Inf weights": (_write(tmp_path / "inf.pt", dict(ckpt, ema=None, model=_poisoned(ckpt["model"], float("inf")))),
                        "raw weights: 1 tensor(s) hold NaN or Inf (first: decoder.head.bias"),
    }


# (config key, value, what the one line says): zero and negative sizes, wrong types, and sizes so absurd that building
# the model would exhaust memory, refused before a single tensor is allocated.
BAD_CONFIGS = [
    ("patch_size", 0, "patch_size 0 must be >= 1"),
    ("enc_heads", 0, "enc_heads 0 must be >= 1"),
    ("image_size", -4, "image_size -4 must be >= 1"),
    ("image_size", "32", "image_size must be an int, not '32'"),
    ("num_tokens", 16.0, "num_tokens must be an int, not 16.0"),
    ("flow_gated_attn", "yes", "flow_gated_attn must be a bool"),
    ("noise_sigma", float("nan"), "noise_sigma must be a finite number"),
    ("flow_blocks", "2,2", "flow_blocks must be a list of integers"),
    ("channels", 4, "channels 4 must be 1 (grey) or 3 (RGB)"),
    ("enc_depth", 10 ** 9, "parameters, more than the 2e+10"),
    ("flow_blocks", [2] * 10 ** 5, "parameters, more than the 2e+10"),
    ("flow_width", 10 ** 9, "parameters, more than the 2e+10"),
    ("num_classes", 10 ** 9, "parameters, more than the 2e+10"),
    ("disc_layers", 10 ** 9, "disc_layers 1000000000 halves 32 px images"),
]
BAD_FIELDS = [
    ("step", "1000", "'step' must be a non-negative integer, not '1000'"),
    ("step", -1, "'step' must be a non-negative integer"),
    ("phase", 3, "'phase' must be 1 or 2, not 3"),
    ("config", [1, 2], "'config' must be a dict, not list"),
    ("train", "digits", "'train' must be a dict, not str"),
    ("train", {"seed": "zero"}, "train.seed must be an integer, not 'zero'"),
]


def _poisoned(state: dict, value: float) -> dict:
    bias = state["decoder.head.bias"].clone()
    bias[0] = value
    return {**state, "decoder.head.bias": bias}


def test_every_bad_file_gives_its_error(tmp_path, saved, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real_model = MIMFlow

    def no_invalid_model(config):  # an absurd config must be refused from its numbers, not by running out of memory
        assert not case.startswith("config "), "a model was built from an invalid config"
        return real_model(config)

    monkeypatch.setattr("mimflow_core.checkpoint.MIMFlow", no_invalid_model)
    for case, (path, message) in bad_files(tmp_path, saved[0]).items():
        with pytest.raises(MIMFlowError) as err:
            load_model(path)
        assert message in str(err.value), case
        assert str(path) in str(err.value) and "\n" not in str(err.value), case
    assert not (tmp_path / "pwned_marker").exists()


def test_cli_reports_bad_files_in_one_line_with_exit_code_2(tmp_path, saved):
    cases = bad_files(tmp_path, saved[0])
    for case in ("truncated", "malicious pickle", "mismatched weights"):
        path, message = cases[case]
        run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "info", str(path)],
                             capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 2, (case, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in run.stderr, (case, run.stderr)
    assert not (tmp_path / "pwned_marker").exists()


def test_info_shows_a_diverged_checkpoint_with_a_warning_and_analyses_refuse_it(tmp_path, saved):
    path = bad_files(tmp_path, saved[0])["NaN weights"][0]
    shown = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "info", str(path), "--json"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "warning" in shown.stderr and "decoder.head.bias" in shown.stderr
    import json
    assert "decoder.head.bias" in json.loads(shown.stdout)["nonfinite"]
    refused = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "jacobian", str(path), "--out",
                              str(tmp_path / "jac"), "--device", "cpu"], capture_output=True, text=True)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert str(path) in lines[0] and "decoder.head.bias" in lines[0] and not (tmp_path / "jac").exists()


def test_cli_info_summarises_a_checkpoint(saved):
    run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "info", str(saved[0]), "--json"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    import json
    summary = json.loads(run.stdout)
    model = saved[1]
    assert summary["step"] == 42 and summary["train"]["data"] == "digits"
    assert summary["parameters"]["flow"] == sum(p.numel() for p in model.flow.parameters())
    assert summary["config"]["num_tokens"] == model.config.num_tokens


def test_label_names_variant_mask_and_a_non_default_seed(tmp_path):
    from mimflow_core.checkpoint import CheckpointInfo
    from mimflow_core.config import get_preset

    def label(**train):
        return CheckpointInfo(tmp_path / "ckpt.pt", get_preset("tiny"), 0, 1, train=train).label

    assert label(variant="mimflow", mask_ratio="0.4-0.6", seed=0) == "mimflow (mask 0.4-0.6)"
    assert label(variant="mimflow", mask_ratio="0.4-0.6", seed=1) == "mimflow (mask 0.4-0.6, seed 1)"
    assert label(variant="starflow") == "starflow" and label() == "ckpt"
