"""`sweep plan --bracket-from RESULTS`: a size added beyond the end of a ladder where its lowest loss sits."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_sweep import ehrfm

from ehrfm.errors import UserError

OPTS = dict(sizes=3, span_dex=0.5, context=64, train={"batch_size": 8})


def results(path, rows, best):
    """A results table of `rows`, every run completed; the run `best[budget]` (an index in N order) has the lowest loss."""
    out = []
    for budget in {r["budget"] for r in rows}:
        ladder = sorted((r for r in rows if r["budget"] == budget), key=lambda r: r["n_params"])
        for i, r in enumerate(ladder):
            out.append({"run_id": r["run_id"], "budget": budget, "status": "completed", "loss": 2.0 + abs(i - best[budget]) * 0.1})
    pq.write_table(pa.Table.from_pylist(out), path)
    return path


def shapes(rows, budget):
    return sorted(((r["n_layer"], r["d_model"]) for r in rows if r["budget"] == budget), key=lambda s: (s[1], s[0]))


def test_bracketing_adds_a_rung_at_the_end_holding_the_lowest_loss(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    budgets = [1e10, 4e10, 1.6e11]
    _, rows, _ = plan_sweep(synth_tokens, budgets, out, **OPTS)
    ids = {r["run_id"] for r in rows}
    small, mid, large = (shapes(rows, b) for b in budgets)
    # 1e10: best at the largest size -> one rung above; 4e10: interior -> unchanged; 1.6e11: best at the smallest -> below.
    table = results(tmp_path / "r.parquet", rows, {1e10: 2, 4e10: 1, 1.6e11: 0})
    sweep, rows2, notes = plan_sweep(synth_tokens, budgets, out, bracket_from=table, **OPTS)
    assert sweep.extra_rungs == {"1e+10": [0, 1], "1.6e+11": [1, 0]}
    assert json.loads((out / "sweep.json").read_text())["extra_rungs"] == sweep.extra_rungs
    assert ids <= {r["run_id"] for r in rows2}  # every earlier run keeps its id
    assert shapes(rows2, 1e10)[:3] == small and len(shapes(rows2, 1e10)) == 4
    assert shapes(rows2, 4e10) == mid
    assert shapes(rows2, 1.6e11)[1:] == large and len(shapes(rows2, 1.6e11)) == 4
    assert sum("one rung added" in n for n in notes) == 2
    # A later re-plan without --bracket-from keeps the added sizes (their runs are not dropped).
    _, rows3, _ = plan_sweep(synth_tokens, budgets, out, **OPTS)
    assert {r["run_id"] for r in rows3} == {r["run_id"] for r in rows2}
    # Runs of the new rungs not finished yet: no further bracketing from the same table.
    sweep4, rows4, _ = plan_sweep(synth_tokens, budgets, out, bracket_from=table, **OPTS)
    assert sweep4.extra_rungs == sweep.extra_rungs


def test_bracketing_stops_at_the_familys_smallest_shape(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(synth_tokens, [1e10], out, **OPTS)
    assert shapes(rows, 1e10) == [(1, 16), (1, 32), (1, 48)]
    table = results(tmp_path / "r.parquet", rows, {1e10: 0})
    sweep, rows2, notes = plan_sweep(synth_tokens, [1e10], out, bracket_from=table, **OPTS)
    assert sweep.extra_rungs == {} and {r["run_id"] for r in rows2} == {r["run_id"] for r in rows}
    assert any("at the family's smallest shape (n_layer=1, d_model=16); there is no smaller model to add" in n for n in notes)


def test_bracket_from_a_bad_table_is_one_clear_error(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, [1e10], out, **OPTS)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"run_id": ["x"], "loss": [1.0]}), bad)
    with pytest.raises(UserError, match=r"bad\.parquet: no column status"):
        plan_sweep(synth_tokens, [1e10], out, bracket_from=bad, **OPTS)
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "1e10", "--sizes", "3", "--span-dex", "0.5",
              "--context", "64", "--batch-size", "8", "--out", out, "--bracket-from", tmp_path / "missing.parquet")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "missing.parquet" in p.stderr


# The demo's family and recipe (vocabulary 572, context 256, 5 sizes over +-0.6 decades at 60 tokens
# per parameter), planned without a token dir: only the ladder is under test.
DEMO_LIKE = dict(tokens_dir="unused", sizes=5, span_dex=0.6, tokens_per_param=60.0, vocab_size=572, context=256,
                 train={"batch_size": 8}, train_tokens=26_000_000)


def test_a_bracketing_rung_below_is_a_new_shape_not_one_that_snaps_to_the_end():
    """Before: at 1.5e12 the ladder's lowest rung (10^4.2) is (1, 32), and one rung below (10^3.9) snaps
    to (1, 32) again: bracketing below added nothing. Now it steps down to the next distinct shape."""
    from sweeps.plan import SweepConfig, make_plan

    plain, _ = make_plan(SweepConfig(budgets=[1.5e12], **DEMO_LIKE))
    below, _ = make_plan(SweepConfig(budgets=[1.5e12], extra_rungs={"1.5e+12": [1, 0]}, **DEMO_LIKE))
    assert shapes(below, 1.5e12) == [(1, 16)] + shapes(plain, 1.5e12)
    assert {r["run_id"] for r in plain} < {r["run_id"] for r in below}  # the other runs keep their ids


def test_a_ladder_end_that_snaps_onto_its_neighbour_steps_out_to_the_next_shape():
    """Before: at 1e12 the demo-like ladder's lowest rung (10^3.9) snapped to (1, 32), as did 10^4.2, so
    the ladder had 4 shapes over 0.9 decades of N and its parabola's curvature no interval. Now the
    end steps out to (1, 16), and the other runs keep their ids."""
    from sweeps.plan import SweepConfig, make_plan

    rows, warnings = make_plan(SweepConfig(budgets=[1e12], **DEMO_LIKE))
    assert shapes(rows, 1e12) == [(1, 16), (1, 32), (1, 48), (2, 48), (2, 64)]
    assert not any("distinct shapes" in w for w in warnings)
    # The end that cannot step (the family's smallest shape) stays: 1e11's rungs 10^3.3 and 10^3.6 are both (1, 16).
    rows, warnings = make_plan(SweepConfig(budgets=[1e11], **DEMO_LIKE))
    assert shapes(rows, 1e11) == [(1, 16), (1, 32), (1, 48)]
    assert any("5 sizes asked, 3 distinct shapes" in w for w in warnings)


@pytest.mark.parametrize("sizes,span_dex", [(2, 0.1), (3, 0.2), (5, 0.6), (9, 0.6), (4, 0.15)])
def test_a_ladder_end_that_repeats_the_shape_inside_it_has_no_new_shape_one_rung_out(sizes, span_dex):
    """Over budgets from 1e10 to 1e19 FLOPs: a ladder never has more distinct shapes than asked, and an
    end that repeats the shape inside it is one whose next rung out is no new shape it could train:
    below, the same shape (the family's smallest among them); above (in a ladder short of shapes), the
    same shape or one that cannot train one optimizer step."""
    from ehrfm.shapes import flops_per_token, shape_for_params
    from sweeps.plan import SweepConfig, make_plan, shared_ladder

    opts = dict(DEMO_LIKE, sizes=sizes, span_dex=span_dex)
    rung = 10 ** (2 * span_dex / (sizes - 1))
    step_tokens = 8 * 256

    def shape(n):
        s = shape_for_params(max(n, 1.0), 572, 256)
        return s.n_layer, s.d_model

    def trains(n, budget):  # one optimizer step of the shape n snaps to, as make_plan requires
        return n <= budget / (6 * step_tokens) and budget // flops_per_token(shape_for_params(max(n, 1.0), 572, 256)) >= step_tokens

    stepped = 0
    for budget in [10 ** (10 + i / 4) for i in range(37)]:
        sweep = SweepConfig(budgets=[budget], **opts)
        targets = shared_ladder(sweep, step_tokens)[budget]
        rows, _ = make_plan(sweep)
        distinct = shapes(rows, budget)
        assert len(distinct) <= sizes, (budget, distinct)
        stepped += len(targets) > sizes
        if shape(targets[0]) == shape(targets[1]):
            assert shape(targets[0] / rung) == shape(targets[0]), (budget, distinct)
        if shape(targets[-1]) == shape(targets[-2]) and len(distinct) < sizes:
            above = targets[-1] * rung
            assert shape(above) == shape(targets[-1]) or not trains(above, budget), (budget, distinct)
    assert stepped > 0  # the rule was exercised


@pytest.mark.parametrize("span_dex", [1e-17, 1e-6])
def test_a_ladder_of_tiny_rungs_plans_at_once_as_one_shape(span_dex):
    """A span_dex so small that every rung is one model (1e-17: neighbouring rung indices are equal in
    floats) plans that one shape at once; its stepped end does not walk the rungs. Bracketing such a
    ladder walks a bounded number of rungs and adds no shape it cannot find."""
    import time

    from sweeps.plan import SweepConfig, make_plan

    t0 = time.perf_counter()
    rows, warnings = make_plan(SweepConfig(budgets=[1e12], **dict(DEMO_LIKE, sizes=2, span_dex=span_dex)))
    assert len(shapes(rows, 1e12)) == 1 and any("2 sizes asked, 1 distinct shapes" in w for w in warnings)
    rows, _ = make_plan(SweepConfig(budgets=[1e12], extra_rungs={"1e+12": [1, 1]}, **dict(DEMO_LIKE, sizes=2, span_dex=span_dex)))
    assert 1 <= len(shapes(rows, 1e12)) <= 3
    assert time.perf_counter() - t0 < 60  # (a hang, not a speed: unbounded, 1e-17 never ended)


def test_a_ladder_end_does_not_step_onto_a_shape_too_large_for_one_step():
    """At 1.23e10 FLOPs with a 7,409-code vocabulary and 32 x 256-token steps, the rung above the
    ladder's top is (1, 32), whose head costs more than the budget buys in one step: the end stays
    (a first version stepped onto it and make_plan then dropped it with a warning)."""
    from sweeps.plan import SweepConfig, make_plan

    cfg = SweepConfig(tokens_dir="unused", budgets=[1.23e10], sizes=5, span_dex=0.067, tokens_per_param=3.7,
                      vocab_size=7409, context=256, train={"batch_size": 32})
    rows, warnings = make_plan(cfg)
    assert shapes(rows, 1.23e10) == [(1, 16)]
    assert not any("dropped" in w for w in warnings), warnings


def test_a_lowest_loss_next_to_an_end_gets_a_rung_beyond_it(synth_tokens, tmp_path):
    """--bracket-margin (default 2): a 5-size ladder's minimum needs 2 sizes on each side, else its
    parabola's minimum rests on one run; 1 extends only a minimum at an end (the rule before)."""
    from sweeps.plan import plan_sweep

    opts = dict(OPTS, sizes=5, span_dex=0.6)
    budgets = [4e11, 1.6e12, 6.4e12]
    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(synth_tokens, budgets, out, **opts)
    assert all(len(shapes(rows, b)) == 5 for b in budgets)
    table = results(tmp_path / "r.parquet", rows, {4e11: 1, 1.6e12: 2, 6.4e12: 3})
    one = tmp_path / "one"
    plan_sweep(synth_tokens, budgets, one, **opts)
    sweep1, _, notes1 = plan_sweep(synth_tokens, budgets, one, bracket_from=table, bracket_margin=1, **opts)
    assert sweep1.extra_rungs == {} and not any("one rung added" in n for n in notes1)

    sweep, rows2, notes = plan_sweep(synth_tokens, budgets, out, bracket_from=table, **opts)
    assert sweep.bracket_margin == 2
    assert sweep.extra_rungs == {"4e+11": [1, 0], "6.4e+12": [0, 1]}
    assert shapes(rows2, 4e11)[1:] == shapes(rows, 4e11) and shapes(rows2, 1.6e12) == shapes(rows, 1.6e12)
    assert shapes(rows2, 6.4e12)[:5] == shapes(rows, 6.4e12) and len(shapes(rows2, 6.4e12)) == 6
    assert any("budget 4e+11: its lowest loss is 1 size(s) from its smallest" in n and "2 needed on each side" in n
               and "one rung added below" in n for n in notes)
    assert any("budget 6.4e+12: its lowest loss is 1 size(s) from its largest" in n for n in notes)
    with pytest.raises(UserError, match="--bracket-margin must be >= 1"):
        plan_sweep(synth_tokens, budgets, tmp_path / "zero", bracket_margin=0, **opts)


def test_a_three_size_ladder_needs_one_size_each_side_whatever_the_margin(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(synth_tokens, [4e10], out, **OPTS)
    table = results(tmp_path / "r.parquet", rows, {4e10: 1})
    sweep, _, _ = plan_sweep(synth_tokens, [4e10], out, bracket_from=table, bracket_margin=3, **OPTS)
    assert sweep.extra_rungs == {}


def test_nothing_is_added_below_a_ladder_that_starts_at_the_familys_smallest_shape(synth_tokens, tmp_path):
    """Its lowest loss one size from an end that is already (1, 16): a note, no rung (the counter once grew each
    re-plan and the note said "one rung added below")."""
    from sweeps.plan import plan_sweep

    opts = dict(OPTS, sizes=5, span_dex=1.0)
    for budget in (4e10, 1e11, 2e11, 4e11, 8e11):  # the first whose 5-size ladder starts at (1, 16) with 5 shapes
        out = tmp_path / f"sweep{budget:g}"
        _, rows, _ = plan_sweep(synth_tokens, [budget], out, **opts)
        ladder = shapes(rows, budget)
        if ladder[0] == (1, 16) and len(ladder) >= 5:
            break
    assert ladder[0] == (1, 16) and len(ladder) >= 5, ladder
    table = results(tmp_path / "r.parquet", rows, {budget: 1})
    sweep, rows2, notes = plan_sweep(synth_tokens, [budget], out, bracket_from=table, **opts)
    assert sweep.extra_rungs == {} and {r["run_id"] for r in rows2} == {r["run_id"] for r in rows}
    assert any("its lowest loss is 1 size(s) from the family's smallest shape (n_layer=1, d_model=16); there is no "
               "smaller model to add" in n for n in notes)
    assert not any("one rung added" in n for n in notes)


def test_a_bracketing_replan_keeps_the_sweeps_own_seeds_and_margin(synth_tokens, tmp_path):
    """`sweep plan --bracket-from` without --seed-steps / --run-seeds / --bracket-margin re-plans with the sweep
    dir's own values: the extra seeds' runs stay planned (they were dropped, and `fit` then left them out)."""
    from sweeps.plan import plan_sweep

    budgets = [1e10, 4e10]
    out = tmp_path / "sweep"
    _, plain, _ = plan_sweep(synth_tokens, budgets, tmp_path / "plain", **OPTS)
    cut = max(r["steps"] for r in plain) + 1  # every point is short: each gets more seeds
    sweep, rows, _ = plan_sweep(synth_tokens, budgets, out, seed_steps=cut, run_seeds=2, bracket_margin=1, **OPTS)
    assert len(rows) > 2 * len(plain)
    table = results(tmp_path / "r.parquet", rows, {1e10: 1, 4e10: 1})
    again, rows2, notes = plan_sweep(synth_tokens, budgets, out, bracket_from=table, **OPTS)
    assert (again.seed_steps, again.run_seeds, again.bracket_margin) == (cut, 2, 1)
    assert {r["run_id"] for r in rows2} == {r["run_id"] for r in rows}
    assert not any("not in this one" in n for n in notes)
    # given, a value replaces the saved one (fewer seeds: the runs it leaves out are named)
    _, rows3, notes3 = plan_sweep(synth_tokens, budgets, out, seed_steps=0, run_seeds=1, **OPTS)
    assert {r["run_id"] for r in rows3} == {r["run_id"] for r in plain}
