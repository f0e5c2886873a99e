"""``--encoder`` (a TorchScript the test saves) and ``--ref-val`` on ``evaluate``: preprocessing against a hand
computation and PIL, every metric in the encoder's space against independent math, the cache, and bad input."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mimflow_core.errors import MIMFlowError
from mimflow_lab.cli import main
from mimflow_lab.metrics.encoders import Encoder, parse_encoder_spec, parse_encoder_specs
from tests.test_metrics import brute_force_precision_recall, exact_frechet
from tests.test_metrics_cli import run_cli
from tests.test_metrics_inception import foolbox_images, save_torchscript, torchscript_or_skip

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class PooledProjection(torch.nn.Module):
    """A tiny encoder: 4x4 average pool, then a fixed random projection to ``dim`` features."""

    def __init__(self, dim: int = 4, seed: int = 0):
        super().__init__()
        self.register_buffer("w", torch.randn(48, dim, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 4).flatten(1) @ self.w


class Identity(torch.nn.Module):
    """Returns its input unchanged (4-d: not features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Flatten(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Pair(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flatten(1), x.flatten(1)


def hand_dinov2(images: np.ndarray) -> torch.Tensor:
    """dgm-eval's DINOv2 input, written out: [0, 1], bicubic to 224 (antialiased), ImageNet normalisation."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torchscript_or_skip()
    root = tmp_path_factory.mktemp("encoder")
    np.savez(root / "ref.npz", foolbox_images("cifar10", 8))
    np.savez(root / "samples.npz", foolbox_images("cifar100", 6))
    np.savez(root / "val.npz", foolbox_images("cifar10", 16)[8:])  # held out: the next 8 CIFAR-10 images
    save_torchscript(PooledProjection(), root / "proj.pt")
    return root


@pytest.fixture(scope="module")
def evaluated(files):
    out = files / "out"
    lines = run_cli(["evaluate", str(files / "ref.npz"), str(files / "samples.npz"), "--batch-size", "4",
                     "--encoder", f"proj={files / 'proj.pt'}:dinov2", "--ref-val", str(files / "val.npz"),
                     "--bootstrap", "3", "--out", str(out)])
    return json.loads((out / "metrics.json").read_text()), lines


def test_preprocessing_equals_the_hand_computation_and_pil(files, tmp_path):
    """The dinov2 preset == the hand computation exactly, and PIL's bicubic resize (dgm-eval's) to within its
    uint8 rounding; the none preset hands [0, 1] images over at their own size."""
    images = np.concatenate([foolbox_images("cifar10", 2), foolbox_images("imagenet", 2, size=256)[:, :32, :32]])
    encoder = Encoder(parse_encoder_spec(f"{files / 'proj.pt'}:dinov2"))
    torch.testing.assert_close(encoder.preprocess(images), hand_dinov2(images), rtol=0, atol=1e-6)
    big = foolbox_images("imagenet", 2, size=256)  # downsampled: the antialiasing matters
    pil = np.stack([np.asarray(Image.fromarray(im).resize((224, 224), Image.BICUBIC)) for im in big]) / 255
    ours = encoder.preprocess(big) * torch.tensor(IMAGENET_STD)[:, None, None] + \
        torch.tensor(IMAGENET_MEAN)[:, None, None]
    diff = np.abs(ours.permute(0, 2, 3, 1).double().numpy() - pil) * 255
    assert diff.mean() < 0.5 and diff.max() < 4, (diff.mean(), diff.max())
    raw = Encoder(parse_encoder_spec(save_torchscript(Flatten(), tmp_path / "flat.pt")))
    np.testing.assert_allclose(raw.features(images), images.transpose(0, 3, 1, 2).reshape(4, -1) / 255, atol=1e-7)


def test_every_metric_in_the_encoder_space_equals_independent_math(files, evaluated):
    metrics, lines = evaluated
    proj = PooledProjection()
    feats = {}
    for name in ("ref", "samples", "val"):
        with np.load(files / f"{name}.npz") as data, torch.no_grad():
            feats[name] = proj(hand_dinov2(data["arr_0"])).double().numpy()
    ref, fake, val = feats["ref"], feats["samples"], feats["val"]
    m = metrics["encoders"]["proj"]
    assert m["fd"] == pytest.approx(exact_frechet(fake, ref), rel=1e-4)
    assert m["fd_val"] == pytest.approx(exact_frechet(val, ref), rel=1e-4)
    assert m["fd_r"] == pytest.approx(exact_frechet(fake, ref) / exact_frechet(val, ref), rel=1e-4)
    assert (m["precision"], m["recall"]) == brute_force_precision_recall(ref, fake)
    from prdc.prdc import compute_nearest_neighbour_distances, compute_pairwise_distance
    from torch_fidelity.metric_kid import kid_features_to_metric

    radii, d = compute_nearest_neighbour_distances(ref, 5), compute_pairwise_distance(ref, fake)
    assert m["density"] == pytest.approx((d < radii[:, None]).sum(axis=0).mean() / 5, rel=1e-6)
    assert m["coverage"] == pytest.approx((d.min(axis=1) < radii).mean(), rel=1e-6)
    theirs = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(ref), verbose=False,
                                    kid_subsets=m["kid_subsets"], kid_subset_size=m["kid_subset_size"])
    assert m["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-6)
    assert m["bootstrap"]["fd"]["replicates"] == 3
    identity = m["identity"]
    assert identity["sha256"] == hashlib.sha256((files / "proj.pt").read_bytes()).hexdigest()
    assert identity["preset"] == "dinov2" and identity["preprocessing"]["mean"] == list(IMAGENET_MEAN)
    assert [line.split(":")[0] for line in lines[:6]] == ["Computing evaluations...", "Inception Score", "FID", "sFID",
                                                          "Precision", "Recall"]
    assert any(line.startswith(f"proj: FD {m['fd']:.4g}, FD_r {m['fd_r']:.4g}") for line in lines), lines


def test_ref_val_fid_r_divides_by_the_fid_of_the_held_out_images(files, evaluated, tmp_path):
    """FID_r's denominator equals `evaluate REF VAL`'s FID, computed as a separate run."""
    metrics, lines = evaluated
    run_cli(["evaluate", str(files / "ref.npz"), str(files / "val.npz"), "--batch-size", "4",
             "--out", str(tmp_path / "val")])
    val_fid = json.loads((tmp_path / "val" / "metrics.json").read_text())["fid"]
    assert metrics["fid_val"] == pytest.approx(val_fid, rel=1e-9)
    assert metrics["fid_r"] == pytest.approx(metrics["fid"] / val_fid, rel=1e-9)
    assert metrics["ref_val"] == str(files / "val.npz") and metrics["num_ref_val"] == 8
    assert f"FID_r: {metrics['fid_r']} (FID of --ref-val: {metrics['fid_val']})" in lines


def test_reference_encoder_features_are_cached_by_sha256_and_preset(files, evaluated, monkeypatch):
    """A rerun reads the reference's (and --ref-val's) encoder features from the cache; another preset does not."""
    from mimflow_lab.metrics import cache

    calls = []
    real = cache.npz_encoder_features
    monkeypatch.setattr(cache, "npz_encoder_features", lambda e, path, *a: calls.append(path) or real(e, path, *a))
    run_cli(["evaluate", str(files / "ref.npz"), str(files / "samples.npz"), "--batch-size", "4",
             "--encoder", f"proj={files / 'proj.pt'}:dinov2", "--ref-val", str(files / "val.npz"),
             "--out", str(files / "again")])
    assert calls == []
    again = json.loads((files / "again" / "metrics.json").read_text())
    assert again["encoders"]["proj"]["fd"] == evaluated[0]["encoders"]["proj"]["fd"]
    run_cli(["evaluate", str(files / "ref.npz"), str(files / "samples.npz"), "--batch-size", "4",
             "--encoder", f"proj={files / 'proj.pt'}:clip", "--out", str(files / "clip")])
    assert calls == [str(files / "ref.npz")]


@pytest.mark.parametrize("spec, expected", [
    ("enc.pt", ("enc", "enc.pt", "none")),
    ("enc.pt:clip", ("enc", "enc.pt", "clip")),
    ("d=enc.pt:dinov2", ("d", "enc.pt", "dinov2")),
    ("v1:x/enc.pt", ("enc", "v1:x/enc.pt", "none")),  # a ':' inside the path is no preset
])
def test_spec_syntax(tmp_path, monkeypatch, spec, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v1:x").mkdir()
    for path in ("enc.pt", "v1:x/enc.pt"):
        (tmp_path / path).write_bytes(b"")
    parsed = parse_encoder_spec(spec)
    assert (parsed.name, str(parsed.path), parsed.preset) == expected


def test_two_encoders_of_one_name_are_refused(tmp_path):
    (tmp_path / "enc.pt").write_bytes(b"")
    with pytest.raises(MIMFlowError, match="two encoders named 'enc'"):
        parse_encoder_specs([str(tmp_path / "enc.pt"), f"{tmp_path / 'enc.pt'}:clip"])


def _bad_encoder(tmp_path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "missing.pt")
    if kind == "preset":
        return f"{save_torchscript(Flatten(), tmp_path / 'ok.pt')}:dino"
    if kind == "directory":
        (tmp_path / "hubrepo").mkdir()
        return str(tmp_path / "hubrepo")
    if kind == "state_dict":
        torch.save(PooledProjection().state_dict(), tmp_path / "sd.pt")
        return str(tmp_path / "sd.pt")
    if kind == "garbage":
        (tmp_path / "garbage.pt").write_bytes(b"not a zip at all")
        return str(tmp_path / "garbage.pt")
    return save_torchscript({"4d": Identity(), "tuple": Pair()}[kind], tmp_path / f"{kind}.pt")


@pytest.mark.parametrize("kind, message", [
    ("missing", "no such file .*missing.pt; provide a TorchScript encoder file"),
    ("preset", "unknown preset 'dino'; choose one of dinov2, clip, none"),
    ("directory", "hubrepo is a directory \\(a torch.hub repository\\?\\)"),
    ("state_dict", "sd.pt: not a TorchScript file"),
    ("garbage", "garbage.pt: not a TorchScript file"),
    ("4d", "4d.pt: output \\(2, 3, 32, 32\\) for 2 images; an encoder must return one \\(N, d\\) tensor"),
    ("tuple", "tuple.pt: output tuple for 2 images"),
])
def test_bad_encoders_are_one_line_and_keep_earlier_results(tmp_path, capsys, kind, message):
    """Refused before any Inception work; an earlier metrics.json is byte-identical."""
    images = np.full((4, 32, 32, 3), 200, np.uint8)
    np.savez(tmp_path / "ref.npz", images)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text('{"fid": 1.0}')
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "ref.npz"), str(tmp_path / "ref.npz"), "--encoder",
              _bad_encoder(tmp_path, kind), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("mimflow-lab: error: --encoder ")
    assert re.search(message, err[0]), err[0]
    assert (tmp_path / "out" / "metrics.json").read_text() == '{"fid": 1.0}'
