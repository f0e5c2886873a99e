"""Transformer building blocks shared by the encoder, decoder, flow and aux head.

Attention runs through PyTorch's fused ``scaled_dot_product_attention`` for
speed, except inside :func:`math_attention`, where it is an explicit softmax.
The fused kernels have no forward-mode AD (``torch.func.jvp``) and no double
backward, so every Jacobian analysis wraps its calls in ``math_attention()``.
"""
from __future__ import annotations

import contextlib
import math
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_MATH_ATTENTION: ContextVar[bool] = ContextVar("mimflow_math_attention", default=False)


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Use the explicit (differentiable to any order, forward-mode too) attention path."""
    token = _MATH_ATTENTION.set(True)
    try:
        yield
    finally:
        _MATH_ATTENTION.reset(token)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, T, d) tensors; causal masks keys after the query.

    With a KV cache q may be shorter than k: query i then sits at position
    len(k) - len(q) + i, and the causal mask is aligned to the end.
    """
    if not _MATH_ATTENTION.get():
        if causal and q.shape[-2] != k.shape[-2]:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_mask(q, k))
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~_causal_mask(q, k), float("-inf"))
    return scores.softmax(dim=-1) @ v


def _causal_mask(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    tq, tk = q.shape[-2], k.shape[-2]
    return torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)


class SelfAttention(nn.Module):
    """Multi-head self-attention, optionally gated and causal, with an optional KV cache.

    The gate (Qiu et al. 2025, "gated attention") is sigmoid(x W_g), computed
    from the layer input and multiplied elementwise into the attention output
    before the output projection.
    """

    def __init__(self, width: int, heads: int, causal: bool = False, gated: bool = False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.gate = nn.Linear(width, width) if gated else None
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:  # append this step's keys/values to those of earlier positions
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        out = attention(q, k, v, self.causal).transpose(1, 2).reshape(B, T, C)
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate(x))
        return self.proj(out)


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(width * ratio)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, causal: bool = False, gated: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal=causal, gated=gated)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of :class:`Block` with a final LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 causal: bool = False, gated: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(Block(width, heads, mlp_ratio, causal, gated) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, caches: list[dict] | None = None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, None if caches is None else caches[i])
        return self.norm(x)


def init_weights(module: nn.Module) -> None:
    """ViT/MAE initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def sincos_2d(grid: int, width: int) -> torch.Tensor:
    """MAE's 2-D sine-cosine position embedding for a grid x grid patch layout, shape (1, grid*grid, width).

    Used to initialise the per-patch position embeddings: with a 0.02-std random
    init every image query of the decoder starts almost identical after
    LayerNorm, and reconstruction learns far more slowly.
    """
    quarter = width // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    parts = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        angles = pos[:, None] * omega[None]
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, dim=1)
    emb = torch.nn.functional.pad(emb, (0, width - emb.shape[1]))  # widths not divisible by 4
    return emb.float()[None]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C), patches in row-major order, pixels (row, col, channel) inside."""
    B, C, H, W = images.shape
    p = patch_size
    x = images.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify` for square images."""
    B, N, _ = patches.shape
    p, g = patch_size, int(round(math.sqrt(N)))
    x = patches.reshape(B, g, g, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, g * p, g * p)
