"""Every option of a training run, the defaults that depend on others, and what a resumed run or phase 2 inherits.

No torch here: ``mimflow-lab train`` reads its option defaults from :class:`TrainOptions`
(one declaration) and answers ``--help`` without importing torch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mimflow_core.config import get_recipe
from mimflow_core.errors import MIMFlowError
from mimflow_core.train.masking import MaskPolicy
from mimflow_core.validate import is_kind

VARIANTS = ("mimflow", "starflow", "e2e-nomask")
CPU_PRESETS = ("tiny", "digits", "small")  # no LPIPS weights offline: perceptual loss defaults to 0
PAPER_PERCEPTUAL_WEIGHT = 1.1
# options a resumed run may change; every other option must match the run being resumed
CHANGEABLE_ON_RESUME = ("steps", "ckpt_every", "log_every", "num_workers", "device", "out", "evaluate")
# options phase 2 takes from its phase-1 checkpoint
INHERITED_BY_PHASE2 = ("preset", "data", "variant", "mask_ratio", "tokens", "sigma", "aux")
# options whose default is the preset's training recipe (mimflow_core.config.TRAIN_RECIPES)
FROM_RECIPE = ("lr", "warmup_steps", "flow_weight", "batch_size")
# the values each numeric option can take (its type comes from the field's annotation): (test, what the message says)
RANGES = {
    "phase": (lambda v: v in (1, 2), "equal to 1 or 2"),
    **dict.fromkeys(("steps", "ae_steps", "batch_size", "tokens", "ckpt_every", "log_every"),
                    (lambda v: v >= 1, ">= 1")),
    **dict.fromkeys(("warmup_steps", "flow_warmup_steps", "num_workers", "weight_decay", "sigma", "mim_weight",
                     "flow_weight", "aux_weight", "perceptual_weight", "gan_weight", "sample_cfg"),
                    (lambda v: v >= 0, ">= 0")),
    **dict.fromkeys(("lr", "grad_clip"), (lambda v: v > 0, "> 0")),
    "ema_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "label_drop": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "seed": (lambda v: 0 <= v < 2 ** 63, "in [0, 2**63)"),  # numpy's SeedSequence refuses negative seeds
}
NOUNS = {"int": "an integer", "float": "a finite number", "str": "a string", "bool": "true or false"}


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
    batch_size: int | None = None      # global batch (all processes together); default: the preset's recipe
    lr: float | None = None            # default: the preset's recipe
    warmup_steps: int | None = None    # default: the preset's recipe
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    mask_ratio: str | None = None      # default: "0.4-0.6" for mimflow, "none" for the baselines
    tokens: int | None = None          # K (default: the preset's)
    sigma: float | None = None         # latent noise (default: the preset's, 0.3)
    mim_weight: float = 1.0            # L2 weight of masked patches (Table 9)
    flow_weight: float | None = None   # beta (default: the preset's recipe)
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

    def __post_init__(self) -> None:
        """Refuse a value no run can use (``--lr nan``, a zero batch, ...) when the options are made, so a
        bad command fails before it creates a directory or loads data."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = value_problem(f, value)
            if problem:
                raise MIMFlowError(f"{flag(f.name)} {value!r}: must be {problem}"[:300])

    def resolved(self) -> "TrainOptions":
        """Fill preset- and variant-dependent defaults and check the combination."""
        if self.variant not in VARIANTS:
            raise MIMFlowError(f"--variant {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        if self.phase == 2 and not self.init:
            raise MIMFlowError("--phase 2 needs --init PATH (a phase-1 checkpoint)")
        recipe = get_recipe(self.preset, self.phase)
        opts = dataclasses.replace(self, **{name: getattr(recipe, name) for name in FROM_RECIPE
                                            if getattr(self, name) is None})
        baseline = opts.variant != "mimflow"
        mask = opts.mask_ratio or ("none" if baseline else "0.4-0.6")
        if baseline and MaskPolicy.parse(mask).kind != "none":
            raise MIMFlowError(f"--variant {opts.variant} trains without masking; drop --mask-ratio {mask}")
        aux = opts.aux if opts.aux is not None else ("none" if opts.variant == "starflow" else "hog")
        perceptual = opts.perceptual_weight
        if perceptual is None:
            perceptual = PAPER_PERCEPTUAL_WEIGHT if (opts.lpips_backbone or opts.preset not in CPU_PRESETS) else 0.0
        ae_steps = opts.ae_steps
        if opts.variant == "starflow" and opts.phase == 1:
            ae_steps = opts.steps // 2 if ae_steps is None else ae_steps
            if not 0 < ae_steps < opts.steps:
                raise MIMFlowError(f"--ae-steps {ae_steps}: must lie strictly between 0 and --steps {opts.steps}")
        return dataclasses.replace(opts, mask_ratio=str(MaskPolicy.parse(mask)), aux=aux,
                                   perceptual_weight=perceptual, ae_steps=ae_steps,
                                   flip=opts.flip if opts.flip is not None else opts.data != "digits")


def merge_options(given: TrainOptions, explicit: set[str], stored: dict, fields: tuple[str, ...] | None,
                  what: str) -> TrainOptions:
    """Take ``fields`` (None = all but CHANGEABLE_ON_RESUME) from ``stored``; explicit differing values are errors."""
    names = fields or tuple(f.name for f in dataclasses.fields(TrainOptions) if f.name not in CHANGEABLE_ON_RESUME)
    taken = {}
    for name in names:
        if name not in stored:
            continue
        if name in explicit and getattr(given, name) != stored[name]:
            raise MIMFlowError(f"{flag(name)} {getattr(given, name)}: differs from {what} "
                               f"({stored[name]}); leave it out")
        taken[name] = stored[name]
    return dataclasses.replace(given, **taken)


def explicit_options(opts: TrainOptions) -> set[str]:
    """The options a caller from Python gave: every one that differs from its default."""
    return {f.name for f in dataclasses.fields(TrainOptions) if getattr(opts, f.name) != f.default}


def flag(name: str) -> str:
    """The command-line spelling of a TrainOptions field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def value_problem(f: dataclasses.Field, value: object) -> str | None:
    """What a value of option ``f`` must be, when ``value`` is not that (None when it is fine)."""
    kind, optional = f.type.removesuffix(" | None"), f.type.endswith(" | None")
    if value is None and optional:
        return None
    test, values = RANGES.get(f.name, (None, ""))
    if is_kind(value, kind) and (test is None or test(value)):
        return None
    return f"{NOUNS[kind]} {values}".rstrip()


def check_stored(stored: object, path: str | Path) -> dict:
    """A checkpoint's ``train`` record, whose fields a resumed run or phase 2 takes as options: refused with one
    line naming the file where a field holds what the option could not (the file is data anyone can edit)."""
    if not isinstance(stored, dict):
        raise MIMFlowError(f"{path}: its train record is a {type(stored).__name__}, not a dict")
    for f in dataclasses.fields(TrainOptions):
        if f.name in stored and (problem := value_problem(f, stored[f.name])):
            raise MIMFlowError(f"{path}: train.{f.name} is {stored[f.name]!r}, not {problem}"[:300])
    return stored
