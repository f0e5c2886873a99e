"""The latent normalizing flow: TarFlow/STARFlow-style autoregressive affine blocks.

Each block permutes the K latent tokens (identity or reversal, alternating),
then maps token t affinely with a shift and log-scale predicted by a causal
transformer from the tokens before it::

    out_t = (x_t - mu_t(x_<t)) * exp(-a_t(x_<t)),     log|det J| = -sum_t a_t

so its Jacobian is block lower-triangular in the permuted token order and its
inverse runs token by token with a KV cache. The shallow blocks are
unconditional; the last, deep block is class-conditioned and is the only one
where classifier-free guidance acts (STARFlow's ``cond_top_only``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mimflow_core.config import ModelConfig
from mimflow_core.layers import Transformer, init_weights


class FlowOutput(NamedTuple):
    eps: torch.Tensor                 # (B, K, D) the flow's output, N(0, I) under the model
    logdet: torch.Tensor              # (B,) log|det df/dz| per sample
    block_outputs: list[torch.Tensor]  # output of every block, each (B, K, D) in the original token order


class FlowBlock(nn.Module):
    """One autoregressive affine block (see the module docstring)."""

    def __init__(self, num_tokens: int, latent_dim: int, width: int, depth: int, heads: int, *,
                 flip: bool, num_classes: int = 0, gated: bool = True, scale: str = "exp",
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.flip, self.scale, self.num_classes = flip, scale, num_classes
        self.proj_in = nn.Linear(latent_dim, width)
        self.start = nn.Parameter(torch.zeros(1, 1, width))   # stands in for "token -1"
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, width))
        # one extra row, index num_classes, is the "no label" embedding used for label -1 and CFG
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.transformer = Transformer(width, depth, heads, mlp_ratio, causal=True, gated=gated)
        self.proj_out = nn.Linear(width, 2 * latent_dim)
        init_weights(self)
        for p in (self.start, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        nn.init.zeros_(self.proj_out.weight)  # a new block is the identity map
        nn.init.zeros_(self.proj_out.bias)

    @property
    def conditional(self) -> bool:
        return self.class_embed is not None

    def permute(self, x: torch.Tensor) -> torch.Tensor:
        """Token permutation of this block (an involution, so it also undoes itself)."""
        return x.flip(1) if self.flip else x

    def _class_embedding(self, y: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        if y is None:
            y = torch.full((batch,), -1, dtype=torch.long, device=device)
        return self.class_embed(torch.where(y < 0, torch.full_like(y, self.num_classes), y))[:, None]

    def _inputs(self, prev: torch.Tensor, positions: slice, y: torch.Tensor | None) -> torch.Tensor:
        """Transformer inputs at ``positions``; ``prev`` holds the token before each position (None=start)."""
        h = prev + self.pos_embed[:, positions]
        if self.conditional:
            h = h + self._class_embedding(y, h.shape[0], h.device)
        return h

    def _affine_params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, raw = self.proj_out(h).chunk(2, dim=-1)
        if self.scale == "exp":
            return mu, raw
        # STARFlow: scale = softplus(raw), normalised so that raw = 0 is still the identity
        return mu, torch.log(F.softplus(raw) / math.log(2.0))

    def _guided(self, run, y: torch.Tensor | None, cfg: float) -> tuple[torch.Tensor, torch.Tensor]:
        """TarFlow's guidance: p <- p + w (p_cond - p_uncond), w = cfg - 1, for both mu and log-scale."""
        if cfg == 1.0 or not self.conditional or y is None:
            return run(y)
        mu_c, a_c = run(y)
        mu_u, a_u = run(torch.full_like(y, -1))
        w = cfg - 1.0
        return mu_c + w * (mu_c - mu_u), a_c + w * (a_c - a_u)

    def conditioner(self, x_perm: torch.Tensor, y: torch.Tensor | None = None, cfg: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shift and log-scale for every token of the permuted sequence, each from the tokens before it."""
        B = x_perm.shape[0]
        prev = torch.cat([self.start.expand(B, 1, -1), self.proj_in(x_perm[:, :-1])], dim=1)

        def run(labels):
            return self._affine_params(self.transformer(self._inputs(prev, slice(None), labels)))

        return self._guided(run, y, cfg)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, cfg: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x_perm = self.permute(x)
        mu, log_scale = self.conditioner(x_perm, y, cfg)
        out = (x_perm - mu) * torch.exp(-log_scale)
        return self.permute(out), -log_scale.flatten(1).sum(1)

    def reverse(self, out: torch.Tensor, y: torch.Tensor | None = None, cfg: float = 1.0) -> torch.Tensor:
        """Invert :meth:`forward` token by token, reusing keys/values of earlier tokens (KV cache).

        Differentiable (the Jacobian analysis records it to get exact inverse
        products); :meth:`LatentFlow.reverse` runs it without gradients.
        """
        out_perm = self.permute(out)
        B, K, _ = out_perm.shape
        guided = cfg != 1.0 and self.conditional and y is not None
        labels = torch.cat([y, torch.full_like(y, -1)]) if guided else y
        caches = [{} for _ in self.transformer.layers]
        prev = self.start.expand(B * (2 if guided else 1), 1, -1)
        tokens = []
        for t in range(K):
            h = self.transformer(self._inputs(prev, slice(t, t + 1), labels), caches)
            mu, a = self._affine_params(h)
            if guided:
                (mu_c, mu_u), (a_c, a_u) = mu.chunk(2), a.chunk(2)
                mu, a = mu_c + (cfg - 1.0) * (mu_c - mu_u), a_c + (cfg - 1.0) * (a_c - a_u)
            x_t = out_perm[:, t:t + 1] * torch.exp(a) + mu
            tokens.append(x_t)
            prev = self.proj_in(torch.cat([x_t, x_t]) if guided else x_t)
        return self.permute(torch.cat(tokens, dim=1))


class LatentFlow(nn.Module):
    """A stack of :class:`FlowBlock`: shallow unconditional blocks, then one deep conditional block."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        last = len(config.flow_blocks) - 1
        self.blocks = nn.ModuleList(
            FlowBlock(config.num_tokens, config.latent_dim, config.flow_width, depth, config.flow_heads,
                      flip=i % 2 == 1, num_classes=config.num_classes if i == last else 0,
                      gated=config.flow_gated_attn, scale=config.flow_scale, mlp_ratio=config.mlp_ratio)
            for i, depth in enumerate(config.flow_blocks)
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, cfg: float = 1.0) -> FlowOutput:
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        outputs = []
        for block in self.blocks:
            z, ld = block(z, y, cfg)
            logdet = logdet + ld
            outputs.append(z)
        return FlowOutput(z, logdet, outputs)

    @torch.no_grad()
    def reverse(self, eps: torch.Tensor, y: torch.Tensor | None = None, cfg: float = 1.0) -> torch.Tensor:
        for block in reversed(self.blocks):
            eps = block.reverse(eps, y, cfg)
        return eps
