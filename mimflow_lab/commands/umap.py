"""``mimflow-lab umap``: Figure 4, UMAP panels of latent spaces with measured class separation."""
from __future__ import annotations

from pathlib import Path

import click

from mimflow_lab import options
from mimflow_lab.commands.features import common_feature_options
from mimflow_lab.options import command


@command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--compare", multiple=True,
              help="Another checkpoint for a side-by-side panel; 'pixels' adds a raw-pixel panel. Repeatable.")
@click.option("--what", default="latent", show_default=True,
              help="Which features: latent (z), encoder (before the projection) or block:N (flow block N's output).")
@click.option("--samples", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Class-balanced subset size (samples // classes per class).")
@click.option("--classes", type=click.IntRange(min=1), default=None, help="Only the first N classes (default: all).")
@options.split("test", "Split whose images are embedded")
@options.mask_ratio(single=True)
@click.option("--neighbors", type=click.IntRange(min=2), default=15, show_default=True, help="UMAP n_neighbors.")
@click.option("--min-dist", type=float, default=0.1, show_default=True, help="UMAP min_dist.")
@click.option("--knn", "knn_k", type=click.IntRange(min=1), default=10, show_default=True,
              help="k of the kNN accuracy and of trustworthiness.")
@options.out_dir("results/umap", "umap.json, umap.npz, umap.png/.pdf")
@common_feature_options(pool="flat")
def umap(checkpoint: str, compare: tuple[str, ...], what: str, samples: int, classes: int | None, split: str,
         mask_ratio: float, neighbors: int, min_dist: float, knn_k: int, out: str, data: str, pool: str,
         weights: str, seed: int, batch_size: int, cache: str | Path | None, no_cache: bool, device: str,
         num_workers: int) -> None:
    """UMAP of CHECKPOINT's latent space (and --compare ones), colour = class, with kNN accuracy and trustworthiness."""
    from mimflow_lab.commands.features import processes
    from mimflow_lab.umap import umap_compare, write_umap_results

    panels = [checkpoint, *compare]  # (a) the first, e.g. the reference, (b) ... as given
    with processes(device) as device:
        done = umap_compare(panels, what=what, samples=samples, classes=classes, data=data, split=split,
                            mask_ratio=mask_ratio, pool=pool, weights=weights, seed=seed, shard_size=batch_size,
                            n_neighbors=neighbors, min_dist=min_dist, knn_k=knn_k,
                            cache=None if no_cache else cache, device=device, num_workers=num_workers)
    if done is None:  # not rank 0
        return
    files = write_umap_results(*done, out)
    for p in done[0]["panels"]:
        click.echo(f"{p['label']:<32} kNN acc. {p['knn_accuracy']:5.1f} ± {p['knn_accuracy_std']:.1f} %  "
                   f"(2-D {p['knn_accuracy_2d']:.1f} %)  trustworthiness {p['trustworthiness']:.3f}  "
                   f"silhouette {p['silhouette']:.3f}")
    click.echo(f"wrote {files['json']}, {files['npz']}, {files['png']}, {files['pdf']}")
