"""Paper tables redrawn from result files: Table 5a (masking) and Table 10 (token count).

Each renderer reads one JSON result and writes a Markdown table and a CSV
next to each other, the paper's numbers beside ours where the paper has them.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from mimflow_core.atomic import atomic_write
from mimflow_core.errors import MIMFlowError

# Table 5a of the paper (ImageNet-256, 10k samples): mask ratio -> (rFID, gFID, IS, Prec., Rec., Acc. %)
PAPER_TAB5A = {
    "none": (23.5, 29.0, 65.5, 0.59, 0.56, 56.6),
    "0.2-0.4": (8.66, 24.47, 60.1, 0.59, 0.57, 54.2),
    "0.4-0.6": (3.40, 12.82, 88.6, 0.70, 0.66, 71.3),
    "0.6-0.8": (5.26, 15.92, 79.8, 0.65, 0.65, 65.9),
    "mix": (6.58, 26.98, 51.9, 0.58, 0.55, 45.7),
}
TAB5A_COLUMNS = ("rfid", "gfid", "inception_score", "precision", "recall", "probe_accuracy")
# Table 10 (H20, batch 32): K -> (train ms/iter, inference s/sample)
PAPER_TAB10 = {128: (183.0, 1.60), 256: (352.0, 3.64), 1024: (1515.0, 25.3)}


def read_result(path: str | os.PathLike | dict) -> dict:
    """A result JSON file (or an already-read dict); an unreadable one is one error naming the file."""
    if isinstance(path, dict):
        return path
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MIMFlowError(f"{path}: cannot read result JSON ({e})") from None
    if not isinstance(data, dict):
        raise MIMFlowError(f"{path}: a result file holds a JSON object, not {type(data).__name__}")
    return data


def _write_table(out_stem: str | os.PathLike, title: str, header: list[str], rows: list[list], notes: str
                 ) -> dict[str, str]:
    stem = Path(out_stem)
    fmt = [("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for row in rows for v in row]
    width = len(header)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(fmt[i:i + width]) + " |" for i in range(0, len(fmt), width)]
    md = "\n".join(lines + ["", notes, ""])
    buf = io.StringIO()
    csv.writer(buf).writerows([header, *rows])
    atomic_write(stem.with_suffix(".md"), lambda f: f.write(md), mode="w")
    atomic_write(stem.with_suffix(".csv"), lambda f: f.write(buf.getvalue()), mode="w")
    return {"markdown": str(stem.with_suffix(".md")), "csv": str(stem.with_suffix(".csv"))}


def render_tab5a(result: str | os.PathLike | dict, out_stem: str | os.PathLike) -> dict[str, str]:
    """Table 5a from ``tab5a.json`` (``rows``: mask_ratio, run + the TAB5A_COLUMNS values, any may be null).

    With ``seed_spread`` (|seed 0 - seed 1| of one mask ratio trained twice) a last row shows the run-to-run
    spread, so a reader can tell a difference between rows from noise.
    """
    data = read_result(result)
    header = ["mask ratio", "run", "rFID", "gFID", "IS", "Prec.", "Rec.", "Acc. %",
              "paper rFID", "paper gFID", "paper Acc. %"]
    rows = []
    for row in data.get("rows", []):
        paper = PAPER_TAB5A.get(str(row.get("mask_ratio")), (None,) * 6)
        ours = [row.get(k) for k in TAB5A_COLUMNS]
        rows.append([row.get("mask_ratio"), row.get("run", "-"), *ours, paper[0], paper[1], paper[5]])
    spread = data.get("seed_spread")
    if spread:
        rows.append([f"{spread['mask_ratio']}: run-to-run spread", "|" + " - ".join(spread["runs"]) + "|",
                     *(spread.get(k) for k in TAB5A_COLUMNS), None, None, None])
    notes = data.get("notes", "") + "\nPaper: ImageNet 256x256, MIMFlow-L, 10k samples (Table 5a)."
    return _write_table(out_stem, "Table 5a - masking strategies", header, rows, notes.strip())


def render_tab10(result: str | os.PathLike | dict, out_stem: str | os.PathLike) -> dict[str, str]:
    """Table 10 from ``tokens.json`` (written by ``benchmarks/flow_tokens.py --json``)."""
    data = read_result(result)
    runs = {int(r["K"]): r for r in data.get("rows", [])}
    if 128 not in runs:
        raise MIMFlowError(f"{result}: Table 10 needs a K = 128 row to take ratios against")
    base = runs[128]
    header = ["K", "train ms/step", "sample ms/sample", "activation MiB", "train ratio", "sample ratio",
              "paper train ratio", "paper sample ratio"]
    rows = []
    for K, r in sorted(runs.items()):
        paper = PAPER_TAB10.get(K)
        rows.append([K, r["step_s"] * 1e3, r["sample_s"] * 1e3, r["activation_bytes"] / 2**20,
                     r["step_s"] / base["step_s"], r["sample_s"] / base["sample_s"],
                     None if paper is None else paper[0] / PAPER_TAB10[128][0],
                     None if paper is None else paper[1] / PAPER_TAB10[128][1]])
    notes = (f"Ours: {data.get('preset', '?')} flow, batch {data.get('batch', '?')}, {data.get('device', '?')}. "
             "Paper: Improved-STARFlow backbone on an H20, batch 32 (Table 10).")
    return _write_table(out_stem, "Table 10 - flow cost per token count", header, rows, notes)
