"""MIMFlow: masked encoder -> (noisy) latent tokens -> latent normalizing flow, and a pixel decoder.

The encoder output z is perturbed as z_hat = z + sigma * eps (paper Eq. 1);
z_hat feeds both the flow (whose NLL is the prior term of the ELBO and whose
gradient reaches the encoder) and the decoder. Sampling inverts the flow from
Gaussian noise and decodes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mimflow_core.config import ModelConfig
from mimflow_core.decoder import AuxHead, Decoder
from mimflow_core.encoder import EncoderOutput, MaskedEncoder
from mimflow_core.errors import MIMFlowError
from mimflow_core.flow import LatentFlow

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class MIMFlow(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = MaskedEncoder(config)
        self.flow = LatentFlow(config)
        self.decoder = Decoder(config)
        self.aux_head = AuxHead(config) if config.aux_dim > 0 else None

    def encode(self, images: torch.Tensor, mask_ratio: float = 0.0,
               generator: torch.Generator | None = None) -> EncoderOutput:
        """Latents of ``images`` (B, C, H, W) in [-1, 1] with ``mask_ratio`` of the patches masked."""
        return self.encoder(images, mask_ratio, generator)

    def add_noise(self, z: torch.Tensor, noise: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """z_hat = z + sigma * eps: the posterior sample that the flow and the decoder both see.

        ``noise`` is eps when the caller draws it itself (the trainer draws it for the whole global batch,
        so every world size sees the same eps); otherwise eps is drawn from ``generator``.
        """
        if noise is None:
            noise = torch.randn(z.shape, generator=generator,
                                device=z.device if generator is None else generator.device)
        return z + self.config.noise_sigma * noise.to(device=z.device, dtype=z.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W), roughly in [-1, 1], from latents (B, K, D)."""
        return self.decoder(z)

    def nll(self, z: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Flow negative log-likelihood of latents z under the model, per latent dimension.

        Returns ``loss`` (the training objective 0.5 mean(eps^2) - log|det J| / D,
        averaged over the batch, no constant), and per sample ``nll`` in nats per
        dimension (with the Gaussian constant), ``bpd`` (bits per dimension), the
        Gaussian term ``prior`` and ``logdet`` per dimension.
        """
        out = self.flow(z, y)
        dims = self.config.latent_numel
        prior = 0.5 * out.eps.flatten(1).pow(2).mean(1)
        logdet = out.logdet / dims
        nll = prior - logdet + _HALF_LOG_2PI
        return {"loss": (prior - logdet).mean(), "nll": nll, "bpd": nll / math.log(2.0),
                "prior": prior, "logdet": logdet}

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, cfg: float = 1.0, noise: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images for class ``labels`` (B,) (-1 = unconditional), guidance scale ``cfg`` (1 = none).

        ``noise`` (B, K, D) fixes the Gaussian input, so a caller can give
        sample i the same noise however the work is split across processes.
        """
        check_guidance(cfg)
        if noise is None:
            shape = (labels.shape[0], self.config.num_tokens, self.config.latent_dim)
            noise = torch.randn(shape, generator=generator,
                                device=labels.device if generator is None else generator.device)
        dtype = next(self.parameters()).dtype
        z = self.flow.reverse(noise.to(device=labels.device, dtype=dtype), labels, cfg)
        return self.decode(z)


def guidance_problem(cfg: float) -> str | None:
    """What is wrong with a guidance scale outside [0, inf), else None: p + (s - 1)(p_cond - p_uncond) is the
    unconditional prediction at 0, none at 1 and stronger class guidance above; below 0 it pushes samples away
    from their class, and NaN or Inf make every sample NaN."""
    if isinstance(cfg, (int, float)) and math.isfinite(cfg) and cfg >= 0:
        return None
    return "not a guidance scale; use s >= 0 (0: unconditional, 1: no guidance, > 1: stronger class guidance)"


def check_guidance(cfg: float) -> None:
    if problem := guidance_problem(cfg):
        raise MIMFlowError(f"cfg {cfg}: {problem}")


def count_parameters(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())
