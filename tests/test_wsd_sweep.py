"""WSD sweeps: one shared ladder, one trunk per shape, branches at 80% of their tokens; launch order."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
from test_sweep import TINY, ehrfm, plan_rows

from ehrfm.errors import UserError

GRID = dict(budgets=[1e9, 2e9, 4e9, 8e9], sizes=3, context=64, train={"batch_size": 8})


def test_wsd_plan_shares_trunks_and_matches_cosine_points(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep, run_train_config

    cos, cos_rows, _ = plan_sweep(synth_tokens, out=tmp_path / "cos", **GRID)
    wsd, wsd_rows, _ = plan_sweep(synth_tokens, out=tmp_path / "wsd", schedule="wsd", **GRID)
    points = sorted((r["budget"], r["n_layer"], r["d_model"]) for r in cos_rows)
    assert points == sorted((r["budget"], r["n_layer"], r["d_model"]) for r in wsd_rows)
    assert len(points) >= 8
    assert cos.planned_flops == pytest.approx(sum(r["flops"] for r in cos_rows))
    assert json.loads((tmp_path / "cos" / "sweep.json").read_text())["planned_flops"] == cos.planned_flops
    assert json.loads((tmp_path / "wsd" / "sweep.json").read_text())["schedule"] == "wsd"

    step = 8 * 64
    shapes = {}
    for r in wsd_rows:
        shapes.setdefault((r["n_layer"], r["d_model"]), []).append(r)
    spent = 0.0
    for group in shapes.values():
        trunk = max(group, key=lambda r: r["budget"])
        assert [r for r in group if r["trunk_id"] == r["run_id"]] == [trunk]  # one trunk: the largest budget
        assert all(r["trunk_id"] == trunk["run_id"] for r in group)
        assert len({r["warmup_steps"] for r in group}) == 1
        # The shortest run's warmup (5% of its steps), so no branch warms up longer than its cosine twin.
        assert group[0]["warmup_steps"] == max(1, round(0.05 * min(r["steps"] for r in group)))
        branches = [r for r in group if r is not trunk]
        for b in branches:
            # Branch point: its own decay start, the last 20% of its steps (rounded), on a step boundary.
            assert b["branch_tokens"] == (b["steps"] - round(0.2 * b["steps"])) * step
            assert 0.7 * b["tokens"] < b["branch_tokens"] <= 0.9 * b["tokens"]  # ~80%, to a step
            cfg = run_train_config(wsd, b, tmp_path / "wsd" / "runs" / b["run_id"])
            assert cfg.schedule == "wsd" and cfg.trunk_dir == str(tmp_path / "wsd" / "runs" / trunk["run_id"])
        assert trunk["stable_checkpoints"] == sorted({b["branch_tokens"] for b in branches})
        spent += trunk["flops"] + sum(b["flops_per_token"] * (b["tokens"] - b["branch_tokens"]) for b in branches)
    assert wsd.planned_flops == pytest.approx(spent)
    assert any(len(g) == 4 for g in shapes.values())  # the shared ladder: one shape serves all four budgets
    assert wsd.planned_flops <= 0.75 * cos.planned_flops, (wsd.planned_flops, cos.planned_flops)
    # Cosine run ids do not depend on wsd-only options.
    again, rows2, _ = plan_sweep(synth_tokens, out=tmp_path / "cos2", **{**GRID, "train": {"batch_size": 8, "decay_fraction": 0.2}})
    assert {r["run_id"] for r in rows2} == {r["run_id"] for r in cos_rows}


def test_wsd_plan_refusals(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    with pytest.raises(UserError, match="no model shape serves more than one of the 1 budget"):
        plan_sweep(synth_tokens, out=tmp_path / "one", schedule="wsd", budgets=[4e9], sizes=3, context=64, train={"batch_size": 8})
    with pytest.raises(UserError, match=r"would branch at step \d+, inside its trunk's \d+-step warmup"):
        plan_sweep(synth_tokens, out=tmp_path / "warm", schedule="wsd", **{**GRID, "train": {"batch_size": 8, "warmup_frac": 0.9}})
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "4e9", "--sizes", "3", "--context", "64", "--out",
              tmp_path / "cli", "--schedule", "wsd")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "no trunk can be shared" in p.stderr
    assert not (tmp_path / "cli").exists()


def test_local_wsd_sweep_trunks_first_then_branches(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, schedule="wsd", **TINY)
    rows = plan_rows(out)
    branches = [r for r in rows if r["trunk_id"] != r["run_id"]]
    assert len(rows) == 4 and len(branches) == 2
    # One slot: a branch may only start once its trunk has ended, whatever the plan's order.
    p = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "1")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "4 completed" in p.stdout
    for b in branches:
        result = json.loads((out / "runs" / b["run_id"] / "result.json").read_text())
        assert result["trunk_id"] == b["trunk_id"] and result["branch_tokens"] == b["branch_tokens"]
        first = json.loads((out / "runs" / b["run_id"] / "metrics.jsonl").read_text().splitlines()[0])
        assert first["step"] == b["branch_tokens"] // (8 * 64) + 1  # trained its decay only
        trunk_end = json.loads((out / "jobs" / f"{b['trunk_id']}.json").read_text())["finished_at"]
        assert json.loads((out / "jobs" / f"{b['run_id']}.json").read_text())["started_at"] >= trunk_end
    c = ehrfm("sweep", "collect", out)
    assert c.returncode == 0, c.stderr
    table = {r["run_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert {r["schedule"] for r in table.values()} == {"wsd"}
    assert all(table[r["run_id"]]["trunk_id"] == r["trunk_id"] and table[r["run_id"]]["status"] == "completed" for r in rows)
    assert all(math.isfinite(r["loss"]) for r in table.values())
    again = ehrfm("sweep", "launch", out, "--executor", "local")
    assert again.stdout.strip() == "submitted 0 jobs: nothing to run (4 completed)"


def test_failed_trunk_fails_its_branches_with_the_reason(synth_tokens, tmp_path):
    from plan_edits import write_plan

    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, schedule="wsd", **TINY)
    table = pq.read_table(out / "plan.parquet")
    rows = table.to_pylist()
    broken = next(r for r in rows if r["trunk_id"] == r["run_id"] and r["stable_checkpoints"])
    broken["n_head"] = 3  # an impossible shape: the trunk's trainer refuses it
    write_plan(out, rows, table.schema)  # planned so: the ids planning would have given
    p = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "2")
    assert p.returncode == 1
    results = {r["run_id"]: json.loads((out / "runs" / r["run_id"] / "result.json").read_text()) for r in rows}
    assert results[broken["run_id"]]["status"] == "failed" and "not divisible by n_head=3" in results[broken["run_id"]]["error"]
    for r in rows:
        if r["trunk_id"] == broken["run_id"] and r is not broken:
            err = results[r["run_id"]]["error"]
            assert results[r["run_id"]]["status"] == "failed"
            assert f"trunk {out / 'runs' / broken['run_id']} failed before any checkpoint" in err and "n_head=3" in err
        elif r is not broken:
            assert results[r["run_id"]]["status"] == "completed"
    again = ehrfm("sweep", "launch", out, "--executor", "local")
    assert again.stdout.startswith("submitted 0 jobs")


def test_a_wsd_replan_keeps_its_runs_and_larger_budgets_continue_their_trunks(synth_tokens, tmp_path):
    """A second stage (more budgets planned into the same sweep dir) trains only what the first did not."""
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, first, _ = plan_sweep(synth_tokens, out=out, schedule="wsd", **{**GRID, "budgets": GRID["budgets"][:2]})
    again, rows, _ = plan_sweep(synth_tokens, out=out, schedule="wsd", **GRID)
    by_id = {r["run_id"]: r for r in rows}
    assert {r["run_id"] for r in first} <= set(by_id)  # nothing of the first stage is planned again
    for old in first:
        assert by_id[old["run_id"]] == {**old, "target_n_params": by_id[old["run_id"]]["target_n_params"]}
    step = 8 * 64
    continued = [r for r in rows if r["run_id"] not in {f["run_id"] for f in first}
                 and r["trunk_id"] in {f["run_id"] for f in first}]
    assert continued, "no larger budget continued a first-stage trunk"
    for r in continued:
        trunk = by_id[r["trunk_id"]]
        assert r["budget"] > trunk["budget"] and (r["n_layer"], r["d_model"]) == (trunk["n_layer"], trunk["d_model"])
        # it leaves its trunk at the trunk's own decay start, with the trunk's warmup
        assert r["branch_tokens"] == (trunk["steps"] - round(0.2 * trunk["steps"])) * step
        assert r["warmup_steps"] == trunk["warmup_steps"]
        for b in (x for x in rows if x["trunk_id"] == r["run_id"] and x is not r):  # its own branches
            assert b["branch_tokens"] in r["stable_checkpoints"] and b["branch_tokens"] > r["branch_tokens"]
    # The same FLOPs as planning all four budgets at once: every shape still trains its stable phase once.
    one_shot, _, _ = plan_sweep(synth_tokens, out=tmp_path / "once", schedule="wsd", **GRID)
    assert again.planned_flops == pytest.approx(one_shot.planned_flops, rel=1e-12)


def test_a_second_stage_trains_only_its_new_runs_and_continues_the_first_stages_trunks(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, schedule="wsd", **TINY)
    p = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "1")
    assert p.returncode == 0, p.stderr[-2000:]
    first = {r["run_id"]: (out / "runs" / r["run_id"] / "result.json").stat().st_mtime_ns for r in plan_rows(out)}
    plan_sweep(synth_tokens, out=out, schedule="wsd", **{**TINY, "budgets": [*TINY["budgets"], 6e9]})
    rows = plan_rows(out)
    new = [r for r in rows if r["run_id"] not in first]
    continued = [r for r in new if r["trunk_id"] in first]
    assert continued and len(new) < len(rows)
    p = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "1")
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"ran {len(new)} jobs" in p.stdout and f"{len(new)} completed" in p.stdout, p.stdout
    assert {rid: (out / "runs" / rid / "result.json").stat().st_mtime_ns for rid in first} == first  # not retrained
    for r in continued:
        result = json.loads((out / "runs" / r["run_id"] / "result.json").read_text())
        assert result["status"] == "completed" and result["branch_tokens"] == r["branch_tokens"] > 0
        first_step = json.loads((out / "runs" / r["run_id"] / "metrics.jsonl").read_text().splitlines()[0])["step"]
        assert first_step == r["branch_tokens"] // (8 * 64) + 1  # it trained only past its trunk's decay start


def test_slurm_arrays_of_a_trunk_chain_come_after_the_job_they_depend_on():
    """A run continuing a trunk is itself the trunk of its branches: each array is submitted after the job it waits for."""
    from types import SimpleNamespace

    from sweeps.launch import _slurm_waves

    trunk_of = {"ext": "root", "branch_of_ext": "ext", "branch_of_root": "root", "ext2": "ext"}
    jobs = [SimpleNamespace(run_id=r) for r in ("branch_of_ext", "ext2", "ext", "branch_of_root", "root", "alone")]
    waves = _slurm_waves(jobs, trunk_of)
    assert [sorted(j.run_id for j in wave) for wave, _ in waves][0] == ["alone", "root"]
    submitted = {"alone", "root"}
    for wave, trunk in waves[1:]:
        assert trunk in submitted  # its dependency's job id exists when this array is submitted
        submitted |= {j.run_id for j in wave}
    assert submitted == {j.run_id for j in jobs}
    # without the trunk in this launch (an earlier stage's, finished), the continuing run goes in the first array
    later = _slurm_waves([SimpleNamespace(run_id="ext"), SimpleNamespace(run_id="branch_of_ext")], trunk_of)
    assert [([j.run_id for j in w], t) for w, t in later] == [(["ext"], None), (["branch_of_ext"], "ext")]


def test_a_local_launch_that_leaves_a_branch_waiting_for_another_launchs_trunk_exits_1(synth_tokens, tmp_path):
    """A branch whose trunk runs under another launch is not submitted ("waiting for trunk"); the local launch ended
    exit 0 with it untrained, so `launch && collect && fit` went on without the point (a helper). Now exit 1, with a
    line saying to launch again once the trunk has ended; that launch trains it."""
    import os
    import subprocess
    import sys
    import time

    from ehrfm.fault_points import release, wait_held
    from sweeps.plan import plan_sweep

    out, holds = tmp_path / "sweep", tmp_path / "holds"
    plan_sweep(synth_tokens, out=out, schedule="wsd", **TINY)
    rows = plan_rows(out)
    trunk = next(r["run_id"] for r in rows if r["trunk_id"] == r["run_id"] and r["stable_checkpoints"])
    for r in rows:  # only this trunk holds, at its step 2
        if r["run_id"] != trunk:
            release(holds, r["run_id"], "step-2")
    first = subprocess.Popen([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local",
                              "--max-parallel", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, EHRFM_QUIET="1", EHRFM_HOLD_AT="step-2", EHRFM_HOLD_DIR=str(holds)))
    try:
        wait_held(holds, trunk, "step-2", is_alive=lambda: first.poll() is None)
        first.kill()  # the launcher SIGKILLed: its trunk's job trains on, an orphan; the branches' jobs are gone
        first.wait(timeout=60)
        second = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "1")
        assert second.returncode == 1, second.stderr[-2000:]
        assert "branch run(s) were not launched: their trunk runs under another launch" in second.stderr, second.stderr
        assert f"launch again once it has ended (`ehrfm sweep status {out}`)" in second.stderr
    finally:
        release(holds, trunk, "step-2")
    deadline = time.monotonic() + 600  # the orphan trunk ends (a hang guard, never what decides the test)
    while not (out / "runs" / trunk / "result.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    third = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "1")
    assert third.returncode == 0, third.stderr[-2000:]
    states = {r["run_id"]: json.loads((out / "runs" / r["run_id"] / "result.json").read_text())["status"] for r in rows}
    assert set(states.values()) == {"completed"}, states
