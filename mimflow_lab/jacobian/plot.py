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


def _band(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median and 10th/90th percentiles over the rows (latents)."""
    return np.median(rows, 0), np.percentile(rows, 10, 0), np.percentile(rows, 90, 0)


def plot_spectrum(result: str | os.PathLike | dict, out_stem: str | os.PathLike) -> dict[str, str]:
    """Figure 5b from ``jacobian.json`` alone: the log σ density of every model (median and 10–90 % band over
    latents, from each latent's histogram on the fixed bins) and per-block log10 κ (median, 10–90 % bars).

    Only latents whose whole-flow estimate and density passed their certificates are drawn; the legend
    says how many of how many.
    """
    from mimflow_core.errors import MIMFlowError
    from mimflow_lab.plots import LINE_COLORS, new_figure, save_figure
    from mimflow_lab.tables import read_result

    where = "jacobian.json" if isinstance(result, dict) else str(result)
    result = read_result(result)
    if "spectrum_bin_edges_log10_sigma" not in result:
        raise MIMFlowError(f"{where} has no spectrum: run mimflow-lab jacobian with --spectrum --per-block")
    edges = np.asarray(result["spectrum_bin_edges_log10_sigma"])
    centers, width = 0.5 * (edges[1:] + edges[:-1]), np.diff(edges)
    fig, (ax_d, ax_b) = new_figure(2, 1, width=3.6, height=2.7)
    used = np.zeros(centers.size, dtype=bool)
    for m, color in zip(result["models"], LINE_COLORS):
        ok = [s for s in m["samples"] if s["ok"] and s.get("spectrum", {}).get("ok")]
        label = f"{m['label']} ({len(ok)}/{len(m['samples'])})"
        if ok:
            med, lo, hi = _band(np.array([s["spectrum"]["histogram"] for s in ok]) / width)
            used |= hi > 0
            ax_d.fill_between(centers, lo, hi, color=color, alpha=0.25, linewidth=0)
            ax_d.plot(centers, med, color=color, linewidth=1.2, label=label)
        blocks = [s["per_block"] for s in m["samples"] if s["ok"] and s.get("per_block", {}).get("ok")]
        if blocks:
            med, lo, hi = _band(np.array([[b["log10_kappa"] for b in p["blocks"]] for p in blocks]))
            x = np.arange(1, med.size + 1) + 0.15 * (result["models"].index(m) - 0.5)
            ax_b.set_xticks(np.arange(1, med.size + 1))
            ax_b.errorbar(x, med, yerr=[med - lo, hi - med], fmt="o", color=color, capsize=2, markersize=3,
                          label=f"{m['label']} ({len(blocks)}/{len(m['samples'])})")
    if used.any():
        first, last = np.flatnonzero(used)[[0, -1]]
        ax_d.set_xlim(edges[max(first - 1, 0)], edges[min(last + 2, edges.size - 1)])
    ax_d.set_xlabel(r"$\log_{10}\sigma_i(J)$")
    ax_d.set_ylabel("density (fraction of $\\sigma_i$ per decade)")
    ax_b.set_xlabel("flow block (input side first)")
    ax_b.set_ylabel(r"$\log_{10}\kappa(J_b)$")
    for ax, empty in ((ax_d, not used.any()), (ax_b, not ax_b.get_legend_handles_labels()[0])):
        if empty:
            ax.text(0.5, 0.5, "no certified samples", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.legend(frameon=False, fontsize="small")
    return save_figure(fig, out_stem)
