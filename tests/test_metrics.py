"""ADM metric math against independent computations: scipy, torch-fidelity, clean-fid, brute-force numpy."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import scipy.linalg
import torch
from cleanfid.fid import frechet_distance as cleanfid_frechet
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.metric_prc import calculate_precision_recall_part

from mimflow_core.errors import MIMFlowError
from mimflow_lab.metrics import frechet_distance, gaussian_stats, inception_score, manifold_radii, precision_recall
from mimflow_core.npz import NpzArrayReader
from mimflow_lab.metrics.npz import open_images, read_reference_stats, write_npz


def correlated_features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Gaussian features with a decaying spectrum, like Inception activations (non-negative mean, correlated)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) * np.linspace(1.0, 0.05, dim)
    return rng.standard_normal((n, dim)) @ mixing.T + shift + rng.random(dim)


def adm_scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """ADM's evaluator.py formula: scipy sqrtm of sigma1 @ sigma2, real part of its trace."""
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def test_frechet_matches_scipy_torch_fidelity_and_clean_fid():
    stats1 = gaussian_stats(correlated_features(3000, 192, seed=0))
    stats2 = gaussian_stats(correlated_features(2500, 192, seed=1, shift=0.3))
    ours = frechet_distance(*stats1, *stats2)
    references = {
        "scipy sqrtm (ADM)": adm_scipy_frechet(*stats1, *stats2),
        "torch-fidelity": fid_statistics_to_metric({"mu": stats1[0], "sigma": stats1[1]},
                                                   {"mu": stats2[0], "sigma": stats2[1]}, verbose=False)[
            "frechet_inception_distance"],
        "clean-fid": cleanfid_frechet(*stats1, *stats2),
    }
    for name, value in references.items():
        assert ours == pytest.approx(value, rel=1e-6), name
    assert ours > 1.0  # the shift is visible
    # d(P, P) = 0 up to cancellation in tr S + tr S - 2 tr S (scipy's sqrtm is off by 1e-6 here)
    assert frechet_distance(*stats1, *stats1) == pytest.approx(0.0, abs=1e-10 * np.trace(stats1[1]))


def exact_frechet(x1: np.ndarray, x2: np.ndarray) -> float:
    """FID from raw features, exact at any rank: tr sqrt(S1 S2) = nuclear norm of X1c X2c^T / sqrt((n1-1)(n2-1))."""
    x1, x2 = x1.astype(np.float64), x2.astype(np.float64)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    trace_sqrt = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum() / np.sqrt((len(x1) - 1) * (len(x2) - 1))
    diff = x1.mean(0) - x2.mean(0)
    return float(diff @ diff + (c1 * c1).sum() / (len(x1) - 1) + (c2 * c2).sum() / (len(x2) - 1) - 2 * trace_sqrt)


def test_frechet_rank_deficient_equals_exact_nuclear_norm():
    """N < dim: sqrtm is ill-conditioned; the exact value comes from an SVD of the (small) cross Gram matrix."""
    x1, x2 = correlated_features(40, 128, seed=2), correlated_features(60, 128, seed=3, shift=0.5)
    with pytest.warns(UserWarning, match="unreliable"):
        stats1, stats2 = gaussian_stats(x1), gaussian_stats(x2)
    assert frechet_distance(*stats1, *stats2) == pytest.approx(exact_frechet(x1, x2), rel=1e-9)


def test_gaussian_stats_rejects_nan_and_matches_np_cov():
    x = correlated_features(500, 16, seed=4)
    mu, sigma = gaussian_stats(x.astype(np.float32))
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-12)
    x[3, 5] = np.nan
    with pytest.raises(MIMFlowError, match="NaN"):
        gaussian_stats(x)
    with pytest.raises(MIMFlowError, match="shapes differ"):
        frechet_distance(mu, sigma, mu[:8], sigma[:8, :8])


def numpy_inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """Direct transcription of ADM's compute_inception_score (softmax, sequential splits)."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = []
    for i in range(0, len(p), split_size):
        part = p[i:i + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def test_inception_score_matches_numpy_with_a_short_last_split():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((12000, 1008)) * 3 + rng.standard_normal(1008) * 2  # splits 5000, 5000, 2000
    ours = inception_score(logits.astype(np.float32))
    assert ours == pytest.approx(numpy_inception_score(logits.astype(np.float32).astype(np.float64)), rel=1e-9)
    assert inception_score(np.zeros((100, 1008))) == pytest.approx(1.0)  # uniform predictions score 1


def brute_force_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    real_radii = np.sort(sq(real, real), axis=1)[:, k]  # 4th smallest, the point itself included
    fake_radii = np.sort(sq(fake, fake), axis=1)[:, k]
    cross = sq(fake, real)
    precision = (cross <= real_radii[None, :]).any(1).mean()
    recall = (cross <= fake_radii[:, None]).any(0).mean()
    return float(precision), float(recall)


@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_precision_recall_matches_brute_force(chunk):
    both = correlated_features(520, 24, seed=6)
    real, fake = both[:300], both[300:] * 0.9 + 1.5  # one distribution, the other shifted and narrowed
    expected = brute_force_precision_recall(real, fake)
    assert 0.05 < expected[0] < 0.95 and 0.05 < expected[1] < 0.95  # a non-trivial case
    assert precision_recall(real, fake, chunk=chunk, dtype=torch.float64) == pytest.approx(expected, abs=1e-12)
    # torch-fidelity (Euclidean, not squared, distances: same balls) in its argument order (generated first)
    tf_precision, tf_recall = calculate_precision_recall_part(torch.from_numpy(fake), torch.from_numpy(real))
    assert (tf_precision, tf_recall) == pytest.approx(expected, abs=1e-6)  # it averages in float32


def test_manifold_radii_blocks_see_every_pair():
    x = torch.from_numpy(correlated_features(130, 8, seed=8))
    expected = np.sort(((x[:, None] - x[None]) ** 2).sum(-1).numpy(), axis=1)[:, 3]
    np.testing.assert_allclose(manifold_radii(x, chunk=32).numpy(), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(MIMFlowError, match="more than k=3"):
        manifold_radii(x[:3])


# ------------------------------------------------------------------ npz files

def images(n: int, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_reader_streams_adm_files_with_labels(tmp_path, save):
    arr, labels = images(37), np.arange(37) % 5
    save(tmp_path / "batch.npz", arr, labels)  # positional -> arr_0, arr_1, as ADM writes them
    with open_images(tmp_path / "batch.npz") as reader:
        assert len(reader) == 37 and reader.shape == arr.shape
        batches = list(reader.batches(10))
    assert [len(b) for b in batches] == [10, 10, 10, 7]
    np.testing.assert_array_equal(np.concatenate(batches), arr)
    with NpzArrayReader(tmp_path / "batch.npz", "arr_1") as reader:
        np.testing.assert_array_equal(reader.read(100), labels)


def test_write_npz_streams_and_round_trips(tmp_path):
    arr = images(25)
    write_npz(tmp_path / "out.npz", lambda: {"arr_1": np.arange(25), "mu": np.ones(3)},
              streamed={"arr_0": (arr.shape, np.uint8, (arr[i:i + 4] for i in range(0, 25, 4)))})
    with np.load(tmp_path / "out.npz") as data:
        np.testing.assert_array_equal(data["arr_0"], arr)
        np.testing.assert_array_equal(data["arr_1"], np.arange(25))
    with pytest.raises(MIMFlowError, match="expected 30"):
        write_npz(tmp_path / "short.npz", {}, streamed={"arr_0": ((30, 8, 8, 3), np.uint8, iter([arr]))})
    assert not (tmp_path / "short.npz").exists()  # atomic: nothing half-written


@pytest.mark.parametrize("content, message", [
    ({"images": images(4)}, "no 'arr_0' array"),
    ({"arr_0": images(4).astype(np.float32) / 127.5 - 1}, "dtype float32"),
    ({"arr_0": images(4)[..., 0]}, "expected N x H x W x 3"),
    ({"arr_0": (images(4) > 127).astype(np.uint8)}, "scaled to \\[0, 1\\]"),
    ({"arr_0": images(0)}, "no images"),
])
def test_bad_image_batches_are_named(tmp_path, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(MIMFlowError, match=message):
        open_images(tmp_path / "bad.npz")


def test_not_an_npz_and_bad_statistics(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(MIMFlowError, match="not an npz"):
        open_images(tmp_path / "x.npz")
    np.savez(tmp_path / "ref.npz", arr_0=images(4), mu=np.zeros(2048), sigma=np.eye(3))
    with pytest.raises(MIMFlowError, match="sigma has shape"):
        read_reference_stats(tmp_path / "ref.npz")
    np.savez(tmp_path / "ref.npz", arr_0=images(4), mu=np.full(2048, np.nan))
    with pytest.raises(MIMFlowError, match="mu contains NaN"):
        read_reference_stats(tmp_path / "ref.npz")
    assert zipfile.is_zipfile(tmp_path / "ref.npz")
