"""Paper artefacts as declarative recipes, redrawn from result files alone.

Each ``analyses/<name>.toml`` names the result file an analysis writes
(relative to the results directory), the function that draws it, the figure
stem, and the command that produces the result. :func:`redraw_all` never
recomputes anything: a missing result is reported with its command.
"""
from __future__ import annotations

import importlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mimflow_core.errors import MIMFlowError

REQUIRED = ("title", "result", "figure", "plot", "command")


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    result: str     # path of the result file, relative to the results directory
    figure: str     # output stem, relative to the figures directory
    plot: str       # "module:function" taking (result path, output stem) and returning {kind: path}
    command: str    # how to produce the result

    def plot_function(self) -> Callable[[str | os.PathLike, str | os.PathLike], dict]:
        module, _, attr = self.plot.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise MIMFlowError(f"recipe {self.name}: cannot import plot function {self.plot!r} ({e})") from None


def load_recipes(directory: str | os.PathLike) -> list[Recipe]:
    """All ``*.toml`` recipes in ``directory``, sorted by name; malformed ones fail with the file named."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MIMFlowError(f"{directory}: no such recipes directory")
    recipes = []
    for path in sorted(directory.glob("*.toml")):
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise MIMFlowError(f"{path}: not valid TOML ({e})") from None
        missing = [k for k in REQUIRED if not isinstance(data.get(k), str)]
        if missing:
            raise MIMFlowError(f"{path}: recipe lacks {', '.join(missing)}")
        recipes.append(Recipe(path.stem, *(data[k] for k in REQUIRED)))
    if not recipes:
        raise MIMFlowError(f"{directory}: no *.toml recipes")
    return recipes


@dataclass
class Redrawn:
    recipe: Recipe
    files: dict[str, str] | None   # None when the result file is missing
    result_path: Path


def redraw_all(recipes: list[Recipe], results: str | os.PathLike, figures: str | os.PathLike) -> list[Redrawn]:
    """Draw every recipe whose result file exists; report the others with the command that makes them."""
    done = []
    for recipe in recipes:
        result = Path(results) / recipe.result
        if not result.is_file():
            done.append(Redrawn(recipe, None, result))
            continue
        files = recipe.plot_function()(result, Path(figures) / recipe.figure)
        done.append(Redrawn(recipe, {k: str(v) for k, v in files.items()}, result))
    return done
