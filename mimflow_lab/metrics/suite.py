"""The ADM evaluation suite on precomputed features: IS, FID, sFID, precision, recall (and KID,
density/coverage, FD_r, bootstraps and the same metrics in other encoders' feature spaces).

Reference statistics stored in the reference batch (``mu``, ``sigma``,
``mu_s``, ``sigma_s``) are used when present, as ADM does; otherwise they are
fitted to the reference features. IS needs the Inception's classifier; without
it the score is reported as unavailable, with the reason, never estimated.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .bootstrap import (Bootstrap, bootstrap_fid, bootstrap_inception_score, bootstrap_kid, bootstrap_neighbours,
                        bootstrap_recall, split_half_fid)
from .cache import reference_encoder_features, reference_features
from .encoders import Encoder, npz_encoder_features
from .inception_features import Features, npz_features
from .frechet import frechet_distance, gaussian_stats
from .inception import TORCH_FIDELITY_WEIGHTS, FIDInception, WeightsSource
from .inception_score import inception_score
from .npz import read_reference_stats
from .density_coverage import DC_NEAREST, ball_counts, density_and_coverage
from .kid import KID_SUBSET_SIZE, KID_SUBSETS, kid
from .precision_recall import K_NEAREST, RECALL_REACH, SampleReach, inside_masks, shares


@dataclass(frozen=True)
class Encoded:
    """One ``--encoder``'s features of the reference, the samples and (with --ref-val) the held-out images."""

    identity: dict
    reference: np.ndarray
    samples: np.ndarray
    validation: np.ndarray | None = None


def feature_metrics(
    reference: np.ndarray, samples: np.ndarray, what: str, reference_stats: tuple | None = None,
    validation: np.ndarray | None = None, device: str | torch.device = "cpu", bootstrap: Bootstrap | None = None,
    kid_subset_size: int | None = None,
) -> dict:
    """FD, precision/recall, KID and density/coverage in one feature space (the Inception's pool_3 or an
    encoder's), with FD_r against held-out ``validation`` features and every metric's bootstrap when asked: one
    code path for every representation, so the numbers of two spaces are computed alike."""
    mu, sigma = reference_stats if reference_stats is not None else gaussian_stats(reference)
    fake_inside, real_inside, reach = inside_masks(reference, samples, device=device,
                                                   reach=RECALL_REACH if bootstrap is not None else 0)
    precision, recall = shares(fake_inside, real_inside)
    subset_size = kid_subset_size or min(KID_SUBSET_SIZE, len(samples), len(reference))
    if subset_size < KID_SUBSET_SIZE and kid_subset_size is None:
        warnings.warn(f"KID ({what}): {len(samples)} samples / {len(reference)} reference images, fewer than the "
                      f"standard subset of {KID_SUBSET_SIZE}; subsets of {subset_size} are used (kid_subset_size in "
                      "the result), so this KID is not comparable with a standard one", stacklevel=3)
    # ADM's minimum reference (4 images) is enough for precision/recall's k=3 but not for k=5: report why, not fail
    balls = (ball_counts(reference, samples, device=device, keep_pairs=bootstrap is not None)
             if len(reference) > DC_NEAREST else None)
    density, coverage = (None, None) if balls is None else density_and_coverage(*balls[:2])
    kid_mean, kid_std = kid(samples, reference, KID_SUBSETS, subset_size, device=device)
    result = {"fd": frechet_distance(*gaussian_stats(samples), mu, sigma), "precision": precision, "recall": recall,
              "kid": kid_mean, "kid_std": kid_std, "kid_subsets": KID_SUBSETS, "kid_subset_size": subset_size,
              "density": density, "coverage": coverage, "density_coverage_k": DC_NEAREST}
    if validation is not None:
        fd_val = frechet_distance(*gaussian_stats(validation), mu, sigma)
        result["fd_val"] = fd_val
        result["fd_r"] = result["fd"] / fd_val if fd_val > 0 else None
    if bootstrap is not None:
        result["bootstrap"] = _replicates(samples, reference, mu, sigma, fake_inside, balls, reach, subset_size,
                                          bootstrap, device)
    if density is None:
        result["density_coverage_unavailable"] = (f"{len(reference)} reference images; density and coverage use "
                                                  f"each one's {DC_NEAREST} nearest neighbours")
    return result


def _replicates(samples: np.ndarray, reference: np.ndarray, mu: np.ndarray, sigma: np.ndarray,
                fake_inside: torch.Tensor, balls: tuple | None, reach: SampleReach, subset_size: int, bootstrap: Bootstrap,
                device: str | torch.device) -> dict:
    """Every metric's bootstrap summary in one feature space, from the per-point tests already made; a metric
    that cannot be resampled here is listed under ``not_bootstrapped`` with the reason."""
    n = bootstrap.replicates
    result = {"fd": bootstrap_fid(samples, mu, sigma, n, reference=reference if bootstrap.reference else None),
              "kid": bootstrap_kid(samples, reference, subset_size, n, resample_reference=bootstrap.reference,
                                   device=device)}
    skipped = {}
    if reach.pairs is None:
        skipped["recall"] = reach.reason
    else:
        result["recall"] = bootstrap_recall(reach, K_NEAREST, len(reference), n,
                                            resample_reference=bootstrap.reference)
    counts, pairs = (None, None) if balls is None else (balls[0].cpu().numpy(), balls[2].cpu().numpy())
    if balls is None:
        skipped.update(dict.fromkeys(("density", "coverage"), "not computed: too few reference images"))
    result.update(bootstrap_neighbours(fake_inside.cpu().numpy(), counts, pairs, len(reference), DC_NEAREST, n))
    return {**result, "not_bootstrapped": skipped}


def adm_metrics(
    reference: Features,
    samples: Features,
    weights: WeightsSource,
    reference_stats: dict | None = None,
    device: str | torch.device = "cpu",
    bootstrap: Bootstrap | None = None,
    validation: Features | None = None,
    encoded: dict[str, Encoded] | None = None,
    kid_subset_size: int | None = None,
) -> dict:
    """All five ADM metrics plus KID, density/coverage and their provenance, as a JSON-ready dict; with
    ``bootstrap`` replicates of FID and sFID, with ``validation`` (--ref-val) FID_r, and each ``encoded``
    representation's metrics under ``encoders``."""
    stats = reference_stats or {}
    if bootstrap is not None and bootstrap.reference and "sigma" in stats:
        warnings.warn(f"--bootstrap-reference: each replicate refits the reference's Gaussians to a resample of its "
                      f"{len(reference)} images' features in place of the statistics stored in the file",
                      stacklevel=2)
    pool = feature_metrics(reference.pool, samples.pool, "Inception",
                           (stats["mu"], stats["sigma"]) if "sigma" in stats else None,
                           None if validation is None else validation.pool, device, bootstrap, kid_subset_size)
    mu_s, sigma_s = (stats["mu_s"], stats["sigma_s"]) if "sigma_s" in stats else gaussian_stats(reference.spatial)
    result = {
        "inception_score": None if samples.logits is None else inception_score(samples.logits),
        "fid": pool.pop("fd"),
        "sfid": frechet_distance(*gaussian_stats(samples.spatial), mu_s, sigma_s),
    }
    replicates = pool.pop("bootstrap", None)
    result.update({{"fd_val": "fid_val", "fd_r": "fid_r"}.get(k, k): v for k, v in pool.items()})
    result.update({
        "num_samples": len(samples),
        "num_reference": len(reference),
        "reference_stats": "from the reference file" if "sigma" in stats else "fitted to its images",
        "inception_weights": weights.describe(),
    })
    if replicates is not None:
        result["bootstrap"] = {"fid": replicates.pop("fd"),
                               **({} if samples.logits is None else {"inception_score": bootstrap_inception_score(
                                   samples.logits, bootstrap.replicates)}),
                               "sfid": bootstrap_fid(samples.spatial, mu_s, sigma_s, bootstrap.replicates, seed=1,
                                                     reference=reference.spatial if bootstrap.reference else None),
                               **replicates}
        result["fid_split_half"] = split_half_fid(samples.pool) if len(samples) >= 4 else None
    if validation is not None:
        result["num_ref_val"] = len(validation)
    if samples.logits is None:
        result["inception_score_unavailable"] = (
            f"{weights.path} has no 1008-way classifier; pass --inception {TORCH_FIDELITY_WEIGHTS} "
            "(torch-fidelity's weights) to get IS"
        )
    if encoded:
        result["encoders"] = {name: {"identity": e.identity, **feature_metrics(
            e.reference, e.samples, name, None, e.validation, device, bootstrap, kid_subset_size)}
            for name, e in encoded.items()}
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


def _interval(name: str, value: float, b: dict, digits: int = 2) -> str:
    """One metric with its bootstrap std and interval, flagged when the interval misses the estimate itself: a
    resample holds ~37 % duplicates, which biases FID-like metrics (upwards) by more than their spread when the
    samples are few, so the percentile interval is then no interval for the estimate."""
    low, high = b["ci95"]
    line = (f"{name} {value:.{digits}f} ± {b['std']:.{digits}f} (95 % {low:.{digits}f}–{high:.{digits}f}, "
            f"{b['replicates']} bootstrap replicates)")
    if not low <= value <= high:
        line += (f" [the estimate lies outside its interval: the resamples are biased by "
                 f"{b['mean'] - value:+.{digits}f}, more than their spread; too few samples for this interval]")
    return line


# the metrics printed with an interval after FID/sFID: (key, name, decimals)
INTERVALS = (("precision", "Precision", 4), ("recall", "Recall", 4), ("density", "Density", 4),
             ("coverage", "Coverage", 4), ("kid", "KID", 5))


def extra_lines(metrics: dict) -> list[str]:
    """What the options beyond ADM's ask for, printed after ADM's five lines: ``FID 12.34 ± 0.08 (95 %
    12.19–12.50)`` (and every other metric's interval) with --bootstrap, FID_r with --ref-val, one line (and
    its intervals) per --encoder."""
    replicates = metrics.get("bootstrap", {})
    lines = [_interval(name, metrics[key], b) for key, name in (("inception_score", "Inception Score"),
                                                                 ("fid", "FID"), ("sfid", "sFID"))
             if (b := replicates.get(key))]
    lines += [_interval(name, metrics[key], b, digits) for key, name, digits in INTERVALS
              if (b := replicates.get(key))]
    if metrics.get("fid_split_half") is not None:
        lines.append(f"FID between two halves of the samples: {metrics['fid_split_half']:.2f}")
    if "fid_val" in metrics:
        lines.append(f"FID_r: {metrics['fid_r']} (FID of --ref-val: {metrics['fid_val']})")
    for name, m in metrics.get("encoders", {}).items():
        parts = [f"FD {m['fd']:.4g}"] + ([f"FD_r {m['fd_r']:.4g}"] if m.get("fd_r") is not None else [])
        parts += [f"{key} {m[key]:.4g}" for key in ("precision", "recall", "density", "coverage")
                  if m[key] is not None]
        lines.append(f"{name}: " + ", ".join(parts + [f"KID {m['kid']:.4g}"]))
        if b := m.get("bootstrap", {}).get("fd"):
            lines.append(_interval(f"{name} FD", m["fd"], b))
        lines += [_interval(f"{name} {title}", m[key], b, digits) for key, title, digits in INTERVALS
                  if (b := m.get("bootstrap", {}).get(key))]
    return lines


def evaluate_npz(
    reference_path, samples_path, inception: FIDInception, weights: WeightsSource, batch_size: int = 64,
    device: str | torch.device = "cpu", bootstrap: Bootstrap | None = None, encoders: Sequence[Encoder] = (),
    ref_val: str | os.PathLike | None = None, kid_subset_size: int | None = None,
) -> dict:
    """ADM's evaluator.py: metrics of a sample batch against a reference batch, both ADM npz files (plus each
    encoder's and, with ``ref_val``, FD_r against held-out real images)."""
    reference_stats = read_reference_stats(reference_path)
    reference = reference_features(reference_path, inception, weights, batch_size)
    samples = npz_features(inception, samples_path, batch_size, desc="samples")
    validation = None if ref_val is None else reference_features(ref_val, inception, weights, batch_size)
    encoded = {e.name: Encoded(
        e.identity(), reference_encoder_features(reference_path, e, batch_size),
        npz_encoder_features(e, samples_path, batch_size),
        None if ref_val is None else reference_encoder_features(ref_val, e, batch_size)) for e in encoders}
    result = adm_metrics(reference, samples, weights, reference_stats, device, bootstrap, validation, encoded,
                         kid_subset_size)
    return {"reference": str(reference_path), "samples": str(samples_path),
            **({"ref_val": str(ref_val)} if ref_val is not None else {}), **result}
