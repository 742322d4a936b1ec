"""RunResult / Status (ehrfm.results) and the shared table schemas (ehrfm.tables, sweeps.plan).

result.json keeps its on-disk form (DESIGN.md section 3): a RunResult writes exactly the keys it
was built or read with; the results and plan tables are written with the schema their readers check.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from state_edits import write_state

from ehrfm.errors import UserError
from ehrfm.results import FINISHED, KEPT, RunResult, Status, read_result, require_completed, write_result
from ehrfm.tables import RESULTS_COLUMNS, RESULTS_REQUIRED, results_schema


def test_a_real_runs_result_json_round_trips_exactly(tiny_run):
    on_disk = json.loads((tiny_run / "result.json").read_text())
    result = read_result(tiny_run)
    assert result.status is Status.COMPLETED and result.kept and result.finished
    assert result.val_loss == on_disk["val_loss"] and 0 < result.val_loss < math.log(on_disk["vocab_size"])
    assert result.n_params == on_disk["n_params"] and result.tokens == on_disk["tokens"] == 60_000
    # same keys, same order, same values (null kept as null)
    assert list(result.to_json().items()) == list(on_disk.items())
    assert on_disk["error"] is None and "diverged_step" not in on_disk and "step" not in on_disk


def test_absent_and_null_fields_stay_apart_and_unknown_keys_are_kept(tmp_path):
    minimal = RunResult(Status.FAILED, error="trainer killed by signal 9")
    assert minimal.to_json() == {"status": "failed", "error": "trainer killed by signal 9"}
    assert minimal.val_loss is None and minimal.n_params is None
    nulls = RunResult("diverged", val_loss=None, initial_train_loss=None, diverged_step=1, error="train loss became nan at step 1")
    assert nulls.to_json() == {"status": "diverged", "val_loss": None, "initial_train_loss": None, "diverged_step": 1,
                               "error": "train loss became nan at step 1"}
    newer = {"status": "completed", "val_loss": 2.5, "a_future_key": 0.01, "n_params": 1234}
    back = RunResult.from_json(newer)
    assert back.extra == {"a_future_key": 0.01} and back.to_json() == newer
    assert back.with_(error=None).to_json() == {**newer, "error": None}
    write_result(tmp_path / "run", back)
    assert json.loads((tmp_path / "run" / "result.json").read_text()) == newer
    assert set(FINISHED) == {"completed", "failed", "diverged"} and set(KEPT) == {"completed", "diverged"}


@pytest.mark.parametrize("body, problem", [
    ({"status": "done", "val_loss": 1.0}, "status is not a known status string"),
    ({"status": "completed", "val_loss": "1.0"}, "val_loss is not a number"),
    ({"status": "completed", "val_loss": None}, "completed without a finite val_loss"),
    ({"status": 3}, "status is not a known status string"),
])
def test_a_damaged_result_is_one_error_naming_the_file(tmp_path, body, problem):
    (tmp_path / "result.json").write_text(json.dumps(body))
    with pytest.raises(UserError, match=problem) as e:
        read_result(tmp_path)
    assert str(tmp_path / "result.json") in str(e.value)
    assert read_result(tmp_path / "none") is None


def test_only_a_completed_run_is_loaded(tmp_path):
    require_completed(tmp_path, "a clinical head")  # no result.json: a bare checkpoint is accepted
    (tmp_path / "result.json").write_text(json.dumps({"status": "completed"}))  # a hand-made run: the status is enough
    require_completed(tmp_path, "a clinical head")
    write_result(tmp_path, RunResult(Status.DIVERGED, error="grad norm became inf at step 3"))
    with pytest.raises(UserError, match="has status 'diverged'.*a clinical head needs a completed run"):
        require_completed(tmp_path, "a clinical head")


def test_results_schema_is_what_collect_writes_and_a_minimal_table_still_reads(tmp_path):
    from analysis.table import load_results

    schema = results_schema(["auroc/icu_admission"])
    assert schema.names == [c for c, _ in RESULTS_COLUMNS] + ["auroc/icu_admission"]
    assert schema.field("auroc/icu_admission").type == pa.float64() and schema.field("tokens").type == pa.int64()
    # DESIGN.md section 5: n_params, tokens, flops, loss are enough
    minimal = tmp_path / "minimal.parquet"
    pq.write_table(pa.table({"n_params": [1e6, 2e6, 4e6], "tokens": [4e7, 2e7, 1e7], "flops": [2.4e14] * 3,
                             "loss": [3.1, 3.0, 3.2]}), minimal)
    res = load_results(minimal)
    assert res.n == 3 and list(res.loss) == [3.1, 3.0, 3.2]
    pq.write_table(pa.table({"n_params": [1e6], "loss": [3.0]}), minimal)
    with pytest.raises(UserError, match="lacks column tokens"):
        load_results(minimal)
    assert RESULTS_REQUIRED == ("n_params", "tokens")


def test_plan_table_of_the_wrong_type_is_refused_naming_the_column(synth_tokens, tmp_path):
    from sweeps.plan import PLAN_PARQUET, load_sweep, plan_schema, plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, budgets=[1e9, 2.5e9], sizes=3, context=64, train={"batch_size": 8})
    _, rows = load_sweep(out)
    assert pq.read_table(out / PLAN_PARQUET).schema.equals(plan_schema()) and len(rows) >= 2
    table = pq.read_table(out / PLAN_PARQUET)
    i = table.schema.get_field_index("tokens")
    pq.write_table(table.set_column(i, "tokens", pa.array([str(t) for t in table["tokens"].to_pylist()])), out / PLAN_PARQUET)
    with pytest.raises(UserError, match=rf"column\(s\) of the wrong type: tokens \(string, not int64\) \({len(rows)} rows\)"):
        load_sweep(out)


def test_a_checkpoint_that_is_not_the_measured_model_is_refused_by_every_consumer(tiny_run, synth_tokens, tmp_path):
    """Before: the heads and `export`/`ehrfm.load_model` took whatever checkpoint sat in a completed run
    dir: another run's (a probe's metrics.json said d_model 48 beside a result of 32) or an interrupted
    copy's step-8 checkpoint, scored as the completed 157-step model. `ehrfm train` refused both on
    resume; a finished run's consumers now do too, naming what differs."""
    import shutil

    import ehrfm
    from ehrfm.clinical.model_io import load_run
    from ehrfm.config import TrainConfig
    from ehrfm.tokens import TokenDir
    from ehrfm.train import train

    steps = json.loads((tiny_run / "result.json").read_text())["steps"]
    require_completed(tiny_run, "a clinical head")  # its own checkpoint passes
    other = tmp_path / "other"
    assert train(TrainConfig(tokens_dir=str(synth_tokens), out_dir=str(other), n_layer=1, d_model=16, n_head=2,
                             context=128, tokens=4096, batch_size=8, seed=0))["status"] == "completed"
    shape = tmp_path / "shape"
    shutil.copytree(tiny_run, shape)
    shutil.rmtree(shape / "checkpoint")
    shutil.copytree(other / "checkpoint", shape / "checkpoint")
    for load in (lambda: ehrfm.load_model(shape), lambda: load_run(shape, TokenDir(synth_tokens)),
                 lambda: require_completed(shape / "checkpoint", "loading its model")):
        with pytest.raises(UserError) as e:
            load()
        assert f"run {shape}: its checkpoint is not the model its result.json measured" in str(e.value)
        assert "n_layer 1 in the checkpoint vs 2 in result.json; d_model 16 in the checkpoint vs 32" in str(e.value)
    early = tmp_path / "early"
    shutil.copytree(tiny_run, early)
    state = json.loads((early / "checkpoint" / "state.json").read_text())
    write_state(early / "checkpoint" / "state.json", {**state, "step": 8, "status": "interrupted"})
    with pytest.raises(UserError, match=f"its state.json records status 'interrupted'; step 8 in the checkpoint vs "
                                        f"steps {steps} in result.json"):
        ehrfm.load_model(early)
