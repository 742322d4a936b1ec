"""Faults a demanding user met in `ehrfm sweep plan` and `ehrfm demo`, each with its fix's test.

Real token dirs (the shared synthetic one), real sweep dirs and real CLI processes; no demo is run
to completion here (each demo test stops at a refusal that comes before any stage runs).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from ehrfm.errors import UserError
from ehrfm.io import output_command

OPTS = dict(sizes=3, context=64, train={"batch_size": 8})
CLI = ["--sizes", "3", "--context", "64", "--batch-size", "8"]


def ehrfm(*args) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, EHRFM_QUIET="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


# --- budgets ---------------------------------------------------------------------------------------


def test_budgets_within_the_fits_tolerance_are_planned_once(synth_tokens, tmp_path):
    """Before: --budgets 2e9,2.0000001e9 planned two budgets and trained every size twice, while
    `ehrfm fit` merges budgets within 0.1% into one IsoFLOP group."""
    from analysis.table import BUDGET_SAME_DECADES
    from sweeps.plan import canonical_budgets, plan_sweep

    one, rows_one, _ = plan_sweep(synth_tokens, [2e9], tmp_path / "one", **OPTS)
    sweep, rows, warnings = plan_sweep(synth_tokens, [2.0000001e9, 2e9], tmp_path / "two", **OPTS)
    assert sweep.budgets == [2e9] and json.loads((tmp_path / "two" / "sweep.json").read_text())["budgets"] == [2e9]
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in rows_one]  # each size trained once
    assert sum("within 0.1% of each other" in w and "planned once, as 2000000000" in w for w in warnings) == 1
    # The same tolerance as the fit: just outside it, two budgets.
    apart = 10 ** (1.01 * BUDGET_SAME_DECADES)
    assert canonical_budgets([1e10, 1e10 * apart])[0] == [1e10, 1e10 * apart]
    assert canonical_budgets([1e10, 1e10 * 10 ** (0.99 * BUDGET_SAME_DECADES)])[0] == [1e10]
    # Re-planning with the budget written another way keeps the planned value, so its runs keep their ids.
    again, rows_again, notes = plan_sweep(synth_tokens, [2.000001e9, 5e9], tmp_path / "one", **OPTS)
    assert again.budgets == [2e9, 5e9]
    assert {r["run_id"] for r in rows_one} <= {r["run_id"] for r in rows_again}
    # The CLI: exit 0, one warning line for the merge.
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "2e9,2.0000001e9", *CLI, "--out", tmp_path / "cli")
    assert p.returncode == 0, p.stderr
    assert p.stderr.count("within 0.1% of each other") == 1 and f"planned {len(rows_one)} runs over 1 budgets" in p.stdout
    merged = [ln for ln in p.stderr.splitlines() if "within 0.1% of each other" in ln]
    assert merged[0].startswith("ehrfm sweep plan: warning: "), merged  # every stage warns in one form (ehrfm.io.warn)
    # A budget typed twice was merged without a word (a slip for another budget goes unseen).
    p = ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "2e9,2e9", *CLI, "--out", tmp_path / "twice")
    assert p.returncode == 0, p.stderr
    assert "ehrfm sweep plan: warning: budget 2000000000 is given 2 times: planned once" in p.stderr.splitlines()
    assert f"planned {len(rows_one)} runs over 1 budgets" in p.stdout


def test_budget_too_small_names_every_one_and_the_smallest_that_works(synth_tokens, tmp_path):
    """Before: only the first too-small budget was named, with no budget that would work."""
    from sweeps.plan import plan_sweep

    line = one_error_line(ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "1e6,2e6,1e9", *CLI, "--out", tmp_path / "s"))
    assert "budgets 1e+06, 2e+06 FLOPs are too small for the smallest shape" in line
    smallest = float(line.split("the smallest budget that works is ")[1].split()[0])
    assert not (tmp_path / "s").exists()
    _, rows, _ = plan_sweep(synth_tokens, [smallest], tmp_path / "ok", **OPTS)  # it really works
    assert rows and all(r["steps"] >= 1 for r in rows)
    with pytest.raises(UserError, match="too small"):
        plan_sweep(synth_tokens, [smallest * 0.99], tmp_path / "below", **OPTS)


def test_negative_budget_gets_its_own_check(synth_tokens, tmp_path):
    """Before: `--budgets -1e9` was taken for an option: argparse's usage and "expected one argument"."""
    line = one_error_line(ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "-1e9", *CLI, "--out", tmp_path / "s"))
    assert "--budgets: '-1e9' must be a positive finite number of FLOPs" in line


# --- ladders -----------------------------------------------------------------------------------------


def test_huge_span_dex_plans_instead_of_overflowing(synth_tokens, tmp_path):
    """Before: --span-dex 1000 crashed with OverflowError (10 ** 1000) and --span-dex 20 shaped a
    1e20-parameter target for minutes; targets no budget can train are now dropped unshaped."""
    from sweeps.plan import plan_sweep

    sweep, rows, warnings = plan_sweep(synth_tokens, [1e10], tmp_path / "s", **{**OPTS, "sizes": 3}, span_dex=1000)
    assert len(rows) == 1 and rows[0]["n_layer"] == 1 and rows[0]["d_model"] == 16  # the lower rung snaps to the smallest
    assert any("target N=inf dropped" in w for w in warnings)
    assert any("1 run(s) planned; an IsoFLOP parabola" in w for w in warnings)


def test_span_dex_zero_with_several_sizes_is_refused(synth_tokens, tmp_path):
    """Before: --span-dex 0 --sizes 3 planned one run per budget, blaming "small sizes snap"."""
    line = one_error_line(ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "1e10", *CLI, "--span-dex", "0",
                                "--out", tmp_path / "s"))
    assert "--span-dex 0 with --sizes 3" in line
    assert not (tmp_path / "s").exists()


def test_budget_that_cannot_make_a_parabola_is_flagged(synth_tokens, tmp_path):
    """Before: a budget left with 1 or 2 runs (sizes dropped or snapped together) passed without a word,
    though `ehrfm fit` needs 3 sizes per budget for its parabola."""
    from sweeps.plan import plan_sweep

    _, rows, warnings = plan_sweep(synth_tokens, [1e9, 1e11], tmp_path / "s", **{**OPTS, "sizes": 1})
    assert len(rows) == 2
    assert sum("run(s) planned; an IsoFLOP parabola (`ehrfm fit` Approach 2) needs at least 3" in w for w in warnings) == 2


def test_runs_beyond_this_machines_memory_are_flagged(synth_tokens, tmp_path):
    """Before: a 1e22-FLOP plan of 1e11-parameter models passed with no word on memory."""
    from sweeps.plan import plan_sweep

    _, rows, warnings = plan_sweep(synth_tokens, [1e22], tmp_path / "s", **OPTS)
    assert max(r["n_params_total"] for r in rows) * 16 > 2**40  # > 1 TiB: more than any test machine holds
    flagged = [w for w in warnings if "of memory for weights, gradients and Adam state" in w]
    assert len(flagged) == 1 and max(rows, key=lambda r: r["n_params_total"])["run_id"] in flagged[0]
    assert any("epochs of the" in w for w in warnings)  # and multi-epoch runs, as before


# --- re-planning ---------------------------------------------------------------------------------------


def test_replan_says_which_runs_leave_the_plan(synth_tokens, tmp_path):
    """Before: re-planning a sweep dir with another ladder (--sizes, --span-dex) silently left its earlier runs out of the plan."""
    from sweeps.plan import plan_sweep

    out = tmp_path / "s"
    _, rows, _ = plan_sweep(synth_tokens, [2e9, 1e10], out, **OPTS)
    (out / "runs" / rows[0]["run_id"]).mkdir(parents=True)  # one run started
    _, more, notes = plan_sweep(synth_tokens, [2e9, 1e10, 5e10], out, **OPTS)  # a budget added: nothing leaves
    assert {r["run_id"] for r in rows} <= {r["run_id"] for r in more} and not any("re-plan of" in w for w in notes)
    _, other, notes = plan_sweep(synth_tokens, [2e9, 1e10, 5e10], out, **OPTS, span_dex=0.3)
    gone = {r["run_id"] for r in more} - {r["run_id"] for r in other}
    assert gone
    [note] = [w for w in notes if w.startswith("re-plan of")]
    assert f"{len(gone)} run(s) of its previous plan are not in this one" in note


def test_dir_holding_only_a_plan_table_can_be_planned(synth_tokens, tmp_path):
    """An interrupted first plan (plan.parquet written, sweep.json not yet) does not lock the dir."""
    from sweeps.plan import plan_sweep

    out = tmp_path / "s"
    plan_sweep(synth_tokens, [2e9], out, **OPTS)
    (out / "sweep.json").unlink()
    plan_sweep(synth_tokens, [2e9], out, **OPTS)
    assert (out / "sweep.json").is_file()
    (out / "notes.txt").write_text("mine")
    (out / "sweep.json").unlink()
    with pytest.raises(UserError, match="is not a sweep dir"):
        plan_sweep(synth_tokens, [2e9], out, **OPTS)


# --- --centre-from / --bracket-from ----------------------------------------------------------------------


@pytest.mark.parametrize("a2, says", [
    ({"a": 0.5, "b": 0.5, "n_coef": 1.0, "budgets": [{"budget": "x", "used": True}]}, "approach2.budgets must be a list"),
    ({"a": 0.5, "b": 0.5, "n_coef": 1.0, "budgets": 7}, "approach2.budgets must be a list"),
    ({"a": True, "b": 0.5, "n_coef": 1.0, "budgets": [{"budget": 1e9, "used": True}]}, "approach2.a = True"),
])
def test_centre_from_a_malformed_fit_is_one_error_line(synth_tokens, tmp_path, a2, says):
    """Before: a fits.json with a budget that is not a number crashed with a ValueError traceback."""
    fit = tmp_path / "fit"
    fit.mkdir()
    (fit / "fits.json").write_text(json.dumps({"approach2": a2}))
    line = one_error_line(ehrfm("sweep", "plan", "--tokens", synth_tokens, "--budgets", "2e9,5e9", *CLI, "--centre-from", fit,
                                "--out", tmp_path / "s"))
    assert str(fit / "fits.json") in line and says in line
    assert not (tmp_path / "s").exists()


def test_centre_from_a_fit_with_an_unknown_parameter_count_is_refused(synth_tokens, tmp_path):
    from sweeps.plan import plan_sweep

    (tmp_path / "fits.json").write_text(json.dumps({"n_count": 5, "approach2": {
        "a": 0.5, "b": 0.5, "n_coef": 1.0, "budgets": [{"budget": 1e9, "used": True}]}}))
    with pytest.raises(UserError, match="n_count = 5"):
        plan_sweep(synth_tokens, [2e9, 5e9], tmp_path / "s", centre_from=tmp_path / "fits.json", **OPTS)


def test_bracket_from_reads_csv_names_a_dir_and_says_what_it_skips(synth_tokens, tmp_path):
    """Before: a CSV results table (which DESIGN.md accepts) was called "damaged", a sweep dir "not
    found", and a table of another sweep was ignored without a word."""
    from sweeps.plan import plan_sweep

    out = tmp_path / "s"
    _, rows, _ = plan_sweep(synth_tokens, [1e10], out, **OPTS)
    assert len(rows) == 3
    ladder = sorted(rows, key=lambda r: r["n_params"])
    # lowest loss at the largest size: one rung is added above
    table = pa.table({"run_id": [r["run_id"] for r in ladder], "status": ["completed"] * 3, "loss": [3.0, 2.5, 2.0]})
    pcsv.write_csv(table, tmp_path / "results.csv")
    pq.write_table(table, tmp_path / "results.parquet")
    from_csv, csv_rows, notes = plan_sweep(synth_tokens, [1e10], tmp_path / "c", bracket_from=tmp_path / "results.csv", **OPTS)
    from_pq, pq_rows, _ = plan_sweep(synth_tokens, [1e10], tmp_path / "p", bracket_from=tmp_path / "results.parquet", **OPTS)
    assert from_csv.extra_rungs == from_pq.extra_rungs == {"1e+10": [0, 1]}
    assert [r["run_id"] for r in csv_rows] == [r["run_id"] for r in pq_rows] and len(csv_rows) == 4
    with pytest.raises(UserError, match="a directory, not a results table"):
        plan_sweep(synth_tokens, [1e10], out, bracket_from=tmp_path, **OPTS)
    other = pa.table({"run_id": ["x", "y", "z"], "status": ["completed"] * 3, "loss": [3.0, 2.5, 2.0]})
    pq.write_table(other, tmp_path / "other.parquet")
    sweep, _, notes = plan_sweep(synth_tokens, [1e10], out, bracket_from=tmp_path / "other.parquet", **OPTS)
    assert sweep.extra_rungs == {} and any("budget 1e+10: not extended: 0 of its 3 planned runs" in n for n in notes)
    # a ladder of 2 sizes, every run completed: the note names the ladder, not the runs
    two, two_rows, _ = plan_sweep(synth_tokens, [1e10], tmp_path / "two", **{**OPTS, "sizes": 2})
    pq.write_table(pa.table({"run_id": [r["run_id"] for r in two_rows], "status": ["completed"] * 2, "loss": [2.5, 2.0]}),
                   tmp_path / "two.parquet")
    two, _, notes = plan_sweep(synth_tokens, [1e10], tmp_path / "two", bracket_from=tmp_path / "two.parquet", **{**OPTS, "sizes": 2})
    (note,) = [n for n in notes if n.startswith("--bracket-from")]
    assert two.extra_rungs == {} and "its ladder has 2 size(s)" in note and "--sizes 3 or more" in note, note


# --- ehrfm demo -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, says", [
    (dict(sizes=0), "--sizes 0: must be an integer >= 1"),
    (dict(budgets=[math.nan, 1e9]), "must be a positive finite number"),
    (dict(span_dex=0.0), "--span-dex 0.0: must be > 0 with --sizes"),
    (dict(bracket=-1), "--bracket -1"),
    # what no fit can use: before, each ran synth, ETL, tokenize, labels and a sweep first
    (dict(budgets=[1e9]), "--budgets '1e+09': must be at least 2 distinct budgets"),
    (dict(budgets=[1e9, 1.0000001e9]), "--budgets '1e+09': must be at least 2 distinct budgets"),
    (dict(sizes=2), "--sizes 2: must be at least 3 (an IsoFLOP parabola needs 3 sizes per budget)"),
    (dict(bootstrap=10), "--bootstrap 10: must be 0 (no intervals) or at least 20"),
])
def test_demo_refuses_bad_settings_before_any_stage(tmp_path, bad, says):
    """Before: a bad setting surfaced only at `sweep plan`, after synth, ETL, tokenizing and labels
    (or never: a negative --bracket, a nan budget)."""
    from ehrfm.app.demo import DemoConfig, run_demo

    out = tmp_path / "demo"
    with pytest.raises(UserError, match=re.escape(says)):
        run_demo(DemoConfig(out=str(out), patients=50, budgets=bad.pop("budgets", [1e9, 2e9, 4e9]), first_stage=0,
                            bracket=bad.pop("bracket", 0), **bad))
    assert not out.exists()


def test_demo_cli_budgets_are_read_as_sweep_plan_reads_them(tmp_path):
    """Before: `ehrfm demo --budgets nan` was accepted (nan <= 0 is false) and the demo started."""
    line = one_error_line(ehrfm("demo", "--quick", "--out", tmp_path / "d", "--budgets", "1e9,,nan"))
    assert line == "ehrfm demo: error: --budgets: 'nan' must be a positive finite number of FLOPs"
    assert not (tmp_path / "d").exists()


def test_demo_does_not_fill_another_commands_output(synth_tokens, tmp_path):
    """Before: `ehrfm demo --out TOK` (a token dir, marked by `ehrfm tokenize`) wrote a whole demo into it."""
    import shutil

    from ehrfm.app.demo import DemoConfig, run_demo

    tok = tmp_path / "tok"
    shutil.copytree(synth_tokens, tok)
    before = sorted(p.name for p in tok.iterdir())
    with pytest.raises(UserError, match="holds the output of `ehrfm tokenize`, not a demo"):
        run_demo(DemoConfig(out=str(tok), patients=50, budgets=[1e9, 2e9, 4e9]))
    assert sorted(p.name for p in tok.iterdir()) == before
    assert output_command(tok) == "tokenize"


def test_demo_resumed_with_other_settings_names_them(tmp_path):
    """Before: "holds a demo made with other settings" named none of them, and `--out d` vs `--out d/`
    or another executor (which change no run) were refused too."""
    import dataclasses

    from ehrfm.app.demo import DemoConfig, _config_changes, run_demo
    from ehrfm.io import mark_output, write_json

    out = tmp_path / "demo"
    out.mkdir()
    mark_output(out, "demo")
    made = DemoConfig.quick_config(out=str(out), patients=50)
    write_json(out / "demo_config.json", made)
    (out / "tokens").mkdir()  # a stage's output: the dir holds a study, not only its settings
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match=r"other settings \(patients 50 -> 60; sizes 5 -> 4;"):
        run_demo(DemoConfig.quick_config(out=str(out), patients=60, sizes=4))
    assert sorted(p.name for p in out.iterdir()) == before
    old = json.loads((out / "demo_config.json").read_text())
    new = dataclasses.asdict(dataclasses.replace(made, out=str(out) + "/", executor="slurm", max_parallel=4, bootstrap=10))
    hard, soft = _config_changes(old, new)
    assert hard == [] and [c.split()[0] for c in soft] == ["bootstrap", "executor", "max_parallel", "out"]


@pytest.mark.parametrize("argv", [["train", "tok", "--tokens", "inf"], ["train", "tok", "--flops", "nan"],
                                  ["recommend", "fit", "--flops", "inf"], ["recommend", "fit", "--flops", "1e18", "--unique-tokens", "inf"],
                                  ["fit", "results.parquet", "--max-epochs", "inf"]])
def test_infinite_or_nan_numbers_are_refused_by_every_positive_number_flag(argv):
    flag, value = argv[-2:]
    line = one_error_line(ehrfm(*argv))  # argparse's errors too are one line, ending with where the flags are listed
    command = " ".join(argv[:1])
    assert line == f"ehrfm {command}: error: argument {flag}: must be a finite number > 0 (got '{value}') (see `ehrfm {command} --help`)", line


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_plan_row_edited_by_hand_is_refused_before_any_run_trains(synth_tokens, tmp_path, schedule):
    """A plan row with its tokens doubled trained under its planned id, was recorded completed, and was refused
    only by `ehrfm fit` ("columns budget and flops disagree"); another shape, seed or lr likewise. Now `sweep
    launch` recomputes each row's id from what its job would train and refuses the plan, naming it."""
    from plan_edits import write_plan

    from sweeps.launch import LaunchConfig, launch_sweep
    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    from test_sweep import TINY

    plan_sweep(synth_tokens, out=out, schedule=schedule, **TINY)
    table = pq.read_table(out / "plan.parquet")
    planned = table.to_pylist()
    for column, value in (("tokens", lambda r: 2 * r["tokens"]), ("d_model", lambda r: r["d_model"] + 16),
                          ("seed", lambda r: (r["seed"] or 0) + 1)):
        rows = [dict(r) for r in planned]
        rows[-1][column] = value(rows[-1])
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / "plan.parquet")
        with pytest.raises(UserError, match=rf"plan.parquet: 1 of {len(rows)} rows train another config than their run id "
                                            rf"was planned with \(first: {rows[-1]['run_id']}; edited by hand"):
            launch_sweep(out, LaunchConfig(executor="local", dry_run=True))
    rows = [dict(r) for r in planned]
    rows[0]["flops"] *= 2  # not what the run trains: a results table would carry it
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / "plan.parquet")
    with pytest.raises(UserError, match="columns flops, tokens and flops_per_token that disagree"):
        launch_sweep(out, LaunchConfig(executor="local", dry_run=True))
    write_plan(out, [dict(r) for r in planned], table.schema)  # the plan as planned passes, every id unchanged
    assert pq.read_table(out / "plan.parquet").column("run_id").to_pylist() == [r["run_id"] for r in planned]
    # sweep.json's recipe edited (lr 0.5): every row differs, and the error names sweep.json, not plan.parquet alone,
    # nor tells to re-plan (which would adopt the edit); `sweep status` refuses it as launch and collect do
    import json

    from sweeps.collect import status_rows

    saved = (out / "sweep.json").read_text()
    edited = json.loads(saved)
    edited["train"]["lr"] = 0.5
    (out / "sweep.json").write_text(json.dumps(edited))
    for call in (lambda: launch_sweep(out, LaunchConfig(executor="local", dry_run=True)), lambda: status_rows(out)):
        with pytest.raises(UserError, match=rf"all {len(planned)} rows train another config .* in {out / 'sweep.json'}, "
                                            r"was edited since planning \(put it back as planned, or plan a new sweep"):
            call()
    (out / "sweep.json").write_text(saved)
    assert len(status_rows(out)) == len(planned)
    launch_sweep(out, LaunchConfig(executor="local", dry_run=True))
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


@pytest.mark.parametrize("missing", ["train", "tuning"])
def test_a_token_dir_without_train_or_tuning_is_refused_before_anything_is_written(synth_tokens, tmp_path, missing):
    """Before: planned with exit 0 (epochs nan, sweep.json "data": {}), every run then failed at launch, and the sweep
    never recorded which data its runs trained on: a train split changed in place later was trained on unchecked."""
    import shutil

    tokens = tmp_path / "tokens"
    shutil.copytree(synth_tokens, tokens)
    (tokens / missing / "tokens.npy").unlink()
    line = one_error_line(ehrfm("sweep", "plan", "--tokens", tokens, "--budgets", "2e9", *CLI, "--out", tmp_path / "s"))
    assert f"token dir {tokens} has no {missing} split ({missing}/tokens.npy" in line, line
    assert not (tmp_path / "s").exists()
    from sweeps.plan import plan_sweep

    sweep, _, _ = plan_sweep(synth_tokens, [2e9], tmp_path / "ok", **OPTS)
    assert sweep.data["train_tokens"] > 0 and sweep.data["tuning_subjects"] > 0


def test_a_value_starting_with_a_minus_is_said_how_to_pass(tmp_path):
    """`--split-fractions -1,1,1` said only "expected one argument" (argparse reads the value as a flag), so the
    value was never checked; the line now says FLAG=VALUE, and with it the value's own check answers."""
    (tmp_path / "raw").mkdir()
    line = one_error_line(ehrfm("etl", tmp_path / "raw", "--out", tmp_path / "m", "--split-fractions", "-1,1,1"))
    assert line == ("ehrfm etl: error: argument --split-fractions: expected one argument (a value that starts with '-' "
                    "reads as a flag: write --split-fractions=VALUE) (see `ehrfm etl --help`)"), line
    line = one_error_line(ehrfm("etl", tmp_path / "raw", "--out", tmp_path / "m", "--split-fractions=-1,1,1"))
    assert "split fractions must be 3 finite numbers >= 0 summing to 1" in line, line
    # a flag given no value at all gets no such hint
    assert "FLAG=VALUE" not in one_error_line(ehrfm("fit", tmp_path / "r.parquet", "--out"))
    assert "=VALUE" not in one_error_line(ehrfm("fit", tmp_path / "r.parquet", "--out", "--bootstrap", "10"))
