"""A run's outcome: the `Status` names and the `RunResult` record that RUN/result.json holds.

The trainer (ehrfm.train) builds one RunResult per run and writes it with `write_result`; every
reader (sweeps, analysis, the demo, export) reads it with `read_result`. The on-disk format is the
contract of DESIGN.md section 3:

    {"status": "completed" | "failed" | "diverged", "n_params", "n_params_total", "vocab_size",
     "tokens", "flops", "val_loss", "wall_s", "tokens_per_s", "error", ...}

A RunResult writes exactly the keys it was built with (a field left out is absent from the file,
a field given as None is written as null), so a job wrapper's minimal failure record
{"status": "failed", "error": ...} and the trainer's full records keep their form; keys this
version does not know are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from ehrfm.errors import UserError
from ehrfm.io import read_json, write_json

# How many standard errors a finite final held-out loss must exceed a bound (ln V, the initial
# loss) by to be called a blow-up: one-sided, a run that is at its bound by noise is called
# diverged about once in 740 (normal tail beyond 3 sigma). The trainer and `ehrfm fit` share it.
DIVERGENCE_Z = 3.0

# The divergence margin when the eval's noise is not measured (fewer than 2 eval subjects): this share
# of the bound (ln V, the initial loss). A blow-up goes far past it (losses of 10-1e6 nats against ln V ~ 6).
UNMEASURED_MARGIN = 0.05

RESULT_FILE = "result.json"


class Status(str, Enum):
    """Every state a run (its result.json, its checkpoint or its sweep entry) can be in.

    result.json: completed | failed | diverged. The trainer returns interrupted (no result.json).
    Checkpoints: running | interrupted | stable | completed. Sweep states (sweeps.state) add
    planned, unplanned, queued, lost and unknown; a job wrapper reports busy.
    """

    COMPLETED = "completed"
    FAILED = "failed"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"
    RUNNING = "running"
    STABLE = "stable"
    QUEUED = "queued"
    PLANNED = "planned"
    UNPLANNED = "unplanned"
    LOST = "lost"
    UNKNOWN = "unknown"
    BUSY = "busy"

    # enum.StrEnum is Python 3.11+: these two make str(), f-strings and format() give the bare
    # value ("completed", not "Status.COMPLETED") on 3.10 to 3.13 alike, as StrEnum does.
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, format_spec: str) -> str:
        return str.__format__(str(self), format_spec)


# A run with one of these results is over; relaunching it does nothing (a failed one only on request).
FINISHED = (Status.COMPLETED, Status.FAILED, Status.DIVERGED)
# Deterministic outcomes: the trainer keeps them as they are and never trains the run again.
KEPT = (Status.COMPLETED, Status.DIVERGED)
# A job that SLURM or this machine still has.
ACTIVE = (Status.QUEUED, Status.RUNNING)

# Left out of the record (absent from result.json), as opposed to None (written as null).
_UNSET: Any = object()


@dataclass
class RunResult:
    """One run's outcome (RUN/result.json; also what `ehrfm.train.train` returns, as a dict).

    Fields are in result.json's key order; every field but `status` is optional and absent from
    the file unless given. Add a field with default `_UNSET` to extend the record.
    """

    status: Status
    # the run's accounting and identity (every trainer result has them)
    n_params: int | None = _UNSET  # non-embedding parameters
    n_params_total: int | None = _UNSET
    vocab_size: int | None = _UNSET
    tokens: int | None = _UNSET  # D, training tokens
    flops: float | None = _UNSET  # D * flops_per_token
    flops_per_token: float | None = _UNSET
    n_layer: int | None = _UNSET
    d_model: int | None = _UNSET
    n_head: int | None = _UNSET
    context: int | None = _UNSET
    steps: int | None = _UNSET
    seed: int | None = _UNSET
    tokenizer_fingerprint: str | None = _UNSET
    schedule: str | None = _UNSET
    trunk_id: str | None = _UNSET
    trunk_dir: str | None = _UNSET
    branch_tokens: int | None = _UNSET
    # the outcome
    step: int | None = _UNSET  # interrupted: the last step done
    val_loss: float | None = _UNSET  # held-out nats/token (diverged: kept as a diagnosis when finite)
    loss_per_event: float | None = _UNSET
    eval_events: int | None = _UNSET
    eval_loss_se: float | None = _UNSET  # SE of val_loss over eval subjects (nats/token)
    loss_per_event_se: float | None = _UNSET
    eval_subjects: int | None = _UNSET
    train_loss: float | None = _UNSET
    initial_train_loss: float | None = _UNSET
    initial_train_loss_se: float | None = _UNSET  # SE of initial_train_loss over the first batch's subjects
    eval_tokens: int | None = _UNSET
    epochs: float | None = _UNSET
    wall_s: float | None = _UNSET
    tokens_per_s: float | None = _UNSET
    session_tokens_per_s: float | None = _UNSET
    device: str | None = _UNSET
    dtype: str | None = _UNSET
    world_size: int | None = _UNSET
    diverged_step: int | None = _UNSET
    error: str | None = _UNSET  # failed / diverged: why (never patient data)
    exit_code: int | None = _UNSET  # a job wrapper's failure record: the trainer's exit status
    run_id: str | None = _UNSET  # a job wrapper's return value: which run
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    def __post_init__(self):
        self.status = Status(self.status)
        given = []
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            if getattr(self, f.name) is _UNSET:
                setattr(self, f.name, None)
            else:
                given.append(f.name)
        self._given = tuple(given)

    def with_(self, **changes) -> RunResult:
        """A copy with `changes` given (and so written) on top of this record's fields."""
        kw = {k: getattr(self, k) for k in self._given}
        return RunResult(**{**kw, **changes}, extra=dict(self.extra))

    def to_json(self) -> dict[str, Any]:
        """The result.json object: the given fields in order (status as a plain string), then extra."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self._given}
        out["status"] = str(self.status)
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunResult:
        """The record of a result.json object (unknown keys go to `extra`). ValueError: bad status."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in obj.items() if k in names},
                   extra={k: v for k, v in obj.items() if k not in names})

    @property
    def finished(self) -> bool:
        """completed, failed or diverged: the run is over."""
        return self.status in FINISHED

    @property
    def kept(self) -> bool:
        """Whether the status is completed or diverged: a deterministic outcome, never trained again."""
        return self.status in KEPT


_NUMBER_FIELDS = ("val_loss", "n_params", "n_params_total", "tokens", "flops", "wall_s", "tokens_per_s", "vocab_size",
                  "steps", "eval_loss_se", "initial_train_loss", "initial_train_loss_se")
_COUNT_FIELDS = ("n_params", "n_params_total", "tokens", "flops")
_READ_HINT = "delete it and rerun: the run resumes from its checkpoint and writes it again"


# ModelConfig.init_std's default (GPT-2's N(0, 0.02)); not a CLI setting, so a result.json does not record it
DEFAULT_INIT_STD = 0.02


def untrained_excess(d_model, init_std: float = DEFAULT_INIT_STD):
    """An allowance for how far an untrained model's loss sits above uniform guessing (ln V), in nats/token.

    Its logits RMSNorm(h) W^T are ~N(0, sigma^2), sigma^2 = init_std^2 x d_model (norm gain 1, W ~
    N(0, init_std)). The log-sum-exp part of the excess is at most sigma^2 / 2 (Jensen); on real data the
    target's logit is not centred (a token follows itself), which adds as much again: measured 0.108 nats
    at d_model 512, V = 286 on random targets, 0.152 at d_model 512, V = 40 on a token dir. The allowance
    is sigma^2 (0.20 at d_model 512). Without it, a run that barely moved (a budget of a few steps) ended
    "above ln V" by more than its precise eval's noise and was recorded diverged.
    Floats or numpy arrays (NaN or <= 0 -> 0: no d_model, no allowance).
    """
    import numpy as np

    d = np.asarray(d_model, dtype=float)
    out = np.where(np.isfinite(d) & (d > 0), init_std**2 * np.where(np.isfinite(d), d, 0.0), 0.0)
    return float(out) if out.ndim == 0 else out


def blow_up_margin(bound, se):
    """How far above `bound` (nats/token) a finite loss must be to be a blow-up, in nats/token.

    DIVERGENCE_Z x `se` (the loss's standard error, > 0), else UNMEASURED_MARGIN x |bound| (no
    standard error: an eval of < 2 subjects, or a results table without eval_loss_se). Floats or
    numpy arrays of one shape (elementwise; a NaN se counts as none).
    """
    import numpy as np  # here, not above: the CLI imports this module where nothing else needs numpy

    se = np.asarray(se, dtype=float)
    out = np.where(np.isfinite(se) & (se > 0), DIVERGENCE_Z * np.where(np.isfinite(se), se, 0.0),
                   UNMEASURED_MARGIN * np.abs(np.asarray(bound, dtype=float)))
    return float(out) if out.ndim == 0 else out


def divergence_reason(step: int, vocab_size: int | None = None, initial_loss: float | None = None,
                      val_loss_se: float | None = None, initial_loss_se: float | None = None,
                      d_model: int | None = None, **quantities) -> str | None:
    """Why a run has diverged at `step`, or None when it has not.

    The rule: any non-finite quantity is a divergence; a finite `val_loss` is a blow-up only when
    it is clearly above a bound -- uniform guessing (ln V nats/token, plus an untrained model's
    excess over it when `d_model` is given: `untrained_excess`) or the run's initial loss --
    by more than DIVERGENCE_Z standard errors: of the eval sample (`val_loss_se`, ratio_se over eval
    subjects) for ln V, and of the difference of the two estimates, sqrt(val_loss_se^2 +
    initial_loss_se^2), for the initial loss (measured on the first batch: a sample of its own).
    A run that barely moved from its initial weights (a tiny budget, a tiny lr) ends at ln V plus
    its initialisation's small excess, within that noise, and is not diverged. Without the eval's
    standard error (fewer than 2 eval subjects) the margin is UNMEASURED_MARGIN of each bound.

    Args:
        step: the optimizer step (1-based) the quantities belong to; named in the reason.
        vocab_size: V; a `val_loss` clearly above ln V nats/token (uniform guessing) is a blow-up.
        initial_loss: the run's loss at its initial weights (nats/token); a `val_loss` clearly
            above it means the run ended worse than it started.
        val_loss_se: standard error of `val_loss` over the eval subjects, or None.
        initial_loss_se: standard error of `initial_loss` over the first batch's subjects, or None.
        d_model: the model's width, for the ln V bound's untrained excess (None: ln V alone).
        **quantities: the values to check by name, e.g. train_loss, grad_norm, val_loss (floats).
            Every non-finite one is named; only `val_loss` is compared with the two bounds.

    Returns:
        e.g. "grad norm became inf at step 13" or "val loss 2.4e+06 nats/token at step 40 is
        above uniform guessing ln V = 5.47 (V = 240) and above the initial loss 5.49 (by more
        than 3 standard errors, 3 x 0.0031 and 0.0042)"; None.
    """
    bad = [f"{name.replace('_', ' ')} became {float(v)}" for name, v in quantities.items()
           if v is not None and not math.isfinite(float(v))]
    if bad:
        return " and ".join(bad) + f" at step {step}"
    val = quantities.get("val_loss")
    if val is None:
        return None
    def se(x):
        return float(x) if x is not None and math.isfinite(float(x)) and x > 0 else 0.0

    se_uniform = se(val_loss_se)
    by = "" if se_uniform > 0.0 else \
        f" (by more than {UNMEASURED_MARGIN:.0%}: its eval has no standard error, fewer than 2 subjects)"
    # without the eval's own noise, the first batch's alone is no margin for the difference: both bounds take the share
    se_initial = math.hypot(se_uniform, se(initial_loss_se)) if se_uniform > 0.0 else 0.0
    above, margins = [], []
    excess = untrained_excess(d_model) if d_model is not None else 0.0
    if vocab_size is not None and val > math.log(vocab_size) + excess + blow_up_margin(math.log(vocab_size), se_uniform):
        above.append(f"above uniform guessing ln V = {math.log(vocab_size):.4g} (V = {vocab_size})"
                     + (f" plus an untrained model's excess {excess:.2g} (d_model {d_model})" if excess > 0 else ""))
        margins.append(se_uniform)
    if initial_loss is not None and math.isfinite(initial_loss) and val > initial_loss + blow_up_margin(initial_loss, se_initial):
        above.append(f"above the initial loss {initial_loss:.4g}")
        margins.append(se_initial)
    if not above:
        return None
    if se_uniform > 0.0:
        shown = sorted({f"{m:.2g}" for m in margins})
        by = f" (by more than {DIVERGENCE_Z:g} standard errors, {DIVERGENCE_Z:g} x {' and '.join(shown)})"
    return f"val loss {val:.4g} nats/token at step {step} is " + " and ".join(above) + by


def result_path(run_dir: str | Path) -> Path:
    """RUN/result.json."""
    return Path(run_dir) / RESULT_FILE


def _blow_up(obj: dict) -> str | None:
    """divergence_reason's verdict on a completed result.json's final loss, by the trainer's own rule.

    The trainer records a final loss clearly above ln V or above its initial loss as diverged, so
    a "completed" record that fails the rule was not written by it as it stands (a diverged run's
    record edited, a loss scaled by hand) and is never fitted.
    """
    def number(k):
        v = obj.get(k)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    vocab = number("vocab_size")
    initial_se = number("initial_train_loss_se")
    # as the trainer does: an initial loss without its noise is not compared with
    initial = number("initial_train_loss") if initial_se is not None else None
    return divergence_reason(int(number("steps") or 0), vocab_size=int(vocab) if vocab and vocab >= 2 else None,
                             initial_loss=initial, val_loss_se=number("eval_loss_se"), initial_loss_se=initial_se,
                             d_model=int(d) if (d := number("d_model")) and d >= 1 else None, val_loss=obj["val_loss"])


def read_result(run_dir: str | Path, hint: str = _READ_HINT, check_values: bool = True) -> RunResult | None:
    """RUN/result.json as a RunResult, or None when the run has not written one.

    Args:
        run_dir: the run dir.
        hint: what to do about a damaged file, appended to the error.
        check_values: also check the number fields (False: only the status is needed, e.g. to
            load a model, and a hand-made {"status": "completed"} is enough).

    Raises:
        UserError: the file exists but is truncated, empty, not a JSON object, or wrongly typed
            (status not a known status string, a number field not a number, a completed run
            without a finite positive val_loss, or with a zero, negative or infinite n_params,
            n_params_total, tokens or flops, or with a final loss that the trainer's own rule,
            divergence_reason, calls a blow-up: clearly above ln V or above its initial loss). Such
            a run is neither interrupted nor usable: the message names the file and what to do.
    """
    path = result_path(run_dir)
    if not path.exists():
        return None
    obj = read_json(path, "run result", expect=dict, hint=hint)
    problems = []
    status = obj.get("status")
    if not isinstance(status, str) or status not in Status.__members__.values():
        problems.append("status is not a known status string")
    for k in _NUMBER_FIELDS if check_values else ():
        v = obj.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            problems.append(f"{k} is not a number")
    if check_values and status == Status.COMPLETED and not problems:
        loss = obj.get("val_loss")
        if loss is None or not math.isfinite(loss):
            problems.append("completed without a finite val_loss")
        elif loss <= 0:  # a cross-entropy on held-out data is never <= 0
            problems.append("completed with a val_loss <= 0")
        # a completed run's accounting is positive: a 0 or negative count is a broken record, not a run
        bad = [k for k in _COUNT_FIELDS if obj.get(k) is not None and not (math.isfinite(obj[k]) and obj[k] > 0)]
        if bad:
            problems.append(f"completed with non-positive or non-finite {', '.join(bad)}")
        elif isinstance(loss, (int, float)) and 0 < loss < math.inf:
            blown = _blow_up(obj)
            if blown:
                problems.append(f"completed, but its {blown}, which the trainer records as diverged")
    if problems:
        raise UserError(f"run result {path} is damaged: {'; '.join(problems)}; {hint}")
    return RunResult.from_json(obj)


def write_result(run_dir: str | Path, result: RunResult) -> None:
    """Write RUN/result.json atomically (creating the run dir when needed)."""
    path = result_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result.to_json())


def run_status(run_dir: str | Path) -> tuple[str | None, str]:
    """(status, where it was read) of a run dir (or of its checkpoint/ dir given alone).

    The status of result.json when there is one (completed | failed | diverged), else the one
    its last checkpoint's state.json records (running | interrupted | stable | completed; an
    interrupted run has no result.json), else (None, "") for a dir holding neither (a hand-made
    bare checkpoint).
    """
    run_dir = Path(run_dir)
    # a run's checkpoint dir given alone (RUN/checkpoint): its run's result.json decides, as for RUN.
    # The final checkpoint records "completed" before the final eval, so a run that diverged (or
    # failed) there was exported and loaded through its checkpoint dir without --allow-incomplete.
    if (run_dir / "state.json").is_file() and not result_path(run_dir).exists() and result_path(run_dir.parent).exists():
        run_dir = run_dir.parent
    result = read_result(run_dir, check_values=False)
    if result is not None:
        return str(result.status), str(result_path(run_dir))
    for state in (run_dir / "checkpoint" / "state.json", run_dir / "state.json"):
        if state.is_file():
            status = read_json(state, "checkpoint state", expect=dict).get("status")
            return (str(status) if status is not None else None), str(state)
    return None, ""


UNEVALUATED = "unevaluated"
"""run_provenance's status of a trainer's run whose last checkpoint finished training but that has no result.json:
its final held-out loss was never measured (stopped during the final eval), so whether it diverged there is unknown."""


def run_provenance(run_dir: str | Path, state: dict) -> dict:
    """Where a loaded model came from, kept beside what it made.

    An export's config.json keeps it under "ehrfm", a clinical head's metrics.json under "model":
    the run dir, its status (result.json's, else that of the checkpoint loaded, or UNEVALUATED: an --allow-incomplete
    head or export of an interrupted, failed or diverged run says so in its own output, never only in
    the shell it was made in), the loaded checkpoint's step of the run's steps and tokens seen, and the
    tokenizer fingerprint (token id = ehrfm token id of that tokenizer). `state` is the loaded
    checkpoint's verified state.json (checkpoint.load_model(..., with_state=True)).
    """
    from ehrfm import __version__

    status, where = run_status(run_dir)
    if not where.endswith(RESULT_FILE):
        status = state.get("status")
        ckpt = Path(where).parent
        if status == Status.COMPLETED and ckpt.name == "checkpoint" and (ckpt.parent / "config.json").is_file():
            # a trainer's run without result.json stopped before or in its final eval (require_completed):
            # its checkpoint says "completed", but the run was never measured, which a head's "completed" hid
            status = UNEVALUATED
    return {
        "run": str(Path(run_dir).resolve()),
        "status": status,
        "step": state.get("step"),
        "steps": state.get("steps"),
        "tokens_seen": state.get("tokens_seen"),
        "tokenizer_fingerprint": state.get("tokenizer_fingerprint"),
        "ehrfm_version": __version__,
    }


# Fields a completed result.json and its final checkpoint (model_config.json, state.json) both record.
_MODEL_FIELDS = ("n_layer", "d_model", "n_head", "context", "vocab_size")
_STATE_FIELDS = (("step", "steps"), ("tokens", "tokens"), ("tokenizer_fingerprint", "tokenizer_fingerprint"))


def _refuse_checkpoint_of_another_run(run: Path, use: str, measured: bool) -> None:
    """UserError when RUN/checkpoint is not the model its run trained (and, when `measured`, its result.json measured).

    A checkpoint copied in from another run (another shape, or the same shape and length but another seed or
    lr) or from an interrupted copy of this one (step 8 of 157) was scored by the heads and exported as the
    completed model: its metrics read d_model 48 beside a result of 32, or the seed-1 model under the seed-0
    run's name. `ehrfm train` refuses such a checkpoint on resume (train._check_checkpoint_is_this_runs); a
    consumer of a run now does too. `measured` (a completed result.json): its status, step, tokens,
    tokenizer and shape are checked against result.json; always: the train settings the checkpoint's
    state.json records against the run's config.json (config.checkpoint_setting_differences, the resume
    check's comparison). A run dir without a checkpoint, or fields a file lacks (older or hand-made
    results), pass here.
    """
    ckpt = run / "checkpoint"
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        return
    state = read_json(state_file, "checkpoint state", expect=dict)
    problems = []
    if measured:
        result = read_json(result_path(run), "run result", expect=dict)
        if state.get("status") not in (None, Status.COMPLETED):
            problems.append(f"its state.json records status {state['status']!r}")
        for in_state, in_result in _STATE_FIELDS:
            if state.get(in_state) is not None and result.get(in_result) is not None and state[in_state] != result[in_result]:
                problems.append(f"{in_state} {state[in_state]!r} in the checkpoint vs {in_result} {result[in_result]!r} in {RESULT_FILE}")
        if (ckpt / "model_config.json").is_file():
            model = read_json(ckpt / "model_config.json", "checkpoint model config", expect=dict)
            problems += [f"{k} {model[k]!r} in the checkpoint vs {result[k]!r} in {RESULT_FILE}" for k in _MODEL_FIELDS
                         if model.get(k) is not None and result.get(k) is not None and model[k] != result[k]]
    if (run / "config.json").is_file():
        from ehrfm.config import checkpoint_setting_differences

        config = read_json(run / "config.json", "run config", expect=dict)
        problems += checkpoint_setting_differences(state.get("train"), config.get("train"), now="in config.json")
    if problems:
        what = f"the model its {RESULT_FILE} measured" if measured else "the one its config.json trained"
        raise UserError(f"run {run}: its checkpoint is not {what} ({'; '.join(problems)}): {state_file} was copied from "
                        f"another run, or from an unfinished copy of this one? {use} needs the run's own "
                        f"{'final ' if measured else ''}checkpoint: rerun its `ehrfm train` command with --overwrite, "
                        "or copy the whole run dir")


def require_completed(run_dir: str | Path, use: str, allow_incomplete: bool = False) -> None:
    """Refuse a run dir whose run did not complete (as `sweep collect` scores only completed runs).

    Args:
        run_dir: the run dir.
        use: what needs the completed run, for the message ("loading a model", "heads").
        allow_incomplete: accept any status (the user's explicit --allow-incomplete).

    Raises:
        UserError: result.json records failed or diverged, or there is no result.json and the
            checkpoint's state.json records a run that did not finish (interrupted, running,
            stable), or a trainer's run dir (config.json) without result.json whose final checkpoint
            was never evaluated; the message names the run dir, the status and the file it came
            from. A run's checkpoint dir given alone is judged by its run's result.json. A dir
            with neither file (a bare checkpoint) is accepted.
    """
    status, where = run_status(run_dir)
    if status is not None and status != Status.COMPLETED and not allow_incomplete:
        raise UserError(f"run {run_dir} has status {status!r} ({where}); {use} needs a completed run "
                        "(pass --allow-incomplete to use its last checkpoint anyway)")
    if status == Status.COMPLETED and where.endswith(RESULT_FILE):
        _refuse_checkpoint_of_another_run(Path(where).parent, use, measured=True)
    elif where.endswith(RESULT_FILE):  # failed or diverged, with --allow-incomplete: its checkpoint is still its own
        _refuse_checkpoint_of_another_run(Path(where).parent, use, measured=False)
    elif where and Path(where).parent.name == "checkpoint" and (Path(where).parent.parent / "config.json").is_file():
        _refuse_checkpoint_of_another_run(Path(where).parent.parent, use, measured=False)  # no result.json yet
    # A trainer's run dir (RUN/config.json) whose final checkpoint says completed but that has no
    # result.json was stopped before or during its final eval: whether it diverged there is unknown.
    ckpt = Path(where).parent
    if status == Status.COMPLETED and where.endswith("state.json") and ckpt.name == "checkpoint" \
            and (ckpt.parent / "config.json").is_file() and not allow_incomplete:
        raise UserError(f"run {ckpt.parent} has no {RESULT_FILE}: its final held-out loss was never measured (stopped "
                        f"during the final eval?), so it may have diverged there; {use} needs a completed run: rerun its "
                        "`ehrfm train` command (it only evaluates), or pass --allow-incomplete to use its last checkpoint")
