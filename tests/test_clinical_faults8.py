"""An eighth clinical review of the heads (probe, finetune, zeroshot, sweep collect --labels): each
test fails without its fix (checked against the code as it was before it).
"""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
import torch
from test_heads import T0, VOCAB, make_cohort, save_random_run

from ehrfm.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _uniform_run(root, tok):
    """A real checkpoint whose logits are all zero: every token is sampled with chance 1/12."""
    from ehrfm.checkpoint import load_model, save_checkpoint
    from ehrfm.tokens import TokenDir

    run = save_random_run(root / "random_run", len(VOCAB), TokenDir(tok).fingerprint)
    model, _ = load_model(run)
    with torch.no_grad():
        model.head.weight.zero_()
    save_checkpoint(root / "flat_run", model, None, json.loads((run / "checkpoint" / "state.json").read_text()))
    (root / "flat_run" / "result.json").write_text(json.dumps({"status": "completed"}))
    return root / "flat_run"


# 1 ---------------------------------------------------------------------------------------------
def test_zeroshot_icu_rollouts_leave_out_direct_icu_admissions(tmp_path):
    """Before: an ICU admission sampled right after the hospital admission (no interval token: under
    5 min) counted as the outcome, though `ehrfm labels` excludes such a stay (admitted_directly_to_icu):
    P(ICU) held futures that have no label, as readmission's transfers did before their rule. Now the
    rollout ends "transferred" (transfer_share), left out of the share; --direct-icu-minutes 0 in the
    label sidecar turns the rule off.

    Uniform sampling over 12 tokens: outcome ICU_ADMISSION, competing DISCHARGE and MEDS_DEATH,
    TIMELINE_END (an end of record: undecided, test 7), and the interval token 1h-2h. Direct (ICU first
    of those five): 1/5. Outcome after an interval: 1/5 * 1/4; discharge 1/5 + 1/5 * 1/4 = 1/4, death
    1/4. Of the discharges 5/16 are transfers (an admission within 1 h, test 9), 11/16 decide. Share
    among decided: (1/20) / (1/20 + 1/4 + 11/64) = 16/151 (before: 1/3; 1/11 before test 9's rule);
    transfers 1/5 + 5/64. Since the outcome is followed to its stay's end (test 10): of the ICU admissions
    reached, 1/3 end in a death (the outcome), 1/3 in a discharge of which 11/16 decide (the outcome) and
    5/16 are transfers, 1/3 in an end of record (undecided): outcome 9/16 of them, share (9/320) / (9/320 +
    1/4 + 11/64) = 1/16, transfers 1/5 + 5/64 + 1/192."""
    from ehrfm.clinical.zeroshot import ZeroShotConfig, zeroshot
    from ehrfm.tokens import TokenDir

    tok, labels = make_cohort(tmp_path)
    tz = json.loads((tok / "tokenizer.json").read_text())
    tz["interval_tokens"] = [{"token": "1h-2h", "min_us": 3_600_000_000}]
    (tok / "tokenizer.json").write_text(json.dumps(tz))
    assert TokenDir(tok).fingerprint  # the run below records this tokenizer
    run = _uniform_run(tmp_path, tok)
    icu = tmp_path / "icu_admission.parquet"  # predicted at the admission (T0), as `ehrfm labels` does
    pl.read_parquet(labels).with_columns(pl.lit(T0).cast(pl.Datetime("us")).alias("prediction_time")).write_parquet(icu)
    cfg = ZeroShotConfig(str(run), str(tok), str(icu), n_samples=100, max_new_tokens=64, bootstrap=0, seed=1)
    m = zeroshot(cfg, tmp_path / "zs")
    p = pl.read_parquet(tmp_path / "zs" / "predictions.parquet")["predicted_boolean_probability"].mean()
    # 20 labels x 100 rollouts: ~1,600 decided, sd of the share ~0.007
    assert abs(p - 1 / 16) < 0.03, p
    assert abs(m["transfer_share"] - (1 / 5 + 5 / 64 + 1 / 192)) < 0.04 and m["direct_icu_minutes"] == 5.0
    # the label file's own window: 0 minutes, no stay is direct, every ICU admission is the outcome (vs discharge,
    # death), followed to its stay's end: 1/4 * 9/16 / (1/4 * 9/16 + 1/4 + 1/4 * 11/16) = 1/4, transfers only after a
    # discharge: 5/64 + 1/4 * 5/48
    (tmp_path / "icu_admission.json").write_text(json.dumps({"task": "icu_admission", "config": {"direct_icu_minutes": 0.0}}))
    m0 = zeroshot(cfg, tmp_path / "zs0")
    p0 = pl.read_parquet(tmp_path / "zs0" / "predictions.parquet")["predicted_boolean_probability"].mean()
    assert abs(p0 - 1 / 4) < 0.04 and abs(m0["transfer_share"] - 5 / 48) < 0.02


# 2 ---------------------------------------------------------------------------------------------
def test_a_labels_dir_with_two_files_of_one_task_is_refused(tmp_path):
    """Before: `ehrfm labels --task long_los --long-los-days 3 --out LABELS/los3.parquet` beside
    LABELS/long_los.parquet made two files of task long_los (the sidecar's); sweep collect --labels
    (and the audit) kept the last one silently, so auroc/long_los scored the 3-day labels. Now the dir
    is refused, naming both files."""
    from ehrfm.clinical.audit import _label_files
    from ehrfm.clinical.labels import write_labels
    from ehrfm.clinical.utility import label_files

    rows = pl.DataFrame({"subject_id": [1, 2], "prediction_time": [T0, T0 + timedelta(hours=1)], "boolean_value": [True, False]},
                        schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean})
    lab = tmp_path / "labels"
    lab.mkdir()
    write_labels(rows, lab / "long_los.parquet", {"task": "long_los", "config": {"meds_dir": str(tmp_path / "meds"), "long_los_days": 7.0}})
    write_labels(rows, lab / "los3.parquet", {"task": "long_los", "config": {"meds_dir": str(tmp_path / "meds"), "long_los_days": 3.0}})
    with pytest.raises(UserError, match="long_los.parquet and los3.parquet both hold labels of task long_los"):
        label_files(lab)
    with pytest.raises(UserError, match="both hold labels of task long_los"):  # the audit's reader alike
        _label_files(lab)
    (lab / "los3.parquet").rename(tmp_path / "los3.parquet")
    assert list(label_files(lab)) == ["long_los"]


def test_a_label_dir_with_a_file_and_a_shard_dir_of_one_task_is_refused_and_hints_the_shard_dir(tmp_path):
    """A dir holding long_los.parquet beside an ACES shard dir long_los/<split>/<shard>.parquet is
    refused as two of one task (sweep collect) and as several files (a head). The head's hint named
    one shard (long_los/held_out/0.parquet): followed, it scored a part of that task's labels; it
    names the shard dir now."""
    from ehrfm.clinical.labels import head_labels, task_label_paths

    rows = pl.DataFrame({"subject_id": [1, 2], "prediction_time": [T0, T0 + timedelta(hours=1)], "boolean_value": [True, False]},
                        schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean})
    lab = tmp_path / "labels"
    for shard in ("held_out/0.parquet", "held_out/1.parquet", "train/0.parquet"):
        (lab / "long_los" / shard).parent.mkdir(parents=True, exist_ok=True)
        rows.write_parquet(lab / "long_los" / shard)
    rows.write_parquet(lab / "long_los.parquet")
    with pytest.raises(UserError, match="long_los.parquet and long_los both hold labels of task long_los"):
        task_label_paths(lab)
    with pytest.raises(UserError) as e:
        head_labels(lab)
    assert str(e.value).endswith(f"pass one label file or task shard dir, e.g. --labels {lab / 'long_los'}")
    assert head_labels(lab / "long_los") == (lab / "long_los", "long_los")


# 3 ---------------------------------------------------------------------------------------------
def test_sweep_zeroshot_scores_one_tasks_shard_dir_and_keys_its_cache_on_the_shards(tmp_path):
    """Before: `sweep collect --labels DIR --zeroshot` with one task's ACES shards in DIR
    (<task>/<split>/<shard>.parquet, which the probes and every head read) died with IsADirectoryError
    while hashing the label "file" for its cache key. Now the key covers each shard's path and bytes:
    scored, reused while unchanged, redone when a shard changes."""
    from ehrfm.clinical.zeroshot import score_run_zeroshot
    from ehrfm.tokens import TokenDir

    tok, labels = make_cohort(tmp_path)
    run = save_random_run(tmp_path / "run", len(VOCAB), TokenDir(tok).fingerprint)
    rows = pl.read_parquet(labels)
    task = tmp_path / "aces" / "in_hospital_mortality"
    for i, split in enumerate(("train", "tuning", "held_out")):  # any split folders: the token dir says the split
        (task / split).mkdir(parents=True)
        rows[i::3].write_parquet(task / split / "0.parquet")
    kw = dict(max_labels=8, n_samples=4, cache_dir=tmp_path / "cache")
    a = score_run_zeroshot(run, tok, {"in_hospital_mortality": task}, **kw)
    assert set(a) == {f"zeroshot_{k}/in_hospital_mortality" for k in ("auroc", "auroc_se", "undecided")}
    stamp = (tmp_path / "cache" / "in_hospital_mortality.json").stat().st_mtime_ns
    assert score_run_zeroshot(run, tok, {"in_hospital_mortality": task}, **kw) == a
    assert (tmp_path / "cache" / "in_hospital_mortality.json").stat().st_mtime_ns == stamp  # reused
    # a score cached under older rollout rules (its key without them) is redone, not reused
    cached = json.loads((tmp_path / "cache" / "in_hospital_mortality.json").read_text())
    del cached["key"]["rules"]
    cached["scores"]["zeroshot_auroc/in_hospital_mortality"] = -1.0
    (tmp_path / "cache" / "in_hospital_mortality.json").write_text(json.dumps(cached))
    assert score_run_zeroshot(run, tok, {"in_hospital_mortality": task}, **kw) == a
    rows[2::3].with_columns(~pl.col("boolean_value")).write_parquet(task / "held_out" / "0.parquet")
    b = score_run_zeroshot(run, tok, {"in_hospital_mortality": task}, **kw)
    assert b["zeroshot_auroc/in_hospital_mortality"] != a["zeroshot_auroc/in_hospital_mortality"]


# 4 ---------------------------------------------------------------------------------------------
def test_sweep_zeroshot_rolls_out_the_tasks_it_can_and_names_the_others(tmp_path, capsys):
    """Before: `sweep collect --labels DIR --zeroshot` failed after every run's probes when one task could
    not be rolled out (a hospital without ICU data has no ICU_ADMISSION token; readmission needs interval
    tokens; a task without held_out labels), and left a task outside the four rollout rules without a
    word. The probes already name such tasks and score the others (_scorable_tasks); now the rollouts do."""
    import shutil

    from ehrfm.clinical.zeroshot import score_run_zeroshot
    from ehrfm.tokens import TokenDir
    from sweeps.collect import _zeroshot_tasks

    tok, mortality = make_cohort(tmp_path)
    run = save_random_run(tmp_path / "run", len(VOCAB), TokenDir(tok).fingerprint)
    lab = tmp_path / "labels"
    lab.mkdir()
    shutil.copy(mortality, lab / "in_hospital_mortality.parquet")
    shutil.copy(mortality, lab / "readmission_30d.parquet")  # this token dir has no interval tokens
    shutil.copy(mortality, lab / "mortality_aces.parquet")  # no rollout rule of that name
    held_out = TokenDir(tok).split("held_out").subject_ids
    pl.read_parquet(mortality).filter(~pl.col("subject_id").is_in(held_out.tolist())).write_parquet(lab / "icu_admission.parquet")
    labels = {p.stem: p for p in sorted(lab.glob("*.parquet"))}
    with pytest.raises(UserError):  # what every run's rollouts met
        score_run_zeroshot(run, tok, labels, max_labels=4, n_samples=2)
    capsys.readouterr()
    assert _zeroshot_tasks(tok, labels, 200, 0) == {"in_hospital_mortality": lab / "in_hospital_mortality.parquet"}
    err = capsys.readouterr().err
    for task, why in (("icu_admission", "no labels in the held_out split"), ("mortality_aces", "zero-shot rollouts follow the rules of"),
                      ("readmission_30d", "lists no interval tokens")):
        assert why in err and f"{task}.parquet): no zero-shot columns" in err
    # one line per task left out; the mortality labels copied under other tasks' names are also audited as those
    # tasks (warn_outcome_in_history), and any other line is such a look-ahead warning
    lines = err.strip().splitlines()
    assert sum("no zero-shot columns" in line for line in lines) == 3
    assert all("no zero-shot columns" in line or "may hold their" in line for line in lines), err


# 5 ---------------------------------------------------------------------------------------------
def test_a_task_other_than_the_one_a_label_file_is_named_after_is_refused(tmp_path, capsys):
    """Before: only a sidecar's task was checked, so `ehrfm zeroshot --labels aces/in_hospital_mortality.parquet
    --task icu_admission` (an ACES output named by its config, no sidecar) rolled mortality labels out
    with the ICU rule and wrote an AUROC of the wrong question. Now a file or shard dir named after
    another task is refused with one line; a name that is no task (los.parquet) still takes --task."""
    import shutil

    from ehrfm.app.cli import main
    from ehrfm.clinical.labels import head_labels
    from ehrfm.tokens import TokenDir

    tok, labels = make_cohort(tmp_path)
    run = save_random_run(tmp_path / "run", len(VOCAB), TokenDir(tok).fingerprint)
    capsys.readouterr()
    rc = main(["zeroshot", str(run), "--tokens", str(tok), "--labels", str(labels), "--task", "icu_admission",
               "--out", str(tmp_path / "z"), "--samples", "1", "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "is named after task in_hospital_mortality, not icu_admission" in err, err
    assert not (tmp_path / "z").exists()
    shards = tmp_path / "aces" / "long_los" / "held_out"
    shards.mkdir(parents=True)
    shutil.copy(labels, shards / "0.parquet")
    with pytest.raises(UserError, match="named after task long_los, not icu_admission"):
        head_labels(shards.parent, "icu_admission")
    other = tmp_path / "los.parquet"
    shutil.copy(labels, other)
    assert head_labels(other, "icu_admission") == (other, "icu_admission")
    assert head_labels(labels, "in_hospital_mortality") == (labels, "in_hospital_mortality")


def _with_interval_token(tok):
    """Let the cohort's tokenizer list its 1h-2h token as an interval token (each counts as 1 h: its mean gap in train)."""
    tz = json.loads((tok / "tokenizer.json").read_text())
    tz["interval_tokens"] = [{"token": "1h-2h", "min_us": 3_600_000_000}]
    (tok / "tokenizer.json").write_text(json.dumps(tz))


# 6 ---------------------------------------------------------------------------------------------
def test_zeroshot_simulated_time_starts_at_the_prediction_time(tmp_path):
    """Before: the rollout's clock started at the last history event (admission + 1 h here), 23 h
    before the prediction time (admission + 24 h), so the rollout had to sample those quiet 23 h again
    before any window counted: a stay "long" past admission + 25 h needed 25 sampled hours, ~never
    reached (P ~ 3^-25). Now the clock starts at the prediction time: 1 h is left, the 2nd 1-hour
    interval token crosses it.

    Uniform sampling over 12 tokens; the ones that count: the interval token 1h-2h (1 h), the
    discharge and TIMELINE_END. Long stay = two interval tokens before either end: 1/3 * 1/3 = 1/9
    (under --undecided negative, whatever the end of record counts as) of the rollouts that are no
    transfer (test 9: 5/16 of the 4/9 that reach a discharge): 4/31. Since a long stay is followed to its
    end (test 10), 9/16 of the 1/9 are the outcome (5/48 transfers, 1/3 an end of record): 1/16 of the
    367/432 that are no transfer, 27/367."""
    from ehrfm.clinical.zeroshot import ZeroShotConfig, zeroshot

    tok, labels = make_cohort(tmp_path)
    _with_interval_token(tok)
    run = _uniform_run(tmp_path, tok)
    los = tmp_path / "long_los.parquet"
    pl.read_parquet(labels).write_parquet(los)  # predicted at T0 + 24 h, the last history event at T0 + 1 h
    (tmp_path / "long_los.json").write_text(json.dumps({"task": "long_los", "config": {"gap_hours": 24.0, "long_los_days": 25 / 24}}))
    cfg = ZeroShotConfig(str(run), str(tok), str(los), n_samples=100, max_new_tokens=64, bootstrap=0, seed=1, undecided="negative")
    m = zeroshot(cfg, tmp_path / "zs")
    p = pl.read_parquet(tmp_path / "zs" / "predictions.parquet")["predicted_boolean_probability"].mean()
    assert abs(p - 27 / 367) < 0.03, p  # 2,000 rollouts: sd 0.006 (before: 0.0)
    assert m["time_bound"]["long_los_days"] == 25 / 24


# 7 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, share, ended", [("in_hospital_mortality", 1 / 2, 1 / 3), ("icu_admission", 1 / 3, 1 / 4),
                                                ("long_los", 9 / 53, 13 / 27)])
def test_zeroshot_an_end_of_record_is_undecided_not_a_discharge(tmp_path, task, share, ended):
    """Before: a rollout that sampled TIMELINE_END before the stay ended counted as the competing event
    (as a discharge), though `ehrfm labels` gives a stay the data leave open no label (no_discharge):
    every share was pulled toward 0 by the model's rate of ending the record. Now it stops the rollout
    undecided (end_of_record_share, within undecided_share).

    Uniform sampling over 12 tokens. Mortality: MEDS_DEATH vs the discharge, 1/2 (before 1/3 with
    TIMELINE_END competing). ICU: ICU_ADMISSION vs the discharge or MEDS_DEATH, 1/3 (before 1/4; this
    tokenizer has no interval tokens, so no direct-ICU rule). Long stay (1 h left after the prediction
    time, the 1h-2h token counting 1 h): two interval tokens before the discharge, 1/9, vs the discharge
    first 4/9, of which 11/16 decide (test 9): 4/15 (before 1/9; 1/5 before test 9's rule); TIMELINE_END
    first 4/9. Since a long stay is followed to its end (test 10), 9/16 of the 1/9 decide as the outcome and
    1/3 end in TIMELINE_END: 9/53, ended 4/9 + 1/27."""
    from ehrfm.clinical.zeroshot import ZeroShotConfig, zeroshot

    tok, labels = make_cohort(tmp_path)
    if task == "long_los":
        _with_interval_token(tok)
        (tmp_path / "long_los.json").write_text(json.dumps({"task": task, "config": {"gap_hours": 24.0, "long_los_days": 25 / 24}}))
    run = _uniform_run(tmp_path, tok)
    path = tmp_path / f"{task}.parquet"
    pl.read_parquet(labels).write_parquet(path)
    cfg = ZeroShotConfig(str(run), str(tok), str(path), n_samples=400, max_new_tokens=64, bootstrap=0, seed=1)
    m = zeroshot(cfg, tmp_path / "zs")
    p = pl.read_parquet(tmp_path / "zs" / "predictions.parquet")["predicted_boolean_probability"].mean()
    # 20 labels x 400 rollouts, >= 1/2 decided: sd of the mean share <= 0.007 (the labels' own spread
    # included; 200 gave 0.010, and one seed in 26 came 0.041 off); the shares before lie >= 0.083 away
    assert abs(p - share) < 0.035, p
    assert abs(m["end_of_record_share"] - ended) < 0.04 and m["undecided_share"] >= m["end_of_record_share"]
    assert m["end_tokens_undecided"] == ["TIMELINE_END"]


# 8 ---------------------------------------------------------------------------------------------
def test_zeroshot_batches_count_the_logits_memory(tmp_path, monkeypatch):
    """Before: a batch was sized by its KV cache alone, and the prefill returned logits at every prompt
    position: with 20,012 tokens, 62-token prompts and an 8 MB budget, all 8 labels were one batch and
    the prefill alone returned 8 x 62 x 20,012 float32 = 40 MB. Now the prefill returns the last
    position's logits, and a batch holds what the budget holds counting LOGIT_COPIES (rows, V) float32
    copies and each label's (n_samples, V) draw per step; a batch below n_samples rows splits a label's
    samples with the same draws; a model of which one rollout cannot fit the free memory is refused."""
    from datetime import timedelta

    from test_heads import save_random_run, write_token_dir

    from ehrfm.clinical import zeroshot as zs
    from ehrfm.clinical.configs import ZeroShotConfig
    from ehrfm.clinical.model_io import load_run
    from ehrfm.clinical.probe import load_label_histories
    from ehrfm.tokens import TokenDir

    vocab = ["PAD", "UNK", "TIMELINE_END", "GENDER//F", "MEDS_DEATH", "HOSPITAL_DISCHARGE//HOME", "HOSPITAL_ADMISSION//EW"]
    vocab += [f"LAB//X{i}" for i in range(20_005)]

    def timeline(sid):  # 62 history tokens before T0 + 24 h
        ev = [("GENDER//F", T0 - timedelta(days=400)), ("HOSPITAL_ADMISSION//EW", T0)]
        ev += [(f"LAB//X{(sid * 61 + j) % 20_005}", T0 + timedelta(minutes=j + 1)) for j in range(60)]
        return sid, ev + [("HOSPITAL_DISCHARGE//HOME", T0 + timedelta(days=3)), ("TIMELINE_END", T0 + timedelta(days=3))]

    tok = write_token_dir(tmp_path / "tok", {"train": [timeline(1), timeline(2)], "held_out": [timeline(s) for s in range(3, 11)]}, vocab)
    labels = tmp_path / "in_hospital_mortality.parquet"
    pl.DataFrame({"subject_id": list(range(3, 11)), "prediction_time": [T0 + timedelta(hours=24)] * 8, "boolean_value": [True, False] * 4},
                 schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean}).write_parquet(labels)
    td = TokenDir(tok)
    run = save_random_run(tmp_path / "run", len(vocab), td.fingerprint)
    model, _ = load_run(run, td, "cpu")
    h = load_label_histories(td, labels, None, 0)
    rows = np.flatnonzero(h.split == "held_out")
    assert (h.lengths()[rows] == 62).all()
    V, S, budget = len(vocab), 4, 8 << 20
    monkeypatch.setattr(zs, "ROLLOUT_BUDGET_BYTES", budget)
    returned = []  # (rows, positions) of each logits tensor the model returns
    model.head.register_forward_hook(lambda mod, inp, out: returned.append(out.shape[:-1]))

    def run_with(**kw):
        cfg = ZeroShotConfig(str(run), str(tok), str(labels), n_samples=S, max_new_tokens=6, seed=2, **kw)
        returned.clear()
        with torch.no_grad():
            return zs._run_rollouts(cfg, td, h, model, 64, "in_hospital_mortality", rows)[0][rows]

    p = run_with()
    row, draw, prefill = zs.rollout_memory(model, 64)
    kv, act = 2 * 2 * 64 * 32 * 4, (zs.ACT_WIDTHS * 32 + 3 * 96) * 4  # 32 KiB of KV cache; one position's activations
    # a row: its cache, a slide's rotated keys, a step's activations and attention, 235 KiB of logits (test_zeroshot_label_rules 3)
    assert draw == V * 4 and row == kv + kv // 2 + act + 3 * 64 * 4 + zs.LOGIT_COPIES * V * 4
    assert prefill == kv + 64 * act + (4 + zs.MASK_BOOLS) * 64 * 64  # a prompt's cache, activations and attention masks
    assert all(t == 1 for _, t in returned)  # the prefill returns the last position only (before: 62)
    # every batch's rows, with their labels' draws and prompt encodings, fit the 8 MB: 4 labels of 4 rows (before: all
    # 8 labels at once; 5 before the encoding was counted)
    most = max(r for r, _ in returned)
    assert most == 4 * S and most * (row + draw) + 4 * prefill <= budget
    # split samples (3 + 1 per label) draw the same: the same probabilities
    np.testing.assert_array_equal(run_with(batch_size=3), p)
    assert max(r for r, _ in returned) == 3
    # one rollout that cannot fit the free memory: refused before any rollout, with the sizes
    monkeypatch.setattr(zs, "free_memory", lambda device: 512 << 10)  # 285 KiB of row + 4 x 78 KiB of draws + 200 KiB do not fit
    with pytest.raises(UserError, match=r"one rollout needs 0\.8 MiB on cpu .* logits over 20012 tokens, 4 samples' draws\), "
                                        r"more than the 0\.5 MiB free"):
        run_with()
    assert returned == []


# 9 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, sidecar, share, transferred", [
    ("in_hospital_mortality", None, 4 / 9, 5 / 48),
    ("icu_admission", {"direct_icu_minutes": 0.0}, 1 / 4, 5 / 48),
    ("long_los", {"gap_hours": 24.0, "long_los_days": 25 / 24}, 9 / 53, 65 / 432)])
def test_zeroshot_a_discharge_followed_by_an_admission_within_transfer_hours_is_a_transfer(
        tmp_path, task, sidecar, share, transferred):
    """Before: a sampled discharge decided at once (the competing event), though `ehrfm labels` excludes
    a stay whose discharge the next admission follows within --transfer-hours (reason transferred, for
    every task): the share counted futures that have no label as discharges. Now the discharge waits
    for its window (1 h by default): an admission inside it ends the rollout "transferred"
    (transfer_share, left out of the share); the window passing, a death or the end of the record lets
    the discharge decide.

    Uniform sampling over 12 tokens, the interval token 1h-2h counting 1 h. After a discharge only the
    admission, 1h-2h, MEDS_DEATH and TIMELINE_END count, 1/4 each: an admission first (1/4), or after one
    1h-2h (1 h: still inside the window, inclusive as the label's <=; 1/16) is a transfer, 5/16; 11/16
    of discharges decide. Mortality: death vs discharge vs end of record, 1/3 each: share 1/3 / (1/3 +
    1/3 * 11/16) = 16/27 (before 1/2), transfers 5/48 (before 0). ICU (direct rule off): ICU, discharge,
    death, end 1/4 each: 16/43 (before 1/3), transfers 5/64. Long stay (1 h left, two 1h-2h first: 1/9;
    the discharge first 4/9): 4/15 (before 1/5), transfers 5/36. Since an outcome is followed to its stay's
    end (test 10), ICU 1/4 and transfers 5/64 + 5/192, long stay 9/53 and transfers 5/36 + 5/432. Since
    mortality's day rule (test_zeroshot_label_rules 2), a death is a death after the discharge when a live
    discharge comes at its time (before 1h-2h, the end of record or another death: 1/4): 1/4 / (1/4 + 1/12
    + 11/48) = 4/9."""
    from ehrfm.clinical.zeroshot import ZeroShotConfig, zeroshot

    tok, labels = make_cohort(tmp_path)
    _with_interval_token(tok)
    run = _uniform_run(tmp_path, tok)
    path = tmp_path / f"{task}.parquet"
    pl.read_parquet(labels).write_parquet(path)  # predicted at T0 + 24 h
    if sidecar is not None:
        (tmp_path / f"{task}.json").write_text(json.dumps({"task": task, "config": sidecar}))
    cfg = ZeroShotConfig(str(run), str(tok), str(path), n_samples=400, max_new_tokens=64, bootstrap=0, seed=1)
    m = zeroshot(cfg, tmp_path / "zs")
    p = pl.read_parquet(tmp_path / "zs" / "predictions.parquet")["predicted_boolean_probability"].mean()
    # 20 labels x 400 rollouts: sd of the mean share <= 0.008, of the transfer share <= 0.004
    assert abs(p - share) < 0.03, p
    assert abs(m["transfer_share"] - transferred) < 0.015, m["transfer_share"]
    assert m["discharge_transfer_hours"] == 1.0
    if task == "in_hospital_mortality":  # the label file's own window: 0 h, only an admission at the discharge's time
        (tmp_path / f"{task}.json").write_text(json.dumps({"task": task, "config": {"transfer_hours": 0.0}}))
        m0 = zeroshot(cfg, tmp_path / "zs0")
        assert abs(m0["transfer_share"] - 1 / 12) < 0.01 and m0["discharge_transfer_hours"] == 0.0  # 1/3 * 1/4
