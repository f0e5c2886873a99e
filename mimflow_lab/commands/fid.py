"""``mimflow-lab fid``: ADM metrics of a checkpoint's samples (or reconstructions), sharded and resumable."""
from __future__ import annotations

from pathlib import Path

import click

from mimflow_lab import options
from mimflow_lab.options import command


@command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option("--samples", type=click.IntRange(min=4), default=None,
              help="Number of samples (with --rfid: at most this many dataset images)  "
                   "[default: ADM's 50000; 1000 for a model of a CPU preset (tiny, digits, small)].")
@click.option("--ref", "reference", type=click.Path(dir_okay=False), default=None,
              help="ADM reference batch (.npz; see `mimflow-lab ref-stats`). Required, except with --rfid "
                   "(then the dataset's originals are the reference).")
@options.guidance("--cfg", 1.0, "Guidance scale s in the deep flow block.")
@options.batch_size(256, "Samples per batch; one batch = one shard.")
@options.seed("Sample i gets noise and label from (seed, i) only.")
@click.option("--save-npz", type=click.Path(dir_okay=False), default=None,
              help="Also write the samples as an ADM npz (arr_0 uint8 NHWC, arr_1 labels).")
@options.out_dir("results/fid", "shards/, run.json, metrics.json")
@click.option("--rfid", "rfid", default=None, metavar="DATA",
              help="Reconstruction FID on dataset DATA ('digits', an image directory or an npz) instead of sampling.")
@options.split("test", "Split of --rfid's dataset")
@options.weights()
@options.inception()
@options.device()
@options.bootstrap()
@options.bootstrap_reference()
@options.kid_subset_size()
@options.encoder()
@options.ref_val()
def fid(checkpoint: str | None, samples: int | None, reference: str | None, cfg: float, batch_size: int, seed: int,
        save_npz: str | None, out: str, rfid: str | None, split: str, weights: str, inception_path: str | None,
        device: str, bootstrap: int | None, bootstrap_reference: bool, kid_subset_size: int | None,
        encoders: tuple[str, ...], ref_val: str | None) -> None:
    """IS, FID, sFID, precision and recall of CHECKPOINT's class-balanced samples against --ref.

    Run under `torchrun --nproc-per-node N` to share the work: the numbers
    do not depend on N. After a crash, the same command resumes from the
    shards in --out. Without CHECKPOINT: $MIMFLOW_CHECKPOINT, else the newest
    checkpoint of the newest run under runs/ or */runs/. Each --encoder's
    features are computed with the Inception's, shard by shard (so they
    resume too); the encoders are part of the run's identity.
    """
    from mimflow_core.errors import MIMFlowError
    from mimflow_lab.defaults import resolve_checkpoints
    from mimflow_lab.fid_run import run_fid
    from mimflow_lab.metrics import report_lines
    from mimflow_lab.metrics.bootstrap import Bootstrap
    from mimflow_lab.metrics.encoders import parse_encoder_specs
    from mimflow_lab.metrics.suite import extra_lines

    options.check_bootstrap(bootstrap, bootstrap_reference)
    specs = parse_encoder_specs(encoders)
    replicates = None if bootstrap is None else Bootstrap(bootstrap, bootstrap_reference)

    if reference is None and rfid is None:
        raise MIMFlowError("--ref: required (an ADM reference batch; build one with `mimflow-lab ref-stats`)")
    (checkpoint,) = resolve_checkpoints([checkpoint] if checkpoint else [])
    metrics = run_fid(checkpoint, out, reference=reference, samples=samples, batch=batch_size, cfg=cfg,
                      seed=seed, rfid=rfid, split=split, weights=weights, inception_path=inception_path,
                      save_npz=save_npz, device=device, bootstrap=replicates, encoders=specs, ref_val=ref_val,
                      kid_subset_size=kid_subset_size)
    if metrics is None:  # another rank than 0: rank 0 reports
        return
    for line in report_lines(metrics) + extra_lines(metrics):
        click.echo(line)
    click.echo(f"wrote {Path(out) / 'metrics.json'}", err=True)
