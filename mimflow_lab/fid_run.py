"""One FID run of a checkpoint: its samples (or reconstructions) in shards, scored by the ADM suite.

A run lives in one directory: ``run.json`` (what the run is: checkpoint,
sampling settings, reference, Inception weights), ``shards/`` (filled by
:mod:`mimflow_lab.shards` with the producers of :mod:`mimflow_lab.sampling`)
and ``metrics.json``. ``run.json`` is the run's identity: a rerun with the
same settings resumes from the shards, one with other settings is refused
instead of mixing samples of two configurations. This is library code, so
``mimflow-lab fid`` only parses options and prints, and other code can call
:func:`run_fid` directly.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mimflow_core.atomic import write_json
from mimflow_core.distributed import distributed_process
from mimflow_core.errors import MIMFlowError
from mimflow_core.model import check_guidance
from mimflow_core.npz import NpzArrayReader
from mimflow_lab.metrics import adm_metrics, load_inception
from mimflow_lab.metrics.bootstrap import Bootstrap
from mimflow_lab.metrics.cache import reference_encoder_features, reference_features
from mimflow_lab.metrics.encoders import Encoder, EncoderSpec, load_encoders
from mimflow_lab.metrics.inception_features import to_uint8
from mimflow_lab.metrics.kid import check_subset_size
from mimflow_lab.metrics.suite import Encoded
from mimflow_lab.metrics.inception import FIDInception, WeightsSource
from mimflow_lab.metrics.npz import open_images, read_reference_stats, size_mismatch, write_npz
from mimflow_lab.sampling import (Producer, balanced_labels, features_of, generation_producer,
                                  reconstruction_producer)
from mimflow_lab.shards import ShardPlan, merge_shards, run_shards, shard_batches


ADM_SAMPLES = 50_000
# A model trained with one of these (mimflow_core.train.options.CPU_PRESETS) is sampled on a CPU: 50 000 samples
# would take hours there, 1 000 take minutes and still rank models (FID is then biased up; compare at equal counts).
CPU_PRESET_SAMPLES = 1_000


def default_samples(train: dict) -> int:
    """How many samples ``fid`` draws when ``--samples`` is not given: ADM's 50 000, 1 000 for the CPU presets."""
    from mimflow_core.train.options import CPU_PRESETS

    return CPU_PRESET_SAMPLES if train.get("preset") in CPU_PRESETS else ADM_SAMPLES


def run_fid(checkpoint: str | os.PathLike, out: str | os.PathLike, *, reference: str | None,
            samples: int | None = None,
            batch: int = 256, cfg: float = 1.0, seed: int = 0, rfid: str | None = None, split: str = "test",
            weights: str = "ema", inception_path: str | None = None, save_npz: str | None = None,
            device: str | None = None, bootstrap: Bootstrap | None = None, encoders: Sequence[EncoderSpec] = (),
            ref_val: str | None = None, kid_subset_size: int | None = None) -> dict | None:
    """IS, FID, sFID, precision and recall of ``checkpoint``'s samples against ``reference``, sharded and resumable.

    With ``rfid`` (a dataset) the model reconstructs at most ``samples`` of
    its images instead of sampling; without ``reference`` the originals are
    the reference. Every rank of a ``torchrun`` job calls this and computes
    its share of the shards; rank 0 merges and scores. Returns the metrics
    (also written to ``out/metrics.json``) on rank 0, None on the others.
    ``samples`` None means :func:`default_samples` of the checkpoint. Each
    of ``encoders`` scores the same images in its own feature space, its
    features stored in the shards beside the Inception's; ``ref_val``
    (held-out real images) adds FD_r; ``kid_subset_size`` is --kid-subset-size (checked against both sets
    before any sampling).
    """
    from mimflow_lab import load_model

    check_guidance(cfg)
    if reference is not None:
        with open_images(reference) as reader:  # a bad reference fails before any sampling
            reference_size, reference_count = reader.shape[1:3], reader.shape[0]
    if ref_val is not None:
        open_images(ref_val).close()
    out_dir = Path(out)
    with distributed_process(device) as process:
        model, info = load_model(checkpoint, weights=weights, device=process.device)
        if reference is not None and process.is_main and (
                warning := size_mismatch(reference, reference_size, f"{checkpoint}'s output",
                                         (model.config.image_size,) * 2)):
            warnings.warn(warning, stacklevel=2)
        loaded = load_encoders(encoders, process.device, (model.config.image_size,) * 2)
        inception, source = load_inception(inception_path, device=process.device)
        if samples is None:
            samples = default_samples(info.train)
        if rfid is None:
            total, dataset = samples, None
        else:
            from mimflow_core.data import load_dataset

            dataset = load_dataset(rfid, model.config.image_size, split, channels=model.config.channels)
            total = min(samples, len(dataset))
        check_subset_size(kid_subset_size, {"the samples": total, **(
            {reference: reference_count} if reference is not None else {})})
        run = {"checkpoint_sha256": info.sha256, "weights": info.weights,
               "mode": "reconstruction" if rfid else "generation", "samples": total, "batch": batch,
               "cfg": None if rfid else cfg, "seed": None if rfid else seed, "rfid_data": rfid,
               "split": split if rfid else None, "reference": reference, "inception_weights": str(source.path),
               "keep_images": save_npz is not None}
        if loaded:  # only then: runs without encoders keep the run.json they always had (and resume)
            run["encoders"] = [{"name": e.name, "sha256": e.sha256, "preset": e.spec.preset} for e in loaded]
        plan = ShardPlan(total, batch, out_dir / "shards", keys=shard_keys(run, inception))
        _check_same_run(out_dir / "run.json", run, plan, process.is_main)
        process.barrier()  # no rank looks at the shards before rank 0 has judged them
        if process.is_main:
            write_json(out_dir / "run.json", run)
        started = time.time()
        run_shards(plan, _producer(model, inception, dataset, run, process.device, loaded), process)
        process.barrier()
        if not process.is_main:
            return None
        metrics = _merge_and_score(plan, reference, inception, source, process.device, save_npz, bootstrap,
                                   loaded, ref_val, kid_subset_size)
    metrics = {**metrics, "checkpoint": str(checkpoint), "label": info.label, "step": info.step,
               "run": run, "seconds": round(time.time() - started, 1)}
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def _producer(model: torch.nn.Module, inception: FIDInception, dataset, run: dict, device: torch.device,
              encoders: Sequence[Encoder]) -> Producer:
    """Reconstructions of ``dataset`` when there is one, else class-balanced samples (with each encoder's
    features of them)."""
    keep = run["keep_images"] or bool(encoders)  # the encoders need the images
    originals = dataset if dataset is not None and run["reference"] is None else None
    if dataset is not None:
        produce = reconstruction_producer(model, inception, dataset, device, keep, with_originals=originals is not None)
    else:
        labels = balanced_labels(run["seed"], run["samples"], model.config.num_classes)
        produce = generation_producer(model, inception, labels, run["cfg"], run["seed"], device, keep)
    return _with_encoders(produce, encoders, run["keep_images"], originals) if encoders else produce


def _with_encoders(produce: Producer, encoders: Sequence[Encoder], keep_images: bool, originals) -> Producer:
    """``produce`` plus ``encoder_<name>`` features of its images (and ``real_encoder_<name>`` of the
    ``originals`` dataset's, when they are the reference), the images dropped unless asked to keep them."""

    def produce_with_encoders(indices: np.ndarray) -> dict[str, np.ndarray]:
        out = produce(indices)
        images = out["images"] if keep_images else out.pop("images")
        out.update({f"encoder_{e.name}": e.features(images) for e in encoders})
        if originals is not None:
            real = to_uint8(torch.stack([originals[int(i)][0] for i in indices])).numpy()
            out.update({f"real_encoder_{e.name}": e.features(real) for e in encoders})
        return out

    return produce_with_encoders


def shard_keys(run: dict, inception: FIDInception) -> frozenset[str]:
    """The arrays every shard of ``run`` holds besides its indices (a shard lacking one is damaged)."""
    features = {"pool", "spatial"} | ({"logits"} if inception.fc is not None else set())
    features |= {f"encoder_{e['name']}" for e in run.get("encoders", [])}
    keys = {"labels", *features}
    if run["mode"] == "reconstruction" and run["reference"] is None:
        keys |= {f"real_{k}" for k in features}
    return frozenset(keys | ({"images"} if run["keep_images"] else set()))


def _check_same_run(path: Path, run: dict, plan: ShardPlan, is_main: bool) -> None:
    """Refuse to resume from shards that another configuration wrote. A ``run.json`` that does not parse (a torn
    or edited file) cannot say what its shards are: it is named in a warning and they are discarded."""
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
        if not isinstance(previous, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        if is_main:
            warnings.warn(f"{path}: unreadable ({str(e).splitlines()[0][:80]}); the shards beside it cannot be "
                          "matched to a run and are discarded", stacklevel=3)
            plan.remove()
        return
    changed = [f"{k} {previous.get(k)!r} -> {v!r}" for k, v in run.items() if previous.get(k) != v]
    if changed:
        raise MIMFlowError(f"{path}: shards here come from another run ({'; '.join(changed)}); "
                           "use another --out or delete that directory")


def _merge_and_score(plan: ShardPlan, reference: str | None, inception: FIDInception, source: WeightsSource,
                     device: torch.device, save_npz: str | None, bootstrap: Bootstrap | None = None,
                     encoders: Sequence[Encoder] = (), ref_val: str | None = None,
                     kid_subset_size: int | None = None) -> dict:
    """The ADM metrics of the merged shards (and the samples written as an ADM npz when asked), with each
    encoder's and FD_r against ``ref_val``."""
    reference_stats = read_reference_stats(reference) if reference else None
    merged = merge_shards(plan, skip=("images",))
    samples = features_of(merged)
    if reference is not None:
        ref_features = reference_features(reference, inception, source)
    else:
        ref_features = features_of(merged, prefix="real_")
    validation = None if ref_val is None else reference_features(ref_val, inception, source)
    encoded = {e.name: Encoded(
        e.identity(),
        reference_encoder_features(reference, e) if reference is not None else merged[f"real_encoder_{e.name}"],
        merged[f"encoder_{e.name}"], None if ref_val is None else reference_encoder_features(ref_val, e))
        for e in encoders}
    metrics = adm_metrics(ref_features, samples, source, reference_stats, device, bootstrap, validation, encoded,
                          kid_subset_size)
    metrics["reference"] = str(reference) if reference else f"{plan.total} dataset images (originals)"
    if ref_val is not None:
        metrics["ref_val"] = str(ref_val)
    if save_npz:
        with NpzArrayReader(plan.path(0), "images") as first:
            shape = (plan.total, *first.shape[1:])
        write_npz(save_npz, {"arr_1": merged["labels"]},
                  streamed={"arr_0": (shape, np.uint8, shard_batches(plan, "images"))})
        metrics["samples_npz"] = str(save_npz)
    return metrics
