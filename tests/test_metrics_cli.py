"""``mimflow-lab evaluate`` and ``ref-stats`` on real images and real Inception weights, and their bad input."""
from __future__ import annotations

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch

from mimflow_lab.cli import main
from tests.test_metrics import brute_force_precision_recall, exact_frechet, numpy_inception_score
from tests.test_metrics_inception import foolbox_images, torchscript_or_skip, write_pth_with_classifier

N_REF, N_SAMPLES = 8, 6


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """A reference batch (CIFAR-10) and a sample batch (CIFAR-100), written as ADM writes them: np.savez with labels."""
    torchscript_or_skip()
    root = tmp_path_factory.mktemp("batches")
    np.savez(root / "ref.npz", foolbox_images("cifar10", N_REF), np.arange(N_REF) % 10)
    np.savez(root / "samples.npz", foolbox_images("cifar100", N_SAMPLES), np.arange(N_SAMPLES))
    return root


@pytest.fixture(scope="module")
def pth_metrics(batches, tmp_path_factory):
    """``evaluate`` with a .pth (classifier included): the metrics and the printed lines."""
    pth = write_pth_with_classifier(tmp_path_factory.mktemp("weights") / "inception.pth")
    out = batches / "evaluate_pth"  # --out is a directory: metrics.json goes into it
    lines = run_cli(["evaluate", str(batches / "ref.npz"), str(batches / "samples.npz"), "--inception", str(pth),
                     "--batch-size", "4", "--out", str(out)])
    return json.loads((out / "metrics.json").read_text()), lines, pth


def run_cli(argv: list[str]) -> list[str]:
    """Run the CLI in-process; its stdout lines."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(argv)
    return stdout.getvalue().splitlines()


def test_evaluate_equals_torch_fidelity_features_with_exact_metrics(batches, pth_metrics):
    """IS, FID, precision, recall == independent math on torch-fidelity's own features of the same files."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    metrics, lines, pth = pth_metrics
    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                            feature_extractor_weights_path=str(pth))
    features = {}
    for name in ("ref", "samples"):
        with np.load(batches / f"{name}.npz") as data, torch.no_grad():
            images = torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2)
            features[name] = [t.double().numpy() for t in extractor(images)]
    (ref_pool, _), (pool, logits) = features["ref"], features["samples"]
    assert metrics["fid"] == pytest.approx(exact_frechet(pool, ref_pool), rel=1e-6)
    assert metrics["inception_score"] == pytest.approx(numpy_inception_score(logits), rel=1e-5)
    precision, recall = brute_force_precision_recall(ref_pool, pool)
    assert (metrics["precision"], metrics["recall"]) == (precision, recall)
    from torch_fidelity.metric_kid import kid_features_to_metric

    theirs = kid_features_to_metric(torch.from_numpy(pool), torch.from_numpy(ref_pool), verbose=False,
                                    kid_subsets=metrics["kid_subsets"], kid_subset_size=metrics["kid_subset_size"])
    assert metrics["kid_subset_size"] == min(1000, N_SAMPLES, N_REF)  # small files: shrunk, with a warning
    assert metrics["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5, abs=1e-7)
    from prdc.prdc import compute_nearest_neighbour_distances, compute_pairwise_distance

    # prdc's own pieces (compute_prdc also needs k+2 samples for its precision/recall; 6 here)
    radii, d = compute_nearest_neighbour_distances(ref_pool, 5), compute_pairwise_distance(ref_pool, pool)
    assert metrics["density"] == pytest.approx((d < radii[:, None]).sum(axis=0).mean() / 5, rel=1e-9)
    assert metrics["coverage"] == pytest.approx((d.min(axis=1) < radii).mean(), rel=1e-9)
    assert metrics["sfid"] > 0 and metrics["num_samples"] == N_SAMPLES and metrics["num_reference"] == N_REF
    assert [line.split(":")[0] for line in lines] == ["Computing evaluations...", "Inception Score", "FID", "sFID",
                                                      "Precision", "Recall"]
    assert lines[2] == f"FID: {metrics['fid']}"


def test_ref_stats_then_evaluate_without_classifier(batches, pth_metrics, tmp_path, capsys):
    """ref-stats stores ADM's keys; evaluate uses them; the TorchScript gives the same FID and no invented IS.

    Written with last release's spellings (--out as a file, --batch): they still work, with a deprecation line."""
    run_cli(["ref-stats", str(batches / "ref.npz"), "--out", str(tmp_path / "ref_stats.npz"), "--batch", "4"])
    err = capsys.readouterr().err
    assert "--batch is now --batch-size" in err and "--out is now a directory" in err
    with np.load(tmp_path / "ref_stats.npz") as made, np.load(batches / "ref.npz") as source:
        np.testing.assert_array_equal(made["arr_0"], source["arr_0"])
        np.testing.assert_array_equal(made["arr_1"], source["arr_1"])
        assert made["mu"].shape == (2048,) and made["sigma_s"].shape == (2023, 2023)
    run_cli(["evaluate", str(tmp_path / "ref_stats.npz"), str(batches / "samples.npz"), "--out",
             str(tmp_path / "m.json")])
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["inception_score"] is None and "no 1008-way classifier" in metrics["inception_score_unavailable"]
    assert metrics["reference_stats"] == "from the reference file"
    for key in ("fid", "sfid", "precision", "recall"):  # same trunk, stored vs fitted statistics
        assert metrics[key] == pytest.approx(pth_metrics[0][key], rel=1e-6), key
    assert "unreliable" in capsys.readouterr().err  # 6 samples for 2048 dimensions


def test_ref_stats_caches_the_reference_features_that_fid_and_evaluate_reuse(batches, tmp_path):
    """The features ref-stats stored are those the Inception gives for the file; a rewritten file is not reused."""
    from mimflow_lab.metrics import load_inception, npz_features
    from mimflow_lab.metrics.cache import reference_features

    run_cli(["ref-stats", str(batches / "ref.npz"), "--out", str(tmp_path / "ref"), "--batch-size", "4"])
    ref = tmp_path / "ref" / "ref.npz"
    inception, weights = load_inception(None)

    class NoNetwork:  # any use of the network fails the test
        def __getattr__(self, name):
            raise AssertionError("the cached reference was run through the Inception again")

        def __call__(self, images):
            raise AssertionError("the cached reference was run through the Inception again")

    cached = reference_features(ref, NoNetwork(), weights)
    direct = npz_features(inception, ref, 4)
    np.testing.assert_allclose(cached.pool, direct.pool, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cached.spatial, direct.spatial, rtol=1e-6, atol=1e-7)
    with np.load(ref) as data:  # the same path with other images: the stale entry must not be used
        np.savez(ref, arr_0=data["arr_0"][::-1].copy())
    with pytest.raises(AssertionError, match="run through the Inception again"):
        reference_features(ref, NoNetwork(), weights)


def test_a_damaged_reference_cache_entry_is_named_and_computed_again(batches, tmp_path):
    from mimflow_lab.metrics import load_inception
    from mimflow_lab.metrics.cache import _entry, reference_features

    inception, weights = load_inception(None)
    ref = batches / "ref.npz"
    first = reference_features(ref, inception, weights, batch_size=4)
    entry, _ = _entry(ref, str(weights.path))
    entry.write_bytes(entry.read_bytes()[:1000])
    with pytest.warns(UserWarning, match=f"{entry.name}: .*cached reference features are discarded"):
        again = reference_features(ref, inception, weights, batch_size=4)
    np.testing.assert_array_equal(again.pool, first.pool)
    assert reference_features(ref, None, weights).pool.shape == first.pool.shape  # rewritten whole: no network


@pytest.mark.parametrize("content, message", [
    ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, "no 'arr_0' array"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.float32)}, "dtype float32"),
    ({"arr_0": np.zeros((4, 3, 8, 8), np.uint8) + 9}, "expected N x H x W x 3"),
    ({"arr_0": np.ones((4, 8, 8, 3), np.uint8)}, "scaled to \\[0, 1\\]"),
    ({"arr_0": np.zeros((4, 8, 8, 3), np.uint8)}, "is 0 \\(all black\\): nothing to measure"),
    ("truncated", "not an npz file, or a truncated one"),
    ("huge", "arr_0 declares shape \\(1000000000000, 8, 8, 3\\)"),
    ({"arr_0": np.full((3, 8, 8, 3), 200, np.uint8)}, "holds 3 image\\(s\\); the ADM metrics need at least 4"),
])
def test_bad_batches_exit_2_with_one_line(tmp_path, capsys, content, message):
    np.savez(tmp_path / "good.npz", np.full((4, 8, 8, 3), 200, np.uint8))
    _write_bad_batch(tmp_path / "bad.npz", content, tmp_path / "good.npz")
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "good.npz"), str(tmp_path / "bad.npz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.count("\n") == 0 and "bad.npz" in err
    assert re.search(message, err)


def _write_bad_batch(path, content, good):
    if content == "truncated":
        path.write_bytes(good.read_bytes()[:400])
    elif content == "huge":  # a header declaring 10^12 images over a few bytes: refused before any allocation
        import zipfile
        member = io.BytesIO()
        np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (10 ** 12, 8, 8, 3)})
        member.write(b"\xc8" * 192)
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("arr_0.npy", member.getvalue())
    else:
        np.savez(path, **content)


def test_reference_statistics_that_are_objects_are_refused_in_one_line(tmp_path, capsys):
    images = np.full((4, 8, 8, 3), 200, np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=images, mu=np.array([None] * 2048, dtype=object), allow_pickle=True)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "ref.npz"), str(tmp_path / "samples.npz"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "ref.npz: mu holds Python objects" in err[-1] and "Traceback" not in err[-1]
    assert not (tmp_path / "out").exists()


def test_samples_of_another_resolution_than_the_reference_are_a_warning(batches, tmp_path):
    with np.load(batches / "samples.npz") as f:  # the same images at twice the size
        np.savez(tmp_path / "big.npz", f["arr_0"].repeat(2, axis=1).repeat(2, axis=2))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        main(["evaluate", str(batches / "ref.npz"), str(tmp_path / "big.npz"), "--batch-size", "8",
              "--out", str(tmp_path / "out")])
    warning = [line for line in err.getvalue().splitlines() if "px but the reference" in line]
    assert len(warning) == 1 and "big.npz is 64x64 px but the reference" in warning[0] and "32x32 px" in warning[0]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["fid"] > 0


def test_missing_weights_file_exits_2(tmp_path, capsys):
    np.savez(tmp_path / "good.npz", np.full((4, 8, 8, 3), 200, np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "good.npz"), str(tmp_path / "good.npz"), "--inception",
              str(tmp_path / "missing.pth")])
    assert exit_info.value.code == 2 and "--inception" in capsys.readouterr().err


def test_an_out_that_cannot_be_written_is_one_line_naming_the_file(batches, tmp_path, monkeypatch, capsys):
    """A read-only --out (faked: the tests may run as root, whom permissions do not stop)."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(batches / "ref.npz"), str(batches / "samples.npz"), "--batch-size", "8",
              "--out", str(tmp_path / "out")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert exit_info.value.code == 2 and len(errors) == 1
    assert f"{tmp_path / 'out' / 'metrics.json'}: cannot write (Read-only file system)" in errors[0]


def test_evaluate_bootstrap_adds_lines_after_adms_and_fields(batches, tmp_path):
    lines = run_cli(["evaluate", str(batches / "ref.npz"), str(batches / "samples.npz"), "--batch-size", "8",
                     "--bootstrap", "5", "--out", str(tmp_path / "out")])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [line.split(":")[0] for line in lines[:6]] == ["Computing evaluations...", "Inception Score", "FID", "sFID",
                                                          "Precision", "Recall"]
    assert lines[6].startswith(f"FID {metrics['fid']:.2f} ± ") and "5 bootstrap replicates" in lines[6]
    b = metrics["bootstrap"]["fid"]
    assert b["replicates"] == 5 and b["ci95"][0] <= b["mean"] <= b["ci95"][1] and b["std"] >= 0
    assert metrics["fid_split_half"] >= 0 and "sfid" in metrics["bootstrap"]
    for key, name, digits in (("precision", "Precision", 4), ("recall", "Recall", 4), ("density", "Density", 4),
                              ("coverage", "Coverage", 4), ("kid", "KID", 5)):
        b = metrics["bootstrap"][key]
        assert b["replicates"] == 5 and b["ci95"][0] <= b["ci95"][1] and b["std"] >= 0
        assert any(line.startswith(f"{name} {metrics[key]:.{digits}f} ± {b['std']:.{digits}f} (95 % ")
                   for line in lines), key
    assert metrics["bootstrap"]["not_bootstrapped"] == {} and 0 <= metrics["bootstrap"]["recall"]["radius_capped"] < 1


def test_evaluate_bootstrap_zero_is_one_line_and_keeps_old_results(batches, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text('{"fid": 1.0}')
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(batches / "ref.npz"), str(batches / "samples.npz"), "--bootstrap", "0",
              "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].endswith("--bootstrap 0: need at least 1 replicate (or leave the "
                                                          "option out)") and "Traceback" not in "".join(err)
    assert (tmp_path / "out" / "metrics.json").read_text() == '{"fid": 1.0}'


def test_bootstrap_reference_resamples_both_sides_and_needs_bootstrap(batches, tmp_path, capsys):
    run_cli(["evaluate", str(batches / "ref.npz"), str(batches / "samples.npz"), "--batch-size", "8",
             "--bootstrap", "4", "--bootstrap-reference", "--out", str(tmp_path / "out")])
    b = json.loads((tmp_path / "out" / "metrics.json").read_text())["bootstrap"]
    assert b["fid"]["reference_resampled"] and b["sfid"]["reference_resampled"] and b["fid"]["replicates"] == 4
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(batches / "ref.npz"), str(batches / "samples.npz"), "--bootstrap-reference",
              "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].endswith("--bootstrap-reference: resamples only with --bootstrap N")
    assert not (tmp_path / "out2").exists()


def test_kid_subset_size_larger_than_a_set_is_one_line_and_keeps_old_results(batches, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text('{"fid": 1.0}')
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(batches / "ref.npz"), str(batches / "samples.npz"), "--kid-subset-size",
              str(N_SAMPLES + 1), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "Traceback" not in "".join(err)
    assert err[-1].endswith(f"--kid-subset-size {N_SAMPLES + 1}: {batches / 'samples.npz'} holds {N_SAMPLES} images, "
                            f"fewer than one subset (KID draws subsets without replacement); pass at most "
                            f"{min(N_SAMPLES, N_REF)} or leave the option out")
    assert (tmp_path / "out" / "metrics.json").read_text() == '{"fid": 1.0}'


def test_an_explicit_kid_subset_size_is_used_without_the_warning(batches, tmp_path, capsys):
    run_cli(["evaluate", str(batches / "ref.npz"), str(batches / "samples.npz"), "--batch-size", "8",
             "--kid-subset-size", "4", "--out", str(tmp_path / "out")])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["kid_subset_size"] == 4 and "not comparable" not in capsys.readouterr().err
