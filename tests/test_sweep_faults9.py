"""Sweep faults of a ninth break-it pass (a helper trying sweeps as users do; real runs, real files).

- A run retrained by hand with another recipe (lr, batch size, eval sample) into its run dir, or
  runs trained while the token dir was re-tokenized in place under a running launch (one sweep on
  two datasets), were collected as the sweep's own: result.json carries only the shape, tokens and
  seed. `sweep status`/`collect` now compare each completed run's config.json (its recipe and data)
  with the plan and sweep.json, and fail the run naming what differs.
- After the hostname changed (a container restart), a local run interrupted under the old name
  showed "running" for ever, with no word, and was never relaunched; now only a run whose trainer
  holds the run dir's lock is running, and the others are unknown with a note that says how to free them.
- A sweep.json missing a field (or `"tokens_dir": null`) ended status in a TypeError traceback; a
  budget of 1e35 FLOPs in an OverflowError with an empty sweep dir left; `--cpus-per-task -1` ran.
"""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from test_sweep_faults8 import _copy, ehrfm  # the same CLI runner and copy of a finished sweep

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def finished_sweep(tok, tmp_path_factory):
    """A one-run sweep trained to completion (read-only: tests copy it)."""
    from test_sweep import plan_rows

    from sweeps.plan import plan_sweep

    out = tmp_path_factory.mktemp("faults9") / "sweep"
    plan_sweep(tok, [2e8], out, sizes=1, context=64, min_steps=1, train={"batch_size": 4, "lr": 2e-3})
    p = ehrfm("sweep", "launch", out, "--executor", "local")
    assert p.returncode == 0, p.stderr
    (rid,) = [r["run_id"] for r in plan_rows(out)]
    return out, rid


def _status(out, rid):
    from sweeps.state import run_states

    return run_states(out, [rid])[rid]


@pytest.mark.parametrize("edit, says", [
    (lambda c: c["train"].update(lr=0.02), "lr 0.02 (planned 0.002)"),
    (lambda c: c["train"].update(weight_decay=0.0, grad_clip=0.5), "weight_decay 0.0 (planned 0.1)"),
    (lambda c: c["train"].update(batch_size=32, eval_tokens=4096), "batch_size 32 (planned 4), eval_tokens 4096 (planned"),
    (lambda c: c["data"].update(tuning_sha256="0" * 64), "data tuning content (tuning/tokens.npy and index.parquet: sha256 differs)"),
    (lambda c: c["data"].update(train_tokens=c["data"]["train_tokens"] + 1), "data train_tokens"),
])
def test_a_completed_run_trained_other_than_planned_is_failed_not_collected(finished_sweep, tmp_path, edit, says):
    out, rid = _copy(finished_sweep, tmp_path)
    assert _status(out, rid).state == "completed"  # the run as its launch trained it
    path = out / "runs" / rid / "config.json"
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))
    st = _status(out, rid)
    assert st.state == "failed" and says in st.note and "trained other than planned" in st.note, st.note
    # what to do: a relaunch trains another recipe again, never other data (the trainer refuses the token dir)
    assert st.note.endswith("put back the token dir the sweep was planned on, or plan a new sweep on this one (another --out)"
                            if says.startswith("data ") else "(--retry-failed refuses a run dir that holds another run)"), st.note
    p = ehrfm("sweep", "collect", out)
    assert p.returncode == 0, p.stderr
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["run_id"], r["status"]) for r in table] == [(rid, "failed")]


def test_a_run_trained_other_than_planned_says_how_to_train_it_as_planned_and_that_works(finished_sweep, tmp_path):
    """Its note said what differs, not what to do; the documented retry (--retry-failed) is refused by the trainer
    ("run dir ... holds a different run"). It now says to remove the run dir and launch again: followed, the run
    trains as planned, to the sweep's loss."""
    out, rid = _copy(finished_sweep, tmp_path)
    before = json.loads((out / "runs" / rid / "result.json").read_text())["val_loss"]
    path = out / "runs" / rid / "config.json"
    cfg = json.loads(path.read_text())
    cfg["train"].update(lr=0.02)
    path.write_text(json.dumps(cfg))
    note = _status(out, rid).note
    assert note.endswith(f"to train it as planned, remove {out / 'runs' / rid} and run `ehrfm sweep launch {out}` "
                         "again (--retry-failed refuses a run dir that holds another run)"), note
    shutil.rmtree(out / "runs" / rid)
    p = ehrfm("sweep", "launch", out, "--executor", "local")
    assert p.returncode == 0, p.stderr
    assert _status(out, rid).state == "completed"
    assert json.loads((out / "runs" / rid / "result.json").read_text())["val_loss"] == before


def test_a_run_of_the_sweeps_own_recipe_and_data_stays_completed(finished_sweep, tmp_path):
    out, rid = _copy(finished_sweep, tmp_path)
    path = out / "runs" / rid / "config.json"
    cfg = json.loads(path.read_text())
    cfg["train"].update(device="cpu", micro_batch_size=2)  # where and how it ran: not what it computed
    del cfg["data"]  # an older ehrfm's config.json: nothing to compare
    path.write_text(json.dumps(cfg))
    assert _status(out, rid).state == "completed"
    # a cosine sweep re-planned with other wsd-only settings keeps its runs (`sweep plan` says they change none)
    sweep = json.loads((out / "sweep.json").read_text())
    sweep["train"].update(decay_fraction=0.5, decay_shape="1-sqrt")
    (out / "sweep.json").write_text(json.dumps(sweep))
    assert _status(out, rid).state == "completed"
    # a hand-edited train, or a setting a later ehrfm dropped (sweep.json pins every setting): one warning naming
    # sweep.json and the key, not a traceback; the sweep reads on (it was refused as damaged, which would call every
    # sweep damaged after a release that drops a setting)
    sweep["train"]["not_a_setting"] = 1
    (out / "sweep.json").write_text(json.dumps(sweep))
    p = ehrfm("sweep", "status", out)
    assert p.returncode == 0, p.stderr
    assert "train sets 'not_a_setting', no setting of this ehrfm's `ehrfm train`" in p.stderr and "sweep.json" in p.stderr, p.stderr
    assert _status(out, rid).state == "completed"


def test_a_local_run_of_another_hostname_runs_only_while_its_trainer_holds_the_run_dir(finished_sweep, tmp_path):
    from ehrfm.run_lock import lock_run_dir

    out, rid = _copy(finished_sweep, tmp_path)
    run_dir = out / "runs" / rid
    (run_dir / "result.json").unlink()  # the trainer ended without a result (the container stopped)
    rec_path = out / "jobs" / f"{rid}.json"
    rec = json.loads(rec_path.read_text())
    assert rec["executor"] == "local"
    rec["host"] = "the-container-before-its-restart"
    rec_path.write_text(json.dumps(rec))
    st = _status(out, rid)
    # was "running" for ever, with no word; queued there or gone, it is not relaunched on a guess, and says how
    assert st.state == "unknown" and "on host the-container-before-its-restart, not this one" in st.note, st
    assert f"if it is gone, delete {rec_path} and relaunch" in st.note
    lock = lock_run_dir(run_dir)  # a trainer on that host holds the run dir: never trained twice
    try:
        assert _status(out, rid).state == "running"
    finally:
        lock.close()
    rec_path.unlink()  # as the note says: the run is then lost (or interrupted) and a launch trains it again
    assert _status(out, rid).state in ("lost", "planned", "interrupted")
    p = ehrfm("sweep", "launch", out, "--executor", "local")
    assert p.returncode == 0 and _status(out, rid).state == "completed", p.stderr


@pytest.mark.parametrize("edit, says", [(lambda s: s.pop("budgets"), "budgets missing"),
                                        (lambda s: s.update(tokens_dir=None), "tokens_dir is null, not str"),
                                        (lambda s: s.update(budgets=["1e12"]), "budgets holds a value that is not a number")])
def test_a_damaged_sweep_json_is_one_line(finished_sweep, tmp_path, edit, says):
    out, _ = _copy(finished_sweep, tmp_path)
    sweep = json.loads((out / "sweep.json").read_text())
    edit(sweep)
    (out / "sweep.json").write_text(json.dumps(sweep))
    for command in (["status"], ["collect"], ["launch", "--executor", "local"]):
        p = ehrfm("sweep", *command[:1], out, *command[1:])
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [
            f"ehrfm sweep {command[0]}: error: sweep config {out / 'sweep.json'} is damaged: {says} (plan the sweep again with "
            "`ehrfm sweep plan`, the same options, into a new dir)"], (command, p.stderr)


def test_a_budget_beyond_any_training_run_is_refused_before_anything_is_written(tok, tmp_path):
    p = ehrfm("sweep", "plan", "--tokens", tok, "--budgets", "1e12,1e35", "--sizes", "3", "--out", tmp_path / "s",
              "--context", "64")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "ehrfm sweep plan: error: --budgets: '1e35' is above 1e+30 FLOPs, ~10^4 times the largest training runs made so far: "
        "a typo of the exponent?"], p.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("cpus", ["0", "-1"])
def test_cpus_per_task_below_one_is_refused(finished_sweep, tmp_path, cpus):
    out, _ = _copy(finished_sweep, tmp_path)
    p = ehrfm("sweep", "launch", out, "--executor", "local", "--cpus-per-task", cpus)
    assert p.returncode == 2 and "--cpus-per-task and --max-parallel >= 1" in p.stderr, p.stderr


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.unlink(), "it is missing"),
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "it cannot be read as JSON"),
    (lambda p: p.write_text("{}"), "it holds no run config"),
])
def test_a_completed_run_without_a_readable_config_is_failed_not_collected(finished_sweep, tmp_path, damage, says):
    """A break-it helper (2026-12-07): another run's result copied into a run dir whose config.json was deleted or cut
    short was collected as the sweep's run, exit 0 (the recipe check read nothing and passed). Now failed, named."""
    out, rid = _copy(finished_sweep, tmp_path)
    damage(out / "runs" / rid / "config.json")
    st = _status(out, rid)
    assert st.state == "failed" and "cannot be checked against its plan without its config.json" in st.note, st.note
    assert says in st.note and st.note.endswith("(--retry-failed refuses a run dir that holds another run)"), st.note
    p = ehrfm("sweep", "collect", out)
    assert p.returncode == 0, p.stderr
    assert [(r["run_id"], r["status"]) for r in pq.read_table(out / "results.parquet").to_pylist()] == [(rid, "failed")]


def test_a_finished_run_dir_the_plan_does_not_list_is_unplanned_never_completed(finished_sweep, tmp_path):
    """Before: a completed run dir copied into runs/ from another sweep (or left by an earlier plan) was collected
    with status "completed" (budget null) into results.parquet, where any reader fitting status == completed took
    its loss. It is now "unplanned" whatever its result.json says, with a note; the sweep's own run is unchanged."""
    out, rid = _copy(finished_sweep, tmp_path)
    shutil.copytree(out / "runs" / rid, out / "runs" / "from-elsewhere")
    st = _status(out, "from-elsewhere")
    assert st.state == "unplanned", st
    assert st.note == (f"run dir {out / 'runs' / 'from-elsewhere'} is not in {out / 'plan.parquet'} (copied in, or left by an "
                       "earlier plan); its result.json says completed: not this sweep's run, never fitted or scored")
    p = ehrfm("sweep", "status", out)
    assert p.returncode == 0, p.stderr
    assert f"from-elsewhere: unplanned: run dir {out / 'runs' / 'from-elsewhere'} is not in" in p.stdout, p.stdout
    p = ehrfm("sweep", "collect", out)
    assert p.returncode == 0, p.stderr
    rows = {r["run_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert (rows[rid]["status"], rows["from-elsewhere"]["status"]) == ("completed", "unplanned")
    assert rows["from-elsewhere"]["loss"] is None and rows["from-elsewhere"]["budget"] is None
    assert rows["from-elsewhere"]["error"].startswith("run dir ")
