"""Figure 4 from the result files alone: one UMAP panel per space, colour = class."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mimflow_core.errors import MIMFlowError


def plot_umap(umap_json_or_npz: str | os.PathLike, out_stem: str | os.PathLike) -> dict[str, str]:
    """Figure 4 from ``umap.json`` (with its npz) or from ``umap.npz`` alone: one panel per space, colour = class."""
    from mimflow_lab.plots import class_colors, new_figure, save_figure
    from mimflow_lab.tables import read_result

    path = Path(umap_json_or_npz)
    if path.suffix == ".json":
        path = path.parent / read_result(path)["embedding_file"]
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise MIMFlowError(f"{path}: cannot read UMAP embedding ({e})") from None
    titles, class_names = list(arrays["titles"]), list(arrays["class_names"])
    colours = class_colors(len(class_names))
    fig, axes = new_figure(len(titles), width=3.2, height=3.2)
    axes = np.atleast_1d(axes)
    for i, (ax, title) in enumerate(zip(axes, titles)):
        emb, labels = arrays[f"embedding_{i}"], arrays[f"labels_{i}"]
        for c in np.unique(labels):
            pts = emb[labels == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=3, color=colours[c % len(colours)], alpha=0.8, linewidths=0,
                       label=class_names[c], rasterized=True)
        ax.set_title(f"({chr(97 + i)}) {title}\nkNN acc. {arrays['knn_accuracy'][i]:.1f}%, "
                     f"trustworthiness {arrays['trustworthiness'][i]:.3f}", fontsize=8)
        ax.set_xlabel("UMAP 1 (a.u.)")
        ax.set_ylabel("UMAP 2 (a.u.)")
        ax.grid(False)
        ax.set_aspect("equal", adjustable="datalim")
    if len(class_names) <= 20:
        axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=3,
                        title="class", fontsize=7)
    return save_figure(fig, out_stem)
