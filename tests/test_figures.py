"""`mimflow-lab figures`: recipes redraw from result files alone and name what is missing."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mimflow_core.errors import MIMFlowError
from mimflow_lab.cli import cli, main
from mimflow_lab.recipes import LEGACY_NAMES, load_recipes, redraw_all
from mimflow_lab.tables import render_tab5a, render_tab10

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"


def test_recipes_cover_every_paper_artefact():
    from mimflow_lab.jacobian import plot_jacobian
    from mimflow_lab.jacobian.plot import plot_spectrum
    from mimflow_lab.probe import plot_probe
    from mimflow_lab.umap import plot_umap

    recipes = {r.name: r for r in load_recipes(ANALYSES)}
    assert {name: r.plot for name, r in recipes.items()} == {
        "fig4_umap": "umap", "fig5_jacobian": "jacobian", "fig5b_spectrum": "jacobian_spectrum",
        "fig6_probe": "probe", "tab5a_masking": "tab5a", "tab10_tokens": "tab10"}
    functions = {"umap": plot_umap, "jacobian": plot_jacobian, "probe": plot_probe, "tab5a": render_tab5a,
                 "tab10": render_tab10, "jacobian_spectrum": plot_spectrum}
    for recipe in recipes.values():
        assert recipe.plot_function() is functions[recipe.plot], recipe.name


def test_old_module_function_spelling_is_accepted_for_the_registered_renderers(tmp_path):
    for spelling, name in LEGACY_NAMES.items():
        (tmp_path / f"{name}.toml").write_text(f'title = "t"\nresult = "r"\nfigure = "f"\nplot = "{spelling}"\n'
                                              f'command = "c"\n')
    assert [(r.name, r.plot) for r in load_recipes(tmp_path)] == [(n, n) for n in sorted(LEGACY_NAMES.values())]


def test_missing_results_are_named_with_their_command(tmp_path):
    result = CliRunner().invoke(cli, ["figures", "--recipes", str(ANALYSES), "--results", str(tmp_path / "none"),
                                      "--out", str(tmp_path / "figs")])
    assert result.exit_code == 1
    for recipe in load_recipes(ANALYSES):
        line = next(l for l in result.output.splitlines() if recipe.name in l)
        assert line.startswith("missing") and recipe.command in line


def test_damaged_results_are_named_with_their_problem_and_the_others_still_drawn(tmp_path):
    results = tmp_path / "results"
    damage = {"umap/umap.json": '{"panels": 5}', "jacobian/jacobian.json": '{"models": [{"summary": ',
              "jacobian_spectrum/jacobian.json": '{"models": []}',
              "probe/probe.json": "[1, 2, 3]", "tab10/tokens.json": '{"rows": [{"K": "x"}]}'}
    for name, text in damage.items():
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(text)
    (results / "tab5a").mkdir()
    (results / "tab5a" / "tab5a.json").write_bytes(b"\xff\xfe")
    result = CliRunner().invoke(cli, ["figures", "--recipes", str(ANALYSES), "--results", str(results),
                                      "--out", str(tmp_path / "figs")])
    assert result.exit_code == 1
    expected = {"fig4_umap": "KeyError: 'embedding_file'", "fig5_jacobian": "cannot read result JSON",
                "fig5b_spectrum": "jacobian.json has no spectrum: run mimflow-lab jacobian with --spectrum",
                "fig6_probe": "holds a JSON object, not list", "tab10_tokens": "not a tab10 result (ValueError",
                "tab5a_masking": "cannot read result JSON ('utf-8' codec"}
    for recipe in load_recipes(ANALYSES):
        line = next(l for l in result.output.splitlines() if recipe.name in l)
        assert line.startswith("damaged") and expected[recipe.name] in line and recipe.command in line, line
        assert str(results / recipe.result) in line, line


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
    rows = [{"mask_ratio": "0.4-0.6", "run": "mimflow", "rfid": 10.0, "gfid": 20.0, "inception_score": None,
             "precision": 0.5, "recall": 0.4, "probe_accuracy": 91.0}]
    files = render_tab5a({"rows": rows}, tmp_path / "t5a")
    md = Path(files["markdown"]).read_text()
    assert "| 0.4-0.6 | mimflow | 10 | 20 | - | 0.5 | 0.4 | 91 | 3.4 | 12.82 | 71.3 |" in md
    assert "spread" not in md


def test_tab5a_shows_the_run_to_run_spread_of_two_seeds(tmp_path):
    from mimflow_lab.demo_report import seed_spread

    base = {"mask_ratio": "0.4-0.6", "inception_score": None, "precision": 0.5, "recall": 0.4}
    rows = [{**base, "run": "mimflow", "rfid": 10.0, "gfid": 20.0, "probe_accuracy": 91.0},
            {**base, "run": "mimflow-seed1", "rfid": 12.5, "gfid": 19.0, "probe_accuracy": 90.0},
            {**base, "mask_ratio": "none", "run": "e2e-nomask", "rfid": 9.0, "gfid": 30.0, "probe_accuracy": 80.0}]
    spread = seed_spread(rows)
    assert spread["runs"] == ["mimflow", "mimflow-seed1"]
    assert (spread["rfid"], spread["gfid"], spread["precision"], spread["probe_accuracy"]) == (2.5, 1.0, 0.0, 1.0)
    assert seed_spread(rows[1:]) is None  # no mask ratio trained twice: no spread to show
    md = Path(render_tab5a({"rows": rows, "seed_spread": spread}, tmp_path / "t5a")["markdown"]).read_text()
    assert "| 0.4-0.6: run-to-run spread | |mimflow - mimflow-seed1| | 2.5 | 1 | - | 0 | 0 | 1 | - | - | - |" in md


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
        assert f"| {row['mask_ratio']} | {row.get('run', '-')} | {row['rfid']:.4g} | {row['gfid']:.4g} |" in tab5a


# A recipe directory is input anyone may hand over: each case would run, copy, move, read or write something
# outside --results/--out if the recipe were trusted. "a_ok.toml", a valid recipe sorted first, shows that
# nothing is drawn either once any recipe is refused.
TOKENS = {"rows": [{"K": 128, "step_s": 1.0, "sample_s": 4.0, "activation_bytes": 2**21}]}
ATTACKS = {  # case: (plot, result, figure, the refusal); {tmp} is the test's tmp_path
    "copy a file out": ("shutil:copy", "{tmp}/secret.txt", "stolen", "plot 'shutil:copy' is not a registered renderer"),
    "move a user's file": ("os:rename", "mine.json", "moved", "plot 'os:rename' is not a registered renderer"),
    "an unregistered project function": ("mimflow_lab.tables:_write_table", "tokens.json", "t",
                                         "plot 'mimflow_lab.tables:_write_table' is not a registered renderer"),
    "result escapes": ("tab10", "../../outside.json", "t",
                       "result '../../outside.json' must be a relative path inside the results directory"),
    "absolute result": ("tab10", "{tmp}/outside.json", "t",
                        "result '{tmp}/outside.json' must be a relative path inside the results directory"),
    "result symlinked out": ("tab10", "link.json", "t",
                             "result 'link.json' must be a relative path inside the results directory"),
    "figure escapes": ("tab10", "tokens.json", "../escape",
                       "figure '../escape' must be a relative path inside the figures directory"),
    "absolute figure": ("tab10", "tokens.json", "{tmp}/escape",
                        "figure '{tmp}/escape' must be a relative path inside the figures directory"),
}


def _attack(tmp_path: Path, plot: str, result: str, figure: str) -> list[str]:
    """A user's results, figures and files, plus a recipe directory holding a valid and a hostile recipe."""
    (tmp_path / "secret.txt").write_text("secret")
    (tmp_path / "outside.json").write_text(json.dumps(TOKENS))
    results = tmp_path / "work" / "results"
    results.mkdir(parents=True)
    (results / "tokens.json").write_text(json.dumps(TOKENS))
    (results / "mine.json").write_text("the user's")
    (results / "run.sh").write_text(f"#!/bin/sh\ntouch {tmp_path / 'pwned'}\n")
    (results / "run.sh").chmod(0o755)
    (results / "link.json").symlink_to(tmp_path / "outside.json")
    (tmp_path / "work" / "figs").mkdir()
    recipes = tmp_path / "work" / "recipes"
    recipes.mkdir()
    for name, fields in {"a_ok": ("tab10", "tokens.json", "ok"), "evil": (plot, result, figure)}.items():
        plot_, result_, figure_ = (json.dumps(v.format(tmp=tmp_path)) for v in fields)
        (recipes / f"{name}.toml").write_text(f"title = 't'\nresult = {result_}\nfigure = {figure_}\n"
                                              f"plot = {plot_}\ncommand = 'c'\n")
    return ["figures", "--recipes", str(recipes), "--results", str(results), "--out", str(tmp_path / "work" / "figs")]


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with what it holds, to show that nothing was created, moved or copied."""
    return {str(p.relative_to(root)): ("link", os.readlink(p)) if p.is_symlink() else ("dir",) if p.is_dir()
            else ("file", p.read_bytes(), p.stat().st_mode) for p in root.rglob("*")}


@pytest.mark.parametrize("case", ATTACKS)
def test_hostile_recipe_is_refused_in_one_line_and_touches_nothing(tmp_path, capsys, case):
    plot, result, figure, message = ATTACKS[case]
    argv = _attack(tmp_path, plot, result, figure)
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)   # the console script's entry point: MIMFlowError -> one line, exit code 2
    err = capsys.readouterr().err
    assert exited.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(tmp_path / "work" / "recipes" / "evil.toml") in lines[0] and message.format(tmp=tmp_path) in lines[0]
    assert _tree(tmp_path) == before


def test_recipe_cannot_run_a_script(tmp_path):
    """Through the real command line in a subprocess: ``os:execl`` would replace a test process with the script."""
    argv = _attack(tmp_path, "os:execl", "run.sh", "x")
    before = _tree(tmp_path)
    run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", *argv], capture_output=True, text=True)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "evil.toml: plot 'os:execl' is not a registered renderer (valid: jacobian, jacobian_spectrum, probe, tab10, tab5a, umap)" \
        in lines[0]
    assert not (tmp_path / "pwned").exists() and _tree(tmp_path) == before


@pytest.mark.parametrize("lo,hi", [(1.5e-3, 0.6), (2e-3, 5e-2), (0.2, 0.5), (0.31, 0.33), (1e-6, 10.0), (0.9, 40.0)])
def test_log_axis_labels_never_collide(lo, hi):
    """Figure 5's sigma panels on a 3.2-inch axis: every range gets 2+ labels and no two of them overlap."""
    from mimflow_lab.plots import label_log_axis, new_figure

    fig, ax = new_figure(1, 1, width=3.2, height=2.6)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    label_log_axis(ax.xaxis, lo, hi)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()), key=lambda b: b.x0)
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert len(boxes) >= 2, (lo, hi)
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
