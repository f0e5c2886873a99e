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
    log_p = torch.log_softmax(torch.as_tensor(np.asarray(logits), dtype=torch.float64), dim=1)
    scores = []
    for part in log_p.split(split_size):
        log_marginal = torch.logsumexp(part, dim=0) - np.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores))
