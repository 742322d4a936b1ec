"""A WSD sweep on the REAL local SLURM: branches depend on their trunk's job; a failed trunk fails its branch."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from test_sweep import TINY, ehrfm
from test_sweep_slurm import sinfo_answers

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM not installed (no `sbatch` on PATH): run `sudo bash scripts/slurm-local.sh install && sudo bash scripts/slurm-local.sh up`"),
]


def test_slurm_wsd_branches_wait_for_their_trunk(synth_tokens, tmp_path):
    from plan_edits import write_plan

    from sweeps.plan import plan_sweep

    p = sinfo_answers()  # a busy slurmctld's "Socket timed out" is not a cluster that is down
    assert p.returncode == 0 and p.stdout.strip(), f"SLURM is not running (sinfo: {p.stderr.strip()})"
    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, schedule="wsd", **TINY)
    table = pq.read_table(out / "plan.parquet")
    rows = table.to_pylist()
    trunks = [r for r in rows if r["trunk_id"] == r["run_id"]]
    assert len(rows) == 4 and len(trunks) == 2
    broken, healthy = trunks
    broken["n_head"] = 3  # its trainer refuses the shape: the trunk fails, and so must its branch
    write_plan(out, rows, table.schema)  # planned so: the ids planning would have given

    p = ehrfm("sweep", "launch", out, "--executor", "slurm", "--time", "20", "--cpus-per-task", "1", "--mem", "2G", "--wait")
    assert p.returncode == 1, p.stderr[-3000:]
    assert "4 SLURM runs finished: 2 completed, 2 failed" in p.stdout, p.stdout
    records = {r["run_id"]: json.loads((out / "jobs" / f"{r['run_id']}.json").read_text()) for r in rows}
    scripts = "\n".join(s.read_text() for s in (out / "submitit").rglob("*submission.sh"))
    for r in rows:
        result = json.loads((out / "runs" / r["run_id"] / "result.json").read_text())
        if r in trunks:
            assert "after_job" not in records[r["run_id"]]
            continue
        trunk_job = records[r["trunk_id"]]["job_id"]
        assert records[r["run_id"]]["after_job"] == trunk_job
        assert f"#SBATCH --dependency=afterany:{trunk_job}" in scripts
        if r["trunk_id"] == healthy["run_id"]:
            assert result["status"] == "completed" and result["branch_tokens"] == r["branch_tokens"], result
        else:
            assert result["status"] == "failed" and "trunk" in result["error"] and "n_head=3" in result["error"], result
    again = ehrfm("sweep", "launch", out, "--executor", "slurm")
    assert again.returncode == 0 and again.stdout.strip() == "submitted 0 jobs: nothing to run (2 completed, 2 failed (pass --retry-failed to resubmit failed runs))"
