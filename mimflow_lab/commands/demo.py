"""``mimflow-lab demo``: train the tiny models on the bundled digits and run every analysis."""
from __future__ import annotations

import click

from mimflow_lab import options
from mimflow_lab.options import command


@command()
@options.out_dir("demo", "runs/, results/, figures/, logs/ and report.md")
@click.option("--minutes", default=20.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Time budget; training steps and sample counts are sized to it from costs measured at start "
                   "(<= 3: the smoke test).")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(min=1),
              help="Worker processes at once; the CPU cores are split between them.")
@click.option("--full", is_flag=True,
              help="Also train the rest of Table 5a's mask-ratio sweep (0.2-0.4, 0.6-0.8, mix): give it ~2x the minutes.")
def demo(out: str, minutes: float, jobs: int, full: bool) -> None:
    """Figures 4-6 and Table 5a end to end on scikit-learn's digits; a rerun resumes where the last stopped."""
    from mimflow_lab.demo import run_demo

    click.echo(run_demo(out, minutes, jobs=jobs, full=full))
