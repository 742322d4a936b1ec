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
from dataclasses import dataclass, field

from ehrfm.errors import UserError

MLP_MULTIPLE_OF = 32


def swiglu_hidden(d_model: int, multiple_of: int = MLP_MULTIPLE_OF) -> int:
    """Llama's SwiGLU width: 2/3 of 4*d_model, rounded up to a multiple of `multiple_of`."""
    hidden = math.ceil(8 * d_model / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


@dataclass
class ModelConfig:
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
        if self.d_model % self.n_head:
            raise UserError(f"model config: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise UserError(f"model config: head dim d_model/n_head={self.d_model // self.n_head} must be even (RoPE)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainConfig:
    """One training run: data, model shape, budget, optimizer, schedule, evaluation, runtime.

    Exactly one of `tokens` (D, training tokens) or `flops` (C; D = floor(C / flops_per_token))
    is given. A "token" is one input position fed to the model; every step but the last consumes
    batch_size * context tokens, the last one the remainder, so a run trains exactly D tokens.
    """

    tokens_dir: str
    out_dir: str
    # model shape
    n_layer: int = 2
    d_model: int = 64
    n_head: int = 2
    context: int = 256
    mlp_hidden: int = 0  # 0: SwiGLU default
    rope_theta: float = 10_000.0
    # budget (one of)
    tokens: int | None = None
    flops: float | None = None
    # batch: batch_size rows of `context` tokens per optimizer step (global, across DDP ranks);
    # micro_batch_size rows per forward/backward (gradient accumulation), 0: = batch_size.
    batch_size: int = 32
    micro_batch_size: int = 0
    # AdamW + linear warmup, then a decay to min_lr_ratio * lr at the last step: cosine over all
    # steps after warmup, or warmup-stable-decay ("wsd", Hägele et al. 2024, arXiv 2405.18392):
    # constant lr, then a decay (linear or 1-sqrt) over the last decay_fraction of the steps.
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_frac: float = 0.05  # fraction of the optimizer steps, at least 1 step
    warmup_steps: int | None = None  # explicit warmup steps (overrides warmup_frac): a WSD trunk and its branches share it
    schedule: str = "cosine"  # cosine | wsd
    decay_fraction: float = 0.2  # wsd: the decay's share of the steps
    decay_shape: str = "linear"  # wsd: linear | 1-sqrt
    # wsd branches: a run that starts its decay from the stable-phase checkpoint of another run
    # (its trunk, a wsd run dir of the same shape, tokenizer and options) kept at this run's
    # decay start; a trunk keeps such checkpoints at the token counts in stable_checkpoints.
    trunk_dir: str | None = None
    stable_checkpoints: list = field(default_factory=list)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # held-out loss: the first `eval_tokens` tokens of the tuning split (all of it if smaller),
    # the same for every run on a token dir, so losses compare across a sweep.
    eval_tokens: int = 262_144
    eval_interval: int = 0  # steps between periodic evals; 0: only at the end
    eval_batch_size: int = 0  # 0: = micro batch size
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | float32 | bfloat16
    checkpoint_interval: int = 0  # steps between checkpoints; 0: only on stop signals
    log_interval: int = 1  # steps between metrics.jsonl lines
    attention: str = "auto"  # auto (xformers on CUDA when installed, else SDPA) | sdpa | xformers
    compile: bool = False  # torch.compile the model: ~1.3x on CPU after ~100 s of compiling; off by default
    overwrite: bool = False  # start from scratch even if out_dir holds a run
    extra: dict = field(default_factory=dict)  # free-form provenance from launchers (sweep id, ...)

    def __post_init__(self):
        if (self.tokens is None) == (self.flops is None):
            raise UserError("train config: give exactly one of tokens (D) or flops (C)")
        if self.tokens is not None and int(self.tokens) < 1:
            raise UserError(f"train config: tokens must be >= 1 (got {self.tokens})")
        if self.flops is not None and not float(self.flops) > 0:
            raise UserError(f"train config: flops must be > 0 (got {self.flops})")
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
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UserError(f"train config: dtype must be auto, float32 or bfloat16 (got {self.dtype!r})")
        if self.attention not in ("auto", "sdpa", "xformers"):
            raise UserError(f"train config: attention must be auto, sdpa or xformers (got {self.attention!r})")
        self._check_schedule()

    def _check_schedule(self) -> None:
        if self.schedule not in ("cosine", "wsd"):
            raise UserError(f"train config: schedule must be cosine or wsd (got {self.schedule!r})")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise UserError(f"train config: decay_fraction must be in (0, 1] (got {self.decay_fraction})")
        if self.decay_shape not in ("linear", "1-sqrt"):
            raise UserError(f"train config: decay_shape must be linear or 1-sqrt (got {self.decay_shape!r})")
        if self.warmup_steps is not None and int(self.warmup_steps) < 0:
            raise UserError(f"train config: warmup_steps must be >= 0 (got {self.warmup_steps})")
        if self.schedule != "wsd" and (self.trunk_dir or self.stable_checkpoints):
            raise UserError("train config: trunk_dir and stable_checkpoints need schedule wsd (a cosine run has no stable phase)")
        self.stable_checkpoints = sorted({int(t) for t in self.stable_checkpoints})
        if any(t < 1 for t in self.stable_checkpoints):
            raise UserError(f"train config: stable_checkpoints must be token counts >= 1 (got {self.stable_checkpoints})")

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(
            n_layer=self.n_layer,
            d_model=self.d_model,
            n_head=self.n_head,
            context=self.context,
            vocab_size=vocab_size,
            mlp_hidden=self.mlp_hidden,
            rope_theta=self.rope_theta,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def warmup_steps_for(n_steps: int, cfg: TrainConfig) -> int:
    """Warmup steps: cfg.warmup_steps when given, else warmup_frac of the run's steps (at least 1)."""
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return max(1, round(cfg.warmup_frac * n_steps)) if cfg.warmup_frac > 0 else 0


def wsd_decay_start(n_steps: int, cfg: TrainConfig) -> int:
    """First decay step (0-based) of a WSD run of n_steps: the last round(decay_fraction * n_steps)
    steps (at least 1) decay. Steps before it are warmup or stable; a branch leaves its trunk here."""
    return n_steps - max(1, round(cfg.decay_fraction * n_steps))
