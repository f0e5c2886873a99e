"""``mimflow-lab evaluate``: a drop-in for ADM's ``evaluations/evaluator.py``."""
from __future__ import annotations

import warnings
from pathlib import Path

import click

from mimflow_lab import options
from mimflow_lab.options import command


@command()
@click.argument("reference", type=click.Path(dir_okay=False))
@click.argument("samples", type=click.Path(dir_okay=False))
@options.inception()
@options.batch_size(64, "Images per Inception forward pass.")
@options.device()
@options.bootstrap()
@options.bootstrap_reference()
@options.kid_subset_size()
@options.encoder()
@options.ref_val()
@options.out_dir_or_old_file("results/evaluate", "metrics.json", "the printed metrics with provenance")
def evaluate(reference: str, samples: str, inception_path: str | None, batch_size: int, device: str,
             bootstrap: int | None, bootstrap_reference: bool, kid_subset_size: int | None,
             encoders: tuple[str, ...], ref_val: str | None, out: Path) -> None:
    """IS, FID, sFID, precision and recall of SAMPLES against REFERENCE (ADM npz batches, arr_0 uint8 NHWC).

    Both files are streamed, never loaded whole. Prints the lines ADM's
    evaluator.py prints and writes them, with provenance, to --out/metrics.json;
    --bootstrap, --ref-val and --encoder add lines after those five.
    """
    from mimflow_core.atomic import write_json
    from mimflow_core.distributed import resolve_device
    from mimflow_lab.metrics import evaluate_npz, load_inception, report_lines
    from mimflow_lab.metrics.npz import open_images, size_mismatch
    from mimflow_lab.metrics.bootstrap import Bootstrap
    from mimflow_lab.metrics.encoders import load_encoders, parse_encoder_specs
    from mimflow_lab.metrics.kid import check_subset_size
    from mimflow_lab.metrics.suite import extra_lines

    options.check_bootstrap(bootstrap, bootstrap_reference)
    specs = parse_encoder_specs(encoders)
    replicates = None if bootstrap is None else Bootstrap(bootstrap, bootstrap_reference)

    sizes, counts = [], {}
    for path in (reference, samples, *([ref_val] if ref_val else [])):  # a bad file fails before minutes of work
        with open_images(path) as reader:
            sizes.append(reader.shape[1:3])
            counts[path] = reader.shape[0]
    check_subset_size(kid_subset_size, {path: counts[path] for path in (reference, samples)})
    device = resolve_device(device)
    loaded = load_encoders(specs, device, sizes[1])
    inception, weights = load_inception(inception_path, device=device)
    click.echo(f"Inception weights: {weights.describe()}", err=True)
    if warning := size_mismatch(reference, sizes[0], samples, sizes[1]):
        warnings.warn(warning, stacklevel=1)
    metrics = evaluate_npz(reference, samples, inception, weights, batch_size, device, replicates, loaded, ref_val,
                           kid_subset_size)
    click.echo("Computing evaluations...")
    for line in report_lines(metrics) + extra_lines(metrics):
        click.echo(line)
    write_json(out, metrics)
    click.echo(f"wrote {out}", err=True)
