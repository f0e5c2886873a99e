"""The demo end to end in smoke mode: every stage runs, the report names every figure, a rerun resumes."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from mimflow_lab.demo import MASK_RUNS, Budget


def test_budget_grows_with_minutes_and_smoke_mode_is_small():
    smoke, full = Budget.for_minutes(1), Budget.for_minutes(20)
    assert smoke.steps < full.steps and smoke.fid_samples < full.fid_samples
    assert smoke.probe_mask_ratios == "0" and full.probe_mask_ratios == "0,0.5"
    assert full.steps * 6 * 0.35 <= 0.6 * 20 * 60  # training stays within its share of the budget


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "demo", "--out", str(out), "--minutes", "1"],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, run


def test_demo_writes_every_figure_and_names_them_in_its_report(demo_run):
    out, _ = demo_run
    report = (out / "report.md").read_text()
    for stem in ("fig4_umap", "fig5_jacobian", "fig6_probe"):
        for ext in ("png", "pdf"):
            figure = out / "figures" / f"{stem}.{ext}"
            assert figure.is_file() and figure.stat().st_size > 1000, figure
            assert f"figures/{stem}.{ext}" in report
    assert (out / "figures" / "tab5a_masking.md").is_file() and "figures/tab5a_masking.md" in report
    assert "missing" not in report.lower()
    linked = re.findall(r"\]\(([^)]+)\)", report)
    assert linked and all((out / link).exists() for link in linked), [l for l in linked if not (out / l).exists()]


def test_demo_table5a_has_every_mask_ratio_with_numbers(demo_run):
    out, _ = demo_run
    rows = json.loads((out / "results" / "tab5a" / "tab5a.json").read_text())["rows"]
    assert [r["mask_ratio"] for r in rows] == list(MASK_RUNS)
    for row in rows:
        for key in ("rfid", "gfid", "precision", "recall", "probe_accuracy"):
            assert row[key] is not None and math.isfinite(row[key]), (row["mask_ratio"], key)
        assert 0 <= row["probe_accuracy"] <= 100 and row["rfid"] > 0


def test_demo_rerun_resumes_without_redoing_work(demo_run):
    out, first = demo_run
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/ckpt.pt")}
    run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "demo", "--out", str(out), "--minutes", "1"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    stage_lines = [l for l in run.stderr.splitlines() if re.match(r"\[\d+/\d+\]", l)]
    assert stage_lines and all("done earlier" in l for l in stage_lines), stage_lines
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/ckpt.pt")}
