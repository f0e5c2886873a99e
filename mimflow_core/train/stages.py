"""The stretches of a run that train different modules: joint (MIMFlow), autoencoder then flow (starflow), decoder.

Each stage names the submodules with gradients and the outputs its forward pass
computes; :class:`LatentPass` is that forward pass as one module, because DDP
must wrap the module whose ``forward`` produces every trained output, so the
trainer wraps this view of the model rather than calling submodules.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mimflow_core.model import MIMFlow
from mimflow_core.train.options import TrainOptions


@dataclass(frozen=True)
class Stage:
    """A stretch of training with one set of trained modules and losses."""

    name: str            # "joint" | "autoencoder" | "flow" | "decoder"
    start: int
    end: int
    trained: tuple[str, ...]   # model submodules with gradients
    heads: tuple[str, ...]     # outputs LatentPass computes


def plan_stages(opts: TrainOptions, has_aux: bool) -> list[Stage]:
    """The stages of a resolved run: phase 2 trains the decoder; starflow splits phase 1 at ``ae_steps``."""
    aux = ("aux_head",) if has_aux else ()
    aux_out = ("aux",) if has_aux else ()
    if opts.phase == 2:
        return [Stage("decoder", 0, opts.steps, ("decoder",), ("decoder",))]
    if opts.variant == "starflow":
        return [Stage("autoencoder", 0, opts.ae_steps, ("encoder", "decoder") + aux, ("decoder",) + aux_out),
                Stage("flow", opts.ae_steps, opts.steps, ("flow",), ("flow",))]
    return [Stage("joint", 0, opts.steps, ("encoder", "flow", "decoder") + aux, ("decoder", "flow") + aux_out)]


class LatentPass(nn.Module):
    """Masked encode -> z_hat = z + sigma * noise -> the heads a stage needs (what DDP wraps)."""

    def __init__(self, model: MIMFlow, heads: tuple[str, ...], train_encoder: bool):
        super().__init__()
        self.model, self.heads, self.train_encoder = model, heads, train_encoder

    def forward(self, images: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor) -> dict:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_encoder):
            z = self.model.encoder(images, mask=mask).z
        z_hat = self.model.add_noise(z, noise)
        out = {}
        if "decoder" in self.heads:
            out["recon"] = self.model.decode(z_hat)
        if "flow" in self.heads:
            out["nll"] = self.model.nll(z_hat, labels)
        if "aux" in self.heads:
            out["aux"] = self.model.aux_head(z_hat)
        return out
