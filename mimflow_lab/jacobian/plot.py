"""Figure 5 from ``jacobian.json`` alone: distributions of σmax, σmin and log10 κ per model."""
from __future__ import annotations

import os

import numpy as np

PANELS = (
    ("sigma_max", r"$\sigma_{\max}(J)$ (dimensionless, $\|Jv\|/\|v\|$)", True),
    ("sigma_min", r"$\sigma_{\min}(J)$ (dimensionless, $\|Jv\|/\|v\|$)", True),
    ("log10_kappa", r"$\log_{10}\kappa(J)$, $\kappa = \sigma_{\max}/\sigma_{\min}$", False),
)


def plot_jacobian(result: str | os.PathLike | dict, out_stem: str | os.PathLike, bins: int = 30) -> dict[str, str]:
    """Three panels, every model overlaid, log-spaced bins; only samples flagged ``ok`` are drawn.

    The legend gives each model's label and how many samples were drawn out
    of how many were analysed, so flagged samples are visible, not hidden.
    """
    from mimflow_lab.plots import LINE_COLORS, label_log_axis, new_figure, save_figure
    from mimflow_lab.tables import read_result

    result = read_result(result)
    models = result["models"]
    fig, axes = new_figure(3, 1, width=3.2, height=2.6)
    for key, xlabel, log_axis in PANELS:
        ax = axes[[p[0] for p in PANELS].index(key)]
        values = [np.array([s[key] for s in m["samples"] if s["ok"]], dtype=np.float64) for m in models]
        pooled = np.concatenate([v for v in values if v.size]) if any(v.size for v in values) else np.array([])
        if pooled.size == 0:
            ax.text(0.5, 0.5, "no certified samples", ha="center", va="center", transform=ax.transAxes)
        else:
            lo, hi = pooled.min(), pooled.max()
            if log_axis:
                lo, hi = np.log10(lo), np.log10(hi)
            pad = max(0.05 * (hi - lo), 0.02)
            edges = np.linspace(lo - pad, hi + pad, bins + 1)  # uniform in log10 = log-spaced in the value
            if log_axis:
                edges = 10.0**edges
                ax.set_xscale("log")
                label_log_axis(ax.xaxis, edges[0], edges[-1])
            for m, v, color in zip(models, values, LINE_COLORS):
                label = f"{m['label']} ({v.size}/{len(m['samples'])})"
                ax.hist(v, bins=edges, color=color, alpha=0.35, label=label)
                ax.hist(v, bins=edges, color=color, histtype="step", linewidth=1.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples (count)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=len(models), frameon=False)
    return save_figure(fig, out_stem)
