"""The demo report says why each missed target was missed, from the run's own figures (issue 13)."""

from __future__ import annotations

import polars as pl
import pytest

from ehrfm.app.demo import DemoConfig, _why_missed


def _budgets():
    # two used budgets: residuals of SD 0.02, parabolas of curvature 0.08 over ladders 2 ln-units wide
    return [dict(budget=b, used=True, residuals=[0.02, -0.02, 0.02, -0.02], curvature=0.08, log_n_range=[9.0, 11.0])
            for b in (1e12, 4e12)] + [dict(budget=1.6e13, used=False, residuals=[], curvature=float("nan"), log_n_range=[])]


def _results():
    rows = []
    for b, (a_best, a_other) in ((1e12, (0.70, 0.60)), (4e12, (0.72, 0.65))):
        rows += [dict(budget=b, loss=1.0, status="completed", wall_s=60.0, flops=b, eval_loss_se=0.02,
                      **{"auroc/mortality": a_best, "auroc_se/mortality": 0.01}),
                 dict(budget=b, loss=1.1, status="completed", wall_s=30.0, flops=b, eval_loss_se=0.02,
                      **{"auroc/mortality": a_other, "auroc_se/mortality": 0.01})]
    return pl.DataFrame(rows)


def test_why_the_fit_targets_missed_gives_the_scatter_against_the_parabolas_rise():
    lines = _why_missed({"Approach 2 a", "held-out budget L_min"}, _budgets(), _results(), DemoConfig())
    (why,) = [x for x in lines if x]
    rise = 0.08 / 2 * 1.0 ** 2  # curvature / 2 * (half the ladder's ln N span)^2
    assert why.startswith("Why Approach 2 a, held-out budget L_min missed:")
    assert "an SD of 0.020 nats" in why and "pooled over 2 budgets" in why and f"a median {rise:.3f} nats" in why
    assert f"the scatter is {0.02 / rise:.2f} of that rise" in why and "median 0.020 nats" in why


def test_why_the_auroc_and_wall_time_targets_missed_uses_the_loss_optimal_runs_and_run_time():
    lines = [x for x in _why_missed({"AUROC rises with compute", "wall time"}, _budgets(), _results(), DemoConfig()) if x]
    assert len(lines) == 2
    # the loss-optimal run of each budget: AUROC 0.70 and 0.72 (not the other runs' 0.60, 0.65)
    assert f"mortality 0.020 vs +-{1.96 * 0.01:.3f}" in lines[0]
    assert "4 runs trained for 3.0 min of run time" in lines[1] and "44,000 patients" in lines[1]


def test_nothing_missed_says_nothing():
    assert _why_missed(set(), _budgets(), _results(), DemoConfig()) == []


def test_reproduce_commands_centre_the_larger_budgets_only_on_a_first_stage_law_the_run_had():
    from ehrfm.app.demo import _plan_commands

    cfg = DemoConfig(budgets=[1e12, 2e12, 4e12, 8e12], first_stage=2)
    with_law = _plan_commands(cfg, first_stage_law="fit-stage1")
    assert sum("--centre-from fit-stage1" in c for c in with_law) >= 1
    assert with_law[-1].startswith("ehrfm sweep") and not any(c.startswith("#") for c in with_law)
    without = _plan_commands(cfg, first_stage_law=None)
    assert not any("--centre-from" in c for c in without)
    assert any(c.startswith("# the first stage's fit gave no law") for c in without)
    # the larger budgets are still planned, with every budget, as the run planned them
    assert any("--budgets 1e+12,2e+12,4e+12,8e+12" in c for c in without)


def test_headline_counts_the_parabolas_the_checks_table_counts():
    from types import SimpleNamespace

    from ehrfm.app.demo import _scaling_verdict

    nan = float("nan")
    budgets = [SimpleNamespace(used=True, curvature=0.3, interior=True, curvature_ci=[0.1, 0.5]),
               SimpleNamespace(used=True, curvature=0.2, interior=True, curvature_ci=[0.05, 0.4]),
               SimpleNamespace(used=True, curvature=0.07, interior=True, curvature_ci=[-0.02, 0.2]),  # positive, interval not
               SimpleNamespace(used=True, curvature=0.07, interior=True, curvature_ci=[nan, nan]),   # no interval made
               SimpleNamespace(used=True, curvature=0.1, interior=False, curvature_ci=[0.05, 0.2])]  # minimum at an end
    fits = {"inputs": {"bootstrap": 100},
            "approach2": {"a": 0.4, "a_ci": [0.3, 0.5], "b": 0.5, "b_ci": [0.4, 0.6], "loss_exponent": -0.03,
                          "loss_exponent_ci": [-0.04, -0.02], "budgets": [{"budget": 1e12 * 2**i, "used": True} for i in range(5)]}}
    fit = SimpleNamespace(approach2=SimpleNamespace(budgets=budgets, a=0.4, b=0.5), not_fitted={}, to_json=lambda: fits)
    ok, verdict = _scaling_verdict(fit)
    assert ok and "4 of 5 budgets have a parabola with positive curvature and an interior minimum" in verdict
    assert "2 of them with a curvature interval above 0" in verdict
    # A law `ehrfm recommend` does not trust is no real scaling result (the MIMIC-IV demo's headline said it was)
    fits["approach2"]["a_ci"] = [-0.52, 0.36]
    ok, verdict = _scaling_verdict(fit)
    assert not ok and "Approach 2's law is not trusted (as `ehrfm recommend` and the plots judge it): the interval of a" in verdict


def test_the_report_gives_cpu_time_and_load_beside_wall_time():
    import re
    import subprocess
    import sys

    from ehrfm.app.demo import _machine_load

    subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)  # a finished child counts
    text = _machine_load()
    m = re.fullmatch(r"(\d+\.\d) CPU min \(this process and its finished children\), load average (\d+\.\d|n/a) over the last 15 min", text)
    assert m, text
    assert float(m.group(1)) >= 0.0


def test_each_missed_check_gets_its_own_reason_from_its_own_figures():
    from ehrfm.app.demo import _own_reasons

    fits = {"approach2": {"a": 0.5, "a_ci": [None, None], "b": 0.4, "b_ci": [None, None], "budgets": [
        dict(budget=6e10, used=False, reason="concave parabola (no minimum: loss does not turn up at either end)",
             interior=False, curvature_ci=[None, None]),
        dict(budget=1.5e11, used=True, interior=True, curvature_ci=[None, None],
             interval_note="12 of 50 bootstrap replicates could not be fitted; an interval needs 90% of them"),
        dict(budget=3.8e11, used=True, interior=True, curvature_ci=[-0.01, 0.8])]},
        "not_fitted": {"holdout": "2 usable IsoFLOP budget(s): a held-out prediction needs >= 3"}}
    res = pl.DataFrame({"budget": [1.5e11] * 3 + [3.8e11] * 4, "status": ["completed"] * 7,
                        "n_params": [1e4, 2e4, 4e4, 1e4, 2e4, 4e4, 8e4], "loss": [1.12, 1.20, 1.36, 1.10, 1.03, 1.05, 1.59],
                        "epochs": [0.5] * 7})
    missed = {"IsoFLOP parabolas", "Approach 2 a", "Approach 2 b", "held-out budget L_min", "budgets"}
    lines = [x for x in _own_reasons(missed, fits, res, DemoConfig(budgets=[6e10, 1.5e11, 3.8e11])) if x]
    (parabolas,) = [x for x in lines if x.startswith("Why IsoFLOP parabolas missed: ")]
    assert "6e+10 FLOPs: left out of the laws: concave parabola" in parabolas
    assert "1.5e+11 FLOPs: its lowest run is the ladder's smallest size, so runs do not bracket the minimum; no curvature " \
           "interval (12 of 50 bootstrap replicates could not be fitted" in parabolas
    assert "3.8e+11 FLOPs: its curvature interval reaches -0.01 (not above 0)" in parabolas
    assert any(x.startswith("Why Approach 2 a, Approach 2 b missed: only 2 budget(s) gave a usable parabola") for x in lines)
    assert "Why held-out budget L_min missed: no held-out prediction was made: 2 usable IsoFLOP budget(s)" in "\n".join(lines)
    assert "Why budgets missed: the settings plan 3 budget(s) spanning 6.33x (`--budgets`)." in lines


def test_the_headline_of_a_run_without_a_law_reads_as_sentences():
    from ehrfm.app.demo import _headline_section

    (line,) = [x for x in _headline_section(None, "results table x: all 3 completed runs are one IsoFLOP budget; "
                                                  "a scaling law needs >= 2 budgets") if x and not x.startswith("#")]
    assert line == ("**No reliable scaling result from this run**: Approach 2 was not fitted: no IsoFLOP fit could be made. "
                    "results table x: all 3 completed runs are one IsoFLOP budget; a scaling law needs >= 2 budgets. "
                    "Widen the budgets or sizes (`--budgets`, `--sizes`) or use more patients."), line


def test_the_sweep_table_gives_both_parameter_counts_and_each_auroc_with_its_error():
    from ehrfm.app.demo import _sweep_section

    res = pl.DataFrame({"budget": [1e12], "run_id": ["C1e12_L1_D32"], "n_params_total": [60000.0], "n_params": [13000.0],
                        "n_layer": [1], "d_model": [32], "tokens": [2.0e6], "loss": [1.0123], "status": ["completed"],
                        "auroc/mortality": [0.917], "auroc_se/mortality": [0.041]})
    lines = _sweep_section(DemoConfig(budgets=[1e12, 2e12], max_labels=100), res, {"splits": {"train": {"tokens": 4.0e6}}},
                           "sweep/results.parquet", {})
    assert "| 1e+12 | `C1e12_L1_D32` | 6e+04 | 1.3e+04 | 1 x 32 | 2e+06 | 0.50 | 1.0123 | completed | 0.917 +- 0.041 |" in lines
    assert any("at most 100 labels per split and task" in x and "so their AUROC of the same run differs" in x for x in lines)
    # an SE the heads withheld (too few labels of a class) is marked, and the text says what the mark means;
    # a table without the SE column has nothing to withhold
    two = pl.concat([res, res.with_columns(pl.lit("C1e12_L1_D48").alias("run_id"), pl.lit(None, pl.Float64).alias("auroc_se/mortality"))])
    lines = _sweep_section(DemoConfig(budgets=[1e12, 2e12], max_labels=100), two, {"splits": {"train": {"tokens": 4.0e6}}},
                           "sweep/results.parquet", {})
    rows = [x for x in lines if x.startswith("| 1e+12 |")]
    assert rows[0].endswith("| 0.917 +- 0.041 |") and rows[1].endswith("| 0.917 (no SE) |"), rows
    assert any("(`no SE`: withheld, too few held-out labels or subjects of a class; no utility law is fitted" in x for x in lines)
    lines = _sweep_section(DemoConfig(budgets=[1e12, 2e12], max_labels=100), two.drop("auroc_se/mortality"),
                           {"splits": {"train": {"tokens": 4.0e6}}}, "sweep/results.parquet", {})
    assert [x for x in lines if x.startswith("| 1e+12 |")][1].endswith("| 1.0123 | completed | 0.917 |")


def test_replicate_seeds_are_a_demo_setting_in_its_command_plan_and_resume_check():
    """`ehrfm demo --run-seeds 2`: in the command line and the reproduce commands; a demo dir of one seed is not
    resumed with two (its sweep would change); a dir from before the setting resumes on one seed."""
    import dataclasses
    import json

    from ehrfm.app.demo import _config_changes, _plan_commands
    from ehrfm.errors import UserError

    cfg = DemoConfig(run_seeds=2)
    assert "--run-seeds 2" in cfg.command_line()
    assert all("--run-seeds 2" in c for c in _plan_commands(cfg, first_stage_law="fit-stage1") if c.startswith("ehrfm sweep plan"))
    assert not any("--run-seeds" in c for c in _plan_commands(DemoConfig(), first_stage_law="fit-stage1"))
    one = json.loads(json.dumps(dataclasses.asdict(DemoConfig())))
    hard, _ = _config_changes(one, {**one, "run_seeds": 2})
    assert hard == ["run_seeds 1 -> 2"]
    before = {k: v for k, v in one.items() if k != "run_seeds"}
    assert _config_changes(before, one) == ([], [])
    with pytest.raises(UserError, match=r"--run-seeds 0: must be an integer >= 1"):
        DemoConfig(run_seeds=0).checked()


def test_auroc_rising_missed_says_why_task_by_task_and_withheld_laws_are_not_measured():
    """The real MIMIC-IV demo's report marked "AUROC rises with compute" MISSED with no reason: every law was withheld
    (AUROCs without a standard error), said only among the fit's warnings. Each task's reason is given now, and a run
    where no law could be fitted is "not measured", as the probe-vs-counts row is for the same cause."""
    from ehrfm.app.demo import _own_reasons

    fits = {"approach2": {"budgets": []}, "utility": {
        "icu": {"exponent": -0.04, "exponent_ci": [-0.06, -0.02], "n_points": 4},
        "mortality": {"exponent": -0.01, "exponent_ci": [-0.03, 0.012], "n_points": 4},
        "los": {"exponent": -0.2, "exponent_ci": [-0.3, -0.1], "n_points": 2}},
        "warnings": ["utility auroc/readmission: the AUROC of 2 of its 4 budget(s) has no standard error in "
                     "auroc_se/readmission (...); no law fitted"]}
    lines = [x for x in _own_reasons({"AUROC rises with compute"}, fits, pl.DataFrame(), DemoConfig()) if x]
    (why,) = [x for x in lines if x.startswith("Why AUROC rises with compute missed, task by task: ")]
    assert "mortality: k = -0.01 [-0.03, 0.012], whose interval reaches 0" in why, why
    assert "los: its utility law goes through 2 budget(s)" in why and "; readmission: the AUROC of 2 of its 4" in why
    assert "icu" not in why  # rising: no reason to give


def test_a_demo_whose_every_utility_law_was_withheld_has_auroc_rising_not_measured():
    from types import SimpleNamespace

    from ehrfm.app.demo import _checks_section

    withheld = ("utility auroc/mortality: the AUROC of 1 of its 3 budget(s) has no standard error in auroc_se/mortality "
                "(the heads withhold it below 10 held-out labels or subjects of a class: too few for an interval); no law fitted")
    res = pl.DataFrame({"budget": [1e12], "status": ["completed"], "epochs": [0.5], "n_layer": [2]})

    def row(fits):
        rows = _checks_section(DemoConfig(head_bootstrap=0), SimpleNamespace(to_json=lambda: fits), res, {"tasks": {}},
                               wall=60.0, heads_dir=None)
        return next(r for r in rows if r.startswith("| AUROC rises with compute"))

    assert row({"warnings": [withheld]}).endswith(
        "| no utility law fitted (1 task(s) without AUROC standard errors: too few held-out labels) | not measured |")
    assert row({"warnings": []}).endswith("| 0 (none) | **MISSED** |")  # laws could be fitted and none rose
    # other causes of "no law fitted" (one budget with a value, an AUROC of 1) are no unmeasured run: still MISSED
    assert row({"warnings": [withheld, "utility auroc/icu: 1 budget(s) with a value; no law fitted"]}).endswith("| **MISSED** |")
    assert row({"warnings": ["utility auroc/icu: 1 budget(s) with a value; no law fitted"]}).endswith("| 0 (none) | **MISSED** |")


def test_the_headline_counts_a_parabola_whose_lowest_run_ends_its_ladder_as_the_checks_do():
    """The MIMIC-IV demo's headline said "3 of 3 budgets have ... an interior minimum" beside a check row naming a
    budget whose lowest run was its ladder's smallest size (the vertex an extrapolation): one definition now."""
    from types import SimpleNamespace

    from ehrfm.app.demo import _scaling_verdict

    budgets = [SimpleNamespace(budget=b, used=True, curvature=0.3, interior=True, curvature_ci=[0.1, 0.5]) for b in (1e12, 4e12, 1.6e13)]
    fits = {"inputs": {"bootstrap": 100},
            "approach2": {"a": 0.4, "a_ci": [0.3, 0.5], "b": 0.5, "b_ci": [0.4, 0.6], "loss_exponent": -0.03,
                          "loss_exponent_ci": [-0.04, -0.02], "budgets": [{"budget": b.budget, "used": True} for b in budgets]}}
    fit = SimpleNamespace(approach2=SimpleNamespace(budgets=budgets, a=0.4, b=0.5), not_fitted={}, to_json=lambda: fits)
    res = pl.DataFrame({"budget": [1e12] * 3 + [4e12] * 3 + [1.6e13] * 3, "status": ["completed"] * 9,
                        "n_params": [1e4, 2e4, 4e4] * 3, "loss": [2.64, 2.81, 3.64, 1.2, 1.1, 1.3, 1.1, 1.0, 1.2]})
    assert "3 of 3 budgets have a parabola with positive curvature and an interior minimum (" in _scaling_verdict(fit)[1]
    ok, verdict = _scaling_verdict(fit, res)
    assert not ok and "2 of 3 budgets have a parabola with positive curvature and an interior minimum bracketed by runs" in verdict


def test_a_resume_with_other_soft_settings_removes_the_report_it_will_remake(tmp_path, monkeypatch):
    """A resume with `--bootstrap 0` killed during its sweep left demo_config.json with the new settings beside the
    old report.md (its "Settings:" link and "50 replicates" then disagreed). The old report goes when the new
    settings are taken; a resume with the same settings keeps it until its own is written."""
    import dataclasses
    import json

    from ehrfm.app import demo
    from ehrfm.io import mark_output

    out = tmp_path / "q"
    old = demo.DemoConfig.quick_config()
    old.out = str(out)
    out.mkdir()
    mark_output(out, "demo")
    (out / "demo_config.json").write_text(json.dumps(dataclasses.asdict(old)))
    (out / "tokens").mkdir()  # it made something: a resume, not a fresh start
    (out / "report.md").write_text("old report")

    def killed(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_run_stages", killed)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(dataclasses.replace(old))
    assert (out / "report.md").read_text() == "old report"  # same settings: kept
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(dataclasses.replace(old, bootstrap=0))
    assert not (out / "report.md").exists()


def test_interval_verdicts_from_few_bootstrap_replicates_are_said_to_be_fragile():
    """The same quick-demo runs refitted with --bootstrap 20 instead of 50 flipped "AUROC rises" and a parabola
    from MISSED to met, said nowhere. Below VERDICT_REPLICATES the report says so under its checks."""
    from types import SimpleNamespace

    from ehrfm.app.demo import VERDICT_REPLICATES, _checks_section

    res = pl.DataFrame({"budget": [1e12], "status": ["completed"], "epochs": [0.5], "n_layer": [2]})

    def said(bootstrap):
        lines = _checks_section(DemoConfig(bootstrap=bootstrap, head_bootstrap=0), SimpleNamespace(to_json=lambda: {}), res,
                                {"tasks": {}}, wall=60.0, heads_dir=None)
        return [x for x in lines if x.startswith("The interval checks above rest on")]

    assert said(20) == ["The interval checks above rest on 20 bootstrap replicates of the fits (`--bootstrap`; the default "
                        "demo's 400): a 95% percentile interval's ends from so few draws move between refits of the same runs, "
                        f"so a verdict near its target may flip; judge them on >= {VERDICT_REPLICATES}."]
    assert said(VERDICT_REPLICATES) == [] and said(0) == []
    # the probe-vs-counts interval rests on the heads' replicates
    lines = _checks_section(DemoConfig(bootstrap=400, head_bootstrap=100), SimpleNamespace(to_json=lambda: {}), res,
                            {"tasks": {}}, wall=60.0, heads_dir=None)
    assert any(x.startswith("The interval checks above rest on 100 bootstrap replicates of the clinical heads "
                            "(`demo_config.json head_bootstrap`; the default demo's 1000)") for x in lines), lines
