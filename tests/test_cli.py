"""One vocabulary over every command; the README shows only options that exist; `--help` without torch."""
from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import click
import pytest

from mimflow_lab.cli import COMMANDS, cli
from mimflow_lab.options import RENAMED, SplitChoice

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in COMMANDS}


def _options(command: click.Command) -> dict[str, click.Parameter]:
    return {opt: p for p in command.params for opt in (*p.opts, *p.secondary_opts)}


def test_help_and_version_do_not_import_torch():
    """Every --help answers without loading torch (what makes `mimflow-lab --help` take seconds)."""
    code = ("import sys\nfrom mimflow_lab.cli import main\n"
            "for argv in (['--help'], *[[name, '--help'] for name in sys.argv[1:]]):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)\n")
    run = subprocess.run([sys.executable, "-c", code, *COMMANDS], capture_output=True, text=True)
    assert run.stderr.strip().splitlines()[-1] == "NO TORCH", run.stderr
    for name in COMMANDS:
        assert f"Usage: mimflow-lab {name}" in run.stdout or f"Usage: -c {name}" in run.stdout, name
    run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"mimflow-lab {version('mimflow-lab')}"


def test_one_name_per_idea_in_every_command():
    for name, command in _commands().items():
        options = _options(command)
        assert not {"--batch", "--shard-size", "--mask-ratios"} & set(options), name
        if "--out" in options:  # always a directory: a click directory path, or a DIR/file callback
            out = options["--out"]
            is_dir = isinstance(out.type, click.Path) and not out.type.file_okay
            assert is_dir or out.callback is not None, name
            assert "directory" in (out.help or "").lower(), name
        if "--split" in options:
            assert isinstance(options["--split"].type, SplitChoice), name
        if "--device" in options:
            assert options["--device"].default == "auto", name
        if "--weights" in options:
            assert list(options["--weights"].type.choices) == ["ema", "raw"], name
        if "--compare" in options:
            assert options["--compare"].multiple, name


def test_old_spellings_work_with_a_deprecation_line(capsys):
    command = _commands()["probe"]
    for old, value, param, expected in (("--shard-size", "64", "batch_size", 64),
                                        ("--mask-ratios", "0,0.5", "mask_ratio", [0.0, 0.5])):
        with command.make_context("probe", [old, value]) as ctx:
            assert ctx.params[param] == expected
        assert f"{old} is now {RENAMED[old]}" in capsys.readouterr().err
    with command.make_context("probe", ["--mask-ratio", "0", "--mask-ratio", "0.5,0"]) as ctx:
        assert ctx.params["mask_ratio"] == [0.0, 0.5]  # repeated and comma-separated, duplicates dropped
    with _commands()["umap"].make_context("umap", ["x.pt", "--split", "val"]) as ctx:
        assert ctx.params["split"] == "test"  # an ImageFolder's val/ is the held-out split


def _readme_invocations() -> list[tuple[str, list[str], str]]:
    """(command, its --options, the line) for every mimflow-lab call in the README's code blocks."""
    calls = []
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0]
            match = re.search(r"(?:mimflow-lab|-m mimflow_lab\.cli)\s+([a-z-]+)(.*)", line)
            if match and match.group(1) in COMMANDS:
                calls.append((match.group(1), re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", match.group(2)), line))
    return calls


def test_every_option_the_readme_shows_exists_in_help():
    calls = _readme_invocations()
    assert len({name for name, _, _ in calls}) >= 9  # the README shows (nearly) every command
    commands = _commands()
    for name, opts, line in calls:
        known = set(_options(commands[name])) | {"--help"}
        unknown = [o for o in opts if o not in known]
        assert not unknown, f"README: `{line.strip()}` uses {unknown}, not options of `{name}`"


@pytest.mark.parametrize("argv, needle", [
    (["jacobian", "x.pt", "--method", "svd"], "'svd' is not one of"),
    (["probe", "--mask-ratio", "1.5"], "[0, 1)"),
    (["fid", "--split", "validation"], "'validation' is not one of"),
    (["nosuch"], "No such command"),
    (["fid", "x.pt", "--cfg", "-1"], "-1: not a guidance scale; use s >= 0"),
    (["fid", "x.pt", "--cfg", "nan"], "nan: not a guidance scale"),
    (["evaluate", "a.npz", "b.npz", "--batch-size", "0"], "0 is not in the range x>=1"),
    (["ref-stats", "digits", "--batch-size", "0"], "0 is not in the range x>=1"),
    (["ref-stats", "digits", "--size", "0"], "0 is not in the range x>=1"),
])
def test_usage_errors_are_one_line_exit_2(argv, needle):
    run = subprocess.run([sys.executable, "-m", "mimflow_lab.cli", *argv], capture_output=True, text=True)
    assert run.returncode == 2 and needle in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr


@pytest.mark.parametrize("argv", [
    ["fid", "--rfid", "digits", "--samples", "4"], ["jacobian"], ["features"], ["probe"], ["umap", "--no-cache"],
])
def test_every_analysis_refuses_diverged_weights_naming_the_tensor_before_any_work(tmp_path, capsys, argv):
    import torch

    from mimflow_core.checkpoint import save_checkpoint
    from mimflow_core.config import get_preset
    from mimflow_core.model import MIMFlow
    from mimflow_lab.cli import main

    model = MIMFlow(get_preset("tiny", enc_depth=1, dec_depth=1, flow_blocks=(1, 1)))
    with torch.no_grad():
        model.flow.blocks[0].proj_out.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", model, step=5)
    with pytest.raises(SystemExit) as exit_info:
        main([argv[0], str(tmp_path / "nan.pt"), *argv[1:], "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert "nan.pt: raw weights: 1 tensor(s) hold NaN or Inf (first: flow.blocks.0.proj_out.weight" in err[0]
    assert not (tmp_path / "out").exists()
