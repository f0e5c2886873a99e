"""``mimflow-lab train``: phase-1 joint training, phase-2 GAN fine-tuning, and the two baselines.

Runs as one process, or under ``torchrun --nproc_per_node N mimflow-lab train ...``
as DistributedDataParallel (NCCL on CUDA, Gloo on CPU); rank 0 logs and saves.
"""
from __future__ import annotations

import json

import click
from click.core import ParameterSource



@click.command(context_settings={"show_default": True})
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory: ckpt.pt, log.jsonl, eval.json, samples.png, reconstructions.png.")
@click.option("--preset", default="tiny", help="Model size: digits (32 px, the demo's), tiny (32 px, CPU), small (64 px), base, L (256 px).")
@click.option("--data", default="digits",
              help="'digits' (scikit-learn, offline), an ImageFolder directory (<root>/<class>/*.jpg, "
                   "optionally <root>/train|val/...) or an ADM .npz (arr_0 uint8 NHWC, labels arr_1).")
@click.option("--phase", type=click.IntRange(1, 2), default=1,
              help="1: joint encoder/flow/decoder training; 2: decoder + PatchGAN fine-tuning (needs --init).")
@click.option("--init", type=click.Path(dir_okay=False), help="Phase 2: the phase-1 checkpoint to start from.")
@click.option("--variant", type=click.Choice(["mimflow", "starflow", "e2e-nomask"]), default="mimflow",
              help="mimflow; starflow = autoencoder without masking, then a flow (softplus, no gate) on its "
                   "frozen latents; e2e-nomask = joint training without masking.")
@click.option("--steps", type=click.IntRange(min=1), default=2000, help="Optimizer steps of this phase.")
@click.option("--ae-steps", type=int, default=None, help="starflow: autoencoder steps before the flow [steps/2].")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, help="Global batch (all processes).")
@click.option("--lr", type=float, default=1e-4, help="AdamW learning rate (constant after warm-up).")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=0, help="Linear LR warm-up steps.")
@click.option("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (matrices only).")
@click.option("--grad-clip", type=float, default=1.0, help="Gradient-norm clip.")
@click.option("--ema-decay", type=float, default=0.9999, help="EMA decay (ramped up over the first steps).")
@click.option("--mask-ratio", default=None,
              help="none | LO-HI (one ratio per batch, uniform; e.g. 0.2-0.4, 0.4-0.6, 0.6-0.8) | mix "
                   "(50/50 none or 0.4-0.6) | mix:LO-HI.  [default: 0.4-0.6; none for the baselines]")
@click.option("--tokens", type=click.IntRange(min=1), default=None, help="K latent tokens [preset's].")
@click.option("--sigma", type=click.FloatRange(min=0), default=None, help="Latent noise scale [preset's, 0.3].")
@click.option("--mim-weight", type=float, default=1.0, help="L2 weight of masked patches (Table 9).")
@click.option("--flow-weight", type=float, default=1.0,
              help="beta: weight of the per-dimension flow NLL (the paper's 1.0; short tiny CPU runs collapse "
                   "at 1.0 and train with 0.03, see the README).")
@click.option("--flow-warmup-steps", type=click.IntRange(min=0), default=0,
              help="Ramp beta linearly from 0 over N steps (KL annealing against early posterior collapse).")
@click.option("--aux", default=None,
              help="Aux targets on masked patches: none | hog | ts:PATH[,size=224][,norm=imagenet|clip] | "
                   "hub:DIR:ENTRY[,weights=PATH], joined by + (e.g. ts:dino.pt+ts:clip.pt,norm=clip). "
                   "[default: hog; none for starflow]")
@click.option("--aux-weight", type=float, default=1.0, help="gamma: weight of the aux loss.")
@click.option("--perceptual-weight", type=float, default=None,
              help="LPIPS weight [1.1; 0 on the CPU presets tiny/small unless --lpips-backbone is given].")
@click.option("--lpips-backbone", type=click.Path(dir_okay=False), default=None,
              help="torchvision vgg16 state dict (vgg16-397923af.pth) for LPIPS; never downloaded.")
@click.option("--gan-weight", type=float, default=0.05, help="alpha: phase-2 GAN weight; 0 = GAN off.")
@click.option("--label-drop", type=click.FloatRange(0, 1), default=0.1, help="Label dropout for CFG.")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flips [on, off for digits].")
@click.option("--strict", is_flag=True, help="Fail on unreadable/odd-sized images or empty class folders.")
@click.option("--seed", type=int, default=0, help="Seed of init, data order and all random draws.")
@click.option("--ckpt-every", type=click.IntRange(min=1), default=500, help="Checkpoint every N steps.")
@click.option("--log-every", type=click.IntRange(min=1), default=10, help="Log line every N steps.")
@click.option("--num-workers", type=click.IntRange(min=0), default=0, help="DataLoader workers per process.")
@click.option("--device", default="auto", help="auto | cpu | cuda.")
@click.option("--sample-cfg", type=float, default=1.0, help="Guidance scale of the final sample grid.")
@click.option("--eval/--no-eval", "evaluate", default=True,
              help="Evaluate on held-out data and write eval.json + sample grids at the end.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly (optimizer, EMA, RNG, data).")
def train(resume: bool, **kwargs) -> None:
    """Train a MIMFlow model (or a baseline) and evaluate it on held-out data.

    \b
    mimflow-lab train --preset tiny --data digits --out runs/demo --steps 2000
    mimflow-lab train --phase 2 --init runs/demo/ckpt.pt --out runs/demo-gan --steps 300
    torchrun --nproc_per_node 8 $(which mimflow-lab) train --preset L --data /data/imagenet ...
    """
    from mimflow_core.train import TrainOptions, train as run_training

    ctx = click.get_current_context()
    explicit = {name for name in kwargs if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
    result = run_training(TrainOptions(**kwargs), resume=resume, explicit=explicit)
    if result:
        click.echo(json.dumps(result, indent=2))
