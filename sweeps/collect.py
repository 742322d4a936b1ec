"""`sweep status` (a table of run states) and `sweep collect` (SWEEP/results.parquet).

results.parquet is the contract between training and analysis (DESIGN.md, results table; its
schema is ehrfm.tables.results_schema):
    run_id str, budget float64 (null if unplanned), n_params int64, n_params_total int64,
    tokens int64, flops float64, loss float64 (held-out nats/token, null unless completed),
    loss_per_event float64 (held-out nats/event, ehrfm.train; null unless completed, or for runs
    made before it was recorded), status str, error str
plus unique_tokens (the train split's tokens: the data available to every run), epochs
(tokens / unique_tokens) and over_one_epoch (bool, epochs > 1: the run saw some training tokens
more than once; null when unique_tokens is unknown); eval_loss_se and loss_per_event_se (float64,
standard errors of loss and loss_per_event over the eval subjects, ehrfm.train.ratio_se: the eval
sample's own noise, shared by every run of the sweep; null unless completed, or for runs made
before they were recorded); for tracing the shape (n_layer, d_model, n_head, context), vocab_size, seed, wall_s,
tokens_per_s, job_id, schedule (cosine | wsd) and trunk_id (wsd: the run id of the trunk whose
stable phase the run shares, its own id for a trunk; null for cosine), and optional utility columns `auroc/<task>`, `auroc_se/<task>`, `auprc/<task>`, `auroc_boot/<task>` (with
`--labels`), and with `--zeroshot` (off by default: slow) `zeroshot_auroc/<task>`,
`zeroshot_auroc_se/<task>`, `zeroshot_undecided/<task>` (ehrfm.clinical.zeroshot.score_run_zeroshot;
each run's results are kept in SWEEP/zeroshot/<run_id>/<task>.json, so collecting again reuses
them and an interrupted collect resumes). Every planned run has a row: failed and diverged runs with their error, runs not
finished yet with their current state; only status == "completed" rows are fitted downstream.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from ehrfm.errors import UserError
from ehrfm.io import atomic_file, progress, summary, text_table, warn
from ehrfm.results import RunResult, Status
from sweeps.plan import check_plan_rows, load_sweep
from sweeps.state import RunState, check_tokens_dir, run_states, runs_dir

RESULTS_PARQUET = "results.parquet"


class _Run:
    """One run of a sweep: its plan row (empty when unplanned), state and result, for the tables."""

    def __init__(self, rid: str, st: RunState, planned: dict):
        self.rid, self.st, self.planned = rid, st, planned
        self.result = st.result or RunResult(st.state)
        self.completed = st.state == Status.COMPLETED

    @property
    def error(self) -> str | None:
        """Why the run failed, diverged or is unknown: a damaged or foreign file, else result.json's error.

        RunState.note (a damaged or foreign file), else result.json's error, else a note that it
        names none (a hand-made record).
        """
        if self.st.note:
            return self.st.note
        if self.result.error:
            return self.result.error
        if self.st.state in (Status.FAILED, Status.DIVERGED):
            return f"no reason recorded (runs/{self.rid}/result.json says {self.st.state} without an error)"
        return None

    def get(self, key: str):
        """The run's `key` from its result.json, else from its plan row."""
        v = getattr(self.result, key)
        return self.planned.get(key) if v is None else v


def _runs(sweep_dir: Path, check_plan: bool = False):
    """(SweepConfig, [_Run]) of every planned run, and every unplanned run dir under runs/.

    check_plan: refuse plan rows edited since planning, as launch does (sweeps.plan.check_plan_rows):
    a row whose budget was scaled after its run finished paired the run's loss with that budget.
    """
    sweep, plan = load_sweep(sweep_dir)
    if check_plan:
        check_plan_rows(sweep, plan, sweep_dir)
    by_id = {r["run_id"]: r for r in plan}
    states = run_states(sweep_dir, list(by_id), plan=plan, fingerprint=sweep.tokenizer_fingerprint, sweep=sweep)
    return sweep, [_Run(rid, st, by_id.get(rid, {})) for rid, st in states.items()]


def _warn_bad_files(runs: list[_Run]) -> None:
    """One stderr line per damaged or foreign file (the run is reported failed or unknown, the others as read)."""
    for r in runs:
        if r.st.bad_file:
            warn(f"{r.rid}: {r.st.state}: {r.st.note}", "sweep")


def status_rows(sweep_dir: str | Path) -> list[dict]:
    """One dict per run: run_id, budget, n_params, tokens, state, loss, job_id, error.

    Plan rows edited since planning are refused, as collect and launch refuse them (a budget x10 showed as planned).
    """
    _, runs = _runs(Path(sweep_dir), check_plan=True)
    return [
        {"run_id": r.rid, "budget": r.planned.get("budget"), "n_params": r.get("n_params"), "tokens": r.get("tokens"),
         "state": r.st.state, "loss": r.result.val_loss if r.completed else None, "job_id": r.st.job_id,
         "error": r.error}
        for r in runs
    ]


def print_status(rows: list[dict], file=sys.stdout) -> None:
    """Print the runs' status table, the error of each failed or diverged run, and a count per state.

    Args:
        rows: one dict per run with run_id, budget, n_params, tokens, state, loss, job_id, error.
        file: where the table and errors go (the counts go through ehrfm.io.summary).
    """
    columns = [("run_id", "run", "<34"), ("budget", "budget", ">8.2g"), ("n_params", "N", ">9.3g"), ("tokens", "D", ">10.3g"),
               ("state", "state", "<11"), ("loss", "loss", ">8.4f"), ("job_id", "job id", "<14")]
    for line in text_table(columns, rows):
        print(line, file=file)
    for r in rows:
        if r["state"] in (Status.FAILED, Status.DIVERGED, Status.UNKNOWN, Status.LOST, Status.INTERRUPTED, Status.QUEUED,
                          Status.UNPLANNED) and r["error"]:
            print(f"{r['run_id']}: {r['state']}: {r['error']}", file=file)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    summary(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))


def find_label_files(labels_dir: str | Path) -> dict[str, Path]:
    """{task: LABELS_DIR/<task>.parquet} (UserError when there are none)."""
    from ehrfm.clinical.utility import label_files

    return label_files(labels_dir)


def collect_sweep(
    sweep_dir: str | Path,
    labels_dir: str | Path | None = None,
    max_labels: int | None = 2000,
    seed: int = 0,
    zeroshot: bool = False,
    zeroshot_rollouts: int = 20,
    zeroshot_max_labels: int = 200,
    utility_boot: int = 400,
    pooling: str = "last",
    probe_best: int | None = None,
) -> Path:
    """Write SWEEP/results.parquet (see the module docstring); returns its path.

    Args:
        sweep_dir: the sweep dir (sweep.json, plan.parquet, runs/).
        labels_dir: a dir of <task>.parquet label files: each completed run is scored by a linear
            probe per task (auroc/<task>, auroc_se/<task>, auprc/<task> columns).
        max_labels: at most this many labels per split and task for the probes (seeded sample).
        seed: fixes the label samples, probes and rollouts.
        zeroshot: also score zero-shot rollouts per task (ETHOS, Renc et al. 2024; needs labels_dir).
        zeroshot_rollouts: rollouts per label.
        zeroshot_max_labels: at most this many labels per split and task for the rollouts.
        utility_boot: resamples of the held-out labels, shared by every run, behind the
            auroc_boot/<task> columns (0: none); `ehrfm fit` uses them for paired intervals.
        pooling: the probes' representation (ehrfm.clinical.model_io POOLINGS; default "last": a
            sweep's 100-3,000-label probes gave bit-identical utility across processes with it,
            while one CI run of last+mean gave a different utility law on a rerun); written to the
            table's metadata as `ehrfm.utility` (JSON: pooling, max_labels, seed), since probes made
            another way measure something else.
        probe_best: probe (and roll out, with zeroshot) only the runs of each budget's PROBE_BEST lowest-loss shapes (by mean loss over
            their seeds; `best_shapes`), None: every completed run. The utility law goes through each
            budget's loss-optimal run (`ehrfm fit`), so 1 would do for it; the loss -> AUROC link
            takes every probed run. The other runs' utility cells are null, and the table's metadata
            records it. Probing costs ~7 CPU-s per run on the default demo (3,000 labels per split).

    Returns:
        The path of results.parquet (one row per run, every status, ehrfm.tables.results_schema).

    Raises:
        UserError: a bad sweep dir, plan rows edited since planning (sweeps.plan.check_plan_rows),
            --zeroshot without labels_dir, or labels the runs cannot score.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ehrfm.tables import results_schema

    sweep_dir = Path(sweep_dir)
    sweep, runs = _runs(sweep_dir, check_plan=True)
    _warn_bad_files(runs)
    rows = [_results_row(sweep, sweep_dir, r) for r in runs]
    precisions = Counter(r["dtype"] for r in rows if r["status"] == Status.COMPLETED and r["dtype"])
    if len(precisions) > 1:  # dtype auto: float32 on CPU, bfloat16 on CUDA; one sweep launched on both mixes them
        warn(f"completed runs trained in {len(precisions)} precisions ({', '.join(f'{k} {v}' for k, v in sorted(precisions.items()))}; "
             "column dtype): their losses are not one recipe's, and one fit would mix them; retrain one group "
             "(`ehrfm sweep launch --retry-failed` after removing its run dirs) or fit each apart", "sweep collect")
    utility_columns: list[str] = []
    if (labels_dir is not None or zeroshot) and any(r["status"] == Status.COMPLETED for r in rows):
        check_tokens_dir(sweep.tokens_dir, sweep_dir)  # the probes read the histories there
    if probe_best is not None and (isinstance(probe_best, bool) or not isinstance(probe_best, int) or probe_best < 1):
        raise UserError(f"--probe-best must be a whole number >= 1 (got {probe_best!r}): shapes probed per budget")
    from ehrfm.clinical.configs import MIN_BOOTSTRAP

    if isinstance(utility_boot, bool) or not isinstance(utility_boot, int) or not (utility_boot == 0 or utility_boot >= MIN_BOOTSTRAP):
        # 3 resamples made `ehrfm fit`'s paired utility intervals cycle through 3 columns
        raise UserError(f"--utility-boot must be 0 (no intervals) or a whole number >= {MIN_BOOTSTRAP} (got {utility_boot!r}): "
                        "the fewest held-out resamples a 95% interval can come from")
    probed = None if probe_best is None else best_shapes(rows, probe_best)
    if labels_dir is not None:
        utility_columns = _add_utility(sweep, sweep_dir, rows, find_label_files(labels_dir), max_labels, seed, utility_boot,
                                       pooling, probed)
    if zeroshot:
        if labels_dir is None:
            raise UserError("--zeroshot needs --labels LABELS_DIR (the tasks to roll out)")
        utility_columns += _add_zeroshot(sweep, sweep_dir, rows, find_label_files(labels_dir), zeroshot_max_labels,
                                         zeroshot_rollouts, seed, probed)

    table = pa.Table.from_pylist(rows, schema=results_schema(utility_columns))
    if labels_dir is not None:
        utility = {"pooling": pooling, "max_labels": max_labels, "seed": seed, "probe_best": probe_best}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"ehrfm.utility": json.dumps(utility).encode()})
    out = sweep_dir / RESULTS_PARQUET
    with atomic_file(out, "wb") as f:
        pq.write_table(table, f)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    if busy := sum(counts.get(st, 0) for st in (Status.QUEUED, Status.RUNNING)):
        # `launch && collect && fit` after a launch that did not wait took a partial sweep without a word
        warn(f"{busy} run(s) are still queued or running: the table holds them as such and a fit leaves them out; "
             f"collect again once they end (`ehrfm sweep launch {sweep_dir} --wait` waits for them)", "sweep collect")
    summary(f"collected {len(rows)} runs into {out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            + (f"; utility columns {', '.join(utility_columns)}" if utility_columns else ""))
    return out


def _results_row(sweep, sweep_dir: Path, r: _Run) -> dict:
    """The results.parquet row of one run (ehrfm.tables.RESULTS_COLUMNS)."""
    result = r.result
    if r.completed and result.val_loss is None:
        raise UserError(f"{runs_dir(sweep_dir) / r.rid / 'result.json'}: status completed but no val_loss")
    tokens = r.get("tokens")
    return {
        "run_id": r.rid,
        "budget": r.planned.get("budget"),
        "n_params": r.get("n_params"),
        "n_params_total": r.get("n_params_total"),
        "tokens": tokens,
        "flops": r.get("flops"),
        # The data is finite: analysis corrects multi-epoch runs (Muennighoff et al. 2023)
        # and the recommender counts the epochs D_opt needs, from these two columns.
        "unique_tokens": sweep.train_tokens or None,
        "epochs": tokens / sweep.train_tokens if tokens is not None and sweep.train_tokens else None,
        "over_one_epoch": bool(tokens > sweep.train_tokens) if tokens is not None and sweep.train_tokens else None,
        "loss": float(result.val_loss) if r.completed else None,
        "loss_per_event": _float_or_none(result.loss_per_event) if r.completed else None,
        "eval_loss_se": _float_or_none(result.eval_loss_se) if r.completed else None,
        "loss_per_event_se": _float_or_none(result.loss_per_event_se) if r.completed else None,
        "status": str(r.st.state),
        "error": r.error,
        "n_layer": r.get("n_layer"),
        "d_model": r.get("d_model"),
        "n_head": r.get("n_head"),
        "context": r.get("context"),
        "vocab_size": sweep.vocab_size if result.vocab_size is None else result.vocab_size,
        "seed": r.get("seed"),
        "wall_s": result.wall_s,
        "tokens_per_s": result.tokens_per_s,
        "job_id": r.st.job_id,
        "schedule": r.planned.get("schedule") or result.schedule or "cosine",
        "trunk_id": r.planned.get("trunk_id") or result.trunk_id,
        "dtype": None if result.dtype is None else str(result.dtype),
        "device": None if result.device is None else str(result.device),
    }


def _float_or_none(x) -> float | None:
    return None if x is None else float(x)


def best_shapes(rows: list[dict], k: int) -> set[str]:
    """Run ids of each budget's `k` lowest-loss shapes (every seed of them), among completed planned runs.

    A shape is (n_layer, d_model, n_head); its loss the mean over its seeds, as `ehrfm fit` picks a
    budget's loss-optimal shape for the utility law (analysis.fit._utility_points).
    """
    by_shape: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["status"] == Status.COMPLETED and r.get("budget") is not None and r.get("loss") is not None:
            by_shape.setdefault((r["budget"], r["n_layer"], r["d_model"], r["n_head"]), []).append(r)
    ranked: dict[float, list[tuple[float, list[dict]]]] = {}
    for (budget, *_), runs in by_shape.items():
        ranked.setdefault(budget, []).append((sum(r["loss"] for r in runs) / len(runs), runs))
    return {r["run_id"] for shapes in ranked.values() for _, runs in sorted(shapes, key=lambda x: x[0])[:k] for r in runs}


def _add_scores(rows: list[dict], desc: str, score, only: set[str] | None = None) -> list[str]:
    """Add score columns to the completed rows.

    Set `score(row)`'s {column: value} (as floats) on each completed row (those in `only`, when
    given), and None for those columns on every other row; return the columns, sorted.
    """
    columns: list[str] = []
    completed = [r for r in rows if r["status"] == Status.COMPLETED and (only is None or r["run_id"] in only)]
    for r in progress(completed, desc=desc, unit="run"):
        for k, v in score(r).items():
            r[k] = None if v is None else [float(x) for x in v] if isinstance(v, list | tuple) else float(v)
            if k not in columns:
                columns.append(k)
    for r in rows:
        for c in columns:
            r.setdefault(c, None)
    return sorted(columns)


def _add_utility(sweep, sweep_dir: Path, rows: list[dict], labels: dict[str, Path], max_labels, seed,
                 utility_boot: int = 0, pooling: str = "last", only: set[str] | None = None) -> list[str]:
    """Score each completed run (those in `only`, when given) on the clinical tasks (ehrfm.clinical.utility.score_run)."""
    from ehrfm.tables import is_utility_column

    try:
        from ehrfm.clinical.utility import score_run, task_histories
    except ImportError as e:
        raise UserError(f"--labels needs ehrfm.clinical.utility.score_run, which is not available ({e})") from None
    if not any(r["status"] == Status.COMPLETED for r in rows):
        return _add_scores(rows, "utility", lambda r: {})
    # every run is scored on the same label sample: locate it once, not once per run
    histories = task_histories(sweep.tokens_dir, dict(labels), max_labels, seed)
    labels = _scorable_tasks(labels, histories)
    histories = {t: histories[t] for t in labels}
    if not labels:
        return _add_scores(rows, "utility", lambda r: {})
    return _add_scores(rows, "utility", _unless_checkpoint_damaged(sweep_dir, "probe", lambda r: {
        k: v for k, v in score_run(runs_dir(sweep_dir) / r["run_id"], sweep.tokens_dir, labels=dict(labels),
                                   max_labels=max_labels, seed=seed, histories=histories, n_boot=utility_boot,
                                   pooling=pooling).items()
        if is_utility_column(k)}), only)


def _unless_checkpoint_damaged(sweep_dir: Path, what: str, score):
    """`score(row)`, or {} with a warning when the run's checkpoint cannot be used (ehrfm.checkpoint.verify_checkpoint).

    A completed run's loss stands without its weights, but its probe needs them: one run's truncated or deleted
    checkpoint stopped `collect --labels` for the whole sweep (exit 2, with `ehrfm train`'s hint). Now that run gets
    no scores (the utility law says so for its budget) and every other run is scored. Other errors still stop it.
    """
    from ehrfm.checkpoint import CHECKPOINT_DIR, verify_checkpoint

    def scored(r: dict) -> dict:
        try:
            return score(r)
        except UserError:
            run_dir = runs_dir(sweep_dir) / r["run_id"]
            state, problem = verify_checkpoint(run_dir / CHECKPOINT_DIR)
            if state is not None and (run_dir / CHECKPOINT_DIR / "model_config.json").is_file():
                raise
            problem = problem or f"{run_dir / CHECKPOINT_DIR / 'model_config.json'} not found"
            warn(f"{r['run_id']}: no {what} scores: its checkpoint cannot be used ({problem}); its loss is collected; to "
                 f"score it, remove {run_dir} and run `ehrfm sweep launch {sweep_dir}` again", "sweep collect")
            return {}

    return scored


def _scorable_tasks(labels: dict[str, Path], histories: dict) -> dict[str, Path]:
    """The tasks a probe can be fitted and scored on; each other task is named once, with why, on stderr.

    A task without held_out labels, or whose train labels are all one class (a hospital without ICU
    data has no ICU admissions), would fail every run's scoring after hours of training; the sweep's
    other tasks are still scored, and the task has no columns in the table.
    """
    from ehrfm.clinical.common import require_two_classes

    scorable = {}
    for task, path in sorted(labels.items()):
        h = histories[task]
        try:
            if not (h.split == "held_out").any():
                raise UserError(f"task {task}: no labels in the held_out split")
            require_two_classes(h.y[h.split == "train"], "train", task)
        except UserError as e:
            warn(f"{e} ({path}): not scored", "sweep collect")
            continue
        scorable[task] = path
    return scorable


def _add_zeroshot(sweep, sweep_dir: Path, rows: list[dict], labels: dict[str, Path], max_labels: int, n_samples: int,
                  seed: int, only: set[str] | None = None) -> list[str]:
    """Zero-shot rollout AUROC of each completed run (those in `only`, when given) per task (ehrfm.clinical.zeroshot), cached per run."""
    from ehrfm.clinical.zeroshot import score_run_zeroshot

    labels = _zeroshot_tasks(sweep.tokens_dir, labels, max_labels, seed)
    if not labels:
        return _add_scores(rows, "zeroshot", lambda r: {})
    return _add_scores(rows, "zeroshot", _unless_checkpoint_damaged(sweep_dir, "zero-shot", lambda r: score_run_zeroshot(
        runs_dir(sweep_dir) / r["run_id"], sweep.tokens_dir, labels=dict(labels), max_labels=max_labels,
        n_samples=n_samples, seed=seed, cache_dir=sweep_dir / "zeroshot" / r["run_id"])), only)


def _zeroshot_tasks(tokens_dir, labels: dict[str, Path], max_labels: int, seed: int) -> dict[str, Path]:
    """The tasks zero-shot rollouts can score; each other task is named once, with why, on stderr.

    Rollouts follow the rules of one of ZEROSHOT_TASKS, need its tokens in the vocabulary (a hospital
    without ICU data has no ICU_ADMISSION token) and held_out labels. Any other task failed every run's
    rollouts after the probes had scored the whole sweep (or, not one of those tasks, got no columns
    without a word); as in _scorable_tasks, the other tasks are still rolled out.
    """
    from ehrfm.clinical.configs import ZEROSHOT_TASKS
    from ehrfm.clinical.utility import task_histories
    from ehrfm.clinical.zeroshot import rollout_spec
    from ehrfm.tokens import TokenDir

    td = TokenDir(tokens_dir)
    scorable = {}
    for task, path in sorted(labels.items()):
        why = None
        if task not in ZEROSHOT_TASKS:
            why = f"task {task}: zero-shot rollouts follow the rules of {', '.join(ZEROSHOT_TASKS)} only"
        else:
            try:
                rollout_spec(td, task)
            except UserError as e:
                why = str(e)
        if why is None and not (task_histories(tokens_dir, {task: path}, max_labels, seed)[task].split == "held_out").any():
            why = f"task {task}: no labels in the held_out split"
        if why is not None:
            warn(f"{why} ({path}): no zero-shot columns", "sweep collect")
            continue
        scorable[task] = path
    return scorable
