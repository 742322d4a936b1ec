"""Configs of the clinical stage's commands, as plain dataclasses (saved as JSON beside outputs).

This module is light (no numpy, polars or torch): the CLI derives each command's options from
these dataclasses (ehrfm.cli_args), and each field's docstring is its help. Each config is also
importable from its own module (ehrfm.clinical.probe.ProbeConfig, ...).
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field

from ehrfm.errors import UserError
from ehrfm.law_checks import min_replicates

LAYERS = "layers"  # last+mean+max of every depth, not only the last (ehrfm.clinical.model_io)
POOLINGS = ("last", "last+mean", "last+mean+max", LAYERS)  # the probe's representations (ehrfm.clinical.model_io)
ZEROSHOT_TASKS = ("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d")


# Allowed ranges of the heads' numeric options: (field, flag, lowest, lowest allowed itself, None allowed).
# Checked when a config is made (the CLI builds it before any loading), so a value no head can use is
# one error line, exit 2, not a traceback after the model and every history were loaded.
_AT_LEAST_1, _AT_LEAST_0, _ABOVE_0 = (1, True), (0, True), (0, False)
_HEAD_RANGES = (
    ("context", "--context", *_AT_LEAST_1, True),
    ("batch_size", "--batch-size", *_AT_LEAST_1, True),  # zero-shot: None is its memory-budget default
    ("bootstrap", "--bootstrap", *_AT_LEAST_0, False),
    ("seed", "--seed", *_AT_LEAST_0, False),  # numpy's generators refuse a negative seed
    ("max_labels", "--max-labels", *_AT_LEAST_1, True),
)


def _check_ranges(config, ranges) -> None:
    """Refuse a numeric option outside its range (one line naming the flag and the value given).

    Raises:
        UserError: a value that is not a finite number, is below its lowest value (or equal to an
            excluded lowest), or is None where a value is needed.
    """
    for name, flag, low, inclusive, optional in ranges:
        v = getattr(config, name)
        if v is None and optional:
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= low if inclusive else v > low)
        if not ok:
            raise UserError(f"{flag} ({type(config).__name__}.{name}) must be a number {'>=' if inclusive else '>'} {low}, "
                            f"not {v!r}")
        if name == "bootstrap" and 0 < v < MIN_BOOTSTRAP:
            raise UserError(f"{flag} {v}: must be 0 (no intervals) or at least {MIN_BOOTSTRAP}, the fewest resamples a 95% "
                            f"percentile interval can come from (with 1 or 3 it did not hold its own point estimate)")


# 20 = ceil(1 / (1 - 0.95)): with fewer resamples less than one falls in each 2.5% tail, and the "interval" is the gap
# between the few most extreme ones (the fits' rule too)
MIN_BOOTSTRAP = min_replicates(0.95)


# The least zero-shot temperature: float32 logits (|l| < 1e4) divided by it stay finite; below it sampling is greedy
MIN_TEMPERATURE = 1e-6


@dataclass
class LabelConfig:
    """How labels were made; saved as JSON beside every label file."""

    meds_dir: str
    """MEDS dataset dir."""
    task: str
    """A task, or all (then --out is a dir of <task>.parquet)."""
    gap_hours: float = 24.0
    """Prediction at admission + this (mortality, long stay)."""
    long_los_days: float = 7.0
    """A long stay lasts longer than this many days."""
    readmission_days: float = 30.0
    """A readmission within this many days of discharge counts."""
    transfer_hours: float = 1.0
    """A next admission within this many hours of a discharge is a transfer: the stay continues into it, so it is
    excluded from every task (its outcome is not its own), and for readmission the next stay is no readmission."""
    direct_icu_minutes: float = 5.0
    """ICU admission: an ICU stay starting within this many minutes of the hospital admission is a direct ICU admission
    (excluded: the outcome is decided at the prediction time), not an outcome to predict."""


@dataclass
class HeadConfig:
    """The options a supervised head (probe, finetune) shares: model, data, labels and evaluation."""

    run_dir: str
    """Run dir (a trained model)."""
    tokens_dir: str
    """Token dir made with the run's tokenizer."""
    labels: str
    """Label parquet in the MEDS label schema (ours or ACES)."""
    # Options by name only: a field added later can never shift a positional argument into it
    # (a new field once took sweep collect's pooling, silently).
    _: KW_ONLY
    context: int | None = None
    """History length in tokens (default: the model's context)."""
    batch_size: int = 64
    """Histories per forward pass."""
    device: str = "cpu"
    """cpu, cuda, cuda:1, ..."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% intervals."""
    seed: int = 0
    """Seed of the label subsample, the head and the bootstrap."""
    max_labels: int | None = None
    """Subsample at most this many labels per split (a seeded sample, the same for every run; default: every label)."""
    task: str | None = None
    """The task the labels are for (default: from the labels' sidecar JSON or file name)."""
    allow_incomplete: bool = False
    """Use the last checkpoint of a run that did not complete (interrupted, failed, diverged)."""

    def __post_init__(self) -> None:
        """Raises UserError: a numeric option out of its range (_HEAD_RANGES)."""
        _check_ranges(self, _HEAD_RANGES)


@dataclass
class ProbeConfig(HeadConfig):
    """A linear probe of a frozen model (ehrfm.clinical.probe); saved as OUT/config.json."""

    pooling: str = field(default=LAYERS, metadata={"choices": POOLINGS})
    """Representation: the last history token's state (last), it beside the mean over the window (last+mean), those
    beside the feature-wise max over the window (last+mean+max), or last+mean+max of every layer (layers)."""


@dataclass
class FinetuneConfig(HeadConfig):
    """A fine-tuned classification head (ehrfm.clinical.finetune); saved as OUT/config.json.

    The fields after HeadConfig's: how the head (or the whole network) is trained.
    """

    full: bool = False
    """Train the whole network, not only the head."""
    lr: float = 1e-3
    """Head learning rate."""
    body_lr: float = 1e-4
    """Network learning rate (with --full)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_epochs: int = 20
    """At most this many epochs (early stopping on tuning)."""
    patience: int = 3
    """Epochs without tuning AUROC gain before stopping."""

    def __post_init__(self) -> None:
        """Raises UserError: a numeric option out of its range (_HEAD_RANGES, and the training options')."""
        super().__post_init__()
        _check_ranges(self, (("lr", "--lr", *_ABOVE_0, False), ("body_lr", "body_lr", *_ABOVE_0, False),
                             ("weight_decay", "weight_decay", *_AT_LEAST_0, False),
                             ("max_epochs", "--epochs", *_AT_LEAST_1, False), ("patience", "--patience", *_AT_LEAST_1, False)))


@dataclass
class ZeroShotConfig:
    """An ETHOS-style zero-shot rollout (ehrfm.clinical.zeroshot); saved as OUT/config.json."""

    run_dir: str
    """Run dir (a trained model)."""
    tokens_dir: str
    """Token dir made with the run's tokenizer."""
    labels: str
    """Label parquet in the MEDS label schema (ours or ACES)."""
    _: KW_ONLY
    task: str | None = field(default=None, metadata={"choices": ZEROSHOT_TASKS})
    """in_hospital_mortality | long_los | icu_admission | readmission_30d (default: from the labels' file name)."""
    context: int | None = None
    """History length in tokens (default: the model's context)."""
    batch_size: int | None = None
    """Rows (label x sample) decoded together (default: as many as 1 GiB, or the free memory if less, holds: KV cache and logits)."""
    device: str = "cpu"
    """cpu, cuda, cuda:1, ..."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% intervals."""
    seed: int = 0
    """Seed of the label subsample, the rollouts' sampling and the bootstrap."""
    max_labels: int | None = None
    """Subsample at most this many labels per split (a seeded sample, the same for every run; default: every label)."""
    n_samples: int = 20
    """Sampled continuations per label."""
    max_new_tokens: int | None = None
    """Rollout length bound (default: --rollout-contexts x the context read, --context or the model's)."""
    rollout_contexts: int = 8
    """Default rollout bound, in contexts read (the window, --context or the model's, slides over older history)."""
    undecided: str = field(default="exclude", metadata={"choices": ("exclude", "negative")})
    """Rollouts reaching neither event: left out of the label's share (a label with none decided gets the
    cohort's share) or counted as no outcome."""
    temperature: float = 1.0
    """Sampling temperature."""
    splits: tuple[str, ...] = ("held_out",)
    """Splits scored (zero-shot needs no training labels)."""
    allow_incomplete: bool = False
    """Use the last checkpoint of a run that did not complete (interrupted, failed, diverged)."""

    def __post_init__(self) -> None:
        """Raises UserError: a numeric option out of its range (_HEAD_RANGES, and the rollout options')."""
        _check_ranges(self, _HEAD_RANGES + (
            ("n_samples", "--samples", *_AT_LEAST_1, False), ("max_new_tokens", "--max-new-tokens", *_AT_LEAST_1, True),
            ("rollout_contexts", "--rollout-contexts", *_AT_LEAST_1, False),
            ("temperature", "--temperature", *_ABOVE_0, False)))
        if self.temperature < MIN_TEMPERATURE:
            # logits / temperature overflowed float32 to inf and Gumbel-max took the first inf: 1e-40 ended every
            # rollout at its first token (AUROC 0.5, "100% undecided")
            raise UserError(f"--temperature (ZeroShotConfig.temperature) {self.temperature:g} is below "
                            f"{MIN_TEMPERATURE:g}: the logits divided by it overflow float32 (at {MIN_TEMPERATURE:g} "
                            "the rollouts already take the most likely token)")
        if self.context is not None and self.context < 2:  # a window of 1 cannot slide: it keeps no earlier token
            raise UserError(f"--context (ZeroShotConfig.context) must be at least 2 for rollouts (each new token sees "
                            f"the last context - 1), not {self.context}")


@dataclass
class BaselineConfig:
    """A count-feature baseline (ehrfm.clinical.baseline); saved as OUT/config.json."""

    meds_dir: str
    """MEDS dataset dir."""
    labels: str
    """Label parquet in the MEDS label schema."""
    windows: str = "full,30d"
    """History windows to count codes in, e.g. full,30d,24h."""
    min_count: int = 5
    """Codes seen in fewer train labels' histories are dropped."""
    max_dense_features: int = 2000
    """Most features kept as dense columns."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% intervals."""
    seed: int = 0
    """Seed of the label subsample, the models and the bootstrap."""
    max_labels: int | None = None
    """Subsample at most this many labels per split."""
    task: str | None = None
    """The task the labels are for (default: from the labels' sidecar JSON or file name)."""

    def __post_init__(self) -> None:
        """Raises UserError: a numeric option out of its range."""
        _check_ranges(self, (("min_count", "--min-count", *_AT_LEAST_0, False),
                             ("max_dense_features", "max_dense_features", *_AT_LEAST_1, False),
                             ("bootstrap", "--bootstrap", *_AT_LEAST_0, False), ("seed", "--seed", *_AT_LEAST_0, False),
                             ("max_labels", "--max-labels", *_AT_LEAST_1, True)))
