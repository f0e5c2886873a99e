"""``mimflow-lab ref-stats``: build an ADM reference batch (images + statistics) from a dataset."""
from __future__ import annotations

import click

from mimflow_lab.commands.evaluate import INCEPTION_HELP, warnings_as_lines


@click.command("ref-stats")
@click.argument("source")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Reference batch to write (.npz).")
@click.option("--size", type=int, default=None,
              help="Image size for a directory or 'digits' (ADM centre crop); an npz keeps its images as they are.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default="all", show_default=True,
              help="Dataset split of a directory or 'digits'.")
@click.option("--limit", type=int, default=None, help="Keep this many images, a seeded random subset (ADM: 10000).")
@click.option("--seed", default=0, show_default=True, help="Seed of the --limit subset.")
@click.option("--inception", "inception_path", type=click.Path(dir_okay=False), default=None, help=INCEPTION_HELP)
@click.option("--batch", default=64, show_default=True, help="Images per Inception forward pass.")
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
def ref_stats(source: str, out: str, size: int | None, split: str, limit: int | None, seed: int,
              inception_path: str | None, batch: int, device: str | None) -> None:
    """Write SOURCE (an image directory, 'digits' or an ADM npz) as a reference batch.

    The output holds ADM's keys: arr_0 (uint8 NHWC images), arr_1 (labels),
    mu/sigma (pool_3) and mu_s/sigma_s (spatial), plus the weights used.
    """
    from mimflow_core.distributed import resolve_device
    from mimflow_lab.metrics.reference import build_reference

    with warnings_as_lines():
        summary = build_reference(source, out, size=size, split=split, limit=limit, seed=seed,
                                  inception_path=inception_path, batch_size=batch, device=resolve_device(device))
    click.echo(f"wrote {out}: {summary['num_images']} images {summary['image_shape']}, "
               f"weights {summary['inception_weights']}")
