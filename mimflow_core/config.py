"""Every architecture knob of a MIMFlow model, the named presets, and each preset's training recipe.

A checkpoint stores ``dataclasses.asdict(config)``; the model is rebuilt from
it alone, so everything that changes a parameter shape lives here.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from mimflow_core.errors import MIMFlowError
from mimflow_core.validate import is_kind


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
        problems = _type_problems(self)
        if problems:  # the range checks below would fail with Python's own errors on a wrong type
            raise MIMFlowError("invalid model config: " + "; ".join(problems))
        object.__setattr__(self, "flow_blocks", tuple(self.flow_blocks))
        problems = _range_problems(self)
        if not problems and self.approx_parameters() > MAX_PARAMETERS:
            problems.append(f"it describes a model of about {self.approx_parameters():.2g} parameters, more than "
                            f"the {MAX_PARAMETERS:.0e} this tool builds (the paper's MIMFlow-L has 6.4e+08)")
        if problems:
            raise MIMFlowError("invalid model config: " + "; ".join(problems))

    def approx_parameters(self) -> float:
        """The model's parameter count to within a few percent (transformer layers, embeddings, class table):
        what refuses an absurd config from a file before a single tensor is allocated."""
        def layers(depth: int, width: int) -> float:
            return depth * (4 + 2 * self.mlp_ratio) * width * width

        tokens = self.num_patches + self.num_tokens
        encoder = layers(self.enc_depth, self.enc_width) + tokens * self.enc_width + self.patch_dim * self.enc_width
        flow = (layers(sum(self.flow_blocks), self.flow_width)
                + (self.num_classes + len(self.flow_blocks) * (self.num_tokens + 3 * self.latent_dim))
                * self.flow_width)
        decoder = layers(self.dec_depth, self.dec_width) + 2 * tokens * self.dec_width + self.patch_dim * self.dec_width
        aux = layers(1, self.aux_width) + tokens * self.aux_width if self.aux_dim else 0
        widths = [self.channels] + [self.disc_width * min(2 ** i, 8) for i in range(self.disc_layers + 1)] + [1]
        discriminator = sum(16 * a * b for a, b in zip(widths, widths[1:]))
        return float(encoder + flow + decoder + aux + discriminator)

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
        unknown = sorted(map(str, set(d) - known))
        if unknown:
            raise MIMFlowError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)


MAX_PARAMETERS = 2e10  # 80 GB of float32 weights, 30x MIMFlow-L


# what a config's one-line refusal says each annotation must be
NOUNS = {"tuple[int, ...]": "a list of integers", "int": "an int", "float": "a finite number", "bool": "a bool",
         "str": "a str"}


def _type_problems(config: ModelConfig) -> list[str]:
    """Fields whose value is not of the declared type (a checkpoint's config is data anyone could have written)."""
    return [f"{f.name} must be {NOUNS[f.type]}, not {getattr(config, f.name)!r}"[:200]
            for f in dataclasses.fields(config) if not is_kind(getattr(config, f.name), f.type)]


def _range_problems(c: ModelConfig) -> list[str]:
    """Values of the right type that no model can be built from."""
    problems = []
    positive = ("image_size", "patch_size", "enc_depth", "enc_width", "enc_heads", "num_tokens", "latent_dim",
                "flow_width", "flow_heads", "dec_depth", "dec_width", "dec_heads", "aux_width", "num_classes",
                "disc_width", "disc_layers")
    problems += [f"{name} {getattr(c, name)} must be >= 1" for name in positive if getattr(c, name) < 1]
    problems += [f"{name} {getattr(c, name)} must be >= 0" for name in ("aux_dim", "dec_refine_width")
                 if getattr(c, name) < 0]
    if problems:
        return problems  # the checks below divide by these sizes
    if c.channels not in (1, 3):
        problems.append(f"channels {c.channels} must be 1 (grey) or 3 (RGB)")
    if c.image_size % c.patch_size:
        problems.append(f"image_size {c.image_size} is not a multiple of patch_size {c.patch_size}")
    for name in ("enc", "dec", "flow"):
        width, heads = getattr(c, f"{name}_width"), getattr(c, f"{name}_heads")
        if width % heads:
            problems.append(f"{name}_width {width} is not divisible by {name}_heads {heads}")
    if not c.flow_blocks or min(c.flow_blocks) < 1:
        problems.append(f"flow_blocks {list(c.flow_blocks)} must be a non-empty list of positive layer counts")
    if c.flow_scale not in ("exp", "softplus"):
        problems.append(f"flow_scale {c.flow_scale!r} must be 'exp' or 'softplus'")
    if not 0.0 <= c.mask_ratio_min <= c.mask_ratio_max < 1.0:
        problems.append(f"mask ratio range [{c.mask_ratio_min}, {c.mask_ratio_max}] must lie in [0, 1)")
    if c.noise_sigma < 0 or c.mlp_ratio <= 0:
        problems.append(f"noise_sigma {c.noise_sigma} must be >= 0 and mlp_ratio {c.mlp_ratio} > 0")
    if c.disc_layers > 30 or c.image_size < 3 * 2 ** c.disc_layers:
        problems.append(f"disc_layers {c.disc_layers} halves {c.image_size} px images below the discriminator's "
                        f"3 px minimum (at most {max(0, int(math.log2(max(c.image_size, 1) / 3)))} layers)")
    return problems


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
    # batch 16: a step costs half of batch 32's, and 1874 steps of 16 beat 937 of 32 at equal time (one MIMFlow,
    # 180 samples at cfg 1: FID 59.5 -> 46.8, precision 0.30 -> 0.59, recall 0.18 -> 0.37, PSNR 21.0 -> 21.3 dB)
    "digits": dataclasses.replace(CPU_RECIPE, batch_size=16),
    # beta's balance K * D / (C * H * W) is tiny's (512 / 12288); 64 px images, no README run: batch 64
    "small": dataclasses.replace(CPU_RECIPE, batch_size=64),
    "base": PAPER_RECIPE,
    "L": PAPER_RECIPE,
}


def get_recipe(preset: str, phase: int = 1) -> TrainRecipe:
    """The training recipe of ``preset`` for ``phase`` (1 or 2)."""
    _check_preset(preset)
    return TRAIN_RECIPES[preset].for_phase(phase)
