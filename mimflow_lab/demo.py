"""The end-to-end demo: every analysis of the paper on the bundled digits, within a time budget.

It runs exactly the commands a user would (each printed, logged to
``<out>/logs/`` and listed in the report) as worker processes, ``--jobs`` at
a time with the cores split between them: the tiny models are too small to
keep two threads busy, so two one-thread jobs side by side do more work per
second than one two-thread job. A stage whose output exists is skipped, so a
rerun resumes where the last one stopped (an interrupted training resumes
from its checkpoint).

The budget (``--minutes``) is turned into training steps and sample counts
up front from costs measured on this machine at start (a few training steps
and one Inception batch in as many side-by-side processes as there will be
workers, at their thread count), not from constants.
"""
from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np

from mimflow_core.atomic import atomic_write, write_error, write_json
from mimflow_core.errors import MIMFlowError

# The digits recipe (README "The digits recipe"): the `digits` preset (the tiny preset's 64 patches of 4 px, with
# 3-layer encoder and decoder and MLP ratio 2: the same held-out PSNR per step at ~0.6x the cost) and its training
# recipe, which `train` takes from mimflow_core.config.TRAIN_RECIPES (lr 1e-3 after a 50-step warm-up, beta 0.03,
# batch 16).
PRESET = "digits"
GRID_CFG = 2.0               # guidance of the sample grids: the class each row shows is plain
FID_CFG = 1.0                # guidance of the FID samples: none. Measured on a 1000-step model, 140 samples: FID
                             # 63.5 / 61.7 / 59.7, precision 0.51 / 0.43 / 0.39, recall 0.07 / 0.14 / 0.25 at cfg
                             # 2 / 1.5 / 1: guidance trades recall for precision
RECIPE = ("--preset", PRESET, "--data", "digits", "--sample-cfg", f"{GRID_CFG:g}")
GAN_STEP_FRACTION = 0.05     # phase-2 steps of the main model, as a share of the phase-1 steps
REF_IMAGES = 300             # every held-out digit (mimflow_core.data.DIGITS_TEST_SIZE)


@dataclass(frozen=True)
class Model:
    """One phase-1 training of the demo."""

    name: str
    args: tuple[str, ...]          # train options beyond the recipe
    mask_ratio: str | None         # its Table 5a row (None: not a row)
    role: str                      # what it is for, said in the report


MODELS = (
    Model("mimflow", ("--mask-ratio", "0.4-0.6"), "0.4-0.6", "MIMFlow: Table 5a's main row, Figures 4-6"),
    Model("mimflow-seed1", ("--mask-ratio", "0.4-0.6", "--seed", "1"), "0.4-0.6",
          "MIMFlow again with seed 1: the run-to-run spread every comparison is read against"),
    Model("e2e-nomask", ("--variant", "e2e-nomask"), "none", "joint training without masking: Table 5a's 'none' row"),
    Model("starflow", ("--variant", "starflow"), None,
          "STARFlow-like two-stage baseline (unmasked autoencoder, then the flow on its frozen latents, each stage as "
          "many steps as MIMFlow's joint training): Figures 4 and 5"),
)
# --full: the rest of Table 5a's mask-ratio sweep
FULL_MODELS = tuple(Model(f"mask-{r}", ("--mask-ratio", r), r, f"Table 5a's {r} row")
                    for r in ("0.2-0.4", "0.6-0.8", "mix"))
# The starflow baseline runs twice the steps (autoencoder, then flow), each about half a joint step (measured:
# 881 + 881 of them took as long as 881 joint steps): every model costs the same.
STEPS_FACTOR = {"starflow": 2}
# Worker-seconds of everything but training and Inception, measured on 2 cores (2026-12: 124 s, start-ups
# included): jacobian x2, probe, umap (numba's first compile included); and ~4 s of start-up per other process.
ANALYSIS_CORE_S = 150.0
STARTUP_CORE_S = 4.0
# What an Inception process (fid, evaluate, ref-stats) spends beyond its images at the measured rate: loading the
# network, sampling or reconstructing, writing. Measured 2026-12-03: each 110-sample fid took 49-58 s where its
# images account for 31 s, ref-stats 119 s for 86 s; without this term a 20-minute plan took 21.1 min.
INCEPTION_START_CORE_S = 20.0
RECIPES = Path(__file__).resolve().parents[1] / "analyses"
# Table 10 times the flow per token count: a benchmark (benchmarks/flow_tokens.py), not part of the demo.
DEMO_RECIPES = ("fig4_umap", "fig5_jacobian", "fig6_probe", "tab5a_masking")


@dataclass(frozen=True)
class Costs:
    """What one worker spends on this machine: seconds per training step of the demo preset, Inception images per second."""

    step_s: float
    inception_images_s: float
    threads: int

    @classmethod
    def measure(cls, threads: int, jobs: int = 1) -> "Costs":
        """Time training steps and an Inception batch in ``jobs`` processes at once, ``threads`` threads each.

        The workers share memory bandwidth and caches, so one process timed alone underestimates a step
        (measured: 0.41 s alone against 0.47-0.51 s beside a second worker, which put a 20-minute plan at
        23 minutes). The slowest worker's figures are kept.
        """
        import multiprocessing
        import queue

        ctx = multiprocessing.get_context("spawn")
        barrier, results = ctx.Barrier(jobs), ctx.Queue()
        procs = [ctx.Process(target=_measure_worker, args=(threads, barrier, results)) for _ in range(jobs)]
        for proc in procs:
            proc.start()
        measured: list = []
        while len(measured) < jobs:
            try:
                measured.append(results.get(timeout=2))
            except queue.Empty:
                died = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
                if died:  # killed without a word (out of memory, a signal): the others wait at the barrier
                    for proc in procs:
                        proc.terminate()
                    raise MIMFlowError(f"demo: a process measuring this machine's costs died (exit {died[0]})")
        for proc in procs:
            proc.join()
        failures = [item for item in measured if isinstance(item, str)]
        if failures:
            raise MIMFlowError(f"demo: measuring this machine's costs failed: {failures[0]}")
        return cls(max(step for step, _ in measured), min(images for _, images in measured), threads)


def _measure_worker(threads: int, barrier, results) -> None:
    """One worker of :meth:`Costs.measure`: puts ``(step_s, images_s)``, or the error's text."""
    try:
        results.put(_time_one_worker(threads, barrier))
    except BaseException as error:  # the parent reports it; the other workers must not wait at the barrier
        barrier.abort()
        results.put(f"{type(error).__name__}: {error}")


def _time_one_worker(threads: int, barrier) -> tuple[float, float]:
    """6 training steps after two warm-ups, then one 8-image Inception batch.

    The barrier lines the workers' timed stretches up, so each is timed while the others work too.
    """
    import tempfile

    import torch

    from mimflow_core.distributed import Process
    from mimflow_core.train import Trainer, TrainOptions
    from mimflow_lab.metrics import load_inception

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        opts = TrainOptions(out=tmp, preset=PRESET, steps=8, evaluate=False)
        trainer = Trainer(opts.resolved(), Process(0, 1, torch.device("cpu")))
        trainer._enter_stage(trainer.stages[0])
        images, labels = next(trainer.batches())
        for _ in range(2):
            trainer.train_step(images, labels)
        barrier.wait()
        t = time.perf_counter()
        for _ in range(6):
            trainer.train_step(images, labels)
        step_s = (time.perf_counter() - t) / 6
    inception, _ = load_inception(None, device="cpu")
    batch = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)
    with torch.no_grad():
        inception(batch[:1])
        barrier.wait()
        t = time.perf_counter()
        inception(batch)
    return step_s, 8 / (time.perf_counter() - t)


@dataclass(frozen=True)
class Budget:
    """Work sizes derived from the time budget and the measured costs."""

    minutes: float
    steps: int            # phase-1 steps per model
    gan_steps: int        # phase-2 steps of the main model
    fid_samples: int      # samples (and reconstructions) per FID evaluation; also the real-digit ceiling's count
    jacobian_samples: int
    umap_samples: int
    probe_mask_ratios: str  # inference mask ratios of the probe
    probe_seeds: str
    full: bool
    jobs: int
    costs: Costs

    @property
    def models(self) -> tuple[Model, ...]:
        return MODELS + FULL_MODELS if self.full else MODELS

    @classmethod
    def plan(cls, minutes: float, costs: Costs, jobs: int = 2, full: bool = False) -> "Budget":
        """Split ``minutes`` x ``jobs`` worker-seconds: analyses first, 15 % for Inception, the rest for training.

        The smoke mode (``minutes <= 3``, what CI runs) keeps every stage but shrinks each to a few seconds.
        """
        check_minutes(minutes)
        smoke = minutes <= 3
        models = MODELS + FULL_MODELS if full else MODELS
        core_s = 0.95 * minutes * 60 * jobs   # measured: workers were busy 94.5 % of a 16-minute run
        fixed = (0.25 if smoke else 1.0) * ANALYSIS_CORE_S + STARTUP_CORE_S * (3 * len(models) + 10)
        rows = sum(m.mask_ratio is not None for m in models)
        evaluations = len(models) + rows + 2   # gFID per model, rFID per Table 5a row, the untrained, real digits
        fid_samples = int(0.15 * max(core_s - fixed, 0) * costs.inception_images_s / evaluations)
        fid_samples = max(10, min(1000, fid_samples - fid_samples % 10))
        inception_s = ((fid_samples * evaluations + REF_IMAGES) / costs.inception_images_s
                       + INCEPTION_START_CORE_S * (evaluations + 1))
        step_units = len(models) + GAN_STEP_FRACTION * 0.5   # a phase-2 step trains only the decoder
        steps = int(max(core_s - fixed - inception_s, 0) / (costs.step_s * step_units))
        steps = max(10, min(5000, steps))
        return cls(minutes, steps=steps, gan_steps=max(5, int(GAN_STEP_FRACTION * steps)), fid_samples=fid_samples,
                   jacobian_samples=8 if smoke else 32, umap_samples=100 if smoke else 300,
                   probe_mask_ratios="0" if smoke else "0,0.5", probe_seeds="0" if smoke else "0,1,2",
                   full=full, jobs=jobs, costs=costs)


def check_minutes(minutes: float) -> None:
    if not math.isfinite(minutes) or minutes <= 0:
        raise MIMFlowError(f"--minutes {minutes}: must be a positive number")


@dataclass
class Stage:
    name: str
    done: Path                                # the stage is complete when this file exists
    args: list[str] | None = None             # mimflow-lab arguments, run as a worker process
    call: Callable[[], None] | None = None    # or quick in-process work (writing an input file)
    needs: tuple[str, ...] = ()               # stages that must be complete first

    @property
    def command(self) -> str:
        return "mimflow-lab " + shlex.join(self.args) if self.args else f"(in-process: {self.name})"

    def log(self, out: Path) -> Path:
        """Where a worker stage's output goes: ``<out>/logs/<name without its parenthesis>.log``."""
        return out / "logs" / (self.name.split(" (")[0].replace(" ", "-") + ".log")


def _train(out: Path, model: Model, budget: Budget) -> Stage:
    run = out / "runs" / model.name
    steps = budget.steps * STEPS_FACTOR.get(model.name, 1)
    stages = ["--ae-steps", str(budget.steps)] if model.name in STEPS_FACTOR else []
    args = ["train", *RECIPE, "--out", str(run), "--steps", str(steps), *stages,
            "--ckpt-every", str(max(10, steps // 4)), *model.args]
    if (run / "ckpt.pt").exists():
        args.append("--resume")
    return Stage(f"train {model.name}", run / "eval.json", args)


def plan(out: Path, budget: Budget) -> list[Stage]:
    """Every stage in priority order (trainings, then the analyses that end the run, then Inception work).

    ``needs`` says what each waits for; a free worker takes the first stage whose needs are done.
    """
    from mimflow_lab.demo_report import collect_tab5a, write_findings, write_readout

    runs, results, data = out / "runs", out / "results", out / "data"
    models = budget.models
    ckpt = {m.name: str(runs / m.name / "ckpt.pt") for m in models}
    ckpt["untrained"] = str(runs / "untrained" / "ckpt.pt")
    trained = lambda name: f"train {name}"  # noqa: E731
    stages = [_train(out, m, budget) for m in models]
    gan = Stage("train mimflow-gan", runs / "mimflow-gan" / "eval.json",
                ["train", "--phase", "2", "--init", ckpt["mimflow"], "--out", str(runs / "mimflow-gan"),
                 "--steps", str(budget.gan_steps), "--sample-cfg", f"{GRID_CFG:g}",
                 *(["--resume"] if (runs / "mimflow-gan" / "ckpt.pt").exists() else [])],
                needs=(trained("mimflow"),))
    ref, real = results / "ref" / "ref.npz", data / "real-train-digits.npz"
    rows = [m.name for m in models if m.mask_ratio is not None]
    stages += [
        gan,
        Stage("probe (Figure 6)", results / "probe" / "probe.json",
              ["probe", *(ckpt[name] for name in rows), "--depths", "all", "--mask-ratio", budget.probe_mask_ratios,
               "--seeds", budget.probe_seeds, "--pixel-baseline", "--cache", str(out / "cache"),
               "--out", str(results / "probe")], needs=tuple(trained(name) for name in rows)),
        Stage("umap (Figure 4)", results / "umap" / "umap.json",
              ["umap", ckpt["starflow"], "--compare", ckpt["mimflow"], "--compare", ckpt["mimflow-seed1"],
               "--what", "latent", "--samples", str(budget.umap_samples), "--cache", str(out / "cache"),
               "--out", str(results / "umap")],
              needs=(trained("starflow"), trained("mimflow"), trained("mimflow-seed1"))),
        *(Stage(f"jacobian {name} (Figure 5)", results / sub / "jacobian.json",
                ["jacobian", ckpt[name], "--compare", ckpt["starflow"], "--samples", str(budget.jacobian_samples),
                 "--batch-size", "32", "--out", str(results / sub)], needs=(trained(name), trained("starflow")))
          for name, sub in (("mimflow", "jacobian"), ("mimflow-seed1", "jacobian-seed1"))),
        Stage("held-out and real digits", real, call=lambda: write_digit_batches(data, budget.fid_samples)),
        Stage("reference batch (held-out digits)", ref,
              ["ref-stats", str(data / "heldout-digits.npz"), "--out", str(ref.parent)], needs=("held-out and real digits",)),
        Stage("untrained baseline", Path(ckpt["untrained"]),
              call=lambda: save_untrained(Path(ckpt["mimflow"]), Path(ckpt["untrained"])),
              needs=(trained("mimflow"),)),
        Stage("real digits vs reference (ceiling)", results / "fid" / "real-digits" / "metrics.json",
              ["evaluate", str(ref), str(real), "--out", str(results / "fid" / "real-digits")],
              needs=("reference batch (held-out digits)",)),
    ]
    fid_args = ["--samples", str(budget.fid_samples), "--batch-size", "50", "--ref", str(ref)]
    for name in [m.name for m in models] + ["untrained"]:
        target = results / "fid" / f"{name}-gfid"
        stages.append(Stage(f"gfid {name}", target / "metrics.json",
                            ["fid", ckpt[name], *fid_args, "--cfg", f"{FID_CFG:g}",
                             "--save-npz", str(target / "samples.npz"), "--out", str(target)],
                            needs=("reference batch (held-out digits)",
                                   trained(name) if name != "untrained" else "untrained baseline")))
    for name in rows:
        target = results / "fid" / f"{name}-rfid"
        stages.append(Stage(f"rfid {name}", target / "metrics.json",
                            ["fid", ckpt[name], *fid_args, "--rfid", "digits", "--out", str(target)],
                            needs=("reference batch (held-out digits)", trained(name))))
    gfids = tuple(s.name for s in stages if s.name.startswith("gfid "))
    stages += [
        Stage("sample readout", results / "readout" / "readout.json",
              call=lambda: write_readout(results, [m.name for m in models] + ["untrained"]), needs=gfids),
        Stage("Table 5a", results / "tab5a" / "tab5a.json", call=lambda: collect_tab5a(out, budget),
              needs=("probe (Figure 6)", "real digits vs reference (ceiling)", *gfids,
                     *(s.name for s in stages if s.name.startswith("rfid ")))),
        Stage("findings", results / "findings.json", call=lambda: write_findings(results),
              needs=("probe (Figure 6)", "umap (Figure 4)", "jacobian mimflow (Figure 5)",
                     "jacobian mimflow-seed1 (Figure 5)")),
    ]
    return stages


def write_digit_batches(data: Path, real_count: int) -> None:
    """Two ADM image npz files at 32 px: every held-out digit (the reference), and ``real_count`` training digits.

    The training digits, class-balanced and seeded, are real digits the reference does not hold: what they
    score against the reference is the best a generator can hope for at the same sample count.
    """
    import torch

    from mimflow_core.data import load_dataset
    from mimflow_lab.depth_features import select_indices
    from mimflow_lab.metrics import to_uint8

    for split, name, count in (("test", "heldout-digits", None), ("train", "real-train-digits", real_count)):
        dataset = load_dataset("digits", 32, split)
        labels = np.asarray(dataset.labels)
        keep = select_indices(labels, count, None, seed=0)
        images = to_uint8(torch.stack([dataset[int(i)][0] for i in keep])).numpy()
        atomic_write(data / f"{name}.npz", lambda f: np.savez(f, arr_0=images, arr_1=labels[keep].astype(np.int64)))


def save_untrained(like: Path, path: Path, seed: int = 0) -> None:
    """A freshly initialised model with ``like``'s architecture: the FID a trained model must beat."""
    import torch

    from mimflow_core.checkpoint import build_model, load_checkpoint, save_checkpoint

    stored = load_checkpoint(like)
    torch.manual_seed(seed)
    model = build_model(stored["config"], like)
    save_checkpoint(path, model, step=0, phase=1, train={**stored.get("train", {}), "variant": "untrained"})


def run_stages(stages: list[Stage], out: Path, jobs: int, threads: int) -> dict[str, float | None]:
    """Run every stage not done yet, up to ``jobs`` worker processes at once; returns wall seconds per stage.

    A worker's output goes to ``<out>/logs/<stage>.log``. When a stage fails, the ones running beside it
    finish (their work is kept for the rerun) and the demo stops with the failed stage's log named.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TQDM_MININTERVAL": "10", "MIMFLOW_CACHE": os.environ.get("MIMFLOW_CACHE", str(out / "cache"))}
    index = {s.name: i for i, s in enumerate(stages, 1)}
    timings: dict[str, float | None] = {}
    pending = []
    for stage in stages:
        if stage.done.exists():
            click.echo(f"[{index[stage.name]}/{len(stages)}] {stage.name}: done earlier ({stage.done})", err=True)
            timings[stage.name] = None
        else:
            pending.append(stage)
    running: dict[str, tuple[subprocess.Popen, float, Path]] = {}
    failed: list[tuple[str, Path]] = []
    while pending or running:
        ready = [s for s in pending if not failed and all(n in timings for n in s.needs)]
        for stage in ready:
            if stage.call is None and len(running) >= jobs:
                continue
            pending.remove(stage)
            tag = f"[{index[stage.name]}/{len(stages)}] {stage.name}"
            t0 = time.time()
            if stage.call is not None:
                stage.call()
                timings[stage.name] = round(time.time() - t0, 1)
                click.echo(f"{tag}: done", err=True)
                continue
            log = stage.log(out)
            click.echo(f"{tag}: {stage.command}", err=True)
            try:
                log.parent.mkdir(parents=True, exist_ok=True)
                f = open(log, "w")
            except OSError as e:  # a full disk or a read-only --out: one line, the finished stages are intact
                raise write_error(log, e) from None
            with f:
                proc = subprocess.Popen([sys.executable, "-m", "mimflow_lab.cli", *stage.args], stdout=f,
                                        stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
            running[stage.name] = (proc, t0, log)
        if not running:
            if pending and not failed:  # nothing runs and nothing can start: a dependency is missing
                raise MIMFlowError(f"demo: stages {', '.join(s.name for s in pending)} wait on stages not planned")
            break
        time.sleep(0.5)
        for name, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            tag = f"[{index[name]}/{len(stages)}] {name}"
            if proc.returncode == 0:
                timings[name] = round(time.time() - t0, 1)
                click.echo(f"{tag}: done in {timings[name]:.0f} s", err=True)
            else:
                failed.append((name, log))
                last = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                click.echo(f"{tag}: failed (exit {proc.returncode}): {last[0][:300]}", err=True)
    if failed:
        names, logs = (", ".join(str(x) for x in column) for column in zip(*failed))
        raise MIMFlowError(f"demo: {names} failed; see {logs}; rerun the same command to resume")
    return timings


def run_demo(out: str | Path, minutes: float, jobs: int = 2, full: bool = False) -> Path:
    """Run (or resume) every stage, redraw the figures, and write ``report.md``; returns its path."""
    from mimflow_lab.demo_report import render_report
    from mimflow_lab.recipes import load_recipes, redraw_all

    out = Path(out)
    started = time.time()
    threads = max(1, (os.cpu_count() or 1) // jobs)
    budget = budget_for(out, minutes, jobs, full, threads)
    click.echo(f"demo: {budget.steps} steps per model, {budget.fid_samples} samples per FID "
               f"({budget.costs.step_s:.2f} s/step, {budget.costs.inception_images_s:.1f} Inception images/s "
               f"per job, {jobs} jobs x {threads} threads)", err=True)
    stages = plan(out, budget)
    timings = run_stages(stages, out, jobs, threads)
    recipes = [r for r in load_recipes(RECIPES) if r.name in DEMO_RECIPES]
    drawn = redraw_all(recipes, out / "results", out / "figures")
    report = out / "report.md"
    text = render_report(out, budget, stages, drawn, timings, time.time() - started)
    atomic_write(report, lambda f: f.write(text), mode="w")
    click.echo(f"wrote {report}", err=True)
    return report


def budget_for(out: Path, minutes: float, jobs: int, full: bool, threads: int) -> Budget:
    """The budget of this demo directory: measured and planned once, then reused, so a rerun resumes the same plan."""
    path = out / "budget.json"
    if path.exists():
        import json

        stored = json.loads(path.read_text())
        if stored.get("minutes") == minutes and stored.get("jobs") == jobs and stored.get("full") == full:
            costs = Costs(**stored["costs"])
            return Budget.plan(minutes, costs, jobs, full)
        raise MIMFlowError(f"{path}: this demo was planned with --minutes {stored.get('minutes')} --jobs "
                           f"{stored.get('jobs')}{' --full' if stored.get('full') else ''}; rerun with those or use "
                           "another --out")
    check_minutes(minutes)  # before the ~20 s measurement
    costs = Costs.measure(threads, jobs)
    write_json(path, {"minutes": minutes, "jobs": jobs, "full": full, "costs": vars(costs)})
    return Budget.plan(minutes, costs, jobs, full)
