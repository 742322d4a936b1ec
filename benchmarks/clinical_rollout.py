"""Zero-shot rollout speed: KV-cache decoding (what `ehrfm zeroshot` does) vs recomputing the
whole sequence at every step, on a randomly initialised GPT. Prints tokens/s and the ratio, and
checks that both paths give the same next-token distribution.

    python benchmarks/clinical_rollout.py [--n-layer 4 --d-model 128 --context 512 --prompt 384 --new 128 --samples 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from ehrfm.config import ModelConfig
from ehrfm.model import GPT


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--prompt", type=int, default=384)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = GPT(ModelConfig(args.n_layer, args.d_model, args.n_head, args.context, args.vocab)).eval()
    prompt = torch.randint(0, args.vocab, (1, args.prompt))
    draws = torch.randint(0, args.vocab, (args.samples, args.new))  # fixed continuations: same work on both paths

    with torch.no_grad():
        t = time.perf_counter()
        cache = model.new_cache(1, args.prompt + args.new)
        logits = model.forward_step(prompt, cache)[:, -1]
        cache.k = cache.k.expand(-1, args.samples, -1, -1, -1).clone()
        cache.v = cache.v.expand(-1, args.samples, -1, -1, -1).clone()
        for i in range(args.new - 1):
            logits = model.forward_step(draws[:, i : i + 1], cache)[:, -1]
        cached_s = time.perf_counter() - t

        t = time.perf_counter()
        seq = prompt.expand(args.samples, -1)
        for i in range(args.new - 1):
            seq = torch.cat([seq, draws[:, i : i + 1]], dim=1)
            full = model(seq)[0][:, -1]
        naive_s = time.perf_counter() - t

    diff = (torch.softmax(logits, -1) - torch.softmax(full, -1)).abs().max().item()
    n_tok = args.samples * (args.new - 1)
    print(f"model {args.n_layer}x{args.d_model}, prompt {args.prompt}, {args.samples} samples x {args.new} new tokens, {args.threads} thread(s)")
    print(f"kv cache : {cached_s:7.2f} s  {n_tok / cached_s:9.0f} tok/s")
    print(f"recompute: {naive_s:7.2f} s  {n_tok / naive_s:9.0f} tok/s")
    print(f"speed-up : {naive_s / cached_s:.1f}x   max |p_cache - p_full| = {diff:.2e}")


if __name__ == "__main__":
    main()
