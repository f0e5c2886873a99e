"""The demo: its budget arithmetic, its scheduler, its verdict rule, and the whole run in smoke mode."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mimflow_core.errors import MIMFlowError
from mimflow_lab.demo import FULL_MODELS, MODELS, Budget, Costs, Stage, run_stages
from mimflow_lab.demo_report import verdict

COSTS = Costs(step_s=0.3, inception_images_s=4.0, threads=1)


def test_budget_sizes_the_work_to_the_minutes_and_the_measured_costs():
    smoke, short, default = Budget.plan(1, COSTS), Budget.plan(10, COSTS), Budget.plan(20, COSTS)
    assert smoke.steps < short.steps < default.steps and smoke.fid_samples < default.fid_samples
    assert smoke.probe_mask_ratios == "0" and default.probe_mask_ratios == "0,0.5"
    # twice the measured step cost: about half the steps; the sample count does not depend on it
    slow = Budget.plan(20, Costs(0.6, 4.0, 1))
    assert slow.steps == pytest.approx(default.steps / 2, rel=0.05) and slow.fid_samples == default.fid_samples
    # the sweep's three extra models share the same minutes: fewer steps each
    full = Budget.plan(20, COSTS, full=True)
    assert full.models == MODELS + FULL_MODELS and full.steps < default.steps
    # training stays within what the two workers have after Inception: 20 min x 2 jobs
    assert default.steps * COSTS.step_s * len(default.models) < 0.95 * 20 * 60 * 2
    with pytest.raises(MIMFlowError, match="--minutes"):
        Budget.plan(0, COSTS)


def test_every_inception_process_is_charged_its_start_up(monkeypatch):
    """10 Inception processes (a gFID per model, an rFID per Table 5a row, the untrained, the ceiling, ref-stats)
    at INCEPTION_START_CORE_S each come out of the training steps, nothing else changes."""
    import mimflow_lab.demo as demo

    charged, start_s = Budget.plan(20, COSTS), demo.INCEPTION_START_CORE_S
    monkeypatch.setattr(demo, "INCEPTION_START_CORE_S", 0.0)
    free = Budget.plan(20, COSTS)
    step_units = len(MODELS) + demo.GAN_STEP_FRACTION * 0.5
    expected = 10 * start_s / (COSTS.step_s * step_units)
    assert abs((free.steps - charged.steps) - expected) <= 1 and free.fid_samples == charged.fid_samples


@pytest.mark.parametrize("effect,noise,expected", [
    (5.0, 1.0, "agrees"), (-5.0, 1.0, "disagrees"), (1.5, 1.0, "cannot tell at this scale"),
    (-1.5, 1.0, "cannot tell at this scale"), (0.1, 0.0, "agrees"), (None, 1.0, "cannot tell at this scale"),
    (1.0, None, "cannot tell at this scale")])
def test_verdict_reads_an_effect_against_twice_the_noise(effect, noise, expected):
    assert verdict(effect, noise) == expected


def test_a_failing_stage_stops_the_demo_names_its_log_and_blocks_what_needs_it(tmp_path):
    ran = []
    stages = [Stage("bad info", tmp_path / "never", ["info", str(tmp_path / "missing.pt")]),
              Stage("after", tmp_path / "after", call=lambda: ran.append(1), needs=("bad info",)),
              Stage("independent", tmp_path / "independent",
                    call=lambda: (tmp_path / "independent").write_text("x"))]
    with pytest.raises(MIMFlowError, match=r"bad info failed; see .*logs/bad-info\.log"):
        run_stages(stages, tmp_path, jobs=2, threads=1)
    assert ran == [] and (tmp_path / "independent").exists()
    assert "missing.pt" in (tmp_path / "logs" / "bad-info.log").read_text()


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
    for model in MODELS:  # every model's sample grid and reconstructions are shown
        assert f"runs/{model.name}/samples.png" in report and f"runs/{model.name}/reconstructions.png" in report


def test_demo_table5a_compares_rows_at_equal_counts_with_the_seed_spread(demo_run):
    out, _ = demo_run
    tab = json.loads((out / "results" / "tab5a" / "tab5a.json").read_text())
    rows = tab["rows"]
    assert [r["run"] for r in rows] == [m.name for m in MODELS if m.mask_ratio is not None]
    for row in rows:
        for key in ("rfid", "gfid", "precision", "recall", "probe_accuracy"):
            assert row[key] is not None and math.isfinite(row[key]), (row["run"], key)
        assert 0 <= row["probe_accuracy"] <= 100 and row["rfid"] > 0
        for kind in ("gfid", "rfid"):
            run = json.loads((out / "results" / "fid" / f"{row['run']}-{kind}" / "run.json").read_text())
            assert run["samples"] == tab["fid_samples"]
    spread = tab["seed_spread"]
    assert spread["runs"] == ["mimflow", "mimflow-seed1"]
    assert spread["gfid"] == pytest.approx(abs(rows[0]["gfid"] - rows[1]["gfid"]))


def test_demo_reports_baseline_ceiling_readout_and_a_verdict_per_finding(demo_run):
    out, _ = demo_run
    results = out / "results"
    real = json.loads((results / "fid" / "real-digits" / "metrics.json").read_text())
    untrained = json.loads((results / "fid" / "untrained-gfid" / "metrics.json").read_text())
    assert real["fid"] < untrained["fid"]  # real digits are closer to held-out digits than noise from a random model
    readout = json.loads((results / "readout" / "readout.json").read_text())
    assert readout["real_heldout_accuracy"] > 90  # the readout classifier reads real digits
    assert set(readout["models"]) == {m.name for m in MODELS} | {"untrained"}
    findings = json.loads((results / "findings.json").read_text())["findings"]
    assert len(findings) == 4
    assert all(f["verdict"] in ("agrees", "disagrees", "cannot tell at this scale") for f in findings)
    report = (out / "report.md").read_text()
    assert "real digits (ceiling)" in report and "untrained (same architecture)" in report
    assert all(f"**{f['verdict']}**" in report for f in findings)


def test_demo_rerun_resumes_without_redoing_work(demo_run):
    out, first = demo_run
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/ckpt.pt")}
    run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "demo", "--out", str(out), "--minutes", "1"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    stage_lines = [l for l in run.stderr.splitlines() if re.match(r"\[\d+/\d+\]", l)]
    assert stage_lines and all("done earlier" in l for l in stage_lines), stage_lines
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/ckpt.pt")}
    changed = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "demo", "--out", str(out), "--minutes", "2"],
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "planned with --minutes 1" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
