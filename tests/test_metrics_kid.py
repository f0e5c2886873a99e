"""KID against torch-fidelity's implementation on the same feature arrays."""
import numpy as np
import pytest
import torch
from torch_fidelity.metric_kid import kid_features_to_metric, KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD

from mimflow_core.errors import MIMFlowError
from mimflow_lab.metrics.kid import kid


def _features(seed: int, n: int, d: int, shift: float) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, d)) + shift).astype(np.float32)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_kid_equals_torch_fidelity(shift):
    fake, real = _features(0, 300, 64, shift), _features(1, 250, 64, 0.0)
    ours = kid(fake, real, subsets=20, subset_size=100, seed=7)
    # torch-fidelity computes the kernel in the features' dtype; float64 in, as ours does, so rounding matches
    theirs = kid_features_to_metric(torch.from_numpy(fake).double(), torch.from_numpy(real).double(), kid_subsets=20,
                                    kid_subset_size=100, rng_seed=7, verbose=False)
    assert ours[0] == pytest.approx(theirs[KEY_METRIC_KID_MEAN], rel=1e-6, abs=1e-9)
    assert ours[1] == pytest.approx(theirs[KEY_METRIC_KID_STD], rel=1e-6, abs=1e-9)


def test_kid_grows_with_shift():
    real = _features(1, 200, 32, 0.0)
    assert kid(_features(0, 200, 32, 0.5), real, 10, 100)[0] > kid(_features(0, 200, 32, 0.0), real, 10, 100)[0]


def test_kid_too_few_points_is_one_line_error():
    with pytest.raises(MIMFlowError, match="subset size 1000 exceeds"):
        kid(_features(0, 50, 8, 0), _features(1, 5000, 8, 0))


def test_kid_equals_clean_fid_when_subsets_are_the_whole_sets():
    """clean-fid draws subsets with numpy's global RNG; with subsets = the whole (equal-size) sets the draw is moot."""
    from cleanfid.fid import kernel_distance

    fake, real = _features(3, 120, 16, 0.2).astype(np.float64), _features(4, 120, 16, 0.0).astype(np.float64)
    assert kid(fake, real, subsets=3, subset_size=120)[0] == pytest.approx(
        kernel_distance(fake, real, num_subsets=3, max_subset_size=120), rel=1e-9)
