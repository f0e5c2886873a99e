"""The MIMFlow trainer: phase 1 (joint), phase 2 (adversarial decoder fine-tuning), baselines, DDP.

Phase 1 (paper §3.2-3.3) trains encoder, flow, decoder and aux head together on

    L = L2(x, D(z_hat)) [+ lpips] + beta * NLL_flow(z_hat) + gamma * L_aux,   z_hat = E(x_masked) + sigma * eps

with the flow input *not* detached. Phase 2 trains only the decoder (with its
input projection) against a PatchGAN with the hinge loss, the encoder still
reading masked images and the flow frozen. ``--variant starflow`` is the
two-stage baseline (autoencoder without masking first, then the flow on its
frozen latents, softplus scales, no gated attention); ``--variant e2e-nomask``
is joint training without masking.

Every random draw of a step (mask ratio, mask, latent noise, label dropout)
comes from a generator seeded by (seed, phase, step) and drawn for the *global*
batch; each rank takes its rows. With DistributedSampler's striding
(rank r holds global rows r, r+W, ...), N processes therefore compute exactly
the step of one process with the same global batch, and a resumed run repeats
the draws of an uninterrupted one.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from tqdm import tqdm

from mimflow_core.atomic import atomic_write, write_json
from mimflow_core.checkpoint import check_weights, load_checkpoint, save_checkpoint
from mimflow_core.config import ModelConfig, get_preset
from mimflow_core.data import ImageDataset, load_dataset
from mimflow_core.discriminator import PatchDiscriminator
from mimflow_core.distributed import Process, distributed_process
from mimflow_core.ema import EMA
from mimflow_core.encoder import random_masking
from mimflow_core.errors import MIMFlowError
from mimflow_core.losses import build_aux_targets, build_perceptual, hinge_d_loss, hinge_g_loss, masked_l2
from mimflow_core.model import MIMFlow, count_parameters

VARIANTS = ("mimflow", "starflow", "e2e-nomask")
CPU_PRESETS = ("tiny", "digits", "small")  # no LPIPS weights offline: perceptual loss defaults to 0
PAPER_PERCEPTUAL_WEIGHT = 1.1
CHECKPOINT = "ckpt.pt"
# options a resumed run may change; every other option must match the run being resumed
CHANGEABLE_ON_RESUME = ("steps", "ckpt_every", "log_every", "num_workers", "device", "out", "evaluate")
# options phase 2 takes from its phase-1 checkpoint
INHERITED_BY_PHASE2 = ("preset", "data", "variant", "mask_ratio", "tokens", "sigma", "aux")


# ---------------------------------------------------------------------------- options
@dataclass(frozen=True)
class MaskPolicy:
    """How each training batch picks its mask ratio: ``none``, ``lo-hi`` (uniform) or ``mix`` (Table 5a)."""

    kind: str          # "none" | "range" | "mix"
    low: float = 0.4
    high: float = 0.6

    @classmethod
    def parse(cls, text: str) -> "MaskPolicy":
        if text == "none":
            return cls("none", 0.0, 0.0)
        kind, _, rng = text.partition(":") if text.startswith("mix") else ("range", "", text)
        if kind == "mix" and not rng:
            return cls("mix")  # 50/50 none vs 0.4-0.6, as in the paper's Table 5a
        try:
            low, high = (float(v) for v in rng.split("-")) if "-" in rng else (float(rng),) * 2
        except ValueError:
            raise MIMFlowError(f"--mask-ratio {text!r}: use none, mix, mix:LO-HI, LO-HI (e.g. 0.4-0.6) or R") from None
        if not 0.0 <= low <= high < 1.0:
            raise MIMFlowError(f"--mask-ratio {text!r}: need 0 <= LO <= HI < 1")
        return cls(kind, low, high)

    def __str__(self) -> str:
        if self.kind == "none":
            return "none"
        rng = f"{self.low:g}-{self.high:g}"
        return ("mix" if (self.low, self.high) == (0.4, 0.6) else f"mix:{rng}") if self.kind == "mix" else rng

    def sample(self, generator: torch.Generator) -> float:
        """One ratio for the whole batch."""
        u = torch.rand(2, generator=generator).tolist()
        if self.kind == "none" or (self.kind == "mix" and u[0] < 0.5):
            return 0.0
        return self.low + (self.high - self.low) * u[1]

    def typical(self) -> float:
        """The ratio an evaluation uses for "latents as the flow saw them in training"."""
        return 0.0 if self.kind == "none" else 0.5 * (self.low + self.high)


@dataclass(frozen=True)
class TrainOptions:
    out: str
    preset: str = "tiny"
    data: str = "digits"
    phase: int = 1
    variant: str = "mimflow"
    init: str | None = None            # phase 2: the phase-1 checkpoint
    steps: int = 2000
    ae_steps: int | None = None        # starflow: autoencoder steps before the flow stage (default steps // 2)
    batch_size: int = 64               # global batch (all processes together)
    lr: float = 1e-4
    warmup_steps: int = 0
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    mask_ratio: str | None = None      # default: "0.4-0.6" for mimflow, "none" for the baselines
    tokens: int | None = None          # K (default: the preset's)
    sigma: float | None = None         # latent noise (default: the preset's, 0.3)
    mim_weight: float = 1.0            # L2 weight of masked patches (Table 9)
    flow_weight: float = 1.0           # beta
    flow_warmup_steps: int = 0         # ramp beta linearly from 0 over this many steps (KL annealing; 0 = off)
    aux: str | None = None             # default: "hog" for mimflow/e2e-nomask, "none" for starflow
    aux_weight: float = 1.0            # gamma
    perceptual_weight: float | None = None  # default: 1.1, or 0 on CPU presets without --lpips-backbone
    lpips_backbone: str | None = None
    gan_weight: float = 0.05           # alpha (phase 2); 0 = no discriminator
    label_drop: float = 0.1
    flip: bool | None = None           # random horizontal flip (default: on, except for digits)
    strict: bool = False
    seed: int = 0
    ckpt_every: int = 500
    log_every: int = 10
    num_workers: int = 0
    device: str = "auto"
    sample_cfg: float = 1.0
    evaluate: bool = True              # held-out metrics and sample grid at the end (rank 0)

    def resolved(self) -> "TrainOptions":
        """Fill variant-dependent defaults and check the combination."""
        if self.variant not in VARIANTS:
            raise MIMFlowError(f"--variant {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        if self.phase not in (1, 2):
            raise MIMFlowError(f"--phase {self.phase}: must be 1 or 2")
        if self.phase == 2 and not self.init:
            raise MIMFlowError("--phase 2 needs --init PATH (a phase-1 checkpoint)")
        if self.steps < 1 or self.batch_size < 1:
            raise MIMFlowError("--steps and --batch-size must be positive")
        baseline = self.variant != "mimflow"
        mask = self.mask_ratio or ("none" if baseline else "0.4-0.6")
        if baseline and MaskPolicy.parse(mask).kind != "none":
            raise MIMFlowError(f"--variant {self.variant} trains without masking; drop --mask-ratio {mask}")
        aux = self.aux if self.aux is not None else ("none" if self.variant == "starflow" else "hog")
        perceptual = self.perceptual_weight
        if perceptual is None:
            perceptual = PAPER_PERCEPTUAL_WEIGHT if (self.lpips_backbone or self.preset not in CPU_PRESETS) else 0.0
        ae_steps = self.ae_steps
        if self.variant == "starflow" and self.phase == 1:
            ae_steps = self.steps // 2 if ae_steps is None else ae_steps
            if not 0 < ae_steps < self.steps:
                raise MIMFlowError(f"--ae-steps {ae_steps}: must lie strictly between 0 and --steps {self.steps}")
        return dataclasses.replace(self, mask_ratio=str(MaskPolicy.parse(mask)), aux=aux,
                                   perceptual_weight=perceptual, ae_steps=ae_steps,
                                   flip=self.flip if self.flip is not None else self.data != "digits")


def merge_options(given: TrainOptions, explicit: set[str], stored: dict, fields: tuple[str, ...] | None,
                  what: str) -> TrainOptions:
    """Take ``fields`` (None = all but CHANGEABLE_ON_RESUME) from ``stored``; explicit differing values are errors."""
    names = fields or tuple(f.name for f in dataclasses.fields(TrainOptions) if f.name not in CHANGEABLE_ON_RESUME)
    taken = {}
    for name in names:
        if name not in stored:
            continue
        if name in explicit and getattr(given, name) != stored[name]:
            raise MIMFlowError(f"--{name.replace('_', '-')} {getattr(given, name)}: differs from {what} "
                               f"({stored[name]}); leave it out")
        taken[name] = stored[name]
    return dataclasses.replace(given, **taken)


# ---------------------------------------------------------------------------- processes and data
class ResumableSampler(Sampler[int]):
    """DistributedSampler (shuffled per epoch, no padding) that can start mid-epoch."""

    def __init__(self, dataset: ImageDataset, procs: Process, seed: int):
        self.inner = DistributedSampler(dataset, procs.world, procs.rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        self.inner.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.start)


def step_generator(seed: int, phase: int, step: int) -> torch.Generator:
    """The CPU generator of one step: same draws for every rank, every world size, every resume."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, phase, step]).generate_state(1)[0]))


# ---------------------------------------------------------------------------- what DDP wraps
class LatentPass(nn.Module):
    """Masked encode -> z_hat = z + sigma * noise -> the heads a stage needs.

    DDP must wrap the module whose ``forward`` produces every trained output, so
    the trainer wraps this view of the model rather than calling submodules.
    """

    def __init__(self, model: MIMFlow, heads: tuple[str, ...], train_encoder: bool):
        super().__init__()
        self.model, self.heads, self.train_encoder = model, heads, train_encoder

    def forward(self, images: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, labels: torch.Tensor) -> dict:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_encoder):
            z = self.model.encoder(images, mask=mask).z
        z_hat = z + self.model.config.noise_sigma * noise.to(z.dtype)
        out = {}
        if "decoder" in self.heads:
            out["recon"] = self.model.decode(z_hat)
        if "flow" in self.heads:
            out["nll"] = self.model.nll(z_hat, labels)
        if "aux" in self.heads:
            out["aux"] = self.model.aux_head(z_hat)
        return out


@dataclass(frozen=True)
class Stage:
    """A stretch of training with one set of trained modules and losses."""

    name: str            # "joint" | "autoencoder" | "flow" | "decoder"
    start: int
    end: int
    trained: tuple[str, ...]   # model submodules with gradients
    heads: tuple[str, ...]     # outputs LatentPass computes


def plan_stages(opts: TrainOptions, has_aux: bool) -> list[Stage]:
    aux = ("aux_head",) if has_aux else ()
    aux_out = ("aux",) if has_aux else ()
    if opts.phase == 2:
        return [Stage("decoder", 0, opts.steps, ("decoder",), ("decoder",))]
    if opts.variant == "starflow":
        return [Stage("autoencoder", 0, opts.ae_steps, ("encoder", "decoder") + aux, ("decoder",) + aux_out),
                Stage("flow", opts.ae_steps, opts.steps, ("flow",), ("flow",))]
    return [Stage("joint", 0, opts.steps, ("encoder", "flow", "decoder") + aux, ("decoder", "flow") + aux_out)]


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
    def __init__(self, opts: TrainOptions, procs: Process, resume: bool = False,
                 explicit: set[str] | None = None):
        if explicit is None:  # called from Python: every option that differs from its default counts as given
            explicit = {f.name for f in dataclasses.fields(TrainOptions) if getattr(opts, f.name) != f.default}
        self.procs, self.out = procs, Path(opts.out)
        self.ckpt_path = self.out / CHECKPOINT
        resume_ckpt = self._resume_checkpoint(resume)
        init_ckpt = None
        if resume_ckpt is not None:
            opts = merge_options(opts, explicit, resume_ckpt["train"], None, f"the run in {self.out}")
        elif opts.phase == 2:
            if not opts.init:
                raise MIMFlowError("--phase 2 needs --init PATH (a phase-1 checkpoint)")
            init_ckpt = load_checkpoint(opts.init)
            opts = merge_options(opts, explicit, init_ckpt["train"], INHERITED_BY_PHASE2, f"the phase-1 run {opts.init}")
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
                                    seed=opts.seed)
        if len(self.dataset) < opts.batch_size:
            raise MIMFlowError(f"--batch-size {opts.batch_size}: larger than the {len(self.dataset)} training images")
        self.aux_targets = (build_aux_targets(opts.aux, base.patch_size, base.image_size // base.patch_size)
                            if opts.phase == 1 else None)
        aux_dim = self.aux_targets.dim if self.aux_targets is not None else 0
        config = base if stored is not None else self._new_config(aux_dim)
        if opts.phase == 1 and config.aux_dim != aux_dim:
            raise MIMFlowError(f"--aux {opts.aux}: target size {aux_dim} != the checkpoint's aux_dim {config.aux_dim}")
        if self.aux_targets is not None:
            self.aux_targets.to(self.device)
        self.perceptual = build_perceptual(opts.perceptual_weight, opts.lpips_backbone)
        if self.perceptual is not None:
            self.perceptual.to(self.device)

        torch.manual_seed(opts.seed)
        self.model = MIMFlow(config).to(self.device)
        if init_ckpt is not None:
            load_weights(self.model, init_ckpt["ema"] or init_ckpt["model"], opts.init, "initial")
        self.ema = EMA(self.model, opts.ema_decay)
        self.disc = PatchDiscriminator(config).to(self.device) if opts.phase == 2 and opts.gan_weight > 0 else None
        self.stages = plan_stages(opts, self.model.aux_head is not None)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        # every TrainOptions field (what --resume and phase 2 read back), plus what analyses label models by
        self.train_info = {**dataclasses.asdict(opts),
                           "num_tokens": config.num_tokens, "noise_sigma": config.noise_sigma,
                           "world_size": procs.world, "aux_names": self.aux_targets.names if self.aux_targets else [],
                           "phase1": init_ckpt["train"] if init_ckpt is not None else None}
        self.stage: Stage | None = None
        self._resume_state = resume_ckpt
        if resume_ckpt is not None:
            load_weights(self.model, resume_ckpt["model"], self.ckpt_path, "model")
            r = resume_ckpt["resume"]
            self.ema.load_state_dict(resume_ckpt["ema"], r["ema_updates"])
            self.step, self.epoch, self.batch_in_epoch = int(resume_ckpt["step"]), r["epoch"], r["batch_in_epoch"]
            torch.set_rng_state(r["rng_cpu"])
            if self.disc is not None:
                self.disc.load_state_dict(r["disc"])

    # -- setup ---------------------------------------------------------------------------------
    def _resume_checkpoint(self, resume: bool) -> dict | None:
        if not resume:
            if self.ckpt_path.exists():
                raise MIMFlowError(f"{self.ckpt_path}: exists; pass --resume to continue it or choose another --out")
            return None
        if not self.ckpt_path.exists():
            raise MIMFlowError(f"--resume: no checkpoint {self.ckpt_path} to continue")
        ckpt = load_checkpoint(self.ckpt_path)
        if "resume" not in ckpt or "mask_ratio" not in ckpt.get("train", {}):
            raise MIMFlowError(f"{self.ckpt_path}: has no resume state (not written by this trainer)")
        return ckpt

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
            self.optimizer.load_state_dict(r["optimizer"])
            if self.disc is not None:
                self.disc_optimizer.load_state_dict(r["disc_optimizer"])
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
        opts = self.opts
        images = images.to(self.device, non_blocking=True)
        ratio, mask, noise, y = self._draws(labels)
        logs: dict[str, float] = {"mask_ratio": ratio}
        with self.autocast:
            out = self.latent_pass(images, mask, noise, y)
            total = torch.zeros((), device=self.device)
            if "recon" in out:
                recon = out["recon"].float()
                rec = masked_l2(recon, images, mask, self.model.config.patch_size, opts.mim_weight)
                total = total + rec
                logs["rec_l2"] = rec.item()
                if self.perceptual is not None:
                    perc = self.perceptual(recon, images)
                    total = total + opts.perceptual_weight * perc
                    logs["lpips"] = perc.item()
            if "nll" in out:
                beta = self._flow_weight()
                total = total + beta * out["nll"]["loss"]
                logs["beta"] = beta
                logs["nll"] = out["nll"]["loss"].item()
                logs["bpd"] = out["nll"]["bpd"].mean().item()
            if "aux" in out:
                aux = self.aux_targets.loss(out["aux"], self.aux_targets(images), mask)
                total = total + opts.aux_weight * aux["aux"]
                logs.update({k: v.item() for k, v in aux.items()})
            if self.disc is not None:
                frozen = {k: p.detach() for k, p in self.disc.named_parameters()}
                g_loss = hinge_g_loss(functional_call(self.disc, frozen, (recon,)))
                total = total + opts.gan_weight * g_loss
                logs["gan_g"] = g_loss.item()
        self._set_lr()
        total.backward()
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, opts.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.disc is not None:
            logs.update(self._discriminator_step(images, recon.detach()))
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
        started = time.time()
        log = JsonlLog(self.out / "log.jsonl", self.step, enabled=procs.is_main)
        if procs.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            log.write(self._describe())
        bar = tqdm(total=opts.steps, initial=self.step, disable=not procs.is_main, desc=f"phase {opts.phase}",
                   dynamic_ncols=True)
        window: list[dict] = []
        tick = time.time()
        data = self.batches()
        while self.step < opts.steps:
            stage = next(s for s in self.stages if s.start <= self.step < s.end)
            if stage is not self.stage:
                self._enter_stage(stage)
            images, labels = next(data)
            logs = self.train_step(images, labels)
            self.step += 1
            self.batch_in_epoch += 1
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
        bar.close()
        result = {}
        if procs.is_main and opts.evaluate:
            result = self.evaluate(time.time() - started)
        procs.barrier()
        return result

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

    def save(self) -> None:
        """Checkpoint atomically (rank 0); resume state holds only tensors and plain types."""
        if not self.procs.is_main:
            return
        resume = {"optimizer": self.optimizer.state_dict(), "stage": self.stage.name,
                  "ema_updates": self.ema.num_updates, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                  "rng_cpu": torch.get_rng_state()}
        if self.disc is not None:
            resume.update(disc=self.disc.state_dict(), disc_optimizer=self.disc_optimizer.state_dict())
        save_checkpoint(self.ckpt_path, self.model, ema_state=self.ema.state_dict(), step=self.step,
                        phase=self.opts.phase, train=self.train_info, resume=resume)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, train_seconds: float) -> dict:
        """Held-out reconstruction MSE/PSNR and flow bits/dim with the EMA weights; sample grid PNG."""
        model = copy.deepcopy(self.model).eval()
        model.load_state_dict(self.ema.state_dict())
        test = load_dataset(self.opts.data, model.config.image_size, "test", strict=self.opts.strict)
        metrics = evaluate_model(model, test, self.policy, self.device, seed=self.opts.seed)
        grid = sample_grid(model, self.device, self.opts.sample_cfg, seed=self.opts.seed)
        save_image_grid(grid, self.out / "samples.png")
        recon = reconstruction_grid(model, test, self.device)
        save_image_grid(recon, self.out / "reconstructions.png")
        result = {"step": self.step, "phase": self.opts.phase, "variant": self.opts.variant, "weights": "ema",
                  "mask_ratio": self.opts.mask_ratio, "heldout_split": "test", "data": self.opts.data,
                  **metrics, "sample_grid": "samples.png", "sample_grid_rows": "one class per row",
                  "sample_cfg": self.opts.sample_cfg, "reconstruction_grid": "reconstructions.png",
                  "train_wall_s": train_seconds, "checkpoint": CHECKPOINT}
        write_json(self.out / "eval.json", result)
        return result


@torch.no_grad()
def evaluate_model(model: MIMFlow, dataset: ImageDataset, policy: MaskPolicy, device: torch.device,
                   seed: int = 0, batch_size: int = 100) -> dict:
    """Reconstruction of unmasked, noise-free latents; NLL of z_hat = E(x) + sigma*eps under the flow.

    ``bpd_heldout`` encodes with the training policy's typical mask ratio (the
    latents the flow was trained on); ``bpd_heldout_unmasked`` with none.
    MSE is on the [-1, 1] pixel scale; PSNR uses its peak-to-peak range 2
    (the same as [0, 1] images with peak 1), averaged per image.
    """
    g = torch.Generator().manual_seed(seed + 12345)
    c = model.config
    sq_err, psnr, bpd_masked, bpd_plain, nll_plain = [], [], [], [], []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        x = torch.stack([im for im, _ in items]).to(device)
        y = torch.tensor([lab for _, lab in items], device=device)
        enc = model.encode(x, 0.0)
        recon = model.decode(enc.z).float()
        mse = (recon - x).pow(2).flatten(1).mean(1)
        sq_err.append(mse)
        psnr.append(10 * torch.log10(4.0 / mse.clamp_min(1e-12)))
        noise = torch.randn(enc.z.shape, generator=g).to(device)
        out = model.nll(enc.z + c.noise_sigma * noise, y)
        bpd_plain.append(out["bpd"])
        nll_plain.append(out["nll"])
        mask = random_masking(len(x), c.num_patches, policy.typical(), torch.device("cpu"), g).to(device)
        z_masked = model.encoder(x, mask=mask).z
        bpd_masked.append(model.nll(z_masked + c.noise_sigma * noise, y)["bpd"])
    cat = lambda xs: torch.cat(xs).double()  # noqa: E731
    return {"heldout_images": len(dataset), "recon_mse": cat(sq_err).mean().item(),
            "recon_psnr_db": cat(psnr).mean().item(), "bpd_heldout": cat(bpd_masked).mean().item(),
            "bpd_heldout_mask_ratio": policy.typical(), "bpd_heldout_unmasked": cat(bpd_plain).mean().item(),
            "nll_nats_per_dim_heldout_unmasked": cat(nll_plain).mean().item()}


@torch.no_grad()
def sample_grid(model: MIMFlow, device: torch.device, cfg: float, seed: int = 0, per_class: int = 10) -> torch.Tensor:
    """(rows*per_class, C, H, W) samples, one row per class (the first 10 classes), fixed noise."""
    classes = min(10, model.config.num_classes)
    labels = torch.arange(classes).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed + 777)
    noise = torch.randn(len(labels), model.config.num_tokens, model.config.latent_dim, generator=g)
    return model.sample(labels.to(device), cfg=cfg, noise=noise.to(device)).float().cpu()


@torch.no_grad()
def reconstruction_grid(model: MIMFlow, dataset: ImageDataset, device: torch.device, count: int = 10) -> torch.Tensor:
    """Rows: held-out originals, reconstructions (unmasked), reconstructions from 50%-masked inputs."""
    x = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))]).to(device)
    plain = model.decode(model.encode(x, 0.0).z)
    mask = random_masking(len(x), model.config.num_patches, 0.5, torch.device("cpu"), torch.Generator().manual_seed(0))
    masked = model.decode(model.encoder(x, mask=mask.to(device)).z)
    return torch.cat([x, plain.float(), masked.float()]).cpu()


def save_image_grid(images: torch.Tensor, path: Path, per_row: int = 10) -> None:
    """Write images in [-1, 1] as one PNG grid (2 px gaps), atomically."""
    from PIL import Image
    from torchvision.utils import make_grid

    grid = make_grid(((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8), nrow=per_row, padding=2)
    image = Image.fromarray(grid.permute(1, 2, 0).numpy())
    scale = max(1, 256 // images.shape[-1])  # small images are upscaled (nearest) so a viewer shows them legibly
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    atomic_write(path, lambda f: image.save(f, format="PNG"))


class JsonlLog:
    """Append-only JSONL training log; on resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, resumed_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resumed_step]
            atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept)), mode="w")

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train(opts: TrainOptions, resume: bool = False, explicit: set[str] | None = None) -> dict:
    """Run one training job (under torchrun: one process of it); returns rank 0's evaluation."""
    with distributed_process(opts.device) as procs:
        return Trainer(opts, procs, resume, explicit).run()


__all__ = ["MaskPolicy", "TrainOptions", "Trainer", "train", "evaluate_model", "sample_grid"]
