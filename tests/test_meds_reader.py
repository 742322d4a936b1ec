"""The one MEDS reader (ehrfm.meds_io) as every command sees it: MEDS 0.3 shards, split folders
with other names, and non-static codes with a null time. Small hand-made datasets, invented values."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.app.cli import main
from ehrfm.clinical.labels import make_labels, read_labels, write_labels
from ehrfm.errors import UserError
from ehrfm.meds_io import open_meds
from ehrfm.tokens import TokenDir

T0 = datetime(2150, 1, 1, 8, 0)
ADM = "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"


def subject(sid: int, died: bool = False, death_time_null: bool = False) -> list[tuple]:
    """One subject: gender (static), birth, a 3-day stay with labs; optionally a death."""
    ev = [(sid, None, "GENDER//F" if sid % 2 else "GENDER//M", None), (sid, datetime(2100, 1, 1), "MEDS_BIRTH", None),
          (sid, T0, ADM, None)]
    ev += [(sid, T0 + timedelta(hours=6 * k), "LAB//1//mg/dL", float(sid % 7 + k)) for k in range(1, 6)]
    dis = T0 + timedelta(days=3)
    ev.append((sid, dis, "HOSPITAL_DISCHARGE//DIED" if died else "HOSPITAL_DISCHARGE//HOME", None))
    if died:
        ev.append((sid, None if death_time_null else dis, "MEDS_DEATH", None))
    return ev


def write_shard(path: Path, events: list[tuple], id_column: str = "subject_id") -> None:
    rows = sorted(events, key=lambda r: (r[0], r[1] is not None, r[1] or datetime.min))
    table = pa.table({
        id_column: pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
        "code": pa.array([r[2] for r in rows], pa.string()),
        "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def write_dataset(root: Path, folders: dict[str, list[int]], id_column: str = "subject_id", **subject_opts) -> Path:
    for folder, sids in folders.items():
        write_shard(root / "data" / folder / "0.parquet", [e for s in sids for e in subject(s, **subject_opts)], id_column)
    return root


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def reader_commands(meds, labels, out) -> dict[str, list[str]]:
    """The CLI of every MEDS reader on dataset `meds` (labels: a label file for baseline and audit);
    outputs under `out` as tok/, lab/, base/."""
    return {
        "tokenize": ["tokenize", str(meds), "--out", str(out / "tok")],
        "labels": ["labels", str(meds), "--task", "all", "--out", str(out / "lab")],
        "baseline": ["baseline", str(meds), "--labels", str(labels), "--out", str(out / "base")],
        "audit": ["audit", str(meds), "--labels", str(labels)],
    }


# --- fault 7: MEDS 0.3 (patient_id) -----------------------------------------------------------------
def test_meds_03_shards_are_refused_by_every_reader_in_one_line(tmp_path, capsys):
    ok = write_dataset(tmp_path / "ok", {"train": list(range(1, 9))})
    labels, info = make_labels(ok, "long_los")
    write_labels(labels, tmp_path / "los.parquet", info)
    assert "has the stay id column hadm_id" in capsys.readouterr().err  # the hand-made shards have none
    old = write_dataset(tmp_path / "old", {"train": list(range(1, 9))}, id_column="patient_id")
    for name, argv in reader_commands(old, tmp_path / "los.parquet", tmp_path).items():
        assert main(argv) == 2, name
        line = one_error_line(capsys)
        assert str(old / "data" / "train" / "0.parquet") in line, (name, line)
        assert "lacks column 'subject_id'" in line and "'patient_id'" in line and "MEDS 0.4" in line, (name, line)
    assert not any((tmp_path / n).exists() for n in ("tok", "lab", "base"))
    # the same for a MEDS 0.3 label file and a 0.3 flat layout's subject_splits.parquet
    pq.write_table(pq.read_table(tmp_path / "los.parquet").rename_columns(["patient_id", "prediction_time", "boolean_value"]),
                   tmp_path / "old_labels.parquet")
    assert main(["baseline", str(ok), "--labels", str(tmp_path / "old_labels.parquet"), "--out", str(tmp_path / "b2")]) == 2
    line = one_error_line(capsys)
    assert "old_labels.parquet lacks column 'subject_id' (found 'patient_id'" in line and "MEDS 0.4" in line
    flat = tmp_path / "flat"
    write_shard(flat / "data" / "0.parquet", subject(1))
    (flat / "metadata").mkdir()
    pl.DataFrame({"patient_id": [1], "split": ["train"]}).write_parquet(flat / "metadata" / "subject_splits.parquet")
    assert main(["tokenize", str(flat), "--out", str(tmp_path / "tok")]) == 2
    line = one_error_line(capsys)
    assert "subject_splits.parquet lacks column 'subject_id' (found 'patient_id'" in line and "MEDS 0.4" in line


# --- fault 8: split folders with other names ----------------------------------------------------------
def test_split_aliases_are_mapped_and_said(tmp_path, capsys):
    meds = write_dataset(tmp_path / "meds", {"train": list(range(1, 15)), "val": [15, 16, 17], "test": [18, 19, 20]})
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    err = capsys.readouterr().err
    assert "val as tuning" in err and "test as held_out" in err
    stats = json.loads((tmp_path / "tok" / "stats.json").read_text())
    assert {s: v["subjects"] for s, v in stats["splits"].items()} == {"train": 14, "tuning": 3, "held_out": 3}
    assert stats["split_aliases"] == {"test": "held_out", "val": "tuning"}
    assert TokenDir(tmp_path / "tok").split("held_out").subject_ids.tolist() == [18, 19, 20]


def test_unknown_split_folders_are_refused_by_name(tmp_path, capsys):
    meds = write_dataset(tmp_path / "meds", {"train": list(range(1, 9)), "fold_1": [9, 10], "extra": [11]})
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok")]) == 2
    line = one_error_line(capsys)
    assert "extra, fold_1" in line and "not MEDS splits" in line
    assert not (tmp_path / "tok").exists()
    # A flat layout whose subject_splits.parquet uses an alias is mapped the same way.
    flat = tmp_path / "flat"
    write_shard(flat / "data" / "0.parquet", [e for s in range(1, 6) for e in subject(s)])
    (flat / "metadata").mkdir()
    pl.DataFrame({"subject_id": [1, 2, 3, 5], "split": ["train", "train", "train", "test"]}).write_parquet(
        flat / "metadata" / "subject_splits.parquet")
    capsys.readouterr()
    open_meds(flat)
    assert "1 subjects of the shards are in no split" in capsys.readouterr().err  # subject 4: said, not silent
    pl.DataFrame({"subject_id": [1, 2, 3, 4, 5], "split": ["train", "train", "train", "val", "test"]}).write_parquet(
        flat / "metadata" / "subject_splits.parquet")
    ds = open_meds(flat)
    assert {s: len(v) for s, v in ds.shards.items()} == {"train": 1, "tuning": 1, "held_out": 1}
    # shard folders that are not split names (meds_etl) take their splits from the metadata too
    (flat / "data" / "0.parquet").rename(flat / "data" / "shard_0.parquet")
    (flat / "data" / "part").mkdir()
    (flat / "data" / "shard_0.parquet").rename(flat / "data" / "part" / "0.parquet")
    assert open_meds(flat).subject_splits().height == 5
    assert ds.subject_splits().sort("subject_id")["split"].to_list() == ["train", "train", "train", "tuning", "held_out"]


# --- fault 9: a non-static code with a null time ----------------------------------------------------
def test_null_time_death_is_never_static(tmp_path, capsys):
    # Subjects 1-3 die with a null-time MEDS_DEATH (another ETL's output); the death must not
    # become a static token at the start of every history, nor a count feature.
    meds = tmp_path / "meds"
    events = [e for s in range(1, 4) for e in subject(s, died=True, death_time_null=True)]
    events += [e for s in range(4, 13) for e in subject(s)]
    write_shard(meds / "data" / "train" / "0.parquet", events)
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    err = capsys.readouterr().err
    assert "MEDS_DEATH (3 rows)" in err
    td = TokenDir(tmp_path / "tok")
    assert "MEDS_DEATH" not in td.vocab  # its only rows were the null-time ones
    assert "GENDER//F" in td.vocab  # truly static codes stay static
    stats = json.loads((tmp_path / "tok" / "stats.json").read_text())
    assert stats["dropped_null_time_rows"] == {"MEDS_DEATH": 3}
    start = td.vocab.index("TIMELINE_START")
    toks = np.asarray(td.split("train").tokens)
    assert (toks == start).sum() == 12
    # labels count the deaths without a time; the DIED discharge still marks the deaths
    labels, info = make_labels(meds, "in_hospital_mortality")
    assert info["deaths"]["deaths_without_time"] == 3
    assert info["dropped_null_time_rows"] == {"MEDS_DEATH": 3}
    assert labels["boolean_value"].sum() == 3


def test_null_time_rows_of_a_timed_code_are_dropped_and_counted(tmp_path, capsys):
    from ehrfm.clinical.baseline import count_features

    meds = tmp_path / "meds"
    events = [e for s in range(1, 5) for e in subject(s)]
    events += [(1, None, "LAB//1//mg/dL", 3.0), (2, None, "LAB//1//mg/dL", 4.0), (3, None, "RACE//WHITE", None)]
    write_shard(meds / "data" / "train" / "0.parquet", events)
    ds = open_meds(meds)
    assert ds.null_time_codes == {"LAB//1//mg/dL": 2}  # RACE//WHITE never has a time: static
    assert "LAB//1//mg/dL (2 rows)" in capsys.readouterr().err
    labels = pl.DataFrame({"label_idx": [0], "subject_id": [1], "prediction_time": [T0 + timedelta(hours=1)]})
    counts, _ = count_features(ds, labels, [("full", None)])
    got = dict(counts.select("feature", "count").iter_rows())
    assert got == {"full/GENDER//F": 1, "full/MEDS_BIRTH": 1, f"full/{ADM}": 1}


def test_open_meds_refuses_bad_layouts(tmp_path):
    with pytest.raises(UserError, match="not found"):
        open_meds(tmp_path / "nope")
    flat = tmp_path / "flat"
    write_shard(flat / "data" / "0.parquet", subject(1))
    with pytest.raises(UserError, match="subject_splits.parquet is missing"):
        open_meds(flat)
    write_shard(flat / "data" / "train" / "0.parquet", subject(2))
    with pytest.raises(UserError, match="beside the split folders train"):
        open_meds(flat)


# --- MEDS from other ETLs: column types, null ids, a subject in two splits -----------------------------
def _rewrite(root: Path, change) -> Path:
    """Every shard of `root` rewritten by `change` (a polars DataFrame -> DataFrame)."""
    for f in sorted((root / "data").rglob("*.parquet")):
        change(pl.read_parquet(f)).write_parquet(f)
    return root


BAD_MEDS = {  # name -> (change of every shard, what the message names)
    "time as dates": (lambda d: d.with_columns(pl.col("time").cast(pl.Date)), "column time is Date"),
    "time as epoch ms": (lambda d: d.with_columns(pl.col("time").dt.epoch("ms")), "column time is Int64"),
    "subject_id as text": (lambda d: d.with_columns(pl.col("subject_id").cast(pl.String)), "column subject_id is String"),
    "numeric_value as text": (lambda d: d.with_columns(pl.col("numeric_value").cast(pl.String)), "column numeric_value is String"),
    "a null subject_id": (lambda d: d.with_columns(subject_id=pl.when(pl.int_range(pl.len()) == 3).then(None)
                                                   .otherwise(pl.col("subject_id"))), "1 rows with a null subject_id"),
    "a null code": (lambda d: d.with_columns(code=pl.when(pl.int_range(pl.len()) < 2).then(None).otherwise(pl.col("code"))),
                    "2 rows with a null code"),
}


@pytest.mark.parametrize("bad", sorted(BAD_MEDS))
def test_wrongly_typed_or_null_columns_are_refused_by_every_reader_in_one_line(tmp_path, capsys, bad):
    # Before: dates and epoch numbers were cast silently (labels at other times, or in 1970), text ids
    # crashed with a polars traceback, and labels/audit/baseline dropped null-id rows that tokenize refused.
    ok = write_dataset(tmp_path / "ok", {"train": list(range(1, 9))})
    labels, info = make_labels(ok, "long_los")
    write_labels(labels, tmp_path / "los.parquet", info)
    assert "has the stay id column hadm_id" in capsys.readouterr().err  # the hand-made shards have none
    change, named = BAD_MEDS[bad]
    meds = _rewrite(write_dataset(tmp_path / "meds", {"train": list(range(1, 9))}), change)
    for name, argv in reader_commands(meds, tmp_path / "los.parquet", tmp_path).items():
        assert main(argv) == 2, name
        line = one_error_line(capsys)
        assert str(meds / "data" / "train" / "0.parquet") in line and named in line, (name, line)
    assert not any((tmp_path / n).exists() for n in ("tok", "lab", "base"))


def test_a_date64_time_column_is_refused_as_dates_are(tmp_path, capsys):
    """A review helper: a time column stored as parquet date64 reads in polars as a millisecond timestamp, so it
    passed as one: every event at 00:00, before the prediction times of its own day, and labels leaked (the
    audit found 12 readmission labels with their outcome inside). Refused as date32 is, by every reader (a label
    file's date64 prediction_time already was)."""
    ok = write_dataset(tmp_path / "ok", {"train": list(range(1, 9))})
    labels, info = make_labels(ok, "long_los")
    write_labels(labels, tmp_path / "los.parquet", info)
    meds = write_dataset(tmp_path / "meds", {"train": list(range(1, 9))})
    shard = meds / "data" / "train" / "0.parquet"
    table = pq.read_table(shard)
    at = table.schema.get_field_index("time")
    pq.write_table(table.set_column(at, "time", table["time"].cast(pa.date64())), shard)
    capsys.readouterr()
    for name, argv in reader_commands(meds, tmp_path / "los.parquet", tmp_path).items():
        assert main(argv) == 2, name
        line = one_error_line(capsys)
        assert f"MEDS shard {shard}: column time is date64 (dates, no time of day), not a timestamp" in line, (name, line)
    assert not any((tmp_path / n).exists() for n in ("tok", "lab", "base"))
    table = pq.read_table(tmp_path / "los.parquet")
    at = table.schema.get_field_index("prediction_time")
    pq.write_table(table.set_column(at, "prediction_time", table["prediction_time"].cast(pa.date64())), tmp_path / "d.parquet")
    with pytest.raises(UserError, match="column prediction_time is Date, not a timestamp"):  # read from arrow as Date
        read_labels(tmp_path / "d.parquet")


def test_events_before_birth_are_counted_and_said(tmp_path, capsys):
    """A review helper moved one subject's MEDS_BIRTH past all its events (MEDS from another tool): tokenize
    gave it the youngest age token without a word. Now counted per split in stats.json and said once."""
    meds = write_dataset(tmp_path / "meds", {"train": [1, 2, 3, 4], "tuning": [5, 6], "held_out": [7, 8]})
    shard = meds / "data" / "train" / "0.parquet"
    late = pl.col("time").dt.offset_by("300y")
    pl.read_parquet(shard).with_columns(pl.when((pl.col("code") == "MEDS_BIRTH") & pl.col("subject_id").is_in([2, 3]))
                                        .then(late).otherwise(pl.col("time")).alias("time")).write_parquet(shard)
    capsys.readouterr()
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    stats = json.loads((tmp_path / "tok" / "stats.json").read_text())
    assert [stats["splits"][s]["subjects_with_events_before_birth"] for s in ("train", "tuning", "held_out")] == [2, 0, 0]
    said = [line for line in capsys.readouterr().err.splitlines() if "before their MEDS_BIRTH" in line]
    assert said == ["ehrfm: warning: tokenize: 2 subjects have events before their MEDS_BIRTH (train 2; stats.json "
                    "subjects_with_events_before_birth): their birth or event times are wrong in the MEDS data, and their "
                    "age token is the youngest bin"]


def test_subjects_without_a_birth_row_are_counted_and_said(tmp_path, capsys):
    """A review helper dropped the MEDS_BIRTH rows (an ETL that writes none, or under another code): every
    subject's age token became AGE//UNK without a word. Now counted per split in stats.json and said once;
    a dataset with every birth says nothing."""
    meds = write_dataset(tmp_path / "meds", {"train": [1, 2, 3, 4], "tuning": [5, 6], "held_out": [7, 8]})
    capsys.readouterr()
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "ok"), "--min-count", "1"]) == 0
    stats = json.loads((tmp_path / "ok" / "stats.json").read_text())
    assert [stats["splits"][s]["subjects_without_birth"] for s in ("train", "tuning", "held_out")] == [0, 0, 0]
    assert "MEDS_BIRTH row" not in capsys.readouterr().err
    for split, drop in (("train", [2, 3]), ("held_out", [7])):
        shard = meds / "data" / split / "0.parquet"
        pl.read_parquet(shard).filter(~((pl.col("code") == "MEDS_BIRTH") & pl.col("subject_id").is_in(drop))).write_parquet(shard)
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    stats = json.loads((tmp_path / "tok" / "stats.json").read_text())
    assert [stats["splits"][s]["subjects_without_birth"] for s in ("train", "tuning", "held_out")] == [2, 0, 1]
    said = [line for line in capsys.readouterr().err.splitlines() if "MEDS_BIRTH row" in line]
    assert said == ["ehrfm: warning: tokenize: 3 subjects have no MEDS_BIRTH row (train 2, held_out 1; stats.json "
                    "subjects_without_birth): their age token is AGE//UNK (an ETL that writes no birth, or one that "
                    "dropped it: `ehrfm etl` drops an implausible anchor_age's, counted as birth_of_implausible_anchor_age)"]


def test_events_written_twice_are_counted_and_said_when_many(tmp_path, capsys):
    """A foreign ETL that wrote its events twice (a join that duplicated rows) doubled every code token without a
    word. Rows equal to an earlier one in every event column are counted per split (stats.json repeated_events) and
    kept as written; said when a code family's rows repeat for 45% or more (a table written twice: 50%), not for a
    few (orders given twice at one time are real: 8.1% of the MIMIC-IV demo's events, where every tokenize said it)."""
    meds = write_dataset(tmp_path / "meds", {"train": [1, 2, 3, 4], "tuning": [5, 6], "held_out": [7, 8]})
    shard = meds / "data" / "train" / "0.parquet"
    one = pl.read_parquet(shard)
    timed = one.filter(pl.col("time").is_not_null() & (pl.col("code") != "MEDS_BIRTH"))  # births are no event token
    pl.concat([one, timed.head(1)]).sort("subject_id", "time", maintain_order=True).write_parquet(shard)
    capsys.readouterr()
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "few"), "--min-count", "1"]) == 0
    stats = json.loads((tmp_path / "few" / "stats.json").read_text())
    assert [stats["splits"][s]["repeated_events"] for s in ("train", "tuning", "held_out")] == [1, 0, 0]
    assert "repeat an earlier row" not in capsys.readouterr().err and stats["splits"]["train"]["repeated_families"] == {}
    pl.concat([one, timed]).sort("subject_id", "time", maintain_order=True).write_parquet(shard)
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "twice"), "--min-count", "1"]) == 0
    stats = json.loads((tmp_path / "twice" / "stats.json").read_text())
    assert stats["splits"]["train"]["repeated_events"] == timed.height
    said = [line for line in capsys.readouterr().err.splitlines() if "repeat an earlier row" in line]
    families = stats["splits"]["train"]["repeated_families"]
    assert families and all(r * 2 == n for n, r in families.values()), families  # each row once more: half repeat
    assert len(said) == 1 and "(stats.json repeated_families): a table written twice" in said[0], said
    f, (n, r) = max(families.items(), key=lambda x: x[1][1])
    assert f"{f} {r:,} of {n:,} (50%)" in said[0], said


def test_tokenize_refuses_flags_of_the_other_mode(tmp_path, capsys):
    """A review helper: `tokenize TOK --decode --out X` printed the decode and wrote nothing, `--decode --codes
    flat --min-count 3` decoded as without them, `tokenize MEDS --out T --subject 1 --limit 3` tokenized every
    subject; `--limit -1` printed everything; a subject of held_out was "not in split 'train'" without a hint.
    Now each is one line naming the flags, before any work."""
    meds = write_dataset(tmp_path / "meds", {"train": [1, 2, 3, 4], "tuning": [5, 6], "held_out": [7, 8]})
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    tok = str(tmp_path / "tok")
    capsys.readouterr()
    cases = {
        ("--decode", "--out", str(tmp_path / "x")): "--out does not apply with --decode",
        ("--decode", "--codes", "flat", "--min-count", "3"): "--min-count, --codes do not apply with --decode",
        ("--out", str(tmp_path / "y"), "--subject", "1", "--limit", "3"): "--subject, --limit apply only with --decode",
        ("--decode", "--limit", "-1"): "--limit must be 0 (every token) or a positive number of tokens, not -1",
        ("--decode", "--subject", "7"): f"subject 7 is not in split 'train' of {tok}; it is in 'held_out' (pass --split held_out)",
        ("--decode", "--subject", "99"): f"subject 99 is not in split 'train' of {tok}; nor in any other split",
        ("--decode", "--subject", "1", "--index", "2"): "give --subject or --index, not both",
    }
    for argv, said in cases.items():
        assert main(["tokenize", tok, *argv]) == 2, argv
        line = one_error_line(capsys)
        assert line.startswith(f"ehrfm tokenize: error: {said}"), (argv, line)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert main(["tokenize", tok, "--decode", "--subject", "7", "--split", "held_out", "--limit", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# subject 7 (held_out): ") and out[1].endswith("TIMELINE_START")
    assert out[0].endswith(f"showing {len(out) - 1}")


def test_a_dataset_without_a_tuning_split_is_said_at_tokenize(tmp_path, capsys):
    """A review helper deleted data/tuning: tokenize succeeded without a word and `ehrfm train` first said
    "no split 'tuning'". Now tokenize says it; a dataset with a tuning split (or applying a tokenizer to a
    held-out set alone) does not."""
    meds = write_dataset(tmp_path / "meds", {"train": [1, 2, 3, 4], "held_out": [7, 8]})
    capsys.readouterr()
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "no tuning split" in line]
    assert len(said) == 1 and said[0].startswith(f"ehrfm: warning: MEDS dataset {meds} has no tuning split: `ehrfm train`")
    held = write_dataset(tmp_path / "held", {"held_out": [7, 8]})
    assert main(["tokenize", str(held), "--out", str(tmp_path / "tok2"), "--tokenizer", str(tmp_path / "tok")]) == 0
    assert "no tuning split" not in capsys.readouterr().err


def test_a_subject_in_two_splits_is_refused(tmp_path, capsys):
    meds = write_dataset(tmp_path / "meds", {"train": list(range(1, 9)), "held_out": [9, 10]})
    write_shard(meds / "data" / "held_out" / "1.parquet", subject(3) + subject(4))  # 3, 4 also in train
    for argv in (["tokenize", str(meds), "--out", str(tmp_path / "tok")],
                 ["labels", str(meds), "--task", "all", "--out", str(tmp_path / "lab")]):
        assert main(argv) == 2
        line = one_error_line(capsys)
        assert f"MEDS dataset {meds}: 2 subjects have rows in more than one split (2 in held_out and train)" in line, line
    flat = tmp_path / "flat"
    write_shard(flat / "data" / "0.parquet", [e for s in range(1, 4) for e in subject(s)])
    (flat / "metadata").mkdir()
    pl.DataFrame({"subject_id": [1, 2, 3, 2], "split": ["train", "train", "held_out", "held_out"]}).write_parquet(
        flat / "metadata" / "subject_splits.parquet")
    with pytest.raises(UserError, match="subject_splits.parquet: 1 subjects are listed in more than one split"):
        open_meds(flat)


def test_meds_from_another_etl_gives_the_same_labels(tmp_path):
    # What other ETLs write and ehrfm reads as is: narrower ids, time zones (the UTC instant), other
    # timestamp units, extra columns, no numeric values, unsorted rows, a shard with no rows.
    sids = list(range(1, 9))
    ref, _ = make_labels(write_dataset(tmp_path / "ref", {"train": sids}), "all")
    utc = pl.col("time").dt.replace_time_zone("UTC")
    variants = {
        "int32 ids": lambda d: d.with_columns(pl.col("subject_id").cast(pl.Int32)),
        "UTC": lambda d: d.with_columns(utc),
        "New York": lambda d: d.with_columns(utc.dt.convert_time_zone("America/New_York")),
        "ns": lambda d: d.with_columns(pl.col("time").cast(pl.Datetime("ns"))),
        "extra columns": lambda d: d.with_columns(text_value=pl.lit(None, pl.String), unit=pl.lit("mg/dL")),
        "numeric_value all null": lambda d: d.with_columns(numeric_value=pl.lit(None, pl.Float32)),
        "unsorted": lambda d: d.sample(fraction=1.0, shuffle=True, seed=0),
    }
    for i, (name, change) in enumerate(variants.items()):
        meds = _rewrite(write_dataset(tmp_path / f"m{i}", {"train": sids}), change)
        got, _ = make_labels(meds, "all")
        assert all(got[t].equals(ref[t]) for t in ref), name
    meds = write_dataset(tmp_path / "empty_shard", {"train": sids})
    pl.read_parquet(meds / "data" / "train" / "0.parquet").head(0).write_parquet(meds / "data" / "train" / "1.parquet")
    got, _ = make_labels(meds, "all")
    assert all(got[t].equals(ref[t]) for t in ref)


def test_null_ids_are_found_with_or_without_parquet_statistics(tmp_path):
    # open_meds reads null counts from the parquet footer when it has them, else scans the columns
    for stats in (True, False):
        meds = write_dataset(tmp_path / f"m{stats}", {"train": list(range(1, 5))})
        shard = meds / "data" / "train" / "0.parquet"
        df = pl.read_parquet(shard)
        df.with_columns(subject_id=pl.when(pl.int_range(pl.len()) < 3).then(None).otherwise(pl.col("subject_id"))).write_parquet(
            shard, statistics=stats, row_group_size=4)
        with pytest.raises(UserError, match=f"{shard}: 3 rows with a null subject_id"):
            open_meds(meds)


def test_shards_with_and_without_a_time_zone_read_alike(tmp_path, capsys):
    """One shard written with a UTC zone, the others naive (a tester's MEDS: polars SchemaError
    from every reader): each reader reads the UTC instant, so the results equal the all-naive data's."""
    folders = {"train": list(range(1, 9)), "tuning": [9, 10], "held_out": [11, 12]}
    naive = write_dataset(tmp_path / "naive", folders)
    mixed = write_dataset(tmp_path / "mixed", folders)
    train_shard = mixed / "data" / "train" / "0.parquet"
    pl.read_parquet(train_shard).with_columns(pl.col("time").dt.replace_time_zone("UTC")).write_parquet(train_shard)
    outs = {}
    for name, meds in (("naive", naive), ("mixed", mixed)):
        for cmd in ("tokenize", "labels"):
            assert main(reader_commands(meds, None, tmp_path / f"out_{name}")[cmd]) == 0, capsys.readouterr().err
        outs[name] = tmp_path / f"out_{name}"
    assert TokenDir(outs["naive"] / "tok").vocab_size == TokenDir(outs["mixed"] / "tok").vocab_size
    for f in sorted((outs["naive"] / "lab").glob("*.parquet")):
        assert pl.read_parquet(f).equals(pl.read_parquet(outs["mixed"] / "lab" / f.name)), f.name


def test_a_train_split_without_events_is_refused_by_tokenize(tmp_path, capsys):
    """An empty train shard beside full tuning/held-out ones used to give a tokenizer 'fitted on
    train' that knew no code (exit 0)."""
    meds = write_dataset(tmp_path / "meds", {"tuning": [1, 2], "held_out": [3, 4]})
    write_shard(meds / "data" / "train" / "0.parquet", [])
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok")]) == 2
    assert "the train split has 0 events" in one_error_line(capsys) and not (tmp_path / "tok").exists()


@pytest.mark.parametrize("blank", ["", "  "])
def test_blank_codes_are_refused_with_or_without_parquet_statistics(tmp_path, blank):
    # some exporters write a null code as "" (or spaces): every reader refuses it by count, never silently a code
    for stats in (True, False):
        meds = write_dataset(tmp_path / f"m{stats}", {"train": list(range(1, 5))})
        shard = meds / "data" / "train" / "0.parquet"
        df = pl.read_parquet(shard)
        df.with_columns(code=pl.when(pl.int_range(pl.len()) % 10 == 4).then(pl.lit(blank)).otherwise(pl.col("code"))).write_parquet(
            shard, statistics=stats, row_group_size=4)
        n = (pl.read_parquet(shard)["code"].str.strip_chars() == "").sum()
        assert n > 0
        with pytest.raises(UserError, match=f"{shard}: {n} rows whose code is empty or only spaces"):
            open_meds(meds)
    # a dataset of ordinary codes is untouched, whether its footers have statistics or not
    for stats in (True, False):
        meds = write_dataset(tmp_path / f"ok{stats}", {"train": [1, 2]})
        shard = meds / "data" / "train" / "0.parquet"
        pl.read_parquet(shard).write_parquet(shard, statistics=stats)
        open_meds(meds)


def test_a_zoned_time_column_is_read_as_utc_and_said_once(tmp_path, capsys):
    """A shard zoned America/New_York is read as UTC instants; labels made elsewhere on its local clock
    would sit hours off their histories, so the zone is named once per process (not per shard); UTC is silent."""
    from ehrfm import io as ehrfm_io
    from ehrfm import meds_io

    folders = {"train": [1, 2, 3, 4], "tuning": [5, 6], "held_out": [7, 8]}
    utc = pl.col("time").dt.replace_time_zone("UTC")
    for name, zone in (("ny", "America/New_York"), ("utc", "UTC")):
        meds = write_dataset(tmp_path / name, folders)
        for shard in (meds / "data").rglob("*.parquet"):
            pl.read_parquet(shard).with_columns(utc.dt.convert_time_zone(zone)).write_parquet(shard)
        ehrfm_io._WARNED_ONCE.discard(("MEDS zone", zone))
        capsys.readouterr()
        ds = meds_io.open_meds(meds)
        times = pl.concat([meds_io.read_shard(s) for shards in ds.shards.values() for s in shards])["time"]
        assert ds.time_zones() == ([] if zone == "UTC" else [zone])  # what tokenize records; UTC is the naive clock
        assert times.dtype == pl.Datetime("us") and times.dtype.time_zone is None
        err = capsys.readouterr().err
        if zone == "UTC":
            assert "time zone" not in err
        else:
            assert err.count("warning:") == 1 and "column time has time zone America/New_York" in err, err
