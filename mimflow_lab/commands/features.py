"""``mimflow-lab features``: export per-depth features of a checkpoint for your own probes.

Also holds the options and process setup shared by ``probe`` and ``umap``.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from mimflow_lab import options
from mimflow_lab.options import command

DEPTHS_HELP = ("'all' (encoder, latent, every flow block) or a comma list of depth names such as encoder,latent,0,3; "
               "deep-block layers are B.L (block B, layer L; with --layers).")


def common_feature_options(pool: str = "mean") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Options every feature-reading command takes (data, pooling, weights, seed, batch size, cache, device)."""
    return functools.partial(_add_feature_options, pool_default=pool)


def _add_feature_options(command: Callable[..., Any], pool_default: str) -> Callable[..., Any]:
    decorators = [
        click.option("--data", default="digits", show_default=True,
                     help="'digits', an ImageFolder-style directory or an ADM .npz file."),
        click.option("--pool", type=click.Choice(["mean", "flat"]), default=pool_default, show_default=True,
                     help="Per image: mean over the K tokens, or all tokens flattened."),
        options.weights(),
        options.seed("Seed of the inference masks."),
        options.batch_size(256, "Images per forward pass and cache shard (part of the cache key: it fixes the "
                                "masks)."),
        click.option("--cache", default=None, type=click.Path(file_okay=False),
                     help="Feature cache directory "
                          "[default: $MIMFLOW_CACHE/features or ~/.cache/mimflow-lab/features]."),
        click.option("--no-cache", is_flag=True, help="Compute features in memory, write no cache."),
        options.device(),
        click.option("--num-workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader workers."),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, cache: str | None = None, **kwargs: Any) -> Any:
        from mimflow_lab.depth_features import DEFAULT_CACHE

        return command(*args, cache=cache or DEFAULT_CACHE, **kwargs)

    for decorator in reversed(decorators):
        wrapper = decorator(wrapper)
    return wrapper


@contextlib.contextmanager
def processes(device: str) -> Iterator[str]:
    """This rank's device, inside the torchrun group when there is one (NCCL on GPUs, Gloo on CPUs).

    Each rank then computes its share of the feature shards; see
    :func:`mimflow_lab.depth_features.extract_depth_features`.
    """
    from mimflow_core.distributed import distributed_process

    with distributed_process(device) as process:
        yield str(process.device)


@command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--depths", default="all", show_default=True, help=DEPTHS_HELP)
@click.option("--layers", is_flag=True, help="Include every transformer layer of the deep flow block.")
@options.mask_ratio(single=True)
@options.split(None, "One split only")
@click.option("--max-samples", type=click.IntRange(min=1), default=None,
              help="Class-balanced subset of this many images per split.")
@options.out_dir_or_old_file("results/features", "features.npz", "one (n, dim) array per depth, labels, split, index")
@common_feature_options()
def features(checkpoint: str, depths: str, layers: bool, mask_ratio: float, split: str | None,
             max_samples: int | None, out: Path, data: str, pool: str, weights: str, seed: int, batch_size: int,
             cache: str | None, no_cache: bool, device: str, num_workers: int) -> None:
    """Export CHECKPOINT's features: one (n, dim) array per depth, plus labels, split and index."""
    from mimflow_lab.depth_features import export_features

    with processes(device) as device:
        path = export_features(checkpoint, out, depths=depths, layers=layers, mask_ratio=mask_ratio,
                               splits=(split,) if split else ("train", "test"), max_samples=max_samples,
                               data=data, pool=pool, weights=weights, seed=seed, shard_size=batch_size,
                               cache=None if no_cache else cache, device=device, num_workers=num_workers)
    if path is not None:
        click.echo(f"wrote {path}")
