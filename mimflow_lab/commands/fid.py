"""``mimflow-lab fid``: ADM metrics of a checkpoint's samples (or reconstructions), sharded and resumable."""
from __future__ import annotations

import time
from pathlib import Path

import click

from mimflow_lab.commands.evaluate import INCEPTION_HELP, warnings_as_lines


@click.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option("--samples", default=50_000, show_default=True,
              help="Number of samples (with --rfid: at most this many dataset images).")
@click.option("--ref", "reference", type=click.Path(dir_okay=False), default=None,
              help="ADM reference batch (.npz; see `mimflow-lab ref-stats`). Optional with --rfid.")
@click.option("--cfg", default=1.0, show_default=True, help="Guidance scale s in the deep flow block (1 = none).")
@click.option("--batch", default=256, show_default=True, help="Samples per batch; one batch = one shard.")
@click.option("--seed", default=0, show_default=True, help="Sample i gets noise and label from (seed, i) only.")
@click.option("--save-npz", type=click.Path(dir_okay=False), default=None,
              help="Also write the samples as an ADM npz (arr_0 uint8 NHWC, arr_1 labels).")
@click.option("--out", default="results/fid", show_default=True, type=click.Path(file_okay=False),
              help="Directory for shards, run.json and metrics.json.")
@click.option("--rfid", "rfid", default=None, metavar="DATA",
              help="Reconstruction FID on dataset DATA ('digits', an image directory or an npz) instead of sampling.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="test", show_default=True,
              help="Dataset split for --rfid.")
@click.option("--weights", type=click.Choice(["ema", "raw"]), default="ema", show_default=True,
              help="Checkpoint weights to use.")
@click.option("--inception", "inception_path", type=click.Path(dir_okay=False), default=None, help=INCEPTION_HELP)
@click.option("--device", default=None, help="torch device (default: cuda:LOCAL_RANK when available, else cpu).")
def fid(checkpoint: str | None, samples: int, reference: str | None, cfg: float, batch: int, seed: int,
        save_npz: str | None, out: str, rfid: str | None, split: str, weights: str, inception_path: str | None,
        device: str | None) -> None:
    """IS, FID, sFID, precision and recall of CHECKPOINT's class-balanced samples against --ref.

    Run under `torchrun --nproc_per_node N` to share the work: the numbers
    do not depend on N. After a crash, the same command resumes from the
    shards in --out. Without CHECKPOINT: $MIMFLOW_CHECKPOINT, else the newest
    checkpoint of the newest run under runs/.
    """
    from mimflow_core.atomic import write_json
    from mimflow_core.distributed import distributed_process
    from mimflow_core.errors import MIMFlowError
    from mimflow_lab import load_model
    from mimflow_lab.defaults import resolve_checkpoints
    from mimflow_lab.metrics import load_inception, report_lines
    from mimflow_lab.metrics.npz import open_images, read_reference_stats
    from mimflow_lab.sampling import ShardPlan, run_shards

    (checkpoint,) = resolve_checkpoints([checkpoint] if checkpoint else [])
    if reference is None and rfid is None:
        raise MIMFlowError("--ref: required (an ADM reference batch; build one with `mimflow-lab ref-stats`)")
    if samples < 2 or batch < 1:
        raise MIMFlowError(f"--samples {samples} / --batch {batch}: need at least 2 samples and 1 per batch")
    if reference is not None:
        open_images(reference).close()
    out_dir = Path(out)
    with distributed_process(device) as process:
        model, info = load_model(checkpoint, weights=weights, device=process.device)
        inception, source = load_inception(inception_path, device=process.device)
        if rfid is None:
            total, dataset = samples, None
        else:
            from mimflow_core.data import load_dataset

            dataset = load_dataset(rfid, model.config.image_size, split)
            total = min(samples, len(dataset))
        run = {"checkpoint_sha256": info.sha256, "weights": info.weights,
               "mode": "reconstruction" if rfid else "generation", "samples": total, "batch": batch,
               "cfg": None if rfid else cfg, "seed": None if rfid else seed, "rfid_data": rfid,
               "split": split if rfid else None, "reference": reference, "inception_weights": str(source.path),
               "keep_images": save_npz is not None}
        _check_same_run(out_dir / "run.json", run)
        if process.is_main:
            write_json(out_dir / "run.json", run)
        plan = ShardPlan(total, batch, out_dir / "shards")
        started = time.time()
        run_shards(plan, _producer(model, inception, dataset, run, process.device), process)
        process.barrier()
        if not process.is_main:
            return
        with warnings_as_lines():
            metrics = _merge_and_score(plan, reference, inception, source, out_dir, process.device, save_npz,
                                       read_reference_stats(reference) if reference else None)
    metrics = {**metrics, "checkpoint": str(checkpoint), "label": info.label, "step": info.step,
               "run": run, "seconds": round(time.time() - started, 1)}
    write_json(out_dir / "metrics.json", metrics)
    for line in report_lines(metrics):
        click.echo(line)
    click.echo(f"wrote {out_dir / 'metrics.json'}", err=True)


def _producer(model, inception, dataset, run: dict, device):
    from mimflow_lab.sampling import balanced_labels, generation_producer, reconstruction_producer

    if dataset is not None:
        return reconstruction_producer(model, inception, dataset, device, run["keep_images"],
                                       with_originals=run["reference"] is None)
    labels = balanced_labels(run["seed"], run["samples"], model.config.num_classes)
    return generation_producer(model, inception, labels, run["cfg"], run["seed"], device, run["keep_images"])


def _check_same_run(path: Path, run: dict) -> None:
    """Refuse to resume from shards that another configuration wrote."""
    import json

    from mimflow_core.errors import MIMFlowError

    if not path.is_file():
        return
    previous = json.loads(path.read_text())
    changed = [f"{k} {previous.get(k)!r} -> {v!r}" for k, v in run.items() if previous.get(k) != v]
    if changed:
        raise MIMFlowError(f"{path}: shards here come from another run ({'; '.join(changed)}); "
                           "use another --out or delete that directory")


def _merge_and_score(plan, reference, inception, source, out_dir: Path, device, save_npz, reference_stats) -> dict:
    import numpy as np

    from mimflow_lab.metrics import adm_metrics
    from mimflow_lab.metrics.npz import write_npz
    from mimflow_lab.sampling import features_of, merge_shards, shard_batches

    merged = merge_shards(plan, skip=("images",))
    samples = features_of(merged)
    if reference is not None:
        from mimflow_lab.metrics.cache import reference_features

        ref_features = reference_features(reference, inception, source)
    else:
        ref_features = features_of(merged, prefix="real_")
    metrics = adm_metrics(ref_features, samples, source, reference_stats, device)
    metrics["reference"] = str(reference) if reference else f"{plan.total} dataset images (originals)"
    if save_npz:
        with np.load(plan.path(0)) as first:
            shape = (plan.total, *first["images"].shape[1:])
        write_npz(save_npz, {"arr_1": merged["labels"]},
                  streamed={"arr_0": (shape, np.uint8, shard_batches(plan, "images"))})
        metrics["samples_npz"] = str(save_npz)
    return metrics
