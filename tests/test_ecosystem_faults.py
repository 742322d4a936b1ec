"""Faults of the ecosystem side found by a break-it pass (ACES configs, MEDS from other tools, the export).

- ACES configs: a hospital discharge at the same minute as another stay's admission (on the MIMIC-IV
  demo an observation stay ends the minute the inpatient stay opens) is one ACES row; the ICU
  admission config then found the earlier stay's discharge at the trigger and gave the inpatient
  stay no label (272 vs `ehrfm labels`' 273 on the demo), and the long-stay config paired that
  discharge with the next stay's admission: the observation stay got no label and the inpatient
  stay two, one of them at the wrong prediction time; and it labelled a short stay long when
  another stay had ended in the week before its discharge (that stay's admission lay in its
  "before the last week" window): all 5 long-stay labels where ACES and `ehrfm labels` disagreed on
  the demo. Now such a stay is excluded (ACES cannot say "no admission in the last week"): on the
  demo every ACES label equals `ehrfm labels`' (long stay 237 of its 243 labels, 91 positive).
  An admission never discharged (followed by another stay) or a stay of zero length took the next
  stay's outcome in the mortality and ICU configs (`-> discharge` found the next stay's discharge),
  and a later short stay was labelled long by the long-stay config (the undischarged admission lay in
  its window); `ehrfm labels` excludes such stays: ACES now excludes them too. A discharge of no stay
  (a record that starts mid-stay, a repeated discharge), which `ehrfm labels` ignores, got a
  readmission label and a second long-stay label for the stay before it (same prediction time).
- MEDS from other tools: split folders (data/train/...) that disagree with
  metadata/subject_splits.parquet (a file re-written for a new held-out set) were read by the folders
  without a word, while ACES, MEDS-Tab and meds-evaluation's users take the file: another held-out
  set than theirs, or training on theirs. Now every reader refuses it in one line with counts.
- `ehrfm.load_model(RUN)(ids)`: ids of another tokenizer (>= vocab_size) failed deep in the embedding
  with "IndexError: index out of range in self", and 1-D ids with "not enough values to unpack"; now a
  ValueError says how many ids lie outside the vocabulary, or what shape was given.
- a MEDS shard with `patient_id` was refused as "the name used before MEDS 0.4": MEDS 0.3.2 renamed
  it (MIMIC_IV_MEDS and meds_etl data of MEDS 0.3.3 have subject_id); the error now says 0.3.2.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from test_aces import aces_cli, run_aces  # noqa: F401 (aces_cli: the es-aces venv fixture)
from test_labels import ADM, DIS, stay, write_meds
from test_meds_reader import one_error_line

from ehrfm.app.cli import main

T0 = datetime(2150, 1, 1, 8, 0)
h = lambda n: timedelta(hours=n)  # noqa: E731


# --- ACES configs: a discharge at the minute of the next admission ----------------------------------
@pytest.mark.parametrize("task", ["icu_admission", "long_los"])
def test_aces_labels_stays_that_meet_at_one_minute_as_ehrfm_labels_does(aces_cli, tmp_path, task):  # noqa: F811
    from ehrfm.clinical.labels import make_labels

    handover = T0 + h(36)  # subject 1: a 36 h observation stay, then at that minute a 10-day stay
    events = stay(1, T0, handover) + [(1, handover, ADM), (1, handover + h(240), DIS)]
    events += stay(2, T0, T0 + h(200), [(2, T0 + h(5), "ICU_ADMISSION//MICU")])  # an ordinary long ICU stay
    meds = write_meds(tmp_path / "meds", events)
    ours = make_labels(meds, task)[0].select("subject_id", "prediction_time", "boolean_value")
    (tmp_path / "aces").mkdir()
    aces = pl.read_parquet(run_aces(aces_cli, meds, task, tmp_path / "aces"))
    got = sorted(aces.select("subject_id", "prediction_time", "boolean_value").iter_rows())
    assert got == sorted(ours.iter_rows())
    # subject 1's observation stay is continued by the next at its last minute: excluded (transferred) by both
    expected = {"icu_admission": [(1, handover, False), (2, T0, True)],
                "long_los": [(1, handover + h(24), True), (2, T0 + h(24), True)]}[task]
    assert got == expected


def test_aces_never_labels_a_short_stay_long_after_a_stay_that_ended_in_its_week(aces_cli, tmp_path):  # noqa: F811
    from ehrfm.clinical.labels import make_labels

    # subject 1: an 8-day stay, then one day later a 2-day stay (short: the previous stay's admission,
    # 11 days before this discharge, lay in the window ACES labels); subject 2: the same 2-day stay
    # 3 weeks later; subject 3: a 10-day stay 2 days after a 3-day one (long)
    events = stay(1, T0, T0 + h(192)) + [(1, T0 + h(216), ADM), (1, T0 + h(264), DIS)]
    events += stay(2, T0, T0 + h(192)) + [(2, T0 + h(696), ADM), (2, T0 + h(744), DIS)]
    events += stay(3, T0, T0 + h(72)) + [(3, T0 + h(120), ADM), (3, T0 + h(360), DIS)]
    meds = write_meds(tmp_path / "meds", events)
    ours = make_labels(meds, "long_los")[0].select("subject_id", "prediction_time", "boolean_value")
    (tmp_path / "aces").mkdir()
    aces = pl.read_parquet(run_aces(aces_cli, meds, "long_los", tmp_path / "aces"))
    got = sorted(aces.select("subject_id", "prediction_time", "boolean_value").iter_rows())
    short_after_a_recent_stay = (1, T0 + h(240), False)
    assert sorted(ours.iter_rows()) == sorted([*got, short_after_a_recent_stay])  # was (1, T0 + h(240), True)
    assert got == [(1, T0 + h(24), True), (2, T0 + h(24), True), (2, T0 + h(720), False),
                   (3, T0 + h(24), False), (3, T0 + h(144), True)]



@pytest.mark.parametrize("task", ["in_hospital_mortality", "icu_admission", "long_los"])
def test_aces_labels_no_stay_by_an_admission_that_is_not_its_own(aces_cli, tmp_path, task):  # noqa: F811
    from ehrfm.clinical.labels import make_labels

    died = "HOSPITAL_DISCHARGE//DIED"
    # subject 1: an admission never discharged, then a 2-day stay with an ICU admission, ending in death;
    # subject 2: a stay of zero length, then the same; subject 3: the same stay alone
    later = lambda sid: [(sid, T0 + h(200), ADM), (sid, T0 + h(210), "ICU_ADMISSION//MICU"), (sid, T0 + h(248), died)]  # noqa: E731
    events = stay(1, T0, None) + later(1) + stay(2, T0, T0) + later(2) + stay(3, T0 + h(200), None)[:2] + later(3)
    meds = write_meds(tmp_path / "meds", events)
    ours = sorted(make_labels(meds, task)[0].select("subject_id", "prediction_time", "boolean_value").iter_rows())
    (tmp_path / "aces").mkdir()
    aces = pl.read_parquet(run_aces(aces_cli, meds, task, tmp_path / "aces"))
    got = sorted(aces.select("subject_id", "prediction_time", "boolean_value").iter_rows())
    at = T0 + h(200) + (h(0) if task == "icu_admission" else h(24))
    assert ours == [(sid, at, task != "long_los") for sid in (1, 2, 3)]
    # before: mortality and ICU labelled subject 1's and 2's first admission True (the next stay's
    # outcome); the long-stay config labelled subject 1's and 2's 2-day stays long (the first admission 248 h before)
    expected = ours if task != "long_los" else [(3, at, False)]  # the stay after either: excluded
    assert got == expected



@pytest.mark.parametrize("task", ["icu_admission", "long_los", "in_hospital_mortality", "readmission_30d"])
def test_aces_labels_of_the_mimic_demo_are_ehrfm_labels(aces_cli, demo_meds, tmp_path, task):  # noqa: F811
    from ehrfm.clinical.labels import make_labels

    ours = make_labels(demo_meds, task)[0].select("subject_id", "prediction_time", "boolean_value")
    (tmp_path / "aces").mkdir()
    aces = pl.read_parquet(run_aces(aces_cli, demo_meds, task, tmp_path / "aces"))
    aces = aces.select("subject_id", "prediction_time", "boolean_value")
    # No other label, but for the stay ehrfm labels leaves out since 2026-12-04 where its history holds rows of the
    # next stay (heparin orders under that stay's hadm_id, 6 days before its admission; ACES has the label: no ACES
    # predicate ties a row to its stay): at 24 h and at the discharge, not at its admission.
    only_aces = aces.join(ours, on=["subject_id", "prediction_time", "boolean_value"], how="anti")
    assert only_aces.height == (0 if task == "icu_admission" else 1)
    assert aces.height == aces.unique().height  # before: long stay labelled one stay twice
    left_out = ours.join(aces, on=["subject_id", "prediction_time"], how="anti")
    # before: ICU 272 of 273 (a stay opening the minute another ended); long stay 245 with 5 short stays long.
    # ICU 253 (106): both leave out the 20 stays admitted straight into the ICU (test_clinical_faults5); 250 (105) and
    # long stay 237 of 243 (91): both leave out the 3 and 2 stays the next admission continues within 1 h
    # mortality 243 (14) and readmission 256 (50): 245 and 257 before transfers, and for readmission discharges
    # to another acute hospital, were excluded (test_clinical_faults6)
    assert (aces.height, int(aces["boolean_value"].sum())) == {"icu_admission": (250, 105), "long_los": (237, 91),
                                                               "in_hospital_mortality": (243, 14), "readmission_30d": (256, 50)}[task]
    assert (left_out.height, int(left_out["boolean_value"].sum())) == {"long_los": (6, 0)}.get(task, (0, 0))



@pytest.mark.parametrize("task", ["readmission_30d", "long_los"])
def test_aces_labels_no_discharge_of_no_stay(aces_cli, tmp_path, task):  # noqa: F811
    from ehrfm.clinical.labels import make_labels

    # subject 1: its record starts with a discharge (mid-stay), then a 200 h stay; subject 2: a 200 h
    # stay, the same discharge again at 400 h, then a 50 h stay at 600 h
    events = [e for e in stay(1, T0 + h(100), T0 + h(300)) if e[2] != ADM] + [(1, T0, DIS), (1, T0 + h(100), ADM)]
    events += stay(2, T0, T0 + h(200)) + [(2, T0 + h(400), DIS), (2, T0 + h(600), ADM), (2, T0 + h(650), DIS)]
    meds = write_meds(tmp_path / "meds", events)
    ours = sorted(make_labels(meds, task)[0].select("subject_id", "prediction_time", "boolean_value").iter_rows())
    (tmp_path / "aces").mkdir()
    aces = pl.read_parquet(run_aces(aces_cli, meds, task, tmp_path / "aces"))
    got = sorted(aces.select("subject_id", "prediction_time", "boolean_value").iter_rows())
    # before: readmission also labelled the discharges at 0 h and 400 h (True: an admission 100 and 200 h later);
    # the long-stay config labelled subject 2's first stay twice at T0 + 24 h, True and False
    assert got == ours == {
        "readmission_30d": [(1, T0 + h(300), False), (2, T0 + h(200), True), (2, T0 + h(650), False)],
        "long_los": [(1, T0 + h(124), True), (2, T0 + h(24), True), (2, T0 + h(624), False)]}[task]


# --- MEDS from other tools: split folders vs metadata/subject_splits.parquet -------------------------
@pytest.mark.parametrize("command", ["tokenize", "labels"])
def test_split_folders_that_disagree_with_the_splits_file_are_refused(tmp_path, capsys, command):
    meds = tmp_path / "meds"
    folders = {"train": [1, 2, 3, 4], "tuning": [5], "held_out": [6, 7]}
    for split, ids in folders.items():
        write_meds(meds, [e for sid in ids for e in stay(sid, T0 + h(sid), T0 + h(sid + 200))], split)
    splits = meds / "metadata" / "subject_splits.parquet"
    splits.parent.mkdir()
    agree = {1: "train", 2: "train", 3: "train", 4: "train", 5: "val", 6: "test", 7: "test"}  # aliases agree
    pl.DataFrame({"subject_id": list(agree), "split": list(agree.values())}).write_parquet(splits)
    run = {"tokenize": [str(meds), "--out", str(tmp_path / "out")],
           "labels": [str(meds), "--task", "long_los", "--out", str(tmp_path / "out")]}[command]
    assert main([command, *run]) == 0
    capsys.readouterr()
    moved = {**agree, 6: "train", 7: "train", 1: "held_out"}  # a new held-out set: 3 subjects moved
    pl.DataFrame({"subject_id": list(moved), "split": list(moved.values())}).write_parquet(splits)
    out = tmp_path / "out2"
    run = [a.replace(str(tmp_path / "out"), str(out)) for a in run]
    assert main([command, *run]) == 2
    assert one_error_line(capsys).endswith(
        f"MEDS dataset {meds}: 3 subjects are in another split in metadata/subject_splits.parquet than their data/<split>/ "
        "folder (2 of them in folder held_out, listed as train); other MEDS tools read the file, ehrfm the folders: "
        "make them agree (re-write the file or move the shards)")
    assert not out.exists()


# --- load_model: ids the model cannot embed ----------------------------------------------------------
def test_load_model_names_ids_outside_the_vocabulary(tok, tmp_path):
    import torch
    from test_train import cfg_for

    from ehrfm.export import load_model
    from ehrfm.train import train

    assert train(cfg_for(tok, tmp_path / "run", tokens=512, eval_tokens=256))["status"] == "completed"
    model = load_model(tmp_path / "run")
    ids = torch.tensor([[3, 4, 5, 40, 6, 41]])  # vocab 40: two ids of a larger tokenizer
    with pytest.raises(ValueError, match=r"^2 of 6 token ids are outside the vocabulary \[0, 40\) of this model$"):
        model(ids)
    with pytest.raises(ValueError, match=r"must be \(B, T\) integer token ids; got shape \(4,\)"):
        model(ids[0, :4])
    assert model(ids[:, :3]).shape == (1, 3, 40)


# --- MEDS versions: which one renamed patient_id ------------------------------------------------------
def test_a_patient_id_shard_is_said_to_predate_meds_0_3_2(tmp_path, capsys):
    meds = write_meds(tmp_path / "meds", stay(1, T0, T0 + h(30)))
    shard = meds / "data" / "train" / "0.parquet"
    pl.read_parquet(shard).rename({"subject_id": "patient_id"}).write_parquet(shard)
    (meds / "metadata").mkdir()
    (meds / "metadata" / "dataset.json").write_text('{"meds_version": "0.3.0"}')
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok")]) == 2
    assert one_error_line(capsys).endswith(
        f"MEDS shard {shard} lacks column 'subject_id' (found 'patient_id': the name used before MEDS 0.3.2); "
        "ehrfm reads MEDS 0.4 data (subject_id, time, code); its metadata says meds_version 0.3.0")


def test_aces_readmission_keeps_the_first_stay_of_a_record_without_birth(aces_cli, tmp_path):  # noqa: F811
    """A MEDS dataset without MEDS_BIRTH events (many ETLs write none): the readmission config's
    own-stay window was anchored on the previous discharge or birth, so every record's first stay
    lost its label (2 labels instead of 5 on such data). Anchored on the stay's admission it needs no birth."""
    from ehrfm.clinical.labels import make_labels

    no_birth = lambda ev: [e for e in ev if e[2] != "MEDS_BIRTH"]  # noqa: E731
    events = no_birth(stay(1, T0, T0 + h(100)) + stay(1, T0 + h(300), T0 + h(400)))  # readmitted 200 h later
    events += no_birth(stay(2, T0, T0 + h(50)))
    meds = write_meds(tmp_path / "meds", events)
    ours = sorted(make_labels(meds, "readmission_30d")[0].select("subject_id", "prediction_time", "boolean_value").iter_rows())
    (tmp_path / "aces").mkdir()
    aces = pl.read_parquet(run_aces(aces_cli, meds, "readmission_30d", tmp_path / "aces"))
    got = sorted(aces.select("subject_id", "prediction_time", "boolean_value").iter_rows())
    assert got == ours == [(1, T0 + h(100), True), (1, T0 + h(400), False), (2, T0 + h(50), False)]
