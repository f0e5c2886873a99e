"""Training-step time and peak memory: the tiny and small presets, and K = 64 / 128 / 256 latent tokens.

The paper's Table 4 reports that its 128-token model trains with 28% less
memory and 10% faster than a 256-token one. Here the token count is varied
on the ``small`` preset with 4-pixel patches (N = 256 patches, as a 256 px
image with 16 px patches), everything else fixed, and the ratios to K = 256
are printed. Each configuration runs the real phase-1 ``Trainer.train_step``
in its own process (so peak memory is not shared): peak RSS growth on CPU,
``torch.cuda.max_memory_allocated`` on GPU.

    python benchmarks/train_step.py [--batch-size 8] [--steps 5] [--device cpu] [--out results/train_step.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "tiny": {"preset": "tiny"},
    "small": {"preset": "small"},
    "small-p4-K64": {"preset": "small", "patch_size": 4, "tokens": 64},
    "small-p4-K128": {"preset": "small", "patch_size": 4, "tokens": 128},
    "small-p4-K256": {"preset": "small", "patch_size": 4, "tokens": 256},
}


def run_case(name: str, batch_size: int, steps: int, device: str) -> dict:
    """Time ``steps`` train steps after 2 warm-up steps, in this process."""
    import torch

    from mimflow_core.distributed import Process, resolve_device
    from mimflow_core.train import Trainer, TrainOptions

    case = dict(CASES[name])
    patch_size = case.pop("patch_size", None)

    class CaseTrainer(Trainer):
        def _new_config(self, aux_dim):
            config = super()._new_config(aux_dim)
            if patch_size is None:
                return config
            from mimflow_core.hog import hog_dim
            return dataclasses.replace(config, patch_size=patch_size, aux_dim=hog_dim(patch_size))

    procs = Process(0, 1, torch.device(resolve_device(device)))
    import_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # torch + data loaded, no model yet
    with tempfile.TemporaryDirectory() as out:
        opts = TrainOptions(out=out, batch_size=batch_size, steps=steps + 2, evaluate=False, aux="hog",
                            device=device, **case)
        trainer = CaseTrainer(opts, procs)
        if patch_size is not None:  # the aux targets must follow the patch size the model now has
            from mimflow_core.losses import build_aux_targets
            c = trainer.model.config
            trainer.loss.aux_targets = build_aux_targets("hog", c.patch_size,
                                                         c.image_size // c.patch_size).to(procs.device)
        trainer._enter_stage(trainer.stages[0])
        images, labels = next(trainer.batches())
        sync = torch.cuda.synchronize if procs.device.type == "cuda" else (lambda: None)
        for _ in range(2):
            trainer.train_step(images, labels)
        sync()
        if procs.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            trainer.train_step(images, labels)
            sync()
            times.append(time.perf_counter() - t)
        c = trainer.model.config
        peak = (torch.cuda.max_memory_allocated() / 2**20 if procs.device.type == "cuda"
                else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - import_rss) / 1024)
        return {"case": name, "device": str(procs.device), "batch_size": batch_size, "image_size": c.image_size,
                "patches": c.num_patches, "tokens": c.num_tokens, "latent_dim": c.latent_dim,
                "parameters_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
                "step_ms_median": 1000 * statistics.median(times), "step_ms_all": [1000 * t for t in times],
                "peak_memory_MiB": peak, "memory_kind": "cuda max_memory_allocated" if procs.device.type == "cuda"
                else "peak RSS growth over the process before the model was built"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--out", default="results/train_step.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.batch_size, args.steps, args.device)))
        return
    rows = []
    for name in args.cases:
        proc = subprocess.run([sys.executable, __file__, "--one", name, "--batch-size", str(args.batch_size),
                               "--steps", str(args.steps), "--device", args.device],
                              capture_output=True, text=True, env={**os.environ})
        if proc.returncode:
            sys.exit(f"{name} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1]['step_ms_median']:.0f} ms/step, {rows[-1]['peak_memory_MiB']:.0f} MiB", file=sys.stderr)
    by_name = {r["case"]: r for r in rows}
    ratios = {}
    if "small-p4-K256" in by_name:
        ref = by_name["small-p4-K256"]
        for k in (64, 128):
            r = by_name.get(f"small-p4-K{k}")
            if r:
                ratios[f"K{k}_vs_K256"] = {"time": r["step_ms_median"] / ref["step_ms_median"],
                                           "memory": r["peak_memory_MiB"] / ref["peak_memory_MiB"]}
    result = {"rows": rows, "ratios": ratios,
              "paper_table4": {"K128_vs_K256": {"time": 1 / 1.10, "memory": 37.6 / 52.3}}}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from mimflow_core.atomic import write_json
    write_json(args.out, result)
    print("| case | N | K | params (M) | ms/step | peak memory (MiB) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['patches']} | {r['tokens']} | {r['parameters_M']:.1f} | "
              f"{r['step_ms_median']:.0f} | {r['peak_memory_MiB']:.0f} |")
    for name, v in ratios.items():
        print(f"{name}: time x{v['time']:.2f}, memory x{v['memory']:.2f} (paper K128/K256: time x0.91, memory x0.72)")


if __name__ == "__main__":
    main()
