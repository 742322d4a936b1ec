"""Faults a break-it tester found in the data stages, one test per kind of fault, on real files.

Raw MIMIC-IV CSVs as other tools write them (a byte-order mark, CRLF line endings, an empty
file, text that is not UTF-8, a database export's NULL), MEDS datasets that break MEDS's subject
contiguity or hold subjects without timed events, and label sets without train labels.
Small synthetic or hand-made data, invented values.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime

import polars as pl
import pytest
from test_meds_reader import one_error_line, subject, write_dataset, write_shard

from ehrfm.app.cli import main
from ehrfm.clinical.labels import make_labels, write_labels
from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir
from tokenization.etl import etl
from tokenization.synth import synthesize


@pytest.fixture()
def raw(tmp_path):
    synthesize(tmp_path / "raw", n_patients=80, seed=1)
    return tmp_path / "raw"


def _text(path) -> str:
    return gzip.decompress(path.read_bytes()).decode("utf-8")


def _same_meds(a, b) -> None:
    files = sorted(p.relative_to(a) for p in (a / "data").rglob("*.parquet"))
    assert files == sorted(p.relative_to(b) for p in (b / "data").rglob("*.parquet"))
    for f in files:
        assert pl.read_parquet(a / f).equals(pl.read_parquet(b / f)), f
    assert pl.read_parquet(a / "metadata/codes.parquet").equals(pl.read_parquet(b / "metadata/codes.parquet"))


# --- raw CSVs --------------------------------------------------------------------------------------
def test_csv_with_a_byte_order_mark_and_crlf_reads_as_plain_utf8(raw, tmp_path):
    """Before: a BOM (Excel, Windows tools) glued itself to the first column name and every table was
    refused as "missing column 'subject_id'" (dictionaries too). Now it is skipped, as pyarrow skips it."""
    etl(raw, tmp_path / "ref")
    for path in sorted(raw.rglob("*.csv.gz")):  # every table and dictionary: BOM + CRLF, half of them plain .csv
        text = "\ufeff" + _text(path).replace("\n", "\r\n")
        if path.name.startswith(("patients", "d_", "labevents")):
            path.unlink()
            path.with_suffix("").write_bytes(text.encode("utf-8"))
        else:
            path.write_bytes(gzip.compress(text.encode("utf-8")))
    etl(raw, tmp_path / "bom")
    _same_meds(tmp_path / "ref", tmp_path / "bom")


@pytest.mark.parametrize("gz", [True, False])
def test_an_empty_table_file_is_refused_as_empty(raw, tmp_path, gz):
    """Before: a 0-byte file (an interrupted copy) read as "missing column 'subject_id' (and 4 more ...)
    ... column set: " with an empty column list. A header-only file stays a table without rows."""
    (raw / "icu/icustays.csv.gz").unlink()
    path = raw / ("icu/icustays.csv.gz" if gz else "icu/icustays.csv")
    path.write_bytes(gzip.compress(b"") if gz else b"")
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "out")
    assert str(e.value).startswith(f"{path}: empty file, no header line (table icu/icustays)")
    assert not (tmp_path / "out").exists()
    path.write_bytes(gzip.compress(b"subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n")
                     if gz else b"subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\r\n")
    res = etl(raw, tmp_path / "out")
    assert res["tables"]["icu/icustays"]["rows_read"] == 0 and res["tables"]["icu/icustays"]["events_written"] == 0


def test_text_that_is_not_utf8_is_named_by_file_column_and_count(raw, tmp_path):
    """Before: a latin-1 file failed as "cannot read the CSV header (UnicodeDecodeError)" (the header was
    fine) or "cannot be read as CSV (ArrowInvalid)". Now: the column and its count of rows, no values."""
    path = raw / "hosp/prescriptions.csv.gz"
    lines = _text(path).splitlines()
    col = lines[0].split(",").index("drug")
    secret = "Ácido SECRETO"
    bad = 0
    for i in range(1, len(lines), 5):  # every fifth row: a drug name in latin-1, deep into the file too
        f = lines[i].split(",")
        if len(f) == len(lines[0].split(",")):
            f[col] = secret
            lines[i] = ",".join(f)
            bad += 1
    path.write_bytes(gzip.compress("\n".join(lines).encode("latin-1") + b"\n"))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "out", batch_bytes=1 << 14)
    msg = str(e.value)
    assert msg.startswith(f"{path}: column 'drug' has {bad} rows that are not UTF-8 text"), msg
    assert "SECRETO" not in msg and "re-encode" in msg
    # A dictionary in latin-1: the same kind of message, not a decode traceback.
    d = raw / "hosp/d_labitems.csv.gz"
    etl_text = _text(d).splitlines()
    d.write_bytes(gzip.compress(("\n".join(etl_text[:2] + [etl_text[2] + "é"] + etl_text[3:]) + "\n").encode("latin-1")))
    path.write_bytes(gzip.compress("\n".join(lines).encode("utf-8") + b"\n"))
    with pytest.raises(UserError, match=r"d_labitems.csv.gz: not UTF-8 text; MIMIC-IV is UTF-8"):
        etl(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_database_exports_null_text_is_named_in_the_error(raw, tmp_path):
    """Before: NULL in a time column read as "260 unparseable timestamp values", no hint why. Now the
    message says they are null markers; a value that is really bad gets no such hint."""
    path = raw / "hosp/admissions.csv.gz"
    df = pl.read_csv(path, infer_schema=False)
    n = df["deathtime"].null_count()
    assert n > 0
    df.with_columns(pl.col("deathtime").fill_null("NULL")).write_csv(tmp_path / "adm.csv", null_value="")
    path.write_bytes(gzip.compress((tmp_path / "adm.csv").read_bytes()))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "out")
    assert str(e.value).startswith(f"{path}: column 'deathtime' has {n} unparseable timestamp values (all of them the "
                                   "text NULL/\\N or the like")
    df.with_columns(pl.col("deathtime").fill_null("yesterday")).write_csv(tmp_path / "adm.csv", null_value="")
    path.write_bytes(gzip.compress((tmp_path / "adm.csv").read_bytes()))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "out")
    assert str(e.value) == f"{path}: column 'deathtime' has {n} unparseable timestamp values"


# --- MEDS datasets -------------------------------------------------------------------------------
def test_a_subject_spread_over_shard_files_is_refused_by_every_reader(tmp_path, capsys):
    """Before: a shard holding only the static rows of subjects whose events sit in another shard
    (MEDS requires a subject's rows in one file) crashed tokenize with an IndexError traceback, while
    labels, audit and baseline read it. Now every reader refuses it in one line, naming the files."""
    sids = list(range(1, 9))
    ok = write_dataset(tmp_path / "ok", {"train": sids})
    labels, info = make_labels(ok, "long_los")
    write_labels(labels, tmp_path / "los.parquet", info)
    assert "has the stay id column hadm_id" in capsys.readouterr().err  # the hand-made shards have none
    meds = tmp_path / "meds"
    events = [e for s in sids for e in subject(s)]
    write_shard(meds / "data" / "train" / "0.parquet", [e for e in events if e[1] is not None])
    write_shard(meds / "data" / "train" / "1.parquet", [e for e in events if e[1] is None])  # static rows only
    argvs = {
        "tokenize": ["tokenize", str(meds), "--out", str(tmp_path / "tok")],
        "labels": ["labels", str(meds), "--task", "all", "--out", str(tmp_path / "lab")],
        "baseline": ["baseline", str(meds), "--labels", str(tmp_path / "los.parquet"), "--out", str(tmp_path / "base")],
        "audit": ["audit", str(meds), "--labels", str(tmp_path / "los.parquet")],
    }
    for name, argv in argvs.items():
        assert main(argv) == 2, name
        line = one_error_line(capsys)
        assert line.endswith(f"MEDS dataset {meds}: 8 subjects have rows in more than one shard file (8 of them in "
                             f"{meds / 'data/train/0.parquet'} and {meds / 'data/train/1.parquet'}); MEDS keeps each "
                             "subject's rows in one file (subject contiguity): merge those shards by subject"), (name, line)
    assert not any((tmp_path / n).exists() for n in ("tok", "lab", "base"))
    # Subjects split over files by subject (several shards per split) are fine.
    many = tmp_path / "many"
    for k in range(3):
        write_shard(many / "data" / "train" / f"{k}.parquet", [e for s in sids[k::3] for e in subject(s)])
    assert main(["tokenize", str(many), "--out", str(tmp_path / "tok2")]) == 0


def test_subjects_without_timed_events_are_tokenized(tmp_path, capsys):
    """Before: a chunk of subjects that had only static rows (and a birth) crashed tokenize with
    "IndexError: boolean index did not match" -- e.g. a small tuning split of such subjects. Now each
    gets its timeline start, static codes, age and end tokens."""
    meds = write_dataset(tmp_path / "meds", {"train": list(range(1, 13))})
    bare = [(s, None, "GENDER//F", None) for s in (20, 21)] + [(21, datetime(2100, 1, 1), "MEDS_BIRTH", None)]
    write_shard(meds / "data" / "tuning" / "0.parquet", bare)
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0, capsys.readouterr().err
    td = TokenDir(tmp_path / "tok")
    tuning = td.split("tuning")
    assert tuning.subject_ids.tolist() == [20, 21]
    assert [td.decode(tuning.subject(i)[0]) for i in range(2)] == [
        ["TIMELINE_START", "GENDER//F", "AGE//UNK", "TIMELINE_END"],  # no birth: age unknown
        ["TIMELINE_START", "GENDER//F", "AGE//0-4", "TIMELINE_END"]]
    assert td.stats["splits"]["tuning"]["events"] == 3


# --- labels --------------------------------------------------------------------------------------
def test_baseline_without_train_labels_says_so(tmp_path, capsys):
    """Before: labels with no train rows (e.g. an ACES run on the held-out cohort only) crashed baseline
    with a polars SchemaError traceback (an untyped empty feature list). Now one line says why."""
    meds = write_dataset(tmp_path / "meds", {"train": list(range(1, 9)), "held_out": list(range(9, 15))})
    labels, info = make_labels(meds, "long_los")
    held = labels.filter(pl.col("subject_id") >= 9)
    write_labels(held, tmp_path / "los.parquet", info)
    assert "has the stay id column hadm_id" in capsys.readouterr().err  # the hand-made shards have none
    assert main(["baseline", str(meds), "--labels", str(tmp_path / "los.parquet"), "--out", str(tmp_path / "b")]) == 2
    assert one_error_line(capsys).endswith("task long_los: no labels in the train split")
    assert not (tmp_path / "b").exists()


def test_stay_ids_of_any_type_give_the_same_labels_and_audit(tmp_path, capsys):
    """Before: a stay id column (hadm_id) of text ids, as other ETLs may write, crashed `ehrfm audit`
    with a polars cast traceback (labels read it). Now both read stay ids as text, whatever their type
    in each shard (int64, float64 from pandas, string), and give the int64 dataset's results."""
    folders = {"train": list(range(1, 9)), "held_out": list(range(9, 13))}

    def with_stay(kind):
        def change(d):
            stay = pl.when(pl.col("code").str.starts_with("HOSPITAL_")).then(pl.col("subject_id") * 10)
            d = d.with_columns(hadm_id=stay)
            if kind == "text":
                return d.with_columns(hadm_id=pl.lit("H") + pl.col("hadm_id").cast(pl.String))
            return d.with_columns(pl.col("hadm_id").cast(pl.Float64)) if kind == "float" else d
        return change

    results = {}
    for kind in ("int", "text", "float"):
        meds = write_dataset(tmp_path / kind, folders)
        for f in sorted((meds / "data").rglob("*.parquet")):  # held_out keeps int ids: shards differ in type
            k = kind if f.parent.name == "train" else "int"
            with_stay(k)(pl.read_parquet(f)).write_parquet(f)
        assert main(["labels", str(meds), "--task", "all", "--out", str(tmp_path / f"lab_{kind}")]) == 0
        rc = main(["audit", str(meds), "--labels", str(tmp_path / f"lab_{kind}"), "--out", str(tmp_path / f"{kind}.json")])
        assert rc in (0, 1), capsys.readouterr().err
        results[kind] = json.loads((tmp_path / f"{kind}.json").read_text())["tasks"]
        results[kind + "_labels"] = {f.name: pl.read_parquet(f) for f in sorted((tmp_path / f"lab_{kind}").glob("*.parquet"))}
    for kind in ("text", "float"):
        assert results[kind] == results["int"], kind
        assert all(results[kind + "_labels"][n].equals(t) for n, t in results["int_labels"].items()), kind
    assert results["int"]["long_los"]["overlapping_stays"] == 0


def test_audit_reads_the_empty_task_files_that_labels_writes(tmp_path, capsys):
    """Before: `ehrfm labels --task all` wrote readmission_30d.parquet without rows (no stay
    qualified: every subject died in its stay) and `ehrfm audit` on that dir failed "has no rows". Now
    the task is audited with 0 labels; heads still refuse a file without rows."""
    meds = write_dataset(tmp_path / "meds", {"train": list(range(1, 9)), "held_out": list(range(9, 13))}, died=True)
    assert main(["labels", str(meds), "--task", "all", "--out", str(tmp_path / "lab")]) == 0
    assert pl.read_parquet(tmp_path / "lab" / "readmission_30d.parquet").height == 0
    capsys.readouterr()
    assert main(["audit", str(meds), "--labels", str(tmp_path / "lab"), "--out", str(tmp_path / "a.json")]) == 0
    tasks = json.loads((tmp_path / "a.json").read_text())["tasks"]
    assert tasks["readmission_30d"]["n_labels"] == 0 and tasks["long_los"]["n_labels"] == 12
    assert main(["baseline", str(meds), "--labels", str(tmp_path / "lab" / "readmission_30d.parquet"),
                 "--out", str(tmp_path / "b")]) == 2
    assert one_error_line(capsys).endswith("readmission_30d.parquet has no rows")


def test_nan_and_infinite_values_are_no_value_and_counted(tmp_path, capsys):
    """Before: +-inf numeric values (a float overflow in another ETL) entered the deciles, so
    tokenizer.json held `Infinity` edges (not JSON to other readers) and every value of such a code
    landed in one bin. Now NaN (pandas' null) and +-inf read as no value, as null does, and are
    counted in stats.json (non_finite_values)."""
    sids = list(range(1, 13))
    ref = write_dataset(tmp_path / "ref", {"train": sids, "tuning": [13, 14]})
    odd = write_dataset(tmp_path / "odd", {"train": sids, "tuning": [13, 14]})
    n_odd = {}
    for split in ("train", "tuning"):
        f = odd / "data" / split / "0.parquet"
        d = pl.read_parquet(f)
        lab = pl.col("code").str.starts_with("LAB//") & (pl.int_range(pl.len()) % 3 == 0)
        inf = pl.when(pl.int_range(pl.len()) % 2 == 0).then(float("inf")).otherwise(float("nan"))
        d.with_columns(numeric_value=pl.when(lab).then(inf).otherwise(pl.col("numeric_value"))).write_parquet(f)
        r = ref / "data" / split / "0.parquet"
        pl.read_parquet(r).with_columns(numeric_value=pl.when(lab).then(None).otherwise(pl.col("numeric_value"))).write_parquet(r)
        n_odd[split] = int(pl.read_parquet(f).select(lab.sum()).item())
    assert main(["tokenize", str(ref), "--out", str(tmp_path / "t_ref"), "--min-count", "1"]) == 0
    assert "NaN" not in capsys.readouterr().err
    assert main(["tokenize", str(odd), "--out", str(tmp_path / "t_odd"), "--min-count", "1"]) == 0
    # said once on stderr too, not only in stats.json (a break-it pass found it there alone)
    said = [ln for ln in capsys.readouterr().err.splitlines() if "NaN" in ln]
    assert said == [f"ehrfm: warning: tokenize: {sum(n_odd.values()):,} numeric values are NaN, +-inf or beyond float32's "
                    f"range and were read as no value, their codes kept (train {n_odd['train']:,}, tuning {n_odd['tuning']:,}; "
                    "stats.json non_finite_values)"], said

    def strict(c):
        raise ValueError(c)

    tok = json.loads((tmp_path / "t_odd" / "tokenizer.json").read_text(), parse_constant=strict)
    assert tok == json.loads((tmp_path / "t_ref" / "tokenizer.json").read_text())
    for split in ("train", "tuning"):
        a, b = TokenDir(tmp_path / "t_ref").split(split), TokenDir(tmp_path / "t_odd").split(split)
        assert (a.tokens[:] == b.tokens[:]).all() and (a.times[:] == b.times[:]).all()
        assert TokenDir(tmp_path / "t_odd").stats["splits"][split]["non_finite_values"] == n_odd[split] > 0
        assert TokenDir(tmp_path / "t_ref").stats["splits"][split]["non_finite_values"] == 0
