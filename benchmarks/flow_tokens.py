"""How the latent flow's cost grows with the token count K (paper Table 10).

For K = 64, 128, 256 at the same per-token dimension D, measures one training
step of the flow (forward + backward of the NLL), the activation memory that
step keeps for backward (bytes of tensors saved by autograd; on CUDA also the
allocator's peak), and the time of reverse sampling (token by token with a KV
cache). Prints each as a ratio to K = 128 beside the paper's H20 figures.

    python benchmarks/flow_tokens.py --json results/tab10/tokens.json   # CPU-sized flow
    python benchmarks/flow_tokens.py --preset L --device cuda --batch 32
"""
from __future__ import annotations

import argparse
import time

import torch

from mimflow_core.atomic import write_json
from mimflow_core.config import get_preset
from mimflow_core.flow import LatentFlow
from mimflow_core.model import MIMFlow
from mimflow_lab.tables import PAPER_TAB10 as PAPER  # Table 10: train ms/iter, s/sample



def saved_activation_bytes(fn) -> int:
    """Bytes autograd keeps for backward while ``fn`` runs (storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def timed(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure(config, batch: int, device: str, repeats: int, sample_batch: int) -> dict:
    torch.manual_seed(0)
    flow = LatentFlow(config).to(device)
    for block in flow.blocks:  # a trained flow is not the identity; the cost is the same either way
        torch.nn.init.normal_(block.proj_out.weight, std=0.01)
    z = torch.randn(batch, config.num_tokens, config.latent_dim, device=device)
    y = torch.randint(0, config.num_classes, (batch,), device=device)
    model = MIMFlow.__new__(MIMFlow)  # only the NLL formula is needed; reuse it without building the autoencoder
    torch.nn.Module.__init__(model)
    model.config, model.flow = config, flow

    def train_step():
        loss = model.nll(z, y)["loss"]
        loss.backward()
        return loss

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _, act_bytes = saved_activation_bytes(lambda: model.nll(z, y)["loss"])
    step = timed(train_step, repeats, device)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    eps = torch.randn(sample_batch, config.num_tokens, config.latent_dim, device=device)
    labels = torch.randint(0, config.num_classes, (sample_batch,), device=device)
    flow.eval()
    sample = timed(lambda: flow.reverse(eps, labels, cfg=2.0), max(1, repeats // 2), device)
    return {"step_s": step, "activation_bytes": act_bytes, "cuda_peak": peak, "sample_s": sample / sample_batch}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="flow architecture to time (tiny: width 256 on CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8, help="training batch")
    ap.add_argument("--sample-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latent-dim", type=int, default=64, help="D per token, fixed across K (paper: 64)")
    ap.add_argument("--json", help="also write the measurements here (Table 10's result file)")
    args = ap.parse_args()
    overrides = {"latent_dim": args.latent_dim}
    if args.preset == "tiny":
        overrides.update(flow_width=256, flow_heads=4, flow_blocks=(2, 2, 2, 4))
    results = {}
    for K in (64, 128, 256):
        config = get_preset(args.preset, num_tokens=K, **overrides)
        results[K] = measure(config, args.batch, args.device, args.repeats, args.sample_batch)
        r = results[K]
        print(f"K={K:4d}: train step {r['step_s'] * 1e3:8.1f} ms  activations {r['activation_bytes'] / 2**20:8.1f} MiB"
              + (f"  cuda peak {r['cuda_peak'] / 2**20:8.1f} MiB" if r["cuda_peak"] else "")
              + f"  sampling {r['sample_s'] * 1e3:8.1f} ms/sample", flush=True)
    if args.json:
        rows = [{"K": K, **r} for K, r in results.items()]
        write_json(args.json, {"rows": rows, "preset": args.preset, "batch": args.batch, "device": args.device,
                               "latent_dim": args.latent_dim, "paper_table10": PAPER})
    base = results[128]
    print(f"\nratios to K=128 ({args.preset} flow, batch {args.batch}, {args.device}):")
    print(f"{'K':>5} {'train':>8} {'memory':>8} {'sample':>8}   paper Table 10 (train / sample)")
    for K, r in results.items():
        paper = f"{PAPER[K][0] / PAPER[128][0]:.2f} / {PAPER[K][1] / PAPER[128][1]:.2f}" if K in PAPER else "-"
        print(f"{K:>5} {r['step_s'] / base['step_s']:8.2f} {r['activation_bytes'] / base['activation_bytes']:8.2f} "
              f"{r['sample_s'] / base['sample_s']:8.2f}   {paper}")


if __name__ == "__main__":
    main()
