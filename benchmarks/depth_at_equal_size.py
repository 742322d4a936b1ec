"""A 1-layer and a 2-layer model of the same size, trained on the same tokens with the same FLOPs:
is the family's 1-layer end on the trend of its deeper members?

    python benchmarks/depth_at_equal_size.py --tokens demo_out/tokens [--budget 2.4e12] [--seeds 0]

Kaplan et al. (2020, fig. 6): "only models with fewer than 2 layers ... deviate significantly from
the trend". The default pair is the family's (1, 48) (27,792 non-embedding parameters) and (2, 32)
(26,784), trained with the default demo's recipe (batch 8 x 256 tokens, 20% warmup, cosine to 10%,
lr 1e-2 x 32 / d_model, 262,144 eval tokens) for the same FLOPs, each also at the other's lr, so
that the lr cannot explain the gap. Prints each run's held-out loss and the gap (1-layer minus
2-layer, nats) at each lr. About 4 CPU-minutes per run at 2.4e12 FLOPs on the demo's tokens.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ehrfm.config import ModelConfig, TrainConfig
from ehrfm.shapes import flops_per_token, head_dim_for
from ehrfm.tokens import TokenDir


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", required=True, help="a token dir (ehrfm tokenize), e.g. the default demo's demo_out/tokens")
    p.add_argument("--budget", type=float, default=2.4e12, help="training FLOPs of each run")
    p.add_argument("--shallow", default="1,48", help="n_layer,d_model of the 1-layer model")
    p.add_argument("--deep", default="2,32", help="n_layer,d_model of the deeper model of about the same size")
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--out", default=None, help="where the runs go (default: a temporary dir)")
    args = p.parse_args()

    import torch

    from ehrfm.train import train

    torch.set_num_threads(1)
    vocab = TokenDir(args.tokens).vocab_size
    shapes = [tuple(int(x) for x in s.split(",")) for s in (args.shallow, args.deep)]
    lrs = [1e-2 * 32 / d for _, d in shapes]  # each shape's own demo lr, then the other's
    out = Path(args.out or tempfile.mkdtemp(prefix="depth-"))
    loss = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for lr in lrs:
            for n_layer, d_model in shapes:
                model = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // head_dim_for(d_model), context=256,
                                    vocab_size=vocab)
                cfg = TrainConfig(tokens_dir=str(args.tokens), out_dir=str(out / f"L{n_layer}_D{d_model}_lr{lr:.3g}_s{seed}"),
                                  n_layer=n_layer, d_model=d_model, n_head=model.n_head, context=256,
                                  tokens=int(args.budget / flops_per_token(model)), batch_size=8, micro_batch_size=8, lr=lr,
                                  warmup_frac=0.2, eval_tokens=262_144, seed=seed, log_interval=100)
                loss[(seed, lr, n_layer, d_model)] = train(cfg)["val_loss"]
                print(f"seed {seed} lr {lr:.3g} ({n_layer}, {d_model}): loss {loss[(seed, lr, n_layer, d_model)]:.4f}", flush=True)
            (l1, d1), (l2, d2) = shapes
            print(f"seed {seed} lr {lr:.3g}: ({l1}, {d1}) - ({l2}, {d2}) = "
                  f"{loss[(seed, lr, l1, d1)] - loss[(seed, lr, l2, d2)]:+.4f} nats", flush=True)


if __name__ == "__main__":
    main()
