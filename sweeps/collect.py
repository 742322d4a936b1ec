"""`sweep status` (a table of run states) and `sweep collect` (SWEEP/results.parquet).

results.parquet is the contract between training and analysis (DESIGN.md, results table):
    run_id str, budget float64 (null if unplanned), n_params int64, n_params_total int64,
    tokens int64, flops float64, loss float64 (held-out nats/token, null unless completed),
    loss_per_event float64 (held-out nats/event, ehrfm.train; null unless completed, or for runs
    made before it was recorded), status str, error str
plus unique_tokens (the train split's tokens: the data available to every run) and epochs
(tokens / unique_tokens); for tracing the shape (n_layer, d_model, n_head, context), vocab_size, seed, wall_s,
tokens_per_s, job_id, schedule (cosine | wsd) and trunk_id (wsd: the run id of the trunk whose
stable phase the run shares, its own id for a trunk; null for cosine), and optional utility columns `auroc/<task>`, `auroc_se/<task>`, `auprc/<task>` (with
`--labels`), and with `--zeroshot` (off by default: slow) `zeroshot_auroc/<task>`,
`zeroshot_auroc_se/<task>`, `zeroshot_undecided/<task>` (ehrfm.clinical.zeroshot.score_run_zeroshot;
each run's results are kept in SWEEP/zeroshot/<run_id>/<task>.json, so collecting again reuses
them and an interrupted collect resumes). Every planned run has a row: failed and diverged runs with their error, runs not
finished yet with their current state; only status == "completed" rows are fitted downstream.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ehrfm.errors import UserError
from ehrfm.io import atomic_file, progress, summary
from sweeps.plan import load_sweep
from sweeps.state import run_states, runs_dir

RESULTS_PARQUET = "results.parquet"


def status_rows(sweep_dir: str | Path) -> list[dict]:
    """One dict per run: run_id, budget, n_params, tokens, state, loss, job_id, error."""
    sweep_dir = Path(sweep_dir)
    _, plan = load_sweep(sweep_dir)
    states = run_states(sweep_dir, [r["run_id"] for r in plan])
    by_id = {r["run_id"]: r for r in plan}
    rows = []
    for rid, st in states.items():
        planned = by_id.get(rid, {})
        result = st.result or {}
        rows.append(
            {
                "run_id": rid,
                "budget": planned.get("budget"),
                "n_params": result.get("n_params", planned.get("n_params")),
                "tokens": result.get("tokens", planned.get("tokens")),
                "state": st.state,
                "loss": result.get("val_loss") if st.state == "completed" else None,
                "job_id": st.job_id,
                "error": result.get("error"),
            }
        )
    return rows


def print_status(rows: list[dict], file=sys.stdout) -> None:
    def fmt(x, spec):
        return "-" if x is None else format(x, spec)

    print(f"{'run':<34} {'budget':>8} {'N':>9} {'D':>10} {'state':<11} {'loss':>8} {'job id':<14}", file=file)
    for r in rows:
        print(
            f"{r['run_id']:<34} {fmt(r['budget'], '>8.2g')} {fmt(r['n_params'], '>9.3g')} {fmt(r['tokens'], '>10.3g')} "
            f"{r['state']:<11} {fmt(r['loss'], '>8.4f')} {r['job_id'] or '-':<14}",
            file=file,
        )
    for r in rows:
        if r["state"] in ("failed", "diverged") and r["error"]:
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
) -> Path:
    """Write SWEEP/results.parquet (see the module docstring); returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sweep_dir = Path(sweep_dir)
    sweep, plan = load_sweep(sweep_dir)
    states = run_states(sweep_dir, [r["run_id"] for r in plan])
    by_id = {r["run_id"]: r for r in plan}
    rows = []
    for rid, st in states.items():
        planned = by_id.get(rid, {})
        result = st.result or {}
        completed = st.state == "completed"
        tokens = result.get("tokens", planned.get("tokens"))
        if completed and result.get("val_loss") is None:
            raise UserError(f"{runs_dir(sweep_dir) / rid / 'result.json'}: status completed but no val_loss")
        rows.append(
            {
                "run_id": rid,
                "budget": planned.get("budget"),
                "n_params": result.get("n_params", planned.get("n_params")),
                "n_params_total": result.get("n_params_total", planned.get("n_params_total")),
                "tokens": tokens,
                "flops": result.get("flops", planned.get("flops")),
                # The data is finite: analysis corrects multi-epoch runs (Muennighoff et al. 2023)
                # and the recommender counts the epochs D_opt needs, from these two columns.
                "unique_tokens": sweep.train_tokens or None,
                "epochs": tokens / sweep.train_tokens if tokens is not None and sweep.train_tokens else None,
                "loss": float(result["val_loss"]) if completed else None,
                "loss_per_event": _float_or_none(result.get("loss_per_event")) if completed else None,
                "status": st.state,
                "error": result.get("error"),
                "n_layer": result.get("n_layer", planned.get("n_layer")),
                "d_model": result.get("d_model", planned.get("d_model")),
                "n_head": result.get("n_head", planned.get("n_head")),
                "context": result.get("context", planned.get("context")),
                "vocab_size": result.get("vocab_size", sweep.vocab_size),
                "seed": result.get("seed", planned.get("seed")),
                "wall_s": result.get("wall_s"),
                "tokens_per_s": result.get("tokens_per_s"),
                "job_id": st.job_id,
                "schedule": planned.get("schedule") or result.get("schedule") or "cosine",
                "trunk_id": planned.get("trunk_id") or result.get("trunk_id"),
            }
        )
    utility_columns: list[str] = []
    if labels_dir is not None:
        utility_columns = _add_utility(sweep, sweep_dir, rows, find_label_files(labels_dir), max_labels, seed)
    if zeroshot:
        if labels_dir is None:
            raise UserError("--zeroshot needs --labels LABELS_DIR (the tasks to roll out)")
        utility_columns += _add_zeroshot(sweep, sweep_dir, rows, find_label_files(labels_dir), zeroshot_max_labels,
                                         zeroshot_rollouts, seed)

    schema = pa.schema(
        [
            ("run_id", pa.string()), ("budget", pa.float64()), ("n_params", pa.int64()), ("n_params_total", pa.int64()),
            ("tokens", pa.int64()), ("flops", pa.float64()), ("unique_tokens", pa.int64()), ("epochs", pa.float64()),
            ("loss", pa.float64()), ("loss_per_event", pa.float64()), ("status", pa.string()),
            ("error", pa.string()), ("n_layer", pa.int64()), ("d_model", pa.int64()), ("n_head", pa.int64()),
            ("context", pa.int64()), ("vocab_size", pa.int64()), ("seed", pa.int64()), ("wall_s", pa.float64()),
            ("tokens_per_s", pa.float64()), ("job_id", pa.string()), ("schedule", pa.string()), ("trunk_id", pa.string()),
        ]
        + [(c, pa.float64()) for c in utility_columns]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    out = sweep_dir / RESULTS_PARQUET
    with atomic_file(out, "wb") as f:
        pq.write_table(table, f)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary(f"collected {len(rows)} runs into {out}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
            + (f"; utility columns {', '.join(utility_columns)}" if utility_columns else ""))
    return out


def _float_or_none(x) -> float | None:
    return None if x is None else float(x)


def _add_utility(sweep, sweep_dir: Path, rows: list[dict], labels: dict[str, Path], max_labels, seed) -> list[str]:
    """Score each completed run on the clinical tasks (ehrfm.clinical.utility.score_run)."""
    try:
        from ehrfm.clinical.utility import score_run
    except ImportError as e:
        raise UserError(f"--labels needs ehrfm.clinical.utility.score_run, which is not available ({e})") from None
    columns: list[str] = []
    completed = [r for r in rows if r["status"] == "completed"]
    for r in progress(completed, desc="utility", unit="run"):
        scores = score_run(runs_dir(sweep_dir) / r["run_id"], sweep.tokens_dir, labels=dict(labels), max_labels=max_labels, seed=seed)
        for k, v in scores.items():
            if k.startswith(("auroc/", "auroc_se/", "auprc/")):
                r[k] = None if v is None else float(v)
                if k not in columns:
                    columns.append(k)
    for r in rows:
        for c in columns:
            r.setdefault(c, None)
    return sorted(columns)


def _add_zeroshot(sweep, sweep_dir: Path, rows: list[dict], labels: dict[str, Path], max_labels: int, n_samples: int,
                  seed: int) -> list[str]:
    """Zero-shot rollout AUROC of each completed run per task (ehrfm.clinical.zeroshot), cached per run."""
    from ehrfm.clinical.zeroshot import score_run_zeroshot

    columns: list[str] = []
    completed = [r for r in rows if r["status"] == "completed"]
    for r in progress(completed, desc="zeroshot", unit="run"):
        scores = score_run_zeroshot(runs_dir(sweep_dir) / r["run_id"], sweep.tokens_dir, labels=dict(labels),
                                    max_labels=max_labels, n_samples=n_samples, seed=seed,
                                    cache_dir=sweep_dir / "zeroshot" / r["run_id"])
        for k, v in scores.items():
            r[k] = None if v is None else float(v)
            if k not in columns:
                columns.append(k)
    for r in rows:
        for c in columns:
            r.setdefault(c, None)
    return sorted(columns)
