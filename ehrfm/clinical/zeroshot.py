"""Zero-shot prediction by generative rollout (ETHOS-style), with the model's KV cache.

From each label's history (tokens with time <= prediction_time, the last `context -
max_new_tokens` of them) the model samples `n_samples` continuations of at most
`max_new_tokens` tokens. The probability of the outcome is the share of continuations that
reach an outcome token before a competing token:

- in_hospital_mortality: outcome MEDS_DEATH or HOSPITAL_DISCHARGE//DIED; competing: any other
  HOSPITAL_DISCHARGE//* token, or the timeline end.
- icu_admission: outcome ICU_ADMISSION//*; competing: any HOSPITAL_DISCHARGE//*, MEDS_DEATH,
  or the timeline end.

A continuation that reaches neither within the bound counts as no outcome; the share of such
undecided continuations is reported. Sampling is seeded per label (seed, label row), so results
do not depend on the batch layout. Labels whose prompts have the same length are decoded
together (`batch_size` rows of label x sample); each prompt is encoded once and its KV cache is
shared by its samples.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ehrfm.clinical.baseline import task_name
from ehrfm.clinical.common import as_stored, check_out, prediction_frame, write_head_outputs
from ehrfm.clinical.configs import ZEROSHOT_TASKS, ZeroShotConfig
from ehrfm.clinical.histories import END_TOKENS, history_window
from ehrfm.clinical.metrics import binary_metrics, format_metrics
from ehrfm.clinical.probe import load_label_histories
from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir


def outcome_tokens(td: TokenDir, task: str) -> tuple[list[int], list[int]]:
    """(outcome ids, competing ids) for a zero-shot task (see the module docstring)."""
    vocab = td.vocab
    discharge = [i for i, t in enumerate(vocab) if t.startswith("HOSPITAL_DISCHARGE//")]
    ends = [td.token_id(t) for t in END_TOKENS if t in set(vocab)]
    death = [td.token_id(t) for t in ("MEDS_DEATH", "HOSPITAL_DISCHARGE//DIED") if t in set(vocab)]
    if task == "in_hospital_mortality":
        outcome = death
        competing = [i for i in discharge if i not in death] + ends
    elif task == "icu_admission":
        outcome = td.token_ids_with_prefix("ICU_ADMISSION//")
        competing = discharge + [i for i in death if i not in discharge] + ends
    else:
        raise UserError(f"zero-shot supports {', '.join(ZEROSHOT_TASKS)}, not {task!r}")
    if not outcome:
        raise UserError(f"token dir {td.path} has no outcome token for {task} in its vocabulary")
    if not competing:
        raise UserError(f"token dir {td.path} has no competing token (HOSPITAL_DISCHARGE//*) for {task}")
    return outcome, competing


def rollout_batch(model, prompts: np.ndarray, seeds: list[int], outcome, competing, cfg: ZeroShotConfig, device):
    """Roll out n_samples continuations of each equal-length prompt (L, T) at once.

    Returns (share reaching an outcome first, share undecided), one each per prompt. Sampling
    is Gumbel-max with one generator per label, so a label's continuations depend only on its
    seed, never on which labels share its batch.
    """
    import torch

    L, S = len(prompts), cfg.n_samples
    idx = torch.as_tensor(prompts, dtype=torch.long, device=device)
    cache = model.new_cache(L, idx.shape[1] + cfg.max_new_tokens)
    logits = model.forward_step(idx, cache)[:, -1]
    # Encode each prompt once; its keys and values are shared by its S samples.
    cache.k = cache.k.repeat_interleave(S, dim=1)
    cache.v = cache.v.repeat_interleave(S, dim=1)
    logits = logits.repeat_interleave(S, dim=0)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    out_set = torch.tensor(outcome, device=device)
    comp_set = torch.tensor(competing, device=device)
    result = torch.zeros(L * S, dtype=torch.int8, device=device)  # 0 undecided, 1 outcome, -1 competing
    V = logits.shape[-1]
    for _ in range(cfg.max_new_tokens):
        u = torch.cat([torch.rand((S, V), generator=g, device=device) for g in gens])
        gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
        nxt = (logits.float() / cfg.temperature + gumbel).argmax(-1, keepdim=True)
        undecided = result == 0
        result = torch.where(undecided & torch.isin(nxt[:, 0], out_set), torch.ones_like(result), result)
        result = torch.where(undecided & torch.isin(nxt[:, 0], comp_set), -torch.ones_like(result), result)
        if bool((result != 0).all()) or cache.length >= cache.max_len:
            break
        logits = model.forward_step(nxt, cache)[:, -1]
    result = result.view(L, S)
    return (result == 1).float().mean(1).cpu().numpy(), (result == 0).float().mean(1).cpu().numpy()


def rollout_groups(lengths: np.ndarray, labels_per_batch: int):
    """Batches of label positions whose prompts have the same length (long histories are all
    cut to the same prompt length, so most labels of real data share a batch)."""
    order = np.argsort(lengths, kind="stable")
    start = 0
    while start < len(order):
        stop = start
        while stop < len(order) and stop - start < labels_per_batch and lengths[order[stop]] == lengths[order[start]]:
            stop += 1
        yield order[start:stop]
        start = stop


def zeroshot(cfg: ZeroShotConfig, out: str | os.PathLike, overwrite: bool = False) -> dict:
    import torch

    from ehrfm.clinical.model_io import load_run, resolve_context
    from ehrfm.io import progress, summary

    check_out(out, overwrite)
    t0 = time.time()
    task = cfg.task or task_name(cfg.labels)
    if task not in ZEROSHOT_TASKS:
        raise UserError(f"zero-shot supports {', '.join(ZEROSHOT_TASKS)}, not {task!r} (pass --task)")
    if cfg.n_samples < 1 or cfg.max_new_tokens < 1 or cfg.temperature <= 0:
        raise UserError("zero-shot needs --samples >= 1, --max-new-tokens >= 1 and --temperature > 0")
    td = TokenDir(cfg.tokens_dir)
    h = load_label_histories(td, cfg.labels, cfg.max_labels, cfg.seed)
    model, mcfg = load_run(cfg.run_dir, td, cfg.device, n_labels=len(h.start))
    context = resolve_context(cfg.context, mcfg.context)
    if cfg.max_new_tokens >= context:
        raise UserError(f"--max-new-tokens {cfg.max_new_tokens} leaves no room for history in a context of {context}")
    prompt_len = context - cfg.max_new_tokens
    outcome, competing = outcome_tokens(td, task)
    rows = np.flatnonzero(np.isin(h.split, cfg.splits))
    if len(rows) == 0:
        raise UserError(f"task {task}: no labels in split(s) {', '.join(cfg.splits)}")
    device = torch.device(cfg.device)
    p = np.full(len(h.start), np.nan)
    undecided = np.full(len(h.start), np.nan)
    prompts = {int(k): history_window(td, h, int(k), prompt_len) for k in rows}
    lengths = np.array([len(prompts[int(k)]) for k in rows])
    labels_per_batch = max(1, cfg.batch_size // cfg.n_samples)
    with torch.no_grad(), progress(total=len(rows), desc=f"zeroshot {task}", unit="label") as bar:
        for group in rollout_groups(lengths, labels_per_batch):
            ks = [int(rows[g]) for g in group]
            seeds = [cfg.seed * 1_000_003 + k for k in ks]
            share, und = rollout_batch(model, np.stack([prompts[k] for k in ks]), seeds, outcome, competing, cfg, device)
            p[ks], undecided[ks] = share, und
            bar.update(len(ks))
    y, p = h.y, as_stored(p)  # score what predictions.parquet holds
    metrics = {
        **binary_metrics(y[rows], p[rows], task, cfg.bootstrap, cfg.seed),
        "head": "zeroshot",
        "split": ",".join(cfg.splits),
        "context": context,
        "prompt_tokens_max": prompt_len,
        "outcome_tokens": td.decode(outcome),
        "competing_tokens": len(competing),
        "undecided_share": float(np.mean(undecided[rows])),
        "wall_s": time.time() - t0,
    }
    # only the scored rows have rollouts: predictions.parquet is exactly them, no other split files
    write_head_outputs(out, overwrite, cfg, metrics, {"predictions.parquet": prediction_frame(h.labels, p, rows)})
    summary(f"zeroshot {format_metrics(metrics)} undecided {metrics['undecided_share']:.2f} -> {out}")
    return metrics
