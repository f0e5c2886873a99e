"""The linear probe against scikit-learn's LogisticRegression, and its sweep and input checks."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from mimflow_core.data import holdout_split
from mimflow_core.errors import MIMFlowError
from mimflow_lab.probe import ProbeSettings, batched_lbfgs, linear_probe, linear_probes, stratified_split


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return train_test_split(X.astype(np.float32), y, test_size=0.3, stratify=y, random_state=0)


def _sklearn(Xtr, ytr, Xte, C=1.0):
    scaler = StandardScaler().fit(Xtr)
    clf = LogisticRegression(C=C, tol=1e-8, max_iter=10_000).fit(scaler.transform(Xtr), ytr)
    return clf, scaler.transform(Xte)


def test_probe_within_one_point_of_sklearn_on_digits(digits):
    Xtr, Xte, ytr, yte = digits
    clf, Xte_s = _sklearn(Xtr, ytr, Xte)
    ref = 100.0 * clf.score(Xte_s, yte)
    res = linear_probe(Xtr, ytr, Xte, yte)
    assert res.method == "lbfgs" and len(res.accuracies) == 3
    assert abs(res.accuracy_mean - ref) <= 1.0, (res.accuracy_mean, ref)
    assert res.accuracy_std == pytest.approx(np.std(res.accuracies, ddof=1))


def test_fixed_weight_decay_reaches_sklearns_optimum(digits):
    """Same objective (BatchNorm = standardisation, L2 = 1/(C n)): same predicted probabilities."""
    Xtr, Xte, ytr, yte = digits
    clf, Xte_s = _sklearn(Xtr, ytr, Xte, C=1.0)
    settings = ProbeSettings(weight_decays=(1.0 / len(ytr),), seeds=(0,), lbfgs_tolerance=1e-6, lbfgs_max_iter=2000)
    from mimflow_lab.probe import Problem, fit_probes

    [probe], _ = fit_probes(torch.tensor(Xtr), torch.tensor(ytr), 10,
                            [Problem(torch.arange(len(ytr)), 1.0 / len(ytr), 0)], settings)
    with torch.no_grad():
        ours = probe(torch.tensor(Xte)).softmax(1).numpy()
    theirs = clf.predict_proba(Xte_s)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.995


def test_stacked_feature_sets_give_the_results_of_separate_probes(digits):
    """linear_probes batches equal-width sets (one L-BFGS for every set, seed and weight decay) and
    sets of other widths separately; each result must match its own linear_probe call."""
    Xtr, Xte, ytr, yte = digits
    rot = np.linalg.qr(np.random.default_rng(0).normal(size=(64, 64)))[0].astype(np.float32)
    sets = [(Xtr, Xte), (np.tanh(Xtr @ rot), np.tanh(Xte @ rot)), (Xtr[:, 16:40], Xte[:, 16:40]),
            (Xtr[:, ::2], Xte[:, ::2])]  # widths 64, 64, 24, 32
    settings = ProbeSettings(seeds=(0, 1), lbfgs_tolerance=1e-6)  # converged: no selection flips from rounding
    alone = [linear_probe(a, ytr, b, yte, settings=settings) for a, b in sets]
    assert len({r.accuracy_mean for r in alone}) > 1  # the sets really differ
    # all stacked by width; then stacks capped at two 64-wide sets (each L-BFGS call holding two problems)
    for cap in (settings.full_batch_max, 2 * 64 * len(ytr)):
        together = linear_probes([a for a, _ in sets], ytr, [b for _, b in sets], yte,
                                 settings=ProbeSettings(seeds=(0, 1), lbfgs_tolerance=1e-6, full_batch_max=cap))
        for (a, _), res, ref in zip(sets, together, alone):
            assert res.method == "lbfgs" and res.dim == a.shape[1] and res.weight_decays == ref.weight_decays
            assert res.accuracies == pytest.approx(ref.accuracies, abs=0.35)  # at most one test image apart


def test_minibatch_sgd_path_close_to_sklearn(digits):
    """The large-data path (minibatch SGD, BatchNorm on batch statistics): stochastic, so 1.5 points."""
    Xtr, Xte, ytr, yte = digits
    clf, Xte_s = _sklearn(Xtr, ytr, Xte)
    res = linear_probe(Xtr, ytr, Xte, yte, settings=ProbeSettings(full_batch_max=0, sgd_batch_size=128,
                                                                   sgd_epochs=20, seeds=(0,)))
    assert res.method == "sgd"
    assert abs(res.accuracy_mean - 100.0 * clf.score(Xte_s, yte)) <= 1.5


def test_batched_lbfgs_solves_each_problem_exactly():
    """Independent quadratics with condition numbers 1..300: every row reaches its own A^-1 b."""
    rng = np.random.default_rng(0)
    G, P = 5, 8
    A, b = [], []
    for g, cond in enumerate(np.logspace(0, 2.5, G)):
        Q, _ = np.linalg.qr(rng.normal(size=(P, P)))
        A.append(Q @ np.diag(np.logspace(0, np.log10(cond), P)) @ Q.T)
        b.append(rng.normal(size=P))
    A, b = torch.tensor(np.stack(A)), torch.tensor(np.stack(b))

    def objective(theta, rows):
        Ax = torch.einsum("gij,gj->gi", A[rows], theta)
        return 0.5 * (theta * Ax).sum(1) - (b[rows] * theta).sum(1), Ax - b[rows]

    theta = batched_lbfgs(objective, torch.zeros(G, P, dtype=torch.float64), max_iter=300, tol=1e-9, ftol=0.0)
    # The line search compares losses, which float64 resolves to ~eps |f|: the solution is then exact to about
    # cond * sqrt(eps) ~ 5e-6 (relative), not to tol (measured: 1.7e-6 at cond 316)
    np.testing.assert_allclose(theta.numpy(), np.linalg.solve(A.numpy(), b.numpy()[..., None])[..., 0],
                               rtol=1e-5, atol=1e-7)


def test_weight_decay_is_chosen_without_the_test_labels(digits):
    Xtr, Xte, ytr, yte = digits
    settings = ProbeSettings(seeds=(0, 1), lbfgs_tolerance=1e-6)  # converged: no selection flips from rounding
    a = linear_probe(Xtr, ytr, Xte, yte, settings=settings)
    b = linear_probe(Xtr, ytr, Xte, np.random.default_rng(0).permutation(yte), settings=settings)
    assert a.weight_decays == b.weight_decays and a.val_accuracies == b.val_accuracies
    assert b.accuracy_mean < 30  # the scores did use the (shuffled) test labels


def test_stratified_split():
    labels = np.repeat(np.arange(4), [10, 20, 30, 2])
    fit, val = stratified_split(labels, 0.1, seed=0)
    assert np.intersect1d(fit, val).size == 0 and np.union1d(fit, val).size == labels.size
    assert np.bincount(labels[val], minlength=4).tolist() == [1, 2, 3, 1]
    assert np.array_equal(val, stratified_split(labels, 0.1, seed=0)[1])
    assert not np.array_equal(val, stratified_split(labels, 0.1, seed=1)[1])


def test_validation_split_and_dataset_holdout_stay_fixed_and_apart():
    """The probe's validation split (about a fraction of each class) and the datasets' held-out split
    (scikit-learn, an exact count) draw different indices from the same labels, so neither can serve
    for the other without changing every probe number; both are pinned by a hash of their indices."""
    def digest(index):
        return hashlib.sha256(np.asarray(index, dtype=np.int64).tobytes()).hexdigest()[:16]

    labels = load_digits().target
    val = stratified_split(labels, 0.1, seed=0)[1]
    held_out = holdout_split(labels, 300)[1]
    assert (digest(val), digest(held_out)) == ("4552746b978104c2", "1058cbc7903e4b4c")
    assert not np.array_equal(stratified_split(labels, 300 / len(labels), seed=0)[1], held_out)


def test_constant_training_feature_is_ignored(digits):
    """A feature constant on the training set must not blow up at test time (zero-initialised head)."""
    Xtr, Xte, ytr, yte = digits
    settings = ProbeSettings(seeds=(0,))
    base = linear_probe(Xtr, ytr, Xte, yte, settings=settings)
    Xtr_c = np.hstack([Xtr, np.zeros((len(Xtr), 1), np.float32)])
    Xte_c = np.hstack([Xte, np.full((len(Xte), 1), 50.0, np.float32)])
    assert linear_probe(Xtr_c, ytr, Xte_c, yte, settings=settings).accuracy_mean == pytest.approx(base.accuracy_mean)


def test_refuses_unusable_labels():
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    with pytest.raises(MIMFlowError, match="only 1 class present; a linear probe needs at least 2"):
        linear_probe(X, np.zeros(20, int), X, np.zeros(20, int))
    with pytest.raises(MIMFlowError, match="3 samples for 5 classes"):
        linear_probe(X[:3], np.array([0, 4, 2]), X, np.zeros(20, int), num_classes=5)
    with pytest.raises(MIMFlowError, match="labels outside 0..1"):
        linear_probe(X, np.arange(20) % 2, X, np.full(20, 7))
