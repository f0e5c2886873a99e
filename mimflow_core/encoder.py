"""The masked encoder: a ViT that reads a partly masked image and writes K latent tokens.

Masked patches are replaced *in place* by a learnable mask token (SimMIM
style), so the sequence length never depends on the mask; K learnable latent
queries with their own 1D position embedding are appended, and their outputs,
projected to D channels, are the latent z (paper §3.1).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mimflow_core.config import ModelConfig
from mimflow_core.layers import Transformer, init_weights, patchify, sincos_2d


class EncoderOutput(NamedTuple):
    z: torch.Tensor         # (B, K, D) latent tokens
    features: torch.Tensor  # (B, K, enc_width) the same tokens before the projection (Table 5a's probe input)
    mask: torch.Tensor      # (B, N) bool, True where the patch was masked


def random_masking(batch: int, num_patches: int, ratio: float, device: torch.device,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask exactly round(ratio * N) patches per image, chosen uniformly (MAE: noise -> argsort)."""
    num_masked = int(round(ratio * num_patches))
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch, num_patches, generator=generator, device=noise_device).to(device)
    ids = noise.argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    return mask.scatter_(1, ids[:, :num_masked], True)


class MaskedEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.patch_size = c.patch_size
        self.patch_embed = nn.Linear(c.patch_dim, c.enc_width)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches, c.enc_width))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.enc_width))
        self.latent_queries = nn.Parameter(torch.zeros(1, c.num_tokens, c.enc_width))
        self.latent_pos = nn.Parameter(torch.zeros(1, c.num_tokens, c.enc_width))
        self.transformer = Transformer(c.enc_width, c.enc_depth, c.enc_heads, c.mlp_ratio)
        self.to_latent = nn.Linear(c.enc_width, c.latent_dim)
        init_weights(self)
        for p in (self.mask_token, self.latent_queries, self.latent_pos):
            nn.init.trunc_normal_(p, std=0.02)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(c.image_size // c.patch_size, c.enc_width))

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.0,
                generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> EncoderOutput:
        """Encode ``images`` (B, C, H, W) in [-1, 1]; pass ``mask`` to choose the masked patches yourself."""
        tokens = self.patch_embed(patchify(images, self.patch_size))
        B, N, _ = tokens.shape
        if mask is None:
            mask = random_masking(B, N, mask_ratio, tokens.device, generator)
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens) + self.pos_embed
        queries = (self.latent_queries + self.latent_pos).expand(B, -1, -1)
        features = self.transformer(torch.cat([tokens, queries], dim=1))[:, N:]
        return EncoderOutput(self.to_latent(features), features, mask)
