"""``mimflow-lab ref-stats``: build an ADM reference batch (images + statistics) from a dataset."""
from __future__ import annotations

from pathlib import Path

import click

from mimflow_lab import options
from mimflow_lab.options import command


@command("ref-stats")
@click.argument("source")
@options.out_dir_or_old_file("results/ref", "ref.npz", "the reference batch to pass to --ref")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="Image size for a directory or 'digits' (ADM centre crop); an npz keeps its images as they are.")
@options.split("test", "Split of a directory or 'digits' (ADM's ImageNet references are training images: "
                       "--split train)")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Keep this many images, a seeded random subset (ADM: 10000).")
@options.seed("Seed of the --limit subset.")
@options.inception()
@options.batch_size(64, "Images per Inception forward pass.")
@options.device()
def ref_stats(source: str, out: Path, size: int | None, split: str, limit: int | None, seed: int,
              inception_path: str | None, batch_size: int, device: str) -> None:
    """Write SOURCE (an image directory, 'digits' or an ADM npz) as a reference batch, --out/ref.npz.

    The output holds ADM's keys: arr_0 (uint8 NHWC images), arr_1 (labels),
    mu/sigma (pool_3) and mu_s/sigma_s (spatial), plus the weights used.
    """
    from mimflow_core.distributed import resolve_device
    from mimflow_lab.metrics.reference import build_reference

    summary = build_reference(source, out, size=size, split=split, limit=limit, seed=seed,
                              inception_path=inception_path, batch_size=batch_size, device=resolve_device(device))
    click.echo(f"wrote {out}: {summary['num_images']} images {summary['image_shape']}, "
               f"weights {summary['inception_weights']}")
