"""Held-out metrics of a trained model: reconstruction MSE/PSNR and the flow's bits/dim (``eval.json``)."""
from __future__ import annotations

import torch

from mimflow_core.data import ImageDataset
from mimflow_core.encoder import random_masking
from mimflow_core.model import MIMFlow
from mimflow_core.train.masking import MaskPolicy


@torch.no_grad()
def evaluate_model(model: MIMFlow, dataset: ImageDataset, policy: MaskPolicy, device: torch.device,
                   seed: int = 0, batch_size: int = 100) -> dict:
    """Reconstruction of unmasked, noise-free latents; NLL of z_hat = E(x) + sigma*eps under the flow.

    ``bpd_heldout`` encodes with the training policy's typical mask ratio (the
    latents the flow was trained on); ``bpd_heldout_unmasked`` with none.
    MSE is on the [-1, 1] pixel scale; PSNR uses its peak-to-peak range 2
    (the same as [0, 1] images with peak 1), averaged per image.
    """
    g = torch.Generator().manual_seed(seed + 12345)
    c = model.config
    sq_err, psnr, bpd_masked, bpd_plain, nll_plain = [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([im for im, _ in items]).to(device)
        y = torch.tensor([lab for _, lab in items], device=device)
        enc = model.encode(x, 0.0)
        recon = model.decode(enc.z).float()
        mse = (recon - x).pow(2).flatten(1).mean(1)
        sq_err.append(mse)
        psnr.append(10 * torch.log10(4.0 / mse.clamp_min(1e-12)))
        noise = torch.randn(enc.z.shape, generator=g).to(device)
        out = model.nll(model.add_noise(enc.z, noise), y)
        bpd_plain.append(out["bpd"])
        nll_plain.append(out["nll"])
        mask = random_masking(len(x), c.num_patches, policy.typical(), torch.device("cpu"), g).to(device)
        z_masked = model.encoder(x, mask=mask).z
        bpd_masked.append(model.nll(model.add_noise(z_masked, noise), y)["bpd"])
    cat = lambda xs: torch.cat(xs).double()  # noqa: E731
    return {"heldout_images": len(dataset), "recon_mse": cat(sq_err).mean().item(),
            "recon_psnr_db": cat(psnr).mean().item(), "bpd_heldout": cat(bpd_masked).mean().item(),
            "bpd_heldout_mask_ratio": policy.typical(), "bpd_heldout_unmasked": cat(bpd_plain).mean().item(),
            "nll_nats_per_dim_heldout_unmasked": cat(nll_plain).mean().item()}
