"""Sweep faults of an eighth break-it pass: records edited after a run finished (real runs, real files).

- A completed run's result.json whose loss was raised by hand above uniform guessing (or to 1e308)
  was collected as completed; `ehrfm fit` then dropped it. The trainer records such a loss as
  diverged (ehrfm.results.divergence_reason), so a "completed" record that its own rule calls a
  blow-up is damaged: the run is failed in `sweep status` and results.parquet, naming the file.
- plan.parquet whose budget was multiplied by 10 after the run finished was collected with the new
  budget beside the run's own flops; `ehrfm fit` refused the table. `sweep collect` now refuses the
  edited plan as `sweep launch` does (sweeps.plan.check_plan_rows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENV = {**os.environ, "EHRFM_QUIET": "1", "OMP_NUM_THREADS": "1"}


def ehrfm(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=600)


@pytest.fixture(scope="module")
def finished_sweep(tok, tmp_path_factory):
    """A one-run sweep trained to completion (read-only: tests copy it)."""
    from test_sweep import plan_rows

    from sweeps.plan import plan_sweep

    out = tmp_path_factory.mktemp("faults8") / "sweep"
    plan_sweep(tok, [2e8], out, sizes=1, context=64, min_steps=1, train={"batch_size": 4})
    p = ehrfm("sweep", "launch", out, "--executor", "local")
    assert p.returncode == 0, p.stderr
    (rid,) = [r["run_id"] for r in plan_rows(out)]
    return out, rid


def _copy(finished_sweep, tmp_path):
    import shutil

    src, rid = finished_sweep
    shutil.copytree(src, tmp_path / "sweep")
    return tmp_path / "sweep", rid


@pytest.mark.parametrize("scale", [3.0, 1e300])
def test_a_completed_record_whose_loss_the_trainer_would_call_diverged_is_not_collected(finished_sweep, tmp_path, scale):
    out, rid = _copy(finished_sweep, tmp_path)
    path = out / "runs" / rid / "result.json"
    result = json.loads(path.read_text())
    assert result["status"] == "completed" and result["val_loss"] < result["initial_train_loss"]
    # the record as the trainer wrote it is collected (so the test below fails for the edit alone)
    assert ehrfm("sweep", "collect", out).returncode == 0
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "completed" and row["loss"] == result["val_loss"]

    result["val_loss"] = result["val_loss"] * scale  # above ln V and above the initial loss
    path.write_text(json.dumps(result))
    p = ehrfm("sweep", "collect", out)
    assert p.returncode == 0, p.stderr
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    assert row["status"] == "failed" and row["loss"] is None
    assert str(path) in row["error"] and "is above uniform guessing ln V" in row["error"]
    assert "which the trainer records as diverged" in row["error"]
    assert f"{rid}: failed: run result {path} is damaged" in p.stderr
    s = ehrfm("sweep", "status", out)
    assert "1 runs: 1 failed" in s.stdout + s.stderr


def test_collect_refuses_a_plan_whose_budget_was_edited_after_the_run(finished_sweep, tmp_path):
    import pyarrow as pa

    out, rid = _copy(finished_sweep, tmp_path)
    table = pq.read_table(out / "plan.parquet")
    budget = table.column("budget").to_pylist()
    edited = table.set_column(table.schema.get_field_index("budget"), table.schema.field("budget"),
                              pa.array([b * 10 for b in budget], table.schema.field("budget").type))
    pq.write_table(edited, out / "plan.parquet")
    before = (out / "results.parquet").exists()
    p = ehrfm("sweep", "collect", out)
    assert p.returncode == 2, p.stderr
    assert f"{out / 'plan.parquet'}: 1 of 1 rows train another config than their run id was planned with (first: {rid}" in p.stderr
    assert (out / "results.parquet").exists() == before  # nothing written
