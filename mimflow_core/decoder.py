"""Decoders from latent tokens to per-patch outputs: the pixel decoder and the auxiliary head.

Both use *joint self-attention* (not cross-attention): N image queries (a
shared learnable embedding plus a per-patch position embedding) are
concatenated with the K projected latent tokens, one transformer reads the
whole sequence, and the N image positions are read out (paper Fig. 2).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mimflow_core.config import ModelConfig
from mimflow_core.layers import Transformer, init_weights, sincos_2d, unpatchify


class PatchQueryDecoder(nn.Module):
    """Latents (B, K, D) -> per-patch vectors (B, N, out_dim) through joint self-attention."""

    def __init__(self, num_patches: int, num_tokens: int, latent_dim: int, width: int, depth: int,
                 heads: int, out_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.latent_proj = nn.Linear(latent_dim, width)
        self.latent_pos = nn.Parameter(torch.zeros(1, num_tokens, width))
        self.image_query = nn.Parameter(torch.zeros(1, 1, width))
        self.image_pos = nn.Parameter(torch.zeros(1, num_patches, width))
        self.transformer = Transformer(width, depth, heads, mlp_ratio)
        self.head = nn.Linear(width, out_dim)
        init_weights(self)
        for p in (self.latent_pos, self.image_query):
            nn.init.trunc_normal_(p, std=0.02)
        with torch.no_grad():
            self.image_pos.copy_(sincos_2d(math.isqrt(num_patches), width))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        queries = (self.image_query + self.image_pos).expand(z.shape[0], -1, -1)
        h = torch.cat([queries, self.latent_proj(z) + self.latent_pos], dim=1)
        return self.head(self.transformer(h)[:, : queries.shape[1]])


class PixelRefiner(nn.Module):
    """x + conv3x3(GELU(conv3x3(x))): a residual convolution across patch borders, starting as the identity.

    A ViT decoder predicts every patch on its own, so after a short training
    its outputs jump at patch borders and carry pixel noise. Such
    high-frequency errors cost little L2 but move Inception features far
    (on the demo's digits a 3x3 blur of the reconstructions took FID from 190
    to 75), so the decoder can end with this small convolution, trained with it.
    """

    def __init__(self, channels: int, width: int):
        super().__init__()
        self.inner = nn.Conv2d(channels, width, 3, padding=1, padding_mode="replicate")
        self.outer = nn.Conv2d(width, channels, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.outer(nn.functional.gelu(self.inner(x)))


class Decoder(PatchQueryDecoder):
    """The pixel decoder: latents -> images (B, C, H, W) in [-1, 1] (no squashing; the loss is L2)."""

    def __init__(self, config: ModelConfig):
        c = config
        super().__init__(c.num_patches, c.num_tokens, c.latent_dim, c.dec_width, c.dec_depth, c.dec_heads,
                         c.patch_dim, c.mlp_ratio)
        self.patch_size, self.channels = c.patch_size, c.channels
        self.refine = PixelRefiner(c.channels, c.dec_refine_width) if c.dec_refine_width else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = unpatchify(super().forward(z), self.patch_size, self.channels)
        return images if self.refine is None else self.refine(images)


class AuxHead(PatchQueryDecoder):
    """A light one-layer head predicting per-patch semantic targets (HOG, DINO, CLIP) from z (paper Eq. 7)."""

    def __init__(self, config: ModelConfig):
        c = config
        super().__init__(c.num_patches, c.num_tokens, c.latent_dim, c.aux_width, 1, max(1, c.aux_width // 64),
                         c.aux_dim, c.mlp_ratio)
