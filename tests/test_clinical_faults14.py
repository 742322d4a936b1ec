"""Faults found on 2026-12-07 by a helper trying the clinical stages as a reviewer would."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from test_audit import ADM, T0, d, h, stay, write_meds

from ehrfm.app.cli import main


@pytest.fixture
def fresh_outcome_checks():
    from ehrfm.clinical import common

    common._OUTCOME_CHECKED.clear()  # audited once per process: each test audits afresh
    yield
    common._OUTCOME_CHECKED.clear()


def _diagnosed_at_admission(tmp_path):
    """Four stays whose discharge diagnosis an ETL dated at the admission (MIMIC's diagnoses_icd has no time)."""
    events = []
    for sid in range(1, 5):
        events += stay(sid, sid * 10, T0, T0 + d(5), [(sid, T0, "DIAGNOSIS//ICD//10//I10", sid * 10)])
    return write_meds(tmp_path / "meds", events, {"date_only_codes": []})


def test_labels_made_by_ehrfm_are_audited_for_what_the_data_leaks(tmp_path, capsys, monkeypatch, fresh_outcome_checks):
    """Before: the heads skipped the look-ahead check for a label file `ehrfm labels` made (its rows exclude an outcome
    already in the history by construction), so discharge diagnoses dated at admission by another ETL were scored
    without a word, while the same rows in a plain file were warned of. Now `ehrfm labels` audits what it wrote,
    warns, and records the audit in each sidecar for the file's bytes; the heads judge the file by that record
    (no second read of the MEDS data), and audit a file changed since like any other."""
    from ehrfm.clinical import audit as audit_module
    from ehrfm.clinical.common import warn_outcome_in_history

    meds = _diagnosed_at_admission(tmp_path)
    out = tmp_path / "labels"
    assert main(["labels", str(meds), "--task", "all", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "whose history may hold their in_hospital_mortality outcome" in line]
    assert len(said) == 1 and "finds 4 of 4 labels" in said[0], err
    record = json.loads((out / "in_hospital_mortality.json").read_text())["audit"]
    assert record["date_only_same_day"] == 4 and record["n_labels"] == 4 and record["outcome_code_in_history"] == 0

    def no_second_read(*args, **kwargs):
        raise AssertionError("audited again: the sidecar's record was not used")

    monkeypatch.setattr(audit_module, "audit", no_second_read)
    from ehrfm.clinical import common

    common._OUTCOME_CHECKED.clear()
    warn_outcome_in_history(meds, out / "long_los.parquet", "long_los")  # a head's check, judged by the record
    assert "finds 4 of 4 labels whose history may hold their long_los outcome" in capsys.readouterr().err
    monkeypatch.undo()

    # The file changed since its audit (two rows dropped, the parquet's ehrfm mark kept): audited afresh.
    import pyarrow.parquet as pq

    path = out / "icu_admission.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 2), path)
    calls = []
    real = audit_module.audit
    monkeypatch.setattr(audit_module, "audit", lambda *a, **k: calls.append(a) or real(*a, **k))
    warn_outcome_in_history(meds, path, "icu_admission")
    assert len(calls) == 1 and "finds 2 of 2 labels whose history may hold their icu_admission outcome" in capsys.readouterr().err


def test_clean_labels_made_by_ehrfm_say_nothing(tmp_path, capsys, fresh_outcome_checks):
    # The same stays with the diagnosis at the discharge, where ehrfm's ETL places it: recorded clean, no warning.
    events = []
    for sid in range(1, 5):
        events += stay(sid, sid * 10, T0, T0 + d(5), [(sid, T0 + d(5), "DIAGNOSIS//ICD//10//I10", sid * 10)])
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    out = tmp_path / "mortality.parquet"
    assert main(["labels", str(meds), "--task", "in_hospital_mortality", "--out", str(out)]) == 0
    assert "may hold" not in capsys.readouterr().err
    record = json.loads(out.with_suffix(".json").read_text())["audit"]
    assert (record["n_labels"], record["outcome_code_in_history"], record["date_only_same_day"],
            record["not_known_before_prediction"]) == (4, 0, 0, 0)
    assert pl.read_parquet(out).height == 4 and ADM and h


def test_labels_audit_reads_shards_of_mixed_id_types_and_zones(tmp_path, capsys, fresh_outcome_checks):
    """Before: the audit `ehrfm labels` records read each shard's deaths raw and concatenated them, so a shard with
    Int32 subject_id beside an Int64 one (pandas and polars write both) broke it after the labels were written
    (a traceback, exit 1, labels on disk). Now deaths are read as every stage reads shards (meds_io.scan_shard)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    events = []
    for sid in range(1, 5):
        events += stay(sid, sid * 10, T0, T0 + d(5), [(sid, T0 + d(5), "DIAGNOSIS//ICD//10//I10", sid * 10)])
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})
    shard = meds / "data" / "train" / "0.parquet"
    table = pq.read_table(shard)
    ids = table.column("subject_id").to_pylist()
    late = table.filter(pa.array([i > 2 for i in ids]))
    # subjects 3-4: Int32 ids and zoned times, subject 4 with a death
    late = pa.concat_tables([late, late.slice(0, 0)])
    death = pa.table({"subject_id": pa.array([4], pa.int64()), "time": pa.array([T0 + d(5)], pa.timestamp("us")),
                      "code": ["MEDS_DEATH"], "numeric_value": pa.array([None], pa.float32()),
                      "hadm_id": pa.array([40], pa.int64())})
    late = pa.concat_tables([late, death])
    late = late.set_column(0, "subject_id", late.column("subject_id").cast(pa.int32()))
    late = late.set_column(1, "time", late.column("time").cast(pa.timestamp("us", tz="UTC")))
    pq.write_table(table.filter(pa.array([i <= 2 for i in ids])), shard)
    pq.write_table(late, shard.parent / "1.parquet")
    out = tmp_path / "labels"
    assert main(["labels", str(meds), "--task", "all", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broke (" not in err and "Traceback" not in err, err
    mortality = pl.read_parquet(out / "in_hospital_mortality.parquet")
    # subject 4's death before its discharge home contradicts it: excluded (death_contradicted), read across shards
    assert mortality["subject_id"].to_list() == [1, 2, 3] and "death_contradicted" in err
    from ehrfm.clinical.common import _death_times  # the Int32, zoned shard's death, read as the UTC instant it is

    assert _death_times(meds).rows() == [(4, T0 + d(5))]
    for task in ("in_hospital_mortality", "long_los", "icu_admission", "readmission_30d"):
        record = json.loads((out / f"{task}.json").read_text())["audit"]
        assert record["after_death"] == 0 and record["outcome_code_in_history"] == 0, (task, record)


def test_labels_stay_written_when_their_audit_breaks(tmp_path, capsys, monkeypatch, fresh_outcome_checks):
    """An audit that raises what it was not written for leaves the written labels, exit 0, and one warning naming
    the exception's type (never its text: it may quote a row) and how to see why; the sidecar holds no record."""
    from ehrfm.clinical import common

    events = []
    for sid in range(1, 5):
        events += stay(sid, sid * 10, T0, T0 + d(5))
    meds = write_meds(tmp_path / "meds", events, {"date_only_codes": []})

    def broken(*args, **kwargs):
        raise RuntimeError("subject 4 at 2150-05-06")

    monkeypatch.setattr(common, "record_label_audit", broken)
    out = tmp_path / "mortality.parquet"
    assert main(["labels", str(meds), "--task", "in_hospital_mortality", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"labels written to {out}, but auditing them or recording the audit in their sidecars broke (RuntimeError)" in err, err
    assert "subject 4" not in err and "audit" not in json.loads(out.with_suffix(".json").read_text())
    assert pl.read_parquet(out).height == 4


def test_a_recorded_audit_holds_only_for_the_meds_data_and_checks_it_was_made_by(tmp_path, capsys, monkeypatch,
                                                                                  fresh_outcome_checks):
    """The record was keyed by the label file's bytes alone: MEDS data rewritten in place since (an ETL run again, the
    date-only codes edited) or an audit with other checks kept it trusted. Now it also holds the MEDS files' stamp
    and the audit's version; either changed, the heads audit the file again."""
    import os

    from ehrfm.clinical import audit as audit_module
    from ehrfm.clinical import common

    meds = _diagnosed_at_admission(tmp_path)
    out = tmp_path / "mortality.parquet"
    assert main(["labels", str(meds), "--task", "in_hospital_mortality", "--out", str(out)]) == 0
    capsys.readouterr()
    record = json.loads(out.with_suffix(".json").read_text())["audit"]
    assert record["version"] == common.LABEL_AUDIT_VERSION and record["meds"] == common._meds_stamp(meds)
    calls = []
    real = audit_module.audit
    monkeypatch.setattr(audit_module, "audit", lambda *a, **k: calls.append(a) or real(*a, **k))

    def heads_check():
        common._OUTCOME_CHECKED.clear()
        common.warn_outcome_in_history(meds, out, "in_hospital_mortality")
        return "finds 4 of 4 labels" in capsys.readouterr().err

    assert heads_check() and calls == []  # judged by the record
    meta = meds / "metadata" / "dataset.json"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # dataset.json rewritten since
    assert heads_check() and len(calls) == 1
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert heads_check() and len(calls) == 1  # as it was recorded: the record again
    monkeypatch.setattr(common, "LABEL_AUDIT_VERSION", common.LABEL_AUDIT_VERSION + 1)  # today's checks are others
    assert heads_check() and len(calls) == 2


def test_a_label_file_named_for_no_known_task_is_still_audited_for_what_the_data_leaks(tmp_path, capsys,
                                                                                       fresh_outcome_checks):
    """The heads skipped the look-ahead check without a word when a label file's name was not a task's (an ACES
    output named mort.parquet; probe, finetune and baseline had no --task): leaky labels scored GBM AUROC 0.993
    (a helper). Now (b) and (c), the data's, are checked for any file, one line says (a) was not, and --task
    names the task."""
    import shutil

    from ehrfm.clinical.common import warn_outcome_in_history

    meds = _diagnosed_at_admission(tmp_path)
    made = tmp_path / "mortality.parquet"
    assert main(["labels", str(meds), "--task", "in_hospital_mortality", "--out", str(made)]) == 0
    mort = tmp_path / "aces" / "mort.parquet"  # the same rows, another tool's file: no sidecar
    mort.parent.mkdir()
    shutil.copy(made, mort)
    capsys.readouterr()
    verdict = warn_outcome_in_history(meds, mort, "mort")
    assert verdict["checked"] and verdict["look_ahead"] and not verdict["outcome_checked"], verdict
    assert verdict["outcome_in_history"] is None and verdict["date_only_same_day"] == 4 and "only (b) and (c)" in verdict["why_not_checked"]
    err = capsys.readouterr().err
    assert (f"label file {mort}: `ehrfm audit` finds 4 of 4 labels whose history may hold events not known at their "
            f"prediction time (date-only or unreported)") in err, err
    assert f"label file {mort}: task 'mort' is none whose outcome the audit knows" in err, err
    assert "(for one of those tasks, pass the head's --task or name the file <task>.parquet)" in err, err
    # named, as --task names it: the outcome is checked too, and the line about (a) is gone
    warn_outcome_in_history(meds, mort, "in_hospital_mortality")
    err = capsys.readouterr().err
    assert "finds 4 of 4 labels whose history may hold their in_hospital_mortality outcome" in err and "is none" not in err


@pytest.mark.parametrize("command", ["probe", "finetune", "baseline"])
def test_every_head_takes_the_task_of_its_labels(command):
    from ehrfm.app.cli import build_parser

    first = ["meds"] if command == "baseline" else ["run", "--tokens", "tok"]
    args = build_parser().parse_args([command, *first, "--labels", "mort.parquet", "--out", "o", "--task", "icu_admission"])
    assert args.task == "icu_admission"


def test_the_audit_refuses_a_task_other_than_the_one_a_file_is_named_for(tmp_path, fresh_outcome_checks):
    """`ehrfm audit --labels long_los.parquet --task readmission_30d` judged long-stay labels by the readmission rules
    ("LEAKAGE 149" on the MIMIC-IV demo), where the heads refuse that pairing: the audit refuses it alike."""
    import shutil

    from ehrfm.clinical.audit import audit
    from ehrfm.errors import UserError

    meds = _diagnosed_at_admission(tmp_path)
    made = tmp_path / "made.parquet"
    assert main(["labels", str(meds), "--task", "long_los", "--out", str(made)]) == 0
    plain = tmp_path / "user" / "long_los.parquet"  # the user's copy: no sidecar records its task
    plain.parent.mkdir()
    shutil.copy(made, plain)
    with pytest.raises(UserError, match=r"is named after task long_los, not readmission_30d"):
        audit(meds, plain, task="readmission_30d")
    assert audit(meds, plain, task="long_los").tasks["long_los"].n_labels == pl.read_parquet(plain).height


def test_a_heads_label_audit_is_the_verdict_it_met(tmp_path, monkeypatch, fresh_outcome_checks):
    """label_audit_of took the newest cache entry of the file: audited against MEDS A, then B, then scored against A
    again (cached), the third head wrote B's verdict."""
    from ehrfm.clinical import common

    labels = tmp_path / "l.parquet"
    labels.write_bytes(b"x")
    (tmp_path / "A").mkdir()
    (tmp_path / "B").mkdir()
    monkeypatch.setattr(common, "_check_outcome_in_history", lambda meds, path, task: {"from": Path(meds).name})
    for meds in ("A", "B", "A"):
        common.warn_outcome_in_history(tmp_path / meds, labels, "long_los")
        assert common.label_audit_of(labels) == {"from": meds}
