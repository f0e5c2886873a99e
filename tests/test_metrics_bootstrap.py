"""Bootstraps: each replicate equals its metric on the resampled features (recall and KID: on the resampled
multiset, copies of one point not counted as neighbours or pairs); intervals cover a known distance; spreads
match independent draws."""
import numpy as np
import pytest
import torch

from mimflow_core.errors import MIMFlowError
from mimflow_lab.metrics import frechet_distance, gaussian_stats
from mimflow_lab.metrics.bootstrap import bootstrap_fid, split_half_fid


def test_one_replicate_equals_fid_of_the_resampled_rows():
    rng = np.random.default_rng(0)
    x, ref = rng.standard_normal((80, 6)), rng.standard_normal((90, 6)) + 0.3
    mu, sigma = gaussian_stats(ref)
    result = bootstrap_fid(x, mu, sigma, replicates=1, seed=3)
    rows = np.random.default_rng(3).integers(0, len(x), len(x))  # the same draw
    assert result["mean"] == pytest.approx(frechet_distance(*gaussian_stats(x[rows]), mu, sigma), rel=1e-9)


def test_intervals_cover_a_known_frechet_distance():
    """N(δ, I) vs N(0, I) in 2-d: FD = |δ|² exactly; the 95 % interval should hold it in 95 % ± 5 % of trials."""
    delta, n, trials = np.array([0.6, 0.0]), 1500, 200
    truth = float(delta @ delta)
    covered = 0
    for t in range(trials):
        x = np.random.default_rng(1000 + t).standard_normal((n, 2)) + delta
        low, high = bootstrap_fid(x, np.zeros(2), np.eye(2), replicates=200, seed=t)["ci95"]
        covered += low <= truth <= high
    assert 0.90 <= covered / trials <= 1.0, covered / trials


def test_split_half_is_small_for_one_distribution_and_zero_replicates_refused():
    x = np.random.default_rng(0).standard_normal((400, 3))
    assert 0 <= split_half_fid(x) < 0.1
    with pytest.raises(MIMFlowError, match="--bootstrap 0"):
        bootstrap_fid(x, np.zeros(3), np.eye(3), replicates=0)


def test_a_neighbour_replicate_equals_the_metrics_of_the_resampled_rows():
    """Precision, density, coverage of one reweighting replicate == those functions on the drawn rows."""
    from mimflow_lab.metrics.bootstrap import bootstrap_neighbours
    from mimflow_lab.metrics.density_coverage import ball_counts, density_coverage
    from mimflow_lab.metrics.precision_recall import inside_masks, precision_recall

    rng = np.random.default_rng(1)
    ref, x = rng.standard_normal((60, 5)), rng.standard_normal((50, 5)) + 0.4
    inside = inside_masks(ref, x, chunk=16)[0]
    counts, _, pairs = ball_counts(ref, x, chunk=16, keep_pairs=True)
    result = bootstrap_neighbours(inside.numpy(), counts.numpy(), pairs.numpy(), len(ref), 5, replicates=1, seed=4)
    rows = np.random.default_rng(4).integers(0, len(x), len(x))  # the same draw
    assert result["precision"]["mean"] == pytest.approx(precision_recall(ref, x[rows])[0], rel=1e-12)
    density, coverage = density_coverage(ref, x[rows])
    assert result["density"]["mean"] == pytest.approx(density, rel=1e-12)
    assert result["coverage"]["mean"] == pytest.approx(coverage, rel=1e-12)
    assert pairs.shape[1] == counts.sum()  # one pair per (sample, reference ball) hold


def test_a_replicate_with_the_reference_resampled_equals_fid_of_both_resampled_sets():
    rng = np.random.default_rng(2)
    x, ref = rng.standard_normal((70, 4)), rng.standard_normal((90, 4)) + 0.2
    result = bootstrap_fid(x, *gaussian_stats(ref), replicates=1, seed=5, reference=ref)
    rows_x = np.random.default_rng(5).integers(0, len(x), len(x))
    rows_ref = np.random.default_rng((5, 1)).integers(0, len(ref), len(ref))  # the reference's own stream
    expected = frechet_distance(*gaussian_stats(x[rows_x]), *gaussian_stats(ref[rows_ref]))
    assert result["mean"] == pytest.approx(expected, rel=1e-9) and result["reference_resampled"]
    fixed = bootstrap_fid(x, *gaussian_stats(ref), replicates=30, seed=5)
    both = bootstrap_fid(x, *gaussian_stats(ref), replicates=30, seed=5, reference=ref)
    assert both["std"] > fixed["std"]  # two sources of sampling error instead of one


def _brute_force_recall(ref: np.ndarray, x: np.ndarray, w: np.ndarray, v: np.ndarray, k: int = 3) -> float:
    """Recall of the multiset drawing sample i w[i] times and reference j v[j] times, by dense distances: a
    drawn sample's radius is its k-th nearest other drawn point with copies counted, its own copies not."""
    d_xx = ((x[:, None] - x[None]) ** 2).sum(-1)
    d_rx = ((ref[:, None] - x[None]) ** 2).sum(-1)
    drawn = np.flatnonzero(w)
    radius = {i: np.sort(np.repeat(np.delete(d_xx[i], i), np.delete(w, i)))[k - 1] for i in drawn}
    inside = np.array([any(d_rx[j, i] <= radius[i] for i in drawn) for j in range(len(ref))])
    return float(v @ inside / v.sum())


@pytest.mark.parametrize("resample_reference", [False, True])
def test_a_recall_replicate_equals_recall_of_the_resampled_multiset(resample_reference):
    from mimflow_lab.metrics.bootstrap import bootstrap_recall
    from mimflow_lab.metrics.precision_recall import inside_masks

    rng = np.random.default_rng(3)
    ref, x = rng.standard_normal((70, 4)), rng.standard_normal((60, 4)) * 1.2
    _, real_inside, reach = inside_masks(ref, x, chunk=16, dtype=torch.float64, reach=16)
    for seed in range(5):
        result = bootstrap_recall(reach, 3, len(ref), replicates=1, seed=seed, resample_reference=resample_reference)
        w = np.bincount(np.random.default_rng(seed).integers(0, len(x), len(x)), minlength=len(x))
        v = (np.bincount(np.random.default_rng((seed, 1)).integers(0, len(ref), len(ref)), minlength=len(ref))
             if resample_reference else np.ones(len(ref)))
        assert result["mean"] == pytest.approx(_brute_force_recall(ref, x, w, v), abs=1e-12), seed
        assert result["radius_capped"] == 0
    # drawing every sample once gives the plain recall back
    assert _brute_force_recall(ref, x, np.ones(len(x), int), np.ones(len(ref))) == pytest.approx(
        real_inside.double().mean().item(), abs=1e-12)


def test_kid_replicates_weight_the_subsets_points_by_their_draws():
    from mimflow_lab.metrics.kid import _poly_kernel, _subsets, kid, kid_replicates

    rng = np.random.default_rng(4)
    x, ref = rng.standard_normal((40, 6)), rng.standard_normal((50, 6)) + 0.3
    ones = np.ones((1, len(x)), np.int32)
    assert kid_replicates(x, ref, ones, None, 5, 20, seed=9)[0] == pytest.approx(kid(x, ref, 5, 20, seed=9)[0],
                                                                                 rel=1e-12)
    w = rng.integers(0, 4, (2, len(x))).astype(np.int32)
    v = rng.integers(0, 4, (2, len(ref))).astype(np.int32)
    got = kid_replicates(x, ref, w, v, 5, 20, seed=9)
    for r in range(2):  # the expanded multisets, pairs of copies of one point left out
        values = []
        for a, b in _subsets(len(x), len(ref), 5, 20, 9):
            xa, ya = np.repeat(a.numpy(), w[r, a.numpy()]), np.repeat(b.numpy(), v[r, b.numpy()])
            k_xx = _poly_kernel(torch.from_numpy(x[xa]), torch.from_numpy(x[xa])).numpy()
            k_yy = _poly_kernel(torch.from_numpy(ref[ya]), torch.from_numpy(ref[ya])).numpy()
            k_xy = _poly_kernel(torch.from_numpy(x[xa]), torch.from_numpy(ref[ya])).numpy()
            distinct_x, distinct_y = xa[:, None] != xa[None], ya[:, None] != ya[None]
            values.append(k_xx[distinct_x].mean() + k_yy[distinct_y].mean() - 2 * k_xy.mean())
        assert got[r] == pytest.approx(np.mean(values), rel=1e-10)


def test_recall_and_kid_spreads_match_independent_draws():
    """The bootstrap std of recall and KID over resamples of one sample set ≈ their std over 40 independent sample
    sets from the same distribution (reference fixed): within a factor 1.6 either way."""
    from mimflow_lab.metrics.bootstrap import bootstrap_kid, bootstrap_recall
    from mimflow_lab.metrics.kid import kid
    from mimflow_lab.metrics.precision_recall import inside_masks

    ref = np.random.default_rng(0).standard_normal((300, 5))
    draws = [np.random.default_rng(100 + t).standard_normal((300, 5)) * 1.1 + 0.1 for t in range(40)]
    recalls = [inside_masks(ref, x)[1].double().mean().item() for x in draws]
    kids = [kid(x, ref, 10, 100)[0] for x in draws]
    boot_recall = np.mean([bootstrap_recall(inside_masks(ref, x, reach=16)[2], 3, len(ref), 100, seed=t)["std"]
                           for t, x in enumerate(draws[:8])])
    boot_kid = np.mean([bootstrap_kid(x, ref, 100, 100, seed=t, subsets=10)["std"] for t, x in enumerate(draws[:8])])
    assert 1 / 1.6 < boot_recall / np.std(recalls, ddof=1) < 1.6, (boot_recall, np.std(recalls, ddof=1))
    assert 1 / 1.6 < boot_kid / np.std(kids, ddof=1) < 1.6, (boot_kid, np.std(kids, ddof=1))


def test_an_inception_score_replicate_equals_the_score_of_the_drawn_rows():
    from mimflow_lab.metrics.bootstrap import bootstrap_inception_score
    from mimflow_lab.metrics.inception_score import inception_score, log_probabilities, split_scores

    logits = np.random.default_rng(5).standard_normal((300, 20)) * 3
    for seed in range(3):  # one split: the order of the drawn rows does not matter
        rows = np.random.default_rng(seed).integers(0, len(logits), len(logits))
        assert bootstrap_inception_score(logits, 1, seed)["mean"] == pytest.approx(inception_score(logits[rows]),
                                                                                   rel=1e-12)
    w = torch.from_numpy(np.bincount(np.random.default_rng(0).integers(0, 300, 300), minlength=300))
    by_split = [inception_score(np.repeat(logits[i:i + 70], w[i:i + 70].numpy(), axis=0)) for i in range(0, 300, 70)]
    assert split_scores(log_probabilities(logits), w, 70) == pytest.approx(np.mean(by_split), rel=1e-12)
    assert split_scores(log_probabilities(logits), None, 70) == pytest.approx(inception_score(logits, 70), rel=1e-15)


def test_an_interval_that_misses_its_estimate_is_flagged_on_its_line():
    from mimflow_lab.metrics.suite import _interval

    inside = {"mean": 10.2, "std": 0.3, "ci95": [9.6, 10.8], "replicates": 50}
    assert _interval("FID", 10.0, inside) == "FID 10.00 ± 0.30 (95 % 9.60–10.80, 50 bootstrap replicates)"
    biased = {"mean": 14.0, "std": 0.5, "ci95": [13.1, 15.0], "replicates": 50}
    assert "outside its interval: the resamples are biased by +4.00" in _interval("FID", 10.0, biased)
