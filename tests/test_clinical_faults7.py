"""A seventh clinical review: eight faults of the heads, each test failing without its fix.

Pretraining subjects among the scored ones, zoned label times, patient-blind cross-validation and
early stopping, intervals from one patient, --max-labels checks, option ranges, calibration of
constant scores, hidden files in label dirs.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from test_heads import VOCAB, make_cohort, save_random_run, write_token_dir

from ehrfm.errors import UserError

T0 = datetime(2150, 1, 1)


# 1 ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A hand-made cohort's token dir and a run whose config.json records it as its pretraining data."""
    from ehrfm.tokens import TokenDir

    root = tmp_path_factory.mktemp("pretrained")
    tok, labels = make_cohort(root)
    run = save_random_run(root / "run", len(VOCAB), TokenDir(tok).fingerprint)
    (run / "config.json").write_text(json.dumps({"train": {"tokens_dir": str(tok.resolve())}}))
    return root, tok, labels, run


def _resplit(tok, out):
    """The same subjects and timelines, split again: train's first 20 become held_out, held_out's go to train."""
    from ehrfm.tokens import TokenDir

    td = TokenDir(tok)
    events = {}
    for name in td.splits:
        sp = td.split(name)
        events[name] = [(int(s), [(VOCAB[t], datetime(1970, 1, 1) + timedelta(microseconds=int(u)))
                                  for t, u in zip(*sp.subject(i), strict=True)]) for i, s in enumerate(sp.subject_ids)]
    new = {"train": events["train"][20:] + events["held_out"], "tuning": events["tuning"], "held_out": events["train"][:20]}
    return write_token_dir(out, new)


def test_heads_refuse_held_out_subjects_the_run_was_pretrained_on(pretrained, tmp_path, capsys):
    """Before: a token dir made with the run's tokenizer from a re-split MEDS was accepted, and the
    probe scored held_out patients whose timelines the model was trained on. Now load_run (every
    token head: probe, finetune, zeroshot) refuses it, with counts; the run's own token dir passes."""
    from ehrfm.clinical.model_io import load_run
    from ehrfm.clinical.probe import ProbeConfig, probe
    from ehrfm.tokens import TokenDir

    root, tok, labels, run = pretrained
    tok2 = _resplit(tok, tmp_path / "tok2")
    assert TokenDir(tok2).fingerprint == TokenDir(tok).fingerprint  # the run's tokenizer: the vocab check passes
    with pytest.raises(UserError) as e:
        probe(ProbeConfig(str(run), str(tok2), str(labels), bootstrap=0), tmp_path / "p")
    msg = str(e.value)
    assert "20 of 20 held_out subjects were in the train split of the run's pretraining token dir" in msg
    assert "tuning" not in msg.split("subjects were")[0] and "\n" not in msg
    assert not (tmp_path / "p").exists()
    load_run(run, TokenDir(tok))  # its own split: no error
    # the pretraining token dir gone: one warning per run and process, no error
    moved = tmp_path / "run_moved"
    shutil.copytree(run, moved)
    (moved / "config.json").write_text(json.dumps({"train": {"tokens_dir": str(tmp_path / "gone")}}))
    capsys.readouterr()
    load_run(moved, TokenDir(tok2))
    load_run(moved, TokenDir(tok2))
    err = capsys.readouterr().err
    assert err.count("could not check") == 1 and "gone" in err
    # a damaged config.json is refused, not read as one without the record (the check was skipped
    # silently and held_out patients the model was pretrained on were scored)
    cut = tmp_path / "run_cut"
    shutil.copytree(run, cut)
    text = (run / "config.json").read_text()
    for damaged, says in ((text[: len(text) // 2], "is damaged: not valid JSON"),
                          ('{"train": [1]}', "its train entry is a JSON list"),
                          ('{"train": {"tokens_dir": 7}}', "its train.tokens_dir is a JSON int")):
        (cut / "config.json").write_text(damaged)
        with pytest.raises(UserError, match=f"run config {cut / 'config.json'} {'is damaged' if 'damaged' in says else ''}") as e:
            load_run(cut, TokenDir(tok2))
        assert says in str(e.value)


# 2 ---------------------------------------------------------------------------------------------
def test_zoned_prediction_times_are_read_as_utc_instants_like_zoned_meds(tmp_path, capsys):
    """Before: a zoned prediction_time was refused with advice to strip the zone, which put labels
    1-2 h after the UTC token times of zoned MEDS data (look-ahead). Now it is converted to naive
    UTC exactly as meds_io.scan_shard converts zoned MEDS times, with one warning."""
    from ehrfm.clinical.labels import read_labels
    from ehrfm.meds_io import scan_shard

    lab = pl.DataFrame({"subject_id": [1, 2, 3], "prediction_time": [T0, T0 + timedelta(hours=1), datetime(2021, 7, 1, 8)],
                        "boolean_value": [True, False, True]})
    zoned = lab.with_columns(pl.col("prediction_time").dt.replace_time_zone("Europe/Berlin"))
    zoned.write_parquet(tmp_path / "zoned.parquet")
    zoned.rename({"prediction_time": "time"}).with_columns(code=pl.lit("X")).write_parquet(tmp_path / "shard.parquet")
    capsys.readouterr()
    got = read_labels(tmp_path / "zoned.parquet")
    read_labels(tmp_path / "zoned.parquet")
    # Berlin is UTC+1 in winter, UTC+2 in summer: 00:00 -> 23:00 the day before, 08:00 (July) -> 06:00
    assert got["prediction_time"].to_list() == [T0 - timedelta(hours=1), T0, datetime(2021, 7, 1, 6)]
    assert got["prediction_time"].dtype == pl.Datetime("us") and got["prediction_time"].dtype.time_zone is None
    shard_times = scan_shard(tmp_path / "shard.parquet").collect()["time"]
    assert shard_times.to_list() == got["prediction_time"].to_list()  # the same clock as the data
    err = capsys.readouterr().err
    assert err.count("column prediction_time has time zone Europe/Berlin") == 1 and "UTC" in err


# 3 ---------------------------------------------------------------------------------------------
def _per_patient_noise(n_pat=60, stays=5, seed=0):
    rng = np.random.default_rng(seed)
    pat_x = rng.normal(size=(n_pat, 40))
    pat_y = rng.random(n_pat) < 0.4  # unrelated to the features
    x = np.repeat(pat_x, stays, axis=0) + 0.01 * rng.normal(size=(n_pat * stays, 40))
    return x, np.repeat(pat_y, stays).astype(np.int64), np.repeat(np.arange(n_pat), stays)


def test_cross_validated_c_keeps_each_patients_stays_in_one_fold():
    """Before: with a one-class tuning split, C was chosen on StratifiedKFold folds that shared
    patients: on per-patient noise the CV AUROC was ~1 and the weakest regularisation won. With
    the subjects given, the folds are grouped (StratifiedGroupKFold): the AUROC is chance."""
    from ehrfm.clinical.common import fit_logistic

    x, y, g = _per_patient_noise()
    x_tu, y_tu = np.zeros((5, 40)), np.zeros(5, np.int64)
    _, blind = fit_logistic(x, y, x_tu, y_tu, seed=0, task="t")
    _, rec = fit_logistic(x, y, x_tu, y_tu, seed=0, task="t", groups_train=g)
    assert blind["auroc_by_C"][str(blind["C"])] > 0.95  # what the patient-blind folds reported
    assert rec["selected_on"] == "train 5-fold CV grouped by subject"
    assert max(rec["auroc_by_C"].values()) < 0.75


def test_boosting_early_stopping_holds_back_whole_patients():
    """Before: gradient boosting's early stopping held back a stratified 10% of train labels
    (sklearn's validation_fraction), a patient's stays on both sides. Now ~10% of subjects."""
    from ehrfm.clinical.baseline import boosting_validation

    _, y, g = _per_patient_noise()
    fit, val = boosting_validation(y, g, seed=0)
    assert set(g[fit]).isdisjoint(g[val]) and len(fit) + len(val) == len(y)
    assert len(set(g[val])) == 6 and set(y[val]) == {0, 1} and set(y[fit]) == {0, 1}
    # 15 subjects, 7 with a positive label: fewer per class than 10 folds, still split (on subjects, not labels)
    y15, g15 = np.repeat(np.r_[np.ones(7), np.zeros(8)], 6).astype(np.int64), np.repeat(np.arange(15), 6)
    y15[::12] = 0  # a positive subject's stays are not all positive
    for seed in range(5):
        fit, val = boosting_validation(y15, g15, seed)
        assert set(g15[fit]).isdisjoint(g15[val]) and 1 <= len(set(g15[val])) <= 3 and set(y15[val]) == {0, 1}
    # two subjects, one per class: no split by subject holds both classes on both sides
    reason = boosting_validation(np.r_[np.ones(20), np.zeros(20)].astype(np.int64), np.r_[np.zeros(20), np.ones(20)], 0)
    assert isinstance(reason, str) and "40 train labels (20 positive) of 2 subjects" in reason


# 4 ---------------------------------------------------------------------------------------------
def test_no_interval_from_positives_of_one_patient():
    """Before: 12 positive labels of ONE patient passed the 10-label rule and got a cluster
    bootstrap interval resting on one positive unit (and auroc_se None beside it)."""
    from ehrfm.clinical.metrics import MIN_CLASS_FOR_INTERVAL, binary_metrics

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(12), np.zeros(200)].astype(int)
    p = rng.random(212)
    m = binary_metrics(y, p, "t", 200, 0, np.r_[np.full(12, 999), np.arange(200)])
    assert m["auroc_ci"] is None and m["auprc_ci"] is None and m["auroc"] is not None
    assert "12 positive and 200 negative labels from 1 and 200 subjects" in m["note"]
    # 10 positive patients (12 labels): an interval
    groups = np.r_[np.arange(10), 0, 1, np.arange(100, 300)]
    assert MIN_CLASS_FOR_INTERVAL == 10 and binary_metrics(y, p, "t", 200, 0, groups)["auroc_ci"] is not None


# 5 ---------------------------------------------------------------------------------------------
def test_baseline_checks_every_row_before_max_labels(tmp_path):
    """Before: baseline.prepare subsampled (--max-labels) before checking prediction times, so a
    file with 2 rows outside the data ran or named 1 row depending on the seed; the token heads
    check the whole file. Now the baseline names 2 rows whatever the seed."""
    from bad_labels import with_prediction_time
    from test_baseline import cohort_events, split_meds

    from ehrfm.clinical.baseline import BaselineConfig, prepare
    from ehrfm.clinical.labels import make_labels, write_labels

    n = 120
    meds = split_meds(tmp_path / "meds", cohort_events(n, seed=1), n)
    labels, info = make_labels(meds, "in_hospital_mortality")
    write_labels(labels, tmp_path / "lab.parquet", info)
    bad = with_prediction_time(tmp_path / "lab.parquet", tmp_path / "bad.parquet", 2, datetime(2300, 1, 1))
    for seed in range(4):
        with pytest.raises(UserError, match="2 rows have a prediction_time outside"):
            prepare(BaselineConfig(str(meds), str(bad), max_labels=5, seed=seed, bootstrap=0))
    lab, x, _ = prepare(BaselineConfig(str(meds), str(tmp_path / "lab.parquet"), max_labels=5, bootstrap=0))
    assert lab.height == 15 and x.shape[0] == 15  # 5 per split, still


# 6 ---------------------------------------------------------------------------------------------
# Each head's positional arguments and required flags: the range checks refuse before any is read.
HEAD_ARGS = {head: [head, "R", "--tokens", "T", "--labels", "L", "--out", "O"] for head in ("finetune", "probe", "zeroshot")}
HEAD_ARGS["baseline"] = ["baseline", "M", "--labels", "L", "--out", "O"]


@pytest.mark.parametrize("argv,line", [
    ([*HEAD_ARGS["finetune"], "--epochs", "0"], "--epochs (FinetuneConfig.max_epochs) must be a number >= 1, not 0"),
    ([*HEAD_ARGS["finetune"], "--batch-size", "0"], "--batch-size (FinetuneConfig.batch_size) must be a number >= 1, not 0"),
    ([*HEAD_ARGS["finetune"], "--lr", "0"], "--lr (FinetuneConfig.lr) must be a number > 0, not 0.0"),
    ([*HEAD_ARGS["finetune"], "--patience", "0"], "--patience (FinetuneConfig.patience) must be a number >= 1, not 0"),
    ([*HEAD_ARGS["probe"], "--batch-size", "0"], "--batch-size (ProbeConfig.batch_size) must be a number >= 1, not 0"),
    ([*HEAD_ARGS["probe"], "--max-labels", "-1"], "--max-labels (ProbeConfig.max_labels) must be a number >= 1, not -1"),
    ([*HEAD_ARGS["probe"], "--context", "0"], "--context (ProbeConfig.context) must be a number >= 1, not 0"),
    ([*HEAD_ARGS["probe"], "--bootstrap", "-5"], "--bootstrap (ProbeConfig.bootstrap) must be a number >= 0, not -5"),
    ([*HEAD_ARGS["probe"], "--seed", "-1"], "--seed (ProbeConfig.seed) must be a number >= 0, not -1"),
    ([*HEAD_ARGS["zeroshot"], "--temperature", "nan"], "--temperature (ZeroShotConfig.temperature) must be a number > 0, not nan"),
    ([*HEAD_ARGS["zeroshot"], "--temperature", "1e-40"], "--temperature (ZeroShotConfig.temperature) 1e-40 is below 1e-06: "
     "the logits divided by it overflow float32 (at 1e-06 the rollouts already take the most likely token)"),
    ([*HEAD_ARGS["zeroshot"], "--context", "1"], "--context (ZeroShotConfig.context) must be at least 2 for rollouts "
     "(each new token sees the last context - 1), not 1"),
    ([*HEAD_ARGS["zeroshot"], "--samples", "0"], "--samples (ZeroShotConfig.n_samples) must be a number >= 1, not 0"),
    ([*HEAD_ARGS["zeroshot"], "--batch-size", "0"], "--batch-size (ZeroShotConfig.batch_size) must be a number >= 1, not 0"),
    ([*HEAD_ARGS["baseline"], "--max-labels", "-1"], "--max-labels (BaselineConfig.max_labels) must be a number >= 1, not -1"),
    ([*HEAD_ARGS["baseline"], "--min-count", "-1"], "--min-count (BaselineConfig.min_count) must be a number >= 0, not -1"),
])
def test_head_options_out_of_range_are_one_line_before_any_work(argv, line, capsys, tmp_path, monkeypatch):
    """Before: finetune --epochs 0, --batch-size 0, --max-labels -1 (and the like) ended in
    tracebacks after the model was loaded and every history embedded. Now every numeric option of
    every head is checked when its config is made: one line, exit 2, before any file is read
    (the paths here do not exist)."""
    from ehrfm.app.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"ehrfm {argv[0]}: error: {line}"
    assert not (tmp_path / "O").exists()


# 7 ---------------------------------------------------------------------------------------------
def test_constant_scores_have_no_calibration_slope():
    """Before: constant scores (a zero-shot run with no decided rollout, a collapsed head) got a
    calibration intercept and slope (1.39 here) from an unidentifiable fit. Now None for both."""
    from ehrfm.clinical.metrics import binary_metrics

    y = np.r_[np.ones(12), np.zeros(200)].astype(int)
    for c in (0.3, 0.0, 1.0):
        cal = binary_metrics(y, np.full(212, c), "t", 0, 0)["calibration"]
        assert cal["intercept"] is None and cal["slope"] is None and cal["mean_predicted"] == pytest.approx(c)
    p = np.r_[np.full(12, 0.3), np.full(200, 0.05)]  # two values: identifiable, still fitted
    assert binary_metrics(y, p, "t", 0, 0)["calibration"]["slope"] is not None


# 8 ---------------------------------------------------------------------------------------------
def test_label_readers_leave_out_hidden_files(tmp_path):
    """Before: a one-task sharded label dir with a Jupyter checkpoint copy was refused as "several
    files" (naming the hidden copy as the one to pass), and a dir with a macOS ._ copy was read
    with it. Now hidden files (a '.' name anywhere below the dir) are left out, as MEDS readers do."""
    from ehrfm.clinical.labels import head_labels, label_shards, read_labels, task_label_paths

    lab = pl.DataFrame({"subject_id": [1, 2], "prediction_time": [T0] * 2, "boolean_value": [True, False]})
    task = tmp_path / "icu_admission"
    for s in ("train", "tuning", "held_out"):
        (task / s).mkdir(parents=True)
        lab.with_columns(pl.col("subject_id") + {"train": 0, "tuning": 10, "held_out": 20}[s]).write_parquet(task / s / "0.parquet")
    (task / ".ipynb_checkpoints").mkdir()
    lab.write_parquet(task / ".ipynb_checkpoints" / "0-checkpoint.parquet")
    (task / "held_out" / "._0.parquet").write_bytes(b"\0\0AppleDouble")  # not even parquet
    assert head_labels(task) == (task, "icu_admission")
    assert len(label_shards(task)) == 3
    assert read_labels(task)["subject_id"].to_list() == [1, 2, 11, 12, 21, 22]
    assert task_label_paths(tmp_path) == {"icu_admission": task}
    one = tmp_path / "one"
    one.mkdir()
    lab.write_parquet(one / "mortality.parquet")
    lab.write_parquet(one / "._mortality.parquet")
    assert head_labels(one) == (one / "mortality.parquet", "mortality")
    assert task_label_paths(one) == {"mortality": one / "mortality.parquet"}
