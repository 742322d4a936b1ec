"""Faults found on 2026-12-07 by a helper trying the clinical stages as a reviewer would."""

from __future__ import annotations

import json

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
