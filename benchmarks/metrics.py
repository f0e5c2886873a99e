"""ADM metrics side by side with their peers: time, peak memory, agreement.

1. Fréchet distance at 2048 dims: ours (pivoted Cholesky + one symmetric
   eigenvalue problem), scipy ``sqrtm`` as ADM's evaluator uses it,
   torch-fidelity (``eigvals`` of S1 S2) and clean-fid (``sqrtm``).
   Targets: >= 10x faster than sqrtm, >= 2x faster than torch-fidelity,
   within 1e-10 relative.
2. Precision/recall, k = 3, 2048-d features: ours vs torch-fidelity's
   ``prc`` (its memory-saving ``part`` path, and its default ``full`` path where
   it fits), 10k x 10k, and with ``--big`` 50k samples x 10k references.
   Each case runs in its own process; peak memory = that process's max RSS.
   Targets at 50k x 10k: < 4 GB and faster than torch-fidelity.
2b. KID and density/coverage, 2048-d: ours vs torch-fidelity's KID and the
   ``prdc`` package, 10k x 10k and with ``--big`` 50k x 50k (prdc is not run
   there: its n x n matrices would need ~60 GB), one process per case. Target:
   density/coverage in >= 5x less peak memory than prdc at 10k. Then the
   bootstraps: seconds per FID replicate at 50k x 2048 (against a naive
   replicate), precision/density/coverage and recall replicates, KID's.
3. Inception feature extraction, images/s: ours vs torch-fidelity's
   ``FeatureExtractorInceptionV3`` on the same weights (the fid-helper
   TorchScript's, mapped; a seeded stand-in classifier, since the real one is
   not on this machine), on real images (foolbox's ImageNet samples, 256 px).

    python benchmarks/metrics.py [--big] [--threads 2] [--json results/benchmarks/metrics.json]
    python benchmarks/metrics.py --only-kid-dc --big   # 2b alone
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ 1. Fréchet distance

def random_covariance(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A mean and a full-rank covariance whose spectrum decays like Inception pool_3's (power law)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = 50.0 * np.arange(1, dim + 1) ** -1.2 + 1e-4
    return rng.random(dim), (basis * spectrum) @ basis.T


def adm_sqrtm_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """ADM evaluator.py's formula (sqrtm without the ``disp`` argument scipy 1.18 removed)."""
    import scipy.linalg

    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def bench_frechet(dim: int = 2048, repeats: int = 2) -> list[dict]:
    import warnings

    from cleanfid.fid import frechet_distance as cleanfid_frechet
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    from mimflow_lab.metrics import frechet_distance

    (mu1, s1), (mu2, s2) = random_covariance(dim, 0), random_covariance(dim, 1)
    methods = {
        "ours (Cholesky + eigvalsh)": lambda: frechet_distance(mu1, s1, mu2, s2),
        "scipy sqrtm (ADM)": lambda: adm_sqrtm_frechet(mu1, s1, mu2, s2),
        "torch-fidelity (eigvals)": lambda: fid_statistics_to_metric({"mu": mu1, "sigma": s1},
                                                                     {"mu": mu2, "sigma": s2}, verbose=False)[
            "frechet_inception_distance"],
        "clean-fid (sqrtm)": lambda: cleanfid_frechet(mu1, s1, mu2, s2),
    }
    rows = {name: {"method": name, "seconds": float("inf"), "cpu_seconds": float("inf")} for name in methods}
    for _ in range(repeats):  # interleaved, best of `repeats`: the machine may be shared
        for name, fn in methods.items():
            wall, cpu = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows[name]["value"] = float(fn())
            rows[name]["seconds"] = min(rows[name]["seconds"], time.perf_counter() - wall)
            rows[name]["cpu_seconds"] = min(rows[name]["cpu_seconds"], time.process_time() - cpu)
    ours = rows["ours (Cholesky + eigvalsh)"]
    for row in rows.values():
        row["speedup_of_ours"] = row["seconds"] / ours["seconds"]
        row["cpu_speedup_of_ours"] = row["cpu_seconds"] / ours["cpu_seconds"]
        row["rel_diff_to_ours"] = abs(row["value"] - ours["value"]) / abs(ours["value"])
    return list(rows.values())


# ------------------------------------------------------------------ 2. precision / recall (one process per case)

def pr_worker(method: str, n_fake: int, n_real: int, dim: int) -> dict:
    import torch

    rng = np.random.default_rng(0)
    real = torch.from_numpy(np.abs(rng.standard_normal((n_real, dim), dtype=np.float32)))
    fake = torch.from_numpy(np.abs(rng.standard_normal((n_fake, dim), dtype=np.float32)) * 1.05)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    if method == "ours":
        from mimflow_lab.metrics import precision_recall

        precision, recall = precision_recall(real, fake)
    else:
        from torch_fidelity.metric_prc import calculate_precision_recall_full, calculate_precision_recall_part

        fn = calculate_precision_recall_part if method == "torch-fidelity part" else calculate_precision_recall_full
        precision, recall = fn(fake, real, 3, 10_000)  # its convention: generated first
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"method": method, "n_fake": n_fake, "n_real": n_real, "seconds": seconds, "cpu_seconds": cpu,
            "precision": precision,
            "recall": recall, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "features_and_runtime_gb": baseline / 1e9}


def bench_precision_recall(sizes: list[tuple[int, int]], threads: int) -> list[dict]:
    rows = []
    for n_fake, n_real in sizes:
        methods = ["ours", "torch-fidelity part"] + (["torch-fidelity full"] if n_fake <= 10_000 else [])
        for method in methods:
            cmd = [sys.executable, __file__, "--pr-worker", method, str(n_fake), str(n_real)]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {method:22s} {n_fake}x{n_real}: {rows[-1]['seconds']:.1f} s, "
                  f"peak {rows[-1]['peak_rss_gb']:.2f} GB", file=sys.stderr)
    return rows


# ------------------------------------------------------------------ 2b. KID and density/coverage (one process per case)

def kid_dc_worker(method: str, n: int, dim: int) -> dict:
    """One of: ours/torch-fidelity KID, ours/prdc density+coverage, on n x n features; seconds and peak RSS.

    Each method's code is imported before the baseline is read, so peak - baseline is the metric's own memory.
    """
    import contextlib
    import io

    import torch
    from prdc import compute_prdc
    from torch_fidelity.metric_kid import kid_features_to_metric

    from mimflow_lab.metrics.density_coverage import density_coverage
    from mimflow_lab.metrics.kid import kid

    rng = np.random.default_rng(0)
    real = np.abs(rng.standard_normal((n, dim), dtype=np.float32))
    fake = np.abs(rng.standard_normal((n, dim), dtype=np.float32)) * 1.05
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    if method == "ours KID":
        values = dict(zip(("kid", "kid_std"), kid(fake, real)))
    elif method == "torch-fidelity KID":
        out = kid_features_to_metric(torch.from_numpy(fake), torch.from_numpy(real), verbose=False)
        values = {"kid": out["kernel_inception_distance_mean"], "kid_std": out["kernel_inception_distance_std"]}
    elif method == "ours density/coverage":
        values = dict(zip(("density", "coverage"), density_coverage(real, fake)))
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the sizes
            out = compute_prdc(real.astype(np.float64), fake.astype(np.float64), nearest_k=5)
        values = {"density": float(out["density"]), "coverage": float(out["coverage"])}
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"method": method, "n": n, "seconds": seconds, "cpu_seconds": cpu, **values,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "features_and_runtime_gb": baseline / 1e9}


PRDC_LIMIT = 20_000  # prdc holds three n x n float64 matrices: 9.6 GB at 20k, 60 GB at 50k (this machine: 24 GB)


def bench_kid_dc(n: int, threads: int) -> list[dict]:
    rows = []
    for method in ("ours KID", "torch-fidelity KID", "ours density/coverage", "prdc density/coverage"):
        if method.startswith("prdc") and n > PRDC_LIMIT:
            rows.append({"method": method, "n": n, "not_run": f"needs ~{3 * n * n * 8 / 1e9:.0f} GB for its three "
                                                             "n x n float64 distance matrices"})
            print(f"  {method:24s} {n}x{n}: not run ({rows[-1]['not_run']})", file=sys.stderr)
            continue
        cmd = [sys.executable, __file__, "--kid-dc-worker", method, str(n)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {method:24s} {n}x{n}: {rows[-1]['seconds']:.1f} s, peak {rows[-1]['peak_rss_gb']:.2f} GB "
              f"({rows[-1]['features_and_runtime_gb']:.2f} GB of it features and runtime)", file=sys.stderr)
    return rows


def bench_bootstrap(n: int = 50_000, dim: int = 2048, replicates: int = 2) -> dict:
    """Seconds per bootstrap replicate of FID (reference factor computed once, outside the timing) against the
    naive replicate: copy the drawn rows, fit their Gaussian, our Fréchet distance."""
    from mimflow_lab.metrics import frechet_distance, gaussian_stats
    from mimflow_lab.metrics.bootstrap import bootstrap_fid

    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((n, dim)))
    mu, sigma = random_covariance(dim, 1)
    bootstrap_fid(x[:4 * dim], mu, sigma, 1)  # warm-up
    start = time.perf_counter()
    result = bootstrap_fid(x, mu, sigma, replicates)
    seconds = (time.perf_counter() - start) / replicates
    start = time.perf_counter()
    naive = frechet_distance(*gaussian_stats(x[np.random.default_rng(0).integers(0, n, n)]), mu, sigma)
    naive_seconds = time.perf_counter() - start
    print(f"  bootstrap FID {n}x{dim}: {seconds:.1f} s per replicate, naive {naive_seconds:.1f} s "
          f"({naive_seconds / seconds:.1f}x)", file=sys.stderr)
    return {"n": n, "dim": dim, "replicates": replicates, "seconds_per_replicate": seconds,
            "naive_seconds_per_replicate": naive_seconds, "fid_mean": result["mean"], "naive_fid": naive}


def bench_bootstrap_recall_kid(n: int = 10_000, dim: int = 2048, replicates: int = 100) -> dict:
    """Recall's bootstrap: the extra cost of keeping each sample's 16 nearest neighbours and the pairs within
    reach in the one distance pass, then seconds per replicate; KID's: ``replicates`` replicates against one
    plain KID (its kernels are computed once for all of them)."""
    from mimflow_lab.metrics.bootstrap import bootstrap_kid, bootstrap_recall
    from mimflow_lab.metrics.kid import kid
    from mimflow_lab.metrics.precision_recall import RECALL_REACH, inside_masks

    rng = np.random.default_rng(0)
    real = np.abs(rng.standard_normal((n, dim), dtype=np.float32))
    fake = np.abs(rng.standard_normal((n, dim), dtype=np.float32)) * 1.05
    timed = {}
    for name, fn in (("pass", lambda: inside_masks(real, fake)), ("pass_with_reach",
                                                                  lambda: inside_masks(real, fake, reach=RECALL_REACH)),
                     ("kid", lambda: kid(fake, real)), ("kid_bootstrap", lambda: bootstrap_kid(fake, real, 1000,
                                                                                               replicates))):
        start = time.perf_counter()
        timed[name] = (fn(), time.perf_counter() - start)
    reach = timed["pass_with_reach"][0][2]
    start = time.perf_counter()
    recall = bootstrap_recall(reach, 3, n, replicates)
    recall_seconds = (time.perf_counter() - start) / replicates
    row = {"n": n, "dim": dim, "replicates": replicates, "pass_seconds": timed["pass"][1],
           "pass_with_reach_seconds": timed["pass_with_reach"][1], "reach_pairs": int(reach.pairs.shape[1]),
           "recall_seconds_per_replicate": recall_seconds, "recall_std": recall["std"],
           "radius_capped": recall["radius_capped"], "kid_seconds": timed["kid"][1],
           "kid_bootstrap_seconds": timed["kid_bootstrap"][1], "kid_std": timed["kid_bootstrap"][0]["std"]}
    print(f"  bootstrap recall {n}x{n}: pass {row['pass_seconds']:.1f} s -> {row['pass_with_reach_seconds']:.1f} s "
          f"with reach ({row['reach_pairs']} pairs), {recall_seconds * 1e3:.1f} ms per replicate; KID "
          f"{row['kid_seconds']:.1f} s, {replicates} bootstrap replicates {row['kid_bootstrap_seconds']:.1f} s",
          file=sys.stderr)
    return row


def bench_bootstrap_neighbours(n: int = 10_000, dim: int = 2048, replicates: int = 100) -> dict:
    """The one pass that prepares the bootstrap of precision, density and coverage (per-sample tests against the
    reference's balls, n x n), then seconds per replicate (a reweighting: no distances)."""
    from mimflow_lab.metrics.bootstrap import bootstrap_neighbours
    from mimflow_lab.metrics.density_coverage import ball_counts
    from mimflow_lab.metrics.precision_recall import inside_masks

    rng = np.random.default_rng(0)
    real = np.abs(rng.standard_normal((n, dim), dtype=np.float32))
    fake = np.abs(rng.standard_normal((n, dim), dtype=np.float32)) * 1.05
    start = time.perf_counter()
    inside = inside_masks(real, fake)[0]
    counts, _, pairs = ball_counts(real, fake, keep_pairs=True)
    prepare = time.perf_counter() - start
    start = time.perf_counter()
    result = bootstrap_neighbours(inside.numpy(), counts.numpy(), pairs.numpy(), n, 5, replicates)
    seconds = (time.perf_counter() - start) / replicates
    print(f"  bootstrap precision/density/coverage {n}x{n}: {prepare:.1f} s once, {seconds * 1e3:.2f} ms per "
          f"replicate, {pairs.shape[1]} ball holds", file=sys.stderr)
    return {"n": n, "dim": dim, "replicates": replicates, "prepare_seconds": prepare,
            "seconds_per_replicate": seconds, "ball_holds": int(pairs.shape[1]),
            "precision_std": result["precision"]["std"]}


# ------------------------------------------------------------------ 3. feature extraction

def bench_extraction(num_images: int = 16, batch: int = 8) -> list[dict]:
    import glob

    import foolbox
    import torch
    from PIL import Image
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from mimflow_core.data import center_crop_arr
    from mimflow_lab.metrics.inception import fid_helper_torchscript_path, load_inception, state_dict_from_torchscript

    files = sorted(glob.glob(os.path.join(os.path.dirname(foolbox.__file__), "data", "imagenet_*")))
    images = np.stack([center_crop_arr(Image.open(f).convert("RGB"), 256) for f in files])
    images = np.concatenate([images] * (num_images // len(images) + 1))[:num_images]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with tempfile.TemporaryDirectory() as tmp:
        state = state_dict_from_torchscript(torch.jit.load(str(fid_helper_torchscript_path())))
        g = torch.Generator().manual_seed(0)
        state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048, generator=g) * 0.05, torch.zeros(1008)
        pth = Path(tmp) / "inception.pth"
        torch.save(state, pth)
        ours, _ = load_inception(pth)
        theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                             feature_extractor_weights_path=str(pth))
    methods = {"ours (pool3 + spatial + logits)": lambda b: ours(b),
               "torch-fidelity (pool3 + logits)": lambda b: theirs(b)}
    rows = []
    with torch.inference_mode():
        for name, fn in methods.items():
            fn(x[:2])  # warm-up
            start, cpu = time.perf_counter(), time.process_time()
            for i in range(0, num_images, batch):
                fn(x[i:i + batch])
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            rows.append({"method": name, "images": num_images, "seconds": seconds, "cpu_seconds": cpu,
                         "images_per_s": num_images / seconds, "images_per_cpu_s": num_images / cpu})
        pools = [ours(x[:4]).pool, theirs(x[:4])[0]]
    rows.append({"method": "max |pool3 ours - torch-fidelity|", "value": float((pools[0] - pools[1]).abs().max())})
    return rows


# ------------------------------------------------------------------ report

def _print_kid_dc(rows: list[dict]) -> None:
    print("\n| KID / density-coverage (2048-d) | n x n | wall (s) | CPU (s) | peak RSS (GB) | values |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        if "not_run" in r:
            print(f"| {r['method']} | {r['n']} x {r['n']} | not run: {r['not_run']} | | | |")
            continue
        values = ", ".join(f"{k} {r[k]:.6g}" for k in ("kid", "kid_std", "density", "coverage") if k in r)
        print(f"| {r['method']} | {r['n']} x {r['n']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['peak_rss_gb']:.2f} ({r['peak_rss_gb'] - r['features_and_runtime_gb']:.2f} above the features) | "
              f"{values} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", action="store_true",
                        help="Also precision/recall at 50k x 10k and KID, density/coverage at 50k x 50k (tens of "
                             "minutes).")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per process.")
    parser.add_argument("--json", default="results/benchmarks/metrics.json", help="Where to write all figures.")
    parser.add_argument("--pr-worker", nargs=3, metavar=("METHOD", "N_FAKE", "N_REAL"), help=argparse.SUPPRESS)
    parser.add_argument("--kid-dc-worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--only-kid-dc", action="store_true",
                        help="Only KID and density/coverage (10k x 10k; with --big 50k x 50k too) and the bootstrap "
                             "replicates.")
    args = parser.parse_args()
    if args.kid_dc_worker:
        method, n = args.kid_dc_worker
        print(json.dumps(kid_dc_worker(method, int(n), 2048)))
        return
    if args.pr_worker:
        method, n_fake, n_real = args.pr_worker
        print(json.dumps(pr_worker(method, int(n_fake), int(n_real), 2048)))
        return
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    results = {"threads": args.threads, "cpu_count": os.cpu_count()}
    results["kid_density_coverage"] = []
    for n in (10_000, 50_000) if args.big else (10_000,):
        print(f"KID and density/coverage, 2048 dims, {n} x {n}", file=sys.stderr)
        results["kid_density_coverage"] += bench_kid_dc(n, args.threads)
    _print_kid_dc(results["kid_density_coverage"])
    results["bootstrap"] = bench_bootstrap()
    results["bootstrap_neighbours"] = bench_bootstrap_neighbours()
    results["bootstrap_recall_kid"] = bench_bootstrap_recall_kid()
    if args.only_kid_dc:
        from mimflow_core.atomic import write_json

        write_json(args.json, results)
        return
    print("Fréchet distance, 2048 dims", file=sys.stderr)
    results["frechet"] = bench_frechet()
    print("Precision/recall, 2048 dims, k=3", file=sys.stderr)
    sizes = [(10_000, 10_000)] + ([(50_000, 10_000)] if args.big else [])
    results["precision_recall"] = bench_precision_recall(sizes, args.threads)
    print("Feature extraction", file=sys.stderr)
    results["extraction"] = bench_extraction()

    print("\n| Fréchet distance (2048-d) | wall (s) | CPU (s) | ours faster by (wall / CPU) | rel. diff to ours |\n"
          "|---|---|---|---|---|")
    for r in results["frechet"]:
        print(f"| {r['method']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['speedup_of_ours']:.1f}x / "
              f"{r['cpu_speedup_of_ours']:.1f}x | {r['rel_diff_to_ours']:.1e} |")
    print("\n| Precision/recall (k=3) | samples x refs | wall (s) | CPU (s) | peak RSS (GB) | precision | recall |\n"
          "|---|---|---|---|---|---|---|")
    for r in results["precision_recall"]:
        print(f"| {r['method']} | {r['n_fake']} x {r['n_real']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['peak_rss_gb']:.2f} | {r['precision']:.4f} | {r['recall']:.4f} |")
    print("\n| Inception features (256 px ImageNet, batch 8) | images/s (wall) | images per CPU-s |\n|---|---|---|")
    for r in results["extraction"]:
        print(f"| {r['method']} | {r['images_per_s']:.2f} | {r['images_per_cpu_s']:.2f} |" if "images_per_s" in r
              else f"| {r['method']} | {r['value']:.1e} | |")
    from mimflow_core.atomic import write_json

    write_json(args.json, results)
    print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
