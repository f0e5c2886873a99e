"""Bootstrap FID: replicates equal a plain FID of the resampled features; intervals cover a known distance."""
import numpy as np
import pytest

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
    inside, _ = inside_masks(ref, x, chunk=16)
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
