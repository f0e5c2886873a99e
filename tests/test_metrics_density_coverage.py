"""Density and coverage against the prdc package on the same feature arrays."""
import numpy as np
import pytest
from prdc import compute_prdc

from mimflow_core.errors import MIMFlowError
from mimflow_lab.metrics.density_coverage import density_coverage


@pytest.mark.parametrize("n_real,n_fake,shift,chunk", [(300, 200, 0.0, 64), (250, 310, 0.4, 100), (120, 90, 1.0, 4096)])
def test_density_coverage_equal_prdc(n_real, n_fake, shift, chunk):
    rng = np.random.default_rng(n_real)
    real = rng.standard_normal((n_real, 16))
    fake = rng.standard_normal((n_fake, 16)) * 1.2 + shift
    theirs = compute_prdc(real, fake, nearest_k=5)
    density, coverage = density_coverage(real, fake, chunk=chunk)  # several blocks for the first two cases
    assert density == pytest.approx(theirs["density"], rel=1e-9)
    assert coverage == pytest.approx(theirs["coverage"], rel=1e-9)
    assert 0 < coverage <= 1


def test_density_coverage_bad_input():
    with pytest.raises(MIMFlowError, match="more than k=5 reference points"):
        density_coverage(np.zeros((4, 3)), np.zeros((10, 3)))
    with pytest.raises(MIMFlowError, match="shapes differ"):
        density_coverage(np.zeros((10, 3)), np.zeros((10, 4)))


def test_suite_reports_density_coverage_unavailable_for_a_tiny_reference():
    """ADM's minimum reference (4 images) still gets the five numbers; density/coverage say why they are missing."""
    from pathlib import Path

    from mimflow_lab.metrics import Features, WeightsSource, adm_metrics

    rng = np.random.default_rng(0)
    feats = lambda n: Features(rng.standard_normal((n, 8)), rng.standard_normal((n, 6)), None)  # noqa: E731
    weights = WeightsSource(Path("w.pth"), "torch-fidelity .pth", "--inception")
    with pytest.warns(UserWarning, match="subsets of 5 are used"):
        small = adm_metrics(feats(5), feats(12), weights)
    assert small["density"] is None and "5 reference images" in small["density_coverage_unavailable"]
    big = adm_metrics(ref := feats(12), fake := feats(7), weights)
    assert (big["density"], big["coverage"]) == density_coverage(ref.pool, fake.pool)
    assert big["kid_subset_size"] == 7
