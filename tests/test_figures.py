"""`mimflow-lab figures`: recipes redraw from result files alone and name what is missing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mimflow_core.errors import MIMFlowError
from mimflow_lab.cli import cli
from mimflow_lab.recipes import load_recipes, redraw_all
from mimflow_lab.tables import render_tab5a, render_tab10

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"


def test_recipes_cover_every_paper_artefact():
    names = {r.name for r in load_recipes(ANALYSES)}
    assert names == {"fig4_umap", "fig5_jacobian", "fig6_probe", "tab5a_masking", "tab10_tokens"}
    for recipe in load_recipes(ANALYSES):
        assert callable(recipe.plot_function()), recipe.name


def test_missing_results_are_named_with_their_command(tmp_path):
    result = CliRunner().invoke(cli, ["figures", "--recipes", str(ANALYSES), "--results", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "figs")])
    assert result.exit_code == 1
    for recipe in load_recipes(ANALYSES):
        line = next(l for l in result.output.splitlines() if recipe.name in l)
        assert line.startswith("missing") and recipe.command in line


def test_tab10_ratios_are_computed_from_the_result(tmp_path):
    rows = [{"K": 64, "step_s": 0.5, "sample_s": 2.0, "activation_bytes": 2**20},
            {"K": 128, "step_s": 1.0, "sample_s": 4.0, "activation_bytes": 2**21},
            {"K": 256, "step_s": 2.5, "sample_s": 9.0, "activation_bytes": 2**22}]
    files = render_tab10({"rows": rows, "preset": "tiny", "batch": 8, "device": "cpu"}, tmp_path / "t10")
    lines = Path(files["csv"]).read_text().splitlines()
    k256 = lines[3].split(",")
    assert k256[0] == "256" and float(k256[4]) == 2.5 and float(k256[5]) == 2.25
    assert float(k256[6]) == pytest.approx(352 / 183) and float(k256[7]) == pytest.approx(3.64 / 1.60)
    with pytest.raises(MIMFlowError, match="K = 128"):
        render_tab10({"rows": rows[:1]}, tmp_path / "bad")


def test_tab5a_places_paper_values_beside_ours(tmp_path):
    rows = [{"mask_ratio": "0.4-0.6", "rfid": 10.0, "gfid": 20.0, "inception_score": None, "precision": 0.5,
             "recall": 0.4, "probe_accuracy": 91.0}]
    files = render_tab5a({"rows": rows}, tmp_path / "t5a")
    md = Path(files["markdown"]).read_text()
    assert "| 0.4-0.6 | 10 | 20 | - | 0.5 | 0.4 | 91 | 3.4 | 12.82 | 71.3 |" in md


def test_malformed_recipe_names_the_file(tmp_path):
    shutil.copytree(ANALYSES, tmp_path / "a")
    (tmp_path / "a" / "broken.toml").write_text("title = 'x'\n")
    with pytest.raises(MIMFlowError, match="broken.toml: recipe lacks result"):
        load_recipes(tmp_path / "a")


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "results"


def test_every_figure_redraws_from_fixture_results(tmp_path):
    """Result files written by a real demo run (tests/fixtures/results) redraw every artefact, nothing recomputed."""
    drawn = redraw_all(load_recipes(ANALYSES), FIXTURES, tmp_path)
    assert all(item.files is not None for item in drawn), [i.recipe.name for i in drawn if i.files is None]
    for item in drawn:
        for kind, path in item.files.items():
            data = Path(path).read_bytes()
            assert len(data) > 300, path
            if kind == "png":
                assert data[:8] == b"\x89PNG\r\n\x1a\n"
            elif kind == "pdf":
                assert data[:5] == b"%PDF-" and b"/FontFile2" in data  # TrueType fonts embedded (fonttype 42)
    tab5a = (tmp_path / "tab5a_masking.md").read_text()
    rows = json.loads((FIXTURES / "tab5a" / "tab5a.json").read_text())["rows"]
    for row in rows:
        assert f"| {row['mask_ratio']} | {row['rfid']:.4g} | {row['gfid']:.4g} |" in tab5a
