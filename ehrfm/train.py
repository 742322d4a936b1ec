"""Train one model on a token dir for exactly D tokens; the public training API.

    from ehrfm.config import TrainConfig
    from ehrfm.train import train
    result = train(TrainConfig(tokens_dir="tok", out_dir="run", n_layer=2, d_model=64, n_head=2,
                               context=256, tokens=1_000_000))

The run dir (DESIGN.md section 3):
    config.json     {"train": TrainConfig, "model": ModelConfig, "tokenizer_fingerprint", "data",
                     "n_params", "n_params_total", "flops_per_token", "tokens", "steps", ...}
    metrics.jsonl   one line per log_interval steps: step, tokens, train_loss, lr, grad_norm,
                    tokens_per_s (+ val_loss when measured)
    checkpoint/     ehrfm.checkpoint (safetensors weights, AdamW state, RNG states; state.json's
                    "dtype": the precision dtype auto resolved to where the run began, which a
                    resume on another kind of device keeps); always written after the last step
                    (before the final eval), on stop signals and every checkpoint_interval steps
    result.json     written last: status completed | failed | diverged, n_params, n_params_total,
                    vocab_size, tokens, flops, val_loss, wall_s, tokens_per_s, error, ...

Budget: D = cfg.tokens or floor(cfg.flops / flops_per_token). Each optimizer step consumes
batch_size * context stream tokens (ehrfm.packing), the last step the remainder, so exactly D
tokens are trained. Schedule: AdamW, linear warmup over warmup_frac of the steps (or warmup_steps),
then cosine decay to min_lr_ratio * lr at the last step, or (schedule "wsd") a constant lr and a
linear / 1-sqrt decay over the last decay_fraction of the steps to the same final lr. Loss: mean
next-token cross-entropy over the step's predicted positions (all ranks and micro-batches
together, so accumulation and DDP are exact re-groupings of the same sum).

WSD trunks and branches (Hägele et al. 2024): a wsd run keeps stable-phase checkpoints at the token
counts in cfg.stable_checkpoints and at its own decay start (RUN/stable/tokens-<T>/checkpoint). A
run with cfg.trunk_dir is a branch: it starts at its own decay start from the trunk's checkpoint
there (weights, AdamW state, RNG) and trains only its decay; a run longer than its trunk starts at
the trunk's decay start instead and continues the stable phase (`branch_point`). Either ends
bit-identical (CPU) to the same wsd run trained alone with the trunk's warmup. result.json records
schedule, trunk_id, trunk_dir and branch_tokens.

Held-out loss: the first eval_tokens tokens of the tuning split in file order (all of it when
smaller), packed like training rows; nats per predicted token. Identical for every run on the
same token dir and context, so losses compare across a sweep. loss_per_event (result.json): the
same nats summed, over the events that open among the predicted positions (ehrfm.tokens:
TokenDir.count_events), comparable across code modes whose tokens per event differ.
eval_loss_se and loss_per_event_se (result.json): their standard errors over the eval subjects
(`ratio_se`; eval_subjects of them): the noise of the eval sample itself, tokens of one subject
being correlated. Every run scores the same sample, so this noise is shared by a sweep's runs
and differences between runs are less noisy than it; training noise (seeds) is not in it.

Stops and faults:
- SIGTERM / SIGUSR1, SIGHUP (a closed terminal or dropped ssh session), a first Ctrl-C (SIGINT; a
  second one raises KeyboardInterrupt at once), or `request_stop()` from the same process set a flag
  checked between
  optimizer steps (and after a periodic eval; at the last step, before the final eval: the final
  checkpoint is written before the final eval, so a kill during it costs only the eval): the
  trainer writes checkpoint/ and returns {"status": "interrupted"} WITHOUT
  writing result.json (`ehrfm train` exits 3). Calling train again with the same config resumes
  and ends bit-identical (CPU) to an uninterrupted run: data order is a pure function of (seed,
  step) and the checkpoint holds weights, AdamW moments and RNG states exactly.
- Divergence (`divergence_reason`) ends the run as "diverged", never "completed": a non-finite
  train loss or gradient norm at a step, or a non-finite periodic held-out loss, stops it at
  once; a final held-out loss that is non-finite, or above uniform guessing (ln V nats/token, plus
  an untrained model's excess init_std^2 x d_model: results.untrained_excess) or the run's initial loss (its first step's train loss, at the initial weights) by more than
  DIVERGENCE_Z = 3 standard errors (eval_loss_se; for the initial loss also the first batch's
  initial_train_loss_se), is a blow-up. A tiny run that ends at ln V within that noise is
  completed; a bound without a standard error is strict (< 2 eval subjects), and an initial loss
  without one (a one-subject first batch, an older checkpoint) bounds nothing. result.json's
  `error` names the quantity and the step ("grad norm became inf
  at step 13"); the last metrics.jsonl line logs it (non-finite values as null, the reason in
  `diverged`). Any other error ends the run as "failed" with the error type and message (never
  patient data).
- One trainer per run dir: rank 0 holds an exclusive lock (ehrfm.run_lock, fcntl.flock on
  RUN/.train.lock, released by the OS when the process dies) from before the run dir is read
  until train returns; a second trainer on it is refused with RunDirBusyError (a UserError,
  `ehrfm train` exit 2) and touches nothing, --overwrite included.
- A run dir deleted, moved or replaced while it trains (its lock file is no longer the one locked)
  is never written into again: its next checkpoint or result.json raises UserError instead.
- Resuming with another tokenizer, other data or another run config is refused (UserError) and
  nothing in the run dir is touched. Other data includes a token dir re-tokenized in place with
  the same counts (config.json's "data" holds each split's content sha256); each differing field
  is named with both values. A run dir of an older ehrfm lacking a field counts it at its
  default; a field of a newer ehrfm, or a checkpoint of a newer format, is refused. A completed or diverged run dir returns its result.json
  unchanged; a failed one is retried (from its last checkpoint).

DDP: run the same entry point under torchrun; ranks split each step's rows (round-robin), the
gradient all-reduce averages them, rank 0 writes files. Backend nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ehrfm import __version__, fault_points
from ehrfm.checkpoint import (
    CHECKPOINT_DIR,
    PREVIOUS_DIR,
    has_checkpoint,
    load_training_state,
    save_checkpoint,
    verify_checkpoint,
)
from ehrfm.config import (
    IDENTITY,
    STABLE_DIR,
    ModelConfig,
    TrainConfig,
    branch_free_fields,
    checkpoint_setting_differences,
    fields_with,
    resumable_fields,
    stable_checkpoint_dir,
    warmup_steps_for,
    wsd_decay_start,
)
from ehrfm.errors import UserError
from ehrfm.io import (
    check_ehrfm_output,
    check_not_input,
    check_not_inside_output,
    check_own_entries,
    free_memory,
    mark_output,
    progress,
    read_json,
    summary,
    warn,
    write_json,
)
from ehrfm.loggers import logger_for, metrics_log
from ehrfm.model import GPT
from ehrfm.packing import IGNORE_INDEX, PAD_SEGMENT, PackedRows, PackedStream
from ehrfm.results import RESULT_FILE, RunResult, Status, divergence_reason, read_result, write_result
from ehrfm.run_lock import LOCK_FILE, RunDirBusyError, check_run_dir_intact, lock_run_dir
from ehrfm.shapes import flops_per_token, n_params, n_params_total
from ehrfm.tokens import TokenDir, data_differences, data_identity

# What a run dir holds (and a TensorBoard logger's event files beside them): `--overwrite` refuses a run dir
# holding anything else, a user's notes or a run trained inside it, rather than delete it with the run.
RUN_DIR_ENTRIES = frozenset({"config.json", "metrics.jsonl", RESULT_FILE, CHECKPOINT_DIR, PREVIOUS_DIR, STABLE_DIR,
                             "wandb", LOCK_FILE})

# A sweep's runs are trained by `ehrfm sweep launch`, which has no --overwrite: what a run dir's refusal says for them.
IN_A_SWEEP = "in a sweep, remove the run dir and run `ehrfm sweep launch` again"

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Stop like SIGTERM unless the process was started with it ignored (under nohup, or as a sweep job's
# trainer, whose job process forwards it). SIGINT (_on_ctrl_c) follows the same rule.
STOP_UNLESS_IGNORED = (signal.SIGHUP,)


class StopFlag:
    """A stop request that a signal handler may set: a plain attribute, no lock.

    Not threading.Event: its set() takes a non-reentrant lock, and a trainer under SLURM gets
    SIGTERM twice in a row (from slurmstepd and again from the job wrapper that forwards it); a
    second handler running inside the first one's set() would wait on that lock forever. Python
    runs handlers in the main thread between bytecodes, so a bool assignment is atomic here.
    """

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        """Request the stop (safe inside a signal handler)."""
        self._set = True

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._set

    def clear(self) -> None:
        """Forget the request (at the end of a run)."""
        self._set = False


_stop_requested = StopFlag()


def _on_ctrl_c(signum, frame) -> None:
    """The first Ctrl-C stops like SIGTERM (checkpoint after this step, resumable); a second one at once."""
    if _stop_requested.is_set():
        raise KeyboardInterrupt
    _stop_requested.set()
    print("ehrfm train: Ctrl-C: checkpointing after this step (Ctrl-C again to stop at once, losing it)",
          file=sys.stderr, flush=True)

# TrainConfig fields that may change between an interrupted run and its resumption: they do not
# change what is computed (only where, how it is logged, or how rows are grouped per forward).
RESUMABLE_CHANGES = resumable_fields()  # role RUNTIME in ehrfm.config


def request_stop() -> None:
    """Ask a running `train` in this process to checkpoint and return "interrupted" after its current step."""
    _stop_requested.set()


def tokens_for(cfg: TrainConfig, model_cfg: ModelConfig) -> int:
    """D, the tokens a run trains: the configured token count, or floor(flops / flops_per_token).

    Args:
        cfg: the run's config; exactly one of cfg.tokens (tokens) and cfg.flops (FLOPs) is set.
        model_cfg: the run's model shape, for ehrfm.shapes.flops_per_token (FLOPs per token).

    Returns:
        D in tokens (0 when the FLOP budget is less than one token's FLOPs).
    """
    if cfg.tokens is not None:
        return int(cfg.tokens)
    return int(math.floor(float(cfg.flops) / flops_per_token(model_cfg)))




def lr_at(step: int, n_steps: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based) of a run of `n_steps` steps.

    Linear warmup to cfg.lr, then either cosine to min_lr_ratio * lr at the last step
    (cfg.schedule "cosine"), or warmup-stable-decay ("wsd", Hägele et al. 2024, arXiv
    2405.18392): constant cfg.lr until `wsd_decay_start`, then linear or 1-sqrt decay reaching
    min_lr_ratio * lr at the last step, the same final lr as the cosine schedule.

    Args:
        step: the optimizer step, 0 <= step < n_steps.
        n_steps: the run's optimizer steps.
        cfg: lr, min_lr_ratio, schedule, warmup_frac / warmup_steps, decay_fraction, decay_shape.

    Returns:
        The learning rate (the unit of cfg.lr).
    """
    warmup = warmup_steps_for(n_steps, cfg)
    if cfg.schedule == "wsd":
        start = wsd_decay_start(n_steps, cfg)
        if step >= start:
            p = (step - start + 1) / (n_steps - start)  # the last step reaches p = 1
            frac = 1.0 - p if cfg.decay_shape == "linear" else 1.0 - math.sqrt(p)
            return cfg.lr * cfg.min_lr_ratio + (cfg.lr - cfg.lr * cfg.min_lr_ratio) * frac
        return cfg.lr * (step + 1) / warmup if step < warmup else cfg.lr
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    decay_steps = n_steps - warmup - 1
    progress_ = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup) / decay_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress_))


# --- WSD trunks and branches ------------------------------------------------------------------

# TrainConfig fields in which a branch may differ from its trunk: its length, the checkpoints it
# keeps, and what may change on a resume. Everything else (shape, lr, warmup, seed, ...) must match.
BRANCH_FREE = branch_free_fields()  # RESUMABLE_CHANGES and the fields flagged `branch`


def _stable_steps(cfg: TrainConfig, n_steps: int, step_tokens: int) -> dict[int, int]:
    """The stable-phase checkpoints this run keeps, {step: tokens}.

    {step: tokens} of the stable-phase checkpoints this run keeps; UserError for a point that is
    not a step boundary or not in the stable phase (warmup end .. decay start).
    """
    out = {}
    warmup, start = warmup_steps_for(n_steps, cfg), wsd_decay_start(n_steps, cfg) if cfg.schedule == "wsd" else 0
    if cfg.schedule == "wsd" and start > 0:
        # Every wsd run also keeps its own decay start, where a longer run of its shape may continue its
        # stable phase (`branch_point`): a later, larger budget then trains only what this run did not.
        out[start] = start * step_tokens
    for t in cfg.stable_checkpoints:
        if t % step_tokens:
            raise UserError(f"stable checkpoint at {t} tokens is not a step boundary (steps of batch_size*context={step_tokens} tokens)")
        if not warmup <= t // step_tokens <= start:
            raise UserError(
                f"stable checkpoint at {t} tokens (step {t // step_tokens}) is outside this run's stable phase "
                f"(steps {warmup}..{start} of {n_steps}, i.e. {warmup * step_tokens}..{start * step_tokens} tokens)"
            )
        out[t // step_tokens] = t
    return out


def _check_wsd_phases(cfg: TrainConfig, n_steps: int) -> None:
    """Refuse a schedule without its decay: a warmup the run never leaves (UserError, nothing written).

    A wsd run whose decay would start inside its warmup, or a cosine run whose warmup_steps leave no
    decay step. For wsd, lr_at gives the decay precedence, so such a run would silently train without the warmup it
    asks for (decay_fraction 1 with the default warmup_frac started at the peak lr). A decay from
    the first step is asked for with warmup_steps 0 (or warmup_frac 0).
    """
    if cfg.schedule != "wsd":
        # a cosine run that ends inside (or at the end of) its warmup never decays: it ended at a fraction of
        # (or at) the peak lr instead of min_lr_ratio * lr, "completed" as if it had followed its schedule
        if cfg.warmup_steps is not None and cfg.warmup_steps > max(n_steps - 1, 1):
            raise UserError(
                f"train config: warmup_steps {cfg.warmup_steps} leaves no decay in this run of {n_steps} steps (of "
                f"batch_size*context={cfg.batch_size * cfg.context} tokens): it would end at "
                f"{min(n_steps, cfg.warmup_steps) / cfg.warmup_steps:.3g} x lr, not min_lr_ratio x lr; set warmup_steps "
                f"at most {max(n_steps - 1, 1)} (or use warmup_frac), or train more tokens")
        return
    warmup, start = warmup_steps_for(n_steps, cfg), wsd_decay_start(n_steps, cfg)
    if start < warmup:
        given = f"warmup_steps {cfg.warmup_steps}" if cfg.warmup_steps is not None else f"warmup_frac {cfg.warmup_frac:g}"
        # the decay is at least one step: when even that one starts inside the warmup (a budget under
        # warmup + 1 steps, e.g. fewer tokens than one batch), a lower decay_fraction cannot help
        fix = "lower decay_fraction" if n_steps - 1 >= warmup else (
            f"train more than {warmup * cfg.batch_size * cfg.context} tokens (at least {warmup + 1} steps of "
            f"batch_size*context={cfg.batch_size * cfg.context} tokens)")
        raise UserError(
            f"train config: wsd decay_fraction {cfg.decay_fraction:g} starts the decay at step {start} of {n_steps}, "
            f"inside the {warmup}-step warmup ({given}); {fix}, or set warmup_steps 0 to decay from the first step"
        )


def branch_point(cfg: TrainConfig, n_steps: int, step_tokens: int, trunk_decay_start: int | None = None) -> tuple[int, int]:
    """(step, tokens) where a WSD branch leaves its trunk.

    A branch leaves its trunk at its own decay start and trains only its decay. A run longer than its
    trunk (a larger budget of the trunk's shape, planned after the trunk: `sweeps.plan`) leaves it at
    the trunk's own decay start instead, and trains the rest of the stable phase and its decay: every
    wsd run keeps a stable checkpoint there. Either way the run equals the same wsd run trained alone
    with the trunk's warmup (the stream is a pure function of the seed and the position:
    `ehrfm.packing`).

    Args:
        cfg: the branch's config (decay_fraction).
        n_steps: the branch's optimizer steps.
        step_tokens: tokens per optimizer step (batch_size * context).
        trunk_decay_start: the trunk's first decay step (`wsd_decay_start` of its steps and config);
            None: not known (the trunk's config.json unreadable), taken as no earlier than the branch's.

    Returns:
        (step, that step times step_tokens): 0-based step, tokens.
    """
    step = wsd_decay_start(n_steps, cfg)
    if trunk_decay_start is not None:
        step = min(step, int(trunk_decay_start))
    return step, step * step_tokens


def _trunk_decay_start(cfg: TrainConfig) -> int | None:
    """The first decay step of cfg.trunk_dir's run (from its config.json), None when it cannot be read."""
    path = Path(cfg.trunk_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        saved = read_json(path, "trunk run config", expect=dict)
        return wsd_decay_start(int(saved["steps"]), TrainConfig.from_dict(saved["train"]))
    except (ValueError, KeyError, TypeError, UserError):
        return None


def _check_trunk(cfg: TrainConfig, run_config: dict, n_steps: int, step_tokens: int) -> None:
    """Refuse a WSD branch whose trunk cannot serve it.

    Refuse (UserError, nothing written) a branch whose trunk cannot serve it: not a run dir, made
    with another tokenizer, data, shape or options, a branch point past the trunk's stable phase,
    or no stable checkpoint there (yet, or ever: the trunk failed first).
    """
    trunk = Path(cfg.trunk_dir)
    ended = read_result(trunk)
    if not (trunk / "config.json").is_file():
        if ended and ended.status == Status.FAILED and not (trunk / CHECKPOINT_DIR).exists():
            # the trunk's job recorded a failure before the trainer wrote anything
            raise UserError(f"trunk {trunk} {ended.status} before any checkpoint: {ended.error or 'no error recorded'}")
        if ended or (trunk / CHECKPOINT_DIR).exists():  # a trained trunk whose config.json was deleted
            raise UserError(f"trunk {trunk} has lost its config.json: what it trained cannot be checked against this "
                            "branch; retrain the trunk (ehrfm train ... --overwrite, or in a sweep delete its run dir "
                            "and relaunch)")
        raise UserError(f"trunk {trunk} is not a run dir (no config.json): train the trunk first")
    saved = read_json(trunk / "config.json", "trunk run config")
    problems = []
    if saved.get("tokenizer_fingerprint") != run_config["tokenizer_fingerprint"]:
        problems.append("another tokenizer (tokenizer.json fingerprint differs)")
    data = data_differences(saved.get("data"), run_config["data"])
    if data:
        problems.append("other token data (" + ", ".join(data) + ")")
    shape = _config_differences(saved.get("model"), run_config["model"], ModelConfig, where="the trunk")
    if shape:
        problems.append("another shape (" + ", ".join(shape) + ")")
    ta = saved.get("train", {})
    fields = _config_differences(ta, run_config["train"], TrainConfig, skip=BRANCH_FREE, where="the trunk")
    if fields:
        problems.append("other train options (" + ", ".join(fields) + ")")
    if problems:
        raise UserError(f"trunk {trunk} cannot serve branch {cfg.out_dir}: it was made with {'; '.join(problems)}")
    trunk_cfg = TrainConfig.from_dict(ta)
    trunk_steps = int(saved["steps"])
    trunk_start = wsd_decay_start(trunk_steps, trunk_cfg)
    step, tokens = branch_point(cfg, n_steps, step_tokens, trunk_start)  # at most the trunk's decay start
    warmup = warmup_steps_for(trunk_steps, trunk_cfg)
    if step < warmup:
        raise UserError(f"branch point at {tokens} tokens (step {step}) is inside trunk {trunk}'s warmup ({warmup} steps)")
    if step != trunk_start and tokens not in trunk_cfg.stable_checkpoints:
        raise UserError(
            f"trunk {trunk} keeps no stable checkpoint at {tokens} tokens (it keeps {trunk_cfg.stable_checkpoints or 'none'}); "
            "plan the trunk with this branch point"
        )
    # Only looked at, never repaired (has_checkpoint would delete a damaged copy): the trunk owns it.
    stable = stable_checkpoint_dir(trunk, tokens) / CHECKPOINT_DIR
    redo = ("retrain the trunk (ehrfm train ... --overwrite; in a sweep, delete the trunk's run dir and relaunch with "
            "--retry-failed: the trunk retrains, then this branch)")
    if stable.exists():
        _, problem = verify_checkpoint(stable)
        if problem:
            problem = problem.replace(f"{stable}{os.sep}", "")  # "checkpoint file model.safetensors is damaged (...)"
            raise UserError(f"trunk {trunk}: its stable checkpoint at {tokens} tokens is damaged: {problem}; {redo}")
    elif ended and ended.status == Status.COMPLETED:
        raise UserError(f"trunk {trunk} completed, but its stable checkpoint at {tokens} tokens ({stable}) is missing; {redo}")
    else:
        # the trunk's own error, to its first clause: its log path and advice are the trunk's record's (a branch's
        # line held all of them and was cut mid-word at 600 characters)
        cause = (ended.error or "").split(" (log:")[0].split("; ")[0].strip() if ended else ""
        if ended is None:
            what_now = ""
        elif ended.status == Status.DIVERGED:
            # --retry-failed never retrains a diverged run: the same config diverges again
            what_now = ("; a diverged run is never trained again, and this recipe would diverge again: plan a new sweep "
                        "(another --out) with a lower --lr")
        else:
            what_now = "; `ehrfm sweep launch SWEEP --retry-failed` trains it again, then this branch"
        why = (f"the trunk {ended.status}" + (f": {cause[:200]}" if cause else "") + what_now
               if ended else "the trunk has not reached it yet")
        raise UserError(f"trunk {trunk} has no stable checkpoint at {tokens} tokens ({why})")


# --- run dir -----------------------------------------------------------------------------------


def _check_same_run(run_dir: Path, saved: dict, expected: dict) -> None:
    """Refuse to resume (or reuse) a run dir made by another config, tokenizer or data."""
    problems = []
    if saved.get("tokenizer_fingerprint") != expected["tokenizer_fingerprint"]:
        problems.append("tokenizer (tokenizer.json fingerprint) differs")
    data = data_differences(saved.get("data"), expected["data"])
    if data:
        problems.append("token data differs in " + ", ".join(data))
    model = _config_differences(saved.get("model"), expected["model"], ModelConfig)
    if model:
        problems.append("model config differs in " + ", ".join(model))
    train = _config_differences(saved.get("train"), expected["train"], TrainConfig, skip=RESUMABLE_CHANGES)
    if train:
        problems.append("train config differs in " + ", ".join(train))
    if problems:
        made_by = saved.get("ehrfm_version")
        version = f" (it was made by ehrfm {made_by}, this is {__version__})" if made_by and made_by != __version__ else ""
        raise UserError(
            f"run dir {run_dir} holds a different run ({'; '.join(problems)}){version}; "
            f"use another --out or pass --overwrite to discard it; {IN_A_SWEEP}"
        )


# RUNTIME fields a resume may change that still change the floating-point sums (gradient accumulation
# order, kernels): the resumed run is the same run, but not bit-identical to an uninterrupted one.
NUMERIC_RUNTIME = ("micro_batch_size", "eval_batch_size", "compile")


def _warn_numeric_changes(run_dir: Path, saved, expected: dict, saved_torch: str | None = None) -> None:
    """Warn once when a resume changes what sums its floating point: a NUMERIC_RUNTIME field or torch.

    NUMERIC_RUNTIME's 0 batch sizes read as their defaults; `saved_torch` is the torch version that
    began the run (config.json's torch_version; None: an older run dir that did not record it).
    """
    if not isinstance(saved, dict):
        return

    def value(cfg: dict, name: str):
        v = cfg.get(name, getattr(TrainConfig, name, None))
        if name == "micro_batch_size" and not v:
            return cfg.get("batch_size")
        if name == "eval_batch_size" and not v:
            return value(cfg, "micro_batch_size")
        return v

    changed = [f"{n.replace('_', '-')} {value(saved, n)} -> {value(expected, n)}" for n in NUMERIC_RUNTIME
               if value(saved, n) != value(expected, n)]
    if isinstance(saved_torch, str) and saved_torch != torch.__version__:  # its kernels may sum in another order
        changed.append(f"torch {saved_torch} -> {torch.__version__}")
    if changed:
        warn(f"resuming {run_dir} with {', '.join(changed)}: the same run, but not bit-identical to one run without "
             "the change (floating-point sums in another order); keep the settings to reproduce it exactly")


def _config_differences(saved, expected: dict, cls, skip=frozenset(), where: str = "the run dir") -> list[str]:
    """The fields of config dataclass `cls` in which a run dir's recorded config differs, with both values.

    A field absent from the recorded config (written by an older ehrfm, before the field existed)
    counts as its default: equal when this run uses the default. A recorded field this ehrfm does
    not know (a newer ehrfm's) always differs: what it changed cannot be reproduced here.
    """
    import dataclasses

    if not isinstance(saved, dict):
        return ["(config.json holds no such object)"]
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    defaults.update({f.name: f.default_factory() for f in dataclasses.fields(cls) if f.default_factory is not dataclasses.MISSING})
    out = []
    for k in sorted(set(saved) | set(expected)):
        if k in skip:
            continue
        if k not in expected:
            out.append(f"{k} (unknown to ehrfm {__version__}: {saved[k]!r})")
        elif saved.get(k, defaults.get(k, _ABSENT)) != expected[k]:
            out.append(f"{k} {saved.get(k, 'absent')!r} in {where} vs {expected[k]!r} now")
    return out


_ABSENT = object()


def _check_token_ids(td: TokenDir, split) -> None:
    """Refuse a split with no tokens or a token id outside the vocab (TokenDir.check_token_ids).

    Every id is read, stats.json's max_token_id is not trusted: a stale stats.json (tokens.npy
    replaced by one of the same length) let an id >= V through, and the run failed mid-way with
    "IndexError: index out of range in self" (a device-side assert on CUDA). The trainer reads
    every token for the content digest anyway (ehrfm.tokens.data_identity), so this costs no extra I/O.
    """
    td.check_token_ids(split.name, trust_stats=False)


def _check_something_to_predict(td: TokenDir, train_split, tuning_split, cfg: TrainConfig) -> None:
    """Refuse (UserError, before anything is written) splits that hold no next token to predict.

    A subject of one token has no target (its last token's is IGNORE). A train split of such
    subjects trained D tokens without a single gradient and was recorded "completed" (val_loss ln V);
    eval rows of such subjects gave 0/0 after the whole run, recorded "diverged: val loss became
    nan", blaming the model for the data. The eval rows are the first eval_tokens of the tuning split.
    """
    if int(np.maximum(np.asarray(train_split.lengths) - 1, 0).sum()) == 0:
        raise UserError(f"token dir {td.path}: split train holds no next token to predict (its {len(train_split)} "
                        "subject(s) have at most 1 token each); re-create the token dir with longer timelines")
    eval_stream = PackedStream(tuning_split, cfg.context, shuffle=False)
    eval_n = min(cfg.eval_tokens, eval_stream.epoch_tokens)
    eval_rows = eval_stream.rows(0, eval_n)
    if eval_rows.n_targets == 0:
        where, fix = (f"split tuning ({len(tuning_split)} subject(s) of at most 1 token each)", "")
        if eval_n < eval_stream.epoch_tokens:
            where, fix = f"the first {eval_n} tokens (--eval-tokens) of split tuning", "raise --eval-tokens or "
        raise UserError(f"token dir {td.path}: {where} hold no next token to predict, so the held-out loss would be 0/0; "
                        f"{fix}re-create the token dir with longer timelines")
    subject, n = eval_subjects(eval_rows)
    scored = len(np.unique(subject[(eval_rows.targets != IGNORE_INDEX) & (subject < n)]))
    if scored < 2:  # ratio_se needs 2 subjects; divergence then falls back to UNMEASURED_MARGIN
        more = " (raise --eval-tokens)" if eval_n < eval_stream.epoch_tokens else ""
        warn(f"the held-out loss is measured on {scored} subject of split tuning{more}: it has no standard error, and "
             "one patient's loss is no estimate of the model's")


def _bytes_text(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _check_attention_mask_fits(cfg: TrainConfig, device) -> None:
    """Refuse (UserError, before anything is written) a context whose attention mask cannot fit in memory on CPU.

    Packed rows of several timelines attend through a (micro_batch, 1, T, T) boolean mask (model.attention_layout):
    --context 150000 wanted 67 GB to build it for one row on a 23 GB machine, and the kernel killed the trainer
    (exit 137, no result.json, nothing said). Only what is certain is counted (the attention's own scores come on
    top); on CUDA an out-of-memory error is raised and the run recorded failed.
    """
    if device.type != "cpu":
        return
    # building it holds the rows' segment match, the causal triangle and their product: (2 B + 1) T^2 bytes
    need = (2 * cfg.micro_batch_size + 1) * cfg.context**2
    free = free_memory(device)
    if free is not None and need > free:
        raise UserError(f"--context {cfg.context:,}: packed rows attend through a boolean mask of {cfg.micro_batch_size} x "
                        f"{cfg.context:,}^2 that takes {_bytes_text(need)} to build, above this machine's "
                        f"{_bytes_text(free)} of available memory (before the attention itself); use a shorter "
                        "--context or a smaller --micro-batch-size")


def _prepare_run_dir(run_dir: Path, run_config: dict, overwrite: bool, held: contextlib.ExitStack,
                     inputs=()) -> dict | None:
    """Create or validate the run dir (rank 0) under its training lock, which `held` keeps until the run ends.

    Returns the existing result when already finished; RunDirBusyError when another process trains
    this run dir (checked before anything in it is read or changed). UserError: the run dir is,
    holds or lies inside one of `inputs` (the token dir), or `overwrite` would empty a directory
    ehrfm did not write (ehrfm.io.check_ehrfm_output).
    """
    check_not_input(run_dir, inputs)
    check_not_inside_output(run_dir)  # a run dir inside a token or MEDS dir would change that data
    if overwrite:
        check_ehrfm_output(run_dir, ignore=(LOCK_FILE,), command="train")
        check_own_entries(run_dir, RUN_DIR_ENTRIES, "train", patterns=("events.out.tfevents.*",))
    if run_dir.exists() and not overwrite and not (run_dir / "config.json").is_file() \
            and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        left = sorted(p.name for p in run_dir.iterdir() if p.name in (CHECKPOINT_DIR, "result.json", "metrics.jsonl"))
        if left:  # a run dir whose config.json was deleted: what it trained cannot be checked, so not resumed
            raise UserError(f"run dir {run_dir} has lost its config.json ({', '.join(left)} remain): what it trained "
                            f"cannot be checked against this run; pass --overwrite to retrain it, or choose another --out; {IN_A_SWEEP}")
        raise UserError(f"output {run_dir} exists and is not a run dir (no config.json); choose another --out")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    held.enter_context(lock_run_dir(run_dir))
    if overwrite:  # everything but the lock, which another trainer may be waiting on
        for p in run_dir.iterdir():
            if p.name == LOCK_FILE:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    if (run_dir / "config.json").is_file():
        # Damaged (a disk full or a copy cut short): what the dir trained cannot be checked, so it is not guessed at.
        saved = read_json(run_dir / "config.json", "run config", expect=dict,
                          hint=f"pass --overwrite (or remove {run_dir}) to train the run again from the start; in a "
                               "sweep, remove the run dir and run `ehrfm sweep launch` again")
        _check_same_run(run_dir, saved, run_config)
        mark_output(run_dir, "train")  # ours (a run dir of an older ehrfm gets its marker here)
        result = read_result(run_dir)
        if result is not None:
            if result.kept:  # deterministic outcomes: keep
                return result.to_json()
            (run_dir / "result.json").unlink()  # a failed run (e.g. out of memory) is retried, from its checkpoint
        if _started(run_dir):  # it trains on from a checkpoint (a kept result above trains nothing)
            _warn_numeric_changes(run_dir, saved.get("train"), run_config["train"], saved.get("torch_version"))
        return None
    try:
        write_json(run_dir / "config.json", run_config)
        mark_output(run_dir, "train")
    except BaseException:  # a full disk at start-up: leave nothing behind (the lock dies with us)
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return None


def _started(run_dir: Path) -> bool:
    """Has this run dir begun training: a checkpoint, its previous copy, or one being written?

    A pure look (has_checkpoint recovers files and, under DDP, waits on every rank).
    """
    return (run_dir / CHECKPOINT_DIR).exists() or (run_dir / PREVIOUS_DIR).exists() \
        or any(run_dir.glob(f"{CHECKPOINT_DIR}.tmp-*"))


def _finished(run_dir: Path) -> bool:
    """Does the run dir hold a completed or diverged result (kept as it is, never retrained)?"""
    result = read_result(run_dir)
    return result is not None and result.kept


# --- distributed -------------------------------------------------------------------------------


class _Dist:
    """Rank/world of this process; initialises the process group under torchrun."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owns_group = False
        if device_pref not in ("auto", "cpu") and not device_pref.startswith("cuda"):
            raise UserError(f"--device must be auto, cpu, cuda or cuda:N (got {device_pref!r})")
        if device_pref.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device_pref} requested but CUDA is not available on this machine")
        cuda = device_pref.startswith("cuda") or (device_pref == "auto" and torch.cuda.is_available())
        if cuda:
            self.device = torch.device(f"cuda:{self.local_rank}" if device_pref in ("auto", "cuda") else device_pref)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def broadcast_object(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self):
        if self.owns_group:
            dist.destroy_process_group()


# --- evaluation --------------------------------------------------------------------------------


def _to_torch(rows: PackedRows, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(tokens, targets, segment ids) on `device`; segment ids None when every row is one segment.

    Deciding that here, on the host, spares the model's own check: a device sync per step and,
    under torch.compile, a graph break (ehrfm.model.attention_layout).
    """
    return (
        torch.from_numpy(rows.tokens).to(device, non_blocking=True),
        torch.from_numpy(rows.targets).to(device, non_blocking=True),
        None if rows.one_segment_per_row else torch.from_numpy(rows.segment_ids).to(device, non_blocking=True),
    )


def eval_subjects(eval_rows: PackedRows) -> tuple[np.ndarray, int]:
    """(subject index of every position (n_rows, T): 0..S-1 in stream order, S at padding; S).

    The eval stream is in file order within one epoch, so a segment id is one subject, also
    across the window cuts of a subject longer than a row (ehrfm.packing).
    """
    seg = eval_rows.segment_ids
    valid = seg != PAD_SEGMENT
    ids, inverse = np.unique(seg[valid], return_inverse=True)
    out = np.full(seg.shape, len(ids), dtype=np.int64)
    out[valid] = inverse
    return out, len(ids)


@torch.no_grad()
def evaluate_subjects(model, eval_rows: PackedRows, batch_size: int, device, autocast, dd: _Dist) -> tuple[np.ndarray, np.ndarray]:
    """Held-out next-token loss per eval subject: (nats summed (S,) float64, scored targets (S,)).

    Each rank scores its round-robin share of the rows; per-token losses are summed per subject
    on the host (np.bincount, a fixed order: the same sums on every device and rank count).
    """
    core = getattr(model, "module", model)
    was_training = core.training
    core.eval()
    subject, n = eval_subjects(eval_rows)
    sums = np.zeros((2, n + 1), dtype=np.float64)
    mine = np.arange(dd.rank, len(eval_rows.tokens), dd.world)
    for i in range(0, len(mine), batch_size):
        rows = mine[i : i + batch_size]
        idx, tgt, seg = _to_torch(eval_rows.take(rows), device)
        with autocast():
            _, losses = core(idx, tgt, segment_ids=seg, reduction="none")
        where = subject[rows].ravel()
        sums[0] += np.bincount(where, weights=losses.double().cpu().numpy().ravel(), minlength=n + 1)
        sums[1] += np.bincount(where, weights=(eval_rows.targets[rows] != IGNORE_INDEX).ravel(), minlength=n + 1)
    if dd.world > 1:
        total = torch.from_numpy(sums).to(device)
        dist.all_reduce(total)
        sums = total.cpu().numpy()
    core.train(was_training)
    return sums[0, :n], sums[1, :n]


def evaluate(model, eval_rows: PackedRows, batch_size: int, device, autocast, dd: _Dist, per_subject: bool = False):
    """Mean next-token loss (nats/token) over the eval rows.

    Args:
        model: the GPT (or its DDP wrapper); put in eval mode for the pass, then restored.
        eval_rows: the packed held-out rows (n_rows, T).
        batch_size: rows per forward pass.
        device: where the model is.
        autocast: a zero-argument context manager factory (bf16 autocast or a null context).
        dd: the distributed setup; each rank scores its round-robin share, sums are all-reduced.
        per_subject: also return the per-subject sums.

    Returns:
        The mean loss over the eval rows' scored targets (nats/token); with per_subject, the tuple
        (mean, nats summed per eval subject (S,), scored targets per eval subject (S,))
        (`evaluate_subjects`).
    """
    loss_sums, counts = evaluate_subjects(model, eval_rows, batch_size, device, autocast, dd)
    mean = float(loss_sums.sum() / counts.sum())
    return (mean, loss_sums, counts) if per_subject else mean


def ratio_se(num: np.ndarray, den: np.ndarray) -> float | None:
    """Standard error of the ratio sum(num) / sum(den) over independent clusters (here subjects).

    The linearised (delta-method) variance of a ratio estimator, as for cluster samples (Cochran
    1977, Sampling Techniques, section 6.3; the cluster-robust sandwich variance of a mean):
        r = sum(num) / sum(den),  SE(r) = sqrt(S / (S - 1) * sum((num - r den)^2)) / sum(den).
    Tokens of one subject are correlated, so the subject, not the token, is the sampling unit:
    a per-token SE would understate the noise. None with fewer than 2 subjects with den > 0.
    """
    keep = den > 0
    num, den = np.asarray(num, dtype=np.float64)[keep], np.asarray(den, dtype=np.float64)[keep]
    if len(den) < 2:
        return None
    r = num.sum() / den.sum()
    return float(math.sqrt(len(den) / (len(den) - 1) * ((num - r * den) ** 2).sum()) / den.sum())


# --- the trainer -------------------------------------------------------------------------------


def train(cfg: TrainConfig, handle_signals: bool = True) -> dict:
    """Train one model as configured; returns the result dict (also RUN/result.json, unless interrupted).

    Trains exactly D = tokens_for(cfg, ...) tokens with AdamW and the cosine or WSD schedule
    (`lr_at`), resuming from RUN/checkpoint/ when present; see the module docstring for the run
    dir, stops, divergence and WSD branches.

    Args:
        cfg: the run's config (token dir, out dir, shape, budget in tokens or FLOPs, optimizer).
        handle_signals: install SIGTERM/SIGUSR1/SIGHUP/SIGINT handlers (main thread only) for the duration of the
            run; SIGHUP and SIGINT only where they are not ignored (nohup, a script's background job, a sweep job's trainer).

    Returns:
        result.json's content: status ("completed", "failed", "diverged"; "interrupted" when
        stopped, without result.json), n_params, n_params_total, vocab_size, tokens, flops (FLOPs),
        val_loss (nats/token), loss_per_event (nats/event), wall_s (seconds), tokens_per_s, error ...

    Raises:
        UserError: a bad config or token dir, a budget under one token, or a resume or WSD branch
            whose run dir, tokenizer, data or config does not match.
        RunDirBusyError: another trainer holds the run dir's lock (a UserError).
    """
    dd = _Dist(cfg.device)
    old_handlers = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            old_handlers[s] = signal.signal(s, lambda signum, frame: _stop_requested.set())
        for s in STOP_UNLESS_IGNORED:  # before: a SIGHUP killed the run through the CLI's handler, no checkpoint
            if signal.getsignal(s) is not signal.SIG_IGN:
                old_handlers[s] = signal.signal(s, lambda signum, frame: _stop_requested.set())
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, _on_ctrl_c)
    try:
        with contextlib.ExitStack() as held:  # the run dir's lock (rank 0), released on return
            return _train(cfg, dd, held)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        _stop_requested.clear()
        dd.close()


def _train(cfg: TrainConfig, dd: _Dist, held: contextlib.ExitStack) -> dict:
    td = TokenDir(cfg.tokens_dir)
    if td.vocab_size < 2:  # one token: every target is it, a held-out loss of 0 (sweeps call that damaged)
        raise UserError(f"{td.path / 'tokenizer.json'}: field vocab has {td.vocab_size} token(s); a model needs at least 2 "
                        "to predict anything (re-create the token dir with `ehrfm tokenize`)")
    model_cfg = cfg.model_config(td.vocab_size)
    D = tokens_for(cfg, model_cfg)
    fpt = flops_per_token(model_cfg)
    if D < 1:
        raise UserError(f"budget of {cfg.flops:g} FLOPs is less than one token ({fpt:g} FLOPs/token)")
    step_tokens = cfg.batch_size * cfg.context
    n_steps = -(-D // step_tokens)
    train_split, tuning_split = td.split("train"), td.split("tuning")
    for split in (train_split, tuning_split):
        _check_token_ids(td, split)
    _check_something_to_predict(td, train_split, tuning_split, cfg)
    _check_attention_mask_fits(cfg, dd.device)
    run_dir = Path(cfg.out_dir)
    run_config = {
        "ehrfm_version": __version__,
        "torch_version": torch.__version__,  # another torch changes kernels: said when a resume crosses it
        "train": cfg.to_dict(),
        "model": model_cfg.to_dict(),
        "tokenizer_fingerprint": td.fingerprint,
        "data": data_identity(td),
        "vocab_size": td.vocab_size,
        "n_params": n_params(model_cfg),
        "n_params_total": n_params_total(model_cfg),
        "flops_per_token": fpt,
        "tokens": D,
        "flops": fpt * D,
        "steps": n_steps,
        "world_size": dd.world,
    }
    run_config["train"]["tokens_dir"] = str(Path(cfg.tokens_dir).resolve())
    if cfg.schedule == "wsd":
        run_config["warmup_steps"] = warmup_steps_for(n_steps, cfg)
        run_config["decay_start_step"] = wsd_decay_start(n_steps, cfg)
    _check_wsd_phases(cfg, n_steps)
    _stable_steps(cfg, n_steps, step_tokens)
    logger_for(cfg)  # a bad logger name or a missing backend, before the run dir is written
    if cfg.planned_data is not None and (moved := data_differences(cfg.planned_data, run_config["data"])):
        where = f"sweep {cfg.extra['sweep']}" if isinstance(cfg.extra.get("sweep"), str) else "its launcher"
        raise UserError(f"token dir {cfg.tokens_dir} holds other data than run {run_dir} was planned on by {where} "
                        f"({'; '.join(moved)}): re-tokenized since planning? nothing trained; plan a new sweep "
                        "(another --out) for this token dir")
    finished = None
    if dd.main:
        try:
            if cfg.trunk_dir and not _started(run_dir) and not _finished(run_dir):
                _check_trunk(cfg, run_config, n_steps, step_tokens)  # before anything is written
            finished = ("ok", _prepare_run_dir(run_dir, run_config, cfg.overwrite, held,
                                                    inputs=(cfg.tokens_dir, cfg.trunk_dir)))
        except UserError as e:
            finished = ("busy" if isinstance(e, RunDirBusyError) else "error", str(e))
    finished = dd.broadcast_object(finished)
    if finished[0] != "ok":
        raise (RunDirBusyError if finished[0] == "busy" else UserError)(finished[1])
    if finished[1] is not None:
        if dd.main:
            summary(f"run {run_dir} already finished ({finished[1].get('status')}); nothing to do")
        return finished[1]

    base = {
        "n_params": run_config["n_params"],
        "n_params_total": run_config["n_params_total"],
        "vocab_size": td.vocab_size,
        "tokens": D,
        "flops": fpt * D,
        "flops_per_token": fpt,
        "n_layer": model_cfg.n_layer,
        "d_model": model_cfg.d_model,
        "n_head": model_cfg.n_head,
        "context": model_cfg.context,
        "steps": n_steps,
        "seed": cfg.seed,
        "tokenizer_fingerprint": td.fingerprint,
        "schedule": cfg.schedule,
        "trunk_id": Path(cfg.trunk_dir).name if cfg.trunk_dir else None,
        "trunk_dir": str(Path(cfg.trunk_dir).resolve()) if cfg.trunk_dir else None,
        "branch_tokens": branch_point(cfg, n_steps, step_tokens, _trunk_decay_start(cfg))[1] if cfg.trunk_dir else 0,
    }
    if dd.main:
        _warn_repeated_data(td, train_split, D)
    try:
        return _train_loop(cfg, dd, td, model_cfg, D, n_steps, train_split, tuning_split, run_dir, base)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:  # recorded, never dropped: the sweep sees status failed
        error = f"{type(e).__name__}: {e}"
        try:
            return _end(dd, run_dir, Status.FAILED, base, val_loss=None, wall_s=None, tokens_per_s=None, error=error)
        except (OSError, UserError) as unrecorded:  # the run dir turned unwritable (full disk): say what failed first
            raise UserError(f"run {run_dir} failed ({error}), and the failure could not be recorded in its result.json "
                            f"({unrecorded}); its last checkpoint, if any, resumes it once the run dir is writable "
                            "again") from e


def _warn_repeated_data(td: TokenDir, train_split, D: int) -> None:
    """Say on stderr when D exceeds the train split's unique tokens: the run sees data more than once.

    A multi-epoch run is trained as asked, and result.json records its `epochs`; but its loss is
    not a one-pass point of a scaling law (Muennighoff et al. 2023: repeated tokens are worth less),
    so the user is told before hours of compute, with the numbers to choose a smaller D.
    """
    epochs = D / train_split.n_tokens
    if epochs > 1:
        warn(f"{D:,} training tokens are {epochs:.3f} epochs of the {train_split.n_tokens:,} tokens of "
             f"{td.path / train_split.name}: data is repeated (result.json records epochs; fits use effective data)")


def _end(dd: _Dist, run_dir: Path, status: Status, base: dict, **outcome) -> dict:
    """Build, write and return the run's result.

    The run's result (base accounting, then its outcome), written to result.json by rank 0
    unless interrupted (an interrupted run has no result.json); returned as a dict.
    """
    result = RunResult(status, **base, **outcome)
    if dd.main and status != Status.INTERRUPTED:
        check_run_dir_intact(run_dir)
        write_result(run_dir, result)
    return result.to_json()


def _autocast_for(cfg: TrainConfig, device: torch.device, dtype: str | None = None):
    """(autocast context factory, dtype name) of cfg.dtype (or `dtype`, a resolved name) on `device`."""
    dtype = dtype or cfg.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "float32"
    if dtype == "bfloat16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bfloat16"
    return contextlib.nullcontext, "float32"


@dataclass
class _Run:
    """One run's training state, shared by the loop's step, eval, checkpoint and finish helpers."""

    cfg: TrainConfig
    dd: _Dist
    td: TokenDir
    D: int
    n_steps: int
    run_dir: Path
    base: dict
    core: GPT
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    autocast: object
    dtype_name: str
    stream: PackedStream
    eval_rows: PackedRows
    eval_n: int
    eval_bs: int
    stable_steps: dict[int, int]
    identity: dict  # train_identity(cfg): what every checkpoint of the run records
    step: int = 0
    wall_s: float = 0.0
    train_loss: float = float("nan")
    initial_loss: float | None = None  # the first step's train loss, at the initial weights: what a run must beat
    initial_loss_se: float | None = None  # its standard error over the first batch's subjects (`_initial_loss_se`)

    @property
    def step_tokens(self) -> int:
        return self.cfg.batch_size * self.cfg.context

    def tokens_at(self, step: int) -> int:
        return min(step * self.step_tokens, self.D)

    def metrics_line(self, step: int, **more) -> str:
        """A metrics.jsonl line for `step`: step, tokens, train_loss, then `more`."""
        return _json_line({"step": step, "tokens": self.tokens_at(step), "train_loss": self.train_loss, **more})

    def save(self, where: Path, status: Status) -> None:
        """Checkpoint (rank 0) weights, AdamW and RNG state to `where`/checkpoint; every rank waits."""
        if self.dd.main:
            check_run_dir_intact(self.run_dir)  # never recreate a run dir deleted under us (ehrfm.run_lock)
            save_checkpoint(where, self.core, self.optimizer, {
                "step": self.step, "tokens_seen": self.tokens_at(self.step), "wall_s": self.wall_s, "status": str(status),
                "train_loss": self.train_loss, "initial_train_loss": self.initial_loss,
                "initial_train_loss_se": self.initial_loss_se, "dtype": self.dtype_name,
                "tokenizer_fingerprint": self.td.fingerprint, "steps": self.n_steps, "tokens": self.D,
                "train": self.identity})
        self.dd.barrier()

    def evaluate(self) -> float:
        return evaluate(self.model, self.eval_rows, self.eval_bs, self.dd.device, self.autocast, self.dd)

    def diverged(self, step: int, reason: str, wall_s: float, val_loss: float | None = None,
                 eval_loss_se: float | None = None) -> dict:
        """Record a diverged run; `val_loss` (and its eval_loss_se) is kept (as a diagnosis, never fitted) when finite."""
        kept = val_loss if val_loss is not None and math.isfinite(val_loss) else None
        more = {"eval_loss_se": eval_loss_se} if kept is not None and eval_loss_se is not None else {}
        result = _end(self.dd, self.run_dir, Status.DIVERGED, self.base, val_loss=kept, **more, initial_train_loss=self.initial_loss,
                      initial_train_loss_se=self.initial_loss_se,
                      wall_s=wall_s, tokens_per_s=None, diverged_step=step, error=reason)
        if self.dd.main:
            summary(f"diverged: {reason}; recorded in {self.run_dir / 'result.json'}")
        return result


def _setup(cfg, dd, td, model_cfg, D, n_steps, train_split, tuning_split, run_dir: Path, base: dict) -> _Run:
    """Set up the model, optimizer, data and eval rows of a run.

    Model, AdamW, data streams and eval rows for the run; resumed from its checkpoint (or, for a
    WSD branch, its trunk's stable checkpoint) when there is one.
    """
    device = dd.device
    autocast, dtype_name = _autocast_for(cfg, device)
    torch.manual_seed(cfg.seed)  # the seed fixes init; data order is fixed by the stream's seed
    core = GPT(model_cfg).to(device)
    core.attention_backend = cfg.attention
    decay = [p for p in core.parameters() if p.dim() >= 2]
    no_decay = [p for p in core.parameters() if p.dim() < 2]
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused,
    )
    identity = train_identity(cfg)
    expected = {"tokenizer_fingerprint": td.fingerprint, "tokens": D, "steps": n_steps, "train": identity}
    step, wall_s, train_loss, initial_loss, initial_loss_se, trained_in = _resume(cfg, core, optimizer, run_dir, device,
                                                                                  expected, base["branch_tokens"], dd.main)
    if cfg.dtype == "auto" and trained_in in ("float32", "bfloat16") and trained_in != dtype_name:
        # "auto" is resolved where a run begins (bf16 on CUDA, fp32 on CPU): a run resumed on another kind
        # of device (a requeue to a node without a GPU) keeps the precision it was trained in, never switches
        if dd.main:
            warn(f"{run_dir}: resuming in {trained_in}, the precision its checkpoint was trained in (dtype auto "
                 f"would give {dtype_name} on {device.type})")
        autocast, dtype_name = _autocast_for(cfg, device, trained_in)
    model = core
    if dd.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:  # minutes of compile on CPU; pays off only for long runs
        model = torch.compile(model)

    pad_id = td.pad_id if "PAD" in td.vocab else 0
    stream = PackedStream(train_split, cfg.context, seed=cfg.seed, shuffle=True, pad_id=pad_id)
    eval_stream = PackedStream(tuning_split, cfg.context, shuffle=False, pad_id=pad_id)
    eval_n = min(cfg.eval_tokens, eval_stream.epoch_tokens)
    return _Run(cfg, dd, td, D, n_steps, run_dir, base, core, model, optimizer, autocast, dtype_name, stream,
                eval_rows=eval_stream.rows(0, eval_n), eval_n=eval_n, eval_bs=cfg.eval_batch_size or cfg.micro_batch_size,
                stable_steps=_stable_steps(cfg, n_steps, cfg.batch_size * cfg.context), identity=identity,
                step=step, wall_s=wall_s, train_loss=train_loss, initial_loss=initial_loss, initial_loss_se=initial_loss_se)


def train_identity(cfg: TrainConfig) -> dict:
    """The settings that decide what a run computes (TrainConfig fields of role IDENTITY), as a checkpoint records them."""
    d = cfg.to_dict()
    return {k: d[k] for k in sorted(fields_with(TrainConfig, "role", IDENTITY))}


def _check_checkpoint_is_this_runs(ckpt: Path, model_cfg: ModelConfig, expected: dict) -> None:
    """Refuse (UserError, nothing changed) a checkpoint that another run wrote into this run dir.

    A checkpoint/ copied from another run dir (another shape, vocab, tokenizer or budget) was
    loaded blindly: a shape mismatch failed the run with a 20-line "size mismatch" RuntimeError,
    recorded as "failed" and failing again on every retry; a checkpoint of the same shape but
    another tokenizer or budget would have been resumed silently. Checked against model_config.json
    and state.json's tokenizer_fingerprint, tokens and steps (`expected`, the run's config.json values).
    """
    problems = []
    if (ckpt / "model_config.json").is_file():  # a format-1 checkpoint may lack it: load_state_dict still checks shapes
        saved = read_json(ckpt / "model_config.json", "checkpoint model config")
        problems += _config_differences(saved, model_cfg.to_dict(), ModelConfig, where="the checkpoint")
    state = read_json(ckpt / "state.json", "checkpoint state", expect=dict)
    for key in ("tokenizer_fingerprint", "tokens", "steps"):
        if key in state and state[key] != expected[key]:
            problems.append(f"{key} {state[key]!r} in the checkpoint vs {expected[key]!r} now")
    # the settings it trained with (since 2026-12-06; an older checkpoint has none): a checkpoint of another seed
    # or lr, same shape and budget, was resumed silently and its steps reported as this run's
    problems += checkpoint_setting_differences(state.get("train"), expected["train"])
    if problems:
        raise UserError(f"checkpoint {ckpt} was written by another run ({'; '.join(problems)}); delete {ckpt} "
                        f"to train this run from step 0, or pass --overwrite to discard the run dir; {IN_A_SWEEP}")


def _resume(cfg, core, optimizer, run_dir: Path, device, expected: dict, branch_tokens: int,
            main: bool = True) -> tuple[int, float, float, float | None, float | None, str | None]:
    """Load the run's checkpoint and return where training resumes.

    (step, wall_s, train_loss, initial_train_loss, initial_train_loss_se, dtype trained in) to start from,
    loading the run's checkpoint (or a WSD branch's trunk checkpoint) into `core` and `optimizer`; a fresh
    run starts at 0 (dtype None, as for a checkpoint of an older ehrfm). `expected`: the run's
    tokenizer_fingerprint, tokens and steps, which its own checkpoint must hold; `branch_tokens`: a WSD
    branch's branch point in tokens (`branch_point`, as result.json records it).
    """
    if has_checkpoint(run_dir):
        _check_checkpoint_is_this_runs(run_dir / CHECKPOINT_DIR, core.config, expected)
        state = load_training_state(run_dir, core, optimizer, device=device)
        return (int(state["step"]), float(state["wall_s"]), float(state.get("train_loss", "nan")),
                state.get("initial_train_loss"), state.get("initial_train_loss_se"), state.get("dtype"))
    if cfg.schedule == "wsd" and not cfg.trunk_dir and (kept := _newest_stable_checkpoint(cfg, core, run_dir, expected)):
        # A WSD trunk killed without a checkpoint of its own (SIGKILL, out of memory: a sweep's runs checkpoint only when
        # stopped) resumes from the newest stable-phase checkpoint it kept for its branches: the same state a
        # checkpoint at that step holds, so the run goes on as if uninterrupted (it trained again from step 0).
        state = load_training_state(kept, core, optimizer, device=device)
        if main:  # one line, not one per DDP rank
            warn(f"{run_dir}: no checkpoint of its own; resuming from its stable-phase checkpoint at step {state['step']} "
                 f"({kept.name})", "train")
        return (int(state["step"]), float(state["wall_s"]), float(state.get("train_loss", "nan")),
                state.get("initial_train_loss"), state.get("initial_train_loss_se"), state.get("dtype"))
    if cfg.trunk_dir:  # a WSD branch starts from its trunk's stable checkpoint (checked in _train)
        b_step = branch_tokens // (cfg.batch_size * cfg.context)
        state = load_training_state(stable_checkpoint_dir(cfg.trunk_dir, branch_tokens), core, optimizer, device=device)
        if int(state["step"]) != b_step:
            raise UserError(f"trunk {cfg.trunk_dir}: stable checkpoint at {branch_tokens} tokens holds step {state['step']}, "
                            f"not {b_step}")
        # wall_s counts the branch's own time; the initial loss is the trunk's (the same initial weights)
        return (b_step, 0.0, float(state.get("train_loss", "nan")), state.get("initial_train_loss"),
                state.get("initial_train_loss_se"), state.get("dtype"))
    logged = _last_logged_step(run_dir)
    if main and logged:  # trained before, and no checkpoint left (deleted, or never saved): said, not done silently
        warn(f"{run_dir}: no checkpoint to resume from (its log reaches step {logged}): training from step 0", "train")
    return 0, 0.0, float("nan"), None, None, None


def _last_logged_step(run_dir: Path) -> int | None:
    """The step of metrics.jsonl's last readable line, None when there is none (a fresh run dir)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in reversed(lines):
        try:
            step = json.loads(line).get("step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int) and not isinstance(step, bool):
            return step
    return None


def _newest_stable_checkpoint(cfg, core, run_dir: Path, expected: dict) -> Path | None:
    """The dir of a WSD run's newest sound stable-phase checkpoint of its own (`_stable_steps`), else None.

    A damaged one is passed over for an older one (verify_checkpoint; never deleted: branches may need it);
    one written by another run is refused (UserError, as its own checkpoint would be).
    """
    step_tokens = cfg.batch_size * cfg.context
    for tokens in sorted(_stable_steps(cfg, expected["steps"], step_tokens).values(), reverse=True):
        where = stable_checkpoint_dir(run_dir, tokens)
        if not (where / CHECKPOINT_DIR).is_dir() or verify_checkpoint(where / CHECKPOINT_DIR)[1]:
            continue
        _check_checkpoint_is_this_runs(where / CHECKPOINT_DIR, core.config, expected)
        return where
    return None


def _train_loop(cfg, dd, td, model_cfg, D, n_steps, train_split, tuning_split, run_dir: Path, base: dict) -> dict:
    """The training loop, until D tokens are trained, then the final eval.

    Steps until D tokens are trained (or a stop request, or divergence), then the final eval:
    _step (forward/backward), the optimizer step, _after_step (eval, log, checkpoint), _finish.
    """
    # A fresh WSD branch starts at its trunk's checkpoint, not its own: its log begins at the branch point (the trunk's
    # log holds the steps before), and nothing of it was lost (every branch warned "the log of steps 1-N is lost").
    # A run that is no branch starts at step 0 or where its own checkpoint (or stable-phase checkpoint) left it.
    own_checkpoint = _started(run_dir) or not cfg.trunk_dir
    run = _setup(cfg, dd, td, model_cfg, D, n_steps, train_split, tuning_split, run_dir, base)
    # metrics.jsonl truncated to the step resumed from (+ --logger backend); closed below
    metrics_f = metrics_log(run_dir, cfg, resume_step=run.step if own_checkpoint else 0) if dd.main else None
    quiet = {} if dd.main else {"disable": True}  # one bar, on rank 0 (EHRFM_QUIET=1 silences it)
    bar = progress(total=D, initial=run.tokens_at(run.step), unit="tok", unit_scale=True, desc="train", **quiet)
    run.model.train()
    session_t0, session_tokens = time.perf_counter(), 0
    stop = False  # a stop requested at the last step is honoured by _finish, before the final eval
    try:
        while run.step < n_steps:
            t0 = time.perf_counter()
            batch, lr, grad_norm, stop = _step(run)
            reason = divergence_reason(run.step + 1, train_loss=run.train_loss, grad_norm=grad_norm)
            if reason:
                if dd.main:
                    metrics_f.write(run.metrics_line(run.step + 1, lr=lr, grad_norm=grad_norm, diverged=reason))
                return run.diverged(run.step + 1, reason, run.wall_s + time.perf_counter() - t0)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.step += 1
            dt = time.perf_counter() - t0
            run.wall_s += dt
            session_tokens += batch.n_tokens
            bar.update(batch.n_tokens)
            if run.step in run.stable_steps:  # kept for the WSD branches that decay from here
                run.save(stable_checkpoint_dir(run_dir, run.stable_steps[run.step]), Status.STABLE)
            bar.set_postfix(loss=f"{run.train_loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            ended = _after_step(run, metrics_f, lr, grad_norm, tokens_per_s=batch.n_tokens / dt, stop=stop, bar=bar)
            if ended is not None:
                return ended
        bar.close()
        # the final line goes through the same log: a second one opened a second W&B run for it
        return _finish(run, metrics_f, session_tokens, time.perf_counter() - session_t0, stop)
    finally:
        bar.close()
        if metrics_f:
            metrics_f.close()


def _step(run: _Run) -> tuple[PackedRows, float, float, bool]:
    """Forward and backward of the run's next step, with gradient clipping.

    Forward and backward of the run's next step (this rank's round-robin share of its rows, in
    micro-batches) and gradient clipping; the optimizer is not stepped yet. Sets run.train_loss
    (and, at step 0, run.initial_loss). Returns (the step's global batch, lr, grad norm, whether
    any rank was asked to stop).
    """
    cfg, dd, device = run.cfg, run.dd, run.dd.device
    start = run.step * run.step_tokens
    batch = run.stream.rows(start, min(run.step_tokens, run.D - start))
    n_predicted = batch.n_targets  # over the whole global batch: every rank knows it
    mine = np.arange(dd.rank, len(batch.tokens), dd.world)
    if len(mine) == 0:  # a rank without rows in a short last step still joins the all-reduce
        mine = np.array([0])
        local = batch.take(mine)
        local.targets[:] = -100
    else:
        local = batch.take(mine)
    lr = lr_at(run.step, run.n_steps, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    micro = range(0, len(local.tokens), cfg.micro_batch_size)
    for k, i in enumerate(micro):
        idx, tgt, seg = _to_torch(local.take(slice(i, i + cfg.micro_batch_size)), device)
        last = k == len(micro) - 1
        sync = contextlib.nullcontext() if (last or dd.world == 1) else run.model.no_sync()
        with sync:
            with run.autocast():
                _, part = run.model(idx, tgt, segment_ids=seg, reduction="sum", return_logits=False)
            # DDP averages gradients over ranks; scaling by world/n makes that the global mean
            (part * (dd.world / max(n_predicted, 1))).backward()
        loss_sum += part.detach().double()
    grad_norm = torch.nn.utils.clip_grad_norm_(run.core.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    # a test can hold the run here, after step `step + 1`'s gradients, to interrupt it exactly there
    fault_points.hold(f"step-{run.step + 1}", run.run_dir.name, _stop_requested)
    # one all-reduce per step carries the loss sum and any rank's stop request
    flags = torch.stack([loss_sum, torch.tensor(float(_stop_requested.is_set()), dtype=torch.float64, device=device)])
    if dd.world > 1:
        dist.all_reduce(flags)
    run.train_loss = float(flags[0]) / max(n_predicted, 1)
    if run.step == 0 and math.isfinite(run.train_loss):
        run.initial_loss = run.train_loss
        run.initial_loss_se = _initial_loss_se(run, batch)
    return batch, lr, float(grad_norm), float(flags[1]) > 0


@torch.no_grad()
def _initial_loss_se(run: _Run, batch: PackedRows) -> float | None:
    """Standard error of the first step's train loss (the initial loss) over the batch's subjects.

    The initial loss is a sample of the first batch's tokens: its noise (ratio_se over the
    subjects, as the held-out loss's) enters the divergence margin. One extra no-grad forward of
    the first batch at the initial weights (no RNG drawn, gradients untouched); under DDP each
    rank scores its own rows and the per-subject sums are all-reduced. None with fewer than 2
    subjects in the batch.
    """
    dd, core = run.dd, run.core
    mine = np.arange(dd.rank, len(batch.tokens), dd.world)  # this rank's rows (none: it only joins the all-reduce)
    subject, n = eval_subjects(batch)
    sums = np.zeros((2, n + 1), dtype=np.float64)
    if len(mine) and batch.n_targets:
        was_training = core.training
        core.eval()
        for i in range(0, len(mine), run.cfg.micro_batch_size):
            rows = mine[i : i + run.cfg.micro_batch_size]
            idx, tgt, seg = _to_torch(batch.take(rows), dd.device)
            with run.autocast():
                _, losses = core(idx, tgt, segment_ids=seg, reduction="none")
            where = subject[rows].ravel()
            sums[0] += np.bincount(where, weights=losses.double().cpu().numpy().ravel(), minlength=n + 1)
            sums[1] += np.bincount(where, weights=(batch.targets[rows] != IGNORE_INDEX).ravel(), minlength=n + 1)
        core.train(was_training)
    if dd.world > 1:
        total = torch.from_numpy(sums).to(dd.device)
        dist.all_reduce(total)
        sums = total.cpu().numpy()
    return ratio_se(sums[0, :n], sums[1, :n])


def _any_rank_stopping(dd: _Dist) -> bool:
    """Whether any rank was asked to stop (one all-reduce under DDP: every rank gets the same answer)."""
    flag = torch.tensor(float(_stop_requested.is_set()), dtype=torch.float64, device=dd.device)
    if dd.world > 1:
        dist.all_reduce(flag)
    return float(flag) > 0


def _after_step(run: _Run, metrics_f, lr: float, grad_norm: float, tokens_per_s: float, stop: bool, bar) -> dict | None:
    """After an optimizer step: the periodic held-out loss, the metrics line, and a stop or periodic checkpoint.

    Returns the run's result when it ends here (diverged, interrupted), else None.
    """
    cfg, dd, step, n_steps = run.cfg, run.dd, run.step, run.n_steps
    val_loss = None
    if cfg.eval_interval and step % cfg.eval_interval == 0 and step < n_steps:
        # a test can hold the run here, at the start of step `step`'s periodic eval, to stop it mid-eval
        fault_points.hold(f"eval-{step}", run.run_dir.name, _stop_requested)
        val_loss = run.evaluate()
        # only a non-finite loss stops a run early: a finite spike may still recover
        if not math.isfinite(val_loss):
            reason = divergence_reason(step, val_loss=val_loss)
            if dd.main:
                metrics_f.write(run.metrics_line(step, lr=lr, grad_norm=grad_norm, val_loss=val_loss, diverged=reason))
            return run.diverged(step, reason, run.wall_s)
        # a stop requested during the eval (a long one, on any rank) is honoured now, not after one more step
        stop = stop or _any_rank_stopping(dd)
    if dd.main and (step % cfg.log_interval == 0 or val_loss is not None or step == n_steps):
        # A run dir moved or deleted under the trainer was noticed only at its final write: a SLURM job trained 2,784
        # steps into the moved dir's metrics and then discarded them. One stat per log line stops it here.
        check_run_dir_intact(run.run_dir)
        more = {} if val_loss is None else {"val_loss": val_loss}
        metrics_f.write(run.metrics_line(step, lr=lr, grad_norm=grad_norm, tokens_per_s=tokens_per_s, **more))
        metrics_f.flush()
    if stop and step < n_steps:
        run.save(run.run_dir, Status.INTERRUPTED)
        bar.close()
        return _interrupted(run)
    if cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0 and step < n_steps:
        run.save(run.run_dir, Status.RUNNING)
    return None


def _interrupted(run: _Run) -> dict:
    """The result of a run stopped (its checkpoint written) at run.step: "interrupted", no result.json."""
    if run.dd.main:
        summary(f"interrupted at step {run.step}/{run.n_steps}; checkpoint written to {run.run_dir / 'checkpoint'}; "
                "rerun to resume")
    return _end(run.dd, run.run_dir, Status.INTERRUPTED, run.base, step=run.step, val_loss=None, wall_s=run.wall_s,
                tokens_per_s=None, error=None)


def _finish(run: _Run, metrics_f, session_tokens: int, session_s: float, stop: bool = False) -> dict:
    """The final checkpoint, then the final held-out loss; the completed (or, for a final blow-up, diverged) result.

    `metrics_f`: the run's open metrics log (ehrfm.loggers; None on ranks > 0), for the final line.
    `stop`: a stop was requested at the last step (every rank agrees: _step's all-reduce); the run
    returns "interrupted" after its checkpoint, and its resumption only evaluates.
    """
    dd, run_dir, D, step = run.dd, run.run_dir, run.D, run.step
    # The final checkpoint comes before the final eval, never after it: a kill during the eval (SLURM's
    # SIGKILL at the end of a SIGTERM's grace, an OOM on a large eval batch) then costs the eval, not
    # every step since the last periodic checkpoint (all of them by default). result.json still comes last.
    run.save(run_dir, Status.INTERRUPTED if stop else Status.COMPLETED)
    if stop:
        return _interrupted(run)
    # a test can kill the process here: the final checkpoint written, the final eval not begun
    fault_points.hold("final-eval", run_dir.name, _stop_requested)
    t_eval = time.perf_counter()
    val_loss, loss_sums, eval_counts = evaluate(run.model, run.eval_rows, run.eval_bs, run.dd.device, run.autocast, run.dd,
                                                per_subject=True)
    eval_s = time.perf_counter() - t_eval
    session_s += eval_s
    eval_loss_se = ratio_se(loss_sums, eval_counts)  # the eval sample's own noise: the divergence margin
    # an initial loss without its noise (a first batch of one subject; a checkpoint of an older
    # ehrfm) is not compared with: ln V bounds the run alone
    initial = run.initial_loss if run.initial_loss_se is not None else None
    reason = divergence_reason(step, vocab_size=run.td.vocab_size, initial_loss=initial, val_loss_se=eval_loss_se,
                               initial_loss_se=run.initial_loss_se, d_model=run.cfg.d_model, val_loss=val_loss)
    # the end-of-run line carries the lr of the last optimizer step (DESIGN: step, tokens, train_loss, lr, val_loss)
    final_lr = lr_at(step - 1, run.n_steps, run.cfg) if step >= 1 else None
    if reason:
        if dd.main:
            metrics_f.write(run.metrics_line(step, lr=final_lr, val_loss=val_loss, diverged=reason))
        return run.diverged(step, reason, run.wall_s + eval_s, val_loss=val_loss, eval_loss_se=eval_loss_se)
    # Tokens per event differ between code modes: compare runs by held-out nats per event
    # (TokenDir.event_head_mask: the events whose first token is among the scored targets).
    eval_events = run.td.count_events(run.eval_rows.targets)
    subject, n_subjects = eval_subjects(run.eval_rows)
    scored = run.eval_rows.targets != IGNORE_INDEX
    events = np.bincount(subject[scored], weights=run.td.event_head_mask[run.eval_rows.targets[scored]], minlength=n_subjects)
    wall_s = run.wall_s
    if dd.main:
        metrics_f.write(run.metrics_line(step, lr=final_lr, val_loss=val_loss))
        metrics_f.flush()
    # a test can kill the process here: the final checkpoint written, result.json not yet
    fault_points.hold("final-checkpoint", run_dir.name)
    result = _end(
        dd, run_dir, Status.COMPLETED, run.base,
        val_loss=val_loss,
        loss_per_event=val_loss * run.eval_rows.n_targets / eval_events if eval_events else None,
        eval_events=eval_events,
        # standard errors over eval subjects (ratio_se): the eval sample's own noise
        eval_loss_se=eval_loss_se,
        loss_per_event_se=ratio_se(loss_sums, events) if eval_events else None,
        eval_subjects=n_subjects,
        train_loss=run.train_loss,
        initial_train_loss=run.initial_loss,
        initial_train_loss_se=run.initial_loss_se,
        eval_tokens=int(run.eval_n),
        epochs=D / run.stream.epoch_tokens,
        wall_s=wall_s + eval_s,
        tokens_per_s=(D - run.base["branch_tokens"]) / wall_s if wall_s > 0 else None,
        # None when this process trained no step (it resumed a run killed after its last checkpoint)
        session_tokens_per_s=session_tokens / session_s if session_s > 0 and session_tokens > 0 else None,
        device=str(dd.device),
        dtype=run.dtype_name,
        world_size=dd.world,
        error=None,
    )
    if dd.main:
        epochs = D / run.stream.epoch_tokens
        tok_s = f"{result['tokens_per_s']:,.0f} tok/s" if result["tokens_per_s"] is not None else "rate n/a"
        summary(
            f"trained {run.base['n_params']:,} params on {D:,} tokens"
            + (f" ({epochs:.3f} epochs: data repeated)" if epochs > 1 else "")
            + f" in {result['wall_s']:.1f} s ({tok_s}): val_loss {val_loss:.4f} -> {run_dir}"
        )
    dd.barrier()
    return result


def _json_line(obj: dict) -> str:
    import json

    # strict JSON: a non-finite value is written as null (the line's "diverged" names it)
    return json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in obj.items()}) + "\n"
