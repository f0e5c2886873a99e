"""The ``mimflow-lab`` command line.

Subcommands live in ``mimflow_lab/commands/`` and import torch only when
they run, so ``mimflow-lab --help`` answers without importing it. Errors a
user can cause (:class:`~mimflow_core.errors.MIMFlowError`, a bad option)
print one line and exit with code 2, and every warning is one line when it
happens. The options the commands share are spelled once, in
:mod:`mimflow_lab.options`.
"""
from __future__ import annotations

import importlib
import sys

import click

# name -> "module:attribute" of a click command
COMMANDS: dict[str, str] = {
    "train": "mimflow_lab.commands.train:train",
    "info": "mimflow_lab.commands.info:info",
    "jacobian": "mimflow_lab.commands.jacobian:jacobian",
    "figures": "mimflow_lab.commands.figures:figures",
    "demo": "mimflow_lab.commands.demo:demo",
    "evaluate": "mimflow_lab.commands.evaluate:evaluate",
    "fid": "mimflow_lab.commands.fid:fid",
    "ref-stats": "mimflow_lab.commands.ref_stats:ref_stats",
    "features": "mimflow_lab.commands.features:features",
    "probe": "mimflow_lab.commands.probe:probe",
    "umap": "mimflow_lab.commands.umap:umap",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mimflow-lab")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", prog_name="mimflow-lab", message="%(prog)s %(version)s")
def cli() -> None:
    """Train, analyse and evaluate MIMFlow models."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit code 2."""
    from mimflow_core.errors import MIMFlowError, one_line
    from mimflow_lab.options import warnings_as_lines

    try:
        with warnings_as_lines():
            cli.main(args=argv, prog_name="mimflow-lab", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("mimflow-lab: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # one line, like every other input error; `--help` shows the usage
        where = f"mimflow-lab {e.ctx.info_name}" if e.ctx is not None and e.ctx.parent is not None else "mimflow-lab"
        click.echo(f"{where}: error: {e.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except MIMFlowError as e:
        click.echo(f"mimflow-lab: error: {one_line(e)}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
