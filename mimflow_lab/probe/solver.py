"""The linear probe and how it is fitted to one set of training rows.

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
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .lbfgs import batched_lbfgs
from .settings import ProbeSettings

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
