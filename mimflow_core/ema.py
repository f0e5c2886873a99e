"""Exponential moving average of a model's weights, with a warm-up on the decay.

The paper keeps an EMA with decay 0.9999 over ~450k steps. A short CPU run of
a few thousand steps would leave such an EMA at its initial weights, so the
decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the
TensorFlow / timm ModelEMA rule); long runs see the nominal decay after ~10^5
updates.
"""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * weights for float tensors; others are copied."""
        d = self.current_decay()
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].lerp_(v.detach(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
        self.num_updates = num_updates
