"""ETL and MEDS-reader faults of a break-it pass (2026-12-07): tables lost without a word, each of its kind.

- A double quote left open in a column the ETL does not read (labevents.comments, the last column) took
  every following row into one value: 16,282 rows read as 20, exit 0. The merged-record check saw only
  the columns read; the file's physical lines now account for the rows, and when they do not, the
  other columns are checked.
- A table kept as a folder (a Spark/BigQuery folder of parts, an archive unpacked into a folder named
  labevents.csv.gz) or in a folder inside hosp/ was "absent".
- A MEDS shard named 1.PARQUET was skipped, and one named .pq (or CSV) under data/ without a word.
"""

from __future__ import annotations

import gzip
import json
import shutil

import pytest

from ehrfm.errors import UserError
from tokenization.etl import etl


def _raw(mimic_demo_dir, tmp_path, *tables):
    raw = tmp_path / "raw"
    (raw / "hosp").mkdir(parents=True)
    for t in ("patients", "admissions", *tables):
        shutil.copy(mimic_demo_dir / "hosp" / f"{t}.csv.gz", raw / "hosp")
    return raw


def _lines(path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().split("\n")


def _with_field(lines: list[str], i: int, k: int, value: str) -> list[str]:
    """`lines` (a CSV's, none quoted) with field k of line i set to `value`."""
    fields = lines[i].split(",")
    fields[k] = value
    return [*lines[:i], ",".join(fields), *lines[i + 1:]]


def test_an_open_quote_in_a_column_not_read_is_refused_naming_it(mimic_demo_dir, tmp_path):
    raw = _raw(mimic_demo_dir, tmp_path)
    # rows without quoted fields (most of a table's): a quote opened in one is closed by none, nothing looks ragged
    plain = [line for line in _lines(mimic_demo_dir / "hosp" / "labevents.csv.gz")[1:] if line and '"' not in line][:400]
    lines = [_lines(mimic_demo_dir / "hosp" / "labevents.csv.gz")[0], *plain, ""]
    k, i = lines[0].split(",").index("comments"), 20
    (raw / "hosp" / "labevents.csv").write_text("\n".join(_with_field(lines, i, k, '"open comment')))
    expected = f"{raw / 'hosp' / 'labevents.csv'}: column 'comments' has 1 value holding a line break followed by what starts"
    with pytest.raises(UserError, match="^" + __import__("re").escape(expected)):
        etl(raw, tmp_path / "meds")
    assert not (tmp_path / "meds").exists()
    # free text over two lines in that column (a quoted line break, no record after it) is a sound file
    lines = _with_field(lines, i, k, '"first line\nsecond line"')
    (raw / "hosp" / "labevents.csv").write_text("\n".join(lines))
    etl(raw, tmp_path / "meds_ok")
    account = json.loads((tmp_path / "meds_ok" / "metadata" / "etl_config.json").read_text())["tables"]["hosp/labevents"]
    assert account["rows_read"] == len(lines) - 2, account


@pytest.mark.parametrize("layout", ["parts", "unpacked", "nested"])
def test_a_table_in_a_folder_is_refused_never_absent(mimic_demo_dir, tmp_path, layout):
    raw = _raw(mimic_demo_dir, tmp_path)
    src = mimic_demo_dir / "hosp" / "labevents.csv.gz"
    where = {"parts": "labevents/part-0.csv.gz", "unpacked": "labevents.csv.gz/labevents.csv.gz",
             "nested": "extra/labevents.csv.gz"}[layout]
    (raw / "hosp" / where).parent.mkdir(parents=True)
    shutil.copy(src, raw / "hosp" / where)
    with pytest.raises(UserError, match=r"table hosp/labevents: .*(is a folder|lies outside)"):
        etl(raw, tmp_path / "meds")


def test_meds_shards_are_read_whatever_the_case_of_parquet_and_other_files_are_said(synth_meds, tmp_path, capsys):
    from ehrfm.meds_io import open_meds

    meds = tmp_path / "meds"
    shutil.copytree(synth_meds, meds)
    (meds / "metadata" / "subject_splits.parquet").unlink()  # the split folders alone say who is where
    before = {s: len(v) for s, v in open_meds(meds).shards.items()}
    shard = sorted((meds / "data" / "train").glob("*.parquet"))[0]
    shard.rename(shard.with_suffix(".PARQUET"))
    assert {s: len(v) for s, v in open_meds(meds).shards.items()} == before
    capsys.readouterr()
    shard.with_suffix(".PARQUET").rename(shard.with_suffix(".pq"))
    after = {s: len(v) for s, v in open_meds(meds).shards.items()}
    assert after.get("train", 0) == before["train"] - 1
    err = capsys.readouterr().err
    assert f"left out 1 file(s) not named *.parquet (e.g. train/{shard.stem}.pq)" in err, err


def test_a_missing_code_dictionary_is_reported_beside_the_table_it_describes(mimic_demo_dir, tmp_path, capsys):
    """DESIGN.md: labevents + d_labitems, "absence reported in the summary"; it was not (codes "lab item 50813")."""
    raw = _raw(mimic_demo_dir, tmp_path, "labevents", "diagnoses_icd", "d_icd_diagnoses")
    etl(raw, tmp_path / "meds")
    out = capsys.readouterr().out
    assert "; dictionaries absent: hosp/d_labitems, their codes described by id)" in out, out
    config = json.loads((tmp_path / "meds" / "metadata" / "etl_config.json").read_text())
    assert config["dictionaries_missing"] == ["hosp/d_labitems"]  # d_icd_diagnoses is there; no icu table to describe


def test_warnings_and_errors_are_one_bounded_line_whatever_the_data_holds(capsys):
    from ehrfm.io import LINE_MAX_CHARS, error_line, warn

    warn("code LAB//x\nFAKE LINE \x1b[31mred\u2028end")
    err = capsys.readouterr().err
    assert err == "ehrfm: warning: code LAB//x\\nFAKE LINE \\x1b[31mred\\u2028end\n", err
    warn("codes " + "A" * 200_000)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < LINE_MAX_CHARS + 100 and err.rstrip().endswith("characters more)"), err[-80:]
    assert error_line("bad code X\r\nY") == "bad code X\\r\\nY"


def test_two_births_and_empty_splits_are_said(synth_meds, tmp_path, capsys):
    import polars as pl

    from tokenization.tokenize import tokenize

    meds = tmp_path / "meds"
    shutil.copytree(synth_meds, meds)
    shard = sorted((meds / "data" / "train").glob("*.parquet"))[0]
    df = pl.read_parquet(shard)
    births = df.filter(pl.col("code") == "MEDS_BIRTH").head(3).with_columns(pl.col("time") - pl.duration(days=40 * 365))
    pl.concat([births, df]).sort("subject_id", "time", nulls_last=False, maintain_order=True).write_parquet(shard)
    tokenize(meds, tmp_path / "tok")
    stats = json.loads((tmp_path / "tok" / "stats.json").read_text())
    assert stats["splits"]["train"]["subjects_with_several_births"] == 3
    assert stats["splits"]["tuning"]["subjects_with_several_births"] == 0
    assert "3 subjects have MEDS_BIRTH rows at two or more times (train 3" in capsys.readouterr().err
    # a split asked to be empty is said (it was written without a word)
    raw = json.loads((synth_meds / "metadata" / "etl_config.json").read_text())["raw"]
    etl(raw, tmp_path / "meds_train_only", split_fractions=(1.0, 0.0, 0.0))
    err = capsys.readouterr().err
    assert "etl: split 'tuning' gets no subjects (--split-fractions 1,0,0)" in err and "split 'held_out' gets no" in err, err
    assert sorted(p.name for p in (tmp_path / "meds_train_only" / "data").iterdir()) == ["train"]


def test_an_open_quote_in_a_table_whose_rows_hold_no_time_is_refused_too(mimic_demo_dir, tmp_path):
    """The merged-record check looked for an id, two fields and a date-time after the line break: hcpcsevents (a date,
    no time) kept 5 of its 61 rows, exit 0. A line of the file's column count in commas is a record too."""
    raw = _raw(mimic_demo_dir, tmp_path)
    lines = _lines(mimic_demo_dir / "hosp" / "hcpcsevents.csv.gz")
    i = next(i for i in range(5, len(lines)) if '"' not in lines[i])
    k = lines[0].split(",").index("short_description")  # a column the ETL does not read
    (raw / "hosp" / "hcpcsevents.csv").write_text("\n".join(_with_field(lines, i, k, '"open text')))
    with pytest.raises(UserError, match=r"hcpcsevents.csv: column 'short_description' has 1 value holding a line break"):
        etl(raw, tmp_path / "meds")


def test_a_header_with_an_empty_name_and_a_blank_line_reads_every_row(mimic_demo_dir, tmp_path):
    """A trailing comma on every line (an empty column name) and a blank line: the second look at the columns not
    read selected them by name and ended in a traceback; by position, every row is read as before."""
    raw = _raw(mimic_demo_dir, tmp_path)
    lines = [line + "," for line in _lines(mimic_demo_dir / "hosp" / "hcpcsevents.csv.gz") if line]
    (raw / "hosp" / "hcpcsevents.csv").write_text("\n".join(lines[:10] + [""] + lines[10:]) + "\n")
    etl(raw, tmp_path / "meds")
    account = json.loads((tmp_path / "meds" / "metadata" / "etl_config.json").read_text())["tables"]["hosp/hcpcsevents"]
    assert account["rows_read"] == len(lines) - 1, account


def test_links_back_up_inside_data_do_not_hang_the_reader(synth_meds, tmp_path):
    import os
    import subprocess
    import sys

    meds = tmp_path / "meds"
    shutil.copytree(synth_meds, meds)
    os.symlink("..", meds / "data" / "train" / "up1")
    os.symlink("..", meds / "data" / "tuning" / "up2")
    code = f"from ehrfm.meds_io import open_meds\ntry:\n    open_meds({str(meds)!r})\nexcept Exception as e:\n    print(type(e).__name__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)  # it grew without end
    assert p.returncode == 0, p.stderr
