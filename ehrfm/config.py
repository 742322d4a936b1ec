"""Configs of one model and of one training run, as plain dataclasses (saved as JSON beside outputs).

This module is torch-free: sweep planning and analysis import it without torch.

Architecture choices, written down once (DESIGN.md section 3):
- Llama-style decoder: pre-norm RMSNorm, rotary position embeddings (RoPE), SwiGLU MLP, no biases.
- Untied head: the output projection (d_model x vocab) is its own matrix, not the token embedding.
  Its FLOPs are counted (the `d_model * vocab` term of flops_per_token); the embedding lookup is not.
- SwiGLU hidden width: 8/3 * d_model rounded up to a multiple of 32 (Llama's rule, finer rounding
  so that small models keep ~8 d_model^2 MLP parameters).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ehrfm.errors import UserError

if TYPE_CHECKING:  # typing.Self is Python 3.11+; the package supports 3.10 (annotations are strings here)
    from typing_extensions import Self

MLP_MULTIPLE_OF = 32


def swiglu_hidden(d_model: int, multiple_of: int = MLP_MULTIPLE_OF) -> int:
    """Llama's SwiGLU width: 2/3 of 4*d_model, rounded up to a multiple of `multiple_of`.

    The SwiGLU hidden size of Shazeer (2020) as sized in Llama (Touvron et al. 2023): the same
    parameters as a 4*d_model GELU MLP.

    Args:
        d_model: the model width.
        multiple_of: the rounding unit (MLP_MULTIPLE_OF).

    Returns:
        The hidden width, a multiple of `multiple_of`.
    """
    hidden = math.ceil(8 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


# Roles of a TrainConfig field (its metadata "role"). The trainer's resume and branch checks and
# the sweep planner's run ids derive from them (`fields_with`), so a new field states its role once.
IDENTITY = "identity"  # decides what the run computes: part of run ids; a resume must keep it
RUNTIME = "runtime"  # where it runs, how it is logged or grouped per forward: a resume may change it; not in run ids
TRUNK = "trunk"  # the wsd trunk's run dir: a resume must keep it; not in run ids (a branch's id holds its trunk's id)
ROLES = (IDENTITY, RUNTIME, TRUNK)
# Further metadata flags (True when set): per_run (set per run by the planner or launcher, not a
# sweep-wide option), branch (a wsd branch may differ from its trunk in it: its length and the
# checkpoints it keeps), wsd (only a wsd run sets it); and choices (the allowed values).


def _f(role: str, default=dataclasses.MISSING, *, factory=dataclasses.MISSING, choices: tuple | None = None, **flags):
    """A dataclass field with its role (one of ROLES), flags and choices in its metadata."""
    assert role in ROLES, role
    meta = {"role": role, **flags}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, default_factory=factory, metadata=meta)


def fields_with(cls, key: str, value=True) -> frozenset[str]:
    """Names of the fields of dataclass `cls` whose metadata[key] equals `value`.

    Example: fields_with(TrainConfig, "role", RUNTIME), fields_with(TrainConfig, "per_run").
    """
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get(key, False) == value)


def resumable_fields() -> frozenset[str]:
    """TrainConfig fields that may change between an interrupted run and its resumption."""
    return fields_with(TrainConfig, "role", RUNTIME)


def not_identity_fields() -> frozenset[str]:
    """TrainConfig fields left out of a planned run's id (every role but IDENTITY)."""
    return frozenset(f.name for f in dataclasses.fields(TrainConfig)) - fields_with(TrainConfig, "role", IDENTITY)


def branch_free_fields() -> frozenset[str]:
    """TrainConfig fields a wsd branch may change from its trunk.

    TrainConfig fields in which a wsd branch may differ from its trunk: the resumable ones and
    those flagged `branch`.
    """
    return resumable_fields() | fields_with(TrainConfig, "branch")


def per_run_fields() -> frozenset[str]:
    """TrainConfig fields set per run by the planner or launcher, never by a sweep's --train-opt."""
    return fields_with(TrainConfig, "per_run")


def wsd_fields() -> frozenset[str]:
    """TrainConfig fields that only a wsd run sets."""
    return fields_with(TrainConfig, "wsd")


def checkpoint_setting_differences(saved, expected: dict, where: str = "the checkpoint", now: str = "now") -> list[str]:
    """The train settings in which a checkpoint's run differs from this run: one "KEY SAVED in WHERE vs VALUE NOW" each.

    `saved`: the checkpoint's state.json "train" (the IDENTITY settings it trained with, since 2026-12-06; not a dict
    in an older checkpoint: nothing to compare); `expected`: this run's train settings (its identity, or its
    config.json "train"; fields of other roles are ignored). A checkpoint of another seed or lr, same shape and
    budget, is another run's. Compared: the IDENTITY fields both hold (a field either lacks is unknown, not a
    difference), except the shape and the budget (ModelConfig fields, tokens, flops), which the callers check
    against model_config.json and state.json's tokens and steps. The one comparison behind `ehrfm train`'s resume
    check (train._check_checkpoint_is_this_runs) and a finished run's consumers (results.require_completed).
    """
    if not isinstance(saved, dict) or not isinstance(expected, dict):
        return []
    named = {f.name for f in dataclasses.fields(ModelConfig)} | {"tokens", "flops"}
    compared = fields_with(TrainConfig, "role", IDENTITY) - named
    return [f"{k} {saved[k]!r} in {where} vs {v!r} {now}" for k, v in expected.items()
            if k in compared and k in saved and saved[k] != v]


def choices_of(cls, name: str) -> tuple:
    """The allowed values of field `name` of dataclass `cls` (its metadata "choices")."""
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


def _check_choice(cfg, name: str) -> None:
    allowed = choices_of(type(cfg), name)
    if getattr(cfg, name) not in allowed:
        said = " or ".join([", ".join(allowed[:-1]), allowed[-1]]) if len(allowed) > 1 else allowed[0]
        raise UserError(f"train config: {name} must be {said} (got {getattr(cfg, name)!r})")


class _DictConfig:
    """to_dict / from_dict of a config dataclass (the form saved as config.json)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """The config from a dict; keys that are not fields (older or newer files) are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ModelConfig(_DictConfig):
    """Shape of one GPT. `mlp_hidden=0` means the default SwiGLU width (see `swiglu_hidden`)."""

    n_layer: int
    d_model: int
    n_head: int
    context: int
    vocab_size: int
    mlp_hidden: int = 0
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self):
        if self.mlp_hidden == 0:
            self.mlp_hidden = swiglu_hidden(self.d_model)
        for name in ("n_layer", "d_model", "n_head", "context", "vocab_size", "mlp_hidden"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"model config: {name} must be >= 1 (got {getattr(self, name)})")
        for name in ("rope_theta", "norm_eps"):
            if not (math.isfinite(float(getattr(self, name))) and float(getattr(self, name)) > 0):
                raise UserError(f"model config: {name} must be finite and > 0 (got {getattr(self, name):g})")
        if self.d_model % self.n_head:
            raise UserError(f"model config: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise UserError(f"model config: head dim d_model/n_head={self.d_model // self.n_head} must be even (RoPE)")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: d_model // n_head (even, checked for RoPE)."""
        return self.d_model // self.n_head


MAX_TOKENS = 10**15  # training tokens of one run: the largest published pretraining runs are ~1.5e13
MAX_FLOPS = 1e30  # training FLOPs of one run (and the largest budget a sweep plans)


@dataclass
class TrainConfig(_DictConfig):
    """One training run: data, model shape, budget, optimizer, schedule, evaluation, runtime.

    Exactly one of `tokens` (D, training tokens) or `flops` (C; D = floor(C / flops_per_token))
    is given. A "token" is one input position fed to the model; every step but the last consumes
    batch_size * context tokens, the last one the remainder, so a run trains exactly D tokens.

    Every field declares its role in its metadata (see `ROLES`, `fields_with`); the trainer's
    resume and branch checks and the sweep planner's run ids and per-sweep options derive from it.
    Each field's docstring is its `ehrfm train` help.
    """

    tokens_dir: str = _f(RUNTIME, per_run=True)
    """Token dir written by `ehrfm tokenize`."""
    out_dir: str = _f(RUNTIME, per_run=True)
    """Run dir to create (or resume)."""
    # model shape
    n_layer: int = _f(IDENTITY, 2, per_run=True)
    """Transformer blocks."""
    d_model: int = _f(IDENTITY, 64, per_run=True)
    """Residual stream width."""
    n_head: int = _f(IDENTITY, 2, per_run=True)
    """Attention heads (d_model / n_head must be even, for RoPE)."""
    context: int = _f(IDENTITY, 256, per_run=True)
    """Tokens per row."""
    mlp_hidden: int = _f(IDENTITY, 0)
    """SwiGLU width; 0: 8/3 d_model rounded up to a multiple of 32."""
    rope_theta: float = _f(IDENTITY, 10_000.0)
    """RoPE base frequency."""
    # budget (one of)
    tokens: int | None = _f(IDENTITY, None, per_run=True, branch=True)
    """Training tokens D (e.g. 2e6)."""
    flops: float | None = _f(IDENTITY, None, per_run=True, branch=True)
    """Compute budget C in training FLOPs; D = floor(C / F), F = 6 (N + d V) + 6 L T d FLOPs per token (Kaplan et al. 2020; N non-embedding parameters, d width, V vocabulary, L layers, T context)."""
    # batch: batch_size rows of `context` tokens per optimizer step (global, across DDP ranks);
    # micro_batch_size rows per forward/backward (gradient accumulation), 0: = batch_size.
    batch_size: int = _f(IDENTITY, 32)
    """Rows per optimizer step, all ranks together."""
    micro_batch_size: int = _f(RUNTIME, 0)
    """Rows per forward/backward (gradient accumulation); 0: the batch size."""
    # AdamW + linear warmup, then a decay to min_lr_ratio * lr at the last step: cosine over all
    # steps after warmup, or warmup-stable-decay ("wsd", Hägele et al. 2024, arXiv 2405.18392):
    # constant lr, then a decay (linear or 1-sqrt) over the last decay_fraction of the steps.
    lr: float = _f(IDENTITY, 1e-3)
    """Peak learning rate."""
    min_lr_ratio: float = _f(IDENTITY, 0.1)
    """Final lr / peak lr."""
    warmup_frac: float = _f(IDENTITY, 0.05)
    """Warmup steps as a fraction of all optimizer steps (at least 1 step)."""
    warmup_steps: int | None = _f(IDENTITY, None, per_run=True, wsd=True)
    """Warmup steps (overrides --warmup-frac; a WSD trunk and its branches share it)."""
    schedule: str = _f(IDENTITY, "cosine", per_run=True, wsd=True, choices=("cosine", "wsd"))
    """Cosine decay after warmup, or warmup-stable-decay (constant lr, then a decay over the last
    --decay-fraction)."""
    decay_fraction: float = _f(IDENTITY, 0.2, wsd=True)
    """wsd: share of the steps spent decaying."""
    decay_shape: str = _f(IDENTITY, "linear", wsd=True, choices=("linear", "1-sqrt"))
    """wsd: shape of the decay."""
    # wsd branches: a run that starts its decay from the stable-phase checkpoint of another run
    # (its trunk, a wsd run dir of the same shape, tokenizer and options) kept at this run's
    # decay start; a trunk keeps such checkpoints at the token counts in stable_checkpoints. A run
    # longer than its trunk continues the trunk's stable phase from the trunk's own decay start
    # (every wsd run keeps a checkpoint there), so a later, larger budget need not start over.
    trunk_dir: str | None = _f(TRUNK, None, per_run=True, branch=True, wsd=True)
    """wsd branch: start from this wsd run's stable checkpoint at this run's decay start (or, for a run
    longer than it, at its own decay start, continuing its stable phase)."""
    stable_checkpoints: list = _f(IDENTITY, factory=list, per_run=True, branch=True, wsd=True)
    """wsd trunk: keep stable-phase checkpoints after these token counts (step boundaries) for
    branches (its own decay start is always kept)."""
    weight_decay: float = _f(IDENTITY, 0.1)
    """AdamW weight decay."""
    beta1: float = _f(IDENTITY, 0.9)
    """AdamW beta1."""
    beta2: float = _f(IDENTITY, 0.95)
    """AdamW beta2."""
    grad_clip: float = _f(IDENTITY, 1.0)
    """Max global gradient norm; 0 disables."""
    # held-out loss: the first `eval_tokens` tokens of the tuning split (all of it if smaller),
    # the same for every run on a token dir, so losses compare across a sweep.
    eval_tokens: int = _f(IDENTITY, 262_144)
    """Held-out tokens from the tuning split."""
    eval_interval: int = _f(RUNTIME, 0)
    """Steps between evals; 0: only at the end."""
    eval_batch_size: int = _f(RUNTIME, 0)
    """Rows per eval forward; 0: the micro batch size."""
    # runtime
    seed: int = _f(IDENTITY, 0)
    """Fixes init and data order."""
    device: str = _f(RUNTIME, "auto")
    """auto | cpu | cuda | cuda:N."""
    dtype: str = _f(IDENTITY, "auto", choices=("auto", "float32", "bfloat16"))
    """auto: bf16 autocast on CUDA, fp32 on CPU."""
    checkpoint_interval: int = _f(RUNTIME, 0)
    """Steps between checkpoints; 0: at the end and on signals."""
    log_interval: int = _f(RUNTIME, 1)
    """Steps between metrics.jsonl lines."""
    attention: str = _f(RUNTIME, "auto", choices=("auto", "sdpa", "xformers"))
    """auto: xformers on CUDA when installed, else SDPA."""
    compile: bool = _f(RUNTIME, False)
    """torch.compile the model (~1.3x on CPU after ~100 s of compiling; off by default)."""
    overwrite: bool = _f(RUNTIME, False, per_run=True)
    """Discard an existing run dir and start over."""
    extra: dict = _f(RUNTIME, factory=dict, per_run=True)
    """Free-form provenance from launchers (sweep id, logger, ...)."""
    planned_data: dict | None = _f(RUNTIME, None, per_run=True)
    """A launcher's record of the token data this run is planned on (ehrfm.tokens.data_identity: counts and sha256
    of train and tuning); the trainer refuses a token dir holding other data before it writes anything. A sweep
    sets it from sweep.json, so a token dir re-tokenized in place after planning fails its runs at their start."""

    def __post_init__(self):
        if (self.tokens is None) == (self.flops is None):
            raise UserError("train config: give exactly one of tokens (D) or flops (C)")
        if self.tokens is not None and int(self.tokens) < 1:
            raise UserError(f"train config: tokens must be >= 1 (got {self.tokens})")
        if self.flops is not None and not float(self.flops) > 0:
            raise UserError(f"train config: flops must be > 0 (got {self.flops})")
        # --tokens 1e30 trained at an lr of 8e-25 (its warmup spanning 1e26 steps) with an epochs warning only
        if self.tokens is not None and int(self.tokens) > MAX_TOKENS:
            raise UserError(f"train config: tokens must be at most {MAX_TOKENS:.0e} (got {float(self.tokens):.3g}), ~70 times "
                            "the largest published pretraining runs")
        if self.flops is not None and float(self.flops) > MAX_FLOPS:
            raise UserError(f"train config: flops must be at most {MAX_FLOPS:.0e} (got {float(self.flops):.3g}), ~10^4 times "
                            "the largest training runs")
        for name in ("batch_size", "context", "log_interval"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"train config: {name} must be >= 1 (got {getattr(self, name)})")
        if self.micro_batch_size == 0:
            self.micro_batch_size = self.batch_size
        if self.micro_batch_size < 1 or self.micro_batch_size > self.batch_size:
            raise UserError(f"train config: micro_batch_size must be in 1..batch_size (got {self.micro_batch_size})")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"train config: min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if not 0.0 <= self.warmup_frac < 1.0:
            raise UserError(f"train config: warmup_frac must be in [0, 1) (got {self.warmup_frac})")
        # A bad optimiser setting is a usage error, refused here: never a run recorded as failed
        # or diverged (a negative lr fails in AdamW, eval_tokens 0 gives a NaN loss).
        checks = {"lr": (self.lr, 0.0, False, math.inf), "weight_decay": (self.weight_decay, 0.0, True, math.inf),
                  "grad_clip": (self.grad_clip, 0.0, True, math.inf), "beta1": (self.beta1, 0.0, True, 1.0),
                  "beta2": (self.beta2, 0.0, True, 1.0)}
        for name, (v, lo, lo_ok, hi) in checks.items():
            v = float(v)
            if not (math.isfinite(v) and (v >= lo if lo_ok else v > lo) and (v < hi or hi == math.inf)):
                bound = f"{'>=' if lo_ok else '>'} {lo:g}" + (f" and < {hi:g}" if hi != math.inf else "")
                raise UserError(f"train config: {name} must be finite and {bound} (got {v:g})")
        for name in ("eval_tokens",):
            if int(getattr(self, name)) < 1:
                raise UserError(f"train config: {name} must be >= 1 (got {getattr(self, name)})")
        # 0 means "off" / "the default" for these; a negative one was taken silently (intervals) or
        # scored nothing (eval_batch_size: a NaN held-out loss, the run recorded diverged)
        for name in ("eval_interval", "checkpoint_interval", "eval_batch_size"):
            if int(getattr(self, name)) < 0:
                raise UserError(f"train config: {name} must be >= 0 (got {getattr(self, name)})")
        # torch.manual_seed takes at most 64 bits, numpy's generators no negative seed: a bad seed
        # failed the run after it had started (recorded failed), never a usage error
        seed = self.seed if isinstance(self.seed, numbers.Integral) and not isinstance(self.seed, bool) else None
        if seed is None and isinstance(self.seed, float) and self.seed.is_integer():
            seed = int(self.seed)  # 3.0 from a JSON or YAML file
        if seed is None or not 0 <= int(seed) < 2**63:
            raise UserError(f"train config: seed must be an integer in 0..2**63-1 (got {self.seed!r})")
        self.seed = int(seed)
        if not (math.isfinite(float(self.rope_theta)) and float(self.rope_theta) > 0):
            # RoPE divides by powers of theta: 0 or a negative base gives NaN at the first step (diverged)
            raise UserError(f"train config: rope_theta must be finite and > 0 (got {self.rope_theta:g})")
        if self.planned_data is not None and not isinstance(self.planned_data, dict):
            raise UserError(f"train config: planned_data must be an object (ehrfm.tokens.data_identity) or null "
                            f"(got {type(self.planned_data).__name__})")
        _check_choice(self, "dtype")
        _check_choice(self, "attention")
        self._check_schedule()

    def _check_schedule(self) -> None:
        _check_choice(self, "schedule")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise UserError(f"train config: decay_fraction must be in (0, 1] (got {self.decay_fraction})")
        _check_choice(self, "decay_shape")
        if self.warmup_steps is not None and int(self.warmup_steps) < 0:
            raise UserError(f"train config: warmup_steps must be >= 0 (got {self.warmup_steps})")
        if self.schedule != "wsd" and (self.trunk_dir or self.stable_checkpoints):
            raise UserError("train config: trunk_dir and stable_checkpoints need schedule wsd (a cosine run has no stable phase)")
        self.stable_checkpoints = sorted({int(t) for t in self.stable_checkpoints})
        if any(t < 1 for t in self.stable_checkpoints):
            raise UserError(f"train config: stable_checkpoints must be token counts >= 1 (got {self.stable_checkpoints})")

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The ModelConfig of this run's shape for a token dir of `vocab_size` tokens.

        Raises:
            UserError: the shape is invalid (ModelConfig's checks).
        """
        return ModelConfig(
            n_layer=self.n_layer,
            d_model=self.d_model,
            n_head=self.n_head,
            context=self.context,
            vocab_size=vocab_size,
            mlp_hidden=self.mlp_hidden,
            rope_theta=self.rope_theta,
        )


def warmup_steps_for(n_steps: int, cfg: TrainConfig) -> int:
    """Warmup steps: cfg.warmup_steps when given, else round(warmup_frac * n_steps).

    The fraction gives at least 1 step when warmup_frac > 0, and 0 when it is 0.
    """
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return max(1, round(cfg.warmup_frac * n_steps)) if cfg.warmup_frac > 0 else 0


STABLE_DIR = "stable"


def stable_checkpoint_dir(run_dir, tokens: int) -> Path:
    """The directory of a WSD run's stable-phase checkpoint after `tokens` tokens.

    Where a WSD run keeps its stable-phase checkpoint after `tokens` trained tokens (a dir that
    holds an ehrfm.checkpoint `checkpoint/`): RUN/stable/tokens-<tokens>.
    """
    return Path(run_dir) / STABLE_DIR / f"tokens-{int(tokens)}"


def wsd_decay_start(n_steps: int, cfg: TrainConfig) -> int:
    """First decay step (0-based) of a WSD run of n_steps (Hägele et al. 2024).

    The last round(decay_fraction * n_steps) steps (at least 1) decay. Steps before it are warmup
    or stable; a branch leaves its trunk here.
    """
    return n_steps - max(1, round(cfg.decay_fraction * n_steps))
