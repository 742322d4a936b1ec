"""The CUDA path, measured: attention-kernel and precision parity, throughput and MFU vs Hugging Face.

Run through `scripts/gpu_check.sh` on a machine with one GPU (at most ~5 minutes; it needs no
network). It prints one table per check:

1. xformers vs SDPA on packed rows (several subjects per row, block-diagonal causal attention):
   the same fp32 loss and gradients (tolerances below). Without xformers it says so and the
   rest runs on SDPA only.
2. bf16 autocast vs fp32: loss parity within BF16_LOSS_RTOL.
3. Training tokens/s (forward + loss + backward + AdamW step, median of interleaved steps) and
   MFU for ehrfm vs transformers' LlamaForCausalLM (attn_implementation "sdpa") of the identical
   shape, at (4, 256), (8, 512) and (12, 768), context 2048, bf16 autocast, each eager and under
   torch.compile, with peak GPU memory. Both models run the same unpacked causal rows (HF has no
   block-diagonal packing); ehrfm on packed rows, as `ehrfm train` runs, is a column of its own.
   MFU = ehrfm.shapes.flops_per_token x tokens/s over the detected GPU's dense bf16 peak.

    python scripts/gpu_check.py [--json OUT.json] [--budget-s 270]
    python scripts/gpu_check.py --device cpu --quick    # a CPU smoke run of the same code paths

Compiled measurements that would run past --budget-s are skipped and reported as skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ehrfm.config import ModelConfig  # noqa: E402
from ehrfm.export import hf_llama, timed, training_step  # noqa: E402
from ehrfm.model import GPT, attention_layout  # noqa: E402
from ehrfm.shapes import flops_per_token, n_params  # noqa: E402

SIZES = [(4, 256), (8, 512), (12, 768)]  # (n_layer, d_model); head dim 64
CONTEXT = 2048
# Tolerances: fp32 kernels differ only in summation order; bf16 keeps 8 mantissa bits.
KERNEL_LOSS_RTOL = 1e-5
KERNEL_GRAD_RTOL = 1e-3  # max |g_xformers - g_sdpa| over max |g_sdpa|, per tensor
BF16_LOSS_RTOL = 1e-2
# Dense bf16 peak FLOP/s (vendor datasheets, without sparsity), by a substring of the device name.
PEAK_BF16 = [
    ("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("H800", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
    ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 6000 Ada", 364e12), ("V100", 125e12),
]


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (given)"
    if device.type != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16:
        if key in name:
            return peak, f"{name}: {peak / 1e12:g} TFLOP/s dense bf16"
    return None, f"{name}: unknown peak (pass --peak-tflops)"


def packed_batch(batch: int, context: int, vocab: int, device, seed: int = 0):
    """Random tokens in rows of 1-6 segments each (subject boundaries), targets -100 at segment ends."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(3, vocab, (batch, context), generator=g)
    seg = torch.zeros(batch, context, dtype=torch.long)
    for b in range(batch):
        cuts = sorted(torch.randint(1, context, (int(torch.randint(0, 6, (1,), generator=g)),), generator=g).tolist())
        for c in cuts:
            seg[b, c:] += 1
    targets = torch.roll(idx, -1, dims=1)
    ends = torch.ones_like(seg, dtype=torch.bool)
    ends[:, :-1] = seg[:, 1:] != seg[:, :-1]
    targets[ends] = -100
    return idx.to(device), targets.to(device), seg.to(device)


def loss_and_grads(model, idx, targets, seg, autocast=contextlib.nullcontext):
    model.zero_grad(set_to_none=True)
    with autocast():
        _, loss = model(idx, targets, segment_ids=seg, return_logits=False)
    loss.backward()
    return float(loss.detach()), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()}


def check_kernels(device, vocab: int, has_xformers: bool, quick: bool) -> dict:
    L, d = (2, 128) if quick else SIZES[0]
    context = 256 if quick else CONTEXT
    cfg = ModelConfig(n_layer=L, d_model=d, n_head=d // 64, context=context, vocab_size=vocab)
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    idx, targets, seg = packed_batch(4, context, vocab, device)
    out = {"shape": [L, d], "context": context}
    model.attention_backend = "sdpa"
    assert attention_layout(seg, context, device, "sdpa").kind == "mask"
    loss_sdpa, g_sdpa = loss_and_grads(model, idx, targets, seg)
    out["loss_sdpa_fp32"] = loss_sdpa
    if has_xformers:
        kind = attention_layout(seg, context, device, "xformers").kind
        model.attention_backend = "xformers"
        loss_x, g_x = loss_and_grads(model, idx, targets, seg)
        grad_rel = max(float((g_x[n] - g_sdpa[n]).abs().max() / g_sdpa[n].abs().max().clamp_min(1e-30)) for n in g_sdpa)
        out.update(kernel=kind, loss_xformers_fp32=loss_x, loss_rel_diff=abs(loss_x - loss_sdpa) / abs(loss_sdpa),
                   grad_max_rel_diff=grad_rel)
        out["ok"] = kind == "xformers" and out["loss_rel_diff"] <= KERNEL_LOSS_RTOL and grad_rel <= KERNEL_GRAD_RTOL
    model.attention_backend = "auto"
    bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    loss_bf16, _ = loss_and_grads(model, idx, targets, seg, bf16)
    loss_fp32, _ = loss_and_grads(model, idx, targets, seg)
    out.update(loss_fp32=loss_fp32, loss_bf16=loss_bf16, bf16_rel_diff=abs(loss_bf16 - loss_fp32) / abs(loss_fp32))
    out["bf16_ok"] = out["bf16_rel_diff"] <= BF16_LOSS_RTOL
    return out


def measure(step, device, warmup: int, steps: int) -> tuple[float, float | None]:
    """(median seconds per step, peak GPU memory in GiB) of a step function (warmup includes compiling)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        times.append(timed(step, device))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return statistics.median(times), peak


def throughput(device, args, has_hf: bool, t_start: float) -> list[dict]:
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    sizes = [(2, 64), (2, 128)] if args.quick else SIZES
    context = 128 if args.quick else CONTEXT
    rows = []
    plans = [(shape, compiled) for compiled in (False, True) for shape in sizes]  # eager first: cheapest, always measured
    for (L, d), compiled in plans:
        cfg = ModelConfig(n_layer=L, d_model=d, n_head=max(1, d // 64), context=context, vocab_size=args.vocab)
        row = {"n_layer": L, "d_model": d, "n_params": n_params(cfg), "compiled": compiled, "tokens_per_step": args.batch * context}
        rows.append(row)
        if compiled and (args.no_compile or time.perf_counter() - t_start > args.budget_s * 0.55):
            row["skipped"] = "no --compile" if args.no_compile else "time budget"
            continue
        idx, targets, seg = packed_batch(args.batch, context, args.vocab, device, seed=1)
        plain_targets = torch.roll(idx, -1, dims=1)
        torch.manual_seed(0)
        ours = GPT(cfg).to(device).train()
        models = {"ehrfm": ours}
        if has_hf:
            models["hf"] = hf_llama(cfg).to(device).train()
            assert sum(p.numel() for p in models["hf"].parameters()) == sum(p.numel() for p in ours.parameters())
        if compiled:
            models = {k: torch.compile(m) for k, m in models.items()}
        runs = {"ehrfm": training_step(models["ehrfm"], "ours", idx, plain_targets, None, autocast),
                "ehrfm_packed": training_step(models["ehrfm"], "ours", idx, targets, seg, autocast)}
        if has_hf:
            runs["hf"] = training_step(models["hf"], "hf", idx, plain_targets, None, autocast)
        for name, step in runs.items():
            try:
                sec, peak = measure(step, device, args.warmup, args.steps)
                row[f"{name}_tok_s"] = row["tokens_per_step"] / sec
                row[f"{name}_peak_gib"] = peak
            except Exception as e:  # reported, never hidden: one failing variant must not end the check
                row[f"{name}_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        del models, runs, ours
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and contexts (a smoke run of the code paths)")
    ap.add_argument("--vocab", type=int, default=4096, help="event vocabulary (default 4096)")
    ap.add_argument("--batch", type=int, default=8, help="rows of `context` tokens per step (default 8)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    ap.add_argument("--budget-s", type=float, default=270.0, help="stop starting compiled measurements after ~55%% of this")
    ap.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak when the GPU is not recognised")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    return ap.parse_args()


def optional_backends(device: torch.device) -> tuple[bool, bool]:
    """(xformers usable, transformers installed), each absence said."""
    has_xformers = False
    if device.type == "cuda":
        try:
            import xformers.ops  # noqa: F401

            has_xformers = True
        except Exception as e:
            print(f"xformers: NOT available ({type(e).__name__}); measuring SDPA only")
    else:
        print("xformers: CUDA only; measuring SDPA only")
    try:
        import transformers  # noqa: F401

        has_hf = True
    except ImportError:
        has_hf = False
        print("transformers: NOT installed; no Hugging Face comparison")
    return has_xformers, has_hf


def print_kernels(k: dict, has_xformers: bool) -> None:
    """Tables 1 and 2: kernel and precision parity."""
    print(f"\n## 1. attention kernels on packed rows, fp32, shape {tuple(k['shape'])}, context {k['context']}")
    print("| check | value | tolerance | ok |\n|---|---|---|---|")
    if has_xformers:
        print(f"| kernel used | {k['kernel']} | xformers | {k['kernel'] == 'xformers'} |")
        print(f"| loss xformers vs SDPA, relative | {k['loss_rel_diff']:.2e} | {KERNEL_LOSS_RTOL:g} | {k['loss_rel_diff'] <= KERNEL_LOSS_RTOL} |")
        print(f"| gradients, max relative | {k['grad_max_rel_diff']:.2e} | {KERNEL_GRAD_RTOL:g} | {k['grad_max_rel_diff'] <= KERNEL_GRAD_RTOL} |")
    else:
        print("| xformers vs SDPA | not measured: xformers missing | - | - |")
    print(f"\n## 2. bf16 autocast vs fp32 (loss {k['loss_fp32']:.5f} vs {k['loss_bf16']:.5f})")
    print(f"| loss relative difference | {k['bf16_rel_diff']:.2e} | {BF16_LOSS_RTOL:g} | {k['bf16_ok']} |")


def print_throughput(rows: list[dict], args, peak: float | None) -> None:
    """Table 3: tokens/s and MFU per shape (adds mfu / mfu_packed to the rows)."""
    print(f"\n## 3. training throughput, bf16 autocast, median of {args.steps} steps after {args.warmup} warmup")
    print("| L | d | N | compile | ehrfm tok/s | HF tok/s | ehrfm/HF | ehrfm packed tok/s | MFU ehrfm | peak GiB ehrfm / HF |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cfg = ModelConfig(n_layer=r["n_layer"], d_model=r["d_model"], n_head=max(1, r["d_model"] // 64),
                          context=128 if args.quick else CONTEXT, vocab_size=args.vocab)
        if "skipped" in r:
            print(f"| {r['n_layer']} | {r['d_model']} | {r['n_params']:,} | {r['compiled']} | skipped: {r['skipped']} | | | | | |")
            continue
        ours, hf, packed = r.get("ehrfm_tok_s"), r.get("hf_tok_s"), r.get("ehrfm_packed_tok_s")
        if ours and peak:
            r["mfu"] = flops_per_token(cfg) * ours / peak
            if packed:
                r["mfu_packed"] = flops_per_token(cfg) * packed / peak

        def f(x, spec=",.0f"):
            return "-" if x is None else format(x, spec)

        errors = "; ".join(f"{k2}: {v}" for k2, v in r.items() if k2.endswith("_error"))
        print(f"| {r['n_layer']} | {r['d_model']} | {r['n_params']:,} | {r['compiled']} | {f(ours)} | {f(hf)} | "
              f"{f(ours / hf if ours and hf else None, '.2f')} | {f(packed)} | {f(r.get('mfu'), '.1%')} | "
              f"{f(r.get('ehrfm_peak_gib'), '.1f')} / {f(r.get('hf_peak_gib'), '.1f')} |" + (f" {errors}" if errors else ""))


def main() -> int:
    args = parse_args()
    t_start = time.perf_counter()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity checks must be fp32
        torch.backends.cudnn.allow_tf32 = False
    peak, peak_text = peak_flops(device, args.peak_tflops)
    has_xformers, has_hf = optional_backends(device)
    print(f"torch {torch.__version__}, device {device} ({peak_text}), context {CONTEXT if not args.quick else 'quick'}, "
          f"batch {args.batch}, vocab {args.vocab}")

    k = check_kernels(device, args.vocab, has_xformers, args.quick)
    print_kernels(k, has_xformers)

    rows = throughput(device, args, has_hf, t_start)
    print_throughput(rows, args, peak)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": peak_text, "torch": torch.__version__, "xformers": has_xformers,
                                               "kernels": k, "throughput": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
