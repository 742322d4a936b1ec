"""A twelfth clinical review (a helper trying the labels and heads as a user): out-of-range windows,
a label file named .csv, and --overwrite deleting what a user put inside an ehrfm output.

Each test fails without its fix: `ehrfm labels --gap-hours 1e308` ended in an OverflowError
traceback (so did a label sidecar holding such a window, in `ehrfm audit`); `ehrfm baseline
--windows 99999999999999d` wrapped around int64 and silently counted no timed event; `ehrfm labels
--task X --out labels.csv` wrote parquet bytes under a CSV name; `ehrfm labels --task all --out DIR
--overwrite` deleted the user's own files in DIR (their label files beside ours, notes) without a word.
"""

from __future__ import annotations

import json
import subprocess
import sys

import polars as pl
import pytest

from ehrfm.errors import UserError


def _ehrfm(*argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, argv)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("flag, value, task", [("--gap-hours", "1e308", "in_hospital_mortality"),
                                               ("--transfer-hours", "1e300", "icu_admission"),
                                               ("--direct-icu-minutes", "1e307", "icu_admission"),
                                               ("--long-los-days", "60000", "long_los"),
                                               ("--readmission-days", "inf", "readmission_30d")])
def test_a_label_window_longer_than_a_life_is_refused_in_one_line(demo_meds, tmp_path, flag, value, task):
    p = _ehrfm("labels", demo_meds, "--task", task, flag, value, "--out", tmp_path / "x.parquet")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ehrfm labels: error: {flag} must be a finite number"), p.stderr
    assert "(150 years)" in lines[0] or value == "inf", lines[0]
    assert not list(tmp_path.iterdir())


def test_a_window_of_150_years_is_still_a_window(demo_meds):
    from ehrfm.clinical.labels import check_label_window, make_labels

    assert check_label_window("readmission_days", 150 * 365.25) == 150 * 365.25
    with pytest.raises(UserError, match="at most 54787.5 \\(150 years\\)"):
        check_label_window("readmission_days", 150 * 365.25 + 1)
    labels, info = make_labels(demo_meds, "readmission_30d", readmission_days=150 * 365)
    assert info["n"] == labels.height > 0


def test_a_label_sidecars_window_out_of_range_is_named_not_a_traceback(demo_meds, tmp_path):
    """audit (and zero-shot) read the windows a label file was made with from its sidecar JSON."""
    from ehrfm.clinical.audit import audit
    from ehrfm.clinical.labels import make_labels, write_labels
    from ehrfm.clinical.zeroshot import label_options

    labels, info = make_labels(demo_meds, "readmission_30d")
    path = write_labels(labels, tmp_path / "readmission_30d.parquet", info)
    assert audit(demo_meds, path, task="readmission_30d").tasks["readmission_30d"].outcome_code_in_history == 0
    side = json.loads(path.with_suffix(".json").read_text())
    for bad in (1e300, -3, "thirty", True):
        side["config"]["readmission_days"] = bad
        path.with_suffix(".json").write_text(json.dumps(side))
        with pytest.raises(UserError, match=f"label sidecar {path.with_suffix('.json')}: config 'readmission_days' must "
                                            "be a finite number > 0"):
            audit(demo_meds, path, task="readmission_30d")
        with pytest.raises(UserError, match="config 'readmission_days' must be a finite number > 0"):
            label_options(path)
    side["config"]["readmission_days"] = 30
    path.with_suffix(".json").write_text(json.dumps(side))
    assert label_options(path)["readmission_days"] == 30.0


def test_a_history_window_beyond_int64_is_refused():
    from ehrfm.clinical.baseline import MAX_WINDOW_US, parse_windows

    assert parse_windows("full,1000y")[1] == ("1000y", MAX_WINDOW_US)
    for spec in ("99999999999999d", "1001y", "300000y"):
        with pytest.raises(UserError, match=f"bad history window '{spec}': a window spans at most 1000 years"):
            parse_windows(f"full,{spec}")


def test_a_label_file_is_named_parquet(demo_meds, tmp_path):
    for name in ("labels.csv", "labels.parquet.bak", "L.txt"):
        p = _ehrfm("labels", demo_meds, "--task", "long_los", "--out", tmp_path / name)
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [
            f"ehrfm labels: error: --out {tmp_path / name}: this command writes a parquet file; name it with .parquet "
            f"(e.g. {(tmp_path / name).with_suffix('.parquet').name})"], p.stderr
    assert not list(tmp_path.iterdir())
    for name in ("L.PARQUET", "no_suffix"):  # no suffix: a name as the user wants it, as before
        p = _ehrfm("labels", demo_meds, "--task", "long_los", "--out", tmp_path / name)
        assert p.returncode == 0, p.stderr
        sidecar = (tmp_path / name).with_suffix(".json")
        assert pl.read_parquet(tmp_path / name).height == json.loads(sidecar.read_text())["n"]


def test_overwrite_keeps_what_a_user_put_inside_an_ehrfm_output(demo_meds, tmp_path):
    from ehrfm.io import OUTPUT_FILES, OUTPUT_MARKER, output_entries

    out = tmp_path / "labels"
    assert _ehrfm("labels", demo_meds, "--task", "all", "--out", out).returncode == 0
    assert output_entries(out) == {"labels.json", *(f"{t}.{ext}" for t in ("icu_admission", "in_hospital_mortality",
                                                                           "long_los", "readmission_30d")
                                                    for ext in ("json", "parquet"))}
    (out / "NOTES.txt").write_text("mine\n")  # a user's files: notes, an ACES task beside ours
    (out / "my_task").mkdir()
    (out / "my_task" / "0.parquet").write_bytes(b"mine")
    p = _ehrfm("labels", demo_meds, "--task", "all", "--out", out, "--overwrite")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"ehrfm labels: error: output {out} holds 2 file(s) that `ehrfm labels` did not write there (NOTES.txt, "
        f"my_task/0.parquet): --overwrite would delete them with the rest; move them out of {out}, or choose "
        "another --out"], p.stderr
    assert (out / "NOTES.txt").read_text() == "mine\n" and (out / "my_task" / "0.parquet").read_bytes() == b"mine"
    (out / "NOTES.txt").unlink()
    (out / "my_task" / "0.parquet").unlink()  # an empty directory left: no file of the user's is lost
    p = _ehrfm("labels", demo_meds, "--task", "all", "--out", out, "--overwrite")
    assert p.returncode == 0, p.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_MARKER, OUTPUT_FILES, *output_entries(out)])
    assert (out / OUTPUT_MARKER).read_text() == "labels\n"  # what an older ehrfm reads: the command alone
    # an output of an older ehrfm (no list of its files) is replaced whole, as before
    (out / OUTPUT_FILES).unlink()
    (out / "stale.parquet").write_text("old")
    assert _ehrfm("labels", demo_meds, "--task", "all", "--out", out, "--overwrite").returncode == 0
    assert not (out / "stale.parquet").exists()


def _zoned_copy(meds, out, zone="America/New_York"):
    """`meds` with every shard's times given `zone` (the same wall clock: another ETL writing local times zoned)."""
    import shutil

    shutil.copytree(meds, out)
    for f in (out / "data").rglob("*.parquet"):
        pl.read_parquet(f).with_columns(pl.col("time").dt.replace_time_zone(zone, ambiguous="earliest",
                                                                           non_existent="null")).write_parquet(f)
    return out


def test_day_rules_count_the_days_of_zoned_data_on_its_own_calendar(tmp_path, capsys):
    """A date-only death (this ETL's dod, 23:59:59) the day of a discharge to an unknown place is an in-hospital
    death. Zoned America/New_York with the same wall clock, it sat at 04:59:59 UTC the next day: not a date, a
    death after discharge. In 2126, too, where polars keeps standard time (no DST rules past 2037)."""
    from ehrfm.clinical.audit import audit
    from ehrfm.clinical.labels import make_labels, write_labels
    from tokenization.etl import etl

    raw = tmp_path / "raw"
    (raw / "hosp").mkdir(parents=True)
    (raw / "hosp/patients.csv").write_text("subject_id,gender,anchor_age,anchor_year,dod\n1,F,60,2126,2126-04-28\n"
                                           "2,M,70,2126,\n3,F,65,2126,2126-07-04\n4,M,55,2150,\n")
    (raw / "hosp/admissions.csv").write_text(
        "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
        "1,11,2126-04-25 10:00:00,2126-04-28 14:00:00,,URGENT,ER,\n"  # unknown place, dod that day
        "2,21,2126-05-01 09:00:00,2126-05-04 12:00:00,,URGENT,ER,HOME\n"
        "3,31,2126-07-01 09:00:00,2126-07-04 10:00:00,2126-07-04 10:00:00,URGENT,ER,DIED\n"
        "4,41,2150-01-10 09:00:00,2150-01-12 10:00:00,,URGENT,ER,HOME\n")
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    _zoned_copy(tmp_path / "meds", tmp_path / "zoned")
    capsys.readouterr()
    outcomes = {}
    for name in ("meds", "zoned"):
        labels, _ = make_labels(tmp_path / name, "in_hospital_mortality")
        outcomes[name] = labels.sort("subject_id").select("subject_id", "boolean_value").rows()
        path = write_labels(labels, tmp_path / f"{name}.parquet", _)
        t = audit(tmp_path / name, path).tasks["in_hospital_mortality"]
        assert (t.outcome_code_in_history, t.date_only_same_day, t.midnight_same_day) == (0, 0, 0), name
    assert outcomes["meds"] == outcomes["zoned"] == [(1, True), (2, False), (3, True), (4, False)]


def test_the_audit_of_zoned_data_counts_its_days_on_its_calendar(demo_meds, tmp_path, capsys):
    """The real demo zoned America/New_York: its own labels (the same 242 / 250) were flagged as leaking in 116 of
    242 mortality histories (midnight and same-day rules on UTC days)."""
    from ehrfm.clinical.audit import audit
    from ehrfm.clinical.labels import make_labels, write_label_dir

    zoned = _zoned_copy(demo_meds, tmp_path / "zoned")
    capsys.readouterr()
    labels, info = make_labels(zoned, "all")
    assert {t: i["n"] for t, i in info.items()} == {"in_hospital_mortality": 242, "long_los": 242, "icu_admission": 250,
                                                   "readmission_30d": 255}
    write_label_dir(labels, info, tmp_path / "labels")
    plain, _ = make_labels(demo_meds, "all")
    write_label_dir(plain, _, tmp_path / "plain")
    said = {}
    for name, meds in (("labels", zoned), ("plain", demo_meds)):
        res = audit(meds, tmp_path / name)
        said[name] = {t: (a.outcome_code_in_history, a.date_only_same_day, a.midnight_same_day) for t, a in res.tasks.items()}
        assert res.clean, name
    assert said["labels"] == said["plain"] and said["plain"]["in_hospital_mortality"][:2] == (0, 0), said


def test_a_local_day_ends_at_the_next_local_midnight_on_changeover_days():
    """A day of 23 or 25 hours (a review helper: a 24 h day put the end of a discharge day an hour off)."""
    from datetime import datetime

    from ehrfm.meds_io import day_end_expr, wall_clock

    def us(*a):
        return int((datetime(*a) - datetime(1970, 1, 1)).total_seconds()) * 1_000_000

    ny = "America/New_York"
    t = [us(2023, 3, 12, 6), us(2023, 11, 5, 4), us(2023, 6, 1, 12)]  # 01:00 EST on a 23 h day; 00:00 EDT on a 25 h one
    ends = pl.select(day_end_expr(pl.lit(pl.Series(t)), ny)).to_series().to_list()
    assert ends == [us(2023, 3, 13, 4), us(2023, 11, 6, 5), us(2023, 6, 2, 4)]
    assert [x % 86_400_000_000 for x in wall_clock(t, ny)] == [3_600_000_000, 0, 8 * 3_600_000_000]
    assert pl.select(day_end_expr(pl.lit(pl.Series(t)), None)).to_series().to_list() == [us(2023, 3, 13), us(2023, 11, 6),
                                                                                       us(2023, 6, 2)]
