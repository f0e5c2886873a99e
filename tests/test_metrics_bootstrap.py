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
