"""Figure 6 from ``probe.json`` alone: linear-probe accuracy vs depth."""
from __future__ import annotations

import os
from pathlib import Path


def plot_probe(probe_json: str | os.PathLike | dict, out_stem: str | os.PathLike) -> dict[str, str]:
    """Figure 6 from ``probe.json`` alone: top-1 accuracy (mean ± std over seeds) vs depth.

    One line per (checkpoint, inference mask ratio); colour = checkpoint when
    there are several, else mask ratio; a dashed line marks the raw-pixel probe.
    """
    from mimflow_lab.plots import LINE_COLORS, MARKERS, new_figure, save_figure
    from mimflow_lab.tables import read_result

    result = read_result(probe_json)
    names = result["depths"]
    lines: dict[tuple[str, float], dict[str, dict]] = {}
    for row in result["results"]:
        lines.setdefault((row["checkpoint_path"], row["mask_ratio"]), {})[row["depth"]] = row
    paths = list(dict.fromkeys(p for p, _ in lines))
    ratios = list(dict.fromkeys(r for _, r in lines))
    labels = {c["path"]: c["label"] for c in result["checkpoints"]}
    fig, ax = new_figure(width=max(3.6, 0.45 * len(names) + 1.5), height=2.8)
    for (path, r), rows in lines.items():
        x = [i for i, n in enumerate(names) if n in rows]
        mean = [rows[names[i]]["accuracy_mean"] for i in x]
        std = [rows[names[i]]["accuracy_std"] or 0.0 for i in x]
        ci, ri = paths.index(path), ratios.index(r)
        colour = LINE_COLORS[(ci if len(paths) > 1 else ri) % len(LINE_COLORS)]
        label = (f"{labels.get(path, Path(path).stem)}, " if len(paths) > 1 else "") + f"inference mask {r:g}"
        ax.errorbar(x, mean, yerr=std, color=colour, marker=MARKERS[ri % len(MARKERS)], capsize=2,
                    linestyle=("-", "--", ":", "-.")[ri % 4] if len(paths) > 1 else "-", label=label)
    if result.get("pixel_baseline"):
        ax.axhline(result["pixel_baseline"]["accuracy_mean"], color="0.5", linestyle="--", linewidth=1,
                   label="raw pixels")
    # ticks are the --depths names themselves, so a reader can ask for exactly the point they see
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0)
    ax.set_xlabel("depth: encoder → latent (z) → output of flow block N (B.L: layer L of block B)")
    ax.set_ylabel("linear-probe top-1 accuracy (%)")
    ax.set_title(f"Linear probe vs depth ({result['data']}, {result['pool']}-pooled)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return save_figure(fig, out_stem)

