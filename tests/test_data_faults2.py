"""More faults of real raw data and of MEDS from other tools, one test per kind, on real files.

Raw MIMIC-IV CSVs: numbers that parse but no float32 can hold (1e308, inf, NaN), quoted values
with line breaks, table files named in other letter case or lying in another folder, gzip judged
by content rather than name. MEDS datasets: hidden files under data/, split names in other letter
case, a subject_splits.parquet of wrong types, a null-time warning over many codes; determinism of
both stages. Small synthetic or hand-made data, invented values.
"""

from __future__ import annotations

import gzip
import json
import shutil
import warnings
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from test_meds_reader import one_error_line, write_dataset, write_shard

from ehrfm.app.cli import main
from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir
from tokenization.etl import etl
from tokenization.synth import synthesize


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small synthetic raw dir and its MEDS (the reference), made once; tests copy the raw dir."""
    base = tmp_path_factory.mktemp("faults2")
    synthesize(base / "raw", n_patients=80, seed=1)
    etl(base / "raw", base / "ref")
    return base


@pytest.fixture()
def raw(synth, tmp_path):
    shutil.copytree(synth / "raw", tmp_path / "raw")
    return tmp_path / "raw"


def _text(path) -> str:
    return gzip.decompress(path.read_bytes()).decode("utf-8")


def _meds(out) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in sorted((out / "data").rglob("*.parquet"))])


def _same_data(a, b) -> None:
    files = sorted(p.relative_to(a) for p in (a / "data").rglob("*.parquet"))
    assert files == sorted(p.relative_to(b) for p in (b / "data").rglob("*.parquet"))
    for f in files:
        assert pl.read_parquet(a / f).equals(pl.read_parquet(b / f)), f


def _set_column(path, col: str, every: int, values: list[str]) -> int:
    """Rewrite every `every`-th non-empty value of `col` in a raw .csv.gz with `values` in turn; return how many."""
    df = pl.read_csv(path, infer_schema=False)
    hit = pl.col(col).is_not_null() & (pl.int_range(pl.len()) % every == 0)
    n = int(df.select(hit.sum()).item())
    new = pl.Series([values[i % len(values)] for i in range(n)], dtype=pl.String)
    idx = df.with_row_index().filter(hit)["index"]
    df = df.with_columns(df[col].scatter(idx, new))
    path.write_bytes(gzip.compress(df.write_csv(null_value="").encode()))
    return n


# --- raw CSVs --------------------------------------------------------------------------------------
def test_numbers_no_float32_can_hold_are_null_and_counted(raw, tmp_path):
    """Before: valuenum 1e308 or 1e39 was written to numeric_value (float32) as inf, and the text
    inf/NaN/Infinity as inf/NaN, silently (an OMR result_value too). Now such values are null, the
    events kept, and counted per table and column as out_of_range_numbers_set_null."""
    n = _set_column(raw / "hosp/labevents.csv.gz", "valuenum", 3, ["1e308", "-1e39", "inf", "NaN", "Infinity"])
    (raw / "hosp/omr.csv.gz").write_bytes(gzip.compress(
        b"subject_id,chartdate,seq_num,result_name,result_value\n"
        b"10000001,2150-01-02,1,Weight (Lbs),1e308\n10000001,2150-01-03,1,Weight (Lbs),180\n"
        b"10000001,2150-01-04,1,Blood Pressure,120/80\n"))
    res = etl(raw, tmp_path / "out")
    meds = _meds(tmp_path / "out")
    assert meds.filter(pl.col("numeric_value").is_not_null() & ~pl.col("numeric_value").is_finite()).height == 0
    lab = res["tables"]["hosp/labevents"]
    assert n > 100 and lab["out_of_range_numbers_set_null"] == {"valuenum": n}
    assert "unparseable_numbers_set_null" not in lab
    assert lab["events_written"] == lab["rows_read"]  # kept as events without a number
    omr = meds.filter(pl.col("code").str.starts_with("OMR//")).sort("time", "code")
    assert omr["numeric_value"].to_list() == [None, 180.0, 80.0, 120.0]  # a blood pressure: two numbers (2026-12-07)
    assert omr["text_value"].to_list() == ["1e308", None, None, None]
    cfg = json.loads((tmp_path / "out/metadata/etl_config.json").read_text())
    assert cfg["tables"]["hosp/labevents"]["out_of_range_numbers_set_null"] == {"valuenum": n}


def test_quoted_line_breaks_read_at_any_block_size(raw, synth, tmp_path):
    """Before: a drug name holding a quoted line break (free text exported by pandas or a database)
    failed the table ("cannot be read as CSV (ArrowInvalid)") whenever a CSV block ended at that
    break -- at 4 KiB blocks here, not at 16 KiB: it depended on the block size. Now every block
    size reads the same events; the line break inside the value is a space (no code holds a control
    character since 2026-12-03: test_data_faults8)."""
    path = raw / "hosp/prescriptions.csv.gz"
    n = _set_column(path, "drug", 7, ["Line one\nline, two"])
    outs = []
    for bb in (1 << 12, 5000, 1 << 13, 1 << 16):
        out = tmp_path / f"out{bb}"
        etl(raw, out, batch_bytes=bb)
        outs.append(out)
        assert _meds(out).filter(pl.col("code") == "MEDICATION//Line one line, two").height == n > 50
    for out in outs[1:]:
        _same_data(outs[0], out)
    assert _meds(outs[0]).height == _meds(synth / "ref").height


def test_table_files_in_other_letter_case_or_another_folder(raw, synth, tmp_path):
    """Before: HOSP/LABEVENTS.CSV.GZ was not found and the labs left out with only "absent" said; an
    icu/ table saved in hosp/ (or a flattened copy, MIMIC-IV 1.0's core/) likewise. Now names match
    in any case, and a table file in another folder is refused naming it and where it belongs."""
    (raw / "hosp").rename(raw / "HOSP")
    (raw / "HOSP/labevents.csv.gz").rename(raw / "HOSP/LABEVENTS.CSV.GZ")
    res = etl(raw, tmp_path / "upper")
    assert "hosp/labevents" in res["tables_used"] and "hosp/labevents" not in res["tables_missing"]
    _same_data(synth / "ref", tmp_path / "upper")

    shutil.copy(raw / "icu/icustays.csv.gz", raw / "HOSP/icustays.csv.gz")  # a stray copy beside the real one
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "out")
    assert str(e.value) == (f"table icu/icustays: {raw / 'HOSP/icustays.csv.gz'} lies outside {raw / 'icu'}/, which "
                            "holds icustays.csv.gz too: remove the stray copy")
    (raw / "icu/icustays.csv.gz").unlink()  # only in the wrong folder
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "out")
    assert str(e.value) == (f"table icu/icustays: {raw / 'HOSP/icustays.csv.gz'} lies outside {raw / 'icu'}/: MIMIC-IV "
                            "keeps icustays in icu/, move it there")
    (raw / "HOSP/patients.csv.gz").rename(raw / "patients.csv.gz")  # a flattened copy
    with pytest.raises(UserError, match=r"table hosp/patients: .*/raw/patients.csv.gz lies outside"):
        etl(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compression_is_read_from_the_content_not_the_name(raw, synth, tmp_path):
    """Before: a .csv.gz holding plain text failed "cannot read the CSV header (BadGzipFile)" and a
    .csv still gzip-compressed "the header line is not UTF-8 text; re-encode"; a truncated .gz said
    only "(OSError)". Now both read as what they hold, and a truncated one says so."""
    lab = raw / "hosp/labevents.csv.gz"
    lab.write_bytes(gzip.decompress(lab.read_bytes()))
    (raw / "hosp/patients.csv.gz").rename(raw / "hosp/patients.csv")
    (raw / "hosp/d_labitems.csv.gz").write_bytes(gzip.decompress((raw / "hosp/d_labitems.csv.gz").read_bytes()))
    etl(raw, tmp_path / "out")
    _same_data(synth / "ref", tmp_path / "out")
    assert pl.read_parquet(tmp_path / "out/metadata/codes.parquet").equals(
        pl.read_parquet(synth / "ref/metadata/codes.parquet"))
    pres = raw / "hosp/prescriptions.csv.gz"
    b = pres.read_bytes()
    pres.write_bytes(b[: len(b) // 2])
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "cut")
    assert str(e.value) == (f"{pres}: cannot be read as CSV (its gzip data is truncated or damaged: an interrupted "
                            "download or copy? Copy it again)")
    assert not (tmp_path / "cut").exists()


# --- MEDS datasets -------------------------------------------------------------------------------
FOLDERS = {"train": list(range(1, 13)), "tuning": [13, 14], "held_out": [15, 16]}


def _tokens(tok) -> dict:
    return {s: (tok / s / f).read_bytes() for s in FOLDERS for f in ("tokens.npy", "times.npy", "index.parquet")}


def test_hidden_files_under_data_are_not_data(tmp_path, capsys):
    """Before: macOS's ._0.parquet beside a shard refused the dataset as "damaged: not a readable
    parquet file", and a notebook's .ipynb_checkpoints/ copy of a held_out shard inside train/ was read
    as train data ("4 subjects have rows in more than one split"). Now hidden names are left out (as
    pyarrow datasets and Spark do), their count said."""
    ref = write_dataset(tmp_path / "ref", FOLDERS)
    meds = write_dataset(tmp_path / "meds", FOLDERS)
    (meds / "data/train/._0.parquet").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (meds / "data/train/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (meds / "data/train/.ipynb_checkpoints").mkdir()
    shutil.copy(meds / "data/held_out/0.parquet", meds / "data/train/.ipynb_checkpoints/0-checkpoint.parquet")
    assert main(["tokenize", str(ref), "--out", str(tmp_path / "t_ref"), "--min-count", "1"]) == 0
    capsys.readouterr()
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    assert capsys.readouterr().err.strip() == (
        f"ehrfm: warning: {meds / 'data'}: left out 2 hidden file(s) named *.parquet (a name starting with '.', e.g. "
        "macOS's ._* copies or .ipynb_checkpoints/): not data")
    assert _tokens(tmp_path / "tok") == _tokens(tmp_path / "t_ref")


def test_split_names_in_other_letter_case_are_mapped_and_said(tmp_path, capsys):
    """Before: data/Train/ (or TRAIN in subject_splits.parquet) was refused as "not MEDS splits".
    Now any letter case of a split or a known alias is read as that split, and said."""
    ref = write_dataset(tmp_path / "ref", FOLDERS)
    assert main(["tokenize", str(ref), "--out", str(tmp_path / "t_ref"), "--min-count", "1"]) == 0
    meds = write_dataset(tmp_path / "meds", {"Train": FOLDERS["train"], "VAL": FOLDERS["tuning"],
                                             "Held_Out": FOLDERS["held_out"]})
    capsys.readouterr()
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    assert capsys.readouterr().err.strip() == (f"ehrfm: warning: {meds / 'data'}: read split folder(s) Held_Out as "
                                               "held_out, Train as train, VAL as tuning")
    assert _tokens(tmp_path / "tok") == _tokens(tmp_path / "t_ref")
    # A flat layout (meds_etl) whose subject_splits.parquet writes the names in capitals.
    flat = tmp_path / "flat"
    (flat / "data").mkdir(parents=True)
    (flat / "metadata").mkdir()
    for i, s in enumerate(FOLDERS):
        shutil.copy(ref / "data" / s / "0.parquet", flat / "data" / f"{i}.parquet")
    pl.DataFrame({"subject_id": [i for s in FOLDERS for i in FOLDERS[s]],
                  "split": [s.upper() for s in FOLDERS for _ in FOLDERS[s]]}).write_parquet(
        flat / "metadata/subject_splits.parquet")
    assert main(["tokenize", str(flat), "--out", str(tmp_path / "t_flat"), "--min-count", "1"]) == 0
    assert _tokens(tmp_path / "t_flat") == _tokens(tmp_path / "t_ref")


@pytest.mark.parametrize("bad", ["split_as_numbers", "ids_as_text"])
def test_subject_splits_of_wrong_types_are_refused_in_one_line(tmp_path, capsys, bad):
    """Before: split names written as numbers (0/1/2) crashed every reader with a TypeError traceback.
    Now a wrongly typed column of subject_splits.parquet is one line naming the file, column and type."""
    ref = write_dataset(tmp_path / "ref", FOLDERS)
    flat = tmp_path / "flat"
    (flat / "data").mkdir(parents=True)
    (flat / "metadata").mkdir()
    for i, s in enumerate(FOLDERS):
        shutil.copy(ref / "data" / s / "0.parquet", flat / "data" / f"{i}.parquet")
    ids = [i for s in FOLDERS for i in FOLDERS[s]]
    if bad == "split_as_numbers":
        sp = pl.DataFrame({"subject_id": ids, "split": [k for k, s in enumerate(FOLDERS) for _ in FOLDERS[s]]})
        want = "column split is Int64, not text (string) naming the split"
    else:
        sp = pl.DataFrame({"subject_id": [str(i) for i in ids], "split": [s for s in FOLDERS for _ in FOLDERS[s]]})
        want = "column subject_id is String, not an integer (int64)"
    sp.write_parquet(flat / "metadata/subject_splits.parquet")
    assert main(["tokenize", str(flat), "--out", str(tmp_path / "tok")]) == 2
    assert one_error_line(capsys).endswith(f"{flat / 'metadata/subject_splits.parquet'}: {want} (the MEDS 0.4 subject "
                                           "splits schema)")
    assert not (tmp_path / "tok").exists()


def test_the_null_time_warning_names_the_most_frequent_codes_only(tmp_path, capsys):
    """Before: a dataset whose events of 30 codes had lost their time got one warning line listing all
    30 (every code of another ETL's dataset: megabytes). Now the 10 most frequent and a count of the rest."""
    meds = write_dataset(tmp_path / "meds", FOLDERS)
    rows = [(1, None, f"LAB//{k:02d}//mg/dL", 1.0) for k in range(30) for _ in range(1 + (k == 7) * 5)]
    write_shard(meds / "data/train/1.parquet", [(99, datetime(2150, 1, 1) + timedelta(hours=k), f"LAB//{k:02d}//mg/dL", 1.0)
                                                for k in range(30)] + [(99, r[1], r[2], r[3]) for r in rows])
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (f"ehrfm: warning: {meds}: dropped rows with a null time whose code is not static: LAB//07//mg/dL "
                      "(6 rows), " + ", ".join(f"LAB//{k:02d}//mg/dL (1 rows)" for k in (0, 1, 2, 3, 4, 5, 6, 8, 9))
                      + " and 20 more codes (20 rows); only static codes (e.g. GENDER//F) may lack a time")


# --- determinism -----------------------------------------------------------------------------------
def test_the_same_input_twice_and_reordered_meds_rows_give_the_same_bytes(synth, tmp_path, capsys):
    """The same raw input, or its rows in another order across subjects and times, gives byte-identical
    MEDS shards; tokenize gives byte-identical token files,
    also from a MEDS dataset whose (subject, time) groups come in another order (MEDS's sort is
    restored and, since this round, said on stderr -- before, silently; within one time the MEDS row
    order is kept, as documented)."""
    etl(synth / "raw", tmp_path / "again")
    for f in sorted((synth / "ref/data").rglob("*.parquet")):
        assert f.read_bytes() == (tmp_path / "again" / f.relative_to(synth / "ref")).read_bytes(), f
    # Raw rows in another order across subjects and times (rows of one subject and time keep theirs).
    raw = tmp_path / "raw"
    shutil.copytree(synth / "raw", raw)
    rng = np.random.default_rng(0)
    for table, col in (("hosp/labevents", "charttime"), ("icu/chartevents", "charttime"), ("hosp/admissions", "admittime")):
        path = raw / f"{table}.csv.gz"
        df = pl.read_csv(path, infer_schema=False).with_row_index("_r")
        groups = df.select("subject_id", col).unique(maintain_order=True)
        groups = groups.with_columns(_g=pl.Series(rng.permutation(groups.height)))
        df = df.join(groups, on=["subject_id", col], how="left", nulls_equal=True).sort("_g", "_r").drop("_g", "_r")
        path.write_bytes(gzip.compress(df.write_csv(null_value="").encode()))
    etl(raw, tmp_path / "moved")
    for f in sorted((synth / "ref/data").rglob("*.parquet")):
        assert f.read_bytes() == (tmp_path / "moved" / f.relative_to(synth / "ref")).read_bytes(), f
    assert main(["tokenize", str(synth / "ref"), "--out", str(tmp_path / "t1")]) == 0
    assert main(["tokenize", str(synth / "ref"), "--out", str(tmp_path / "t2")]) == 0
    shuffled = tmp_path / "shuffled"
    shutil.copytree(synth / "ref", shuffled)
    rng = np.random.default_rng(0)
    for f in sorted((shuffled / "data").rglob("*.parquet")):
        df = pl.read_parquet(f).with_row_index("_r")
        groups = df.select("subject_id", "time").unique(maintain_order=True)
        groups = groups.with_columns(_g=pl.Series(rng.permutation(groups.height)))
        df.join(groups, on=["subject_id", "time"], how="left", nulls_equal=True).sort("_g", "_r").drop("_g", "_r").write_parquet(f)
    assert not pl.read_parquet(shuffled / "data/train/0.parquet").equals(pl.read_parquet(synth / "ref/data/train/0.parquet"))
    capsys.readouterr()
    assert main(["tokenize", str(shuffled), "--out", str(tmp_path / "t3")]) == 0
    assert capsys.readouterr().err.strip() == (
        f"ehrfm: warning: tokenize: 3 of 3 MEDS shard file(s) not sorted by (subject_id, time) as MEDS requires (first: "
        f"{shuffled / 'data/train/0.parquet'}): read sorted, rows at one time in their file order")
    for t in ("t2", "t3"):
        for f in ("tokenizer.json", *(f"{s}/{n}" for s in FOLDERS for n in ("tokens.npy", "times.npy", "index.parquet"))):
            assert (tmp_path / "t1" / f).read_bytes() == (tmp_path / t / f).read_bytes(), (t, f)
    assert TokenDir(tmp_path / "t3").stats["splits"] == TokenDir(tmp_path / "t1").stats["splits"]


def test_times_no_life_can_hold_are_dropped_and_counted(raw, synth, tmp_path):
    """Before: a database's sentinel dates (1900-01-01, 9999-12-31), an epoch-0 1970-01-01 or a date
    not shifted as MIMIC-IV's are (here: 2015) were written as events decades before the subject's
    birth or centuries after it. Now an event over a year before MEDS_BIRTH or over 131 years after it
    is dropped and counted (time_outside_lifetime); the subject's other events stay."""
    path = raw / "hosp/labevents.csv.gz"
    df = pl.read_csv(path, infer_schema=False)
    hit = pl.int_range(pl.len()) % 500 == 0
    n = int(df.select(hit.sum()).item())
    sentinel = pl.Series(["1900-01-01 00:00:00", "9999-12-31 23:59:59", "1970-01-01 00:00:00", "2015-06-01 10:00:00"])
    fill = pl.lit(sentinel).gather(pl.int_range(pl.len()) % 4)
    df = df.with_columns([pl.when(hit).then(fill).otherwise(pl.col(c)).alias(c) for c in ("charttime", "storetime")])
    path.write_bytes(gzip.compress(df.write_csv(null_value="").encode()))
    res = etl(raw, tmp_path / "out")
    meds = _meds(tmp_path / "out")
    assert meds["time"].dt.year().min() >= 2020 and meds["time"].dt.year().max() < 2200
    lab = res["tables"]["hosp/labevents"]
    assert n > 10 and lab["dropped"] == {"time_outside_lifetime": n}
    assert lab["events_written"] == lab["rows_read"] - n
    assert meds.height == _meds(synth / "ref").height - n


def _etl_refuses_admittime(raw, tmp_path, admittime: pl.Expr) -> tuple:
    """admissions' admittime rewritten by `admittime` (gzipped back in place); the ETL's refusal.

    Returns (the admissions file, its row count, the UserError's message).
    """
    path = raw / "hosp/admissions.csv.gz"
    df = pl.read_csv(path, infer_schema=False)
    df.with_columns(admittime=admittime).write_csv(tmp_path / "adm.csv", null_value="")
    path.write_bytes(gzip.compress((tmp_path / "adm.csv").read_bytes()))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "out")
    return path, df.height, str(e.value)


def test_times_with_a_time_zone_are_named_as_such(raw, tmp_path):
    """Before: times exported with a zone (2150-01-01T10:00:00Z, +01:00, ' UTC') were refused as "N
    unparseable timestamp values" with no word of why. Now the message says they carry a time zone
    (still refused: MIMIC-IV's times are local, and ehrfm does not shift them by guessing)."""
    zoned = pl.col("admittime") + pl.lit(pl.Series(["Z", "+01:00", " UTC"])).gather(pl.int_range(pl.len()) % 3)
    path, n, message = _etl_refuses_admittime(raw, tmp_path, zoned)
    assert message == (f"{path}: column 'admittime' has {n} unparseable timestamp values (all of them with "
                            "a time zone, e.g. Z, +01:00 or UTC: MIMIC-IV's times have none; export them as local times "
                            "without a zone)")
    assert not (tmp_path / "out").exists()


def test_an_impossible_date_is_not_called_a_time_zone(raw, tmp_path):
    """Before: "2125-13-01" (or 2125-02-30) was refused as "all of them with a time zone": the date's "-01"
    matched the zone suffix as an offset of -01 hours."""
    bad = pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("2125-13-01")).when(pl.int_range(pl.len()) == 1) \
        .then(pl.lit("2125-02-30")).otherwise(pl.col("admittime"))
    path, _, message = _etl_refuses_admittime(raw, tmp_path, bad)
    assert message.startswith(f"{path}: column 'admittime' has 2 unparseable timestamp values"), message
    assert "time zone" not in message and "2125" not in message
    assert not (tmp_path / "out").exists()


def test_uint64_ids_beyond_int64_are_refused_in_one_line(tmp_path, capsys):
    """Before: subject ids written as uint64 (hashed ids) above 2^63 - 1 crashed tokenize and labels
    with a polars strict_cast traceback. Now one line names the shard and the count of such rows;
    uint64 ids within int64's range still read as before."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meds = write_dataset(tmp_path / "meds", FOLDERS)
    ref = write_dataset(tmp_path / "ref", FOLDERS)
    for f in sorted((meds / "data").rglob("*.parquet")):
        t = pq.read_table(f)
        pq.write_table(t.set_column(0, "subject_id", t.column("subject_id").cast(pa.uint64())), f)
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    assert main(["tokenize", str(ref), "--out", str(tmp_path / "t_ref"), "--min-count", "1"]) == 0
    assert _tokens(tmp_path / "tok") == _tokens(tmp_path / "t_ref")
    f = meds / "data/held_out/0.parquet"
    t = pq.read_table(f)
    big = pa.array([int(x) + (1 << 63) if int(x) == 15 else int(x) for x in t.column("subject_id").to_pylist()], pa.uint64())
    pq.write_table(t.set_column(0, "subject_id", big), f)
    n = sum(1 for x in big.to_pylist() if x > (1 << 63) - 1)
    capsys.readouterr()
    for argv in (["tokenize", str(meds), "--out", str(tmp_path / "tok2")],
                 ["labels", str(meds), "--task", "all", "--out", str(tmp_path / "lab")]):
        assert main(argv) == 2, argv
        assert one_error_line(capsys).endswith(f"MEDS shard {f}: {n} rows whose subject_id (uint64) is above int64's "
                                               "range; MEDS 0.4's subject_id is int64: map those ids in the ETL")
    assert not (tmp_path / "tok2").exists() and not (tmp_path / "lab").exists()


def test_whole_numbers_written_as_decimals_read_as_ids(raw, synth, tmp_path):
    """Before: a table re-saved by pandas, which writes an id column holding a null as floats
    (hadm_id 20000128.0), was refused whole ("column 'hadm_id' has N unparseable integer values").
    Now a whole number written as a decimal reads as that integer, exactly as the original file; a
    fraction (10000001.5) is still refused, counted."""
    for t in ("hosp/labevents", "hosp/admissions", "hosp/diagnoses_icd"):
        path = raw / f"{t}.csv.gz"
        df = pl.read_csv(path, infer_schema=False).with_columns(pl.col("subject_id", "hadm_id").cast(pl.Float64))
        path.write_bytes(gzip.compress(df.write_csv(null_value="").encode()))
    assert ".0," in _text(raw / "hosp/labevents.csv.gz")
    etl(raw, tmp_path / "out")
    _same_data(synth / "ref", tmp_path / "out")
    n = _set_column(raw / "hosp/labevents.csv.gz", "hadm_id", 50, ["20000001.5"])
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "bad")
    assert str(e.value) == f"{raw / 'hosp/labevents.csv.gz'}: column 'hadm_id' has {n} unparseable integer values"


def test_times_a_spreadsheet_resaved_are_named_as_such(raw, tmp_path):
    """Before: admittime re-saved by a spreadsheet (3/14/2150 9:05) was refused as "N unparseable
    timestamp values" with no word of why. Now the message says they are '/' dates and what MIMIC-IV
    writes; a bad value of another kind gets no such hint."""
    t = pl.col("admittime").str.to_datetime("%Y-%m-%d %H:%M:%S")
    path, n, message = _etl_refuses_admittime(raw, tmp_path, t.dt.strftime("%-m/%-d/%Y %-H:%M"))
    assert message == (f"{path}: column 'admittime' has {n} unparseable timestamp values (all of them dates "
                            "written with '/', as a spreadsheet saves them: MIMIC-IV writes YYYY-MM-DD HH:MM:SS; use the "
                            "file as downloaded, or save times in that format)")


def test_float64_values_beyond_float32_are_no_value_and_counted(tmp_path):
    """Before: an ETL writing numeric_value as float64 with values beyond float32's range (1e300)
    gave decile edges rounded to float32 as inf: tokenizer.json held `Infinity` (not JSON to other
    readers) and numpy warned of an overflow. Now such values read as no value, as NaN and inf do,
    counted in stats.json's non_finite_values."""
    ref = write_dataset(tmp_path / "ref", FOLDERS)
    odd = write_dataset(tmp_path / "odd", FOLDERS)
    n_odd = {}
    for split in FOLDERS:
        lab = pl.col("code").str.starts_with("LAB//") & (pl.int_range(pl.len()) % 3 == 0)
        f = odd / "data" / split / "0.parquet"
        d = pl.read_parquet(f).with_columns(pl.col("numeric_value").cast(pl.Float64))
        d.with_columns(numeric_value=pl.when(lab).then(pl.lit(1e300) * (pl.int_range(pl.len()) % 2 * 2 - 1))
                       .otherwise(pl.col("numeric_value"))).write_parquet(f)
        n_odd[split] = int(d.select(lab.sum()).item())
        r = ref / "data" / split / "0.parquet"
        pl.read_parquet(r).with_columns(numeric_value=pl.when(lab).then(None).otherwise(pl.col("numeric_value"))).write_parquet(r)
    assert main(["tokenize", str(ref), "--out", str(tmp_path / "t_ref"), "--min-count", "1"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning
        assert main(["tokenize", str(odd), "--out", str(tmp_path / "t_odd"), "--min-count", "1"]) == 0

    def strict(c):
        raise ValueError(c)

    assert json.loads((tmp_path / "t_odd/tokenizer.json").read_text(), parse_constant=strict) == json.loads(
        (tmp_path / "t_ref/tokenizer.json").read_text())
    assert _tokens(tmp_path / "t_odd") == _tokens(tmp_path / "t_ref")
    for split in FOLDERS:
        assert TokenDir(tmp_path / "t_odd").stats["splits"][split]["non_finite_values"] == n_odd[split] > 0


def test_a_column_named_twice_in_a_header_is_refused(raw, tmp_path):
    """Before: a labevents export with subject_id twice (SELECT * of a join; here 'SUBJECT_ID' holding
    another id) was read with the first one silently. Now a column the ETL reads that appears more
    than once (in any letter case) is refused, naming both."""
    path = raw / "hosp/labevents.csv.gz"
    lines = _text(path).splitlines()
    lines = [lines[0] + ",SUBJECT_ID"] + [row + ",99" for row in lines[1:]]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "out")
    assert str(e.value) == (f"{path}: column 'subject_id' appears 2 times in the header ('subject_id', 'SUBJECT_ID'); "
                            "keep one (table hosp/labevents)")
    assert not (tmp_path / "out").exists()


def test_sorted_shards_are_read_without_a_word(synth, tmp_path, capsys):
    """The unsorted-shard warning names only shards out of MEDS's order: sorted ones with static rows
    (a null time, first) and subjects over many ids are read silently."""
    assert main(["tokenize", str(synth / "ref"), "--out", str(tmp_path / "tok")]) == 0
    assert "not sorted" not in capsys.readouterr().err


def test_a_wrong_directory_where_meds_belongs_says_what_it_is(tmp_path):
    from ehrfm.errors import UserError
    from ehrfm.meds_io import open_meds
    from tokenization.etl import etl

    raw = tmp_path / "raw"
    (raw / "hosp").mkdir(parents=True)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match=r"no data/ directory; it looks like raw MIMIC-IV: make MEDS first with `ehrfm etl "):
        open_meds(raw)
    with pytest.raises(UserError, match=r"no data/ directory; it is a token dir: pass the MEDS dataset it was tokenized from"):
        open_meds(tok)
    with pytest.raises(UserError, match=r"no data/ directory$"):
        open_meds(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match=r"MEDS dataset .*f.txt is a file, not a directory"):
        open_meds(tmp_path / "f.txt")
    with pytest.raises(UserError, match=r"raw MIMIC-IV directory .*f.txt is a file: pass the directory holding hosp/"):
        etl(tmp_path / "f.txt", tmp_path / "out")


def test_two_folders_of_one_split_are_named_alone(tmp_path, capsys):
    """Before: data/test beside data/held_out said "several folders map to split 'held_out' (held_out, test,
    train, tuning)": train and tuning named too, as if they clashed."""
    meds = write_dataset(tmp_path / "meds", FOLDERS)
    shutil.copytree(meds / "data" / "held_out", meds / "data" / "test")
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 2
    assert one_error_line(capsys) == (
        f"ehrfm tokenize: error: {meds / 'data'}: several folders map to split 'held_out' (held_out, test); keep one of them")
    assert not (tmp_path / "tok").exists()
