"""Linear probing: how linearly separable the classes are in a feature space.

The probe is MAE's: a BatchNorm without affine parameters (it only
standardises the features, so the probe stays linear and one learning rate
fits every feature scale) followed by a linear layer, trained with
cross-entropy and an L2 penalty ``weight_decay / 2 * ||W||^2`` on the weights.

- Small problems (``n * dim`` up to ``full_batch_max``) train full-batch with
  L-BFGS: the objective is convex, so this reaches the optimum, like
  scikit-learn's ``LogisticRegression``. Batch statistics are then the
  full-set statistics, so the BatchNorm is an exact standardisation.
- Large problems train with minibatch SGD (momentum 0.9, cosine schedule);
  BatchNorm uses batch statistics while training and running ones at test.

The weight decay is chosen from a small grid on a validation split carved
from the training set (stratified, ``val_fraction``), never on the test set;
the probe is then refit on the whole training set with the chosen value
(starting from the sweep's solution) and scored top-1 on the held-out set.
This repeats for each seed (the seed draws the validation split and the
minibatch order; heads start at zero), and the result reports mean and
sample standard deviation (ddof = 1) over seeds.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mimflow_core.atomic import atomic_open, write_json
from mimflow_core.checkpoint import load_model
from mimflow_core.errors import MIMFlowError
from mimflow_lab.depth_features import (DEFAULT_CACHE, FeatureSettings, check_checkpoints, dist_info, extract_depth_features,
                                  needs_layers, parse_depths, select_indices)

WEIGHT_DECAYS: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
SEEDS: tuple[int, ...] = (0, 1, 2)
BN_EPS = 1e-6


class LinearProbe(nn.Module):
    """BatchNorm without affine parameters, then a linear classifier (MAE's linear probe).

    The head starts at zero, as logistic regression does: a feature that is
    constant on the training set standardises to 0, gets no gradient and so
    keeps a zero weight, instead of amplifying test-time deviations by
    1/sqrt(eps).
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS)
        self.head = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x))


@dataclass
class ProbeSettings:
    """How a probe is trained; every field is recorded in the result files."""

    weight_decays: tuple[float, ...] = WEIGHT_DECAYS
    seeds: tuple[int, ...] = SEEDS
    val_fraction: float = 0.1
    full_batch_max: int = 2**26  # L-BFGS full-batch while n_train * max(dim, classes) stays below this
    lbfgs_max_iter: int = 1000
    lbfgs_tolerance: float = 1e-4  # on the largest gradient entry, as scikit-learn's LogisticRegression
    sgd_epochs: int = 30
    sgd_batch_size: int = 1024
    sgd_lr: float = 0.1
    device: str = "cpu"


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
    """Indices (fit, val): about ``fraction`` of each class (at least one where it has 2+) go to val."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(fraction * idx.size)), idx.size - 1) if idx.size > 1 else 0
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


@dataclass(frozen=True)
class Problem:
    """One probe to fit: which feature matrix (``task``), which training rows, which weight decay,
    which seed (minibatch order), and optionally a probe to start from (a refit starts from the
    sweep's solution)."""

    rows: torch.Tensor
    weight_decay: float
    seed: int
    start: LinearProbe | None = None
    task: int = 0


def fit_probes(x: torch.Tensor, y: torch.Tensor, num_classes: int, problems: Sequence[Problem],
               settings: ProbeSettings) -> tuple[list[LinearProbe], str]:
    """Fit one probe per problem; returns them in eval mode and the optimiser used.

    ``x`` is one feature matrix (n, dim) or a stack of them (T, n, dim) with
    the same labels ``y`` (the depths and mask ratios of one probe run); a
    problem's ``task`` picks its matrix. Full-batch problems are solved
    together by :func:`batched_lbfgs`: one batched matmul per step serves
    every (task, seed, weight decay) instead of a Python loop of tiny fits,
    and each problem keeps its own curvature history, step size and stopping test.
    """
    x = x if x.ndim == 3 else x[None]
    n, dim = x.shape[1:]
    per_problem = n * max(dim, num_classes)
    if per_problem > settings.full_batch_max:
        return [_fit_sgd(x[p.task, p.rows], y[p.rows], num_classes, p, settings) for p in problems], "sgd"
    chunk = max(1, settings.full_batch_max // per_problem)
    probes = []
    for i in range(0, len(problems), chunk):
        probes += _fit_full_batch(x, y, num_classes, problems[i:i + chunk], settings)
    return probes, "lbfgs"


def _fit_full_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, problems: Sequence[Problem],
                    settings: ProbeSettings) -> list[LinearProbe]:
    """G probes at once on x (T, n, dim). With full batches BatchNorm is an exact standardisation by the
    fit rows' mean and (biased) variance, folded into the weights: logits = x (W / sd) + b - mu (W / sd)."""
    G, (n, dim), C = len(problems), x.shape[1:], num_classes
    row_weight = torch.zeros(n, G, device=x.device)  # mean cross-entropy over each problem's own rows
    mean = torch.empty(G, dim, device=x.device)
    var = torch.empty(G, dim, device=x.device)
    for g, p in enumerate(problems):
        row_weight[p.rows, g] = 1.0 / len(p.rows)
        var[g], mean[g] = torch.var_mean(x[p.task, p.rows], dim=0, correction=0)
    inv_sd = torch.rsqrt(var + BN_EPS)
    decay = torch.tensor([p.weight_decay for p in problems], device=x.device)
    task = torch.tensor([p.task for p in problems], device=x.device)

    onehot = F.one_hot(y, C).to(x.dtype)[:, None, :]  # (n, 1, C)

    def objective(theta: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy + L2 of problems ``rows`` and its gradient, written out (no autograd)."""
        a = len(rows)
        W, b = theta[:, :dim * C].view(a, dim, C), theta[:, dim * C:]
        mu, isd, w = mean[rows], inv_sd[rows], row_weight[:, rows]
        scaled = W * isd[:, :, None]
        # one (n, dim) x (dim, a_t * C) product per feature matrix t for all its a_t problems
        # (a skinny batched product per problem is several times slower on CPU)
        of_task = task[rows]
        groups = [(t, (of_task == t).nonzero().squeeze(1)) for t in of_task.unique().tolist()]
        logits = x.new_empty(n, a, C)
        for t, sel in groups:
            logits[:, sel] = (x[t] @ scaled[sel].permute(1, 0, 2).reshape(dim, -1)).view(n, len(sel), C)
        logits += b - torch.einsum("gd,gdc->gc", mu, scaled)
        # softmax by hand: Tensor.log_softmax over a last dim of C ~ 10 is ~5x slower on CPU
        logits -= logits.amax(2, keepdim=True)
        exp = logits.exp()
        total = exp.sum(2)
        ce = total.log() - logits.gather(2, y.view(n, 1, 1).expand(n, a, 1)).squeeze(2)
        loss = (ce * w).sum(0) + 0.5 * decay[rows] * W.pow(2).sum((1, 2))
        dlogits = (exp / total[:, :, None] - onehot) * w[:, :, None]  # d loss / d logits
        grad_b = dlogits.sum(0)
        grad_scaled = x.new_empty(a, dim, C)
        for t, sel in groups:
            grad_scaled[sel] = (x[t].T @ dlogits[:, sel].reshape(n, -1)).view(dim, len(sel), C).permute(1, 0, 2)
        grad_scaled -= mu[:, :, None] * grad_b[:, None]
        grad_W = grad_scaled * isd[:, :, None] + decay[rows, None, None] * W
        return loss, torch.cat([grad_W.reshape(a, dim * C), grad_b], 1)

    theta = torch.zeros(G, dim * C + C, device=x.device)
    for g, p in enumerate(problems):
        if p.start is not None:
            theta[g] = torch.cat([p.start.head.weight.detach().T.flatten(), p.start.head.bias.detach()])
    theta = batched_lbfgs(objective, theta, max_iter=settings.lbfgs_max_iter, tol=settings.lbfgs_tolerance)
    probes = []
    for g in range(G):
        probe = LinearProbe(dim, C).to(x.device)
        probe.norm.running_mean.copy_(mean[g])
        probe.norm.running_var.copy_(var[g])
        probe.head.weight.data.copy_(theta[g, :dim * C].view(dim, C).T)
        probe.head.bias.data.copy_(theta[g, dim * C:])
        probes.append(probe.eval())
    return probes


@torch.no_grad()
def batched_lbfgs(objective, theta: torch.Tensor, *, max_iter: int = 300, tol: float = 1e-5,
                  history: int = 10, ftol: float = 1e-10) -> torch.Tensor:
    """Minimise G independent smooth functions at once; ``theta`` is (G, P), one row per problem.

    ``objective(theta_rows, rows)`` returns the losses (a,) and gradients
    (a, P) of problems ``rows`` at ``theta_rows``. Each problem has its own
    L-BFGS history (two-loop recursion), its own step length (weak Wolfe line
    search, see :func:`_wolfe_steps`) and its own stopping test (largest
    gradient entry <= ``tol``, or relative decrease <= ``ftol``); a problem
    that stops leaves the batch, so late iterations only pay for the slow ones.
    """
    out = theta.clone()
    rows = torch.arange(theta.shape[0], device=theta.device)  # problems still in the batch
    theta = out.clone()
    loss, grad = objective(theta, rows)
    S = torch.zeros(history, *theta.shape, device=theta.device)  # curvature pairs, newest at it % history
    Y = torch.zeros_like(S)
    rho = torch.zeros(history, len(rows), device=theta.device)  # 0 = empty or rejected pair
    gamma = torch.zeros(len(rows), device=theta.device)         # initial inverse-Hessian scale; 0 = none yet
    keep = grad.abs().amax(1) > tol
    for it in range(max_iter + 1):
        if not keep.all():  # drop finished problems from every state tensor
            out[rows[~keep]] = theta[~keep]
            rows, theta, loss, grad = rows[keep], theta[keep], loss[keep], grad[keep]
            S, Y, rho, gamma = S[:, keep], Y[:, keep], rho[:, keep], gamma[keep]
        if len(rows) == 0 or it == max_iter:
            break
        q, alphas = grad.clone(), []
        for j in [(it - 1 - k) % history for k in range(min(it, history))]:
            alpha = rho[j] * (S[j] * q).sum(1)
            q -= alpha[:, None] * Y[j]
            alphas.append((j, alpha))
        first_step = torch.clamp(1.0 / grad.abs().sum(1), max=1.0)
        r = torch.where(gamma == 0, first_step, gamma)[:, None] * q
        for j, alpha in reversed(alphas):
            r += S[j] * (alpha - rho[j] * (Y[j] * r).sum(1))[:, None]
        d = -r
        slope = (grad * d).sum(1)
        uphill = slope >= 0  # a broken quasi-Newton direction: fall back to steepest descent
        d[uphill], slope[uphill] = -grad[uphill], -(grad[uphill] ** 2).sum(1)
        step, new_loss, new_grad = _wolfe_steps(objective, theta, d, loss, slope, rows)
        s, yv = step[:, None] * d, new_grad - grad
        sy = (s * yv).sum(1)
        good = sy > 1e-10
        S[it % history], Y[it % history] = s, yv
        rho[it % history] = torch.where(good, 1.0 / sy.clamp(min=1e-10), torch.zeros_like(sy))
        gamma = torch.where(good, sy / (yv * yv).sum(1).clamp(min=1e-20), gamma)
        stalled = loss - new_loss <= ftol * torch.maximum(loss.abs(), new_loss.abs()).clamp(min=1.0)
        theta, loss, grad = theta + s, new_loss, new_grad
        keep = (grad.abs().amax(1) > tol) & ~stalled
    out[rows] = theta
    return out


def _wolfe_steps(objective, theta: torch.Tensor, d: torch.Tensor, loss: torch.Tensor, slope: torch.Tensor,
                 rows: torch.Tensor, c1: float = 1e-4, c2: float = 0.9, max_evals: int = 30):
    """Per-problem step lengths t meeting the weak Wolfe conditions (bisection / doubling, Lewis & Overton):
    sufficient decrease f(x + t d) <= f(x) + c1 t g.d, and curvature g(x + t d).d >= c2 g.d, which keeps
    every curvature pair s.y positive and lets a step grow beyond 1 where the quadratic model is too timid."""
    step = torch.ones_like(loss)
    low, high = torch.zeros_like(loss), torch.full_like(loss, float("inf"))
    new_loss, new_grad = torch.empty_like(loss), torch.empty_like(theta)
    todo = torch.arange(len(loss), device=loss.device)  # problems whose step is not settled yet
    for evals in range(1, max_evals + 1):
        t = step[todo]
        f, g = objective(theta[todo] + t[:, None] * d[todo], rows[todo])  # only the unsettled ones pay
        new_loss[todo], new_grad[todo] = f, g
        too_long = f > loss[todo] + c1 * t * slope[todo]
        too_short = ~too_long & ((g * d[todo]).sum(1) < c2 * slope[todo])
        bad = too_long | too_short
        if not bad.any() or evals == max_evals:  # out of evaluations: keep the last evaluated step
            break
        high[todo] = torch.where(too_long, t, high[todo])
        low[todo] = torch.where(too_short, t, low[todo])
        todo = todo[bad]
        step[todo] = torch.where(torch.isinf(high[todo]), 2.0 * low[todo], 0.5 * (low[todo] + high[todo]))
    return step, new_loss, new_grad


def _fit_sgd(x: torch.Tensor, y: torch.Tensor, num_classes: int, problem: Problem,
             settings: ProbeSettings) -> LinearProbe:
    """Minibatch SGD (momentum 0.9, cosine schedule); BatchNorm on batch statistics, as in MAE."""
    weight_decay, seed = problem.weight_decay, problem.seed
    probe = LinearProbe(x.shape[1], num_classes).to(x.device).train()
    if problem.start is not None:
        probe.head.load_state_dict(problem.start.head.state_dict())
    opt = torch.optim.SGD([
        {"params": [probe.head.weight], "weight_decay": weight_decay},  # the same L2 term as the L-BFGS path
        {"params": [probe.head.bias], "weight_decay": 0.0},
    ], lr=settings.sgd_lr, momentum=0.9)
    n, bs = x.shape[0], min(settings.sgd_batch_size, x.shape[0])
    steps_per_epoch = n // bs  # drop the last partial batch: BatchNorm wants full batches
    total = settings.sgd_epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(settings.sgd_epochs):
        order = torch.randperm(n, generator=gen).to(x.device)
        for i in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = 0.5 * settings.sgd_lr * (1 + math.cos(math.pi * step / total))
            batch = order[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(probe(x[batch]), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return probe.eval()


@torch.no_grad()
def accuracy(probe: LinearProbe, x: torch.Tensor, y: torch.Tensor, batch_size: int = 65536) -> float:
    """Top-1 accuracy in percent."""
    correct = sum(int((probe(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
                  for i in range(0, x.shape[0], batch_size))
    return 100.0 * correct / x.shape[0]


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


# ---------------------------------------------------------------------------- checkpoints x depths x mask ratios
CSV_FIELDS = ("checkpoint", "checkpoint_path", "variant", "train_mask_ratio", "mask_ratio", "depth",
              "accuracy_mean", "accuracy_std", "accuracies", "weight_decays", "dim", "num_train", "num_test")


def probe_checkpoints(paths: Sequence[str | os.PathLike], *, depths: str | Sequence[str] = "all",
                      mask_ratios: Sequence[float] = (0.0,), data: str = "digits", layers: bool = False,
                      pool: str = "mean", weights: str = "ema", seed: int = 0, shard_size: int = 256,
                      max_train: int | None = None, pixel_baseline: bool = False,
                      cache: str | os.PathLike | None = DEFAULT_CACHE, device: str | torch.device = "cpu",
                      num_workers: int = 0, settings: ProbeSettings | None = None,
                      progress: bool = True) -> dict | None:
    """Probe accuracy for every checkpoint x inference mask ratio x depth (the data of Fig. 6).

    One feature pass per (checkpoint, mask ratio, split) serves every depth.
    Under ``torchrun`` all ranks share the feature passes and rank 0 alone
    trains the probes and returns the result (the others return None).
    """
    from mimflow_core.data import load_dataset

    settings = settings or ProbeSettings(device=str(device))
    infos = check_checkpoints(paths, data, weights=weights)
    config = infos[0].config
    names = parse_depths(depths, config, layers)  # validate before any work ...
    for info in infos[1:]:
        parse_depths(names, info.config, True)  # ... on every checkpoint
    ratios = [float(r) for r in mask_ratios]
    splits = {s: load_dataset(data, config.image_size, s, channels=config.channels) for s in ("train", "test")}
    check_labels(splits["train"].labels, splits["train"].num_classes, f"{data} train split")
    num_classes = splits["train"].num_classes
    rank, _ = dist_info()
    rows, checkpoints = [], []
    for checked in infos:
        model, info = load_model(checked.path, weights=weights, device=device)  # one model in memory at a time
        checkpoints.append(checkpoint_record(info))
        feats = {(r, s): extract_depth_features(model, ds, info.sha256, FeatureSettings(
            data=data, split=s, mask_ratio=r, pool=pool, layers=needs_layers(names), seed=seed,
            shard_size=shard_size, max_samples=max_train if s == "train" else None, weights=info.weights),
            cache=cache, device=device, num_workers=num_workers, progress=progress)
            for r in ratios for s, ds in splits.items()}
        del model  # before the next checkpoint loads, so that two never sit in memory together
        if rank != 0:
            continue
        # the same images at every mask ratio (the subset does not depend on it): one batched probe run
        labels = {s: feats[ratios[0], s]["labels"] for s in splits}
        tasks = [(r, name) for r in ratios for name in names]
        results = linear_probes([feats[r, "train"][name] for r, name in tasks], labels["train"],
                                [feats[r, "test"][name] for r, name in tasks], labels["test"],
                                num_classes=num_classes, settings=settings, progress=progress)
        for (r, name), res in zip(tasks, results):
            rows.append({"checkpoint": info.label, "checkpoint_path": str(info.path), "variant": info.variant,
                         "train_mask_ratio": info.train.get("mask_ratio"), "mask_ratio": r, "depth": name,
                         **res.as_dict()})
    if rank != 0:
        return None
    result = {
        "kind": "mimflow-lab probe", "version": 1, "data": data, "depths": names, "mask_ratios": ratios,
        "pool": pool, "feature_seed": seed, "flow_label": -1, "weights": weights,
        "probe": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
        "checkpoints": checkpoints, "results": rows,
    }
    if pixel_baseline:
        result["pixel_baseline"] = pixel_probe(splits["train"], splits["test"], settings, max_train, seed).as_dict()
    return result


def checkpoint_record(info) -> dict:
    """What the result files say about a checkpoint (enough to find it again)."""
    return {"label": info.label, "path": str(info.path), "sha256": info.sha256, "step": info.step,
            "phase": info.phase, "variant": info.variant, "train_mask_ratio": info.train.get("mask_ratio"),
            "weights": info.weights}


def pixel_probe(train, test, settings: ProbeSettings, max_train: int | None, seed: int) -> ProbeResult:
    """The same probe on raw pixels: the floor a latent space should clear."""
    idx = select_indices(train.labels, max_train, None, seed)

    def pixels(ds, index):
        return np.stack([ds[int(i)][0].flatten().numpy() for i in index])

    return linear_probe(pixels(train, idx), train.labels[idx], pixels(test, range(len(test))), test.labels,
                        num_classes=train.num_classes, settings=settings)


def write_probe_results(result: dict, out: str | os.PathLike) -> dict[str, str]:
    """probe.json, probe.csv and Figure 6 (probe_depth.png/.pdf) under ``out``; returns their paths."""
    out = Path(out)
    files = {"json": str(out / "probe.json"), "csv": str(out / "probe.csv")}
    write_json(files["json"], result)
    with atomic_open(files["csv"], "w") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in result["results"]:
            writer.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
    files |= plot_probe(result, out / "probe_depth")
    return files


# ---------------------------------------------------------------------------- Figure 6
def plot_probe(probe_json: str | os.PathLike | dict, out_stem: str | os.PathLike) -> dict[str, str]:
    """Figure 6 from ``probe.json`` alone: top-1 accuracy (mean ± std over seeds) vs depth.

    One line per (checkpoint, inference mask ratio); colour = checkpoint when
    there are several, else mask ratio; a dashed line marks the raw-pixel probe.
    """
    from mimflow_lab.plots import LINE_COLORS, MARKERS, new_figure, save_figure

    result = probe_json if isinstance(probe_json, dict) else json.loads(Path(probe_json).read_text())
    names = result["depths"]
    lines: dict[tuple[str, float], dict[str, dict]] = {}
    for row in result["results"]:
        lines.setdefault((row["checkpoint_path"], row["mask_ratio"]), {})[row["depth"]] = row
    paths = list(dict.fromkeys(p for p, _ in lines))
    ratios = list(dict.fromkeys(r for _, r in lines))
    labels = {c["path"]: c["label"] for c in result["checkpoints"]}
    fig, ax = new_figure(width=max(3.6, 0.45 * len(names) + 1.5), height=2.8)
    for (path, r), rows in lines.items():
        x = [i for i, n in enumerate(names) if n in rows]
        mean = [rows[names[i]]["accuracy_mean"] for i in x]
        std = [rows[names[i]]["accuracy_std"] or 0.0 for i in x]
        ci, ri = paths.index(path), ratios.index(r)
        colour = LINE_COLORS[(ci if len(paths) > 1 else ri) % len(LINE_COLORS)]
        label = (f"{labels.get(path, Path(path).stem)}, " if len(paths) > 1 else "") + f"inference mask {r:g}"
        ax.errorbar(x, mean, yerr=std, color=colour, marker=MARKERS[ri % len(MARKERS)], capsize=2,
                    linestyle=("-", "--", ":", "-.")[ri % 4] if len(paths) > 1 else "-", label=label)
    if result.get("pixel_baseline"):
        ax.axhline(result["pixel_baseline"]["accuracy_mean"], color="0.5", linestyle="--", linewidth=1,
                   label="raw pixels")
    ax.set_xticks(range(len(names)), [_tick(n) for n in names], rotation=45 if len(names) > 10 else 0)
    ax.set_xlabel("depth (encoder → latent z → flow block output)")
    ax.set_ylabel("linear-probe top-1 accuracy (%)")
    ax.set_title(f"Linear probe vs depth ({result['data']}, {result['pool']}-pooled)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, out_stem)


def _tick(name: str) -> str:
    return {"encoder": "enc", "latent": "z"}.get(name, name if "." in name else f"b{name}")
