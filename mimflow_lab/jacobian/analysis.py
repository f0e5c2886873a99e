"""Figure 5's protocol: latents → per-sample σmax, σmin, κ, certificates → ``jacobian.json``.

Latents come from a dataset (each model's own encoder, no masking), from the
model itself (z = f⁻¹(ε), ε ~ N(0, I)), or from a ``latents.npz`` written by
an earlier run, so anyone can re-analyse exactly the same points. Samples
run in batches (the Jacobian over a batch is block-diagonal); finished
batches are kept in ``jacobian.partial.json`` so an interrupted run resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from mimflow_core.atomic import atomic_write, write_json
from mimflow_core.errors import MIMFlowError
from mimflow_core.npz import load_npz

from .certificates import certify
from .estimators import METHODS, estimate
from .operators import FlowJacobian
from .per_block import analyse_blocks
from .spectrum import BIN_EDGES, PROBES, analyse_density

EXACT_MAX_DIM = 8192


@dataclass
class Settings:
    """Everything that determines the numbers in ``jacobian.json``."""

    method: str = "fast"
    samples: int = 256
    batch: int = 32
    blocks: int | None = None  # analyse the first N flow blocks only
    source: str = "data"  # "data" | "samples" | "file"
    data: str | None = "digits"  # None when the latents come from a file
    split: str | None = "test"
    unconditional: bool = False
    seed: int = 0
    tol: float = 1e-6
    max_products: int = 20000  # per sample, paper route only
    spectrum: bool = False  # SLQ density of log σ per sample (spectrum.py)
    probes: int = 8  # n_v, probes per sample of the density
    lanczos_steps: int = 40  # m, Lanczos steps per probe on JᵀJ
    inverse_steps: int | None = None  # Lanczos steps per probe on J⁻ᵀJ⁻¹; None: lanczos_steps
    probe: str = "rademacher"  # "rademacher" | "gaussian"
    per_block: bool = False  # σmax, σmin, κ, log|det| of every block's own Jacobian (per_block.py)


def check_settings(s: Settings) -> None:
    if s.method not in METHODS:
        raise MIMFlowError(f"--method: unknown method {s.method!r}; choose one of {', '.join(METHODS)}")
    if s.samples < 1 or s.batch < 1:
        raise MIMFlowError("--samples and --batch must be positive")
    if s.source not in ("data", "samples", "file"):
        raise MIMFlowError(f"--source: unknown source {s.source!r}; choose data or samples")
    if s.spectrum and s.method != "fast":
        raise MIMFlowError(f"--spectrum combines with --method fast only (it needs the exact inverse products "
                           f"and is the estimate --method {s.method} would be checked against)")
    if s.spectrum and s.probe not in PROBES:
        raise MIMFlowError(f"--probe: unknown probe {s.probe!r}; choose one of {', '.join(PROBES)}")
    inverse_steps = s.lanczos_steps if s.inverse_steps is None else s.inverse_steps
    if s.spectrum and (s.probes < 2 or s.lanczos_steps < 1 or inverse_steps < 1):
        raise MIMFlowError(f"--probes {s.probes}, --lanczos-steps {s.lanczos_steps}, --inverse-steps {inverse_steps}: "
                           f"need at least 2 probes (the certificate's standard error) and 1 step per end")


def prepare_flow(model, blocks: int | None, ckpt: str | os.PathLike):
    """The model's flow in float64, eval mode, without parameter gradients; checks ``--blocks``."""
    flow = getattr(model, "flow", None)
    if flow is None or len(getattr(flow, "blocks", ())) == 0:
        raise MIMFlowError(f"{ckpt}: checkpoint has no latent flow to analyse")
    if blocks is not None and not 1 <= blocks <= len(flow.blocks):
        raise MIMFlowError(f"--blocks {blocks}: the flow of {ckpt} has {len(flow.blocks)} blocks")
    return flow.double().eval().requires_grad_(False)


def check_latents(z: Tensor, y: Tensor, model, where: str) -> None:
    """Shape, finiteness and label range of latents before any analysis."""
    cfg = model.config
    if z.ndim != 3 or tuple(z.shape[1:]) != (cfg.num_tokens, cfg.latent_dim):
        raise MIMFlowError(f"{where}: latents have shape {tuple(z.shape)}, the model needs (N, "
                           f"{cfg.num_tokens}, {cfg.latent_dim})")
    if y.shape != (z.shape[0],):
        raise MIMFlowError(f"{where}: {y.shape[0] if y.ndim else 0} labels for {z.shape[0]} latents")
    if not torch.isfinite(z).all():
        bad = int((~torch.isfinite(z)).flatten(1).any(1).sum())
        raise MIMFlowError(f"{where}: {bad} latent(s) contain NaN or Inf")
    if int(y.max()) >= cfg.num_classes or int(y.min()) < -1:
        raise MIMFlowError(f"{where}: labels outside [-1, {cfg.num_classes - 1}] for this model; "
                           f"use --unconditional")


def encode_dataset(model, dataset, indices: np.ndarray, batch: int, unconditional: bool) -> tuple[Tensor, Tensor]:
    """z = encoder(x) without masking for the images ``indices`` of ``dataset``, and their labels (or −1)."""
    param = next(model.encoder.parameters())
    zs = []
    with torch.no_grad():
        for start in range(0, indices.size, batch):
            images = torch.stack([dataset[int(i)][0] for i in indices[start:start + batch]])
            z = model.encode(images.to(param.device, param.dtype), mask_ratio=0.0).z
            zs.append(z.to("cpu", torch.float64))
    y = torch.as_tensor(np.asarray(dataset.labels)[indices], dtype=torch.long)
    return torch.cat(zs), torch.full_like(y, -1) if unconditional else y


class DataLatents:
    """The images every model of a run encodes: ``--split`` of ``--data``, read once per image size, and one seeded
    class-balanced subset of ``--samples`` of them (taking the first images instead would, on an ImageFolder sorted
    by class, make every latent of Figure 5 one class). ``indices`` go into the result."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.datasets: dict[tuple[int, int], object] = {}
        self.indices: np.ndarray | None = None

    def encode(self, model) -> tuple[Tensor, Tensor]:
        from mimflow_core.data import balanced_subset, load_dataset

        s, c = self.settings, model.config
        if (c.image_size, c.channels) not in self.datasets:
            self.datasets[c.image_size, c.channels] = load_dataset(s.data, c.image_size, s.split, channels=c.channels)
        dataset = self.datasets[c.image_size, c.channels]
        if self.indices is None:
            if s.samples > len(dataset):
                raise MIMFlowError(f"--samples {s.samples}: dataset {s.data} has only {len(dataset)} {s.split} images")
            self.indices = balanced_subset(np.asarray(dataset.labels), s.samples, s.seed)
        return encode_dataset(model, dataset, self.indices, s.batch, s.unconditional)


def sample_latents(model, n: int, batch: int, seed: int, unconditional: bool) -> tuple[Tensor, Tensor]:
    """z = f⁻¹(ε, y) with ε ~ N(0, I) (float64) and uniform labels (or −1), from ``seed``."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, cfg.num_tokens, cfg.latent_dim, generator=g, dtype=torch.float64)
    y = torch.full((n,), -1) if unconditional else torch.randint(0, cfg.num_classes, (n,), generator=g)
    device = next(model.flow.parameters()).device
    with torch.no_grad():
        z = torch.cat([model.flow.reverse(eps[i:i + batch].to(device), y[i:i + batch].to(device)).cpu()
                       for i in range(0, n, batch)])
    return z, y


def load_latents(path: str | os.PathLike) -> dict[str, Tensor]:
    """``z`` (N, K, D), ``y`` (N,) and, when present, ``z_compare``, ``z_compare2``, ... from a ``latents.npz``."""
    arrays = load_npz(path)
    if "z" not in arrays:
        raise MIMFlowError(f"{path}: no array 'z' (expected z (N, K, D) and y (N,))")
    for key, kinds in [("z", "fiu"), *((k, "fiu") for k in arrays if k.startswith("z_compare")), ("y", "iu")]:
        value = arrays.get(key)
        if value is not None and (value.dtype.kind not in kinds or value.ndim == 0 or len(value) == 0):
            what = "integer labels" if key == "y" else "numbers"
            raise MIMFlowError(f"{path}: '{key}' must be a non-empty array of {what}, got {value.dtype} "
                               f"of shape {value.shape}")
    z = torch.from_numpy(arrays["z"]).to(torch.float64)
    y = torch.from_numpy(arrays["y"]).to(torch.long) if "y" in arrays else torch.full((z.shape[0],), -1)
    out = {"z": z, "y": y}
    for key in (k for k in arrays if k.startswith("z_compare")):
        out[key] = torch.from_numpy(arrays[key]).to(torch.float64)
    return out


def save_latents(path: Path, latents: dict[str, Tensor]) -> None:
    arrays = {k: v.numpy() for k, v in latents.items()}
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _fingerprint(settings: Settings, z: Tensor, y: Tensor, sha: str) -> str:
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    h.update(sha.encode())
    h.update(z.numpy().tobytes())
    h.update(y.numpy().tobytes())
    return h.hexdigest()[:16]


def _tolist(x: Tensor) -> list:
    return x.detach().cpu().tolist()


def sample_records(est, cert, index: Tensor, y: Tensor) -> list[dict]:
    """One JSON record per sample: values, convergence, products, certificates."""
    cols = {
        "index": _tolist(index), "label": _tolist(y),
        "sigma_max": _tolist(est.sigma_max), "sigma_min": _tolist(est.sigma_min),
        "kappa": _tolist(est.kappa), "log10_kappa": _tolist(est.kappa.log10()),
        "logdet_per_dim": _tolist(cert["logdet_per_dim"]),
        "converged_max": _tolist(est.converged_max), "converged_min": _tolist(est.converged_min),
        "ok": _tolist(cert["ok"]),
    }
    for k in ("norm_Jv_max", "norm_Jv_min"):
        if k in cert:
            cols[k] = _tolist(cert[k])
    checks = {k.removeprefix("check_"): _tolist(v) for k, v in cert.items() if k.startswith("check_")}
    products = {k: _tolist(v) for k, v in est.products.items()}
    records = []
    for i in range(len(cols["index"])):
        r = {k: v[i] for k, v in cols.items()}
        r["converged"] = r["converged_max"] and r["converged_min"]
        r["checks"] = {k: v[i] for k, v in checks.items()}
        r["products"] = {k: v[i] for k, v in products.items()}
        records.append(r)
    return records


def summarise(records: list[dict]) -> dict:
    """Statistics over the samples that converged and passed every check, and counts of the others."""
    ok = [r for r in records if r["ok"]]
    out = {
        "n": len(records), "n_ok": len(ok),
        "n_not_converged": sum(not r["converged"] for r in records),
        "n_failed_checks": sum(not all(r["checks"].values()) for r in records),
        "mean_products": float(np.mean([r["products"]["total"] for r in records])) if records else None,
    }
    for key in ("sigma_max", "sigma_min", "log10_kappa", "logdet_per_dim"):
        v = np.array([r[key] for r in ok], dtype=np.float64)
        out[key] = {} if v.size == 0 else {
            "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
            "p05": float(np.percentile(v, 5)), "p95": float(np.percentile(v, 95)),
        }
    spectra = [r["spectrum"] for r in records if "spectrum" in r]
    if spectra:
        out["spectrum"] = {"n_certified": sum(s["ok"] for s in spectra), "median_fraction_below": {
            k: float(np.median([s["fraction_below"][k] for s in spectra])) for k in spectra[0]["fraction_below"]}}
    blocks = [r["per_block"] for r in records if "per_block" in r]
    if blocks:
        column = lambda key: np.array([[b[key] for b in p["blocks"]] for p in blocks])  # noqa: E731 (sample × block)
        out["per_block"] = {"n_ok": sum(p["ok"] for p in blocks),
                            "median_log10_kappa": np.median(column("log10_kappa"), 0).tolist(),
                            "median_share_log_kappa": np.median(column("share_log_kappa"), 0).tolist()}
    return out


def analyse_flow(flow, z: Tensor, y: Tensor, settings: Settings, done: dict[int, list[dict]] | None = None,
                 on_batch=None, desc: str = "jacobian") -> list[dict]:
    """Per-sample records for latents z (N, K, D) with labels y, in batches of ``settings.batch``.

    ``done`` maps a batch start to records already computed (resume);
    ``on_batch(start, records)`` is called after each new batch.
    """
    done = dict(done or {})
    options = {"fast": {"tol": settings.tol}, "exact": {},
               "paper": {"tol": settings.tol, "max_products": settings.max_products}}[settings.method]
    starts = list(range(0, z.shape[0], settings.batch))
    device = next(flow.parameters()).device
    passes = 1 + settings.spectrum + settings.per_block  # the bar counts samples × analyses
    resumed = sum(len(done[start]) for start in starts if start in done) * passes
    # per sample, not per batch: a batch of 32 ill-conditioned latents can take many minutes on a CPU
    with tqdm(total=z.shape[0] * passes, initial=resumed, desc=desc, unit="sample", leave=False,
              bar_format="{l_bar}{bar}| {n:.1f}/{total} [{elapsed}<{remaining}]") as bar:
        for start in starts:
            if start in done:
                continue
            index = torch.arange(start, min(start + settings.batch, z.shape[0]))
            zb, yb = z[index].to(device), y[index].to(device)
            op = FlowJacobian(flow, zb, yb, settings.blocks)
            before = bar.n
            seeds = settings.seed * 1_000_003 + 2 * index
            est = estimate(op, settings.method, seeds=seeds, progress=bar.update, **options)
            bar.update(before + len(index) - bar.n)  # samples stopped by the iteration cap count as done too
            done[start] = sample_records(est, certify(op, est), index, y[index])
            if settings.spectrum:
                extras = analyse_density(flow, zb, yb, seeds, settings.blocks, settings.probes,
                                         settings.lanczos_steps, settings.probe, settings.inverse_steps,
                                         bar.update)
                for r, extra in zip(done[start], extras):
                    r["spectrum"] = extra
            if settings.per_block:
                for r, extra in zip(done[start], analyse_blocks(flow, zb, yb, seeds, est, settings.blocks,
                                                                settings.tol, bar.update)):
                    r["per_block"] = extra
            bar.update(before + passes * len(index) - bar.n)
            for r in done[start]:
                r["seconds"] = est.seconds / len(index)
            if on_batch is not None:
                on_batch(start, done[start])
    return [r for start in starts for r in done[start]]


def model_entry(info, records: list[dict], seconds: float) -> dict:
    return {
        "checkpoint": str(info.path), "sha256": info.sha256, "label": info.label, "variant": info.variant,
        "step": info.step, "weights": info.weights, "config": info.config.to_dict(),
        "summary": summarise(records), "wall_seconds": seconds,
        "seconds_per_sample": seconds / max(1, len(records)), "samples": records,
    }


def latents_key(m: int) -> str:
    """Name in ``latents.npz`` of the m-th checkpoint's latents: z, z_compare, z_compare2, ..."""
    return "z" if m == 0 else "z_compare" if m == 1 else f"z_compare{m}"


# what every per-sample record holds (sample_records), so a resumed batch is summarised like a fresh one
RECORD_KEYS = {"index", "label", "sigma_max", "sigma_min", "kappa", "log10_kappa", "ok", "converged", "checks",
               "products"}


def read_partial(path: Path) -> dict[str, dict[str, list[dict]]]:
    """The finished batches of an interrupted run, ``{fingerprint: {first index: records}}``; a file that does not
    parse as that (a torn or edited write) is named in a warning and discarded, so the batches are recomputed."""
    if not path.exists():
        return {}
    try:
        partial = json.loads(path.read_text())
        valid = isinstance(partial, dict) and all(
            isinstance(batches, dict) and all(k.isdigit() and isinstance(recs, list)
                                              and all(isinstance(r, dict) and RECORD_KEYS <= r.keys() for r in recs)
                                              for k, recs in batches.items())
            for batches in partial.values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        valid = False
    if valid:
        return partial
    warnings.warn(f"{path}: unreadable partial results, discarded; their batches are computed again", stacklevel=2)
    return {}


def run_jacobian(checkpoints: list[str], out: str | os.PathLike, settings: Settings,
                 latents_file: str | None = None, weights: str = "ema", device: str = "auto") -> dict:
    """The ``mimflow-lab jacobian`` command: analyse checkpoints on the same points, write JSON, latents, figure.

    The first checkpoint's latents are ``z`` in ``latents.npz``, the others'
    ``z_compare``, ``z_compare2``, ...; all models see the same images (their
    own encoders) or the same noise.
    """
    from mimflow_core.distributed import resolve_device
    from mimflow_lab import load_model

    from .plot import plot_jacobian, plot_spectrum

    check_settings(settings)
    out = Path(out)  # created by the first write, once the inputs have passed their checks
    given = load_latents(latents_file) if latents_file else None
    partial_path = out / "jacobian.partial.json"
    partial = read_partial(partial_path)
    models, latents = [], {}
    data = DataLatents(settings)
    for m, ckpt in enumerate(checkpoints):
        model, info = load_model(ckpt, weights=weights, device=resolve_device(device))
        flow = prepare_flow(model, settings.blocks, ckpt)
        if settings.method == "exact" and model.config.latent_numel > EXACT_MAX_DIM:
            raise MIMFlowError(f"--method exact: D = {model.config.latent_numel} > {EXACT_MAX_DIM}; use fast")
        key = latents_key(m)
        if given is not None:
            z, y = given.get(key, given["z"]), given["y"]
            where = str(latents_file)
        elif settings.source == "data":
            z, y = data.encode(model)
            where = f"latents of {settings.data} encoded by {ckpt}"
        else:
            z, y = sample_latents(model, settings.samples, settings.batch, settings.seed, settings.unconditional)
            where = f"latents sampled from {ckpt}"
        if settings.unconditional:
            y = torch.full_like(y, -1)
        check_latents(z, y, model, where)
        latents[key], latents["y"] = z, y
        tag = _fingerprint(settings, z, y, info.sha256)
        done = {int(k): v for k, v in partial.get(tag, {}).items()}

        def keep(start, recs, tag=tag):
            partial.setdefault(tag, {})[str(start)] = recs
            write_json(partial_path, partial)

        t0 = time.perf_counter()
        records = analyse_flow(flow, z, y, settings, done, keep, desc=f"jacobian {info.label}")
        models.append(model_entry(info, records, time.perf_counter() - t0))
    save_latents(out / "latents.npz", latents)
    settings_dict = asdict(settings) | {"latents": latents_file, "weights": weights}
    if given is not None:  # what the file held, not the defaults of options that were not used
        settings_dict["samples"] = int(latents["y"].shape[0])
    if data.indices is not None:
        settings_dict["indices"] = data.indices.tolist()
    result = {"settings": settings_dict, "latents": "latents.npz", "models": models}
    if settings.spectrum:
        result["spectrum_bin_edges_log10_sigma"] = BIN_EDGES.tolist()
    write_json(out / "jacobian.json", result)
    partial_path.unlink(missing_ok=True)
    result["figure"] = plot_jacobian(result, out / "fig5_jacobian")
    if settings.spectrum:
        result["figure_5b"] = plot_spectrum(result, out / "fig5b_spectrum")
    return result
