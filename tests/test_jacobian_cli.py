"""``mimflow-lab jacobian`` end to end on tiny checkpoints, checked against an independent exact SVD."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mimflow_core.checkpoint import save_checkpoint
from mimflow_core.config import get_preset
from mimflow_core.data import load_dataset
from mimflow_core.layers import math_attention
from mimflow_core.model import MIMFlow
from mimflow_lab import load_model
from mimflow_lab.cli import main
from mimflow_lab.jacobian import plot_jacobian

K, D = 8, 8


def _checkpoint(path, std: float, variant: str, seed: int):
    torch.manual_seed(seed)
    config = get_preset("tiny", num_tokens=K, latent_dim=D, flow_blocks=(2, 1, 2), flow_width=32, flow_heads=2,
                        enc_width=32, enc_heads=2, enc_depth=1, dec_width=32, dec_heads=2, dec_depth=1)
    model = MIMFlow(config)
    with torch.no_grad():
        for block in model.flow.blocks:  # a new flow is the identity; make its Jacobian non-trivial
            block.proj_out.weight.normal_(0.0, std)
            block.proj_out.bias.normal_(0.0, std)
    save_checkpoint(path, model, step=7, train={"variant": variant, "mask_ratio": 0.5})
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("jacobian")
    a = _checkpoint(root / "mimflow.pt", 0.05, "mimflow", 0)
    b = _checkpoint(root / "starflow.pt", 0.1, "starflow", 1)
    out = root / "out"
    main(["jacobian", str(a), "--compare", str(b), "--samples", "6", "--batch-size", "4", "--out", str(out)])
    return root, a, b, out, json.loads((out / "jacobian.json").read_text())


def _exact_svd(ckpt, z, y):
    """σ of the flow's Jacobian by plain jacrev + svdvals, independent of mimflow_lab.jacobian."""
    model, _ = load_model(ckpt)
    flow = model.flow.double()
    f = lambda v, label: flow(v.view(1, K, D), label).eps.reshape(-1)  # noqa: E731
    with math_attention():
        J = torch.stack([torch.func.jacrev(f)(z[i].reshape(-1), y[i:i + 1]) for i in range(len(z))])
    return torch.linalg.svdvals(J.detach())


def test_result_file_matches_exact_svd(run):
    root, a, b, out, result = run
    assert [m["label"] for m in result["models"]] == ["mimflow (mask 0.5)", "starflow (mask 0.5)"]
    with np.load(out / "latents.npz") as f:
        z, zc, y = (torch.from_numpy(f[k]) for k in ("z", "z_compare", "y"))
    assert z.shape == zc.shape == (6, K, D)
    digits = load_dataset("digits", image_size=32, split="test")
    indices = result["settings"]["indices"]  # a seeded class-balanced subset, not the first six images
    assert len(indices) == 6 and y.tolist() == digits.labels[indices].tolist() and len(set(y.tolist())) == 6
    assert indices != list(range(6))
    model, _ = load_model(a)  # the latents really are this model's encodings of the recorded test images
    with torch.no_grad():
        images = torch.stack([digits[i][0] for i in indices])
        torch.testing.assert_close(model.encode(images).z.double(), z, rtol=1e-5, atol=1e-6)
    for entry, ckpt, latents in zip(result["models"], (a, b), (z, zc)):
        sv = _exact_svd(ckpt, latents, y)
        samples = entry["samples"]
        assert entry["summary"]["n_ok"] == 6 and all(s["ok"] and s["converged"] for s in samples)
        np.testing.assert_allclose([s["sigma_max"] for s in samples], sv[:, 0], rtol=1e-4)
        np.testing.assert_allclose([s["sigma_min"] for s in samples], sv[:, -1], rtol=1e-4)
        np.testing.assert_allclose([s["logdet_per_dim"] for s in samples], sv.log().sum(1) / (K * D), atol=1e-8)
        assert all(s["products"]["Jinv"] > 0 and s["products"]["total"] < 200 for s in samples)
    assert (out / "fig5_jacobian.png").stat().st_size > 10_000 and (out / "fig5_jacobian.pdf").exists()


def test_saved_latents_reproduce_the_result_and_the_figure_redraws_from_json(run, tmp_path):
    root, a, b, out, result = run
    main(["jacobian", str(a), "--compare", str(b), "--latents", str(out / "latents.npz"), "--method", "exact",
          "--out", str(tmp_path)])
    again = json.loads((tmp_path / "jacobian.json").read_text())
    # a --latents run records what the file held, not the defaults of --data / --samples it did not use
    assert again["settings"]["data"] is None and again["settings"]["samples"] == 6
    for first, second in zip(result["models"], again["models"]):
        for key in ("sigma_max", "sigma_min"):
            np.testing.assert_allclose([s[key] for s in second["samples"]], [s[key] for s in first["samples"]],
                                       rtol=1e-4)
    paths = plot_jacobian(out / "jacobian.json", tmp_path / "redrawn")
    assert set(paths) == {"png", "pdf"} and all((tmp_path / f"redrawn.{k}").exists() for k in paths)


def test_source_samples_and_first_blocks(run, tmp_path):
    root, a, _, _, _ = run
    main(["jacobian", str(a), "--source", "samples", "--samples", "3", "--blocks", "2", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "jacobian.json").read_text())
    assert result["settings"]["blocks"] == 2 and result["models"][0]["summary"]["n_ok"] == 3
    with np.load(tmp_path / "latents.npz") as f:
        z = torch.from_numpy(f["z"])
    model, _ = load_model(a)
    flow = model.flow.double()
    with torch.no_grad():  # z = f⁻¹(ε): the flow maps it back to a finite Gaussian draw
        eps = flow(z, torch.from_numpy(np.load(tmp_path / "latents.npz")["y"])).eps
    assert torch.isfinite(eps).all() and 0.5 < eps.std() < 1.5


def _bad_latents(root):
    z = np.zeros((2, K, D))
    z[1, 0, 0] = np.nan
    np.savez(root / "nan.npz", z=z, y=np.array([0, 1]))
    return ["--latents", str(root / "nan.npz")]


def _latents_file(root, case):
    """A latents file broken in one way: each must be refused before any work, naming the file."""
    path = root / f"{case}.npz"
    good = dict(z=np.zeros((2, K, D)), y=np.array([0, 1]))
    if case == "truncated":
        np.savez(path, **good)
        path.write_bytes(path.read_bytes()[:300])
    elif case == "huge":  # a header that declares 10^12 latents over a few bytes: refused before allocating
        import io
        import zipfile
        member = io.BytesIO()
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False,
                                                      "shape": (10 ** 12, K, D)})
        member.write(b"\0" * 64)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("z.npy", member.getvalue())
    else:
        z = {"strings": np.full((2, K, D), "a"), "empty": np.zeros((0, K, D)), "inf": np.full((2, K, D), np.inf),
             "objects": np.array([None, 1], dtype=object)}.get(case, good["z"])
        y = np.array([0.5, 1.5]) if case == "float-labels" else good["y"]
        np.savez(path, z=z, y=y, allow_pickle=True) if case == "objects" else np.savez(path, z=z, y=y)
    return ["--latents", str(path)]


@pytest.mark.parametrize("case, needle", [
    ("truncated", "truncated"), ("huge", "declares shape (1000000000000, 8, 8)"),
    ("strings", "'z' must be a non-empty array of numbers, got <U1"), ("empty", "'z' must be a non-empty array"),
    ("inf", "2 latent(s) contain NaN or Inf"), ("objects", "holds Python objects"),
    ("float-labels", "'y' must be a non-empty array of integer labels, got float64"),
])
def test_a_bad_latents_file_is_one_line_and_writes_nothing(run, tmp_path, capsys, case, needle):
    a = run[1]
    args = _latents_file(tmp_path, case)
    with pytest.raises(SystemExit) as exit_info:
        main(["jacobian", str(a), *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert needle in err and args[1] in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", ['{"abc": {"0": [{"sigma', '[1, 2]', '{"abc": {"0": [{"index": 0}]}}', "\x00\xff"])
def test_a_corrupt_partial_result_is_named_and_discarded(tmp_path, content):
    from mimflow_lab.jacobian.analysis import read_partial

    path = tmp_path / "jacobian.partial.json"
    path.write_text(content, errors="surrogateescape")
    with pytest.warns(UserWarning, match="jacobian.partial.json: unreadable partial results, discarded"):
        assert read_partial(path) == {}


def test_a_torn_partial_result_is_named_and_the_run_still_finishes(run, tmp_path, capsys):
    a = run[1]
    out = tmp_path / "out"
    out.mkdir()
    (out / "jacobian.partial.json").write_text('{"abc": {"0": [{"sigma')
    main(["jacobian", str(a), "--samples", "2", "--batch-size", "2", "--method", "exact", "--out", str(out)])
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mimflow-lab: warning:")]
    assert len(warned) == 1 and "jacobian.partial.json: unreadable partial results, discarded" in warned[0]
    assert json.loads((out / "jacobian.json").read_text())["models"][0]["summary"]["n"] == 2
    assert not (out / "jacobian.partial.json").exists()


def _flowless(root, a):
    ckpt = torch.load(a, weights_only=True)
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if not k.startswith("flow.")}
    torch.save(ckpt, root / "noflow.pt")
    return root / "noflow.pt"


def test_several_compares_and_the_old_batch_spelling(run, tmp_path, capsys):
    root, a, b, _, _ = run
    main(["jacobian", str(a), "--compare", str(b), "--compare", str(a), "--samples", "2", "--batch", "2",
          "--source", "samples", "--out", str(tmp_path)])
    assert "--batch is now --batch-size" in capsys.readouterr().err
    result = json.loads((tmp_path / "jacobian.json").read_text())
    assert len(result["models"]) == 3 and result["settings"]["batch"] == 2
    with np.load(tmp_path / "latents.npz") as f:
        assert {"z", "z_compare", "z_compare2", "y"} <= set(f.files)
        np.testing.assert_array_equal(f["z"], f["z_compare2"])  # the same model on the same noise


def test_method_choices_match_the_estimators():
    from mimflow_lab.commands.jacobian import METHODS as shown
    from mimflow_lab.jacobian import METHODS

    assert sorted(shown) == sorted(METHODS)


@pytest.mark.parametrize("case, needle", [
    ("nan", "NaN or Inf"), ("samples", "only 300 test images"), ("method", "'svd' is not one of"),
    ("noflow", "noflow.pt"), ("blocks", "--blocks 9"),
])
def test_bad_input_is_one_line_and_exit_code_2(run, tmp_path, capsys, case, needle):
    root, a, _, _, _ = run
    args = {"nan": [str(a)] + _bad_latents(tmp_path), "samples": [str(a), "--samples", "100000"],
            "method": [str(a), "--method", "svd"], "noflow": [str(_flowless(tmp_path, a))],
            "blocks": [str(a), "--blocks", "9"]}[case]
    with pytest.raises(SystemExit) as exit_info:
        main(["jacobian", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


# ------------------------------------------------------------------ --spectrum and --per-block (Figure 5b)
def _exact_blocks(ckpt, z, y):
    """svdvals of every block's Jacobian at the point it sees, and of the whole flow's, by plain jacrev."""
    model, _ = load_model(ckpt)
    flow = model.flow.double()
    blocks, x, whole = [], z, None
    with math_attention():
        for block in flow.blocks:
            f = lambda v, label, block=block: block(v.view(1, K, D), label)[0].reshape(-1)  # noqa: E731
            J = torch.stack([torch.func.jacrev(f)(x[i].reshape(-1), y[i:i + 1]) for i in range(len(z))]).detach()
            blocks.append(torch.linalg.svdvals(J))
            whole = J if whole is None else J @ whole
            x = block(x, y)[0]
    return blocks, torch.linalg.svdvals(whole)


def test_spectrum_and_per_block_for_both_models(run, tmp_path, capsys):
    from scipy.stats import wasserstein_distance

    root, a, b, _, _ = run
    out = tmp_path / "out"
    main(["jacobian", str(a), "--compare", str(b), "--samples", "2", "--batch-size", "2", "--spectrum",
          "--per-block", "--out", str(out)])
    assert "spectrum: " in capsys.readouterr().out
    result = json.loads((out / "jacobian.json").read_text())
    edges = np.asarray(result["spectrum_bin_edges_log10_sigma"])
    with np.load(out / "latents.npz") as f:
        latents = [torch.from_numpy(f[k]) for k in ("z", "z_compare")]
        y = torch.from_numpy(f["y"])
    for entry, ckpt, z in zip(result["models"], (a, b), latents):
        assert {"sigma_max", "sigma_min", "kappa", "ok", "checks", "products"} <= entry["samples"][0].keys()
        blocks, whole = _exact_blocks(ckpt, z, y)
        for i, s in enumerate(entry["samples"]):
            per_block, spectrum = s["per_block"], s["spectrum"]
            assert per_block["ok"] and spectrum["ok"], (spectrum["slq_logdet"], spectrum["slq_logdet_se"],
                                                         spectrum["exact_logdet"])
            for blk, sv in zip(per_block["blocks"], blocks):
                assert blk["sigma_max"] == pytest.approx(sv[i, 0].item(), rel=1e-4)
                assert blk["sigma_min"] == pytest.approx(sv[i, -1].item(), rel=1e-4)
            exact = whole[i].log10().numpy()
            w1 = wasserstein_distance(exact, spectrum["nodes_log10_sigma"], None, spectrum["weights"])
            assert w1 <= 0.05
            assert spectrum["exact_logdet"] == pytest.approx(whole[i].log().sum().item(), abs=1e-8)
            assert np.allclose(spectrum["histogram"], np.histogram(spectrum["nodes_log10_sigma"], edges,
                                                                   weights=spectrum["weights"])[0])
        assert entry["summary"]["spectrum"]["n_certified"] == 2 and entry["summary"]["per_block"]["n_ok"] == 2
    assert (out / "fig5b_spectrum.png").stat().st_size > 10_000 and (out / "fig5b_spectrum.pdf").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--method", "paper"], "--spectrum combines with --method fast only"),
    (["--method", "exact"], "--spectrum combines with --method fast only"),
    (["--probes", "0"], "--probes 0, --lanczos-steps 40, --inverse-steps 40: need at least 2 probes"),
    (["--lanczos-steps", "-3"], "--lanczos-steps -3"),
    (["--inverse-steps", "0"], "--inverse-steps 0: need"),
])
def test_bad_spectrum_settings_are_one_line_and_exit_code_2(run, tmp_path, capsys, flags, needle):
    with pytest.raises(SystemExit) as exit_info:
        main(["jacobian", str(run[1]), "--spectrum", *flags, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()
