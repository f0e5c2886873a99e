"""Inception Score as ADM computes it (after improved-gan's reference code).

softmax over the 1008 unbiased logits, then for each *sequential* split of
5000 samples (no shuffling; a shorter last split is kept):
exp(mean_i KL(p(y|x_i) || mean_j p(y|x_j))); the score is the mean over splits.
Log-probabilities come from ``log_softmax`` in float64, so a probability
that underflows to 0 contributes 0 instead of ADM's NaN.
"""
from __future__ import annotations

import numpy as np
import torch

SPLIT_SIZE = 5000


def inception_score(logits: np.ndarray | torch.Tensor, split_size: int = SPLIT_SIZE) -> float:
    """Mean over sequential splits of exp(E_x KL(p(y|x) || p(y)))."""
    return split_scores(log_probabilities(logits), None, split_size)


def log_probabilities(logits: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1)


def split_scores(log_p: torch.Tensor, weights: torch.Tensor | None = None, split_size: int = SPLIT_SIZE) -> float:
    """The score from :func:`log_probabilities`, each sample counted ``weights`` times (a bootstrap's draws; None:
    once) in the mean and the marginal of its split (splits stay the original sequential blocks)."""
    scores = []
    for i, part in enumerate(log_p.split(split_size)):
        w = (torch.ones(len(part), dtype=part.dtype) if weights is None
             else weights[i * split_size:i * split_size + len(part)].to(part.dtype))
        if w.sum() == 0:  # a resample drew nothing from this split
            continue
        log_marginal = torch.logsumexp(part + w.log()[:, None], dim=0) - w.sum().log()
        kl = (part.exp() * (part - log_marginal)).sum(dim=1)
        scores.append((w @ kl / w.sum()).exp().item())
    return float(np.mean(scores))
