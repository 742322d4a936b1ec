"""What a sweep grid costs on this machine before training it: plan it, time the family's shapes.

For a token dir and candidate grids (budgets, sizes, span, tokens per parameter), the script
1. measures CPU seconds per trained token (forward, backward, AdamW; one torch thread, as each run
   of a local sweep uses) and per evaluated token of every shape the grids plan, on real packed
   rows of the token dir (CPU time, not wall time: it holds on a loaded machine);
2. plans each grid with `sweeps.plan.plan_sweep` (cosine and wsd) and prints its runs, distinct
   shapes per budget, depths, largest D in epochs of the token dir's train split and the cohort
   that holds it in 1 epoch (at the token dir's train tokens per subject and train share), planned FLOPs and
   estimated CPU seconds: sum over runs of (trained tokens x s/token + eval tokens x s/token
   + --overhead-s). A local sweep on k cores takes about CPU seconds / k of wall time.

    python benchmarks/grid_cost.py --tokens demo_out/tokens --budgets 1.5e11,3.8e11,9.5e11,2.4e12 \\
        --sizes 5 --span-dex 0.6 --tokens-per-param 60 --eval-tokens 262144

Several grids: repeat --budgets (each with the same --sizes etc.), or give --grid
"BUDGETS;SIZES;SPAN;TPP" more than once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("EHRFM_QUIET", "1")


def time_shape(td, n_layer: int, d_model: int, context: int, batch: int, steps: int = 8) -> tuple[float, float]:
    """(CPU s per trained token, CPU s per evaluated token) of one family shape, one torch thread."""
    import torch

    from ehrfm.config import ModelConfig
    from ehrfm.model import GPT
    from ehrfm.packing import PackedStream
    from ehrfm.shapes import head_dim_for

    torch.set_num_threads(1)
    cfg = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=d_model // head_dim_for(d_model), context=context,
                      vocab_size=td.vocab_size)
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stream = PackedStream(td.split("train"), context, seed=0, shuffle=True, pad_id=td.pad_id)

    def batch_at(k):
        r = stream.rows(k * batch * context, batch * context)
        return (torch.from_numpy(x) for x in (r.tokens, r.targets, r.segment_ids))

    def step(k):
        idx, tgt, seg = batch_at(k)
        _, loss = model(idx, tgt, segment_ids=seg, reduction="sum", return_logits=False)
        (loss / (tgt != -100).sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for k in range(2):  # warm-up
        step(k)
    t0 = time.process_time()
    for k in range(2, 2 + steps):
        step(k)
    train_s = (time.process_time() - t0) / (steps * batch * context)
    model.eval()
    with torch.no_grad():
        t0 = time.process_time()
        for k in range(steps // 2):
            idx, tgt, seg = batch_at(k)
            model(idx, tgt, segment_ids=seg, reduction="none")
        eval_s = (time.process_time() - t0) / (steps // 2 * batch * context)
    return train_s, eval_s


def main() -> None:
    from ehrfm.tokens import TokenDir
    from sweeps.plan import parse_budgets, plan_sweep

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", required=True, help="token dir (ehrfm tokenize output)")
    ap.add_argument("--budgets", action="append", help="one grid's budgets, e.g. 1e11,2.5e11 (repeatable)")
    ap.add_argument("--grid", action="append", metavar="BUDGETS;SIZES;SPAN;TPP", help="a whole grid (repeatable)")
    ap.add_argument("--sizes", type=int, default=5)
    ap.add_argument("--span-dex", type=float, default=0.6)
    ap.add_argument("--tokens-per-param", type=float, default=60.0)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-tokens", type=int, default=262_144)
    ap.add_argument("--overhead-s", type=float, default=3.0, help="CPU s per run besides training and eval (start, checkpoints)")
    args = ap.parse_args()

    td = TokenDir(args.tokens)
    train = td.split("train")
    per_subject = train.n_tokens / len(train.lengths)
    train_share = len(train.lengths) / sum(len(td.split(s).lengths) for s in td.splits)  # of the cohort
    grids = [(parse_budgets(b), args.sizes, args.span_dex, args.tokens_per_param) for b in args.budgets or []]
    for g in args.grid or []:
        b, k, span, tpp = g.split(";")
        grids.append((parse_budgets(b), int(k), float(span), float(tpp)))
    if not grids:
        ap.error("give --budgets or --grid")
    print(f"token dir {args.tokens}: {train.n_tokens:,} train tokens, {per_subject:.0f} per train subject; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    timings: dict[tuple[int, int], tuple[float, float]] = {}
    train_opts = {"batch_size": args.batch_size, "eval_tokens": args.eval_tokens}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (budgets, sizes, span, tpp) in enumerate(grids):
            for schedule in ("cosine", "wsd"):
                try:
                    sweep, rows, _ = plan_sweep(args.tokens, budgets, Path(tmp) / f"g{i}{schedule}", sizes=sizes, span_dex=span,
                                                tokens_per_param=tpp, context=args.context, train=train_opts, schedule=schedule)
                except Exception as e:  # a wsd plan that cannot share trunks says why
                    print(f"grid {i} {schedule}: {e}")
                    continue
                cpu = 0.0
                for r in rows:
                    key = (r["n_layer"], r["d_model"])
                    if key not in timings:
                        timings[key] = time_shape(td, *key, args.context, args.batch_size)
                        print(f"  shape {key}: {timings[key][0] * 1e6:.1f} us/trained token, {timings[key][1] * 1e6:.1f} us/eval token (CPU)")
                    t_train, t_eval = timings[key]
                    cpu += (r["tokens"] - int(r.get("branch_tokens") or 0)) * t_train + args.eval_tokens * t_eval + args.overhead_s
                per_budget = {b: [(r["n_layer"], r["d_model"]) for r in rows if r["budget"] == b] for b in budgets}
                d_max = max(r["tokens"] for r in rows)
                print(f"grid {i} {schedule:6s} budgets {','.join(f'{b:.3g}' for b in budgets)} sizes {sizes} span {span} tpp {tpp}: "
                      f"{len(rows)} runs, {min(len(v) for v in per_budget.values())}+ shapes per budget, depths "
                      f"{sorted({r['n_layer'] for r in rows})}, largest D {d_max:.3g} = {d_max / train.n_tokens:.2f} epochs "
                      f"(1 epoch needs a cohort of {math.ceil(d_max / per_subject / train_share):,}), planned {sweep.planned_flops:.3g} FLOPs, "
                      f"~{cpu:.0f} CPU s")
                if schedule == "cosine":
                    for b, shapes in per_budget.items():
                        print(f"    {b:.3g}: {shapes}")


if __name__ == "__main__":
    main()
