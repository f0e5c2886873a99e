"""``mimflow-lab train``: phase-1 joint training, phase-2 GAN fine-tuning, and the two baselines.

Runs as one process, or under ``torchrun --nproc-per-node N -m mimflow_lab.cli train ...``
as DistributedDataParallel (NCCL on CUDA, Gloo on CPU); rank 0 logs and saves.
Every option's default is :class:`~mimflow_core.train.options.TrainOptions`'
(or, where that is None, the preset's recipe or a rule of ``TrainOptions.resolved``);
nothing here imports torch, so ``--help`` answers at once.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable

import click
from click.core import ParameterSource

from mimflow_core.config import PRESETS, TRAIN_RECIPES, get_recipe
from mimflow_core.train.options import CPU_PRESETS, PAPER_PERCEPTUAL_WEIGHT, VARIANTS, TrainOptions
from mimflow_lab.options import command

_FIELDS = {f.name: f for f in dataclasses.fields(TrainOptions)}


def option(*decls: str, **kwargs) -> Callable:
    """``click.option`` for the TrainOptions field of the same name, with that field's default."""
    name = next((d for d in decls if not d.startswith("-")), decls[0].split("/")[0].lstrip("-").replace("-", "_"))
    if _FIELDS[name].default is not dataclasses.MISSING:
        kwargs["default"] = _FIELDS[name].default
    return click.option(*decls, **kwargs)


def recipe_help(field: str) -> str:
    """``[preset's: 0.001 for tiny/digits/small, 0.0001 for base/L]``, read from the presets' training recipes."""
    def values(phase: int) -> str:
        presets: dict[float, list[str]] = {}
        for preset in TRAIN_RECIPES:
            presets.setdefault(getattr(get_recipe(preset, phase), field), []).append(preset)
        if len(presets) == 1:
            return f"{next(iter(presets)):g}"
        return ", ".join(f"{value:g} for {'/'.join(names)}" for value, names in presets.items())

    phase1, phase2 = values(1), values(2)
    return f"[preset's: {phase1}" + ("" if phase2 == phase1 else f"; phase 2: {phase2}") + "]"


@command(context_settings={"show_default": True})
@option("--out", required=True, type=click.Path(file_okay=False),
        help="Run directory: ckpt.pt, log.jsonl, eval.json, samples.png, reconstructions.png.")
@option("--preset", type=click.Choice(list(PRESETS)),
        help="Model size and its training recipe: digits (32 px grey, the demo's), tiny (32 px, CPU), small (64 px), "
             "base, L (256 px).")
@option("--data", help="'digits' (scikit-learn, offline), an ImageFolder directory (<root>/<class>/*.jpg, "
                       "optionally <root>/train|val/...) or an ADM .npz (arr_0 uint8 NHWC, labels arr_1).")
@option("--phase", type=click.IntRange(1, 2),
        help="1: joint encoder/flow/decoder training; 2: decoder + PatchGAN fine-tuning (needs --init).")
@option("--init", type=click.Path(dir_okay=False), help="Phase 2: the phase-1 checkpoint to start from.")
@option("--variant", type=click.Choice(VARIANTS),
        help="mimflow; starflow = autoencoder without masking, then a flow (softplus, no gate) on its "
             "frozen latents; e2e-nomask = joint training without masking.")
@option("--steps", type=click.IntRange(min=1), help="Optimizer steps of this phase.")
@option("--ae-steps", type=int, help="starflow: autoencoder steps before the flow [steps/2].")
@option("--batch-size", type=click.IntRange(min=1), help=f"Global batch (all processes). {recipe_help('batch_size')}")
@option("--lr", type=float, help=f"AdamW learning rate (constant after warm-up). {recipe_help('lr')}")
@option("--warmup-steps", type=click.IntRange(min=0), help=f"Linear LR warm-up steps. {recipe_help('warmup_steps')}")
@option("--weight-decay", type=float, help="AdamW weight decay (matrices only).")
@option("--grad-clip", type=float, help="Gradient-norm clip.")
@option("--ema-decay", type=float, help="EMA decay (ramped up over the first steps).")
@option("--mask-ratio",
        help="none | LO-HI (one ratio per batch, uniform; e.g. 0.2-0.4, 0.4-0.6, 0.6-0.8) | mix "
             "(50/50 none or 0.4-0.6) | mix:LO-HI.  [default: 0.4-0.6; none for the baselines]")
@option("--tokens", type=click.IntRange(min=1), help="K latent tokens [preset's].")
@option("--sigma", type=click.FloatRange(min=0), help="Latent noise scale [preset's, 0.3].")
@option("--mim-weight", type=float, help="L2 weight of masked patches (Table 9).")
@option("--flow-weight", type=float,
        help="beta: weight of the per-dimension flow NLL (the paper's 1.0 collapses the small CPU presets' "
             f"posterior, README 'The tiny recipe'). {recipe_help('flow_weight')}")
@option("--flow-warmup-steps", type=click.IntRange(min=0),
        help="Ramp beta linearly from 0 over N steps (KL annealing against early posterior collapse).")
@option("--aux",
        help="Aux targets on masked patches: none | hog | ts:PATH[,size=224][,norm=imagenet|clip] | "
             "hub:DIR:ENTRY[,weights=PATH], joined by + (e.g. ts:dino.pt+ts:clip.pt,norm=clip). "
             "[default: hog; none for starflow]")
@option("--aux-weight", type=float, help="gamma: weight of the aux loss.")
@option("--perceptual-weight", type=float,
        help=f"LPIPS weight [{PAPER_PERCEPTUAL_WEIGHT:g}; 0 on the CPU presets {'/'.join(CPU_PRESETS)} "
             "unless --lpips-backbone is given].")
@option("--lpips-backbone", type=click.Path(dir_okay=False),
        help="torchvision vgg16 state dict (vgg16-397923af.pth) for LPIPS; never downloaded.")
@option("--gan-weight", type=float, help="alpha: phase-2 GAN weight; 0 = GAN off.")
@option("--label-drop", type=click.FloatRange(0, 1), help="Label dropout for CFG.")
@option("--flip/--no-flip", help="Random horizontal flips [on, off for digits].")
@option("--strict", is_flag=True, help="Fail on unreadable/odd-sized images or empty class folders.")
@option("--seed", type=int, help="Seed of init, data order and all random draws.")
@option("--ckpt-every", type=click.IntRange(min=1), help="Checkpoint every N steps.")
@option("--log-every", type=click.IntRange(min=1), help="Log line every N steps.")
@option("--num-workers", type=click.IntRange(min=0), help="DataLoader workers per process.")
@option("--device", help="auto (cuda:LOCAL_RANK when a GPU is visible, else cpu), cpu, cuda or cuda:N.")
@option("--sample-cfg", type=float, help="Guidance scale of the final sample grid.")
@option("--eval/--no-eval", "evaluate", help="Evaluate on held-out data and write eval.json + sample grids at the end.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly (optimizer, EMA, RNG, data).")
def train(resume: bool, **kwargs) -> None:
    """Train a MIMFlow model (or a baseline) and evaluate it on held-out data.

    Options left out take their defaults; --lr, --warmup-steps, --flow-weight and
    --batch-size the preset's training recipe ([preset's: ...] below).

    \b
    mimflow-lab train --preset tiny --data digits --out runs/demo --steps 2000
    mimflow-lab train --phase 2 --init runs/demo/ckpt.pt --out runs/demo-gan --steps 300
    torchrun --nproc-per-node 8 -m mimflow_lab.cli train --preset L --data /data/imagenet ...
    """
    from mimflow_core.train.trainer import train as run_training

    ctx = click.get_current_context()
    explicit = {name for name in kwargs if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    result = run_training(TrainOptions(**kwargs), resume=resume, explicit=explicit)
    if result:
        click.echo(json.dumps(result, indent=2))
