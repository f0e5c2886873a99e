"""Probe pipeline vs the naive loop: all depths x 4 inference mask ratios for one checkpoint.

Ours: ``probe_checkpoints`` -- one forward pass per (mask ratio, split) serves
every depth, features land in the NPZ cache, and each depth's weight-decay
sweep (3 seeds x 5 values + refits) is solved by one batched L-BFGS.

Naive: for every (mask ratio, depth) a full forward pass over the same images
(same masks, so identical features), then scikit-learn's
``LogisticRegression`` on standardised features for the *same* protocol:
the same validation splits, the same L2 strength (C = 1 / (weight_decay * n)),
the same selection rule and refit. Both sides therefore optimise the same
objectives and must agree on the accuracies.

    OMP_NUM_THREADS=1 python benchmarks/probe.py                 # tiny preset, digits, CPU
    python benchmarks/probe.py --checkpoint runs/mimflow/ckpt.pt --data DIR --device cuda

Prints wall times, the speed-up and the largest accuracy difference; --json writes them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mimflow_core.atomic import write_json
from mimflow_core.checkpoint import save_checkpoint
from mimflow_core.config import get_preset
from mimflow_core.data import load_dataset
from mimflow_core.model import MIMFlow
from mimflow_lab import load_model
from mimflow_lab.depth_features import FeatureSettings, extract_depth_features, parse_depths
from mimflow_lab.probe import ProbeSettings, probe_checkpoints, stratified_split


def random_checkpoint(path: Path, preset: str) -> str:
    """A checkpoint of ``preset`` with random, non-identity flow blocks (a new flow is the identity)."""
    torch.manual_seed(0)
    model = MIMFlow(get_preset(preset))
    for block in model.flow.blocks:
        torch.nn.init.normal_(block.proj_out.weight, std=0.05)
    save_checkpoint(path, model, step=0, train={"variant": "mimflow", "mask_ratio": "0.4-0.6"})
    return str(path)


def sklearn_probe(train_x, train_y, test_x, test_y, settings: ProbeSettings) -> float:
    """The probe protocol with scikit-learn: per seed, pick C on the validation split, refit, score."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def fit(x, y, weight_decay):
        scaler = StandardScaler().fit(x)
        with warnings.catch_warnings():  # weakly regularised fits may stop at max_iter, as ours may
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(C=1.0 / (weight_decay * len(y)), tol=settings.lbfgs_tolerance,
                                     max_iter=settings.lbfgs_max_iter).fit(scaler.transform(x), y)
        return lambda z: clf.predict(scaler.transform(z))

    grid = sorted(settings.weight_decays)
    accs = []
    for seed in settings.seeds:
        fit_rows, val_rows = stratified_split(train_y, settings.val_fraction, seed)
        val = [100.0 * np.mean(fit(train_x[fit_rows], train_y[fit_rows], wd)(train_x[val_rows]) == train_y[val_rows])
               for wd in grid]
        best = grid[int(np.argmax(val))]
        accs.append(100.0 * np.mean(fit(train_x, train_y, best)(test_x) == test_y))
    return float(np.mean(accs))


def naive(ckpt: str, data: str, depths: list[str], ratios: list[float], max_train: int | None,
          settings: ProbeSettings, device: str) -> dict[tuple[float, str], float]:
    model, info = load_model(ckpt, device=device)
    splits = {s: load_dataset(data, info.config.image_size, s) for s in ("train", "test")}
    out = {}
    for r in ratios:
        for name in depths:
            feats = {}
            for s, ds in splits.items():  # a full forward pass for this depth alone
                fs = FeatureSettings(data=data, split=s, mask_ratio=r, layers="." in name,
                                     max_samples=max_train if s == "train" else None)
                feats[s] = extract_depth_features(model, ds, info.sha256, fs, cache=None, device=device, progress=False)
            out[(r, name)] = sklearn_probe(feats["train"][name], feats["train"]["labels"], feats["test"][name],
                                           feats["test"]["labels"], settings)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="checkpoint to probe (default: a random tiny-preset model)")
    ap.add_argument("--preset", default="tiny", help="preset of the random model when no --checkpoint")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--mask-ratios", default="0,0.25,0.5,0.75")
    ap.add_argument("--max-train", type=int, default=None, help="class-balanced training subset")
    ap.add_argument("--layers", action="store_true", help="also every transformer layer of the deep block")
    ap.add_argument("--tol", type=float, default=ProbeSettings.lbfgs_tolerance,
                    help="L-BFGS stopping tolerance (largest gradient entry) of both sides")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    ratios = [float(r) for r in args.mask_ratios.split(",")]
    settings = ProbeSettings(device=args.device, lbfgs_tolerance=args.tol)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or random_checkpoint(Path(tmp) / "random.pt", args.preset)
        model, info = load_model(ckpt)
        depths = parse_depths("all", info.config, layers=args.layers)
        start = time.perf_counter()
        run = dict(depths=depths, mask_ratios=ratios, data=args.data, max_train=args.max_train,
                   cache=Path(tmp) / "cache", device=args.device, settings=settings, progress=False)
        ours = probe_checkpoints([ckpt], **run)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        probe_checkpoints([ckpt], **run)
        t_warm = time.perf_counter() - start
        start = time.perf_counter()
        theirs = naive(ckpt, args.data, depths, ratios, args.max_train, settings, args.device)
        t_naive = time.perf_counter() - start
    diffs = {f"{r:g}/{row['depth']}": row["accuracy_mean"] - theirs[(r, row["depth"])]
             for row in ours["results"] for r in [row["mask_ratio"]]}
    worst = max(abs(d) for d in diffs.values())
    print(f"{len(depths)} depths x {len(ratios)} mask ratios, {info.config.num_tokens} tokens, data {args.data}, "
          f"torch threads {torch.get_num_threads()}")
    for row in ours["results"]:
        print(f"  mask {row['mask_ratio']:<5g} {row['depth']:>8}: ours {row['accuracy_mean']:6.2f}  "
              f"naive {theirs[(row['mask_ratio'], row['depth'])]:6.2f}")
    print(f"ours (cold cache) {t_ours:8.1f} s   ours (warm cache) {t_warm:8.1f} s   naive {t_naive:8.1f} s")
    print(f"speed-up cold {t_naive / t_ours:.1f}x, warm {t_naive / t_warm:.1f}x; "
          f"largest accuracy difference {worst:.2f} points")
    if args.json:
        write_json(args.json, {"depths": depths, "mask_ratios": ratios, "data": args.data,
                               "seconds": {"ours_cold": t_ours, "ours_warm": t_warm, "naive": t_naive},
                               "speedup_cold": t_naive / t_ours, "speedup_warm": t_naive / t_warm,
                               "accuracy_difference": diffs, "max_abs_accuracy_difference": worst})


if __name__ == "__main__":
    main()
