#!/usr/bin/env bash
# The one prepared GPU check (run through the device tool, or by hand on any CUDA machine):
#   1. a CUDA bf16 training run of a few steps (the trainer autocasts to bf16 on CUDA);
#   2. the same run under torchrun (NCCL backend, one process per visible GPU);
#   3. `fid --rfid` and `jacobian` on cuda against the same commands on cpu, numbers compared;
#   4. the GPU benchmarks (training step, flow token count).
# Everything it writes goes under $OUT (default: results/gpu_check); each step's output is printed.
# A failed step is reported and the script goes on, so one run shows every problem; the exit code
# is the number of failed steps.
#
#     OUT=/tmp/gpu bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
DEV=${DEVICE:-cuda}  # DEVICE=cpu runs the same steps on a CPU machine (a dry run of this script)
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$OUT"
failed=0

step() {  # step NAME COMMAND...: run, time and report one step
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@"; then echo "=== $name: ok ($((SECONDS - t0)) s)"
    else echo "=== $name: FAILED rc=$? ($((SECONDS - t0)) s)"; failed=$((failed + 1)); fi
}

if ! "$PY" -c "import mimflow_lab" 2>/dev/null; then
    step install "$PY" -m pip install -q --no-deps -e .
fi
LAB=("$PY" -m mimflow_lab.cli)
"$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(" ", i, torch.cuda.get_device_name(i), "bf16", torch.cuda.is_bf16_supported())
EOF
GPUS=$("$PY" -c "import torch; print(max(1, torch.cuda.device_count()))")

step train-bf16 "${LAB[@]}" train --preset tiny --data digits --steps 30 --log-every 10 --ckpt-every 30 \
    --device "$DEV" --out "$OUT/train"
step torchrun-nccl "$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" -m mimflow_lab.cli train \
    --preset tiny --data digits --steps 20 --log-every 10 --ckpt-every 20 --no-eval --out "$OUT/train-ddp"
CKPT=$OUT/train/ckpt.pt

devices=(cpu); [ "$DEV" != cpu ] && devices+=("$DEV")
for dev in "${devices[@]}"; do
    step "jacobian-$dev" "${LAB[@]}" jacobian "$CKPT" --samples 16 --device "$dev" --out "$OUT/jacobian-$dev"
    step "fid-$dev" "${LAB[@]}" fid "$CKPT" --rfid digits --samples 200 --batch-size 100 --device "$dev" \
        --out "$OUT/fid-$dev"
done
step compare-cpu-cuda "$PY" - "$OUT" "$DEV" <<'EOF'
"""cuda against cpu: Jacobian σ per sample (the flow runs in fp32 there) and the ADM metrics."""
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
bad = 0
jc, jg = (json.loads((out / f"jacobian-{d}" / "jacobian.json").read_text()) for d in ("cpu", sys.argv[2]))
for key in ("sigma_max", "sigma_min", "kappa"):
    c = [r[key] for r in jc["models"][0]["samples"]]
    g = [r[key] for r in jg["models"][0]["samples"]]
    rel = max(abs(a - b) / abs(a) for a, b in zip(c, g))
    print(f"jacobian {key}: max relative cpu/cuda difference {rel:.2e}")
    bad += rel > 1e-3
mc, mg = (json.loads((out / f"fid-{d}" / "metrics.json").read_text()) for d in ("cpu", sys.argv[2]))
for key in ("inception_score", "fid", "sfid", "precision", "recall"):
    if isinstance(mc.get(key), float):
        print(f"fid {key}: cpu {mc[key]:.4f} cuda {mg[key]:.4f}")
        bad += abs(mc[key] - mg[key]) > 1e-2 * max(1.0, abs(mc[key]))
sys.exit(bad)
EOF

step bench-train-step "$PY" benchmarks/train_step.py --device "$DEV" --steps 5 --out "$OUT/train_step.json"
step bench-flow-tokens "$PY" benchmarks/flow_tokens.py --device "$DEV" --json "$OUT/flow_tokens.json"
echo "=== $failed step(s) failed"
exit "$failed"
