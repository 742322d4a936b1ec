"""Training throughput of ehrfm's GPT vs Hugging Face transformers' LlamaForCausalLM, same shape.

For each size, both models get the identical shape (n_layer, d_model, heads, SwiGLU width, vocab,
context, batch, untied head, no biases, fp32 on CPU / bf16 autocast on CUDA) and the same
random token batch; one training step = forward + cross-entropy + backward + AdamW step, each
library's training path (ehrfm: the fused head + loss, `return_logits=False`, as ehrfm.train runs;
HF: logits, then F.cross_entropy).
Steps of the two models are interleaved (A B A B ...) so that load from other processes on a
shared machine hits both alike; the median step time is reported. Rows are single sequences
(HF has no block-diagonal packing), so this measures the plain causal path; the last column is
ehrfm on packed rows (4 subjects per row, block-diagonal mask), for reference.

    python benchmarks/train_throughput.py            # 3 sizes, CPU (or CUDA when present)
    python benchmarks/train_throughput.py --steps 20 --threads 2

On CUDA it also prints the MFU of the largest size in bf16: model FLOPs (ehrfm.shapes
flops_per_token x tokens/s) over the GPU's peak (--peak-tflops, default 989 = H100 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch

from ehrfm.config import ModelConfig
from ehrfm.export import hf_llama, timed, training_step
from ehrfm.model import GPT
from ehrfm.shapes import flops_per_token, n_params

SIZES_CPU = [  # (n_layer, d_model, n_head)
    (2, 64, 4),
    (4, 128, 4),
    (6, 256, 8),
]
SIZES_CUDA = [(6, 512, 8), (12, 768, 12), (24, 1024, 16)]


def bench_size(shape, args, device, autocast) -> dict:
    L, d, H = shape
    cfg = ModelConfig(n_layer=L, d_model=d, n_head=H, context=args.context, vocab_size=args.vocab)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (args.batch, cfg.context), generator=g).to(device)
    targets = torch.roll(idx, -1, dims=1)
    packed_seg = (torch.arange(cfg.context) * 4 // cfg.context).expand(args.batch, -1).contiguous().to(device)
    torch.manual_seed(0)
    ours = GPT(cfg).to(device).train()
    hf = hf_llama(cfg).to(device).train()
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in ours.parameters())
    steps = {
        "ehrfm": training_step(ours, "ours", idx, targets, None, autocast),
        **({"ehrfm_compiled": training_step(torch.compile(GPT(cfg).to(device)), "ours", idx, targets, None, autocast)} if args.compile else {}),
        "hf": training_step(hf, "hf", idx, targets, None, autocast),
        "ehrfm_packed": training_step(ours, "ours", idx, targets, packed_seg, autocast),
    }
    times = {k: [] for k in steps}
    for _ in range(args.warmup):  # includes torch.compile's compilation when --compile
        for f in steps.values():
            f()
    for _ in range(args.steps):
        for k, f in steps.items():
            times[k].append(timed(f, device))
    tokens = args.batch * cfg.context
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    return {"cfg": cfg, "n_params": n_params(cfg), **tps}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=2048, help="a realistic EHR event vocabulary")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd ehrfm (compiles for minutes on CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak for MFU (H100 SXM: 989)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext
    sizes = SIZES_CUDA if cuda else SIZES_CPU
    if cuda:
        args.batch = max(args.batch, 16)
        args.context = max(args.context, 1024)
    print(f"device {device} ({'bf16 autocast' if cuda else 'fp32'}), threads {torch.get_num_threads()}, "
          f"batch {args.batch} x context {args.context}, vocab {args.vocab}, median of {args.steps} interleaved steps")
    print(f"{'shape (L, d, H)':>18} {'n_params':>10} {'ehrfm tok/s':>12} {'HF tok/s':>10} {'ratio':>6} {'ehrfm packed':>13}")
    results = []
    for shape in sizes:
        r = bench_size(shape, args, device, autocast)
        results.append(r)
        print(f"{str(shape):>18} {r['n_params']:>10,} {r['ehrfm']:>12,.0f} {r['hf']:>10,.0f} "
              f"{r['ehrfm'] / r['hf']:>6.2f} {r['ehrfm_packed']:>13,.0f}"
              + (f"  compiled {r['ehrfm_compiled']:,.0f} tok/s (ratio {r['ehrfm_compiled'] / r['hf']:.2f})" if args.compile else ""), flush=True)
    ratios = [r["ehrfm"] / r["hf"] for r in results]
    print(f"ratio ehrfm/HF: min {min(ratios):.2f}, geometric mean {statistics.geometric_mean(ratios):.2f} (goal >= 1.0 each)")
    if cuda:
        big = results[-1]
        mfu = flops_per_token(big["cfg"]) * big["ehrfm"] / (args.peak_tflops * 1e12)
        mfu_packed = flops_per_token(big["cfg"]) * big["ehrfm_packed"] / (args.peak_tflops * 1e12)
        print(f"MFU (bf16, largest size): {100 * mfu:.1f}% causal rows, {100 * mfu_packed:.1f}% packed rows "
              f"(peak {args.peak_tflops:g} TFLOP/s; goal >= 40%)")


if __name__ == "__main__":
    main()
