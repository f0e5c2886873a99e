"""The ADM evaluation suite on precomputed features: IS, FID, sFID, precision, recall.

Reference statistics stored in the reference batch (``mu``, ``sigma``,
``mu_s``, ``sigma_s``) are used when present, as ADM does; otherwise they are
fitted to the reference features. IS needs the Inception's classifier; without
it the score is reported as unavailable, with the reason, never estimated.
"""
from __future__ import annotations

import warnings

import torch

from .cache import reference_features
from .inception_features import Features, npz_features
from .frechet import frechet_distance, gaussian_stats
from .inception import TORCH_FIDELITY_WEIGHTS, FIDInception, WeightsSource
from .inception_score import inception_score
from .npz import read_reference_stats
from .density_coverage import DC_NEAREST, density_coverage
from .kid import KID_SUBSET_SIZE, KID_SUBSETS, kid
from .precision_recall import precision_recall


def adm_metrics(
    reference: Features,
    samples: Features,
    weights: WeightsSource,
    reference_stats: dict | None = None,
    device: str | torch.device = "cpu",
    bootstrap: int | None = None,
) -> dict:
    """All five ADM metrics plus their provenance, as a JSON-ready dict (with ``bootstrap`` replicates of FID
    and sFID when asked)."""
    stats = reference_stats or {}
    mu, sigma = (stats["mu"], stats["sigma"]) if "sigma" in stats else gaussian_stats(reference.pool)
    mu_s, sigma_s = (stats["mu_s"], stats["sigma_s"]) if "sigma_s" in stats else gaussian_stats(reference.spatial)
    precision, recall = precision_recall(reference.pool, samples.pool, device=device)
    subset_size = min(KID_SUBSET_SIZE, len(samples), len(reference))
    if subset_size < KID_SUBSET_SIZE:
        warnings.warn(f"KID: {len(samples)} samples / {len(reference)} reference images, fewer than the standard "
                      f"subset of {KID_SUBSET_SIZE}; subsets of {subset_size} are used (kid_subset_size in the "
                      "result), so this KID is not comparable with a standard one", stacklevel=2)
    # ADM's minimum reference (4 images) is enough for precision/recall's k=3 but not for k=5: report why, not fail
    density, coverage = (density_coverage(reference.pool, samples.pool, device=device)
                         if len(reference) > DC_NEAREST else (None, None))
    kid_mean, kid_std = kid(samples.pool, reference.pool, KID_SUBSETS, subset_size, device=device)
    result = {
        "inception_score": None if samples.logits is None else inception_score(samples.logits),
        "fid": frechet_distance(*gaussian_stats(samples.pool), mu, sigma),
        "sfid": frechet_distance(*gaussian_stats(samples.spatial), mu_s, sigma_s),
        "precision": precision,
        "recall": recall,
        "kid": kid_mean,
        "kid_std": kid_std,
        "kid_subsets": KID_SUBSETS,
        "kid_subset_size": subset_size,
        "density": density,
        "coverage": coverage,
        "density_coverage_k": DC_NEAREST,
        "num_samples": len(samples),
        "num_reference": len(reference),
        "reference_stats": "from the reference file" if "sigma" in stats else "fitted to its images",
        "inception_weights": weights.describe(),
    }
    if bootstrap is not None:
        from .bootstrap import bootstrap_fid, split_half_fid

        result["bootstrap"] = {"fid": bootstrap_fid(samples.pool, mu, sigma, bootstrap),
                               "sfid": bootstrap_fid(samples.spatial, mu_s, sigma_s, bootstrap, seed=1)}
        result["fid_split_half"] = split_half_fid(samples.pool) if len(samples) >= 4 else None
    if density is None:
        result["density_coverage_unavailable"] = (f"{len(reference)} reference images; density and coverage use "
                                                  f"each one's {DC_NEAREST} nearest neighbours")
    if samples.logits is None:
        result["inception_score_unavailable"] = (
            f"{weights.path} has no 1008-way classifier; pass --inception {TORCH_FIDELITY_WEIGHTS} "
            "(torch-fidelity's weights) to get IS"
        )
    return result


def report_lines(metrics: dict) -> list[str]:
    """The lines ADM's evaluator.py prints, in its order."""
    score = metrics["inception_score"]
    is_text = score if score is not None else f"unavailable ({metrics['inception_score_unavailable']})"
    return [
        f"Inception Score: {is_text}",
        f"FID: {metrics['fid']}",
        f"sFID: {metrics['sfid']}",
        f"Precision: {metrics['precision']}",
        f"Recall: {metrics['recall']}",
    ]


def bootstrap_lines(metrics: dict) -> list[str]:
    """``FID 12.34 ± 0.08 (95 % 12.19–12.50)`` lines, only when --bootstrap was given."""
    lines = []
    for key, name in (("fid", "FID"), ("sfid", "sFID")):
        if b := metrics.get("bootstrap", {}).get(key):
            lines.append(f"{name} {metrics[key]:.2f} ± {b['std']:.2f} (95 % {b['ci95'][0]:.2f}–{b['ci95'][1]:.2f}, "
                         f"{b['replicates']} bootstrap replicates)")
    if metrics.get("fid_split_half") is not None:
        lines.append(f"FID between two halves of the samples: {metrics['fid_split_half']:.2f}")
    return lines


def evaluate_npz(
    reference_path, samples_path, inception: FIDInception, weights: WeightsSource, batch_size: int = 64,
    device: str | torch.device = "cpu", bootstrap: int | None = None,
) -> dict:
    """ADM's evaluator.py: metrics of a sample batch against a reference batch, both ADM npz files."""
    reference_stats = read_reference_stats(reference_path)
    reference = reference_features(reference_path, inception, weights, batch_size)
    samples = npz_features(inception, samples_path, batch_size, desc="samples")
    result = adm_metrics(reference, samples, weights, reference_stats, device, bootstrap)
    return {"reference": str(reference_path), "samples": str(samples_path), **result}
