"""IsoFLOP planning: which models to train at each compute budget, and for how many tokens.

All budgets share one ladder of model sizes, log-spaced 2 * span_dex / (sizes - 1) decades apart
on a fixed grid (rungs at integer multiples of the spacing in log10 N, or half-integer ones for an
even `sizes`, so adding or dropping a budget never moves another budget's rungs); each budget
takes the `sizes` rungs centred nearest its own expected compute-optimal size N*(C) (to within
half a rung). Each target size
becomes a concrete shape with the trainer's depth/width rule (`ehrfm.shapes.shape_for_params`) and
gets D = floor(C / F) training tokens, F being the shape's `flops_per_token`. Because the ladder
is shared, one shape serves several budgets. A ladder whose end rung snaps to the shape inside it
takes one rung more at that end when that rung is a new shape, so it keeps its span
(`shared_ladder`).

Schedules (`schedule`, the same (budget, n_layer, d_model) points for both):
- cosine: every run trains on its own, with its own cosine schedule.
- wsd (Hägele et al. 2024, arXiv 2405.18392): one trunk per distinct shape, the run of that
  shape's largest budget, warmup-stable-decay with its warmup shared by the shape's runs: that of
  the shape's shortest run (warmup_frac of its steps), so no run warms up for longer than its cosine
  twin (a trunk-length warmup would take up to 40% of a branch 8x shorter); it keeps
  a stable-phase checkpoint at the decay start (1 - decay_fraction of the steps, ~80%) of every
  smaller budget of its shape, and each of those runs is a branch that trains only its own decay
  from there (`ehrfm.train`, TrainConfig.trunk_dir). The trunk decays in place.
  A re-plan of a wsd sweep dir (a second stage of larger budgets, a bracketing rung) keeps every
  run of the previous plan that it still holds, with its id, trunk and checkpoints, so nothing
  trained is trained again; a shape's new points that decay after its longest kept run continue
  that run's stable phase from its decay start (every wsd run keeps a checkpoint there): the
  longest of them is the new trunk of the others. A new point shorter than that gets a trunk of
  its own. The sweep spends the same FLOPs as one plan of all its budgets at once.
Centring on a fit (`centre_from`, `sweep plan --centre-from FIT`): off-centre sampling biases
Approach 2's minima, and D/N = tokens_per_param is only a guess. So a sweep can be planned in
stages: plan, launch and fit the smaller budgets, then re-plan the same sweep dir with every budget
and --centre-from FIT. Each budget above the fit's largest used budget is then centred on the N_opt
that the fit's Approach 2 law predicts for it (N_opt = n_coef * C^a; a total-parameter law, fits.json
`n_count` "total", is turned into the family's non-embedding N first); budgets up to that one keep
their tokens_per_param centre, so their planned runs, and run ids, are unchanged. The centre is
snapped to the same rung grid as every other budget, so the ladder stays shared and wsd trunks
still serve several budgets. A law whose exponent a or b is not positive (or not finite) is refused:
it cannot say where a larger budget's optimum lies; a law `ehrfm recommend` would not trust (no
bootstrap intervals, an interval reaching 0) still centres the ladders, and the plan's notes say so.
sweep.json records the law used (`centre_law`).

Bracketing (`bracket_from`, `sweep plan --bracket-from RESULTS`): a ladder whose lowest loss sits
at its smallest or largest size has not bracketed its optimum, and a parabola through it can only
extrapolate; one whose lowest loss sits next to an end has one size on that side, and its
parabola's minimum and curvature rest on that one run (a noisy run at the other end tilts it:
off-centre sampling biases Approach 2). So a ladder's lowest loss needs `bracket_margin` sizes on
each side (default 2, at most (sizes - 1) // 2 and (shapes in the ladder - 1) // 2: a centred 5-size
ladder has exactly 2). Re-planning
the same sweep dir with a results table of its runs adds one size beyond the short end of each
budget's ladder that lacks them (sweep.json `extra_rungs`, kept on every later re-plan; as many
rungs as it takes to reach a shape the ladder lacks), as a researcher would add a model size; the
other runs keep their ids. Below the family's smallest shape
there is nothing to add, and the plan says so. Nor is a rung added whose run would train over
`max_epochs` (`--max-epochs`; 0, the default: no limit) epochs of the unique training tokens: a smaller model on the same
budget sees more tokens, and a rung in repeated data is off the one-epoch IsoFLOP curve (the
default demo's largest ladder was extended to a 2.2-epoch run in two draws of three); the note
names the refused rung's shape and epochs. A rung above is never refused for epochs (a larger model
sees fewer tokens), only when no larger shape trains one optimizer step on the budget.

Budgets closer than 0.1% (ehrfm.law_checks.BUDGET_SAME_DECADES, the tolerance within which `ehrfm fit`
merges planned budgets into one IsoFLOP group) are one budget written two ways: they are planned
once, at the value already planned in the sweep dir or else the smallest, and the plan says so in
one warning line (`canonical_budgets`), rather than training every size twice into one parabola.

Checks made before anything is written: a budget too small to train the family's smallest shape
for one optimizer step is an error naming every such budget and the smallest budget that works;
--span-dex 0 with several --sizes is an error. Warnings: a budget left with fewer than 3 runs (no
IsoFLOP parabola), runs whose weights, gradients and Adam state (16 bytes per parameter) exceed
this machine's memory, runs over 1 epoch, and, on a re-plan, runs of the previous plan that the new
one leaves out. Ladder targets far above what a budget can train (a huge --span-dex) are dropped
without being shaped.

`planned_flops` in sweep.json is what the sweep will really spend: the sum of the runs' FLOPs for
cosine; for wsd each trunk once plus each branch's decay only.

Replicate seeds (`run_seeds` K, `sweep plan --run-seeds K`): each (budget, shape) point is trained
K times, with training seeds seed, seed+1, ..., seed+K-1 (same data, tokens and recipe; the seed sets
the initial weights and the batch order). Runs of the demo's size at one point end up to 3% apart
between seeds, as deep as the sides of an IsoFLOP parabola (README, "The model family and the grid"),
so one seed per point leaves each budget's N_opt uncertain; `ehrfm fit` fits every replicate, and
its residual bootstrap sees their scatter. The first seed's runs keep their ids, so re-planning a
sweep dir with more seeds adds runs and keeps the trained ones; with wsd each (shape, seed) has its
own trunk. Bracketing compares a ladder's sizes by their replicates' mean loss.
Seeds only where they pay (`seed_steps` S, `sweep plan --seed-steps S`): the shortest runs scatter
most between seeds (three seeds of the demo's 280-step (2, 48) run at 3.7e11 ended 1.215-1.290 nats,
four of a 1,800-step run at 2.4e12 within 0.009: README), and they are the cheapest, so a point whose runs take fewer than S optimizer
steps is trained with ceil(S / steps) seeds (at least `run_seeds`, at most MAX_SHORT_RUN_SEEDS),
its mean loss then resting on about S steps of training noise like every other point's.

Every planned run has a stable id: a hash of its training config (and budget, and trunk), so
planning twice gives the same ids and relaunches find their runs.

A sweep dir after `plan`:

    sweep.json     SweepConfig: tokens dir, tokenizer fingerprint, budgets, ladder, train options,
                   schedule, planned_flops
    plan.parquet   one row per run (PLAN_COLUMNS + schedule, trunk_id, branch_tokens,
                   warmup_steps, stable_checkpoints)

`launch` adds runs/<run_id>/ (trainer run dirs), jobs/<run_id>.json (submission records),
logs/<run_id>.log (trainer stdout+stderr) and submitit/ (submitit's own job files).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ehrfm.config import (
    MAX_FLOPS,
    ModelConfig,
    TrainConfig,
    not_identity_fields,
    per_run_fields,
    stable_checkpoint_dir,
    warmup_steps_for,
    wsd_decay_start,
    wsd_fields,
)
from ehrfm.errors import UserError
from ehrfm.io import atomic_file, read_json, summary, warn, warn_once, write_json

SWEEP_JSON = "sweep.json"
PLAN_PARQUET = "plan.parquet"

# Training options a sweep may set for all its runs; everything else in TrainConfig is either the
# run's shape/budget (set per run) or a path (set by the launcher).
PER_RUN_FIELDS = per_run_fields()  # flagged `per_run` in ehrfm.config
SCHEDULES = ("cosine", "wsd")
# TrainConfig fields that only a wsd run sets: left out of cosine run ids, so those stay as they were.
WSD_FIELDS = wsd_fields()  # flagged `wsd` in ehrfm.config


@dataclass
class SweepConfig:
    """Everything `plan` was asked for, saved as SWEEP/sweep.json.

    Each field's docstring is its `ehrfm sweep plan` help.
    """

    tokens_dir: str
    """Token dir (ehrfm tokenize output)."""
    budgets: list[float]
    """Compute budgets C in training FLOPs, e.g. 1e12,3e12,1e13; each run trains D = floor(C / F) tokens, F = 6 (N + d V) + 6 L T d FLOPs per token (Kaplan et al. 2020; N non-embedding parameters, d width, V vocabulary, L layers, T context)."""
    sizes: int = 7
    """Model sizes per budget."""
    # The ladder spans N*(C) * 10**(+-span_dex); N*(C) is where D/N = tokens_per_param
    # (Hoffmann et al. 2022 found ~20 for text; it is only the centre of the search).
    span_dex: float = 1.0
    """Sizes span N*(C) * 10^(+-span)."""
    tokens_per_param: float = 20.0
    """D/N at the ladder's centre N*(C)."""
    context: int = 256
    """Context length of every run."""
    min_steps: int = 50
    """Warn for runs with fewer optimizer steps (too short for the schedule to matter)."""
    train: dict = field(default_factory=dict)
    """TrainConfig options shared by every run (batch_size, lr, seed, ...): every shared identity setting, pinned at plan
    time from the options given, the sweep dir's own values and the defaults (pinned_train_options)."""
    tokenizer_fingerprint: str = ""
    """Filled by plan: provenance of the token dir, checked again at launch."""
    vocab_size: int = 0
    """Filled by plan: the token dir's vocabulary size."""
    train_tokens: int = 0
    """Filled by plan: unique tokens in the train split (D beyond this means > 1 epoch)."""
    data: dict = field(default_factory=dict)
    """Filled by plan: the token dir's train and tuning counts and content digests (ehrfm.tokens.data_identity),
    checked again at a re-plan and a launch: a token dir re-made in place with the same tokenizer (a new extract)
    would otherwise train new runs on other patients beside the completed ones. Empty in sweeps planned before it."""
    extra_rungs: dict = field(default_factory=dict)
    """Set by `--bracket-from RESULTS` and kept on re-planning: {budget (`budget_key`): [below, above]}, ladder rungs added
    beyond each end of that budget's ladder (module docstring)."""
    seed_steps: int = 0
    """Points whose runs take fewer optimizer steps than this get ceil(SEED_STEPS / steps) training seeds (at least
    run_seeds, at most MAX_SHORT_RUN_SEEDS): seeds where the noise is (module docstring); 0: run_seeds everywhere."""
    bracket_margin: int = 2
    """Bracketing (`--bracket-from`): sizes that each ladder's lowest loss needs on each side (at most (sizes - 1) // 2,
    so 3- and 4-size ladders need 1); one fewer on a side adds a rung beyond that end. 1: only a lowest loss at an end
    (module docstring)."""
    max_epochs: float = 0.0
    """No planned run trains over this many epochs of the train split's unique tokens: a ladder that would reach
    over it is moved up the rungs (larger models see fewer tokens) and bracketing adds no rung below it (module
    docstring); 1 keeps repeated data out of the fitted grid (the demo's setting). 0: no limit (runs over 1 epoch
    are warned)."""
    run_seeds: int = 1
    """Training seeds per (budget, shape): runs with seeds SEED, SEED+1, ... (replicates); their scatter is training noise that
    one seed per point hides, and the fits use every replicate (module docstring)."""
    lr_ref_width: int = 0
    """Scale each run's peak lr by LR_REF_WIDTH / d_model, so the sweep's lr is the lr at that width (muP for
    Adam, Yang et al. 2022: a width's best lr falls as 1/width); 0: the same lr for every run."""
    schedule: str = field(default="cosine", metadata={"choices": SCHEDULES})
    """cosine: every run on its own; wsd: one warmup-stable-decay trunk per shape, smaller budgets of that shape
    branch off at 80% of their tokens and decay (module docstring)."""
    planned_flops: float = 0.0
    """Filled by plan: what the sweep will really spend (each wsd trunk counted once)."""
    centre_law: dict = field(default_factory=dict)
    """Set by `--centre-from FIT` (module docstring), else empty: the Approach 2 law that centres the
    budgets above `from_budget`: {"fits": FIT/fits.json, "n_coef", "a" (N_opt = n_coef * C^a),
    "n_count" ("non-embedding" or "total": the parameter count of that N_opt), "from_budget" (the
    fit's largest used budget)}."""
    created_at: str = ""
    """Filled by plan: UTC time of planning."""
    ehrfm_version: str = ""
    """Filled by plan: the ehrfm version that planned it."""

    @classmethod
    def from_dict(cls, d: dict, source: str | Path = SWEEP_JSON) -> SweepConfig:
        """A SweepConfig from a sweep.json dict; unknown keys are ignored.

        UserError naming `source` and the fields: a field missing without a default, or a value of the wrong kind
        (`"tokens_dir": null`, budgets not a list of numbers, train or data not an object): a damaged or
        hand-edited sweep.json ended status, launch and collect in a TypeError traceback.
        """
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        bad = [f"{k} missing" for k in required if k not in d]
        kinds = {"tokens_dir": str, "budgets": list, "train": dict, "data": dict, "extra_rungs": dict, "centre_law": dict,
                 "tokenizer_fingerprint": str, "schedule": str}
        bad += [f"{k} is {type(d[k]).__name__ if d[k] is not None else 'null'}, not {kind.__name__}"
                for k, kind in kinds.items() if k in d and not isinstance(d[k], kind)]
        if isinstance(d.get("budgets"), list) and not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                          for b in d["budgets"]):
            bad.append("budgets holds a value that is not a number")
        limit = d.get("max_epochs", 0.0)
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (limit >= 0 and math.isfinite(limit)):
            bad.append(f"max_epochs is {limit!r}, not a finite number >= 0")
        if bad:
            raise UserError(f"sweep config {source} is damaged: {'; '.join(bad)} (plan the sweep again with "
                            "`ehrfm sweep plan`, the same options, into a new dir)")
        d = dict(d)
        if isinstance(d.get("train"), dict) and (unknown := sorted(set(d["train"]) - {f.name for f in dataclasses.fields(TrainConfig)})):
            # Ignored with a word, not refused: sweep.json pins every training setting at plan time, so a release
            # that drops one would otherwise call every sweep planned before it damaged.
            warn_once("unknown train setting", f"{source}:{unknown}", f"sweep config {source}: train sets {', '.join(map(repr, unknown[:5]))}, no setting of this ehrfm's "
                 "`ehrfm train` (a hand edit, or a setting an ehrfm release dropped): ignored")
            d["train"] = {k: v for k, v in d["train"].items() if k not in unknown}
        return cls(**{k: v for k, v in d.items() if k in known})


# plan.parquet's columns (types: plan_schema): every plan has PLAN_COLUMNS; SCHEDULE_COLUMNS are
# written since the wsd schedule and optional when reading older plans (they are cosine plans).
PLAN_COLUMNS = [
    "run_id", "budget", "target_n_params", "n_layer", "d_model", "n_head", "context", "n_params",
    "n_params_total", "flops_per_token", "tokens", "flops", "steps", "epochs", "seed",
]
SCHEDULE_COLUMNS = ["schedule", "trunk_id", "branch_tokens", "warmup_steps", "stable_checkpoints"]


def plan_schema():
    """The pyarrow schema of plan.parquet.

    plan.parquet's pyarrow schema (PLAN_COLUMNS + SCHEDULE_COLUMNS): `write_plan_table` writes
    it, `load_sweep` checks a plan against it.
    """
    import pyarrow as pa

    i64, f64, text = pa.int64(), pa.float64(), pa.string()
    types = {"run_id": text, "budget": f64, "target_n_params": f64, "flops_per_token": f64, "flops": f64,
             "epochs": f64, "schedule": text, "trunk_id": text, "stable_checkpoints": pa.list_(i64)}
    return pa.schema([(c, types.get(c, i64)) for c in PLAN_COLUMNS + SCHEDULE_COLUMNS])


def parse_budgets(text: str) -> list[float]:
    """'1e12,3e12,1e13' -> [1e12, 3e12, 1e13] (sorted; a budget given twice is kept twice).

    Spaces around items and empty items ('1e12,,3e12', a trailing comma) are ignored. Repeated
    budgets, and budgets closer than 0.1%, are merged later by `canonical_budgets` (plan_sweep),
    which says so.

    Raises:
        UserError: an item that is not a number, or not a positive finite number of FLOPs at most MAX_BUDGET; or no budget.
    """
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if item:
            out.append(_budget_flops(item, "--budgets", "is not a number (expected FLOPs like 1e12,3e12)"))
    if not out:
        raise UserError("--budgets: give at least one compute budget in FLOPs, e.g. 1e12,3e12")
    return sorted(out)


def _budget_flops(item, where: str, not_a_number: str) -> float:
    """One compute budget as FLOPs; UserError (`where`: ...) unless a positive finite number."""
    try:
        c = float(item)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {item!r} {not_a_number}") from None
    if not (c > 0 and math.isfinite(c)):
        raise UserError(f"{where}: {item!r} must be a positive finite number of FLOPs")
    if c > MAX_BUDGET:  # 1e35 overflowed int64 token counts in plan.parquet: a traceback and an empty sweep dir
        raise UserError(f"{where}: {item!r} is above {MAX_BUDGET:.0e} FLOPs, ~10^4 times the largest training runs "
                        "made so far: a typo of the exponent?")
    return c


MAX_BUDGET = MAX_FLOPS  # the largest compute budget a sweep plans (FLOPs): ehrfm.config's bound on one run


def canonical_budgets(budgets, keep=()) -> tuple[list[float], list[str]]:
    """The budgets a sweep plans, sorted, with budgets `ehrfm fit` would merge planned once; and a note per merge.

    `ehrfm fit` (analysis.table) treats planned budgets within BUDGET_SAME_DECADES (0.1%) of each
    other as one IsoFLOP group: 2e9 and 2.0000001e9 are one budget written two ways. Planning both
    would train every size twice into one parabola, so the planner merges them the same way (chains
    of neighbours closer than that, as the fit groups them) and plans each group once, at the value
    `keep` holds (the budgets already planned in the sweep dir, so their run ids survive a re-plan),
    else at the group's smallest. Each merge gets one note ("merged ... planned once as ...").

    Args:
        budgets: compute budgets C in FLOPs (any order, duplicates allowed).
        keep: budgets already planned (FLOPs), preferred as a group's value.

    Returns:
        (sorted distinct budgets in FLOPs, notes).

    Raises:
        UserError: no budget, or a budget that is not a positive finite number of FLOPs (named).
    """
    from ehrfm.law_checks import BUDGET_SAME_DECADES

    values = [_budget_flops(b, "budgets", "is not a number of FLOPs") for b in budgets]
    if not values:
        raise UserError("budgets: give at least one compute budget in FLOPs, e.g. 1e12,3e12")
    # a budget typed twice (1e10,1e10: a slip for another budget?) is said, as a near one is
    notes = [f"budget {c:.10g} is given {n} times: planned once" for c, n in sorted(Counter(values).items()) if n > 1]
    values = sorted(set(values))
    kept = {float(b) for b in keep}
    groups = [[values[0]]]
    for c in values[1:]:
        if math.log10(c) - math.log10(groups[-1][-1]) > BUDGET_SAME_DECADES:
            groups.append([])
        groups[-1].append(c)
    out = []
    for g in groups:
        planned = [k for k in kept if any(abs(math.log10(k) - math.log10(c)) <= BUDGET_SAME_DECADES for c in g)]
        chosen = min(planned or g)
        out.append(chosen)
        if len(g) > 1:
            notes.append(f"budgets {', '.join(f'{c:.10g}' for c in g)} are within 0.1% of each other (one IsoFLOP group to "
                         f"`ehrfm fit`): planned once, as {chosen:.10g}")
        elif chosen != g[0]:
            notes.append(f"budget {g[0]:.10g} is within 0.1% of {chosen:.10g}, already planned in this sweep dir (one "
                         f"IsoFLOP group to `ehrfm fit`): planned as {chosen:.10g}, so its runs keep their ids")
    return out, notes


def parse_train_options(items: list[str] | None) -> dict:
    """['lr=3e-4', 'batch_size=16'] -> {'lr': 3e-4, 'batch_size': 16}, typed like TrainConfig."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise UserError(f"--train-opt {item!r}: expected KEY=VALUE with KEY a train option ({', '.join(sorted(set(fields) - PER_RUN_FIELDS))})")
        if key in PER_RUN_FIELDS:
            raise UserError(f"--train-opt {key}: set per run by the planner, not per sweep")
        default = getattr(TrainConfig(tokens_dir="", out_dir="", tokens=1), key)
        try:
            if isinstance(default, bool):
                out[key] = value.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                out[key] = int(float(value))
            elif isinstance(default, float):
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise UserError(f"--train-opt {item!r}: {value!r} is not a valid {type(default).__name__}") from None
    return out


def run_train_config(sweep: SweepConfig, row: dict, run_dir: str | Path) -> TrainConfig:
    """The TrainConfig of one planned run.

    The TrainConfig of one planned run (what its job passes to `ehrfm train`); a wsd branch's
    trunk_dir is its trunk's run dir beside its own (SWEEP/runs/<trunk_id>).
    """
    wsd = {}
    if row.get("schedule") == "wsd":
        trunk_id = row.get("trunk_id")
        wsd = dict(
            schedule="wsd",
            warmup_steps=int(row["warmup_steps"]),
            stable_checkpoints=[int(t) for t in row.get("stable_checkpoints") or []],
            trunk_dir=str(Path(run_dir).parent / trunk_id) if trunk_id and trunk_id != row["run_id"] else None,
        )
    return TrainConfig(
        tokens_dir=sweep.tokens_dir,
        out_dir=str(run_dir),
        n_layer=int(row["n_layer"]),
        d_model=int(row["d_model"]),
        n_head=int(row["n_head"]),
        context=int(row["context"]),
        tokens=int(row["tokens"]),
        **{**sweep.train, **run_lr(sweep, int(row["d_model"])), **_row_seed(row)},
        **wsd,
    )


def _row_seed(row: dict) -> dict:
    """{"seed": the planned run's training seed} (a replicate's own), or {} for a plan row without one."""
    seed = row.get("seed")
    return {} if seed is None else {"seed": int(seed)}


def run_lr(sweep: SweepConfig, d_model: int) -> dict:
    """{"lr": peak lr} of a run of width d_model under sweep.lr_ref_width, or {} (the sweep's lr as given).

    With lr_ref_width W > 0 the lr is lr * W / d_model (Yang et al. 2022, "Tensor Programs V", arXiv
    2203.03466: under Adam a hidden layer's best lr scales as 1/fan_in). Measured on the demo's
    tokens at 9.5e11 FLOPs (one seed each): lr 1e-2 * 32 / d_model instead of 1e-2 for every width
    lowered the (2, 48) and (2, 64) models' held-out loss by 0.13 and 0.03 nats, which had bent the
    IsoFLOP curve's large-N side up; at 3.8e11 the seed-to-seed spread of those ~300-step runs
    (up to 0.2 nats) hides any difference.
    """
    if not sweep.lr_ref_width:
        return {}
    base = float(sweep.train.get("lr", TrainConfig.__dataclass_fields__["lr"].default))
    return {"lr": base * sweep.lr_ref_width / d_model}


# TrainConfig fields that do not change what a run computes (where it runs, how it is logged or
# grouped into micro-batches; the trainer resumes across changes of these): not part of run ids,
# so moving a sweep to another cluster or GPU size keeps its finished runs.
NOT_IDENTITY = not_identity_fields()  # every role but IDENTITY in ehrfm.config


# TrainConfig identity settings the planner sets per run (or refuses as a train option): never pinned in sweep.train
PER_RUN_SETTINGS = frozenset({"n_layer", "d_model", "n_head", "context", "mlp_hidden", "tokens", "flops", "schedule",
                              "warmup_steps", "stable_checkpoints"})


def pinned_train_options(given: dict | None, recorded: dict | None = None) -> dict:
    """sweep.train for a plan: every shared identity setting, as given, else as recorded, else today's default.

    `given`: the options of this plan; `recorded`: the sweep dir's sweep.json `train` on a re-plan. Pinned at plan time, so a later release that changes a default (weight_decay 0.1 -> 0.2) changes none of the
    sweep's run ids or configs: before 2026-12-07 sweep.json held only the options given, every other one was
    today's default wherever the sweep was read, and after such an upgrade `status` called every finished run
    "trained other than planned" and a re-plan gave them new ids (a helper). On a re-plan an option not given keeps
    the sweep's own value (as the sweep options do); a sweep.json from before holds only what was given, so its
    other settings are today's defaults, as they were.
    """
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.name not in NOT_IDENTITY and f.name not in PER_RUN_SETTINGS and f.default is not dataclasses.MISSING}
    return {**defaults, **(recorded or {}), **(given or {})}


def identity_settings(train: dict) -> dict:
    """The settings of a TrainConfig dict that decide what its run computes: those its run id hashes.

    Every field of the IDENTITY role; of a cosine run, without the wsd-only ones (warmup_steps kept when set), which a
    re-plan of a cosine sweep may change (`_recipe_changes`) without changing any of its runs.
    """
    identity = {k: v for k, v in train.items() if k not in NOT_IDENTITY}
    if train.get("schedule") == "cosine":
        identity = {k: v for k, v in identity.items() if k not in WSD_FIELDS or (k == "warmup_steps" and v is not None)}
    return identity


def run_id_for(fingerprint: str, budget: float, cfg: TrainConfig, trunk_id: str | None = None) -> str:
    """Stable id of a run.

    Readable prefix + hash of everything that determines its result (a wsd branch's includes its
    trunk's id, which stands for the trunk's own config).
    """
    identity = identity_settings(cfg.to_dict())
    if cfg.schedule != "cosine" and trunk_id is not None:
        identity["trunk_id"] = trunk_id
    identity["tokenizer_fingerprint"] = fingerprint
    identity["budget"] = float(budget)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    return f"C{budget:.0e}_L{cfg.n_layer}_D{cfg.d_model}_{digest}".replace("+", "")


def _flops_per_token(cfg: ModelConfig) -> float:
    from ehrfm.shapes import flops_per_token

    return flops_per_token(cfg)


def _trains_one_step(budget: float, flops_per_token: float, tokens_per_step: int) -> bool:
    """Whether a shape costing `flops_per_token` buys at least one optimizer step of D = budget // flops_per_token tokens.

    The one rule by which the error for a too-small budget, the bracketing ladder's ends and the plan's
    dropped rows agree on what can train.
    """
    return int(budget // flops_per_token) >= tokens_per_step


def expected_optimum(budget: float, tokens_per_param: float, vocab_size: int, context: int) -> float:
    """N*(C): the non-embedding size at which D/N = tokens_per_param when D = C / flops_per_token.

    flops_per_token = 6 N g(N), g >= 1 holding the head and attention terms (large for small
    models), so N = sqrt(C / (6 r g)); a few fixed-point steps through real shapes settle g.
    With g = 1 this is the C = 6 N D rule (Kaplan et al. 2020) at D/N = r (Hoffmann et al. 2022
    find r ~ 20 for text).

    Args:
        budget: compute budget C in FLOPs.
        tokens_per_param: r = D/N at the optimum.
        vocab_size: V of the token dir.
        context: T of every run.

    Returns:
        N*(C), non-embedding parameters (a float; not snapped to a shape).
    """
    from ehrfm.shapes import n_params, shape_for_params

    n = math.sqrt(budget / (6.0 * tokens_per_param))
    for _ in range(6):
        cfg = shape_for_params(max(n, 1.0), vocab_size, context)
        g = _flops_per_token(cfg) / (6.0 * n_params(cfg))
        n = math.sqrt(budget / (6.0 * tokens_per_param * g))
    return n


def ladder_centre(sweep: SweepConfig, budget: float) -> float:
    """The non-embedding N a budget's ladder is centred on.

    The non-embedding N a budget's ladder is centred on (module docstring): the law in
    `sweep.centre_law` for budgets above its `from_budget`, else `expected_optimum`.
    """
    law = sweep.centre_law
    if law and budget > float(law["from_budget"]):
        n = float(law["n_coef"]) * float(budget) ** float(law["a"])
        if law.get("n_count") == "total":
            n = non_embedding_for_total(n, sweep.vocab_size, sweep.context)
        return n
    return expected_optimum(budget, sweep.tokens_per_param, sweep.vocab_size, sweep.context)


def non_embedding_for_total(total: float, vocab_size: int, context: int) -> float:
    """The non-embedding N whose family shape has `total` parameters in all.

    The non-embedding N whose family shape has `total` parameters in all (embedding and head
    included): log-log interpolation between the two family members whose totals bracket it (the
    smallest member's N below the family's smallest total).
    """
    from ehrfm.shapes import n_params, n_params_total, shape_for_params

    def member(n):
        cfg = shape_for_params(n, vocab_size, context)
        return n_params(cfg), n_params_total(cfg)

    lo_n, lo_t = member(1.0)
    if total <= lo_t:
        return float(lo_n)
    a, b = math.log(lo_n), math.log(2.0 * total)  # a member's N is below its total; target 2x total is above it
    for _ in range(40):  # the smallest target whose member's total reaches `total`
        mid = 0.5 * (a + b)
        if member(math.exp(mid))[1] >= total:
            b = mid
        else:
            a = mid
    hi_n, hi_t = member(math.exp(b))
    lo_n, lo_t = member(math.exp(a))
    if hi_t == lo_t:
        return float(hi_n)
    w = (math.log(total) - math.log(lo_t)) / (math.log(hi_t) - math.log(lo_t))
    return float(math.exp(math.log(lo_n) + w * (math.log(hi_n) - math.log(lo_n))))


def centre_law_from_fit(fit_path: str | Path, budgets: list[float]) -> tuple[dict, list[str]]:
    """SweepConfig.centre_law from a fit dir (or its fits.json), and notes for the plan's output.

    Raises:
        UserError: fits.json missing or damaged, without an Approach 2 law, or with a law whose
            exponents a, b or coefficient n_coef are not positive finite numbers. A law that
            ehrfm.law_checks.trust (what `ehrfm recommend` applies) does not trust otherwise (no bootstrap intervals, an interval
            reaching 0) still centres the ladders, with a note saying so.
    """
    fit_path = Path(fit_path)
    fits_json = fit_path if fit_path.is_file() else fit_path / "fits.json"
    if not fits_json.is_file():
        raise UserError(f"--centre-from {fit_path}: no fits.json there (run `ehrfm fit` on the smaller budgets' results first)")
    fits = read_json(fits_json, "fits file", expect=dict, hint="rerun `ehrfm fit` to rewrite it")
    a2 = fits.get("approach2")
    if not isinstance(a2, dict):
        raise UserError(f"{fits_json}: no approach2 fit (IsoFLOP parabolas); --centre-from needs its N_opt law")
    entries = a2.get("budgets") or []
    if not isinstance(entries, list) or not all(
            isinstance(b, dict) and _positive_number(b.get("budget")) for b in entries if not isinstance(b, dict) or b.get("used")):
        raise UserError(f"{fits_json}: approach2.budgets must be a list of objects with a positive number `budget` "
                        "(the file is damaged or not written by `ehrfm fit`); rerun `ehrfm fit` to rewrite it")
    used = [float(b["budget"]) for b in entries if isinstance(b, dict) and b.get("used")]
    law = {}
    for key in ("n_coef", "a"):
        v = a2.get(key)
        if not _positive_number(v):
            raise UserError(
                f"{fits_json}: approach2.{key} = {v!r} ({len(used)} budget(s) used); --centre-from needs N_opt = n_coef * C^a "
                "with both positive and finite: a law whose optimum does not grow with compute cannot place a larger "
                "budget's ladder (plan without --centre-from, or fit more budgets first)"
            )
        law[key] = float(v)
    if not used:
        raise UserError(f"{fits_json}: approach2 used no budget (approach2.budgets[].used); nothing to extrapolate from")
    from ehrfm.law_checks import trust

    b = a2.get("b")
    if not _positive_number(b):
        raise UserError(f"{fits_json}: approach2.b = {b!r}: a law whose D_opt does not grow with compute cannot place a "
                        "larger budget's ladder (plan without --centre-from, or fit more budgets first)")
    n_count = fits.get("n_count") or "non-embedding"
    if n_count not in ("total", "non-embedding"):
        raise UserError(f"{fits_json}: n_count = {n_count!r}, expected \"total\" or \"non-embedding\" (the parameter count "
                        "of its N_opt law); rerun `ehrfm fit` to rewrite it")
    law.update(fits=str(fits_json.resolve()), n_count=n_count, from_budget=max(used))
    notes = []
    ok, why = trust(fits, 2)  # the judgement `ehrfm recommend` makes of the same law
    if not ok:
        # A centre is only where the ladder starts looking (bracketing extends it), so a law with
        # growing optima may place it, but the plan says it is a guess.
        notes.append(f"--centre-from: the Approach 2 law is not trusted ({why}); the larger budgets' ladders are centred on "
                     "a guess: check that each parabola's minimum is inside its ladder (ehrfm sweep plan --bracket-from)")
    above = [b for b in budgets if b > law["from_budget"]]
    if not above:
        notes.append(f"--centre-from: no budget above the fit's largest ({law['from_budget']:.3g}); every ladder keeps its "
                     "tokens_per_param centre")
    return law, notes


def _positive_number(v) -> bool:
    """A JSON value that is a positive finite number (not a bool, not a string)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def smallest_shape(vocab_size: int, context: int) -> ModelConfig:
    """The smallest model shape a sweep may plan: 1 layer, d_model 16, for this vocabulary and context."""
    from ehrfm.shapes import head_dim_for

    return ModelConfig(n_layer=1, d_model=16, n_head=16 // head_dim_for(16), context=context, vocab_size=vocab_size)


MAX_RUNG_WALK = 10_000  # rungs a bracketing step walks for a new shape (0.4 ms each): a tiny-rung ladder gives up


def shared_ladder(sweep: SweepConfig, tokens_per_step: int, moved: dict | None = None) -> dict[float, list[float]]:
    """{budget: its target sizes N}, all on one log-spaced ladder (module docstring).

    Rungs are r = 2 * span_dex / (sizes - 1) decades apart on a grid fixed in log10 N (not by the
    budgets: re-planning with another budget keeps every other budget's targets and run ids); a
    budget takes the `sizes` consecutive rungs centred nearest its own N*(C) (`ladder_centre`: the
    tokens_per_param optimum, or a fit's prediction with `centre_law`), so its ladder spans
    N*(C) * 10**(+-span_dex) to within r / 2. With one size per budget there is no ladder: the
    target is N*(C) itself. Targets beyond the range of floats (a huge span_dex) are 0 or inf, never
    an overflow: `make_plan` snaps 0 to the smallest shape and drops targets no budget can train.

    Small targets can snap to one shape (the family's smallest widths are far apart: (1, 16) and
    (1, 32) differ 3.2x in N, more than a rung). Where a ladder's low end rung snaps to the same
    shape as the rung inside it, the ladder takes one rung more below when that rung is a new shape
    (never below the family's smallest); then, if the ladder still has fewer than `sizes` shapes, the
    same at its high end (never a shape that cannot train one optimizer step; a 2-size ladder whose
    low end stepped has its 2). So a ladder spans N*(C) * 10**(+-span_dex) to within r / 2, or to
    within 3 r / 2 at an end that stepped. Why: the ends set the ladder's span, and a parabola's
    curvature is pinned by its span (its standard error scales as 1 / span^2), so a collapsed end
    would cost the budget a whole rung of span, not just a point (the demo's 2.4e12 ladder lost
    10^3.9 to (1, 32): 4 shapes over 0.9 decades of non-embedding N, and no curvature interval;
    10^3.6 is (1, 16)). One rung only: a ladder of tiny rungs (a small span_dex) that all snap to one
    shape stays one shape, as asked. Each bracketing rung (`extra_rungs`) beyond an end is one more
    distinct shape on that side (as many rungs as that takes, up to MAX_RUNG_WALK), not a rung that
    snaps to the shape already at the end. A ladder is not
    widened to make up for rungs that snap together inside it: tried at stop 40, a rung added above
    the demo's 3.7e11 ladder (the (2, 64) model, 171 optimizer steps) ended 0.35 nats above the
    budget's best run, and its parabola failed the lack-of-fit test.

    With `sweep.max_epochs` set, a ladder whose smallest size would train over that many epochs of
    the unique training tokens moves up whole rungs (keeping its size and the shared grid) until it
    does not, or until a larger rung cannot train one step; an end does not step out onto a shape
    over it. `moved`, when given, receives {budget: rungs moved up}. Why: a smaller model on a
    budget sees more tokens (D = C / (6 N)); a 2-budget fit that centres the larger budgets low (a
    flat L_min, seed 1 of the demo) put its 6e12 ladder's (1, 16) at 2.2 epochs, off the one-epoch
    IsoFLOP curve the fits assume.
    """
    from ehrfm.shapes import shape_for_params

    stars = {b: ladder_centre(sweep, b) for b in sweep.budgets}
    k = sweep.sizes
    if k == 1 or sweep.span_dex == 0:
        return {b: [n] * k for b, n in stars.items()}
    rung = 2.0 * sweep.span_dex / (k - 1)
    half = (k - 1) / 2  # an even ladder has no middle rung: its centre lies between two

    def shape_at(i: float, budget: float):
        """Rung i's shape (n_layer, d_model, n_head); None where it cannot train one step on `budget`."""
        target = _pow10(i * rung)
        if target > budget / (6.0 * tokens_per_step):  # F >= 6 N: not one optimizer step (and no shape to build)
            return None
        shape = shape_for_params(max(target, 1.0), sweep.vocab_size, sweep.context)
        if not _trains_one_step(budget, _flops_per_token(shape), tokens_per_step):  # its head and attention too
            return None
        return shape.n_layer, shape.d_model, shape.n_head

    def past(i: float, step: int, budget: float) -> float:
        """The first rung beyond rung i (step -1: below, +1: above) whose shape differs from rung i's.

        Below, the search ends at the first rung whose target is under 1 parameter (every smaller
        target snaps to the family's smallest shape: the caller sees the same shape); above, at the
        first rung too large for one step (shape None). It walks at most MAX_RUNG_WALK rungs (a
        ladder of tiny rungs: --span-dex 1e-6) and then returns i itself: no new shape.
        """
        end = shape_at(i, budget)
        for n in range(1, MAX_RUNG_WALK + 1):
            j = i + n * step  # (a huge rung index, i + 1 == i in floats, walks to the limit and stays)
            s = shape_at(j, budget)
            if s is None or s != end or (step < 0 and _pow10(j * rung) < 1.0):
                return j
        return i

    cap = epoch_limit_tokens(sweep)

    def over_cap(i: float, budget: float) -> bool:
        """Whether rung i's shape would train over the epoch limit on `budget` (never without one)."""
        if not cap:
            return False
        shape = shape_for_params(max(_pow10(i * rung), 1.0), sweep.vocab_size, sweep.context)
        return budget // _flops_per_token(shape) > cap

    def step_out(end: float, inner: float, step: int, budget: float) -> float:
        """A ladder end rung that snaps onto its inner neighbour's shape, moved one rung out when that rung is a new shape."""
        s = shape_at(end, budget)
        if s is None or s != shape_at(inner, budget):
            return end
        out = shape_at(end + step, budget)
        return end + step if out is not None and out != s and not over_cap(end + step, budget) else end

    out = {}
    for b, n in stars.items():
        centre = math.floor(math.log10(n) / rung - half + 0.5) + half  # nearest admissible centre, half up
        lo, hi = centre - half, centre + half  # first and last rung (indices)
        up = 0
        while over_cap(lo, b) and shape_at(hi + 1, b) is not None and up < MAX_RUNG_WALK:
            lo, hi, up = lo + 1, hi + 1, up + 1
        if up and moved is not None:
            moved[b] = up
        lo = step_out(lo, lo + 1, -1, b)
        if len({shape_at(i, b) for i in _rung_range(lo, hi)} - {None}) < k:  # a 2-size ladder whose low end stepped has its 2
            hi = step_out(hi, hi - 1, +1, b)
        below, above = sweep.extra_rungs.get(budget_key(b), (0, 0))
        for _ in range(int(below)):  # step down to the next smaller shape; none below the family's smallest
            if shape_at(j := past(lo, -1, b), b) != shape_at(lo, b):
                lo = j
        for _ in range(int(above)):
            hi = past(hi, +1, b)
        out[b] = [_pow10(i * rung) for i in _rung_range(lo, hi)]
    return out


def _rung_range(lo: float, hi: float) -> list[float]:
    """Rung indices lo, lo + 1, ..., hi (half-integers for an even ladder)."""
    return [lo + i for i in range(int(round(hi - lo)) + 1)]


def _pow10(x: float) -> float:
    """10**x, inf above the float range (10**400 raises OverflowError), 0.0 below it."""
    return math.inf if x > 308 else 10.0 ** x


def budget_key(budget: float) -> str:
    """A budget as a sweep.json key ("3.7e+11"): 10 significant digits, so no two budgets of a plan share one."""
    return f"{float(budget):.10g}"


def bracket_rungs(sweep: SweepConfig, rows: list[dict], results: str | Path) -> tuple[dict, list[str]]:
    """extra_rungs after one bracketing step, and a note per budget it extends or cannot.

    For each budget whose every planned run (at least 3) is completed in `results` (a results table:
    run_id, status, loss (nats/token); parquet, or CSV as DESIGN.md allows), one rung is added beyond
    the end of its ladder where fewer than `sweep.bracket_margin` sizes (capped at (sizes - 1) // 2)
    lie beyond its lowest loss (module docstring). A budget it cannot judge gets a note saying why
    (runs missing or not completed), so a table of another sweep never passes silently.

    Raises:
        UserError: the results table is missing, a directory, unreadable, or lacks run_id / status / loss.
    """
    table = _read_results(results)
    missing = [c for c in ("run_id", "status", "loss") if c not in table.column_names]
    if missing:
        raise UserError(f"--bracket-from {results}: no column {', '.join(missing)} (it needs run_id, status and loss: "
                        "the table `ehrfm sweep collect` writes)")
    table = table.select(["run_id", "status", "loss"]).to_pylist()
    loss = {str(r["run_id"]): float(r["loss"]) for r in table
            if r["status"] == "completed" and isinstance(r["loss"], (int, float)) and not isinstance(r["loss"], bool)
            and math.isfinite(r["loss"])}
    extra = {k: list(v) for k, v in sweep.extra_rungs.items()}
    notes = []
    for budget in sweep.budgets:
        runs = [r for r in rows if r["budget"] == budget]
        done = [r for r in runs if r["run_id"] in loss]
        # One rung per shape; with replicate seeds (run_seeds) a shape's loss is its replicates' mean.
        by_shape: dict[tuple[int, int, int], list[float]] = {}
        for r in runs:
            by_shape.setdefault((r["n_layer"], r["d_model"], r["n_params"]), []).append(loss.get(r["run_id"], math.nan))
        ladder = sorted(({"n_layer": L, "d_model": d, "n_params": n, "loss": sum(v) / len(v)} for (L, d, n), v in by_shape.items()),
                        key=lambda r: r["n_params"])
        if len(ladder) < 3:
            notes.append(f"--bracket-from: budget {budget:.3g}: not extended: its ladder has {len(ladder)} size(s), and "
                         "an end of a ladder says where the optimum lies only with at least 3 (plan with --sizes 3 or more)")
            continue
        if len(done) < len(runs):
            notes.append(f"--bracket-from: budget {budget:.3g}: not extended: {len(done)} of its {len(runs)} planned runs "
                         f"completed with a finite loss in {results} (bracketing needs every run of its ladder)")
            continue
        best = min(ladder, key=lambda r: r["loss"])
        i = ladder.index(best)
        margin = max(1, min(int(sweep.bracket_margin), (sweep.sizes - 1) // 2, (len(ladder) - 1) // 2))
        side = 0 if i < margin else 1 if len(ladder) - 1 - i < margin else None
        if side is None:
            continue
        where = ("at its smallest size", "at its largest size") if margin == 1 or i in (0, len(ladder) - 1) else \
                (f"{i} size(s) from its smallest", f"{len(ladder) - 1 - i} size(s) from its largest")
        smallest = smallest_shape(sweep.vocab_size, sweep.context)
        # the ladder's end, not its lowest loss, must be the family's smallest for there to be nothing below
        if side == 0 and (ladder[0]["n_layer"], ladder[0]["d_model"]) == (smallest.n_layer, smallest.d_model):
            at = "at" if i == 0 else f"{i} size(s) from"
            low = min((r for r in runs), key=lambda r: r["n_params"])
            repeats = (f" (its ({low['n_layer']}, {low['d_model']}) run trains {low['epochs']:.2f} epochs of the {sweep.train_tokens} unique training tokens: "
                       "repeated data)") if sweep.train_tokens and low["epochs"] > 1.0 else ""
            notes.append(f"--bracket-from: budget {budget:.3g}: its lowest loss is {at} the family's smallest shape "
                         f"(n_layer={smallest.n_layer}, d_model={smallest.d_model}); there is no smaller model to add{repeats}")
            continue
        refusal = _bracket_refusal(sweep, budget, extra, side)
        if refusal:
            notes.append(f"--bracket-from: budget {budget:.3g}: its lowest loss is {where[side]} "
                         f"(n_layer={best['n_layer']}, d_model={best['d_model']}; {margin} needed on each side), "
                         f"but no rung added {('below', 'above')[side]}: {refusal}")
            continue
        extra.setdefault(budget_key(budget), [0, 0])[side] += 1
        notes.append(f"--bracket-from: budget {budget:.3g}: its lowest loss is {where[side]} "
                     f"(n_layer={best['n_layer']}, d_model={best['d_model']}; {margin} needed on each side); "
                     f"one rung added {('below', 'above')[side]}")
    return extra, notes


def _bracket_refusal(sweep: SweepConfig, budget: float, extra: dict, side: int) -> str:
    """Why a bracketing step adds no rung to `budget`'s ladder on `side` (0 below, 1 above); "" if it may.

    The step adds the ladder's next rung with a new shape (`shared_ladder`); it is refused when that
    rung has no shape the budget can train one optimizer step on (above: `make_plan` would drop it,
    so the rung would be recorded but never planned), or when, below, its run would train over
    `sweep.max_epochs` epochs of the train split's unique tokens (unchecked when 0, the default, or
    when those are unknown). Why the epochs: a smaller model on the same budget sees more tokens
    (D = C / (6 N)), so a rung below can cross into repeated data, off the one-epoch IsoFLOP curve
    the fits assume (Muennighoff et al. 2023); the default demo's 6e12 ladder, lowest at its
    smallest (1, 32), was extended to (1, 16) at 2.2 epochs in two draws of three. Above, a larger
    model sees fewer tokens than every run of the ladder: nothing to refuse.
    """
    from ehrfm.shapes import n_params, shape_for_params

    base = TrainConfig(tokens_dir=sweep.tokens_dir, out_dir="", tokens=1, context=sweep.context, **sweep.train)
    tokens_per_step = base.batch_size * base.context
    tentative = {k: list(v) for k, v in extra.items()}
    tentative.setdefault(budget_key(budget), [0, 0])[side] += 1
    end = -1 if side else 0
    before = shared_ladder(dataclasses.replace(sweep, extra_rungs=extra), tokens_per_step)[budget][end]
    after = shared_ladder(dataclasses.replace(sweep, extra_rungs=tentative), tokens_per_step)[budget][end]
    shape = shape_for_params(max(after, 1.0), sweep.vocab_size, sweep.context)
    tokens = int(budget // _flops_per_token(shape))
    if after == before or not _trains_one_step(budget, _flops_per_token(shape), tokens_per_step):
        return ("its ladder's rungs reach no smaller shape" if side == 0 else
                f"no larger shape trains one optimizer step ({tokens_per_step} tokens) on this budget")
    limit, cap = sweep.max_epochs, epoch_limit_tokens(sweep)
    if side == 1 or not cap or tokens <= cap:
        return ""
    return (f"the ladder's next rung below, (n_layer={shape.n_layer}, d_model={shape.d_model}, N={n_params(shape):.3g}), "
            f"would train D={tokens:.3g} tokens, {_epochs_text(tokens / sweep.train_tokens, limit)} epochs of the "
            f"{sweep.train_tokens} unique training tokens, over --max-epochs {limit:g} (repeated data); this "
            "budget's optimum may lie where the data repeats (a higher --max-epochs admits that rung, and re-places every "
            "ladder this limit moved up)")


def epoch_limit_tokens(sweep: SweepConfig) -> float:
    """The most tokens one planned run may train: max_epochs x the train split's unique tokens; 0 for no limit."""
    return sweep.max_epochs * sweep.train_tokens if sweep.max_epochs and sweep.train_tokens else 0


def _epochs_text(epochs: float, limit: float) -> str:
    """Epochs to 2 decimals, or to as many as tell them from `limit` (1.0026 over a limit of 1 is not "1.00")."""
    for digits in range(2, 8):
        if f"{epochs:.{digits}f}" != f"{limit:.{digits}f}":
            return f"{epochs:.{digits}f}"
    return f"{epochs:g}"


def _read_results(results: str | Path):
    """A results table (parquet, or .csv) as a pyarrow Table; UserError naming the path otherwise."""
    from ehrfm.io import read_parquet

    path = Path(results)
    if path.is_dir():
        hint = f" (did you mean {path / 'results.parquet'}?)" if (path / "results.parquet").is_file() else ""
        raise UserError(f"--bracket-from {path}: a directory, not a results table{hint}")
    if path.suffix.lower() != ".csv":
        return read_parquet(path, "results table", hint="run `ehrfm sweep collect` to rewrite it")
    if not path.is_file():
        raise UserError(f"results table {path} not found")
    import pyarrow as pa
    import pyarrow.csv as pcsv

    try:
        return pcsv.read_csv(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise UserError(f"results table {path} is damaged: not a readable CSV file ({type(e).__name__})") from None


def make_plan(sweep: SweepConfig, previous: list[dict] | None = None, runs: Path | None = None) -> tuple[list[dict], list[str]]:
    """Plan rows (dicts with PLAN_COLUMNS) and human-readable warnings for a sweep config.

    `previous`: the rows of the sweep dir's earlier plan, whose wsd runs a re-plan keeps
    (`_wsd_rows`); `runs`: that sweep dir's runs/.
    """
    from ehrfm.shapes import n_params, shape_for_params

    base = TrainConfig(tokens_dir=sweep.tokens_dir, out_dir="", tokens=1, context=sweep.context, **sweep.train)
    tokens_per_step = base.batch_size * base.context
    if sweep.sizes < 1:
        raise UserError(f"--sizes must be >= 1 (got {sweep.sizes})")
    if not (sweep.span_dex >= 0 and math.isfinite(sweep.span_dex)):
        raise UserError(f"--span-dex must be finite and >= 0 (got {sweep.span_dex})")
    if sweep.span_dex == 0 and sweep.sizes > 1:
        raise UserError(f"--span-dex 0 with --sizes {sweep.sizes}: every size of a ladder would be the same model; give "
                        "--span-dex > 0 (decades each side of the centre) or --sizes 1")
    if not (sweep.tokens_per_param > 0 and math.isfinite(sweep.tokens_per_param)):
        raise UserError(f"--tokens-per-param must be finite and > 0 (got {sweep.tokens_per_param})")
    if not (isinstance(sweep.run_seeds, int) and 1 <= sweep.run_seeds <= MAX_RUN_SEEDS):
        raise UserError(f"--run-seeds must be an integer in 1..{MAX_RUN_SEEDS} (got {sweep.run_seeds!r}): training seeds "
                        "per (budget, shape)")
    if not (isinstance(sweep.seed_steps, int) and sweep.seed_steps >= 0):
        raise UserError(f"--seed-steps must be an integer >= 0 (got {sweep.seed_steps!r}): optimizer steps below which a "
                        "point gets more training seeds (0: off)")

    rows: list[dict] = []
    warnings: list[str] = []
    smallest = smallest_shape(sweep.vocab_size, sweep.context)
    f_smallest = _flops_per_token(smallest)
    too_small = [b for b in sweep.budgets if not _trains_one_step(b, f_smallest, tokens_per_step)]
    if too_small:
        one_step = f_smallest * tokens_per_step
        named = (f"budget {too_small[0]:.3g} FLOPs is" if len(too_small) == 1
                 else f"budgets {', '.join(f'{b:.3g}' for b in too_small)} FLOPs are")
        raise UserError(
            f"{named} too small for the smallest shape (n_layer=1, "
            f"d_model=16, N={n_params(smallest)}, {f_smallest:.3g} FLOPs/token): budget {too_small[0]:.3g} buys "
            f"{int(too_small[0] // f_smallest)} tokens, less than one optimizer step of batch_size*context={tokens_per_step} "
            f"tokens; the smallest budget that works is {_ceil3(one_step)} FLOPs (one step; "
            f"{_ceil3(one_step * max(sweep.min_steps, 1))} for --min-steps {sweep.min_steps})"
        )
    moved: dict[float, int] = {}
    ladder = shared_ladder(sweep, tokens_per_step, moved)
    cap, over_cap = epoch_limit_tokens(sweep), 0  # rows dropped for training over it
    for budget, up in moved.items():
        warnings.append(f"budget {budget:.3g}: ladder moved up {up} rung(s) so that no run trains over --max-epochs "
                        f"{sweep.max_epochs:g} epochs of the {sweep.train_tokens} unique training tokens (a smaller model "
                        "sees more tokens): if its lowest loss ends at its smallest size, the optimum lies where the data repeats")
    memory = _memory_bytes()
    heavy: list[dict] = []
    for budget in sweep.budgets:
        n_max = budget / (6.0 * tokens_per_step)  # no shape above this N buys one step: F >= 6 N
        k = sweep.sizes
        targets = ladder[budget]
        seen: set[tuple[int, int, int]] = set()
        n_rows = len(rows)
        planned_shapes = 0
        for target in targets:
            if target > 10.0 * n_max:  # shaping it would be wasted (or, for a huge target, endless): it snaps to N > n_max
                warnings.append(f"budget {budget:.3g}: target N={target:.3g} dropped, no model that size can train one "
                                f"optimizer step ({tokens_per_step} tokens) on it")
                continue
            shape = shape_for_params(max(target, 1.0), sweep.vocab_size, sweep.context)
            key = (shape.n_layer, shape.d_model, shape.n_head)
            if key in seen:
                continue  # small targets can snap to the same shape; train it once per budget
            seen.add(key)
            fpt = _flops_per_token(shape)
            tokens = int(budget // fpt)
            label = f"budget {budget:.3g}, N={n_params(shape):.3g} (n_layer={shape.n_layer}, d_model={shape.d_model})"
            if not _trains_one_step(budget, fpt, tokens_per_step):
                warnings.append(f"{label}: dropped, D={tokens} tokens is less than one optimizer step ({tokens_per_step} tokens)")
                continue
            shape_cfg = dataclasses.replace(base, n_layer=shape.n_layer, d_model=shape.d_model, n_head=shape.n_head,
                                            tokens=tokens, **run_lr(sweep, shape.d_model))
            steps = math.ceil(tokens / tokens_per_step)
            epochs = tokens / sweep.train_tokens if sweep.train_tokens else float("nan")
            if cap and tokens > cap:
                # a ladder that could not move up far enough, or a rung kept from a plan without the limit
                over_cap += 1
                warnings.append(f"{label}: dropped, D={tokens:.3g} tokens is {_epochs_text(epochs, sweep.max_epochs)} epochs "
                                f"of the {sweep.train_tokens} unique training tokens, over --max-epochs {sweep.max_epochs:g}")
                continue
            if steps < sweep.min_steps:
                warnings.append(f"{label}: only {steps} optimizer steps (< --min-steps {sweep.min_steps})")
            if sweep.train_tokens and tokens > sweep.train_tokens:
                warnings.append(f"{label}: D={tokens:.3g} tokens is {epochs:.1f} epochs of the {sweep.train_tokens} unique training tokens")
            planned_shapes += 1
            for replicate in range(point_seeds(sweep, steps)):  # the first keeps the run id a one-seed plan gives
                cfg = dataclasses.replace(shape_cfg, seed=base.seed + replicate)
                rows.append(_plan_row(sweep, budget, target, shape, fpt, cfg, steps, epochs))
        if len(seen) < k:
            warnings.append(f"budget {budget:.3g}: {k} sizes asked, {len(seen)} distinct shapes (small sizes snap to the same shape)")
        if planned_shapes < 3:
            what = f"{planned_shapes} run(s)" if sweep.run_seeds == 1 else f"{planned_shapes} size(s) ({sweep.run_seeds} seeds each)"
            warnings.append(f"budget {budget:.3g}: {what} planned; an IsoFLOP parabola (`ehrfm fit` Approach 2) needs "
                            "at least 3 sizes per budget, so this budget gives none (more --sizes or --span-dex, or a larger budget)")
        if memory:
            heavy += [r for r in rows[n_rows:] if 16 * r["n_params_total"] > memory]
    if heavy:
        big = max(heavy, key=lambda r: r["n_params_total"])
        warnings.append(f"{len(heavy)} run(s) need more than this machine's {memory / 2**30:.3g} GiB of memory for weights, "
                        f"gradients and Adam state alone (16 bytes per parameter, before activations): the largest, "
                        f"{big['run_id']} ({big['n_params_total']:.3g} parameters), needs ~{16 * big['n_params_total'] / 2**30:.3g} GiB; "
                        "train them where a device holds that (several GPUs do not split one model here)")
    if not rows:
        if over_cap:
            raise UserError(f"no run could be planned for budget(s) {', '.join(f'{b:.3g}' for b in sweep.budgets)}: every "
                            f"size that trains one optimizer step trains over --max-epochs {sweep.max_epochs:g} epochs of the "
                            f"{sweep.train_tokens} unique training tokens; give smaller budgets, more data or a higher --max-epochs")
        raise UserError(f"no run could be planned for budget(s) {', '.join(f'{b:.3g}' for b in sweep.budgets)} (every target "
                        "size was too large to train one optimizer step on its budget): give larger budgets or a smaller --span-dex")
    if sweep.schedule == "wsd":
        rows = _wsd_rows(sweep, base, rows, previous, runs)
    elif sweep.schedule != "cosine":
        raise UserError(f"--schedule must be one of {', '.join(SCHEDULES)} (got {sweep.schedule!r})")
    if len(rows) > MANY_RUNS:
        warnings.append(f"{len(rows)} runs planned ({len(sweep.budgets)} budget(s), {planned_points(rows)} (budget, shape) "
                        f"points, up to {max(point_seeds(sweep, r['steps']) for r in rows)} seeds each): more than "
                        f"{MANY_RUNS}, SLURM's default MaxArraySize; meant?")
    return rows, warnings


def planned_points(rows: list[dict]) -> int:
    """Distinct (budget, shape) points among plan rows (replicate seeds of one point count once)."""
    return len({(r["budget"], r["n_layer"], r["d_model"]) for r in rows})


MAX_RUN_SEEDS = 100  # replicate seeds per (budget, shape): more is a typo (100000 planned 200k runs without a word)
MANY_RUNS = 1000  # a plan with more runs is warned about: SLURM's default MaxArraySize is 1001
MAX_SHORT_RUN_SEEDS = 4  # a point of 1/4 of seed_steps or less gets 4: beyond that a budget is too small to fit anyway


def point_seeds(sweep: SweepConfig, steps: int) -> int:
    """Training seeds of a (budget, shape) point whose runs take `steps` optimizer steps (`seed_steps`, module docstring)."""
    if not sweep.seed_steps or steps >= sweep.seed_steps:
        return sweep.run_seeds
    return max(sweep.run_seeds, min(MAX_SHORT_RUN_SEEDS, math.ceil(sweep.seed_steps / max(steps, 1))))


def _plan_row(sweep: SweepConfig, budget: float, target: float, shape: ModelConfig, fpt: float, cfg: TrainConfig,
              steps: int, epochs: float) -> dict:
    """One plan.parquet row (a cosine run; _wsd_rows turns rows into trunks and branches); fpt: the shape's FLOPs per token."""
    from ehrfm.shapes import n_params, n_params_total

    return {
        "run_id": run_id_for(sweep.tokenizer_fingerprint, budget, cfg),
        "budget": float(budget),
        "target_n_params": float(target),
        "n_layer": shape.n_layer,
        "d_model": shape.d_model,
        "n_head": shape.n_head,
        "context": shape.context,
        "n_params": n_params(shape),
        "n_params_total": n_params_total(shape),
        "flops_per_token": float(fpt),
        "tokens": cfg.tokens,
        "flops": float(cfg.tokens * fpt),
        "steps": steps,
        "epochs": float(epochs),
        "seed": cfg.seed,
        "schedule": "cosine",
        "trunk_id": None,
        "branch_tokens": 0,
        "warmup_steps": None,
        "stable_checkpoints": [],
    }


def _ceil3(x: float) -> str:
    """The text of x rounded up to 3 significant digits: a budget of at least x."""
    e = math.floor(math.log10(x)) - 2
    return f"{math.ceil(x / 10**e) * 10**e:.3g}"


def _memory_bytes() -> int:
    """This machine's physical memory in bytes (0 when the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def _wsd_rows(sweep: SweepConfig, base: TrainConfig, rows: list[dict], previous: list[dict] | None = None,
              runs: Path | None = None) -> list[dict]:
    """Turn the plan's points into wsd trunks and branches.

    Turn the plan's points into wsd trunks and branches (module docstring); UserError when the
    plan cannot share trunks, saying why. `previous`: the sweep dir's earlier plan rows: the wsd
    runs of it that this plan still holds (same point, same recipe) keep their rows and ids, and a
    shape's new points past its longest kept run continue that run (`_keep_previous`; `runs`: the
    sweep's runs/ dir).
    """
    if base.schedule != "cosine" or base.trunk_dir or base.stable_checkpoints:
        raise UserError("set the schedule with --schedule wsd, not through --train-opt")
    base = dataclasses.replace(base, schedule="wsd")
    groups: dict[tuple[int, int, int, int], list[dict]] = {}
    for r in rows:  # one trunk per shape and training seed: a replicate shares nothing with another seed's runs
        groups.setdefault((r["n_layer"], r["d_model"], r["n_head"], r["seed"]), []).append(r)
    if not any(len(g) > 1 for g in groups.values()):
        raise UserError(
            f"--schedule wsd: no model shape serves more than one of the {len(sweep.budgets)} budget(s), so no trunk "
            "can be shared (give several budgets within the ladder's span of each other, or more --sizes / --span-dex)"
        )
    before = {_point(p): p for p in previous or [] if p.get("schedule") == "wsd"}
    out = []
    for group in groups.values():
        group.sort(key=lambda r: r["tokens"])
        kept, frontier = _keep_previous(sweep, base, group, before, runs)
        out += kept
        kept_points = {_point(k) for k in kept}
        new = [r for r in group if _point(r) not in kept_points]
        if frontier is not None:
            # a new point decaying after the frontier's decay start continues its stable phase from there
            f_start = _decay_start_tokens(frontier, base)
            longer = [r for r in new if _decay_start_tokens(r, base) > f_start]
            if longer:
                out += _trunk_with_branches(sweep, base, longer, int(frontier["warmup_steps"]), parent=frontier)
            new = [r for r in new if r not in longer]
        if new:  # no earlier run of this shape serves them: a trunk of their own
            out += _trunk_with_branches(sweep, base, new, warmup_steps_for(new[0]["steps"], base))
    key = {_point(r): i for i, r in enumerate(rows)}  # keep the plan's order
    return sorted(out, key=lambda r: key[_point(r)])


def _point(r: dict) -> tuple:
    """A plan row's point: (budget, n_layer, d_model, n_head, seed)."""
    return (float(r["budget"]), int(r["n_layer"]), int(r["d_model"]), int(r["n_head"]), int(r["seed"]))


def _decay_start_tokens(r: dict, base: TrainConfig) -> int:
    """Tokens before a wsd plan row's decay starts (its branch point, when it is a branch)."""
    return wsd_decay_start(int(r["steps"]), base) * base.batch_size * base.context


def _row_config(sweep: SweepConfig, base: TrainConfig, r: dict, warmup: int, stable: list[int]) -> TrainConfig:
    return dataclasses.replace(base, n_layer=r["n_layer"], d_model=r["d_model"], n_head=r["n_head"], tokens=r["tokens"],
                               warmup_steps=warmup, stable_checkpoints=stable, seed=r["seed"], **run_lr(sweep, r["d_model"]))


def _trunk_with_branches(sweep: SweepConfig, base: TrainConfig, members: list[dict], warmup: int,
                         parent: dict | None = None) -> list[dict]:
    """Plan rows for `members` (one shape and seed, sorted by tokens): the longest is the trunk, the others branch from it.

    Each branch leaves the trunk at its own decay start (the trunk keeps a stable checkpoint there).
    With `parent` (a run of the same shape planned earlier), the trunk itself continues the parent's
    stable phase from the parent's decay start (`ehrfm.train.branch_point`), with the parent's warmup.
    """
    step_tokens = base.batch_size * base.context
    trunk = members[-1]
    points = {}
    for r in members[:-1]:
        start = wsd_decay_start(r["steps"], base)
        if start < max(warmup, 1):
            raise UserError(
                f"--schedule wsd: the run of budget {r['budget']:.3g} (n_layer={r['n_layer']}, d_model={r['d_model']}) "
                f"would branch at step {start}, inside its trunk's {warmup}-step warmup (budget {trunk['budget']:.3g}); "
                "lower warmup_frac (--train-opt warmup_frac=...) or drop the small budget"
            )
        points[_point(r)] = start * step_tokens
    stable = sorted(set(points.values()))
    tcfg = _row_config(sweep, base, trunk, warmup, stable)
    parent_id = parent["run_id"] if parent is not None else None
    trunk_id = run_id_for(sweep.tokenizer_fingerprint, trunk["budget"], tcfg, trunk_id=parent_id)
    out = [{**trunk, "run_id": trunk_id, "schedule": "wsd", "trunk_id": parent_id or trunk_id,
            "branch_tokens": _decay_start_tokens(parent, base) if parent is not None else 0,
            "warmup_steps": warmup, "stable_checkpoints": stable}]
    for r in members[:-1]:
        bcfg = dataclasses.replace(tcfg, tokens=r["tokens"], stable_checkpoints=[])
        out.append({**r, "run_id": run_id_for(sweep.tokenizer_fingerprint, r["budget"], bcfg, trunk_id=trunk_id),
                    "schedule": "wsd", "trunk_id": trunk_id, "branch_tokens": points[_point(r)],
                    "warmup_steps": warmup, "stable_checkpoints": []})
    return out


def _keep_previous(sweep: SweepConfig, base: TrainConfig, group: list[dict], before: dict,
                   runs: Path | None) -> tuple[list[dict], dict | None]:
    """The rows of an earlier wsd plan that `group` (one shape and seed) keeps, and the run new points continue.

    A re-plan (more budgets, a bracketing rung, a second stage) must not re-group runs already
    planned: a new trunk would give the old runs new ids and train them again. A previous row is
    kept when this plan has its point with the same tokens, its id recomputed under this recipe is
    the same (so its warmup, checkpoints and trunk are), and its trunk is kept too. The frontier
    is the kept run that trains through the latest decay start (a trunk, or a run continuing one;
    every wsd run keeps a checkpoint there), unless that run finished without that checkpoint
    (trained by an ehrfm that did not keep it; `runs`: the sweep's runs/ dir): then None, and the
    new points get a trunk of their own.
    """
    candidates = {}
    for r in group:
        p = before.get(_point(r))
        if p is None or int(p["tokens"]) != int(r["tokens"]) or p.get("warmup_steps") is None:
            continue
        cfg = _row_config(sweep, base, r, int(p["warmup_steps"]), [int(t) for t in p.get("stable_checkpoints") or []])
        parent = p.get("trunk_id") if p.get("trunk_id") not in (None, p["run_id"]) else None
        if run_id_for(sweep.tokenizer_fingerprint, r["budget"], cfg, trunk_id=parent) == p["run_id"]:
            candidates[p["run_id"]] = {**r, **{k: p[k] for k in ("run_id", "schedule", "trunk_id", "branch_tokens")},
                                       "warmup_steps": int(p["warmup_steps"]),
                                       "stable_checkpoints": [int(t) for t in p.get("stable_checkpoints") or []]}
    while True:  # a kept run's trunk is kept too, or the run is not
        orphans = [i for i, k in candidates.items() if k["trunk_id"] not in candidates]
        if not orphans:
            break
        for i in orphans:
            del candidates[i]
    kept = sorted(candidates.values(), key=lambda k: k["tokens"])
    through = [k for k in kept if int(k["branch_tokens"] or 0) < _decay_start_tokens(k, base)]
    if not through:
        return kept, None
    frontier = max(through, key=lambda k: _decay_start_tokens(k, base))
    run = runs / frontier["run_id"] if runs is not None else None
    if run is not None and (run / "result.json").is_file() and \
            not stable_checkpoint_dir(run, _decay_start_tokens(frontier, base)).is_dir():
        return kept, None
    return kept, frontier


def planned_flops(rows: list[dict]) -> float:
    """FLOPs the sweep will really spend.

    Every run's, except that a wsd branch spends only its decay (its stable phase is its trunk's,
    counted once with the trunk).
    """
    return float(sum(r["flops_per_token"] * (r["tokens"] - int(r.get("branch_tokens") or 0)) for r in rows))


def write_plan_table(rows: list[dict], path: Path) -> None:
    """Write plan.parquet (plan_schema) atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=plan_schema())
    with atomic_file(path, "wb") as f:
        pq.write_table(table, f)


def plan_sweep(
    tokens_dir: str | Path,
    budgets: list[float],
    out: str | Path,
    sizes: int = 7,
    span_dex: float = 1.0,
    tokens_per_param: float = 20.0,
    context: int = 256,
    min_steps: int = 50,
    train: dict | None = None,
    schedule: str = "cosine",
    centre_from: str | Path | None = None,
    lr_ref_width: int = 0,
    bracket_from: str | Path | None = None,
    run_seeds: int | None = None,
    bracket_margin: int | None = None,
    seed_steps: int | None = None,
    max_epochs: float | None = None,
) -> tuple[SweepConfig, list[dict], list[str]]:
    """Plan an IsoFLOP sweep into `out` (sweep.json + plan.parquet); returns (config, rows, warnings).

    The IsoFLOP design of Hoffmann et al. (2022, Approach 2): per budget C, `sizes` model sizes on
    a shared log-spaced ladder around N*(C), each trained for D = floor(C / flops_per_token) tokens
    (module docstring). Re-planning an existing sweep dir is allowed (same ids for the same runs,
    runs/ kept) only with the same tokenizer; a sweep dir planned on another tokenizer is refused.

    Args:
        tokens_dir: the token dir every run trains on.
        budgets: compute budgets C in FLOPs (positive, finite; sorted, and budgets within 0.1% of each
            other, or of one already planned in `out`, planned once: `canonical_budgets`).
        out: the sweep dir to write.
        sizes: model sizes per budget.
        span_dex: the ladder spans N*(C) * 10^(+-span_dex) (decades).
        tokens_per_param: D/N at the ladder's centre N*(C) (`expected_optimum`).
        context: T, tokens per sequence of every run.
        min_steps: warn for runs with fewer optimizer steps.
        train: TrainConfig options shared by every run (not the per-run ones the planner sets).
        schedule: "cosine" (every run alone) or "wsd" (trunks and branches, Hägele et al. 2024).
        centre_from: a fit dir (or its fits.json) of this sweep's smaller budgets: the budgets above
            its largest are centred on its Approach 2 N_opt law (module docstring; `centre_law_from_fit`).
        lr_ref_width: > 0: each run's peak lr is lr * lr_ref_width / d_model (`run_lr`); 0: one lr.
        bracket_from: a results table of this sweep dir's runs: add a rung beyond the end of each
            ladder where its lowest loss sits, or lies fewer than `bracket_margin` sizes from
            (`bracket_rungs`). Rungs added earlier are kept.
        bracket_margin: sizes each ladder's lowest loss needs on each side (>= 1; capped at (sizes - 1) // 2).
        max_epochs: no run trains over this many epochs of the unique training tokens (finite, >= 0; 0, the
            default, no limit): ladders move up the rungs to keep under it, bracketing adds no rung over it.
        seed_steps: points of fewer optimizer steps get more seeds (`point_seeds`; 0: off).
        run_seeds: training seeds per (budget, shape), from the `seed` train option up (replicates;
            module docstring). Re-planning with more keeps the trained runs and adds the new seeds'.
            None (and bracket_margin, seed_steps, max_epochs None): the sweep dir's own value on a re-plan (a
            bracketing re-plan keeps its replicates), else 1 (2, 0, 0).

    Returns:
        (SweepConfig as saved in sweep.json, one dict per planned run as in plan.parquet, warnings).

    Raises:
        UserError: per-run train options given, non-positive or non-finite budgets, a budget too
            small for the smallest shape, --span-dex 0 with several sizes, a bad token dir, fit or
            results table, an `out` that is a file or a non-empty dir other than a sweep dir, a sweep
            dir planned on another tokenizer or recipe, or a wsd plan whose points cannot share trunks.
    """
    import ehrfm
    from ehrfm.tokens import TokenDir, data_differences, data_identity

    clash = sorted(set(train or {}) & PER_RUN_FIELDS)
    if clash:
        raise UserError(f"train options {', '.join(clash)} are set per run by the planner, not per sweep")
    if (train or {}).get("mlp_hidden", 0) != 0:
        # The family's MLP width follows d_model (ehrfm.shapes, 8/3 d): the planner counts each run's N and FLOPs
        # with it, so another width trained on 52-80% of its budget (and -1 failed every run at its start)
        raise UserError(f"train option mlp_hidden={train['mlp_hidden']!r}: a sweep's shapes take the family's SwiGLU width "
                        "(8/3 d_model, ehrfm.shapes), which its parameter and FLOP counts assume; train another width "
                        "with `ehrfm train --mlp-hidden`")
    if not int(lr_ref_width) >= 0:
        raise UserError(f"--lr-ref-width must be >= 0 (got {lr_ref_width})")
    out = Path(out)
    from ehrfm.io import check_not_inside_output

    check_not_inside_output(out)  # a sweep's runs inside a token or MEDS dir would change that data
    old = None
    if out.is_dir() and (out / SWEEP_JSON).is_file():
        old = SweepConfig.from_dict(read_json(out / SWEEP_JSON, "sweep config", expect=dict,
                                              hint="plan into a new --out, or remove the damaged sweep.json"), out / SWEEP_JSON)
    # options not given keep the sweep dir's own values on a re-plan (a --bracket-from re-plan keeps its seeds)
    run_seeds = (old.run_seeds if old else 1) if run_seeds is None else run_seeds
    bracket_margin = (old.bracket_margin if old else 2) if bracket_margin is None else bracket_margin
    seed_steps = (old.seed_steps if old else 0) if seed_steps is None else seed_steps
    max_epochs = (old.max_epochs if old else 0.0) if max_epochs is None else max_epochs
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, (int, float)) or not (max_epochs >= 0 and math.isfinite(max_epochs)):
        raise UserError(f"--max-epochs must be a finite number >= 0 (got {max_epochs!r}; 0: no limit)")
    if isinstance(bracket_margin, bool) or not isinstance(bracket_margin, int) or not bracket_margin >= 1:
        raise UserError(f"--bracket-margin must be >= 1 (got {bracket_margin}): 1 extends only a ladder whose lowest loss is at an end")
    old_budgets = old.budgets if old is not None and isinstance(old.budgets, list) else []
    budgets, merged = canonical_budgets(budgets, keep=[b for b in old_budgets if isinstance(b, (int, float))])
    td = TokenDir(tokens_dir)
    for name in ("train", "tuning"):
        # every run trains on train and measures its loss on tuning: without them each run failed at launch, and the
        # sweep recorded no data identity, so it never again checked which data its runs trained on
        if name not in td.splits:
            raise UserError(f"token dir {td.path} has no {name} split ({name}/tokens.npy; found: {', '.join(td.splits) or 'none'}): "
                            "a sweep trains on train and measures each run's loss on tuning; tokenize again (`ehrfm tokenize`)")
    train_tokens = td.split("train").n_tokens
    sweep = SweepConfig(
        tokens_dir=str(Path(tokens_dir).resolve()),
        budgets=list(budgets),
        sizes=int(sizes),
        span_dex=float(span_dex),
        tokens_per_param=float(tokens_per_param),
        context=int(context),
        min_steps=int(min_steps),
        train=pinned_train_options(train, old.train if old is not None else None),
        tokenizer_fingerprint=td.fingerprint,
        vocab_size=td.vocab_size,
        train_tokens=int(train_tokens),
        data=data_identity(td),
        schedule=str(schedule),
        lr_ref_width=int(lr_ref_width),
        run_seeds=run_seeds,
        bracket_margin=int(bracket_margin),
        max_epochs=float(max_epochs),
        seed_steps=seed_steps,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ehrfm_version=ehrfm.__version__,
    )
    if out.exists():
        if old is None:
            if not out.is_dir():
                raise UserError(f"output {out} exists and is not a directory; choose another --out")
            if any(p.name != PLAN_PARQUET for p in out.iterdir()):
                raise UserError(f"output {out} exists and is not a sweep dir (no {SWEEP_JSON}); choose another --out")
        else:
            if old.tokenizer_fingerprint != sweep.tokenizer_fingerprint:
                raise UserError(
                    f"sweep dir {out} was planned with another tokenizer (fingerprint {old.tokenizer_fingerprint[:12]}, "
                    f"{tokens_dir} has {sweep.tokenizer_fingerprint[:12]}); its runs are not comparable: use a new --out"
                )
            if old.data and (moved := data_differences(old.data, sweep.data)):
                raise UserError(f"sweep dir {out} was planned on other data than {tokens_dir} holds now ({'; '.join(moved)}): "
                                "its runs and the new ones would meet in one fit; use a new --out")
            changed = _recipe_changes(old, sweep)
            if changed:
                raise UserError(
                    f"sweep dir {out} was planned with another training recipe ({'; '.join(changed)}): its runs and "
                    "the new ones would meet in one fit; use a new --out (or plan again with the same options)")
            sweep.extra_rungs = {k: v for k, v in old.extra_rungs.items() if k in {budget_key(b) for b in budgets}}
    notes = list(merged)
    if centre_from is not None:
        sweep.centre_law, more = centre_law_from_fit(centre_from, sweep.budgets)
        notes += more
    previous = _previous_rows(out) if old is not None else None
    rows, warnings = make_plan(sweep, previous, out / "runs")
    if bracket_from is not None:
        sweep.extra_rungs, more = bracket_rungs(sweep, rows, bracket_from)
        notes += more
        rows, warnings = make_plan(sweep, previous, out / "runs")
    if old is not None:
        notes += _replan_notes(out, rows)
    warnings = notes + warnings
    sweep.planned_flops = planned_flops(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_plan_table(rows, out / PLAN_PARQUET)
    write_json(out / SWEEP_JSON, sweep)  # last: a dir holding only plan.parquet (interrupted here) may be planned again
    return sweep, rows, warnings


def _previous_rows(out: Path) -> list[dict] | None:
    """The rows of sweep dir `out`'s plan.parquet, None when it has none that reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(out / PLAN_PARQUET).to_pylist()
    except (OSError, pa.ArrowException, ValueError):
        return None  # no readable previous plan: planned afresh (and rewritten now)


def _replan_notes(out: Path, rows: list[dict]) -> list[str]:
    """A note when re-planning sweep dir `out` leaves runs of its previous plan out of the new one.

    Changing --budgets, --sizes, --span-dex or --tokens-per-param moves ladders: the runs no longer
    planned keep their run dirs, but `ehrfm sweep collect` lists them with budget null and
    `ehrfm fit` leaves them out. Saying so is the difference between a re-plan and a silent loss.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        before = pq.read_table(out / PLAN_PARQUET, columns=["run_id"]).column("run_id").to_pylist()
    except (OSError, pa.ArrowException, KeyError, ValueError):
        return []  # no readable previous plan: nothing to compare with (it is rewritten now)
    gone = sorted(set(before) - {r["run_id"] for r in rows})
    if not gone:
        return []
    started = [g for g in gone if (out / "runs" / str(g)).is_dir()]
    return [f"re-plan of {out}: {len(gone)} run(s) of its previous plan are not in this one ({len(started)} of them "
            "with a run dir, kept in runs/): `ehrfm sweep collect` lists them as unplanned and `ehrfm fit` leaves them "
            f"out; e.g. {gone[0]} (plan again with the previous budgets and options to keep them)"]


def _recipe_changes(old: SweepConfig, new: SweepConfig) -> list[str]:
    """How `new` trains runs differently from `old` ("lr 0.01 -> 0.03", ...).

    Compares the shared train options, context, schedule and lr scaling; budgets, the ladder and the
    options outside the run ids (NOT_IDENTITY: micro-batch, device, ...) may change on a re-plan.
    """
    defaults = {k: f.default for k, f in TrainConfig.__dataclass_fields__.items() if f.default is not dataclasses.MISSING}
    # A WSD-only option (decay_fraction, decay_shape) changes no run of a cosine sweep
    unused = WSD_FIELDS if old.schedule == new.schedule == "cosine" else frozenset()

    def value(train: dict, k: str):  # an option left out is its default: "--lr 0.001" written out is the same recipe
        return train.get(k, defaults.get(k, "default"))

    # Options that change only how a run is computed (micro_batch_size after an OOM kill, eval_batch_size,
    # device, compile: NOT_IDENTITY) are no other recipe: a re-plan takes them, run ids and results stay.
    changes = [f"{k} {old.train.get(k, 'default')} -> {new.train.get(k, 'default')}"
               for k in sorted(set(old.train) | set(new.train))
               if value(old.train, k) != value(new.train, k) and k not in NOT_IDENTITY and k not in unused]
    for k in ("context", "schedule", "lr_ref_width"):
        if getattr(old, k) != getattr(new, k):
            changes.append(f"{k} {getattr(old, k)} -> {getattr(new, k)}")
    return changes


def load_sweep(sweep_dir: str | Path) -> tuple[SweepConfig, list[dict]]:
    """SweepConfig and plan rows of a planned sweep dir (UserError if it is not one, or a file is damaged)."""
    from ehrfm.io import check_not_temporary, read_parquet

    check_not_temporary(sweep_dir, "sweep dir")
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SWEEP_JSON).is_file():
        raise UserError(f"{sweep_dir} is not a sweep dir: {SWEEP_JSON} not found (run `ehrfm sweep plan` first)")
    sweep = SweepConfig.from_dict(read_json(sweep_dir / SWEEP_JSON, "sweep config", expect=dict), sweep_dir / SWEEP_JSON)
    plan_path = sweep_dir / PLAN_PARQUET
    if not plan_path.is_file():
        raise UserError(f"{plan_path} not found (run `ehrfm sweep plan` again)")
    table = read_parquet(plan_path, "sweep plan", hint="run `ehrfm sweep plan` again with the same options to rewrite it")
    missing = [c for c in PLAN_COLUMNS if c not in table.column_names]
    if missing:
        raise UserError(f"{plan_path}: missing column(s) {', '.join(missing)} ({table.num_rows} rows)")
    wrong = [f"{f.name} ({table.schema.field(f.name).type}, not {f.type})" for f in plan_schema()
             if f.name in table.column_names and not _castable(table.schema.field(f.name).type, f.type)]
    if wrong:
        raise UserError(f"{plan_path}: column(s) of the wrong type: {', '.join(wrong)} ({table.num_rows} rows); "
                        "run `ehrfm sweep plan` again with the same options to rewrite it")
    return sweep, table.to_pylist()


def _castable(have, want) -> bool:
    """Whether a plan column's type matches the schema's.

    Does a plan column of type `have` hold what plan_schema's `want` means (ints as ints, any
    number as a float, strings as strings, lists of ints as lists)?
    """
    import pyarrow.types as pt

    if have == want or pt.is_null(have):
        return True
    if pt.is_floating(want):
        return pt.is_integer(have) or pt.is_floating(have)
    if pt.is_integer(want):
        return pt.is_integer(have)
    if pt.is_string(want):
        return pt.is_string(have) or pt.is_large_string(have)
    return pt.is_list(have) or pt.is_large_list(have)


def check_plan_rows(sweep: SweepConfig, rows: list[dict], sweep_dir: Path) -> None:
    """Refuse plan rows whose training config is not the one their run id was made from.

    Each row's id is recomputed (`run_id_for`) from what its job would train (`run_train_config`):
    a row edited by hand (its tokens doubled, another shape or seed) was trained under the planned
    id, recorded completed, and refused only at `ehrfm fit` as a results table whose budget and flops
    disagree. Also refused: a row whose flops are not tokens x flops_per_token.

    Raises:
        UserError: naming plan.parquet, how many rows and the first one's id; no patient data.
    """
    changed, flops = [], []
    for row in rows:
        rid = row["run_id"]
        trunk = row.get("trunk_id") if row.get("schedule") == "wsd" and row.get("trunk_id") != rid else None
        cfg = run_train_config(sweep, row, sweep_dir / "runs" / rid)
        if run_id_for(sweep.tokenizer_fingerprint, row["budget"], cfg, trunk_id=trunk) != rid:
            changed.append(rid)
        elif not math.isclose(float(row["flops"]), int(row["tokens"]) * float(row["flops_per_token"]), rel_tol=1e-9):
            flops.append(rid)
    plan = sweep_dir / PLAN_PARQUET
    if changed and len(changed) == len(rows) > 1:
        # Every row at once: the recipe they share (sweep.json's train) is the likelier edit, and re-planning with the
        # same options would adopt it (a hand-set lr 0.5 planned three new runs and orphaned the trained ones).
        raise UserError(f"{plan}: all {len(rows)} rows train another config than their run ids were planned with (first: "
                        f"{changed[0]}): the training recipe they share, in {sweep_dir / 'sweep.json'}, was edited since "
                        "planning (put it back as planned, or plan a new sweep into another --out: `ehrfm sweep plan` here "
                        "would take the edited recipe), or every row of plan.parquet was, or another ehrfm planned the "
                        "sweep (for these two, run `ehrfm sweep plan` again with the same options: trained runs keep their ids)")
    if changed:
        raise UserError(f"{plan}: {len(changed)} of {len(rows)} rows train another config than their run id was planned "
                        f"with (first: {changed[0]}; edited by hand, or planned by another ehrfm?): run `ehrfm sweep plan` "
                        "again with the same options to rewrite it (trained runs keep their ids)")
    if flops:
        raise UserError(f"{plan}: {len(flops)} of {len(rows)} rows have columns flops, tokens and flops_per_token that "
                        f"disagree (first: {flops[0]}): run `ehrfm sweep plan` again with the same options to rewrite it")


def check_tokenizer(sweep: SweepConfig, sweep_dir: Path) -> None:
    """Refuse to train a sweep on a token dir whose tokenizer changed since planning."""
    from ehrfm.tokens import TokenDir, data_differences, data_identity

    td = TokenDir(sweep.tokens_dir)
    if td.fingerprint != sweep.tokenizer_fingerprint:
        raise UserError(
            f"sweep dir {sweep_dir} was planned with tokenizer fingerprint {sweep.tokenizer_fingerprint[:12]} but "
            f"{sweep.tokens_dir}/tokenizer.json now has {td.fingerprint[:12]}; plan a new sweep for this token dir"
        )
    if sweep.data and (moved := data_differences(sweep.data, data_identity(td))):
        raise UserError(f"sweep dir {sweep_dir} was planned on other data than {sweep.tokens_dir} holds now "
                        f"({'; '.join(moved)}): its completed runs trained on the data as planned; plan a new sweep "
                        "(another --out) for this token dir")


def print_plan(sweep: SweepConfig, rows: list[dict], warnings: list[str], out: Path, file=sys.stdout) -> None:
    """Print a planned sweep: one table row per run, warnings on stderr, and a one-line summary.

    Args:
        sweep: the planned sweep's config (budgets, schedule, centre law, planned FLOPs).
        rows: one dict per run (run_id, budget, n_params, n_layer, d_model, n_head, tokens, steps,
            epochs, trunk_id for wsd).
        warnings: the planner's warnings.
        out: the sweep dir, named in the summary.
        file: where the table goes.
    """
    from ehrfm.io import text_table

    columns = [("run_id", "run_id", "<34"), ("budget", "budget", ">8.2g"), ("n_params", "N", ">9.3g"), ("n_layer", "L", ">3"),
               ("d_model", "d", ">5"), ("n_head", "H", ">3"), ("tokens", "D", ">10.3g"), ("steps", "steps", ">6"),
               ("epochs", "epochs", ">6.2f")] + ([("seed", "seed", ">4")] if len({r["seed"] for r in rows}) > 1 else [])
    for line in text_table(columns, rows):
        print(line, file=file)
    file.flush()
    for w in warnings:
        warn(w, "sweep plan")
    trunks = f", {len({r['trunk_id'] for r in rows})} wsd trunks" if sweep.schedule == "wsd" else ""
    if sweep.run_seeds > 1:
        trunks += f", {sweep.run_seeds} training seeds per (budget, shape)"
    seeds: dict[tuple, int] = {}
    for r in rows:
        point = (r["budget"], r["n_layer"], r["d_model"])
        seeds[point] = seeds.get(point, 0) + 1
    short = sum(k > sweep.run_seeds for k in seeds.values())
    if short:
        trunks += f", more seeds for {short} point(s) under {sweep.seed_steps} steps (--seed-steps)"
    law = sweep.centre_law
    if law and any(b > law["from_budget"] for b in sweep.budgets):
        n = sum(b > law["from_budget"] for b in sweep.budgets)
        trunks += (f"; {n} budget(s) above {law['from_budget']:.3g} centred on N_opt = {law['n_coef']:.3g} C^{law['a']:.3f} "
                   f"({law['n_count']} parameters) from {law['fits']}")
    summary(f"planned {len(rows)} runs over {len(sweep.budgets)} budgets{trunks} into {out}: "
            f"{sweep.planned_flops:.3g} FLOPs planned ({len(warnings)} warnings)")
