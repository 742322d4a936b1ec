"""A third ecosystem break-it pass: a user's own data and tools beside ehrfm, each test failing without its fix."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from test_heads import VOCAB, make_cohort, save_random_run, write_token_dir


# 1 ---------------------------------------------------------------------------------------------
def _timelines(tok, shift_days: int = 0) -> dict:
    """{split: [(subject_id, [(token, time)])]} of a token dir, every time moved by shift_days * subject_id."""
    from datetime import datetime

    from ehrfm.tokens import TokenDir

    td = TokenDir(tok)
    out = {}
    for name in td.splits:
        sp = td.split(name)
        out[name] = [(int(s), [(VOCAB[t], datetime(1970, 1, 1) + timedelta(microseconds=int(u), days=shift_days * int(s)))
                               for t, u in zip(*sp.subject(i), strict=True)]) for i, s in enumerate(sp.subject_ids)]
    return out


def test_another_dataset_with_the_same_subject_ids_is_not_pretrained_on(tmp_path):
    """Before: the heads refused any token dir whose tuning/held_out subject ids were in the run's
    pretraining train split, even another dataset tokenized with the run's tokenizer (external
    validation) that merely numbers its patients alike: the default demo's 44,000 synthetic ids
    (10000000 + i) span the MIMIC-IV demo's, so a demo-pretrained model could not be probed on it.
    Now a subject counts as seen when its id matches and its timeline starts at the same instant
    (a re-split of the same data, still refused)."""
    from ehrfm.clinical.model_io import load_run
    from ehrfm.errors import UserError
    from ehrfm.tokens import TokenDir

    tok, _ = make_cohort(tmp_path / "a")
    run = save_random_run(tmp_path / "run", len(VOCAB), TokenDir(tok).fingerprint)
    (run / "config.json").write_text(json.dumps({"train": {"tokens_dir": str(tok.resolve())}}))
    pre = _timelines(tok)
    # another hospital: its held_out patients carry ids 1..20 (train ids of the run), with their own times
    other = _timelines(tok, shift_days=3)
    other = {"train": other["tuning"], "tuning": other["held_out"], "held_out": other["train"][:20]}
    ext = write_token_dir(tmp_path / "ext", other)
    assert TokenDir(ext).fingerprint == TokenDir(tok).fingerprint
    load_run(run, TokenDir(ext))  # no error: not the run's patients
    # the same patients re-split (same timelines): refused as before
    resplit = write_token_dir(tmp_path / "resplit", {"train": pre["tuning"], "tuning": pre["held_out"],
                                                      "held_out": pre["train"][:20]})
    with pytest.raises(UserError, match="20 of 20 held_out subjects were in the train split"):
        load_run(run, TokenDir(resplit))
    # both made from one MEDS dir (recorded in their config.json): the ids alone, whatever the times
    for d in (tok, ext):
        (d / "config.json").write_text(json.dumps({"meds_dir": str(tmp_path)}))
    with pytest.raises(UserError, match="20 of 20 held_out subjects were in the train split"):
        load_run(run, TokenDir(ext))



# 2 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset_json", [None, "[]", '{"dataset_name": "x"}'])
def test_demo_report_of_own_meds_without_dataset_json_names_no_etl(tmp_path, dataset_json):
    """Before: `ehrfm demo --meds MEDS` read MEDS/metadata/dataset.json strictly when writing the report,
    after the whole sweep and every head: a MEDS dir without it (optional for every ehrfm reader; not
    all tools write it) failed with "dataset metadata ... not found" (a JSON list: a traceback), on
    every rerun; a file without etl_name credited ehrfm's ETL. Now the report says what is not recorded."""
    from datetime import datetime

    from test_labels import stay, write_meds

    from ehrfm.app.demo import DemoConfig, _data_section

    meds = write_meds(tmp_path / "meds", stay(1, datetime(2150, 1, 1), datetime(2150, 1, 3)))
    if dataset_json is not None:
        (meds / "metadata").mkdir()
        (meds / "metadata" / "dataset.json").write_text(dataset_json)
    stats = {"vocab_size": 40, "splits": {"train": {"subjects": 1, "events": 4, "tokens": 6, "tokens_per_subject": 6}}}
    cfg = DemoConfig(meds=str(meds))
    lines = _data_section(cfg, meds, stats, None, [], "no hospital stays")
    assert f"The MEDS dataset `{meds}` (ETL not recorded, MEDS version not recorded) -> tokens" in lines[2]


# 3 ---------------------------------------------------------------------------------------------
def test_sweep_launch_checks_the_logger_of_the_environment_before_any_job(synth_tokens, tmp_path):
    """Before: `EHRFM_LOGGER=tensorbaord ehrfm sweep launch` (a typo, or wandb not installed) checked only
    --logger: it submitted every job, each failed with the logger error, and launch exited 0 (on SLURM,
    after queueing). Now launch says it in one line, exit 2, and submits nothing."""
    import os
    import subprocess
    import sys

    from sweeps.plan import plan_sweep

    out = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=out, budgets=[1e9], sizes=2, context=64, train={"batch_size": 8})
    env = {**os.environ, "EHRFM_QUIET": "1", "EHRFM_LOGGER": "tensorbaord"}
    p = subprocess.run([sys.executable, "-m", "ehrfm", "sweep", "launch", str(out), "--executor", "local"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.strip() == ("ehrfm sweep launch: error: environment variable EHRFM_LOGGER='tensorbaord': unknown logger "
                                "'tensorbaord'; choose one of none, tensorboard, wandb")
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


# 4 ---------------------------------------------------------------------------------------------
def test_logger_none_overrides_the_environment(synth_tokens, tmp_path):
    """Before: `ehrfm train --logger none` was the default value, indistinguishable from no flag, so the run
    took $EHRFM_LOGGER anyway (TensorBoard files written; with EHRFM_LOGGER=wandb and no wandb, the run
    was refused), and `sweep launch` had no `none` at all. Now an explicit none wins in both."""
    import os
    import subprocess
    import sys

    pytest.importorskip("tensorboard")
    from sweeps.plan import plan_sweep

    env = {**os.environ, "EHRFM_QUIET": "1", "EHRFM_LOGGER": "tensorboard"}
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "ehrfm", "train", str(synth_tokens), "--out", str(run), "--n-layer", "1",
                        "--d-model", "16", "--n-head", "2", "--context", "32", "--tokens", "640", "--logger", "none"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert not list(run.glob("events.out.tfevents*"))
    sweep = tmp_path / "sweep"
    plan_sweep(synth_tokens, out=sweep, budgets=[1e9], sizes=2, context=64, train={"batch_size": 8})
    p = subprocess.run([sys.executable, "-m", "ehrfm", "sweep", "launch", str(sweep), "--executor", "local", "--dry-run",
                        "--logger", "none"], capture_output=True, text=True, env={**env, "EHRFM_LOGGER": "wandb"})
    assert p.returncode == 0, p.stderr[-2000:]


# 5 ---------------------------------------------------------------------------------------------
def test_demo_checks_the_logger_of_the_environment_before_any_stage(tmp_path, monkeypatch):
    """Before: `EHRFM_LOGGER=tensorbaord ehrfm demo` ran synth, ETL and tokenize (minutes; the default
    demo's 44,000 patients far longer) before its sweep launch refused the logger. Now the demo's
    up-front checks (those of where its runs execute) name it before any stage."""
    from ehrfm.app.demo import DemoConfig, _check_where_it_runs
    from ehrfm.errors import UserError

    monkeypatch.setenv("EHRFM_LOGGER", "tensorbaord")
    cfg, _ = DemoConfig(out=str(tmp_path / "demo"), quick=True).checked()
    with pytest.raises(UserError, match="environment variable EHRFM_LOGGER='tensorbaord': unknown logger"):
        _check_where_it_runs(cfg)


# 6 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["shard", "subject_splits", "labels"])
def test_a_parquet_column_named_twice_is_named_by_every_reader(tmp_path, capsys, where):
    """Before: a parquet file with a column named twice (pyarrow writes them, e.g. after a join that kept
    both sides' column) was "not a readable parquet file" for a MEDS shard or a label file, and a
    traceback (polars DuplicateError) for metadata/subject_splits.parquet. Now one line names the file,
    the column and how often it appears."""
    from datetime import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_labels import stay, write_meds
    from test_meds_reader import one_error_line

    from ehrfm.app.cli import main

    def twice(t: pa.Table, name: str) -> pa.Table:
        return pa.Table.from_arrays([*t.columns, t[name]], names=[*t.column_names, name])

    meds = write_meds(tmp_path / "meds", stay(1, datetime(2150, 1, 1), datetime(2150, 1, 3)) +
                      stay(2, datetime(2150, 2, 1), datetime(2150, 2, 12)))
    shard = meds / "data" / "train" / "0.parquet"
    labels = tmp_path / "long_los.parquet"
    pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()),
                             "prediction_time": pa.array([datetime(2150, 1, 2), datetime(2150, 2, 2)], pa.timestamp("us")),
                             "boolean_value": [False, True]}), labels)
    if where == "shard":
        bad, column, argv = shard, "code", ["tokenize", str(meds), "--out", str(tmp_path / "tok")]
    elif where == "subject_splits":  # a flat layout (meds_etl): the splits come from the file
        shard.rename(meds / "data" / "0.parquet")
        (meds / "data" / "train").rmdir()
        (meds / "metadata").mkdir()
        bad, column = meds / "metadata" / "subject_splits.parquet", "split"
        pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()), "split": ["train", "train"]}), bad)
        argv = ["tokenize", str(meds), "--out", str(tmp_path / "tok")]
    else:
        bad, column, argv = labels, "boolean_value", ["baseline", str(meds), "--labels", str(labels), "--out", str(tmp_path / "b")]
    pq.write_table(twice(pq.read_table(bad), column), bad)
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"{bad}: column {column!r} appears 2 times" in line, line
    assert not (tmp_path / "tok").exists() and not (tmp_path / "b").exists()
