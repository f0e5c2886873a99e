"""Paper artefacts as declarative recipes, redrawn from result files alone.

Each ``analyses/<name>.toml`` names the result file an analysis writes
(relative to the results directory), the renderer that draws it, the figure
stem (relative to the figures directory), and the command that produces the
result. :func:`redraw_all` never recomputes anything: a missing result is
reported with its command.

A recipe directory may come from anyone, so a recipe is data, never code:
``plot`` names one of the project's own renderers in :data:`RENDERERS` (not
an importable path), and ``result``/``figure`` must stay inside the results
and figures directories. Both are checked before anything is read or written.
"""
from __future__ import annotations

import importlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mimflow_core.errors import MIMFlowError, one_line

REQUIRED = ("title", "result", "figure", "plot", "command")

# name -> (module, function) of each renderer, called with (result path, output stem) and returning
# {kind: path}. Only these can be named by a recipe; each is imported when drawn, so loading stays cheap.
RENDERERS: dict[str, tuple[str, str]] = {
    "umap": ("mimflow_lab.umap.plot", "plot_umap"),
    "jacobian": ("mimflow_lab.jacobian.plot", "plot_jacobian"),
    "jacobian_spectrum": ("mimflow_lab.jacobian.plot", "plot_spectrum"),
    "probe": ("mimflow_lab.probe.plot", "plot_probe"),
    "tab5a": ("mimflow_lab.tables", "render_tab5a"),
    "tab10": ("mimflow_lab.tables", "render_tab10"),
}
# Recipes written before the registry spelled these five as "module:function", with the modules of that time
# (spelled out, so that moving a renderer does not turn old recipes away); still accepted for them only.
LEGACY_NAMES = {
    "mimflow_lab.umap_analysis:plot_umap": "umap",
    "mimflow_lab.jacobian:plot_jacobian": "jacobian",
    "mimflow_lab.probe:plot_probe": "probe",
    "mimflow_lab.tables:render_tab5a": "tab5a",
    "mimflow_lab.tables:render_tab10": "tab10",
}


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    result: str     # path of the result file, relative to the results directory
    figure: str     # output stem, relative to the figures directory
    plot: str       # a key of RENDERERS
    command: str    # how to produce the result
    source: Path    # the recipe file, named in error messages

    def plot_function(self) -> Callable[[str | os.PathLike, str | os.PathLike], dict]:
        """The registered renderer, imported now."""
        module, attr = RENDERERS[self.plot]
        return getattr(importlib.import_module(module), attr)


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
        fields = {k: data[k] for k in REQUIRED}
        fields["plot"] = LEGACY_NAMES.get(fields["plot"], fields["plot"])
        if fields["plot"] not in RENDERERS:
            raise MIMFlowError(f"{path}: plot {data['plot']!r} is not a registered renderer "
                               f"(valid: {', '.join(sorted(RENDERERS))})")
        recipes.append(Recipe(path.stem, **fields, source=path))
    if not recipes:
        raise MIMFlowError(f"{directory}: no *.toml recipes")
    return recipes


def _inside(recipe: Recipe, field: str, directory: str | os.PathLike, label: str) -> Path:
    """``directory/<field>``, refused unless it is relative and, with symlinks and ``..`` resolved, inside.

    Returns ``directory`` joined with the resolved remainder, so output keeps the caller's spelling of it.
    """
    value = getattr(recipe, field)
    base = Path(directory).resolve()
    try:
        target = (base / value).resolve()
    except (OSError, RuntimeError):   # a symlink loop
        target = base
    if Path(value).is_absolute() or target == base or not target.is_relative_to(base):
        raise MIMFlowError(f"{recipe.source}: {field} {value!r} must be a relative path inside the "
                           f"{label} directory {directory}")
    return Path(directory) / target.relative_to(base)


@dataclass
class Redrawn:
    recipe: Recipe
    files: dict[str, str] | None   # None when the result file is missing or damaged
    result_path: Path
    problem: str | None = None     # what is wrong with a result file that exists but cannot be drawn


# what a renderer raises on a result file of the wrong shape (a key missing, a string where numbers belong)
DAMAGE = (MIMFlowError, KeyError, TypeError, ValueError, IndexError)


def redraw_all(recipes: list[Recipe], results: str | os.PathLike, figures: str | os.PathLike) -> list[Redrawn]:
    """Draw every recipe whose result file exists; report the others with the command that makes them, and a
    result file that cannot be drawn (torn, edited, of another kind) with what is wrong with it.

    Every recipe's paths are checked first, so one that escapes stops the run before anything is drawn.
    """
    paths = [(_inside(r, "result", results, "results"), _inside(r, "figure", figures, "figures")) for r in recipes]
    done = []
    for recipe, (result, stem) in zip(recipes, paths):
        if not result.is_file():
            done.append(Redrawn(recipe, None, result))
            continue
        try:
            files = recipe.plot_function()(result, stem)
        except DAMAGE as e:
            reason = str(e) if isinstance(e, MIMFlowError) else \
                f"{result}: not a {recipe.plot} result ({type(e).__name__}: {e})"
            done.append(Redrawn(recipe, None, result, one_line(reason)[:300]))
            continue
        done.append(Redrawn(recipe, {k: str(v) for k, v in files.items()}, result))
    return done
