"""`sweep plan --max-epochs E`: no planned run trains over E epochs of the unique training tokens.

A smaller model on the same budget sees more tokens (D = C / (6 N)), so the low end of a ladder, and a
bracketing rung below it, can cross into repeated data, off the one-epoch IsoFLOP curve the fits assume.
Seed 1 of the default demo planned its 6e12 ladder down to (1, 16) at 2.2 epochs (a flat two-budget fit
centred it low), and it was fitted. The test cohort (400 patients) has 247,893 unique training tokens.
"""

from __future__ import annotations

import json
import math

import pytest
from test_plan_bracket import OPTS, results, shapes
from test_sweep import ehrfm

from ehrfm.errors import UserError


def test_a_ladder_moves_up_the_rungs_to_stay_within_the_epoch_limit(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    _, free, _ = plan_sweep(synth_tokens, [3e10, 1e10], tmp_path / "free", **OPTS)
    assert shapes(free, 3e10) == [(1, 16), (1, 32), (1, 48)]
    assert max(r["epochs"] for r in free if r["budget"] == 3e10) == pytest.approx(1.86, abs=0.01)
    sweep, rows, warnings = plan_sweep(synth_tokens, [3e10, 1e10], tmp_path / "capped", max_epochs=1.0, **OPTS)
    assert sweep.max_epochs == 1.0
    assert shapes(rows, 3e10) == [(1, 32), (1, 48), (2, 64)] and max(r["epochs"] for r in rows) <= 1.0
    assert shapes(rows, 1e10) == shapes(free, 1e10)  # 0.62 epochs at its smallest: not moved
    (said,) = [w for w in warnings if "ladder moved up" in w]
    assert said.startswith("budget 3e+10: ladder moved up 1 rung(s) so that no run trains over --max-epochs 1 epochs "
                           "of the 247893 unique training tokens"), said
    # the rungs stay on the shared grid: the runs the two plans share keep their ids
    assert {r["run_id"] for r in rows if r["budget"] == 1e10} == {r["run_id"] for r in free if r["budget"] == 1e10}


def test_bracketing_adds_no_rung_below_over_the_limit(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    opts = dict(OPTS, span_dex=0.3, tokens_per_param=2.0, max_epochs=1.0)
    out = tmp_path / "sweep"
    _, rows, _ = plan_sweep(synth_tokens, [3e10], out, **opts)
    assert shapes(rows, 3e10) == [(1, 32), (1, 48), (2, 48)]  # (1, 16) would train 1.86 epochs
    table = results(tmp_path / "r.parquet", rows, {3e10: 0})
    sweep, rows2, notes = plan_sweep(synth_tokens, [3e10], out, bracket_from=table, **opts)
    assert sweep.extra_rungs == {} and {r["run_id"] for r in rows2} == {r["run_id"] for r in rows}
    (note,) = [n for n in notes if n.startswith("--bracket-from")]
    assert "budget 3e+10: its lowest loss is at its smallest size (n_layer=1, d_model=32; 1 needed on each side), but " \
           "no rung added below: the ladder's next rung below, (n_layer=1, d_model=16" in note \
           and "1.86 epochs of the 247893 unique training tokens, over --max-epochs 1" in note, note
    # a re-plan without the option keeps the sweep's own limit; a limit the user raises lets the rung in
    assert plan_sweep(synth_tokens, [3e10], out, **dict(opts, max_epochs=None))[0].max_epochs == 1.0
    sweep2, rows3, _ = plan_sweep(synth_tokens, [3e10], out, bracket_from=table, **dict(opts, max_epochs=2.0))
    assert sweep2.extra_rungs == {"3e+10": [1, 0]} and shapes(rows3, 3e10)[0] == (1, 16)
    assert json.loads((out / "sweep.json").read_text())["max_epochs"] == 2.0
    # lowered again, the rung kept in sweep.json is over the limit: dropped from the plan, and said
    _, rows4, warnings4 = plan_sweep(synth_tokens, [3e10], out, **dict(opts, max_epochs=1.0))
    assert shapes(rows4, 3e10) == shapes(rows, 3e10)
    assert any("(n_layer=1, d_model=16): dropped, D=" in w and "1.86 epochs" in w and "over --max-epochs 1" in w for w in warnings4)
    # without a limit (the default) the rung below is added, as before
    free = tmp_path / "free"
    _, rows5, _ = plan_sweep(synth_tokens, [3e10], free, **dict(opts, max_epochs=0))
    sweep6, _, _ = plan_sweep(synth_tokens, [3e10], free, bracket_from=results(tmp_path / "f.parquet", rows5, {3e10: 0}),
                              **dict(opts, max_epochs=None))
    assert sweep6.max_epochs == 0 and sweep6.extra_rungs == {"3e+10": [1, 0]}


def test_the_limit_never_refuses_a_rung_above_and_a_rung_too_large_is_not_recorded(synth_tokens, tmp_path):
    """A larger model sees fewer tokens than every run of its ladder: a rung above is added even where the ladder is
    over the limit. A rung above that no step of the budget can train was recorded in sweep.json and said "one rung
    added above" while the plan dropped it."""
    import dataclasses

    from sweeps.plan import _bracket_refusal, plan_sweep

    out = tmp_path / "big"
    sweep0, rows, _ = plan_sweep(synth_tokens, [3e12], out, **OPTS)
    assert min(r["epochs"] for r in rows) > 1.0  # planned without a limit: every run repeats data
    capped = dataclasses.replace(sweep0, max_epochs=1.0)
    assert _bracket_refusal(capped, 3e12, {}, 1) == ""  # above: never refused for epochs
    assert "over --max-epochs 1" in _bracket_refusal(capped, 3e12, {}, 0)
    sweep, rows2, notes = plan_sweep(synth_tokens, [3e12], out, bracket_from=results(tmp_path / "r.parquet", rows, {3e12: 2}),
                                     **OPTS)
    assert sweep.extra_rungs == {"3e+12": [0, 1]} and len(shapes(rows2, 3e12)) == 4
    assert any("one rung added above" in n for n in notes)

    tiny = tmp_path / "tiny"
    opts = dict(OPTS, tokens_per_param=0.001)
    _, rows, _ = plan_sweep(synth_tokens, [1e10], tiny, **opts)
    sweep, rows2, notes = plan_sweep(synth_tokens, [1e10], tiny, bracket_from=results(tmp_path / "t.parquet", rows, {1e10: 2}), **opts)
    assert sweep.extra_rungs == {} and {r["run_id"] for r in rows2} == {r["run_id"] for r in rows}
    (note,) = [n for n in notes if n.startswith("--bracket-from")]
    assert "no rung added above: no larger shape trains one optimizer step (512 tokens) on this budget" in note, note


def test_a_lowest_loss_at_the_smallest_shape_says_it_repeats_data(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    out = tmp_path / "low"
    _, rows, _ = plan_sweep(synth_tokens, [3e10], out, **OPTS)
    assert shapes(rows, 3e10)[0] == (1, 16)
    _, _, notes = plan_sweep(synth_tokens, [3e10], out, bracket_from=results(tmp_path / "l.parquet", rows, {3e10: 0}), **OPTS)
    assert any("there is no smaller model to add (its (1, 16) run trains 1.86 epochs of the 247893 unique training "
               "tokens: repeated data)" in n for n in notes), notes


def test_bad_epoch_limits_are_refused(synth_tokens, tmp_path):
    from sweeps.plan import SweepConfig, _epochs_text, plan_sweep

    for bad in (-1, math.inf, math.nan, "1", True):
        with pytest.raises(UserError, match=r"--max-epochs must be a finite number >= 0"):
            plan_sweep(synth_tokens, [3e10], tmp_path / "bad", max_epochs=bad, **OPTS)
    for text in ("inf", "-1", "x"):
        p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "3e10", "--out", tmp_path / "cli", "--max-epochs", text)
        assert p.returncode == 2 and "--max-epochs:" in p.stderr, p.stderr
    sweep, _, _ = plan_sweep(synth_tokens, [3e10], tmp_path / "ok", **OPTS)
    d = json.loads((tmp_path / "ok" / "sweep.json").read_text())
    assert d["max_epochs"] == 0.0
    del d["max_epochs"]  # a sweep planned before the setting: no limit
    assert SweepConfig.from_dict(d).max_epochs == 0.0
    for bad in ("2", None, -1, True, math.inf):
        with pytest.raises(UserError, match=r"sweep\.json is damaged: max_epochs is .*, not a finite number >= 0"):
            SweepConfig.from_dict({**d, "max_epochs": bad}, tmp_path / "sweep.json")
    assert (_epochs_text(1.0026, 1.0), _epochs_text(1.86, 1.0), _epochs_text(2.0, 1.0)) == ("1.003", "1.86", "2.00")


def test_the_demo_plans_within_one_epoch_on_its_cohort_and_without_a_limit_on_your_data(tmp_path):
    """`ehrfm demo`: max_epochs None is 1 on the synthetic cohort (sized for its largest budget) and no limit on your
    own data, whose size is what it is (its runs over 1 epoch are flagged); the reproduce commands carry it, the
    command line only when it is not that default, and a demo dir from before the setting is not resumed under it."""
    import dataclasses

    from ehrfm.app.demo import DemoConfig, _config_changes, _plan_commands

    synthetic, _ = DemoConfig().checked()
    assert synthetic.max_epochs == 1.0 and "--max-epochs" not in synthetic.command_line()
    assert all("--max-epochs 1 " in c for c in _plan_commands(synthetic, first_stage_law="fit-stage1") if c.startswith("ehrfm sweep plan"))
    (tmp_path / "meds" / "data").mkdir(parents=True)
    (tmp_path / "meds" / "metadata").mkdir()
    own, _ = DemoConfig(meds=str(tmp_path / "meds")).checked()
    assert own.max_epochs == 0.0 and "--max-epochs" not in own.command_line()
    assert not any("--max-epochs" in c for c in _plan_commands(own, first_stage_law="fit-stage1"))
    assert "--max-epochs 2" in DemoConfig(max_epochs=2).checked()[0].command_line()
    with pytest.raises(UserError, match=r"--max-epochs -1: must be a finite number >= 0"):
        DemoConfig(max_epochs=-1).checked()
    new = json.loads(json.dumps(dataclasses.asdict(synthetic)))
    hard, _ = _config_changes({k: v for k, v in new.items() if k != "max_epochs"}, new)
    assert hard == ["max_epochs 0.0 -> 1.0"]
