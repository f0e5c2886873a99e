"""Every architecture knob of a MIMFlow model, the named presets, and each preset's training recipe.

A checkpoint stores ``dataclasses.asdict(config)``; the model is rebuilt from
it alone, so everything that changes a parameter shape lives here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mimflow_core.errors import MIMFlowError


@dataclass(frozen=True)
class ModelConfig:
    # images
    image_size: int = 32          # square input/output resolution in pixels
    channels: int = 3
    patch_size: int = 4           # N = (image_size / patch_size)^2 patches
    # masked encoder (ViT over N patches + K latent queries)
    enc_depth: int = 4
    enc_width: int = 128
    enc_heads: int = 4
    # latent space
    num_tokens: int = 16          # K learnable latent query tokens
    latent_dim: int = 8           # D channels per latent token
    noise_sigma: float = 0.3      # z_hat = z + sigma * eps (paper Eq. 1)
    mask_ratio_min: float = 0.4   # training samples one ratio per batch in [min, max]
    mask_ratio_max: float = 0.6
    # latent normalizing flow (TarFlow/STARFlow autoregressive affine blocks)
    flow_blocks: tuple[int, ...] = (2, 2, 2, 4)  # layers per block; the last is the deep class-conditioned block
    flow_width: int = 128
    flow_heads: int = 4
    flow_gated_attn: bool = True  # sigmoid gate on the attention output (Qiu et al. 2025)
    flow_scale: str = "exp"       # "exp" (MIMFlow) or "softplus" (STARFlow)
    # decoder (image queries + latent tokens, joint self-attention)
    dec_depth: int = 4
    dec_width: int = 128
    dec_heads: int = 4
    dec_refine_width: int = 0     # channels of a residual 3x3 conv pair after the patches (0: none, the paper's)
    # heads
    aux_dim: int = 0              # per-patch auxiliary target size; 0 = no aux head
    aux_width: int = 128
    num_classes: int = 10         # class conditioning of the deep flow block; label -1 = unconditional
    disc_width: int = 64          # PatchGAN discriminator base channels (phase 2)
    disc_layers: int = 2
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "flow_blocks", tuple(int(n) for n in self.flow_blocks))
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for name in ("enc", "dec", "flow"):
            width, heads = getattr(self, f"{name}_width"), getattr(self, f"{name}_heads")
            if width % heads:
                problems.append(f"{name}_width {width} is not divisible by {name}_heads {heads}")
        if not self.flow_blocks or min(self.flow_blocks) < 1:
            problems.append(f"flow_blocks {self.flow_blocks} must be a non-empty list of positive layer counts")
        if self.flow_scale not in ("exp", "softplus"):
            problems.append(f"flow_scale {self.flow_scale!r} must be 'exp' or 'softplus'")
        if not 0.0 <= self.mask_ratio_min <= self.mask_ratio_max < 1.0:
            problems.append(f"mask ratio range [{self.mask_ratio_min}, {self.mask_ratio_max}] must lie in [0, 1)")
        if self.dec_refine_width < 0:
            problems.append(f"dec_refine_width {self.dec_refine_width} must be >= 0 (0: no refinement)")
        if min(self.num_tokens, self.latent_dim, self.num_classes) < 1:
            problems.append("num_tokens, latent_dim and num_classes must be >= 1")
        if problems:
            raise MIMFlowError("invalid model config: " + "; ".join(problems))

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels

    @property
    def latent_numel(self) -> int:
        """Dimension of the flow's input, K * D (the Jacobian is latent_numel x latent_numel)."""
        return self.num_tokens * self.latent_dim

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["flow_blocks"] = list(self.flow_blocks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MIMFlowError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # CPU preset: 32 px digits/CIFAR-sized images, a train step on 32 images well under a second on 2 cores.
    "tiny": ModelConfig(),
    # The demo's preset, sized to scikit-learn's 8x8 grey digits shown at 32 px: the tiny preset's 64 patches, 3-layer
    # encoder and decoder, MLP ratio 2 (22.0 dB held-out after 1300 steps at ~0.6x the tiny step cost), one channel
    # (the digits are grey: an RGB decoder's colour noise alone moved the FID from 54 to 108), and a residual 3x3 conv
    # after the patches (README "The digits recipe": sample FID 187 -> 68 at 900 steps, precision 0 -> 0.31).
    "digits": ModelConfig(channels=1, enc_depth=3, dec_depth=3, mlp_ratio=2.0, dec_refine_width=32),
    # A small GPU/CPU preset for 64 px images.
    "small": ModelConfig(
        image_size=64, patch_size=8, enc_depth=6, enc_width=256, enc_heads=4,
        num_tokens=32, latent_dim=16, flow_blocks=(2, 2, 2, 6), flow_width=256, flow_heads=4,
        dec_depth=6, dec_width=256, dec_heads=4, aux_width=256, disc_layers=3,
    ),
    # ViT-B autoencoder as in the paper with a mid-size flow (a quicker ImageNet-256 run).
    "base": ModelConfig(
        image_size=256, patch_size=16, enc_depth=12, enc_width=768, enc_heads=12,
        num_tokens=128, latent_dim=64, flow_blocks=(2,) * 7 + (8,), flow_width=768, flow_heads=12,
        dec_depth=12, dec_width=768, dec_heads=12, aux_width=768, num_classes=1000, disc_layers=3,
    ),
    # MIMFlow-L exactly as the paper's Table 6: ViT-B encoder/decoder, patch 16, 256 px, K=128, D=64,
    # sigma 0.3, mask 0.4-0.6, flow blocks [2]*7 + [20] at width 1024 (~482M flow parameters).
    "L": ModelConfig(
        image_size=256, patch_size=16, enc_depth=12, enc_width=768, enc_heads=12,
        num_tokens=128, latent_dim=64, flow_blocks=(2,) * 7 + (20,), flow_width=1024, flow_heads=16,
        dec_depth=12, dec_width=768, dec_heads=12, aux_width=768, num_classes=1000, disc_layers=3,
    ),
}


def _check_preset(name: str) -> None:
    if name not in PRESETS:
        raise MIMFlowError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def get_preset(name: str, **overrides) -> ModelConfig:
    """Return preset ``name`` with some fields replaced (e.g. ``num_tokens=64``)."""
    _check_preset(name)
    return dataclasses.replace(PRESETS[name], **overrides)


@dataclass(frozen=True)
class TrainRecipe:
    """The optimisation settings a preset trains well with: what ``train`` uses where the command line says nothing.

    The paper's recipe (lr 1e-4, no warm-up, beta = 1, batch 256) collapses the small CPU models: both loss
    terms are means, over pixels and over latent dimensions, so the ELBO's own balance puts beta near
    K * D / (C * H * W), ~0.04, and at beta = 1 the encoder's cheapest move is to make z carry nothing
    (README "The tiny recipe"). Phase 2 fine-tunes the decoder at the paper's lr on every preset.
    """

    lr: float
    warmup_steps: int
    flow_weight: float   # beta
    batch_size: int      # global batch (all processes together)

    def for_phase(self, phase: int) -> "TrainRecipe":
        """Phase 2 (decoder + GAN) keeps the paper's lr without warm-up, whatever the preset's phase-1 recipe."""
        if phase == 1:
            return self
        return dataclasses.replace(self, lr=PAPER_RECIPE.lr, warmup_steps=PAPER_RECIPE.warmup_steps)


PAPER_RECIPE = TrainRecipe(lr=1e-4, warmup_steps=0, flow_weight=1.0, batch_size=256)
# README "The tiny recipe" / "The digits recipe": lr 1e-3 after a 50-step warm-up, beta = 0.03, batch 32
CPU_RECIPE = TrainRecipe(lr=1e-3, warmup_steps=50, flow_weight=0.03, batch_size=32)

TRAIN_RECIPES: dict[str, TrainRecipe] = {
    "tiny": CPU_RECIPE,
    "digits": CPU_RECIPE,
    # beta's balance K * D / (C * H * W) is tiny's (512 / 12288); 64 px images, no README run: batch 64
    "small": dataclasses.replace(CPU_RECIPE, batch_size=64),
    "base": PAPER_RECIPE,
    "L": PAPER_RECIPE,
}


def get_recipe(preset: str, phase: int = 1) -> TrainRecipe:
    """The training recipe of ``preset`` for ``phase`` (1 or 2)."""
    _check_preset(preset)
    return TRAIN_RECIPES[preset].for_phase(phase)
