"""``mimflow-lab fid``: ADM metrics of a checkpoint's samples (or reconstructions), sharded and resumable."""
from __future__ import annotations

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
    from mimflow_core.errors import MIMFlowError
    from mimflow_lab.defaults import resolve_checkpoints
    from mimflow_lab.fid_run import run_fid
    from mimflow_lab.metrics import report_lines

    (checkpoint,) = resolve_checkpoints([checkpoint] if checkpoint else [])
    if reference is None and rfid is None:
        raise MIMFlowError("--ref: required (an ADM reference batch; build one with `mimflow-lab ref-stats`)")
    if samples < 2 or batch < 1:
        raise MIMFlowError(f"--samples {samples} / --batch {batch}: need at least 2 samples and 1 per batch")
    with warnings_as_lines():
        metrics = run_fid(checkpoint, out, reference=reference, samples=samples, batch=batch, cfg=cfg, seed=seed,
                          rfid=rfid, split=split, weights=weights, inception_path=inception_path, save_npz=save_npz,
                          device=device)
    if metrics is None:  # another rank than 0: rank 0 reports
        return
    for line in report_lines(metrics):
        click.echo(line)
    click.echo(f"wrote {Path(out) / 'metrics.json'}", err=True)
