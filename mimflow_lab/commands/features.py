"""``mimflow-lab features``: export per-depth features of a checkpoint for your own probes.

Also holds the options and process setup shared by ``probe`` and ``umap``.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Iterator

import click

from mimflow_core.errors import MIMFlowError


def common_feature_options(pool: str = "mean"):
    """Options every feature-reading command takes (data, pooling, cache, device)."""
    return functools.partial(_add_feature_options, pool_default=pool)


def _add_feature_options(command, pool_default: str):
    options = [
        click.option("--data", default="digits", show_default=True,
                     help="'digits', an ImageFolder-style directory or an ADM .npz file."),
        click.option("--pool", type=click.Choice(["mean", "flat"]), default=pool_default, show_default=True,
                     help="Per image: mean over the K tokens, or all tokens flattened."),
        click.option("--weights", type=click.Choice(["ema", "raw"]), default="ema", show_default=True,
                     help="EMA weights (when the checkpoint has them) or the raw training weights."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inference masks."),
        click.option("--shard-size", type=int, default=256, show_default=True,
                     help="Images per forward pass and cache shard (part of the cache key: it fixes the masks)."),
        click.option("--cache", default=None, type=click.Path(file_okay=False),
                     help="Feature cache directory "
                          "[default: $MIMFLOW_CACHE/features or ~/.cache/mimflow-lab/features]."),
        click.option("--no-cache", is_flag=True, help="Compute features in memory, write no cache."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--num-workers", type=int, default=0, show_default=True, help="DataLoader workers."),
    ]

    @functools.wraps(command)
    def wrapper(*args, cache=None, **kwargs):
        from mimflow_lab.depth_features import DEFAULT_CACHE

        return command(*args, cache=cache or DEFAULT_CACHE, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise MIMFlowError(f"--mask-ratios {text!r}: expected comma-separated numbers in [0, 1)") from None
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise MIMFlowError(f"--mask-ratios {text!r}: every ratio must lie in [0, 1)")
    return ratios


@contextlib.contextmanager
def processes(device: str) -> Iterator[str]:
    """This rank's device, inside the torchrun group when there is one (NCCL on GPUs, Gloo on CPUs).

    Each rank then computes its share of the feature shards; see
    :func:`mimflow_lab.depth_features.extract_depth_features`.
    """
    from mimflow_core.distributed import distributed_process

    with distributed_process(device) as process:
        yield str(process.device)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--depths", default="all", show_default=True,
              help="'all' or a comma list such as encoder,latent,0,3 (deep-block layers: B.L).")
@click.option("--layers", is_flag=True, help="Include every transformer layer of the deep flow block.")
@click.option("--mask-ratio", type=float, default=0.0, show_default=True, help="Inference mask ratio.")
@click.option("--split", type=click.Choice(["train", "test", "all"]), default=None,
              help="One split only [default: train and test, stacked, with a 'split' array].")
@click.option("--max-samples", type=int, default=None, help="Class-balanced subset of this many images per split.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@common_feature_options()
def features(checkpoint, depths, layers, mask_ratio, split, max_samples, out, data, pool, weights, seed,
             shard_size, cache, no_cache, device, num_workers) -> None:
    """Export CHECKPOINT's features: one (n, dim) array per depth, plus labels, split and index."""
    from mimflow_lab.depth_features import export_features

    with processes(device) as device:
        path = export_features(checkpoint, out, depths=depths, layers=layers, mask_ratio=mask_ratio,
                               splits=(split,) if split else ("train", "test"), max_samples=max_samples,
                               data=data, pool=pool, weights=weights, seed=seed, shard_size=shard_size,
                               cache=None if no_cache else cache, device=device, num_workers=num_workers)
    if path is not None:
        click.echo(f"wrote {path}")
