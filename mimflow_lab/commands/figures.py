"""``mimflow-lab figures``: redraw every paper figure/table from its result file, without recomputing."""
from __future__ import annotations

import sys

import click

from mimflow_lab import options
from mimflow_lab.options import command


@command()
@click.option("--recipes", default="analyses", show_default=True, type=click.Path(file_okay=False),
              help="Directory of *.toml recipes (one per paper artefact).")
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Directory the analyses wrote their result files to.")
@options.out_dir("results/figures", "the rendered figures and tables (a checkout's own figures/ is only "
                 "overwritten when named)")
def figures(recipes: str, results: str, out: str) -> None:
    """Redraw Figures 4-6 and Tables 5a/10; name each missing result and the command that makes it.

    Exits with code 1 when any result is missing or damaged (after drawing the others).
    """
    from mimflow_lab.recipes import load_recipes, redraw_all

    missing = 0
    for item in redraw_all(load_recipes(recipes), results, out):
        if item.problem is not None:
            missing += 1
            click.echo(f"damaged  {item.recipe.name}: {item.problem} -- remake it with: {item.recipe.command}")
        elif item.files is None:
            missing += 1
            click.echo(f"missing  {item.recipe.name}: {item.result_path} -- make it with: {item.recipe.command}")
        else:
            click.echo(f"drew     {item.recipe.name}: " + ", ".join(sorted(item.files.values())))
    if missing:
        sys.exit(1)
