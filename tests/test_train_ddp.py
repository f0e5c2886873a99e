"""torchrun with 2 Gloo processes computes the same training steps as 1 process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from mimflow_core.checkpoint import load_checkpoint
from mimflow_core.config import ModelConfig
from mimflow_core.model import MIMFlow
from mimflow_core.train import TrainOptions, train


def test_two_gloo_processes_match_one_process(tmp_path):
    args = ["--steps", "3", "--batch-size", "8", "--log-every", "1", "--no-eval", "--device", "cpu",
            "--lr", "1e-3", "--warmup-steps", "0", "--flow-weight", "1", "--seed", "5"]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mimflow_lab.cli", "train", "--out", str(tmp_path / "ddp"), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    train(TrainOptions(out=str(tmp_path / "single"), steps=3, batch_size=8, log_every=1, evaluate=False,
                       device="cpu", lr=1e-3, warmup_steps=0, flow_weight=1.0, seed=5))
    two, one = (load_checkpoint(tmp_path / name / "ckpt.pt") for name in ("ddp", "single"))
    assert two["train"]["world_size"] == 2 and one["train"]["world_size"] == 1
    torch.manual_seed(5)  # the trainer's initialisation, to show the weights really moved
    init = MIMFlow(ModelConfig.from_dict(one["config"])).state_dict()
    moved = []
    for key, weight in one["model"].items():
        torch.testing.assert_close(two["model"][key], weight, rtol=1e-4, atol=1e-5, msg=key)
        torch.testing.assert_close(two["ema"][key], one["ema"][key], rtol=1e-4, atol=1e-5, msg=key)
        moved.append((weight - init[key]).abs().max().item())
    assert sum(m > 1e-3 for m in moved) > 0.9 * len(moved)  # 3 AdamW steps at lr 1e-3 move ~all tensors
    # the logged (all-reduced) losses of the two runs agree too
    logs = [[json.loads(x) for x in (tmp_path / n / "log.jsonl").read_text().splitlines() if '"loss"' in x]
            for n in ("ddp", "single")]
    assert len(logs[0]) == len(logs[1]) == 3
    for a, b in zip(*logs):
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(b["loss"]))
