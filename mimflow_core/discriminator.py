"""PatchGAN discriminator for phase 2 (adversarial decoder fine-tuning, paper §3.3).

pix2pix's N-layer design: strided 4x4 convolutions with LeakyReLU, then a
1-channel map of per-patch real/fake logits. GroupNorm instead of BatchNorm
keeps it independent of the batch composition under DDP.
"""
from __future__ import annotations

import torch
from torch import nn

from mimflow_core.config import ModelConfig


class PatchDiscriminator(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        width, layers = config.disc_width, config.disc_layers
        seq: list[nn.Module] = [nn.Conv2d(config.channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, layers + 1):
            out = width * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            seq += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, out // 4), out),
                    nn.LeakyReLU(0.2)]
            ch = out
        seq.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*seq)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch logits (B, 1, h, w) for images in [-1, 1]."""
        return self.net(images)
