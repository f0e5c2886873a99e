"""ADM-protocol metrics: IS, FID, sFID, precision and recall on the 2015-12-05 FID Inception.

``inception`` (network + weights), ``inception_features`` (uint8 images -> features),
``frechet``, ``inception_score``, ``precision_recall``, ``kid``, ``density_coverage``
(the metrics), ``bootstrap`` (their intervals), ``encoders`` (other representations:
a user's TorchScript encoder), ``cache`` (reference features), ``npz`` (ADM batch
files), ``suite`` (all of them, as ADM's evaluator.py reports them, and more).
"""
from .inception_features import Features, extract_inception_features, npz_features, to_uint8
from .frechet import frechet_distance, gaussian_stats
from .inception import FIDInception, WeightsSource, find_inception_weights, load_inception
from .inception_score import inception_score
from .precision_recall import manifold_radii, precision_recall
from .suite import adm_metrics, evaluate_npz, report_lines

__all__ = [
    "FIDInception", "Features", "WeightsSource", "adm_metrics", "evaluate_npz", "extract_inception_features",
    "find_inception_weights", "frechet_distance", "gaussian_stats", "inception_score", "load_inception",
    "manifold_radii", "npz_features", "precision_recall", "report_lines", "to_uint8",
]
