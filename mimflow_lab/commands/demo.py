"""``mimflow-lab demo``: train the tiny models on the bundled digits and run every analysis."""
from __future__ import annotations

import click


@click.command()
@click.option("--out", default="demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for runs/, results/, figures/ and report.md.")
@click.option("--minutes", default=20.0, show_default=True, type=float,
              help="Time budget on 2 CPU cores; sets training steps and sample counts (2 = smoke test).")
def demo(out: str, minutes: float) -> None:
    """Figures 4-6 and Table 5a end to end on scikit-learn's digits; a rerun resumes where the last stopped."""
    from mimflow_lab.demo import run_demo

    click.echo(run_demo(out, minutes))
