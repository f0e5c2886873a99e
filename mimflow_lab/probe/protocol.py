"""The probe protocol: weight decay chosen on a validation split, refit, scored over seeds.

The weight decay is chosen from a small grid on a validation split carved
from the training set (stratified, ``val_fraction``), never on the test set;
the probe is then refit on the whole training set with the chosen value
(starting from the sweep's solution) and scored top-1 on the held-out set.
This repeats for each seed (the seed draws the validation split and the
minibatch order; heads start at zero), and the result reports mean and
sample standard deviation (ddof = 1) over seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from mimflow_core.errors import MIMFlowError

from .settings import ProbeSettings
from .solver import Problem, accuracy, fit_probes


@dataclass
class ProbeResult:
    """Top-1 accuracy (in %, on the held-out set) per seed, with the weight decay each chose."""

    accuracy_mean: float
    accuracy_std: float
    accuracies: list[float]
    weight_decays: list[float]
    val_accuracies: list[float]
    method: str
    num_train: int
    num_test: int
    dim: int
    num_classes: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def check_labels(labels: np.ndarray, num_classes: int | None, what: str) -> int:
    """Refuse data a classifier cannot be trained on; return the number of classes."""
    labels = np.asarray(labels)
    present = np.unique(labels)
    if present.size < 2:
        raise MIMFlowError(f"{what}: only {present.size} class present; a linear probe needs at least 2")
    if labels.min() < 0:
        raise MIMFlowError(f"{what}: labels must be >= 0 (got {labels.min()})")
    num_classes = int(num_classes if num_classes is not None else labels.max() + 1)
    if labels.max() >= num_classes:
        raise MIMFlowError(f"{what}: label {labels.max()} out of range for {num_classes} classes")
    if labels.size < num_classes:
        raise MIMFlowError(f"{what}: {labels.size} samples for {num_classes} classes; need at least one per class")
    return num_classes


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, val): about ``fraction`` of each class (at least one where it has 2+) go to val.

    Every class with two or more images lands on both sides, so each weight
    decay is trained and scored on every class, and ``seed`` draws a new split
    per probe seed. The datasets' fixed :func:`mimflow_core.data.holdout_split`
    (scikit-learn, an exact total size) draws other indices from the same
    labels, so either replacing the other would change every probe number.
    """
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(fraction * idx.size)), idx.size - 1) if idx.size > 1 else 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 num_classes: int | None = None, settings: ProbeSettings | None = None) -> ProbeResult:
    """Linear-probe top-1 accuracy (%) of ``test`` after training on ``train``, mean ± std over seeds."""
    return linear_probes([train_x], train_y, [test_x], test_y, num_classes=num_classes, settings=settings)[0]


def linear_probes(train_xs: Sequence[np.ndarray], train_y: np.ndarray, test_xs: Sequence[np.ndarray],
                  test_y: np.ndarray, *, num_classes: int | None = None, settings: ProbeSettings | None = None,
                  progress: bool = False) -> list[ProbeResult]:
    """:func:`linear_probe` for several feature sets of the same images (depths, mask ratios), one result each.

    The sets share labels, validation splits and seeds, so full-batch sets of
    equal width are stacked (up to ``full_batch_max`` numbers per stack) and
    every (set, seed, weight decay) of a stack is solved by one batched L-BFGS.
    Each probe keeps its own stopping test, so the results are those of
    separate calls up to float rounding in the products.
    """
    settings = settings or ProbeSettings()
    num_classes = check_labels(train_y, num_classes, "probe train split")
    if len(train_xs) != len(test_xs):
        raise MIMFlowError(f"probe: {len(train_xs)} train feature sets but {len(test_xs)} test sets")
    for train_x, test_x in zip(train_xs, test_xs):
        if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
            raise MIMFlowError(f"probe: features must be 2-D with equal widths, got {train_x.shape} and {test_x.shape}")
        if len(train_x) != len(train_y) or len(test_x) != len(test_y):
            raise MIMFlowError(f"probe: {len(train_x)}/{len(test_x)} feature rows for {len(train_y)}/{len(test_y)} labels")
    if len(test_y) == 0:
        raise MIMFlowError("probe test split: no samples")
    if np.min(test_y) < 0 or np.max(test_y) >= num_classes:
        raise MIMFlowError(f"probe test split: labels outside 0..{num_classes - 1}")
    dev = torch.device(settings.device)
    ytr = torch.as_tensor(np.asarray(train_y, dtype=np.int64), device=dev)
    yte = torch.as_tensor(np.asarray(test_y, dtype=np.int64), device=dev)
    splits = [[torch.as_tensor(i, device=dev) for i in stratified_split(np.asarray(train_y), settings.val_fraction, s)]
              for s in settings.seeds]
    stacks: dict[int, list[list[int]]] = {}  # width -> stacks of set indices
    for i, train_x in enumerate(train_xs):
        numbers = train_x.size  # one set's size; minibatch-SGD sets (too big for full batch) stay alone
        same = stacks.setdefault(train_x.shape[1], [[]])
        full_batch = len(train_y) * max(train_x.shape[1], num_classes) <= settings.full_batch_max
        if same[-1] and (not full_batch or (len(same[-1]) + 1) * numbers > settings.full_batch_max):
            same.append([])
        same[-1].append(i)
    results: list[ProbeResult | None] = [None] * len(train_xs)
    for members in tqdm([m for same in stacks.values() for m in same], desc="probe", disable=not progress,
                        leave=False):
        def stack(arrays):
            return torch.as_tensor(np.stack([np.asarray(arrays[i], dtype=np.float32) for i in members]), device=dev)
        for i, result in zip(members, _probe_stack(stack(train_xs), ytr, stack(test_xs), yte, splits,
                                                   num_classes, settings)):
            results[i] = result
    return results


def _probe_stack(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor, splits: list,
                 num_classes: int, settings: ProbeSettings) -> list[ProbeResult]:
    """Sweep, select and refit the probes of T equal-width feature sets xtr (T, n, dim), xte (T, m, dim)."""
    T, grid, S = xtr.shape[0], sorted(settings.weight_decays), len(settings.seeds)
    # 1) every (set, seed, weight decay) on the seed's fit rows, scored on its validation rows
    sweep = [Problem(splits[k][0], wd, seed, task=t) for t in range(T)
             for k, seed in enumerate(settings.seeds) for wd in grid]
    probes, method = fit_probes(xtr, ytr, num_classes, sweep, settings)
    val = np.array([accuracy(p, xtr[t, splits[k][1]], ytr[splits[k][1]])
                    for p, (t, k, _) in zip(probes, np.ndindex(T, S, len(grid)))]).reshape(T, S, len(grid))
    best = val.argmax(2)  # ties go to the smallest weight decay
    # 2) refit on the whole training set with each seed's choice, score on the test set
    everything = torch.arange(len(ytr), device=ytr.device)
    refits = [Problem(everything, grid[best[t, k]], seed, start=probes[(t * S + k) * len(grid) + best[t, k]], task=t)
              for t in range(T) for k, seed in enumerate(settings.seeds)]
    final, _ = fit_probes(xtr, ytr, num_classes, refits, settings)
    results = []
    for t in range(T):
        accs = [accuracy(p, xte[t], yte) for p in final[t * S:(t + 1) * S]]
        results.append(ProbeResult(
            accuracy_mean=float(np.mean(accs)),
            accuracy_std=float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
            accuracies=accs, weight_decays=[grid[j] for j in best[t]], val_accuracies=[float(v) for v in val[t].max(1)],
            method=method, num_train=int(xtr.shape[1]), num_test=int(xte.shape[1]), dim=int(xtr.shape[2]),
            num_classes=num_classes,
        ))
    return results
