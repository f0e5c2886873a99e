"""The MIMFlow trainer: phase 1 (joint), phase 2 (adversarial decoder fine-tuning), baselines, DDP.

Phase 1 (paper §3.2-3.3) trains encoder, flow, decoder and aux head together
(:class:`~mimflow_core.losses.TrainingLoss`) with the flow input *not* detached.
Phase 2 trains only the decoder (with its input projection) against a PatchGAN
with the hinge loss, the encoder still reading masked images and the flow
frozen. The stages of each variant are :func:`~mimflow_core.train.stages.plan_stages`';
a step's draws come from :func:`~mimflow_core.train.sampler.step_generator`, so
resumed and multi-process runs repeat a single uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from mimflow_core.atomic import write_json
from mimflow_core.checkpoint import check_weights, load_checkpoint, nonfinite_weights, save_checkpoint
from mimflow_core.config import ModelConfig, get_preset
from mimflow_core.data import load_dataset
from mimflow_core.discriminator import PatchDiscriminator
from mimflow_core.distributed import Process, distributed_process
from mimflow_core.ema import EMA
from mimflow_core.encoder import random_masking
from mimflow_core.errors import MIMFlowError
from mimflow_core.losses import TrainingLoss, build_aux_targets, build_perceptual, hinge_d_loss
from mimflow_core.model import MIMFlow, count_parameters
from mimflow_core.train.evaluation import evaluate_model
from mimflow_core.train.images import reconstruction_grid, sample_grid, save_image_grid
from mimflow_core.train.log import JsonlLog
from mimflow_core.train.masking import MaskPolicy
from mimflow_core.train.options import (INHERITED_BY_PHASE2, TrainOptions, check_stored, explicit_options,
                                        merge_options)
from mimflow_core.train.resume import load_optimizer, read_resume_checkpoint
from mimflow_core.train.rundir import claim_run_directory
from mimflow_core.train.sampler import ResumableSampler, step_generator
from mimflow_core.train.stages import LatentPass, Stage, plan_stages

# what a run writes into --out
CHECKPOINT, LOG, EVAL = "ckpt.pt", "log.jsonl", "eval.json"
SAMPLES, RECONSTRUCTIONS = "samples.png", "reconstructions.png"
OUTPUTS = (CHECKPOINT, LOG, EVAL, SAMPLES, RECONSTRUCTIONS)


def load_weights(model: nn.Module, state: dict, path: str | Path, what: str) -> None:
    """load_state_dict after the checkpoint module's one-line shape check."""
    check_weights(model, state, path, what)
    model.load_state_dict(state)


def adamw(params: list[nn.Parameter], opts: TrainOptions) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); weight decay on matrices only (nanoGPT), not on biases and norms."""
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": opts.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opts.lr, betas=(0.9, 0.95))


# ---------------------------------------------------------------------------- trainer
class Trainer:
    """One training job: the model, EMA and data of a new, resumed or phase-2 run; ``run`` trains and evaluates.

    Options a resumed run or phase 2 takes from its checkpoint are merged in before the
    preset's recipe and the variant's defaults fill the rest (``TrainOptions.resolved``).
    """

    def __init__(self, opts: TrainOptions, procs: Process, resume: bool = False,
                 explicit: set[str] | None = None):
        if explicit is None:  # called from Python: every option that differs from its default counts as given
            explicit = explicit_options(opts)
        self.procs, self.out = procs, Path(opts.out)
        self.ckpt_path = self.out / CHECKPOINT
        resume_ckpt = self._resume_checkpoint(resume, opts.steps)
        init_ckpt = None
        if resume_ckpt is not None:
            opts = merge_options(opts, explicit, resume_ckpt["train"], None, f"the run in {self.out}")
        elif opts.phase == 2:
            if not opts.init:
                raise MIMFlowError("--phase 2 needs --init PATH (a phase-1 checkpoint)")
            init_ckpt = load_checkpoint(opts.init)
            phase1_train = check_stored(init_ckpt.setdefault("train", {}), opts.init)
            opts = merge_options(opts, explicit, phase1_train, INHERITED_BY_PHASE2, f"the phase-1 run {opts.init}")
            if Path(opts.init).resolve().parent == self.out.resolve():
                raise MIMFlowError(f"--out {self.out}: would overwrite the phase-1 checkpoint {opts.init}; "
                                   "choose another directory")
        self.opts = opts = opts.resolved()
        self.policy = MaskPolicy.parse(opts.mask_ratio)
        if opts.batch_size % procs.world:
            raise MIMFlowError(f"--batch-size {opts.batch_size}: not divisible by the {procs.world} processes")
        self.local_batch = opts.batch_size // procs.world
        self.device = procs.device
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                         else nullcontext())

        stored = init_ckpt or resume_ckpt
        base = ModelConfig.from_dict(stored["config"]) if stored is not None else get_preset(opts.preset)
        self.dataset = load_dataset(opts.data, base.image_size, "train", flip=opts.flip, strict=opts.strict,
                                    seed=opts.seed, channels=base.channels)
        if len(self.dataset) < opts.batch_size:
            raise MIMFlowError(f"--batch-size {opts.batch_size}: larger than the {len(self.dataset)} training images")
        aux_targets = (build_aux_targets(opts.aux, base.patch_size, base.image_size // base.patch_size)
                       if opts.phase == 1 else None)
        aux_dim = aux_targets.dim if aux_targets is not None else 0
        config = base if stored is not None else self._new_config(aux_dim)
        if opts.phase == 1 and config.aux_dim != aux_dim:
            raise MIMFlowError(f"--aux {opts.aux}: target size {aux_dim} != the checkpoint's aux_dim {config.aux_dim}")
        if aux_targets is not None:
            aux_targets.to(self.device)
        perceptual = build_perceptual(opts.perceptual_weight, opts.lpips_backbone)
        if perceptual is not None:
            perceptual.to(self.device)

        torch.manual_seed(opts.seed)
        self.model = MIMFlow(config).to(self.device)
        if init_ckpt is not None:
            load_weights(self.model, init_ckpt["ema"] or init_ckpt["model"], opts.init, "initial")
        self.ema = EMA(self.model, opts.ema_decay)
        self.disc = PatchDiscriminator(config).to(self.device) if opts.phase == 2 and opts.gan_weight > 0 else None
        self.loss = TrainingLoss(config.patch_size, opts.mim_weight, opts.perceptual_weight, opts.aux_weight,
                                 opts.gan_weight, perceptual, aux_targets, self.disc)
        self.stages = plan_stages(opts, self.model.aux_head is not None)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.train_seconds = 0.0  # wall time of the training loop over every run that led to this step
        self._loop_started: float | None = None
        # every TrainOptions field (what --resume and phase 2 read back), plus what analyses label models by
        self.train_info = {**dataclasses.asdict(opts),
                           "num_tokens": config.num_tokens, "noise_sigma": config.noise_sigma,
                           "world_size": procs.world, "aux_names": aux_targets.names if aux_targets else [],
                           "phase1": init_ckpt["train"] if init_ckpt is not None else None}
        self.stage: Stage | None = None
        self.saved_step: int | None = None  # the step of the checkpoint in --out (None: none written yet)
        self._resume_state = resume_ckpt
        if resume_ckpt is not None:
            self._load_resume_state(resume_ckpt)

    # -- setup ---------------------------------------------------------------------------------
    def _resume_checkpoint(self, resume: bool, steps: int) -> dict | None:
        """The checkpoint a ``--resume`` continues, refused when ``--steps`` ends before it: such a run would
        train nothing, and evaluate a model of more steps than the user asked for. ``--steps`` equal to its
        step evaluates it again (what the demo reruns when it was stopped during the evaluation)."""
        if not resume:
            if self.ckpt_path.exists():
                raise MIMFlowError(f"{self.ckpt_path}: exists; pass --resume to continue it or choose another --out")
            return None
        if not self.ckpt_path.exists():
            raise MIMFlowError(f"--resume: no checkpoint {self.ckpt_path} to continue")
        ckpt = read_resume_checkpoint(self.ckpt_path)
        saved = ckpt["step"]
        if saved > steps:
            raise MIMFlowError(f"{self.ckpt_path}: is at step {saved} already; --steps {steps} would train nothing; "
                               f"give --steps > {saved} (or --steps {saved} to evaluate it again)")
        return ckpt

    def _load_resume_state(self, ckpt: dict) -> None:
        """Weights, EMA, counters, RNG and discriminator of the checkpoint being resumed (the optimizers are
        loaded when their stage starts)."""
        path, r = self.ckpt_path, ckpt["resume"]
        stages = [s.name for s in self.stages]
        if r["stage"] not in stages:
            raise MIMFlowError(f"{path}: resume.stage is {r['stage']!r}, none of this run's stages "
                               f"({', '.join(stages)})")
        load_weights(self.model, ckpt["model"], path, "model")
        check_weights(self.model, ckpt.get("ema"), path, "ema")
        self.ema.load_state_dict(ckpt["ema"], r["ema_updates"])
        self.step, self.epoch, self.batch_in_epoch = ckpt["step"], r["epoch"], r["batch_in_epoch"]
        self.saved_step = ckpt["step"]
        self.train_seconds = float(r.get("train_seconds", 0.0))
        torch.set_rng_state(r["rng_cpu"])
        if self.disc is not None:
            load_weights(self.disc, r.get("disc"), path, "discriminator")

    def _new_config(self, aux_dim: int) -> ModelConfig:
        """The preset with the command line's K, sigma, mask range, variant and the data's classes."""
        opts, overrides = self.opts, {"num_classes": max(1, self.dataset.num_classes), "aux_dim": aux_dim}
        if opts.tokens is not None:
            overrides["num_tokens"] = opts.tokens
        if opts.sigma is not None:
            overrides["noise_sigma"] = opts.sigma
        if self.policy.kind != "none":
            overrides.update(mask_ratio_min=self.policy.low, mask_ratio_max=self.policy.high)
        if opts.variant == "starflow":
            overrides.update(flow_scale="softplus", flow_gated_attn=False)
        return get_preset(opts.preset, **overrides)

    def _enter_stage(self, stage: Stage) -> None:
        """Freeze everything but the stage's modules, wrap for DDP, build the optimizer(s)."""
        self.stage = stage
        self.model.requires_grad_(False)
        for name in stage.trained:
            getattr(self.model, name).requires_grad_(True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        latent_pass = LatentPass(self.model, stage.heads, train_encoder="encoder" in stage.trained)
        self.latent_pass = self._ddp(latent_pass)
        self.optimizer = adamw(self.params, self.opts)
        if self.disc is not None:
            self.disc_forward = self._ddp(self.disc)
            self.disc_optimizer = adamw(list(self.disc.parameters()), self.opts)
        r = self._resume_state["resume"] if self._resume_state is not None else None
        if r is not None and r["stage"] == stage.name:
            load_optimizer(self.optimizer, r["optimizer"], self.ckpt_path, "optimizer")
            if self.disc is not None:
                load_optimizer(self.disc_optimizer, r.get("disc_optimizer"), self.ckpt_path, "disc_optimizer")
        self._resume_state = None  # only the stage a run resumes in has saved optimizer state

    def _ddp(self, module: nn.Module) -> nn.Module:
        if self.procs.world == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)

    # -- one step ------------------------------------------------------------------------------
    def _draws(self, labels: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        """This step's mask ratio, and this rank's rows of the global mask, latent noise and label dropout."""
        c, B = self.model.config, self.opts.batch_size
        g = step_generator(self.opts.seed, self.opts.phase, self.step)
        ratio = self.policy.sample(g)
        rows = slice(self.procs.rank, None, self.procs.world)
        mask = random_masking(B, c.num_patches, ratio, torch.device("cpu"), g)[rows]
        noise = torch.randn(B, c.num_tokens, c.latent_dim, generator=g)[rows]
        drop = (torch.rand(B, generator=g) < self.opts.label_drop)[rows]
        y = torch.where(drop, torch.full_like(labels, -1), labels.cpu())
        return ratio, mask.to(self.device), noise.to(self.device), y.to(self.device)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One optimizer step on this rank's rows of the global batch; returns this rank's terms (``run`` averages)."""
        images = images.to(self.device, non_blocking=True)
        ratio, mask, noise, y = self._draws(labels)
        with self.autocast:
            out = self.latent_pass(images, mask, noise, y)
            total, losses = self.loss(out, images, mask, self._flow_weight())
        logs = {"mask_ratio": ratio, **losses}
        self._set_lr()
        total.backward()
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, self.opts.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.disc is not None:
            logs.update(self._discriminator_step(images, out["recon"].detach().float()))
        self.ema.update(self.model)
        logs["loss"] = total.item()
        return logs

    def _discriminator_step(self, images: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
        with self.autocast:
            real, fake = self.disc_forward(torch.cat([images, recon])).float().chunk(2)
            d_loss = hinge_d_loss(real, fake)
        d_loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.disc.parameters(), self.opts.grad_clip)
        self.disc_optimizer.step()
        self.disc_optimizer.zero_grad(set_to_none=True)
        return {"gan_d": d_loss.item(), "disc_grad_norm": float(norm),
                "disc_real": real.mean().item(), "disc_fake": fake.mean().item()}

    def _flow_weight(self) -> float:
        """beta, ramped up from 0 over ``flow_warmup_steps`` so a young autoencoder is not collapsed by the prior.

        The flow stage of the starflow baseline trains the flow alone, where the ramp has no purpose.
        """
        if not self.opts.flow_warmup_steps or self.stage.name == "flow":
            return self.opts.flow_weight
        return self.opts.flow_weight * min(1.0, self.step / self.opts.flow_warmup_steps)

    def _set_lr(self) -> float:
        """Constant LR after an optional linear warm-up (counted from each stage's start)."""
        into = self.step - self.stage.start
        lr = self.opts.lr * min(1.0, (into + 1) / self.opts.warmup_steps) if self.opts.warmup_steps else self.opts.lr
        for opt in (self.optimizer, getattr(self, "disc_optimizer", None)):
            for group in (opt.param_groups if opt is not None else []):
                group["lr"] = lr
        return lr

    # -- loop ------------------------------------------------------------------------------------
    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = ResumableSampler(self.dataset, self.procs, self.opts.seed)
        loader = DataLoader(self.dataset, batch_size=self.local_batch, sampler=sampler, drop_last=True,
                            num_workers=self.opts.num_workers, pin_memory=self.device.type == "cuda")
        while True:
            sampler.set_position(self.epoch, self.batch_in_epoch * self.local_batch)
            self.dataset.set_epoch(self.epoch)
            yield from loader
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def run(self) -> dict:
        """Train to ``opts.steps``, checkpointing; then evaluate on held-out data (rank 0) and return that."""
        opts, procs = self.opts, self.procs
        self._loop_started = time.time()
        if self.step < opts.steps:  # before the log changes, so that a resumed optimizer state that does not fit fails
            self._enter_stage(self._current_stage())
        log = JsonlLog(self.out / LOG, self.step, enabled=procs.is_main)
        if procs.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            log.write(self._describe())
        # closed (its line ended) when a step fails too, so that the error has a line of its own
        with tqdm(total=opts.steps, initial=self.step, disable=not procs.is_main, desc=f"phase {opts.phase}",
                  dynamic_ncols=True) as bar:
            self._train_loop(log, bar)
        result = {}
        if procs.is_main and opts.evaluate:
            result = self.evaluate(self._trained_seconds())
        procs.barrier()
        return result

    def _train_loop(self, log: JsonlLog, bar: tqdm) -> None:
        """The steps up to ``opts.steps``: log every ``log_every`` (the mean over the window, all ranks), save every
        ``ckpt_every`` and at the end."""
        opts, procs = self.opts, self.procs
        window: list[dict] = []
        tick = time.time()
        data = self.batches()
        while self.step < opts.steps:
            stage = self._current_stage()
            if stage is not self.stage:
                self._enter_stage(stage)
            images, labels = next(data)
            logs = self.train_step(images, labels)
            self.step += 1
            self.batch_in_epoch += 1
            self._stop_if_diverged(logs)
            window.append(logs)
            bar.update(1)
            if self.step % opts.log_every == 0 or self.step == opts.steps:
                mean = procs.mean({k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]})
                elapsed = time.time() - tick
                mean.update(step=self.step, phase=opts.phase, stage=stage.name, epoch=self.epoch,
                            lr=self.optimizer.param_groups[0]["lr"], images_per_s=len(window) * opts.batch_size / elapsed)
                log.write(mean)
                bar.set_postfix(loss=f"{mean['loss']:.4f}", refresh=False)
                window, tick = [], time.time()
            if self.step % opts.ckpt_every == 0 or self.step == opts.steps:
                self.save()

    def _stop_if_diverged(self, logs: dict[str, float]) -> None:
        """Stop at the first step whose loss, or any term logged with it, is NaN or Inf: every later step and
        checkpoint would only spread it. The terms are floats already (``train_step`` reads them with
        ``.item()``), so the test costs no device sync; under torchrun one all-reduce of the flags makes every
        rank stop at the same step, so that none waits in the next step's gradient all-reduce."""
        flags = self.procs.mean({name: float(not math.isfinite(value)) for name, value in logs.items()})
        bad = sorted(name for name, flag in flags.items() if flag > 0)
        if bad:
            raise self._divergence(f"{', '.join(bad)} became NaN or Inf (the run diverged)")

    def _refuse_nonfinite_weights(self) -> None:
        """The last guard before a checkpoint replaces a good one: weights holding NaN or Inf are never saved.
        Every rank holds the same weights (DDP), so every rank tests them and all stop together."""
        states = {"model": self.model.state_dict(), "ema": self.ema.state_dict()}
        if self.disc is not None:
            states["discriminator"] = self.disc.state_dict()
        for name, state in states.items():
            if problem := nonfinite_weights(state):
                raise self._divergence(f"{name} weights: {problem}")

    def _divergence(self, what: str) -> MIMFlowError:
        """The one line a diverged run stops with: the step, what diverged, what is left in --out, what to do."""
        if self.saved_step is None:
            left = "no checkpoint was written; lower --lr and train again"
        else:  # a resumed run repeats the draws and the data of the steps it continues, and --lr is fixed
            left = (f"the last checkpoint {self.ckpt_path} (step {self.saved_step}) is kept; lower --lr and train "
                    "again in a new --out (--resume would repeat the same steps)")
        return MIMFlowError(f"step {self.step}: {what}; stopped without saving: {left}")

    def _current_stage(self) -> Stage:
        """The stage the next step belongs to."""
        return next(s for s in self.stages if s.start <= self.step < s.end)

    def _describe(self) -> dict:
        c, o = self.model.config, self.opts
        notes = {"event": "start", "step": self.step, "device": str(self.device), "world_size": self.procs.world,
                 "train_images": len(self.dataset), "options": dataclasses.asdict(o)}
        if o.perceptual_weight == 0:
            notes["note"] = ("perceptual (LPIPS) loss off: weight 0 (the default on CPU presets, where no VGG16 "
                             "weights are available offline; pass --lpips-backbone PATH to enable it)")
        notes["parameters"] = {n: count_parameters(getattr(self.model, n)) for n in ("encoder", "flow", "decoder")}
        notes["config"] = c.to_dict()
        return notes

    def _trained_seconds(self) -> float:
        """Training wall time up to now, summed over the runs a resumed run continues (an evaluation-only
        rerun of a finished run reports the training it evaluates, not its own few milliseconds)."""
        running = 0.0 if self._loop_started is None else time.time() - self._loop_started
        return self.train_seconds + running

    def save(self) -> None:
        """Checkpoint atomically (rank 0), unless the weights hold NaN or Inf. Every rank counts the step saved,
        since every rank names the kept checkpoint when it stops."""
        self._refuse_nonfinite_weights()
        if self.procs.is_main:
            save_checkpoint(self.ckpt_path, self.model, ema_state=self.ema.state_dict(), step=self.step,
                            phase=self.opts.phase, train=self.train_info, resume=self._resume_entry())
        self.saved_step = self.step

    def _resume_entry(self) -> dict:
        """What ``--resume`` needs beyond the weights, as tensors and plain types only."""
        resume = {"optimizer": self.optimizer.state_dict(), "stage": self.stage.name,
                  "ema_updates": self.ema.num_updates, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                  "rng_cpu": torch.get_rng_state(), "train_seconds": self._trained_seconds()}
        if self.disc is not None:
            resume.update(disc=self.disc.state_dict(), disc_optimizer=self.disc_optimizer.state_dict())
        return resume

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, train_seconds: float) -> dict:
        """Held-out reconstruction MSE/PSNR and flow bits/dim with the EMA weights; sample grid PNG."""
        model = copy.deepcopy(self.model).eval()
        model.load_state_dict(self.ema.state_dict())
        test = load_dataset(self.opts.data, model.config.image_size, "test", strict=self.opts.strict,
                            channels=model.config.channels)
        metrics = evaluate_model(model, test, self.policy, self.device, seed=self.opts.seed)
        grid = sample_grid(model, self.device, self.opts.sample_cfg, seed=self.opts.seed)
        save_image_grid(grid, self.out / SAMPLES)
        recon = reconstruction_grid(model, test, self.device)
        save_image_grid(recon, self.out / RECONSTRUCTIONS)
        result = {"step": self.step, "phase": self.opts.phase, "variant": self.opts.variant, "weights": "ema",
                  "mask_ratio": self.opts.mask_ratio, "heldout_split": "test", "data": self.opts.data,
                  **metrics, "sample_grid": SAMPLES, "sample_grid_rows": "one class per row",
                  "sample_cfg": self.opts.sample_cfg, "reconstruction_grid": RECONSTRUCTIONS,
                  "train_wall_s": train_seconds, "checkpoint": CHECKPOINT}
        write_json(self.out / EVAL, result)
        return result



def train(opts: TrainOptions, resume: bool = False, explicit: set[str] | None = None) -> dict:
    """Run one training job (under torchrun: one process of it); returns rank 0's evaluation.

    Rank 0 holds ``--out``'s lock from before it reads the run being resumed until the job ends, so a
    second job on the same ``--out`` is refused instead of interleaving its log and checkpoints.
    """
    with distributed_process(opts.device) as procs, claim_run_directory(Path(opts.out), OUTPUTS, procs.is_main):
        return Trainer(opts, procs, resume, explicit).run()

