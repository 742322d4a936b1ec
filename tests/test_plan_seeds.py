"""`sweep plan --run-seeds K`: replicate training seeds per (budget, shape), really trained."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_sweep import TINY_CLI, ehrfm

from ehrfm.errors import UserError

OPTS = dict(sizes=3, span_dex=0.5, context=64, train={"batch_size": 8})


def points(rows):
    """{(budget, n_layer, d_model): sorted seeds}."""
    out: dict = {}
    for r in rows:
        out.setdefault((r["budget"], r["n_layer"], r["d_model"]), []).append(r["seed"])
    return {k: sorted(v) for k, v in out.items()}


def test_replicate_seeds_add_runs_and_keep_the_first_seeds_ids(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep, run_train_config

    budgets = [1e10, 4e10]
    one, rows1, _ = plan_sweep(synth_tokens, budgets, tmp_path / "one", **OPTS)
    out = tmp_path / "three"
    three, rows3, _ = plan_sweep(synth_tokens, budgets, out, run_seeds=3, **{**OPTS, "train": {"batch_size": 8, "seed": 5}})
    # Every point of the one-seed plan, trained with seeds 5, 6, 7.
    assert set(points(rows3)) == set(points(rows1)) and all(s == [5, 6, 7] for s in points(rows3).values())
    assert len(rows3) == 3 * len(rows1) and len({r["run_id"] for r in rows3}) == len(rows3)
    assert three.planned_flops == pytest.approx(3 * one.planned_flops)
    assert json.loads((out / "sweep.json").read_text())["run_seeds"] == 3
    assert pq.read_table(out / "plan.parquet").column("seed").to_pylist() == [r["seed"] for r in rows3]
    for r in rows3:  # each run trains with its own seed
        assert run_train_config(three, r, out / "runs" / r["run_id"]).seed == r["seed"]

    # Re-planning a one-seed sweep dir with 2 seeds keeps its runs (their ids) and adds the second seed's.
    _, rows2, notes = plan_sweep(synth_tokens, budgets, tmp_path / "one", run_seeds=2, **OPTS)
    first = [r for r in rows2 if r["seed"] == 0]
    assert {r["run_id"] for r in first} == {r["run_id"] for r in rows1} and len(rows2) == 2 * len(rows1)
    assert not any("not in this one" in n for n in notes)

    with pytest.raises(UserError, match=r"--run-seeds must be an integer in 1..100 \(got 0\)"):
        plan_sweep(synth_tokens, budgets, tmp_path / "zero", run_seeds=0, **OPTS)
    assert not (tmp_path / "zero").exists()  # nothing half-written


def test_wsd_replicates_get_one_trunk_per_shape_and_seed(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    budgets = [1e10, 2e10, 4e10]
    _, one, _ = plan_sweep(synth_tokens, budgets, tmp_path / "one", schedule="wsd", **OPTS)
    _, two, _ = plan_sweep(synth_tokens, budgets, tmp_path / "two", schedule="wsd", run_seeds=2, **OPTS)
    trunks = {r["run_id"]: r for r in two if r["trunk_id"] == r["run_id"]}
    assert len(trunks) == 2 * len({r["trunk_id"] for r in one})
    for r in two:  # a branch decays from its own seed's trunk of its shape
        t = trunks[r["trunk_id"]]
        assert (t["n_layer"], t["d_model"], t["seed"]) == (r["n_layer"], r["d_model"], r["seed"])
    assert {r["run_id"] for r in two if r["seed"] == 0} == {r["run_id"] for r in one}


def test_bracketing_judges_a_shape_by_its_replicates_mean(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(synth_tokens, [4e10], out, run_seeds=2, **OPTS)
    sizes = sorted({r["n_params"] for r in rows})
    # Seed 0 alone puts the lowest loss at the largest size (an unlucky 1.0); the means are lowest in the middle.
    loss = {(sizes[0], 0): 2.2, (sizes[0], 1): 2.2, (sizes[1], 0): 2.0, (sizes[1], 1): 2.0,
            (sizes[2], 0): 1.0, (sizes[2], 1): 3.4}
    table = tmp_path / "r.parquet"
    pq.write_table(pa.Table.from_pylist([{"run_id": r["run_id"], "status": "completed", "loss": loss[(r["n_params"], r["seed"])]}
                                         for r in rows]), table)
    sweep, rows2, notes = plan_sweep(synth_tokens, [4e10], out, run_seeds=2, bracket_from=table, **OPTS)
    assert sweep.extra_rungs == {} and {r["run_id"] for r in rows2} == {r["run_id"] for r in rows}
    # The same table with the second replicate also low at the largest size: its mean is lowest there.
    loss[(sizes[2], 1)] = 1.2
    pq.write_table(pa.Table.from_pylist([{"run_id": r["run_id"], "status": "completed", "loss": loss[(r["n_params"], r["seed"])]}
                                         for r in rows]), table)
    sweep, rows3, notes = plan_sweep(synth_tokens, [4e10], out, run_seeds=2, bracket_from=table, **OPTS)
    assert sweep.extra_rungs == {"4e+10": [0, 1]} and len(rows3) == len(rows) + 2  # one rung, both seeds
    assert any("one rung added above" in n for n in notes)


def test_replicates_really_train_with_their_seeds(synth_tokens, tmp_path):
    out = tmp_path / "sweep"
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, *TINY_CLI, "--run-seeds", "2", "--out", out)
    assert p.returncode == 0, p.stderr
    assert "2 training seeds per (budget, shape)" in p.stderr + p.stdout
    launched = ehrfm("sweep", "launch", out, "--executor", "local", "--max-parallel", "2")
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert ehrfm("sweep", "collect", out).returncode == 0
    results = pq.read_table(out / "results.parquet").to_pylist()
    assert len(results) == 8 and all(r["status"] == "completed" for r in results)
    by_point: dict = {}
    for r in results:
        by_point.setdefault((r["budget"], r["n_params"]), {})[r["seed"]] = r["loss"]
        saved = json.loads((out / "runs" / r["run_id"] / "config.json").read_text())
        assert saved["train"]["seed"] == r["seed"]
    assert all(set(v) == {0, 1} for v in by_point.values())
    assert all(v[0] != v[1] for v in by_point.values())  # another seed, another run


def test_seed_steps_give_the_short_points_more_seeds_and_keep_the_rest(synth_tokens, tmp_path):
    """--seed-steps S: a point of fewer than S optimizer steps gets ceil(S / steps) seeds (at most 4), the others
    run_seeds; the first seed's runs keep the ids of a plan without it, and with wsd the extra seeds get trunks of
    their own (nothing shared with seed 0's)."""
    from sweeps.plan import MAX_SHORT_RUN_SEEDS, plan_sweep

    budgets = [1e10, 2e10, 4e10]
    _, plain, _ = plan_sweep(synth_tokens, budgets, tmp_path / "plain", schedule="wsd", **OPTS)
    steps = {(r["budget"], r["n_layer"], r["d_model"]): r["steps"] for r in plain}
    cut = sorted(steps.values())[len(steps) // 2]  # about half the points are shorter
    sweep, rows, _ = plan_sweep(synth_tokens, budgets, tmp_path / "short", schedule="wsd", seed_steps=cut, **OPTS)
    assert sweep.seed_steps == cut and json.loads((tmp_path / "short" / "sweep.json").read_text())["seed_steps"] == cut
    got = points(rows)
    assert set(got) == set(steps)
    for point, n in steps.items():
        want = 1 if n >= cut else min(MAX_SHORT_RUN_SEEDS, -(-cut // n))
        assert got[point] == list(range(want)), (point, n, cut)
    assert any(len(v) > 1 for v in got.values()) and any(len(v) == 1 for v in got.values())
    assert {r["run_id"] for r in rows if r["seed"] == 0} == {r["run_id"] for r in plain}
    trunk_seed = {r["run_id"]: r["seed"] for r in rows if r["trunk_id"] == r["run_id"]}
    assert all(trunk_seed[r["trunk_id"]] == r["seed"] for r in rows)
    # run_seeds is the floor: 2 seeds everywhere, more where the runs are short
    _, rows2, _ = plan_sweep(synth_tokens, budgets, tmp_path / "two", run_seeds=2, seed_steps=cut, **OPTS)
    assert all(len(v) >= 2 for v in points(rows2).values())
    with pytest.raises(UserError, match=r"--seed-steps must be an integer >= 0 \(got -1\)"):
        plan_sweep(synth_tokens, budgets, tmp_path / "neg", seed_steps=-1, **OPTS)
