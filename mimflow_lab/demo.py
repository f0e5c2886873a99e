"""The end-to-end demo: every analysis of the paper on the bundled digits, within a time budget.

It runs exactly the commands a user would (printed, and listed in the
report), in-process, one stage at a time. A stage whose output already exists
is skipped, so a rerun resumes where the last one stopped. The budget
(``--minutes``) sets the training steps and sample counts up front from
measured CPU costs (2 cores: ~0.35 s per tiny training step of 32 images, evaluation included,
~3 Inception images per second).
"""
from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
import numpy as np

from mimflow_core.atomic import atomic_write, write_json

# Table 5a's training mask ratios -> run name ("none" is the e2e-nomask comparison model)
# The tiny CPU runs are short: a 10x larger learning rate with warm-up, and beta = 0.03. Both loss terms are
# means per dimension, so the ELBO's balance puts beta near (K * D) / (C * H * W) = 128 / 3072 = 0.04; at the
# paper's beta = 1 the flow term wins before the decoder learns to use z (posterior collapse within a few hundred
# steps; held-out MSE after 800 steps: 0.187 at beta 1, 0.055 at 0.1, 0.040 at 0.03, README "The tiny recipe").
SHORT_RUN = ("--lr", "1e-3", "--warmup-steps", "50", "--flow-weight", "0.03")
MASK_RUNS = {"none": "e2e-nomask", "0.2-0.4": "mask-0.2-0.4", "0.4-0.6": "mimflow",
             "0.6-0.8": "mask-0.6-0.8", "mix": "mask-mix"}
RECIPES = Path(__file__).resolve().parents[1] / "analyses"
# Table 10 times the flow per token count: a benchmark (benchmarks/flow_tokens.py), not part of the demo.
DEMO_RECIPES = ("fig4_umap", "fig5_jacobian", "fig6_probe", "tab5a_masking")


@dataclass(frozen=True)
class Budget:
    """Work sizes derived from the time budget."""

    minutes: float
    steps: int            # phase-1 steps per model
    gan_steps: int        # phase-2 steps of the main model
    batch: int
    fid_samples: int      # samples (and reconstructions) per FID evaluation
    ref_images: int       # held-out digits in the reference batch
    jacobian_samples: int
    umap_samples: int
    probe_mask_ratios: str  # inference mask ratios of the probe
    probe_seeds: str

    @classmethod
    def for_minutes(cls, minutes: float) -> "Budget":
        """Split the budget: ~55% training (6 models), ~30% Inception, the rest for the analyses."""
        if minutes <= 0:
            raise click.BadParameter("must be positive", param_hint="--minutes")
        seconds = minutes * 60
        steps = max(10, int(0.55 * seconds / 6 / 0.35))
        images = 0.30 * seconds * 3.0          # Inception images in the FID share
        fid = max(10, min(500, int(images / 12)))  # 5 models x (samples + reconstructions) + reference
        smoke = minutes <= 3  # the CI smoke test: one mask ratio and one seed for the probe
        return cls(minutes, steps=steps, gan_steps=max(5, steps // 5), batch=32, fid_samples=fid,
                   ref_images=min(300, 2 * fid), jacobian_samples=min(64, max(8, int(minutes * 3))),
                   umap_samples=min(300, max(100, int(minutes * 15))),
                   probe_mask_ratios="0" if smoke else "0,0.5", probe_seeds="0" if smoke else "0,1,2")


@dataclass
class Stage:
    name: str
    args: list[str]                 # mimflow-lab arguments
    done: Path                      # the stage is complete when this file exists
    prepare: Callable[[], None] | None = None
    finish: Callable[[], None] | None = None
    commands: list[str] = field(default_factory=list)


def _train(out: Path, name: str, budget: Budget, *extra: str) -> Stage:
    run = out / "runs" / name
    args = ["train", "--preset", "tiny", "--data", "digits", "--out", str(run), "--steps", str(budget.steps),
            "--batch-size", str(budget.batch), "--ckpt-every", str(max(10, budget.steps // 4)), *SHORT_RUN, *extra]
    if (run / "ckpt.pt").exists():
        args.append("--resume")
    return Stage(f"train {name}", args, run / "eval.json")


def plan(out: Path, budget: Budget) -> list[Stage]:
    runs, results = out / "runs", out / "results"
    ckpt = {name: str(runs / name / "ckpt.pt") for name in [*MASK_RUNS.values(), "starflow", "mimflow-gan"]}
    stages = [_train(out, "mimflow", budget, "--mask-ratio", "0.4-0.6"),
              _train(out, "e2e-nomask", budget, "--variant", "e2e-nomask"),
              _train(out, "starflow", budget, "--variant", "starflow"),
              *(_train(out, MASK_RUNS[r], budget, "--mask-ratio", r) for r in ("0.2-0.4", "0.6-0.8", "mix"))]
    gan = _train(out, "mimflow-gan", budget, "--phase", "2", "--init", ckpt["mimflow"])
    gan.args[gan.args.index("--steps") + 1] = str(budget.gan_steps)
    stages.append(gan)
    stages += [
        Stage("jacobian (Figure 5)", ["jacobian", ckpt["mimflow"], "--compare", ckpt["starflow"],
                                      "--samples", str(budget.jacobian_samples), "--batch", "16",
                                      "--out", str(results / "jacobian")], results / "jacobian" / "jacobian.json"),
        Stage("probe (Figure 6)", ["probe", *(ckpt[MASK_RUNS[r]] for r in MASK_RUNS), "--depths", "all",
                                   "--mask-ratios", budget.probe_mask_ratios, "--seeds", budget.probe_seeds,
                                   "--pixel-baseline", "--cache", str(out / "cache"), "--out", str(results / "probe")],
              results / "probe" / "probe.json"),
        Stage("umap (Figure 4)", ["umap", ckpt["starflow"], "--compare", ckpt["mimflow"], "--what", "latent",
                                  "--samples", str(budget.umap_samples), "--cache", str(out / "cache"),
                                  "--out", str(results / "umap")],
              results / "umap" / "umap.json"),
    ]
    ref_images = out / "data" / "digits-test.npz"
    ref = results / "ref.npz"
    stages.append(Stage("reference batch (held-out digits)",
                        ["ref-stats", str(ref_images), "--out", str(ref)], ref,
                        prepare=lambda: _write_heldout_digits(ref_images, budget.ref_images)))
    for name in MASK_RUNS.values():  # phase-1 models throughout, so the rows differ only in the mask ratio
        for kind, extra in (("gfid", ["--ref", str(ref)]), ("rfid", ["--rfid", "digits", "--ref", str(ref)])):
            target = results / "fid" / f"{name}-{kind}"
            stages.append(Stage(f"{kind} {name}", ["fid", ckpt[name], "--samples", str(budget.fid_samples),
                                                    "--batch", "50", *extra, "--out", str(target)],
                                target / "metrics.json"))
    stages.append(Stage("Table 5a", [], results / "tab5a" / "tab5a.json",
                        prepare=lambda: collect_tab5a(results, budget)))
    return stages


def _write_heldout_digits(path: Path, count: int) -> None:
    """The held-out digits at the tiny preset's 32 px as an ADM image npz (uint8 NHWC + labels)."""
    from mimflow_core.data import load_dataset

    test = load_dataset("digits", 32, "test")
    keep = np.random.default_rng(0).permutation(len(test))[:count]
    images = np.stack([((test[i][0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255) for i in keep])
    labels = np.asarray(test.labels)[keep]
    atomic_write(path, lambda f: np.savez(f, arr_0=images.astype(np.uint8), arr_1=labels.astype(np.int64)))


def collect_tab5a(results: Path, budget: Budget) -> None:
    """Table 5a's rows from the FID and probe results of each mask-ratio model."""
    probe = json.loads((results / "probe" / "probe.json").read_text())
    steps = {name: json.loads((results.parent / "runs" / name / "eval.json").read_text())["step"]
             for name in MASK_RUNS.values()}
    rows = []
    for ratio, name in MASK_RUNS.items():
        gfid = json.loads((results / "fid" / f"{name}-gfid" / "metrics.json").read_text())
        rfid = json.loads((results / "fid" / f"{name}-rfid" / "metrics.json").read_text())
        rows.append({"mask_ratio": ratio, "run": name, "rfid": rfid["fid"], "gfid": gfid["fid"],
                     "inception_score": gfid.get("inception_score"), "precision": gfid["precision"],
                     "recall": gfid["recall"], "probe_accuracy": encoder_accuracy(probe, name),
                     "train_steps": steps[name]})
    write_json(results / "tab5a" / "tab5a.json", {
        "rows": rows, "fid_samples": budget.fid_samples, "reference_images": budget.ref_images,
        "notes": (f"Ours: tiny preset on scikit-learn digits (32 px), {max(steps.values())} phase-1 training steps per model, "
                  f"FID from {budget.fid_samples} samples against {budget.ref_images} held-out digits "
                  "(far below the 2048 feature dimensions: comparable across rows, not with the paper). "
                  "Acc. = linear probe on encoder features before the projection, inference mask ratio 0."),
    })


def encoder_accuracy(probe: dict, run: str) -> float | None:
    """Table 5a's Acc.: the probe on pre-projection encoder features at inference mask ratio 0, in %."""
    for row in probe.get("results", []):
        if (Path(row["checkpoint_path"]).parent.name == run and row["depth"] == "encoder"
                and float(row["mask_ratio"]) == 0):
            return row["accuracy_mean"]
    return None


def run_demo(out: str | Path, minutes: float) -> Path:
    """Run (or resume) every stage, redraw the figures, and write ``report.md``; returns its path."""
    from mimflow_lab.cli import cli
    from mimflow_lab.recipes import load_recipes, redraw_all

    out = Path(out)
    budget = Budget.for_minutes(minutes)
    stages = plan(out, budget)
    started = time.time()
    timings = {}
    for i, stage in enumerate(stages, 1):
        command = "mimflow-lab " + shlex.join(stage.args) if stage.args else "(collects the results above)"
        if stage.done.exists():
            click.echo(f"[{i}/{len(stages)}] {stage.name}: done earlier ({stage.done})", err=True)
            timings[stage.name] = None
            continue
        click.echo(f"[{i}/{len(stages)}] {stage.name}: {command}", err=True)
        t0 = time.time()
        if stage.prepare:
            stage.prepare()
        if stage.args:
            cli.main(args=stage.args, prog_name="mimflow-lab", standalone_mode=False)
        timings[stage.name] = round(time.time() - t0, 1)
    recipes = [r for r in load_recipes(RECIPES) if r.name in DEMO_RECIPES]
    drawn = redraw_all(recipes, out / "results", out / "figures")
    report = out / "report.md"
    text = render_report(out, budget, stages, drawn, timings, time.time() - started)
    atomic_write(report, lambda f: f.write(text), mode="w")
    click.echo(f"wrote {report}", err=True)
    return report


def render_report(out: Path, budget: Budget, stages: list[Stage], drawn, timings: dict, seconds: float) -> str:
    results = out / "results"
    lines = ["# MIMFlow Lab demo report", "",
             f"Tiny MIMFlow models trained on scikit-learn's digits (32 px, CPU); budget {budget.minutes:g} min, "
             f"this run {seconds / 60:.1f} min. Every number below is read from the result files in "
             f"`{results}`; rerunning `mimflow-lab demo --out {out}` resumes and redraws.", "",
             "## Figures", ""]
    for item in drawn:
        if item.files is None:
            lines.append(f"- {item.recipe.title}: **missing** `{item.result_path}` (make it with "
                         f"`{item.recipe.command}`)")
            continue
        for kind, path in sorted(item.files.items()):
            rel = Path(path).relative_to(out) if Path(path).is_relative_to(out) else Path(path)
            lines.append(f"- {item.recipe.title} ({kind}): [{rel}]({rel})")
            if kind == "png":
                lines.append(f"\n  ![{item.recipe.title}]({rel})\n")
    lines += ["", "## Training", "", "| run | steps | held-out MSE | PSNR dB | flow bits/dim | wall s |",
              "| --- | --- | --- | --- | --- | --- |"]
    for run in sorted((out / "runs").glob("*/eval.json")):
        ev = json.loads(run.read_text())
        lines.append(f"| {run.parent.name} | {ev.get('step')} | {_fmt(ev.get('recon_mse'))} | "
                     f"{_fmt(ev.get('recon_psnr_db'))} | {_fmt(ev.get('bpd_heldout'))} | {_fmt(ev.get('train_wall_s'))} |")
    lines += ["", "Sample grids (one class per row): " + ", ".join(
        f"[{p.parent.name}]({p.relative_to(out)})" for p in sorted((out / "runs").glob("*/samples.png")))]
    for name, path in (("Table 5a", results / "tab5a" / "tab5a.json"),
                       ("Jacobian summary", results / "jacobian" / "jacobian.json")):
        if path.exists():
            lines += ["", f"## {name}", "", f"`{path.relative_to(out)}`"]
    tab = out / "figures" / "tab5a_masking.md"
    if tab.exists():
        lines += ["", tab.read_text().replace("# Table 5a", "### Table 5a")]
    lines += ["", "## Commands", "", "```"]
    lines += [("mimflow-lab " + shlex.join(s.args)) if s.args else f"# {s.name}: collected from the results above"
              for s in stages]
    lines += ["```", "", "## Stage wall times (s; '-' = done by an earlier run)", ""]
    lines += [f"- {name}: {'-' if t is None else t}" for name, t in timings.items()]
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)
