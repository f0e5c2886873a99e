"""Shared figure helpers: one style, one palette, one way to save.

Every figure of the lab goes through :func:`save_figure`, so all of them are
PNG at >= 200 dpi plus a PDF with embedded TrueType fonts (``pdf.fonttype =
42``, which journals and editors can re-typeset), and the figure is closed
afterwards so long sweeps do not leak memory. Colours come from the
Okabe-Ito palette, which stays distinguishable under the common forms of
colour blindness.
"""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mimflow_core.atomic import atomic_open  # noqa: E402

# Okabe & Ito (2008), "Color Universal Design"; black last so it is used least.
OKABE_ITO: tuple[str, ...] = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#000000",  # black
)

# Line plots read better without the pale yellow; scatter plots with many
# classes need every colour.
LINE_COLORS: tuple[str, ...] = tuple(c for c in OKABE_ITO if c != "#F0E442")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")

PNG_DPI = 200

STYLE: dict[str, object] = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.dpi": PNG_DPI,
    "savefig.bbox": "tight",
    "figure.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.5,
    "lines.markersize": 5,
    "axes.prop_cycle": matplotlib.cycler(color=LINE_COLORS),
}


def setup_style() -> None:
    """Apply the lab's matplotlib style globally (idempotent)."""
    matplotlib.rcParams.update(STYLE)


def new_figure(ncols: int = 1, nrows: int = 1, *, width: float = 3.4, height: float = 2.6,
               **subplot_kw) -> tuple[Figure, object]:
    """A figure of ``nrows x ncols`` panels, each ``width x height`` inches, in the lab style."""
    setup_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=True, **subplot_kw)
    return fig, axes


def log_ticks(lo: float, hi: float, max_ticks: int = 5) -> list[float]:
    """Tick values on a log axis over [lo, hi], at most ``max_ticks`` of them, so labels never collide.

    The densest of 1-2-5, 1-3, decades and every k-th decade that puts 2 to ``max_ticks`` ticks inside (a
    fixed 1-2-5 set crowds a two-decade panel into "0.0020.005"); a range too narrow for two of those gets
    evenly spaced round numbers instead.
    """
    import math

    from matplotlib.ticker import MaxNLocator

    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for subs, every in (((1, 2, 5), 1), ((1, 3), 1), ((1,), 1), *(((1,), k) for k in range(2, last - first + 1))):
        ticks = [t for e in range(first, last + 1) if e % every == 0 for t in (m * 10.0**e for m in subs)
                 if lo <= t <= hi]
        if 2 <= len(ticks) <= max_ticks:
            return ticks
        if len(ticks) < 2:
            break
    return [float(t) for t in MaxNLocator(nbins=max_ticks - 1).tick_values(lo, hi) if lo <= t <= hi]


def label_log_axis(axis, lo: float, hi: float, max_ticks: int = 5) -> None:
    """Log-scale ``axis`` (``ax.xaxis``) with :func:`log_ticks` as plain numbers ("0.002", "10") and no minor labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(FixedLocator(log_ticks(lo, hi, max_ticks)))
    axis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axis.set_minor_locator(LogLocator(subs="auto"))
    axis.set_minor_formatter(NullFormatter())


def class_colors(n: int) -> list:
    """``n`` distinguishable colours for categorical scatter plots.

    Up to 8 classes use Okabe-Ito; beyond that no palette stays colour-blind
    safe, so we fall back to matplotlib's ``tab20`` (and ``hsv`` past 20),
    and callers should keep markers or panels to carry the distinction.
    """
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    cmap = plt.get_cmap("tab20" if n <= 20 else "hsv", n)
    return [cmap(i) for i in range(n)]


def save_figure(fig: Figure, stem: str | os.PathLike) -> dict[str, str]:
    """Write ``stem.png`` (>= 200 dpi) and ``stem.pdf`` (TrueType fonts) atomically; close ``fig``.

    Returns the two paths, so callers can record them in their result JSON.
    """
    stem = str(stem)
    paths = {"png": stem + ".png", "pdf": stem + ".pdf"}
    try:
        with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
            for fmt, path in paths.items():
                with atomic_open(path, "wb") as f:
                    fig.savefig(f, format=fmt, dpi=PNG_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return paths
