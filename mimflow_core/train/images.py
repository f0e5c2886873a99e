"""The PNG grids a run leaves for a person to look at: class-conditional samples and reconstructions."""
from __future__ import annotations

from pathlib import Path

import torch

from mimflow_core.atomic import atomic_write
import numpy as np

from mimflow_core.data import ImageDataset, balanced_subset
from mimflow_core.encoder import random_masking
from mimflow_core.model import MIMFlow


@torch.no_grad()
def sample_grid(model: MIMFlow, device: torch.device, cfg: float, seed: int = 0, per_class: int = 10) -> torch.Tensor:
    """(rows*per_class, C, H, W) samples, one row per class (the first 10 classes), fixed noise."""
    classes = min(10, model.config.num_classes)
    labels = torch.arange(classes).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed + 777)
    noise = torch.randn(len(labels), model.config.num_tokens, model.config.latent_dim, generator=g)
    return model.sample(labels.to(device), cfg=cfg, noise=noise.to(device)).float().cpu()


@torch.no_grad()
def reconstruction_grid(model: MIMFlow, dataset: ImageDataset, device: torch.device, count: int = 10) -> torch.Tensor:
    """Rows: held-out originals, reconstructions (unmasked), reconstructions from 50%-masked inputs.

    The originals are a seeded class-balanced choice (one per class for 10 classes), not the first files,
    which on an ImageFolder sorted by class would all be one class.
    """
    chosen = balanced_subset(np.asarray(dataset.labels), min(count, len(dataset)), seed=0)
    x = torch.stack([dataset[int(i)][0] for i in chosen]).to(device)
    plain = model.decode(model.encode(x, 0.0).z)
    mask = random_masking(len(x), model.config.num_patches, 0.5, torch.device("cpu"), torch.Generator().manual_seed(0))
    masked = model.decode(model.encoder(x, mask=mask.to(device)).z)
    return torch.cat([x, plain.float(), masked.float()]).cpu()


def save_image_grid(images: torch.Tensor, path: Path, per_row: int = 10) -> None:
    """Write images in [-1, 1] as one PNG grid (2 px gaps), atomically."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), nrow=per_row, padding=2)
    image = Image.fromarray(grid.permute(1, 2, 0).numpy())
    scale = max(1, 256 // images.shape[-1])  # small images are upscaled (nearest) so a viewer shows them legibly
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    atomic_write(path, lambda f: image.save(f, format="PNG"))
