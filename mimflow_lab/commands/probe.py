"""``mimflow-lab probe``: linear-probe accuracy per checkpoint, inference mask ratio and depth (Fig. 6, Table 5a)."""
from __future__ import annotations

from pathlib import Path

import click

from mimflow_lab import options
from mimflow_lab.commands.features import DEPTHS_HELP, common_feature_options
from mimflow_lab.options import command


@command()
@click.argument("checkpoints", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--depths", default="all", show_default=True, help=DEPTHS_HELP)
@click.option("--layers", is_flag=True, help="Also probe every transformer layer of the deep flow block.")
@options.mask_ratio()
@click.option("--max-train", type=click.IntRange(min=1), default=None,
              help="Use a class-balanced subset of this many training images (default: all).")
@click.option("--pixel-baseline", is_flag=True, help="Also probe raw pixels (a dashed reference line).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Probe seeds (validation split, batch order).")
@options.out_dir("results/probe", "probe.json, probe.csv, probe_depth.png/.pdf")
@common_feature_options()
def probe(checkpoints: tuple[str, ...], depths: str, layers: bool, mask_ratio: list[float], max_train: int | None,
          pixel_baseline: bool, seeds: str, out: str, data: str, pool: str, weights: str, seed: int,
          batch_size: int, cache: str | Path | None, no_cache: bool, device: str, num_workers: int) -> None:
    """Linear-probe top-1 accuracy of CHECKPOINTS' features at every depth (mean ± std over seeds).

    Without CHECKPOINTS: $MIMFLOW_CHECKPOINT, else the newest checkpoint of the newest run under runs/ or
    */runs/.
    """
    from mimflow_lab.commands.features import processes
    from mimflow_lab.defaults import resolve_checkpoints
    from mimflow_lab.probe import ProbeSettings, probe_checkpoints, write_probe_results

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{seeds!r}: expected comma-separated integers", param_hint="--seeds") from None
    checkpoints = resolve_checkpoints(checkpoints)
    with processes(device) as device:
        result = probe_checkpoints(
            checkpoints, depths=depths, mask_ratios=mask_ratio, data=data, layers=layers, pool=pool,
            weights=weights, seed=seed, shard_size=batch_size, max_train=max_train, pixel_baseline=pixel_baseline,
            cache=None if no_cache else cache, device=device, num_workers=num_workers,
            settings=ProbeSettings(seeds=seed_list, device=str(device)))
    if result is None:  # not rank 0
        return
    files = write_probe_results(result, out)
    for row in result["results"]:
        click.echo(f"{row['checkpoint']:<32} mask {row['mask_ratio']:<4g} {row['depth']:>8}: "
                   f"{row['accuracy_mean']:6.2f} ± {row['accuracy_std']:.2f} %")
    click.echo(f"wrote {files['json']}, {files['csv']}, {files['png']}, {files['pdf']}")
