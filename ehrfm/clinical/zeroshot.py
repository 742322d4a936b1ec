"""Zero-shot prediction by generative rollout (ETHOS, Renc et al. 2024), with a sliding KV cache.

The method of Renc et al. (2024, "Zero shot health trajectory prediction using transformer",
npj Digital Medicine).

From each label's history (tokens with time <= prediction_time, the last `context` of them) the
model samples `n_samples` continuations. Each continuation runs until it reaches the task's
outcome or a competing event, or until `max_new_tokens` (default `rollout_contexts` x the
context read: `context`, the model's by default). The window slides as in ETHOS: once `context`
positions are cached, each new token drops the oldest one, so a token always sees the last
context - 1 tokens (a `context` below the model's bounds the rollout's window, not only the
prompt). The cache is kept, not
recomputed: RoPE scores depend only on relative positions, so rotating every cached key back by
one position (`slide_cache`) gives exactly the keys of the shifted positions. (Cached keys keep
what their tokens saw when they were encoded, including dropped tokens, as in StreamingLLM;
ETHOS recomputes the window, which forgets them.)

Outcome and competing events, in the tokenizer's tokens (tokenization/tokenize.py) and as the
labels define them (ehrfm/clinical/labels.py; the label config is read from `<labels>.json`
beside the label file, the defaults of `ehrfm labels` otherwise). Simulated time advances by
the interval tokens (`5m-15m` ... `>6mt`); each counts as the mean gap it stands for in the
train split (`interval_durations`).

Simulated time starts at the prediction time, not at the last history event (since 2026-12-03).
The history holds every event up to the prediction time, so the span from its last event to the
prediction time is known to be quiet: it has elapsed, it counts toward every window, and nothing
sampled can be placed inside it (a discharge sampled "5 minutes after" a lab drawn 20 h before the
prediction time would be a discharge we know did not happen). The model is not told that span (no
token stands for "no event yet"), so its first sampled interval is read as the wait after the
prediction time, as if the wait since its last event started afresh there. The windows below are
therefore counted from the prediction time: long_los has long_los_days - gap_hours left,
readmission readmission_days, the transfer rules transfer_hours and direct_icu_minutes. (Before,
the clock started at the last history event, so a rollout had to re-sample the quiet span: with a
last event 23 h before the prediction time (admission + 24 h), a long stay needed 7 d - 1 h of
sampled intervals after that event instead of 6 d after the prediction time.)

- in_hospital_mortality: outcome MEDS_DEATH or HOSPITAL_DISCHARGE//DIED; competing any other
  HOSPITAL_DISCHARGE//*, once its transfer window has passed (below). The labels' day rule (since
  2026-12-03): a date-only death (23:59:59) at the time of a date-only discharge to a named place
  is a death after that discharge, so a sampled MEDS_DEATH waits while no simulated time passes: a
  live discharge then (one naming a place; not DIED, not an unknown location such as UNK or OTHER)
  makes it competing; time passing, another discharge or an end of record makes it the outcome (as
  does max_new_tokens, counted in `outcome_unconfirmed_share`). The tokens cannot tell a date-only
  death from a timed one at the same time (an interval token marks only gaps of 5 min or more), so
  this reads every death with a live discharge at its time as the date-only case. And a death later
  on the calendar day of a discharge that names no live destination is in hospital: such a discharge
  waits to the end of its day (the prediction time plus the sampled intervals) as well as its
  transfer window, and a MEDS_DEATH before the day ends is the outcome. Both need the transfer
  window's machinery (interval tokens and admission tokens).
- icu_admission: outcome ICU_ADMISSION//*; competing HOSPITAL_DISCHARGE//* or MEDS_DEATH. An ICU
  admission at simulated time < prediction time (the admission) + direct_icu_minutes is a direct
  ICU admission, which `ehrfm labels` excludes: the rollout ends "transferred" as below (counted
  in `transfer_share`, left out of the share), as that future has no ICU label (when the
  tokenizer lists interval tokens, which measure the time).
- long_los: outcome simulated time passes admission + long_los_days (admission = prediction
  time - gap_hours) before the stay ends; competing HOSPITAL_DISCHARGE//* before that (a death
  does not end the stay: the label counts the discharge).
- readmission_30d: outcome HOSPITAL_ADMISSION//* at simulated time <= prediction time +
  readmission_days; competing simulated time passing that bound first, MEDS_DEATH or
  TIMELINE_END. An admission at simulated time <= prediction time + transfer_hours is a transfer,
  as `ehrfm labels` rules (it excludes such a stay): the rollout ends "transferred", counted
  apart (`transfer_share`) and left out of the label's share under either undecided rule, as
  that future has no readmission label.

A discharge's transfer window (in_hospital_mortality, icu_admission, long_los; since 2026-12-03).
`ehrfm labels` excludes a stay whose discharge is followed by the subject's next admission within
transfer_hours (reason "transferred", whatever its outcome: the next stay continues it), for every
task; it never merges the two stays. So a sampled live discharge (HOSPITAL_DISCHARGE//* other than
DIED) does not decide at once: the rollout goes on, and from then on only three things count. A
HOSPITAL_ADMISSION//* at simulated time <= discharge + transfer_hours (inclusive, as the label's
`next_admission - discharge <= transfer_hours`; an admission at the discharge's own time included)
ends it "transferred" (`transfer_share`, left out of the share: that future has no label).
Simulated time passing discharge + transfer_hours, a MEDS_DEATH or an end of record (no admission
can follow: an admission after a death is no next stay, the end of the data is no next admission)
lets the discharge decide, as the competing event. Whatever else is sampled meanwhile (an ICU
admission, the long stay's bound passing) belongs to no stay of the label and is ignored; a
rollout still waiting at max_new_tokens is undecided. A death decides at once where it decides
(HOSPITAL_DISCHARGE//DIED; MEDS_DEATH for mortality and ICU admission): `ehrfm labels` never
counts an admission after a death as a next stay. Before, the discharge decided at once, so the
share counted transferred futures, which have no label, as competing (a model as likely to sample
a death as a discharge, with an admission within the default 1 h after 5 of 16 discharges: a
mortality share of 1/2 where the labelled futures give 16/27). The window needs the interval
tokens to measure time: a tokenizer without them keeps a discharge deciding at once.

An outcome reached while the stay runs (icu_admission's ICU admission, long_los's bound; since
2026-12-03) is followed to the stay's end, as `ehrfm labels` excludes a transferred stay whatever
its outcome: a live discharge waits for its window as above (an admission inside it: transferred;
the window passing, a death or an end of record: the outcome), a death (MEDS_DEATH,
HOSPITAL_DISCHARGE//DIED) confirms it at once (no admission after a death is a next stay), an end of
record before any discharge leaves the stay open (no_discharge: undecided), anything else is
ignored. A rollout still followed at max_new_tokens counts as the outcome (its stay can only be
positive or, after a transfer, unlabelled; `outcome_unconfirmed_share`). Before, the rollout
stopped at the outcome, so transferred futures, which have no label, counted as positives.

The end of the record (TIMELINE_END, or whichever of END_TOKENS the vocabulary has) ends a
rollout undecided (since 2026-12-03; before, it counted as the competing event): the data stop,
the stay does not. `ehrfm labels` excludes a stay the data leave open (no_discharge), so such a
future has no mortality, ICU or long-stay label, and calling it a discharge pulled every share
toward 0 by the model's rate of sampling the end. It is counted in the undecided share (and apart,
in `end_of_record_share`). Readmission is the exception, as its label rules: a discharge with no
later admission in the data is a negative (follow-up is taken to run to the end of the data), so
there the end of the record stays a competing event.

Probability and undecided rollouts. With `undecided="exclude"` (default) a label's probability
is its share of outcome among its decided rollouts (outcome or competing); a label with no
decided rollout gets the share over every decided rollout of the run (the cohort's rate), and
such labels are counted. `undecided="negative"` counts an undecided rollout as no outcome (the
behaviour before). The undecided share is always reported.

Sampling is seeded per label (the seed, its subject and prediction time: `rollout_seed`), so a
label's results depend neither on the batch layout nor on which other labels its file holds.
Labels are decoded together, `batch_size` rows (label x sample) at a time, their prompts
left-padded to the longest with the padding masked; each prompt is encoded once and its KV cache
is shared by its samples; decided rows leave the batch, so a batch costs about as many steps as
its longest rollout. The default batch holds as many rows as 1 GiB (or the device's free memory,
if less) holds, counting each row's KV cache and its logits: (rows, V) float32 working copies at
each step and the (n_samples, V) uniforms its label draws (`rollout_memory`; since 2026-12-03:
before, only the KV cache was counted, and the prefill returned logits at every prompt position,
labels x context x V, gigabytes for a large vocabulary), and each label's prompt encoding: its
activations and (context x context) attention masks (`rollout_memory`; since 2026-12-03, later:
with a long context and a small model they outweigh the cache). A batch smaller than n_samples splits a
label's samples over several batches (the same draws: each sample reads its own row of its
label's per-step uniforms). A model of which not even one rollout fits the device's free memory
is refused before any rollout, naming the sizes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ehrfm.clinical.common import as_stored, check_out, prediction_frame, warn_outcome_in_history, write_head_outputs
from ehrfm.clinical.configs import ZEROSHOT_TASKS, ZeroShotConfig
from ehrfm.clinical.histories import END_TOKENS, history_window
from ehrfm.clinical.labels import DISCHARGE_PREFIX, UNKNOWN_DISCHARGE_LOCATIONS, check_label_window, head_labels
from ehrfm.clinical.metrics import binary_metrics, format_metrics
from ehrfm.clinical.probe import load_label_histories
from ehrfm.errors import UserError
from ehrfm.io import free_memory, warn, warn_once
from ehrfm.meds_io import wall_clock
from ehrfm.tokens import TokenDir

UNDECIDED_RULES = ("exclude", "negative")
UNDECIDED_WARN = 0.5  # a share of undecided rollouts at or above this is warned: the score then says little
# The rollout rules' version, in sweep collect's cache key: scores cached under older rules are redone.
ROLLOUT_RULES = ("2026-12-07: a discharge folded into HOSPITAL_DISCHARGE//* waits as an unknown place; clock from the prediction time; an end of record is undecided; a discharge followed by "
                 "an admission within transfer_hours is a transfer (mortality, ICU admission, long stay); an outcome "
                 "is followed to its stay's end (ICU admission, long stay); mortality's day rule")
ROLLOUT_BUDGET_BYTES = 1 << 30  # default memory of a batch (KV cache, prompt encoding and logits): every rollout of a small model's labels at once
# (rows, V) float32 tensors a decoding step holds at once, beside its labels' draws: the logits,
# the uniforms gathered per row, and the Gumbel scores (rollout_batch computes them in place)
LOGIT_COPIES = 3
# rollout_memory's activations: d_model-wide vectors a position holds at once in a layer (the residual, its norm,
# q, k, v, the attention output and its projection, the MLP output), beside 3 of the MLP's hidden width (its
# fused gate and up, and their product); boolean (t, keys) masks GPT.forward_step builds for a left-padded prompt
ACT_WIDTHS = 8
MASK_BOOLS = 4
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR
# the defaults of `ehrfm labels` (ehrfm.clinical.labels.LabelConfig), used when a label file has no config beside it
LABEL_DEFAULTS = {"gap_hours": 24.0, "long_los_days": 7.0, "readmission_days": 30.0, "transfer_hours": 1.0,
                  "direct_icu_minutes": 5.0}



@dataclass
class RolloutSpec:
    """What ends a rollout: stop tokens and an optional time bound.

    What ends a rollout: token ids, and an optional time bound (per label, us after the
    prediction time) whose crossing is the outcome (`cross="outcome"`) or competing (`"competing"`);
    `ends` stop it undecided (an end of record the task's label does not decide on). A sampled
    `discharges` id waits for the transfer window: an `admissions` id inside it is a transfer, the
    window passing or a `final` id lets the discharge decide (module docstring).
    """

    task: str
    outcome: list[int]
    competing: list[int]
    cross: str | None = None  # None: no time bound
    durations: np.ndarray | None = None  # (V,) float64 us each token adds to simulated time
    ends: list[int] = field(default_factory=list)  # end-of-record ids that stop a rollout undecided
    # competing ids (live discharges) that decide only once the transfer window after them passes
    # with no admission; empty: a competing id decides at once (rollout_batch's `waits`)
    discharges: list[int] = field(default_factory=list)
    admissions: list[int] = field(default_factory=list)  # ids that, inside that window, make the discharge a transfer
    final: list[int] = field(default_factory=list)  # ids after which no admission can follow (a death, the end of the record)
    # icu_admission, long_los: an outcome reached while the stay runs is followed to the stay's end (its
    # discharge and that discharge's transfer window) before it counts; `deaths` end such a stay at once
    follow: bool = False
    deaths: list[int] = field(default_factory=list)
    # in_hospital_mortality's day rule (labels.py): `unknown` discharges (no live destination) wait to the end of
    # their calendar day for a death, which makes them in hospital; a `day_death` (MEDS_DEATH) waits while no
    # time passes for a `live` discharge at its time, which makes it a death after that discharge
    unknown: list[int] = field(default_factory=list)
    live: list[int] = field(default_factory=list)
    day_death: list[int] = field(default_factory=list)


def interval_durations(td: TokenDir) -> np.ndarray:
    """Simulated microseconds per token, shape (V,).

    (V,) simulated microseconds per token: each interval token's mean gap in the train split
    (the first split when there is none), its bin's midpoint where it never occurs; 0 otherwise.

    Raises:
        UserError: the tokenizer lists no interval tokens (time-bound tasks need them).
    """
    spec = td.tokenizer.get("interval_tokens") or []
    names = [t["token"] for t in spec]
    vocab = set(td.vocab)
    if not names or any(n not in vocab for n in names):
        raise UserError(f"token dir {td.path}: its tokenizer.json lists no interval tokens in its vocabulary; "
                        "long_los and readmission_30d rollouts need them to advance time")
    lo = np.array([t["min_us"] for t in spec], dtype=np.float64)
    hi = np.append(lo[1:], 2 * lo[-1])  # the open last bin (>6mt): its midpoint is 9 months
    ids = np.array([td.token_id(n) for n in names])
    dur = np.zeros(td.vocab_size, dtype=np.float64)
    dur[ids] = (lo + hi) / 2
    sp = td.split("train" if "train" in td.splits else td.splits[0])
    tokens, times = np.asarray(sp.tokens), np.asarray(sp.times)
    pos = np.flatnonzero(np.isin(tokens, ids))
    pos = pos[pos > 0]  # an interval token always follows an event of its subject (never first)
    if len(pos):
        gaps = (times[pos] - times[pos - 1]).astype(np.float64)
        sums = np.bincount(tokens[pos], weights=gaps, minlength=td.vocab_size)
        counts = np.bincount(tokens[pos], minlength=td.vocab_size)
        seen = ids[counts[ids] > 0]
        dur[seen] = sums[seen] / counts[seen]
    return dur


def rollout_spec(td: TokenDir, task: str) -> RolloutSpec:
    """Outcome and competing token ids (and time bound) of a zero-shot task (module docstring)."""
    vocab = td.vocab
    have = set(vocab)
    discharge = [i for i, t in enumerate(vocab) if t.startswith("HOSPITAL_DISCHARGE//")]
    ends = [td.token_id(t) for t in END_TOKENS if t in have]
    death = [td.token_id(t) for t in ("MEDS_DEATH", "HOSPITAL_DISCHARGE//DIED") if t in have]
    meds_death = [td.token_id("MEDS_DEATH")] if "MEDS_DEATH" in have else []
    cross, durations = None, None
    # The end of the record is no end of the stay: those tasks' labels exclude an open stay, so it
    # stops the rollout undecided. Readmission's label counts "no later admission in the data" as
    # a negative, so there it is competing (module docstring).
    if task == "in_hospital_mortality":
        outcome, competing = death, [i for i in discharge if i not in death]
    elif task == "icu_admission":
        outcome = td.token_ids_with_prefix("ICU_ADMISSION//")
        competing = discharge + [i for i in meds_death if i not in discharge]
    elif task == "long_los":
        outcome, competing, cross = [], discharge, "outcome"
    elif task == "readmission_30d":
        outcome, competing, cross = td.token_ids_with_prefix("HOSPITAL_ADMISSION//"), meds_death + ends, "competing"
        ends = []
    else:
        raise UserError(f"zero-shot supports {', '.join(ZEROSHOT_TASKS)}, not {task!r}")
    if cross is not None:
        durations = interval_durations(td)
    elif td.tokenizer.get("interval_tokens"):
        durations = interval_durations(td)  # times the transfer rules (transfer_limits, the discharge's window)
    admissions, waiting = td.token_ids_with_prefix("HOSPITAL_ADMISSION//"), []
    if task != "readmission_30d" and durations is not None and admissions:
        # A live discharge followed within transfer_hours by an admission is a transfer, which `ehrfm labels`
        # excludes: it decides once that window passes. A death (HOSPITAL_DISCHARGE//DIED) decides at once:
        # an admission after a death is no next stay (admitted_after_death).
        waiting = [i for i in competing if i in discharge and i not in death]
    if cross is None and not outcome:
        raise UserError(f"token dir {td.path} has no outcome token for {task} in its vocabulary")
    if task == "readmission_30d" and not outcome:
        raise UserError(f"token dir {td.path} has no HOSPITAL_ADMISSION//* token for {task} in its vocabulary")
    if not competing:
        what = "MEDS_DEATH, TIMELINE_END" if task == "readmission_30d" else "HOSPITAL_DISCHARGE//*"
        raise UserError(f"token dir {td.path} has no competing token ({what}) for {task}")
    follow = bool(waiting) and task in ("icu_admission", "long_los")
    day_rule = bool(waiting) and task == "in_hospital_mortality"
    # A rare place's discharge folded into its family's root (HOSPITAL_DISCHARGE//*, hierarchical codes) may be a death
    # or an unknown place: it waits as an unknown one (a death that day is in hospital). As a live discharge, every
    # in-hospital death of a tokenizer that folded DIED (`--min-count` above its count) scored as a death after discharge.
    unknown = [i for i in waiting if vocab[i][len(DISCHARGE_PREFIX):].strip().upper() in UNKNOWN_DISCHARGE_LOCATIONS
               or vocab[i] == DISCHARGE_PREFIX + "*"]
    return RolloutSpec(task, outcome, competing, cross, durations, ends, waiting, admissions if waiting else [],
                       (meds_death + [td.token_id(t) for t in END_TOKENS if t in have]) if waiting else [],
                       follow, death if follow else [], unknown if day_rule else [],
                       [i for i in waiting if i not in unknown] if day_rule else [], meds_death if day_rule else [])


def outcome_tokens(td: TokenDir, task: str) -> tuple[list[int], list[int]]:
    """(outcome ids, competing ids) of a task (see rollout_spec; time-bound tasks add a bound)."""
    spec = rollout_spec(td, task)
    return spec.outcome, spec.competing


def label_options(labels_path: str | os.PathLike) -> dict:
    """The label windows a label file was made with.

    gap_hours, long_los_days, readmission_days, transfer_hours, direct_icu_minutes of a label file: from the `config`
    of the `<stem>.json` that `ehrfm labels` writes beside it, else (or for a key it lacks) the
    defaults; "source" says which file, if any, was read. UserError: the sidecar gives a window a
    value no label window can take (labels.check_label_window).
    """
    side = Path(labels_path).with_suffix(".json")
    found = {}
    if side.is_file():
        try:
            found = (json.loads(side.read_text(encoding="utf-8")).get("config") or {})
        except (OSError, ValueError, AttributeError):
            found = {}
    opts = {k: v if found.get(k) is None else check_label_window(k, found[k], where=f"label sidecar {side}")
            for k, v in LABEL_DEFAULTS.items()}
    opts["source"] = str(side) if any(k in found for k in LABEL_DEFAULTS) else DEFAULT_WINDOWS
    return opts


DEFAULT_WINDOWS = "defaults of `ehrfm labels`"  # label_options' source when no sidecar gives the windows


def _windows_text(task: str, opts: dict) -> str:
    """The windows a task's rollouts follow, in words (gap, long stay, readmission)."""
    if task == "long_los":
        return f"a stay over {opts['long_los_days']:g} days, predicted {opts['gap_hours']:g} h after admission"
    if task == "readmission_30d":
        return f"a readmission within {opts['readmission_days']:g} days, transfers within {opts['transfer_hours']:g} h not counted"
    return ", ".join(f"{k} {v:g}" for k, v in opts.items() if k != "source")


def time_limits(task: str, n: int, opts: dict) -> np.ndarray:
    """(n,) time bound of each label in us after its prediction time (inf without one).

    Simulated time starts at the prediction time (module docstring), so the bounds are the label
    windows less what has passed by then: long_los admission + long_los_days with admission =
    prediction time - gap_hours; readmission_30d prediction time (the discharge) + readmission_days.
    """
    if task == "long_los":
        return np.full(n, opts["long_los_days"] * US_PER_DAY - opts["gap_hours"] * US_PER_HOUR, dtype=np.float64)
    if task == "readmission_30d":
        return np.full(n, opts["readmission_days"] * US_PER_DAY, dtype=np.float64)
    return np.full(n, np.inf)


def transfer_limits(task: str, n: int, opts: dict) -> np.ndarray:
    """(n,) an outcome at most this long (us) after the prediction time is a future with no label.

    Readmission: an admission by prediction time (the discharge) + transfer_hours is a transfer.
    ICU admission: an ICU admission before prediction time (the admission) + direct_icu_minutes
    is a direct ICU admission (strictly before: the largest float below that bound). Both as
    `ehrfm labels` applies them; -inf for the other tasks.
    """
    if task == "readmission_30d":
        return np.full(n, opts["transfer_hours"] * US_PER_HOUR, dtype=np.float64)
    if task == "icu_admission":
        return np.full(n, np.nextafter(opts["direct_icu_minutes"] * 60_000_000.0, -np.inf))
    return np.full(n, -np.inf)


def slide_cache(model, cache, drop: int = 1) -> None:
    """Drop the oldest `drop` positions of a full KV cache and move the rest to the front.

    Cached keys carry RoPE rotations of their absolute positions; rotating each by -drop gives
    the keys at the shifted positions (R(p - d) = R(-d) R(p)), so attention scores, which depend
    only on relative positions, are unchanged. Values carry no position.
    """
    import torch

    from ehrfm.model import apply_rope

    n = cache.length
    if not 0 < drop < n:
        raise ValueError(f"cannot drop {drop} of {n} cached positions")
    cos, sin = model.rope_cos[drop], model.rope_sin[drop]
    # RoPE is linear in the key: one (hd, hd) matrix product is several times faster than
    # apply_rope's elementwise broadcast over a strided 5-D view
    rot = apply_rope(torch.eye(cos.shape[-1], dtype=cache.k.dtype, device=cache.k.device), cos, -sin)
    cache.k[:, :, :, : n - drop] = cache.k[:, :, :, drop:n] @ rot
    cache.v[:, :, :, : n - drop] = cache.v[:, :, :, drop:n].clone()
    cache.length = n - drop


@dataclass
class Rollouts:
    """Per label: rollouts that reached the outcome, the competing event, neither; tokens sampled."""

    outcome: np.ndarray  # (L,) int
    competing: np.ndarray  # (L,) int
    undecided: np.ndarray  # (L,) int
    tokens: np.ndarray  # (L,) total tokens sampled over the label's rollouts
    transferred: np.ndarray | None = None  # (L,) int: rollouts ended by a transfer or a direct ICU admission (none of the above)
    ended: np.ndarray | None = None  # (L,) int: undecided rollouts stopped by an end of record (within `undecided`)
    unconfirmed: np.ndarray | None = None  # (L,) int: outcomes still followed to their stay's end at max_new_tokens (within `outcome`)


def rollout_batch(model, prompts: list[np.ndarray], seeds: list[int], spec: RolloutSpec, limits: np.ndarray,
                  n_samples: int, max_new_tokens: int, temperature: float, device, pad_id: int = 0,
                  transfers: np.ndarray | None = None, samples: tuple[int, int] | None = None,
                  waits: np.ndarray | None = None, origins: np.ndarray | None = None,
                  context: int | None = None) -> Rollouts:
    """Roll out n_samples continuations of each of L prompts (1-D token arrays, any lengths) at once.

    Prompts are left-padded to the longest and the padding is masked (GPT.forward_step's `pad`).
    limits: (L,) time bound of each label (us after its prediction time; inf for none); simulated
    time starts at 0, the prediction time (module docstring).
    Sampling is Gumbel-max with one generator per label, drawing (n_samples, V) uniforms per step
    while any of the label's rollouts runs, so a label's rollouts depend only on its seed, never on
    which labels share its batch. A rollout is decided at the first token that meets the task's
    outcome or competing rule (time is checked first: an interval token that crosses the bound
    decides before the event it precedes). transfers: (L,) per label, an outcome token at simulated
    time <= this (us after its prediction time) ends the rollout as a transfer (readmission,
    and a direct ICU admission: `transfer_limits`), neither outcome nor competing; None: no such rule.
    waits: (L,) per label, us a sampled spec.discharges token waits before it decides (transfer_hours):
    while it waits only three things count, an spec.admissions token at simulated time <= discharge
    + wait (a transfer, as above), simulated time passing discharge + wait or a spec.final token (a
    death, the end of the record: no admission can follow) (the discharge decides: competing); a
    rollout still waiting at max_new_tokens is undecided. None: a discharge decides at once.
    An end-of-record token (spec.ends) that decides nothing stops the rollout undecided.
    origins: (L,) each label's prediction time, us since the epoch: the calendar day of a sampled
    spec.unknown discharge (mortality's day rule; None: such a discharge waits as a live one).
    context: the positions a rollout attends to (its KV cache slides beyond them); None: the model's
    context. Prompts must be no longer.
    samples: (first, stop), roll out only those of each label's n_samples (counts cover them
    alone); each still draws its own row of the label's (n_samples, V) uniforms, so a label's
    samples split over batches give exactly the counts of one batch.
    """
    import torch

    first, stop = samples or (0, n_samples)
    L, S = len(prompts), stop - first  # S rows per label in this batch
    T = max(len(q) for q in prompts)
    padded = np.full((L, T), pad_id, dtype=np.int64)
    for j, q in enumerate(prompts):
        padded[j, T - len(q):] = q
    idx = torch.as_tensor(padded, device=device)
    pad = torch.as_tensor([T - len(q) for q in prompts], dtype=torch.long, device=device)
    ragged = bool(pad.any())
    if context is not None and context < T:
        raise ValueError(f"a prompt of {T} tokens is longer than the rollout's context {context}")
    cache = model.new_cache(L, context)  # max_len: the window every rollout token attends to
    # the last position's logits only: (L, T, V) of the whole prompt is what a large vocabulary cannot hold
    logits = model.forward_step(idx, cache, pad=pad if ragged else None, last_only=True)[:, -1]
    # Encode each prompt once; its keys and values are shared by its S samples.
    cache.k = cache.k.repeat_interleave(S, dim=1)
    cache.v = cache.v.repeat_interleave(S, dim=1)
    logits = logits.repeat_interleave(S, dim=0)
    pad = pad.repeat_interleave(S)
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    out_set = torch.tensor(spec.outcome, device=device, dtype=torch.long)
    comp_set = torch.tensor(spec.competing, device=device, dtype=torch.long)
    end_set = torch.tensor(spec.ends, device=device, dtype=torch.long)
    dur = None if spec.durations is None else torch.as_tensor(spec.durations, device=device)
    alive = torch.arange(L * S, device=device)  # original row (label * S + sample) of each cache row
    # 0 running (undecided at the end), 1 outcome, -1 competing, 2 transferred, 3 stopped undecided by an end of record
    result = torch.zeros(L * S, dtype=torch.int8, device=device)
    n_tok = torch.zeros(L * S, dtype=torch.long, device=device)
    elapsed = torch.zeros(L * S, dtype=torch.float64, device=device)
    limit = torch.as_tensor(np.asarray(limits, dtype=np.float64), device=device).repeat_interleave(S)
    transfer = None if transfers is None else torch.as_tensor(
        np.asarray(transfers, dtype=np.float64), device=device).repeat_interleave(S)
    wait = None if waits is None or not spec.discharges else torch.as_tensor(
        np.asarray(waits, dtype=np.float64), device=device).repeat_interleave(S)
    if wait is not None:
        dis_set, adm_set, final_set = (torch.tensor(ids, device=device, dtype=torch.long)
                                       for ids in (spec.discharges, spec.admissions, spec.final))
        left = torch.full((L * S,), float("inf"), dtype=torch.float64, device=device)  # simulated time of a waiting discharge
        # what a waiting discharge decides once its window passes: -1 (competing), 1 (an outcome followed to its stay's end)
        then = torch.full((L * S,), -1, dtype=torch.int8, device=device)
        death_set = torch.tensor(spec.deaths, device=device, dtype=torch.long)
    # rows that reached the outcome and follow their stay to its end (spec.follow)
    pend = torch.zeros(L * S, dtype=torch.bool, device=device)
    day_rule = wait is not None and bool(spec.day_death)
    if day_rule:  # mortality's day rule (spec.unknown, spec.live, spec.day_death)
        unk_set, live_set, dd_set = (torch.tensor(ids, device=device, dtype=torch.long)
                                     for ids in (spec.unknown, spec.live, spec.day_death))
        any_dis = torch.tensor(spec.competing + spec.outcome, device=device, dtype=torch.long)  # every discharge, and deaths
        origin = None if origins is None else torch.as_tensor(
            np.asarray(origins, dtype=np.float64), device=device).repeat_interleave(S)
        # elapsed at which a waiting unknown discharge's day ends (-inf: none waits, or a live one)
        day_end = torch.full((L * S,), -float("inf"), dtype=torch.float64, device=device)
        dpend = torch.zeros(L * S, dtype=torch.bool, device=device)  # a sampled death waiting for a discharge at its time
        dtime = torch.zeros(L * S, dtype=torch.float64, device=device)
    V = logits.shape[-1]
    for step in range(max_new_tokens):
        labels = torch.unique(alive // S)  # sorted; each draws its full (S, V) block
        # the full (n_samples, V) draw keeps each label's stream whatever share of its samples runs here
        u = torch.cat([torch.rand((n_samples, V), generator=gens[int(j)], device=device)[first:stop] for j in labels])
        block = torch.searchsorted(labels, alive // S) * S + alive % S
        # Gumbel-max, in place: every (rows, V) float32 copy counts against the batch (LOGIT_COPIES)
        gumbel = u[block]
        del u
        gumbel.clamp_(1e-20, 1.0 - 1e-7).log_().neg_().log_().neg_()
        nxt = gumbel.add_(logits.float() / temperature).argmax(-1)
        del gumbel
        n_tok[alive] += 1
        hit_out, hit_comp = torch.isin(nxt, out_set), torch.isin(nxt, comp_set)
        if dur is not None:
            elapsed[alive] += dur[nxt]
        if spec.cross is not None:
            crossed = elapsed[alive] > limit[alive]
            if spec.cross == "outcome":
                hit_out, hit_comp = hit_out | crossed, hit_comp & ~crossed
            else:
                hit_out, hit_comp = hit_out & ~crossed, hit_comp | crossed
        ended = torch.isin(nxt, end_set)  # an end of record that decides nothing stops the rollout undecided
        res = torch.where(hit_out, 1, torch.where(hit_comp, -1, torch.where(ended, 3, 0))).to(torch.int8)
        if transfer is not None:  # a transfer or a direct ICU admission: a future with no label (labels.py)
            res = torch.where(hit_out & (elapsed[alive] <= transfer[alive]), torch.full_like(res, 2), res)
        if wait is not None:  # after a sampled discharge: an admission within the window is a transfer (labels.py)
            since, w, pe = elapsed[alive] - left[alive], wait[alive], pend[alive]
            waiting = torch.isfinite(since)
            verdict = torch.where(torch.isin(nxt, adm_set) & (since <= w), 2,
                                  torch.where((since > w) | torch.isin(nxt, final_set), then[alive].to(torch.int32), 0)).to(torch.int8)
            is_dis = torch.isin(nxt, dis_set)
            if day_rule:  # an unknown discharge: a death before its day ends is in hospital, and it waits that long
                de = day_end[alive]
                verdict = torch.where(waiting & torch.isin(nxt, dd_set) & (elapsed[alive] < de) & (verdict != 2), 1,
                                      torch.where((verdict == -1) & (elapsed[alive] < de) & ~torch.isin(nxt, final_set), 0,
                                                  verdict)).to(torch.int8)
            # an outcome followed to its stay's end: a live discharge starts its window (then: the outcome), a
            # death ends the stay (no admission can follow: the outcome), an end of record leaves it open (undecided)
            followed = torch.where(torch.isin(nxt, death_set), 1, torch.where(ended & ~is_dis, 3, 0)).to(torch.int8)
            dp = dpend[alive] if day_rule else torch.zeros_like(pe)  # a death waiting for a discharge at its time
            starts = ~waiting & ~dp & is_dis & ((res == -1) | pe)
            left[alive[starts]] = elapsed[alive[starts]]
            then[alive[starts & pe]] = 1
            newly = ~waiting & ~pe & (res == 1) if spec.follow else torch.zeros_like(pe)
            pend[alive[newly]] = True
            if day_rule:
                # a death waits while no time passes: a live discharge at its time makes it a death after that
                # discharge (competing), any other discharge, time passing or an end of record a death in hospital
                dverdict = torch.where(elapsed[alive] > dtime[alive], 1, torch.where(
                    torch.isin(nxt, live_set), -1, torch.where(torch.isin(nxt, any_dis) | ended, 1, 0))).to(torch.int8)
                dstarts = ~waiting & ~dp & (res == 1) & torch.isin(nxt, dd_set)
                dpend[alive[dstarts]] = True
                dtime[alive[dstarts]] = elapsed[alive[dstarts]]
                ustarts = starts & torch.isin(nxt, unk_set)
                if origin is not None and bool(ustarts.any()):
                    rows_u = alive[ustarts]
                    at = origin[rows_u] + elapsed[rows_u]
                    day_end[rows_u] = (torch.floor(at / US_PER_DAY) + 1) * US_PER_DAY - origin[rows_u]
                res = torch.where(dp, dverdict, torch.where(dstarts, torch.zeros_like(res), res))
            res = torch.where(waiting, verdict, torch.where(pe, followed, torch.where(starts | newly, torch.zeros_like(res), res)))
        result[alive] = res
        running = res == 0
        if not bool(running.any()) or step == max_new_tokens - 1:
            break
        if not bool(running.all()):  # decided rows leave the batch
            alive, nxt, pad = alive[running], nxt[running], pad[running]
            cache.k, cache.v = cache.k[:, running], cache.v[:, running]
        if cache.length >= cache.max_len:
            slide_cache(model, cache, 1)
            pad = (pad - 1).clamp_(min=0)
        ragged = ragged and bool(pad.any())
        logits = model.forward_step(nxt[:, None], cache, pad=pad if ragged else None)[:, -1]
    # an outcome still followed at max_new_tokens counts: its stay can only be labelled positive or, after a
    # transfer, not at all (counted apart as unconfirmed)
    if day_rule:
        pend |= dpend  # a death still waiting for a discharge at its time: in hospital unless a live one came
    unconfirmed = ((result == 0) & pend).view(L, S).cpu().numpy()
    r = np.where(unconfirmed, 1, result.view(L, S).cpu().numpy())
    return Rollouts((r == 1).sum(1), (r == -1).sum(1), ((r == 0) | (r == 3)).sum(1), n_tok.view(L, S).sum(1).cpu().numpy(),
                    (r == 2).sum(1), (r == 3).sum(1), unconfirmed.sum(1))


def rollout_groups(lengths: np.ndarray, labels_per_batch: int):
    """Batches of label positions, by prompt length (little padding), `labels_per_batch` each."""
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), labels_per_batch):
        yield order[start : start + labels_per_batch]


def rollout_probabilities(n_out: np.ndarray, n_comp: np.ndarray, n_und: np.ndarray, rule: str) -> tuple[np.ndarray, int]:
    """(P(outcome) per label, labels with no decided rollout) under an undecided rule (module docstring)."""
    n_out, n_comp, n_und = (np.asarray(a, dtype=np.float64) for a in (n_out, n_comp, n_und))
    if rule == "negative":
        return n_out / (n_out + n_comp + n_und), 0
    decided = n_out + n_comp
    pooled = n_out.sum() / decided.sum() if decided.sum() else 0.0
    none = decided == 0
    return np.where(none, pooled, n_out / np.where(none, 1.0, decided)), int(none.sum())


def rollout_memory(model, context: int) -> tuple[int, int, int]:
    """(bytes of one rollout row, bytes its label draws per sample, bytes of encoding one label's prompt).

    A row holds its keys and values (n_layer x context x d_model each, in the weights' dtype), at a
    slide a rotated copy of its keys (slide_cache), LOGIT_COPIES float32 vectors over the vocabulary,
    and a decoding step's activations: ACT_WIDTHS d_model-wide and 3 MLP-wide vectors of its position,
    and its attention over the context (a score per head and key, and the padding mask as floats). Its
    label draws (n_samples, V) float32 uniforms per step, whichever of its samples the batch holds.
    Encoding a prompt of `context` tokens (once per label, before its samples share its cache) holds
    its own cache, the activations of every position, and its attention masks: MASK_BOOLS boolean
    (context, context) masks (GPT.forward_step's causal and padding masks) and the float copy SDPA
    makes of them, in the weights' dtype (8 bytes per key pair at float32: 32 MiB per label at context
    2,048, beside a KV cache that may be smaller; since 2026-12-03, before only the cache was counted,
    so a long context and a small model could encode far more than the budget). SDPA's fused kernels
    (CPU flash, CUDA memory-efficient) build no (n_head, context, context) score matrix, so none is
    counted (measured on CPU: tests/test_zeroshot_label_rules.py).
    """
    c = model.config
    e = model.head.weight.element_size()
    kv = 2 * c.n_layer * context * c.d_model * e
    act = (ACT_WIDTHS * c.d_model + 3 * c.mlp_hidden) * e  # one position in one layer (activations are freed per layer)
    step = kv // 2 + act + (c.n_head + 1) * context * e
    prefill = kv + context * act + (e + MASK_BOOLS) * context * context
    return kv + step + LOGIT_COPIES * c.vocab_size * 4, c.vocab_size * 4, prefill


def rollout_plan(model, context: int, n_samples: int, batch_size: int | None, device) -> tuple[int, int]:
    """(labels per batch, samples per batch): whole labels while n_samples rows fit, else one label's samples in parts.

    batch_size: rows (label x sample) per batch; None: as many as ROLLOUT_BUDGET_BYTES (or the
    device's free memory, if less) holds (rollout_memory).

    Raises:
        UserError: not even one rollout (one row, with its label's draw) fits the device's free memory.
    """
    row, draw, prefill = rollout_memory(model, context)
    free = free_memory(device)
    one = row + n_samples * draw + prefill
    if free is not None and one > free:
        c = model.config
        raise UserError(f"zero-shot: one rollout needs {one / 2**20:,.1f} MiB on {device} (a KV cache of {context} positions x "
                        f"{c.n_layer} layers x {c.d_model} dims, its prompt's attention over {c.n_head} heads, logits over "
                        f"{c.vocab_size} tokens, {n_samples} samples' draws), "
                        f"more than the {free / 2**20:,.1f} MiB free: pass a smaller --context or fewer --samples")
    if batch_size is None:
        budget = ROLLOUT_BUDGET_BYTES if free is None else min(ROLLOUT_BUDGET_BYTES, free)
        # a whole label costs its prompt's encoding, n_samples rows and draws; else one label's encoding and draw
        # and as many rows as fit beside them
        per_label = prefill + n_samples * (row + draw)
        if per_label <= budget:
            return budget // per_label, n_samples
        return 1, max(1, (budget - prefill - n_samples * draw) // row)
    if batch_size >= n_samples:
        return batch_size // n_samples, n_samples
    return 1, batch_size


def rollout_seed(seed: int, subject_id: int, prediction_time_us: int) -> int:
    """The seed of one label's rollouts: from the run's seed and the label itself (subject, prediction time).

    Never from the label's row in the file: keyed so, the same held-out label was rolled out with
    another seed (AUROC 0.500 vs 0.560 on 25 labels) when the file also held train labels, or another
    tool (ACES) wrote the same labels in another order. A 63-bit blake2b digest (any torch seed).
    """
    digest = hashlib.blake2b(f"{seed}:{subject_id}:{prediction_time_us}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _run_rollouts(cfg: ZeroShotConfig, td: TokenDir, h, model, context: int, task: str, rows: np.ndarray, bar=None,
                  labels_path: str | os.PathLike | None = None):
    """Rollouts of the label rows `rows`; (p over all rows (nan elsewhere), metrics extras).

    labels_path: the label file (or task shard dir) `cfg.labels` resolved to (labels.head_labels),
    whose sidecar gives the label windows; None: cfg.labels itself.
    """
    import polars as pl
    import torch

    max_new = cfg.max_new_tokens or cfg.rollout_contexts * context
    spec = rollout_spec(td, task)
    labels_path = labels_path or cfg.labels
    opts = label_options(labels_path) if spec.durations is not None else None
    if opts is not None and opts["source"] == DEFAULT_WINDOWS:
        # a label file made elsewhere (ACES, MEDS-DEV) may have other windows: say which these rollouts follow,
        # once, not once per run of a sweep
        warn_once("zero-shot windows", str(labels_path), f"zero-shot: no `ehrfm labels` sidecar beside {labels_path} (its .json): the rollouts follow "
             f"the default windows of `ehrfm labels` ({_windows_text(task, opts)}); for labels made with other windows, "
             "write them beside it as {\"config\": {\"gap_hours\": ..., \"long_los_days\": ..., \"readmission_days\": ...}}",
             "zeroshot")
    prompts = {int(k): history_window(td, h, int(k), context) for k in rows}
    # Windows from the prediction time: the quiet span after the last history event has elapsed.
    limits = dict(zip((int(k) for k in rows), time_limits(task, len(rows), opts or LABEL_DEFAULTS), strict=True))
    wait = (opts or LABEL_DEFAULTS)["transfer_hours"] * US_PER_HOUR  # a sampled discharge's transfer window (spec.discharges)
    transfers = dict(zip((int(k) for k in rows), transfer_limits(task, len(rows), opts or LABEL_DEFAULTS), strict=True))
    lengths = np.array([len(prompts[int(k)]) for k in rows])
    # prediction times (us since the epoch): the calendar day of a sampled discharge (mortality's day rule)
    origins = h.labels["prediction_time"].cast(pl.Datetime("us")).dt.epoch("us").to_numpy().astype(np.int64)
    subjects = h.labels["subject_id"].cast(pl.Int64).to_numpy()
    label_seeds = {int(k): rollout_seed(cfg.seed, int(subjects[k]), int(origins[k])) for k in rows}
    # the day rule counts the data's calendar days: zoned MEDS times are UTC instants here (meds_io.calendar_zone)
    zones = td.meds_time_zones or []
    if len(zones) > 1:
        warn(f"zero-shot: the MEDS times of token dir {td.path} are in {len(zones)} time zones ({', '.join(zones)}): the "
             f"discharge-day rule counts the days of {zones[0]}", "zeroshot")
    day_origins = wall_clock(origins, zones[0]) if zones else origins
    device = torch.device(cfg.device)
    labels_per_batch, per_part = rollout_plan(model, context, cfg.n_samples, cfg.batch_size, device)
    n = len(h.start)
    counts = np.zeros((n, 7), dtype=np.int64)  # outcome, competing, undecided, tokens, transferred, ended, unconfirmed
    pad_id = td.token_id("PAD") if "PAD" in set(td.vocab) else 0  # any id: padding is masked
    with torch.no_grad():
        for group in rollout_groups(lengths, labels_per_batch):
            ks = [int(rows[g]) for g in group]
            seeds = [label_seeds[k] for k in ks]
            for first in range(0, cfg.n_samples, per_part):  # one part unless a label's samples do not fit at once
                r = rollout_batch(model, [prompts[k] for k in ks], seeds, spec, np.array([limits[k] for k in ks]),
                                  cfg.n_samples, max_new, cfg.temperature, device, pad_id,
                                  np.array([transfers[k] for k in ks]) if spec.durations is not None else None,
                                  samples=(first, min(first + per_part, cfg.n_samples)),
                                  waits=np.full(len(ks), wait) if spec.discharges else None, origins=day_origins[ks],
                                  context=context)
                counts[ks] += np.stack([r.outcome, r.competing, r.undecided, r.tokens, r.transferred, r.ended,
                                              r.unconfirmed], axis=1)
            if bar is not None:
                bar.update(len(ks))
    c = counts[rows]
    p_rows, none = rollout_probabilities(c[:, 0], c[:, 1], c[:, 2], cfg.undecided)
    p = np.full(n, np.nan)
    p[rows] = p_rows
    n_roll = len(rows) * cfg.n_samples
    extras = {
        "max_new_tokens": max_new,
        "undecided_share": float(c[:, 2].sum() / n_roll),
        # rollouts ended by a transfer (an admission within transfer_hours of a discharge) or a direct ICU admission
        "transfer_share": float(c[:, 4].sum() / n_roll),
        "end_of_record_share": float(c[:, 5].sum() / n_roll),  # undecided ones stopped by an end of record (in undecided_share)
        "undecided_rule": cfg.undecided,
        "labels_without_decided_rollout": none,
        "outcome_share": float(c[:, 0].sum() / n_roll),
        # outcomes still followed at max_new_tokens (in outcome_share): an ICU admission or the long stay's bound
        # whose stay was still running (a transfer after its discharge unchecked), a death still waiting for a
        # discharge at its time (mortality's day rule); None: outcomes decide at once
        "outcome_unconfirmed_share": float(c[:, 6].sum() / n_roll) if spec.follow or spec.day_death else None,
        "rollout_tokens_mean": float(c[:, 3].sum() / n_roll),
        "outcome_tokens": td.decode(spec.outcome)[:20],
        "competing_tokens": len(spec.competing),
        "end_tokens_undecided": td.decode(spec.ends),
        "time_bound": None if spec.cross is None else {"crossing_is": spec.cross, **opts},
        # hours a sampled discharge waits for an admission that makes it a transfer; None: it decides at once
        "discharge_transfer_hours": wait / US_PER_HOUR if spec.discharges else None,
        **({"direct_icu_minutes": opts["direct_icu_minutes"], "label_windows_source": opts["source"]}
           if task == "icu_admission" and opts else {}),
    }
    return p, extras


def _check(cfg: ZeroShotConfig, task: str) -> None:
    if task not in ZEROSHOT_TASKS:
        raise UserError(f"zero-shot supports {', '.join(ZEROSHOT_TASKS)}, not {task!r} (pass --task)")
    if cfg.n_samples < 1 or (cfg.max_new_tokens is not None and cfg.max_new_tokens < 1) or cfg.rollout_contexts < 1 \
            or cfg.temperature <= 0:
        raise UserError("zero-shot needs --samples >= 1, --max-new-tokens >= 1, --rollout-contexts >= 1 and --temperature > 0")

    if cfg.undecided not in UNDECIDED_RULES:
        raise UserError(f"--undecided must be one of {', '.join(UNDECIDED_RULES)}, not {cfg.undecided!r}")


def zeroshot(cfg: ZeroShotConfig, out: str | os.PathLike, overwrite: bool = False) -> dict:
    """Zero-shot rollouts of one task; writes OUT/metrics.json, predictions.parquet, config.json.

    Returns the metrics: binary_metrics (AUROC with bootstrap 95% interval, DeLong SE, ...) plus
    undecided_share (of which end_of_record_share), transfer_share (transfers after a discharge, ICU admission's
    direct ones), discharge_transfer_hours,
    labels_without_decided_rollout, max_new_tokens,
    rollout_tokens_mean, wall_s.

    Raises:
        UserError: an unsupported task, a --task other than the label file's (labels.head_labels),
            a label dir of several files, bad options, a token dir without the task's tokens, no
            labels in the scored splits, a run that did not complete (without allow_incomplete), a
            device this machine lacks, or a run trained on another tokenizer.
    """
    from ehrfm.clinical.model_io import load_run, resolve_context
    from ehrfm.io import progress, summary

    check_out(out, overwrite, cfg, command="zeroshot")
    t0 = time.time()
    labels, task = head_labels(cfg.labels, cfg.task)
    _check(cfg, task)
    td = TokenDir(cfg.tokens_dir)
    h = load_label_histories(td, labels, cfg.max_labels, cfg.seed)
    model, mcfg, record = load_run(cfg.run_dir, td, cfg.device, n_labels=len(h.start),
                                   allow_incomplete=cfg.allow_incomplete, with_record=True)
    warn_outcome_in_history(td.meds_dir, labels, task)  # after what refuses: a refusal is the one line on stderr
    context = resolve_context(cfg.context, mcfg.context)
    rows = np.flatnonzero(np.isin(h.split, cfg.splits))
    if len(rows) == 0:
        raise UserError(f"task {task}: no labels in split(s) {', '.join(cfg.splits)}")
    with progress(total=len(rows), desc=f"zeroshot {task}", unit="label") as bar:
        p, extras = _run_rollouts(cfg, td, h, model, context, task, rows, bar, labels_path=labels)
    y, p = h.y, as_stored(p)  # score what predictions.parquet holds
    metrics = {
        **binary_metrics(y[rows], p[rows], task, cfg.bootstrap, cfg.seed, h.labels["subject_id"].to_numpy()[rows]),
        "head": "zeroshot",
        "split": ",".join(cfg.splits),
        "context": context,
        "n_samples": cfg.n_samples,
        **extras,
        "model": record,
        "wall_s": time.time() - t0,
    }
    if metrics["undecided_share"] >= UNDECIDED_WARN:
        from ehrfm.io import warn

        # an undecided rollout counts as no event: all of them undecided scored AUROC 0.500 with a narrow interval
        warn(f"zeroshot {task}: {metrics['undecided_share']:.0%} of rollouts ended undecided (neither the outcome nor its "
             f"competing event within {metrics.get('max_new_tokens', cfg.max_new_tokens)} new tokens): the AUROC measures "
             "little of the model; allow longer rollouts (--max-new-tokens)")
    # only the scored rows have rollouts: predictions.parquet is exactly them, no other split files
    write_head_outputs(out, overwrite, cfg, metrics, {"predictions.parquet": prediction_frame(h.labels, p, rows)})
    summary(f"zeroshot {format_metrics(metrics)} undecided {metrics['undecided_share']:.2f} -> {out}")
    return metrics


def _labels_sha256(path: str | os.PathLike) -> str:
    """sha256 of a label file's bytes, or of each shard's path and bytes in one task's shard dir (label_shards)."""
    from ehrfm.clinical.labels import label_shards

    path = Path(path)
    shards = label_shards(path)
    if shards is None:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in shards:
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def score_run_zeroshot(
    run_dir: str | os.PathLike,
    tokens_dir: str | os.PathLike,
    labels: dict[str, str | os.PathLike],
    max_labels: int = 200,
    n_samples: int = 20,
    seed: int = 0,
    device: str = "cpu",
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """{"zeroshot_auroc/<task>", "zeroshot_auroc_se/<task>", "zeroshot_undecided/<task>"} on held_out.

    One rollout evaluation per task at the defaults (max_labels labels per split, seeded sample,
    n_samples rollouts each). With cache_dir, each task's result is kept in
    cache_dir/<task>.json under a key of the settings, the label file's bytes and windows
    (label_options) and the run's result.json, and reused while the key matches: collecting again skips finished work and an
    interrupted collect resumes where it stopped.
    """
    from ehrfm.clinical.model_io import load_run, resolve_context
    from ehrfm.io import write_json

    td = TokenDir(tokens_dir)
    model = None
    run_dir = Path(run_dir)
    result_file = run_dir / "result.json"
    run_key = hashlib.sha256(result_file.read_bytes()).hexdigest() if result_file.is_file() else None
    out: dict = {}
    for task, path in sorted(labels.items()):
        if task not in ZEROSHOT_TASKS:
            continue
        cfg = ZeroShotConfig(str(run_dir), str(tokens_dir), str(path), task=task, device=device, bootstrap=0, seed=seed,
                             max_labels=max_labels, n_samples=n_samples)
        key = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("run_dir", "tokens_dir", "labels", "device", "batch_size")},
               "labels_sha256": _labels_sha256(path), "run": run_key,
               "tokenizer": td.fingerprint,
               # the label windows the rollouts follow (the sidecar's; the transfer rule is new here,
               # so scores cached without it are not reused)
               "windows": {k: v for k, v in label_options(path).items() if k != "source"},
               "rules": ROLLOUT_RULES}
        key = json.loads(json.dumps(key))  # as stored: tuples become lists
        cached = Path(cache_dir) / f"{task}.json" if cache_dir is not None else None
        if cached is not None and cached.is_file():
            try:
                stored = json.loads(cached.read_text(encoding="utf-8"))
            except ValueError:
                stored = {}
            if stored.get("key") == key:
                out.update(stored["scores"])
                continue
        if model is None:
            model, mcfg = load_run(run_dir, td, device)
            context = resolve_context(None, mcfg.context)
        h = load_label_histories(td, path, max_labels, seed, task)  # audited once per process (warn_outcome_in_history)
        rows = np.flatnonzero(h.split == "held_out")
        if len(rows) == 0:
            raise UserError(f"task {task}: no labels in the held_out split of {path}")
        _check(cfg, task)
        p, extras = _run_rollouts(cfg, td, h, model, context, task, rows)
        m = binary_metrics(h.y[rows], as_stored(p)[rows], task, n_boot=0, seed=seed,
                           groups=h.labels["subject_id"].to_numpy()[rows])  # an SE clustered by patient
        scores = {f"zeroshot_auroc/{task}": m["auroc"], f"zeroshot_auroc_se/{task}": m["auroc_se"],
                  f"zeroshot_undecided/{task}": extras["undecided_share"]}
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            write_json(cached, {"key": key, "scores": scores, "metrics": {**m, **extras}})
        out.update(scores)
    return out
