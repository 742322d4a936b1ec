"""Faults of data written by other tools and of real-world exports, one test per kind, on real files.

MEDS datasets: float64 numeric values (pandas, femr), an empty shard written by pandas (null-typed
columns), shards in linked folders or in a Spark/Dask dataset folder named `*.parquet`. Raw MIMIC-IV
CSVs: lines ended by a lone CR (old Mac tools), a header-only table without a line end, a table
left as an unfinished download or in another format. Small synthetic or hand-made data, invented
values.
"""

from __future__ import annotations

import gzip
import shutil
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_meds_reader import one_error_line, write_dataset

from ehrfm.app.cli import main
from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir
from tokenization.etl import etl
from tokenization.synth import synthesize
from tokenization.tokenize import tokenize

FOLDERS = {"train": list(range(1, 13)), "tuning": [13, 14], "held_out": [15, 16]}


def _token_bytes(tok, splits=FOLDERS) -> dict:
    return {s: (tok / s / f).read_bytes() for s in splits for f in ("tokens.npy", "times.npy", "index.parquet")}


# --- MEDS datasets -------------------------------------------------------------------------------
def _lab_shard(path, sids, value_type) -> None:
    """Subjects with 6 values each of one lab on a 0.1 grid (many ties, as lab results have)."""
    t0 = datetime(2150, 1, 1)
    rows = [(s, t0 + timedelta(hours=k), "LAB//1//mg/dL", round(0.1 * ((s + k) % 5 + 1), 1)) for s in sids for k in range(6)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
        "code": pa.array([r[2] for r in rows], pa.string()),
        "numeric_value": pa.array([r[3] for r in rows], value_type),
    }), path)


def test_float64_values_give_the_quantile_tokens_of_their_float32(tmp_path):
    """Before: the same values written as float64 (pandas, femr) and as MEDS's float32 gave other
    quantile tokens: 0.1 as float64 lies just below its float32 decile edge (0.100000001), so every
    value on an edge took a lower bin (3.4% of the tokens differed on the synthetic data), and a
    tokenizer fitted on float32 data binned another site's float64 data apart. Now numeric_value
    is read as the float32 it stands for: the same tokens, fitted or applied."""
    for name, typ in (("f32", pa.float32()), ("f64", pa.float64())):
        for split, sids in FOLDERS.items():
            _lab_shard(tmp_path / name / "data" / split / "0.parquet", sids, typ)
        tokenize(tmp_path / name, tmp_path / f"tok_{name}", min_count=1)
    assert (tmp_path / "tok_f32/tokenizer.json").read_bytes() == (tmp_path / "tok_f64/tokenizer.json").read_bytes()
    assert _token_bytes(tmp_path / "tok_f32") == _token_bytes(tmp_path / "tok_f64")
    td = TokenDir(tmp_path / "tok_f64")
    tokens, _ = td.split("train").subject(0)  # subject 1: values 0.2 0.3 0.4 0.5 0.1 0.2
    qs = [t for t in td.decode(tokens) if t.startswith("Q")]
    # train deciles 0.1 0.2 0.2 0.24 0.3 0.3 0.4 0.4 0.5: Qk, k = 1 + #(distinct deciles <= value)
    # + #(repeated deciles < value): quantile_rule "ties" (tokenize's module docstring)
    assert qs == ["Q3", "Q6", "Q8", "Q10", "Q2", "Q3"]
    # a tokenizer fitted on float32 data applied to float64 data: the same tokens
    tokenize(tmp_path / "f64", tmp_path / "tok_applied", tokenizer=tmp_path / "tok_f32/tokenizer.json")
    assert _token_bytes(tmp_path / "tok_applied") == _token_bytes(tmp_path / "tok_f32")


def test_an_empty_shard_written_by_pandas_reads_as_no_rows(tmp_path, capsys):
    """Before: an empty DataFrame saved by pandas has null-typed columns for its object (text, id)
    columns, and every reader refused the dataset ("column code is Null, not text ... convert it in
    the ETL") for a shard without a row. Now a null-typed column is read as its MEDS type; a
    null-typed subject_id or code in a shard with rows is still refused, by its row count."""
    meds = write_dataset(tmp_path / "meds", FOLDERS)
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "ref"), "--min-count", "1"]) == 0
    empty = pa.table({"subject_id": pa.array([], pa.null()), "time": pa.array([], pa.timestamp("ns")),
                      "code": pa.array([], pa.null()), "numeric_value": pa.array([], pa.float64())})
    pq.write_table(empty, meds / "data/train/1.parquet")
    pq.write_table(empty, meds / "data/tuning/1.parquet")
    capsys.readouterr()
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok"), "--min-count", "1"]) == 0
    assert capsys.readouterr().err == ""
    assert _token_bytes(tmp_path / "tok") == _token_bytes(tmp_path / "ref")
    assert main(["labels", str(meds), "--task", "long_los", "--out", str(tmp_path / "los.parquet")]) == 0
    assert pl.read_parquet(tmp_path / "los.parquet").height == 16
    assert "has the stay id column hadm_id" in capsys.readouterr().err  # the hand-made shards have none

    t = pq.read_table(meds / "data/held_out/0.parquet")
    pq.write_table(t.set_column(0, "subject_id", pa.nulls(t.num_rows)), meds / "data/held_out/0.parquet")
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "bad")]) == 2
    assert one_error_line(capsys).endswith(f"MEDS shard {meds / 'data/held_out/0.parquet'}: {t.num_rows} rows with a null "
                                           "subject_id; every MEDS row needs a subject_id and a code")
    assert not (tmp_path / "bad").exists()


def test_shards_in_linked_folders_and_dataset_folders_are_read(tmp_path):
    """Before: a folder of shards linked into a split (data/train/part2 -> shards kept on another
    disk) was not entered, so its subjects silently left the split (Path.rglob does not follow
    links to folders); and a Spark or Dask dataset (a folder named events.parquet holding
    part-*.parquet files) was refused as "damaged: not a readable parquet file". Now both are
    read as the shards they hold."""
    meds = write_dataset(tmp_path / "meds", {"train": list(range(1, 9)), "tuning": [13, 14], "held_out": [15, 16]})
    tokenize(meds, tmp_path / "ref", min_count=1)
    linked = write_dataset(tmp_path / "linked", {"train": list(range(1, 5)), "tuning": [13, 14], "held_out": [15, 16]})
    write_dataset(tmp_path / "disk2", {"train": list(range(5, 9))})
    (linked / "data/train/part2").symlink_to(tmp_path / "disk2/data/train")
    tokenize(linked, tmp_path / "tok_linked", min_count=1)
    assert TokenDir(tmp_path / "tok_linked").split("train").subject_ids.tolist() == list(range(1, 9))
    assert (tmp_path / "tok_linked/tokenizer.json").read_bytes() == (tmp_path / "ref/tokenizer.json").read_bytes()

    spark = tmp_path / "spark"
    shutil.copytree(meds, spark)
    for split in ("train", "tuning", "held_out"):
        part = spark / "data" / split / "events.parquet" / "part-00000-c000.snappy.parquet"
        part.parent.mkdir()
        (spark / "data" / split / "0.parquet").rename(part)
        (part.parent / "_SUCCESS").write_bytes(b"")
        (part.parent / ".part-00000-c000.snappy.parquet.crc").write_bytes(b"crc")
    tokenize(spark, tmp_path / "tok_spark", min_count=1)
    assert _token_bytes(tmp_path / "tok_spark") == _token_bytes(tmp_path / "ref")


def test_metadata_as_a_parquet_folder_or_beside_macos_copies_is_read(tmp_path):
    """Before: a flat MEDS dataset whose metadata/subject_splits.parquet is a folder of part files
    (Spark, Dask) was refused as "damaged: not a readable parquet file", as was any dataset with
    macOS's AppleDouble copy metadata/._codes.parquet (a hidden file, left out under data/ but
    not under metadata/). Now the folder's parts are read and the hidden file is not."""
    sids = [s for v in FOLDERS.values() for s in v]
    flat = write_dataset(tmp_path / "flat", {"all": sids})  # data/all/0.parquet: folders that are not splits
    (flat / "metadata").mkdir()
    splits = pl.DataFrame({"subject_id": sids, "split": [s for s, v in FOLDERS.items() for _ in v]})
    splits.write_parquet(flat / "metadata/subject_splits.parquet")
    tokenize(flat, tmp_path / "ref", min_count=1)
    (flat / "metadata/subject_splits.parquet").unlink()
    parts = flat / "metadata/subject_splits.parquet"
    parts.mkdir()
    splits.head(10).write_parquet(parts / "part-00000.parquet")
    splits.slice(10).write_parquet(parts / "part-00001.parquet")
    (parts / "_SUCCESS").write_bytes(b"")
    (parts / ".part-00000.parquet.crc").write_bytes(b"crc")
    (flat / "metadata/._codes.parquet").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    tokenize(flat, tmp_path / "tok", min_count=1)
    assert _token_bytes(tmp_path / "tok") == _token_bytes(tmp_path / "ref")
    assert TokenDir(tmp_path / "tok").split("held_out").subject_ids.tolist() == [15, 16]


# --- raw CSVs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A small synthetic raw dir and its MEDS (the reference), made once; tests copy the raw dir."""
    base = tmp_path_factory.mktemp("faults3")
    synthesize(base / "raw", n_patients=60, seed=2)
    etl(base / "raw", base / "ref")
    return base


@pytest.fixture()
def raw(synth, tmp_path):
    shutil.copytree(synth / "raw", tmp_path / "raw")
    return tmp_path / "raw"


def _same_data(a, b) -> None:
    files = sorted(p.relative_to(a) for p in (a / "data").rglob("*.parquet"))
    assert files == sorted(p.relative_to(b) for p in (b / "data").rglob("*.parquet"))
    for f in files:
        assert pl.read_parquet(a / f).equals(pl.read_parquet(b / f)), f


def _rewrite(path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


def test_csv_lines_ended_by_a_lone_cr_read_like_lf(raw, synth, tmp_path, capsys):
    """Before: a table saved with classic Mac line ends (a lone CR: Excel's "CSV (Macintosh)")
    crashed the ETL with a traceback (_csv.Error: new-line character seen in unquoted field),
    since the header was read up to the first LF: the whole file. Now its header line ends at
    the CR, and the table reads as the LF original, a dictionary too."""
    for name in ("hosp/labevents.csv.gz", "hosp/admissions.csv.gz", "hosp/d_labitems.csv.gz"):
        _rewrite(raw / name, lambda b: b.replace(b"\n", b"\r"))
    assert main(["etl", str(raw), "--out", str(tmp_path / "out")]) == 0
    _same_data(synth / "ref", tmp_path / "out")
    assert pl.read_parquet(tmp_path / "out/metadata/codes.parquet").equals(pl.read_parquet(synth / "ref/metadata/codes.parquet"))


def test_a_header_only_table_without_a_line_end_has_no_rows(raw, tmp_path):
    """Before: a table with no rows whose header line lacks its line end (what some exporters
    write) was refused "cannot be read as CSV (ArrowInvalid)" while the same header with a line
    end read as an empty table. Now both are an empty table."""
    header = gzip.decompress((raw / "hosp/labevents.csv.gz").read_bytes()).split(b"\n", 1)[0]
    (raw / "hosp/labevents.csv.gz").write_bytes(gzip.compress(header + b"\n"))
    with_end = etl(raw, tmp_path / "with_end")
    (raw / "hosp/labevents.csv.gz").write_bytes(gzip.compress(header))
    without = etl(raw, tmp_path / "without")
    assert without["tables"]["hosp/labevents"]["rows_read"] == with_end["tables"]["hosp/labevents"]["rows_read"] == 0
    assert "hosp/labevents" in without["tables_used"]
    _same_data(tmp_path / "with_end", tmp_path / "without")


def test_a_table_only_in_a_form_etl_cannot_read_is_refused_not_absent(raw, tmp_path):
    """Before: labevents.csv.gz.part (a browser's unfinished download), labevents.csv.zip, a
    BigQuery split export (labevents-000000000000.csv.gz) or a browser's second copy
    ("labevents (1).csv.gz") left the labs out of the MEDS dataset with only "absent:
    hosp/labevents" in the summary line. Now the ETL refuses, naming the file, and writes nothing;
    a table with no file at all, or only another table's of a longer name, is still absent."""
    lab = raw / "hosp/labevents.csv.gz"
    content = lab.read_bytes()
    lab.unlink()
    for name in ("labevents.csv.gz.part", "LABEVENTS.csv.zip", "labevents-000000000000.csv.gz", "labevents (1).csv.gz"):
        (raw / "hosp" / name).write_bytes(content)
        with pytest.raises(UserError) as e:
            etl(raw, tmp_path / "out")
        assert str(e.value) == (f"table hosp/labevents: {raw / 'hosp' / name} is not labevents.csv.gz or labevents.csv "
                                "(an unfinished download, a split export or another format?): ehrfm reads one file "
                                "per table, a .csv.gz or .csv")
        assert not (tmp_path / "out").exists()
        (raw / "hosp" / name).unlink()
    (raw / "hosp/labevents_backup_notes.txt").write_text("not a table")  # another name: not the table
    assert "hosp/labevents" in etl(raw, tmp_path / "out")["tables_missing"]


def test_a_table_in_another_compression_is_named_as_such(raw, tmp_path):
    """Before: a .csv.gz holding bzip2, xz or zip data (re-compressed, or a zip renamed), or gzip
    inside gzip (a download gzipped in transit too) was refused "the header line is not UTF-8 text;
    re-encode the file (e.g. iconv ...)": advice that cannot help. Now the format is named."""
    import bz2
    import io
    import lzma
    import zipfile

    lab = raw / "hosp/labevents.csv.gz"
    text = gzip.decompress(lab.read_bytes())
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("labevents.csv", text)
    for kind, data in (("bzip2", bz2.compress(text)), ("xz", lzma.compress(text)), ("zip", zipped.getvalue()),
                       ("gzip-inside-gzip (compressed twice)", gzip.compress(gzip.compress(text)))):
        lab.write_bytes(data)
        with pytest.raises(UserError) as e:
            etl(raw, tmp_path / "out")
        assert str(e.value) == (f"{lab}: holds {kind} data, not CSV text or gzip-compressed CSV (table hosp/labevents); "
                                "decompress it to a .csv (or .csv.gz) file")
    assert not (tmp_path / "out").exists()


def test_random_bytes_are_a_damaged_file_not_text_to_re_encode(raw, tmp_path):
    """Before: a .csv.gz of random bytes (a damaged download), or gzip of random bytes, was refused "the header
    line is not UTF-8 text; re-encode the file (e.g. iconv ...)". Now named binary data, with what to do; a latin-1
    header keeps the re-encode advice."""
    lab = raw / "hosp/labevents.csv.gz"
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    for data, named in ((noise, " nor gzip data, though named .gz"), (gzip.compress(noise), "")):
        lab.write_bytes(data)
        with pytest.raises(UserError) as e:
            etl(raw, tmp_path / "out")
        assert str(e.value) == (f"{lab}: holds binary data, not CSV text{named} (table hosp/labevents): a damaged or "
                                "partial download? Download it again (MIMIC-IV's SHA256SUMS.txt gives each file's checksum)")
    for latin in ("subject_id,hadm_id,itemid,chart\xe9time\n", "subject_id,hadm_id,itemid,chart\xe9time\x1a\n"):
        lab.write_bytes(gzip.compress(latin.encode("latin-1")))  # (a DOS end-of-file Ctrl-Z is no binary data)
        with pytest.raises(UserError, match=r"the header line is not UTF-8 text; .*iconv -f latin1"):
            etl(raw, tmp_path / "out")
    header = "subject_id,hadm_id,itemid,charttime\n"
    for enc in ("utf-16", "utf-16-le", "utf-32"):  # text, to re-encode (was "binary data": NUL bytes)
        lab.write_bytes(gzip.compress(header.encode(enc)))
        with pytest.raises(UserError, match=r"the header line is UTF-16 or UTF-32 text \(table hosp/labevents\); MIMIC-IV "
                                            r"is UTF-8: re-encode the file \(e.g. iconv -f utf-16 -t utf-8\)"):
            etl(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_raw_folder_one_level_off_names_the_mimic_folder(raw, tmp_path):
    """Before: the folder `wget -r` makes (physionet.org/files/mimiciv/2.2/hosp/...) passed from
    one of its upper levels said only "required table hosp/patients.csv.gz (or .csv) not found";
    the hosp/ folder itself passed said "patients.csv.gz lies outside .../hosp/hosp/: MIMIC-IV keeps
    patients in hosp/, move it there": advice that breaks the download. Now both name the folder
    to pass, and nothing is written."""
    version = tmp_path / "dl/physionet.org/files/mimiciv/2.2"
    version.parent.mkdir(parents=True)
    raw.rename(version)
    for above in (tmp_path / "dl", version.parent):
        with pytest.raises(UserError) as e:
            etl(above, tmp_path / "out")
        assert str(e.value) == (f"required table hosp/patients.csv.gz (or .csv) not found in {above}; MIMIC-IV is in "
                                f"{version}: pass that folder")
    with pytest.raises(UserError) as e:
        etl(version / "hosp", tmp_path / "out")
    assert str(e.value) == f"{version / 'hosp'} is MIMIC-IV's hosp/ folder, not the folder that holds hosp/ and icu/: pass {version}"
    assert not (tmp_path / "out").exists()
