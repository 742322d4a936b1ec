"""Write a test's edited sweep plan as `ehrfm sweep plan` would have planned it.

`sweep launch` refuses a plan row whose training config is not the one its run id was made from
(sweeps.plan.check_plan_rows). A test that plans a run with an impossible shape (to see its trainer
fail) edits the row and gives it, and any wsd branch of it, the id planning would have given.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_plan(sweep_dir: Path, rows: list[dict], schema: pa.Schema) -> None:
    """Write `rows` (edited in place: run_id, and trunk_id for wsd rows, made anew) to SWEEP/plan.parquet."""
    from sweeps.plan import load_sweep, run_id_for, run_train_config

    sweep, _ = load_sweep(sweep_dir)
    renamed = {}

    def is_branch(r: dict) -> bool:
        return r.get("schedule") == "wsd" and r.get("trunk_id") not in (None, r["run_id"])

    for r in sorted(rows, key=is_branch):  # trunks first: a branch's id holds its trunk's
        old, branch = r["run_id"], is_branch(r)
        if branch:
            r["trunk_id"] = renamed.get(r["trunk_id"], r["trunk_id"])
        cfg = run_train_config(sweep, r, Path(sweep_dir) / "runs" / old)
        renamed[old] = r["run_id"] = run_id_for(sweep.tokenizer_fingerprint, r["budget"], cfg,
                                                trunk_id=r["trunk_id"] if branch else None)
        if r.get("schedule") == "wsd" and not branch:
            r["trunk_id"] = r["run_id"]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), Path(sweep_dir) / "plan.parquet")
