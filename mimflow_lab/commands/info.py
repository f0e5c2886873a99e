"""``mimflow-lab info``: what a checkpoint holds, without running it."""
from __future__ import annotations

import json

import click

from mimflow_lab.options import command


@command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(checkpoint: str, as_json: bool) -> None:
    """Config summary, parameters per module, step, phase and training data of CHECKPOINT."""
    from mimflow_core.model import count_parameters
    from mimflow_lab import load_model

    model, meta = load_model(checkpoint, allow_nonfinite=True)  # show a diverged run's config, warn of its weights
    if meta.nonfinite:
        click.echo(f"mimflow-lab: warning: {meta.path}: {meta.nonfinite}", err=True)
    params = {name: count_parameters(getattr(model, name)) for name in ("encoder", "flow", "decoder", "aux_head")}
    summary = {
        "path": str(meta.path), "step": meta.step, "phase": meta.phase, "weights": meta.weights,
        "variant": meta.variant, "label": meta.label, "parameters": params, "config": model.config.to_dict(),
        "train": meta.train, "meta": meta.meta, "nonfinite": meta.nonfinite,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    c = model.config
    click.echo(f"{meta.path}  (step {meta.step}, phase {meta.phase}, {meta.weights} weights, variant {meta.variant})")
    click.echo(f"  images   {c.image_size}px x {c.channels}ch, patch {c.patch_size} -> N={c.num_patches} patches")
    click.echo(f"  encoder  {c.enc_depth} layers / width {c.enc_width} / {c.enc_heads} heads   "
               f"{params['encoder'] / 1e6:.2f}M params")
    click.echo(f"  latent   K={c.num_tokens} tokens x D={c.latent_dim}  sigma={c.noise_sigma}  "
               f"mask ratio {c.mask_ratio_min}-{c.mask_ratio_max}")
    click.echo(f"  flow     blocks {list(c.flow_blocks)} / width {c.flow_width} / {c.flow_heads} heads, "
               f"{c.flow_scale} scale, gated attention {'on' if c.flow_gated_attn else 'off'}   "
               f"{params['flow'] / 1e6:.2f}M params")
    click.echo(f"  decoder  {c.dec_depth} layers / width {c.dec_width} / {c.dec_heads} heads   "
               f"{params['decoder'] / 1e6:.2f}M params")
    aux = "none" if c.aux_dim == 0 else f"{c.aux_dim}-d targets, {params['aux_head'] / 1e6:.2f}M params"
    click.echo(f"  aux head {aux}   classes {c.num_classes}")
    for key, value in sorted(meta.train.items()):
        click.echo(f"  train.{key} = {value}")
