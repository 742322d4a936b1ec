"""Faults of a full-scale MIMIC-IV conversion, one test per kind (continued from test_data_faults6.py).

Small hand-made raw tables, invented values; each test fails without its fix.
"""

from __future__ import annotations

import pytest
from test_data_faults5 import _raw

from ehrfm.errors import UserError
from tokenization.etl import etl

pytestmark = pytest.mark.usefixtures("quiet")


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("EHRFM_QUIET", "1")

# A lab table the ETL refuses only once it reads its rows (a time in another format): an error
# about it means the dictionaries were not checked before the event tables were read.
LABS_BAD_TIME = ("labevent_id,subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
                 "1,1,11,50912,yesterday,2150-01-02 07:00:00,1.0,1.0,mg/dL\n")


@pytest.mark.parametrize("dictionary, text, said", [
    ("hosp/d_labitems", "", "empty file"),                                  # a truncated copy
    ("hosp/d_labitems", "itemid,fluid,category\n50912,Blood,Chemistry\n", "missing column 'label'"),
    ("hosp/d_items", "itemid,label\n220045,Heart Rate\n", "lies outside"),  # icu's dictionary saved in hosp/
])
def test_a_broken_dictionary_is_refused_before_any_event_table_is_read(tmp_path, dictionary, text, said):
    """The code dictionaries (d_labitems, d_items, d_icd_*, d_hcpcs) were found and their headers
    checked only by the last step, after every table and shard was converted: on a full MIMIC-IV
    (labevents ~120M rows, chartevents ~430M) a truncated, reshaped or misplaced dictionary failed
    the run after its hours of work. They are checked with the event tables' headers, up front.
    """
    raw = _raw(tmp_path, {"hosp/labevents": LABS_BAD_TIME, dictionary: text})
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    assert said in str(e.value) and dictionary.split("/")[1] in str(e.value)
    assert "charttime" not in str(e.value)  # labevents was not read first
    assert not (tmp_path / "meds").exists()


def test_a_shard_bucket_is_split_into_chunks_a_batch_at_a_time(tmp_path):
    """A shard's bucket file of one table was read whole to split it by subject chunk: with
    10,000 MIMIC-IV subjects per shard, chartevents' bucket holds ~12M events (~1 GiB in memory,
    twice while split), so memory grew with the shard and the events per subject, not the chunk.
    It is read and written a batch at a time: each chunk's file gets one row group per batch that
    held its rows, and the pieces are the same rows in the same order as before.
    """
    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq

    from tokenization.etl import _split_buckets

    events = pl.DataFrame({"subject_id": [1, 1, 2, 2, 3, 3, 3, 4], "code": list("abcdefgh"),
                           "numeric_value": [float(i) for i in range(8)]})
    bucket = tmp_path / "0__003.parquet"
    pq.write_table(events.to_arrow(), bucket, row_group_size=2)
    chunks = [np.array([1, 2]), np.array([3, 4])]
    pieces = _split_buckets([bucket], chunks, batch_rows=2)
    assert not bucket.exists()
    assert [[src for src, _ in p] for p in pieces] == [[3], [3]]
    for ids, [(_, f)] in zip(chunks, pieces, strict=True):
        assert pl.read_parquet(f).equals(events.filter(pl.col("subject_id").is_in(ids.tolist())))
        assert pq.ParquetFile(f).metadata.num_row_groups == 2  # two batches of 2 rows each: never the file whole


def test_a_large_meds_shard_is_tokenized_a_slice_at_a_time(demo_meds, tmp_path, monkeypatch):
    """tokenize read each MEDS shard whole: other ETLs write shards of 10^8 events (MEDS_transforms
    keeps 50,000 subjects a shard; MIMIC-IV 3.1 with chartevents), so its memory grew with the
    shard. A sorted shard is read READ_ROWS rows at a time (a slice's last subject waits for the
    next), with byte-identical tokens; an unsorted one is still read whole and sorted.
    """
    import polars as pl

    from ehrfm.meds_io import Shard
    from tokenization import tokenize as tk

    shard = Shard(sorted((demo_meds / "data/train").glob("*.parquet"))[0], "train")
    whole, was_sorted = tk._read_shard(shard)
    assert was_sorted and whole.height > 50_000
    per_subject = whole.group_by("subject_id").len()["len"].max()
    chunks, was_sorted = tk._shard_chunks(shard, read_rows=10_000)
    chunks = list(chunks)
    assert was_sorted and len(chunks) > 5
    assert max(c.height for c in chunks) <= 10_000 + per_subject  # a slice and one subject, never the shard
    assert pl.concat(chunks).equals(whole)

    unsorted = tmp_path / "unsorted.parquet"
    whole.reverse().write_parquet(unsorted)
    chunks, was_sorted = tk._shard_chunks(Shard(unsorted, "train"), read_rows=10_000)
    assert not was_sorted and pl.concat(list(chunks)).equals(tk._read_shard(Shard(unsorted, "train"))[0])

    tk.tokenize(demo_meds, tmp_path / "tok_whole")
    monkeypatch.setattr(tk, "READ_ROWS", 10_000)
    tk.tokenize(demo_meds, tmp_path / "tok_sliced")
    for split in ("train", "tuning", "held_out"):
        for name in ("tokens.npy", "times.npy", "index.parquet"):
            a, b = tmp_path / "tok_whole" / split / name, tmp_path / "tok_sliced" / split / name
            assert a.read_bytes() == b.read_bytes(), (split, name)


@pytest.mark.parametrize("hard", [80, 4096])
def test_more_shards_than_open_files_is_one_clear_error_or_runs(mimic_demo_dir, tmp_path, repo_root, hard):
    """Routing events keeps one bucket file open per output shard: small --shard-subjects on a large
    cohort (364k MIMIC-IV 3.1 subjects in shards of 100: 3,650 files; `ulimit -n` is often 1024)
    failed after every table was staged with "Too many open files" naming only the output dir.
    `ehrfm etl` now raises its soft limit to the hard one, and where that is not enough says so
    before routing, naming --shard-subjects and the least that fits.
    """
    import os
    import resource
    import subprocess
    import sys

    def limit():  # a soft limit of 80 files: the demo's 100 subjects in shards of 1 need ~110
        resource.setrlimit(resource.RLIMIT_NOFILE, (80, hard))

    out = tmp_path / "meds"
    p = subprocess.run([sys.executable, "-m", "ehrfm", "etl", str(mimic_demo_dir), "--out", str(out),
                        "--shard-subjects", "1", "--workers", "1"], capture_output=True, text=True, cwd=repo_root,
                       env={**os.environ, "EHRFM_QUIET": "1"}, preexec_fn=limit)
    if hard == 80:
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr[-500:]
        assert "--shard-subjects" in p.stderr and "ulimit -n" in p.stderr and not out.exists()
    else:
        assert p.returncode == 0, p.stderr[-500:]
        assert len(list((out / "data").rglob("*.parquet"))) == 100


def test_a_mimic_iv_ed_download_saved_below_the_raw_dir_is_not_left_out_silently(tmp_path):
    """MIMIC-IV-ED is its own PhysioNet download (mimic-iv-ed-2.2/ed/). Saved inside the MIMIC-IV
    folder under that name, the ETL read no ED table and said nothing (the ED tables are listed,
    read or absent, only when RAW/ed exists): every ED stay, triage, vital and ED diagnosis was lost.
    It is refused, naming the folder and where it belongs.
    """
    raw = _raw(tmp_path, {})
    ed = raw / "mimic-iv-ed-2.2" / "ed"
    ed.mkdir(parents=True)
    (ed / "edstays.csv").write_text("subject_id,hadm_id,stay_id,intime,outtime,arrival_transport,disposition\n"
                                    "1,11,301,2150-01-01 08:00:00,2150-01-01 10:00:00,AMBULANCE,ADMITTED\n")
    with pytest.raises(UserError, match=r"mimic-iv-ed-2\.2/ed holds MIMIC-IV-ED.*raw/ed"):
        etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    assert not (tmp_path / "meds").exists()
    ed.parent.rename(raw / "elsewhere")
    (raw / "elsewhere" / "ed").rename(raw / "ed")  # where MIMIC-IV-ED belongs: converted
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    assert (tmp_path / "meds" / "metadata" / "etl_config.json").read_text().count("ed/edstays") > 0


def test_diagnoses_keep_their_rank_when_a_stay_straddles_a_csv_block(tmp_path):
    """Diagnoses sit at their stay's discharge in rank (seq_num) order, sorted per CSV block; MIMIC-IV's
    files do not list them in that order (the real demo: 1,963 of 4,506 rows follow a higher rank).
    A stay cut at a block boundary (about one per 4 MiB block of diagnoses_icd) had its halves
    sorted apart, out of rank order, differently for each batch_bytes. Hospital and ED diagnoses.
    """
    import json

    import polars as pl

    ranks = list(range(40, 0, -1))  # listed from the last rank to the first
    dx = "subject_id,hadm_id,seq_num,icd_code,icd_version\n" + "".join(f"1,11,{r},A{r:02d},10\n" for r in ranks)
    ed_dx = "subject_id,stay_id,seq_num,icd_code,icd_version,icd_title\n" + "".join(
        f"1,301,{r},B{r:02d},10,x\n" for r in ranks)
    raw = _raw(tmp_path, {"hosp/diagnoses_icd": dx, "ed/diagnosis": ed_dx, "ed/edstays": (
        "subject_id,hadm_id,stay_id,intime,outtime,arrival_transport,disposition\n"
        "1,11,301,2150-01-01 08:00:00,2150-01-01 10:00:00,AMBULANCE,ADMITTED\n")})
    for batch_bytes in (1 << 20, 256):  # one block; blocks of a few rows
        meds = tmp_path / f"meds{batch_bytes}"
        etl(raw, meds, split_fractions=(1.0, 0.0, 0.0), batch_bytes=batch_bytes)
        codes = pl.read_parquet(sorted((meds / "data").rglob("*.parquet"))[0])["code"].to_list()
        assert [c for c in codes if c.startswith("DIAGNOSIS//")] == [f"DIAGNOSIS//ICD//10//A{r:02d}" for r in range(1, 41)]
        assert [c for c in codes if c.startswith("ED_DIAGNOSIS//")] == [
            f"ED_DIAGNOSIS//ICD//10//B{r:02d}" for r in range(1, 41)]
        tables = json.loads((meds / "metadata/etl_config.json").read_text())["tables"]
        assert tables["hosp/diagnoses_icd"]["rows_read"] == 40 and tables["ed/diagnosis"]["rows_read"] == 40


def test_de_identification_placeholders_are_counted_apart_from_unparseable_numbers(tmp_path):
    """MIMIC-IV writes `___` where de-identification removed free text (emar_detail's dose_given on
    the real demo: 88 values). Counted as unparseable numbers, a removal on purpose read as a fault
    of the export; now it is kept as null and counted as redacted_numbers_set_null, and only text
    that is neither stays unparseable."""
    labs = ("labevent_id,subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
            "1,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"
            "2,1,11,50912,2150-01-03 06:00:00,2150-01-03 07:00:00,___, ___ ,mg/dL\n"
            "3,1,11,50912,2150-01-04 06:00:00,2150-01-04 07:00:00,x,___,mg/dL\n"
            "4,1,11,50912,2150-01-05 06:00:00,2150-01-05 07:00:00,high,7.5 mg,mg/dL\n")
    raw = _raw(tmp_path, {"hosp/labevents": labs})
    etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    import json

    lab = json.loads((tmp_path / "meds" / "metadata" / "etl_config.json").read_text(encoding="utf-8"))["tables"]["hosp/labevents"]
    assert lab["redacted_numbers_set_null"] == {"valuenum": 2}
    assert lab["unparseable_numbers_set_null"] == {"valuenum": 1}
    assert lab["events_written"] == 4


def test_rows_without_the_headers_columns_are_counted_with_the_first_ones_line(tmp_path):
    """A ragged CSV (rows cut short, an unquoted comma) was refused at its first bad row with pyarrow's
    "Expected 9 columns, got 4": no count, no line to look at. Now every such row is counted, the
    first one's line given, no value shown, and nothing is written."""
    labs = ("labevent_id,subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\n"
            "1,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"
            "2,1,11,50912\n"                                                        # line 3: cut short
            "3,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\n"
            "4,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1,5,1.5,mg/dL\n")  # line 5: unquoted comma
    raw = _raw(tmp_path, {"hosp/labevents": labs})
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    said = str(e.value)
    assert "labevents.csv" in said and "2 rows without the header's 9 columns (the first at line 3)" in said
    assert "50912" not in said and "2150" not in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_a_quote_left_open_is_counted_from_its_line_and_blank_lines_are_not_rows(tmp_path):
    """The count is made by Python's csv module now: pyarrow's invalid_row_handler (a Python callback) was
    released on one of pyarrow's threads as the interpreter shut down, and about 1 run in 16 aborted after
    its error line ("terminate called without an active exception", exit 134). A quote left open (the rest of
    the file one value) is the one bad row at its line; blank lines (\r\n) are skipped as pyarrow skips them."""
    from tokenization.etl import _count_ragged_rows

    header = "labevent_id,subject_id,hadm_id,itemid,charttime,storetime,value,valuenum,valueuom\r\n"
    row = "1,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,1.0,1.0,mg/dL\r\n"
    stray = '2,1,11,50912,2150-01-02 06:00:00,2150-01-02 07:00:00,"1.0,1.0,mg/dL\r\n'  # line 4: a quote never closed
    path = tmp_path / "labevents.csv"
    path.write_text(header + row + "\r\n" + stray + row * 3, newline="")
    assert _count_ragged_rows(path, 1 << 20) == (1, 9, 4)
    path.write_text(header + "\r\n" + row + "2,1,11\r\n" + "\r\n" + "3,1\r\n" + row, newline="")
    assert _count_ragged_rows(path, 1 << 20) == (2, 9, 4)
    path.write_text(header + row, newline="")
    assert _count_ragged_rows(path, 1 << 20) == (0, 9, 0)


@pytest.mark.parametrize("kind", ["broken link", "fifo"])
def test_a_table_file_that_is_a_broken_link_or_a_pipe_is_named_as_such(tmp_path, kind):
    """Data linked in from a shared area that moved: "omr.csv.gz is not omr.csv.gz or omr.csv (an unfinished
    download ...?)" contradicted itself. It is named a broken link (with its target), or not a regular file."""
    import os

    raw = _raw(tmp_path, {})
    target = raw / "hosp" / "omr.csv.gz"
    if kind == "broken link":
        target.symlink_to(tmp_path / "gone" / "omr.csv.gz")
    else:
        os.mkfifo(target)
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "meds", split_fractions=(1.0, 0.0, 0.0))
    said = str(e.value)
    assert said.startswith(f"table hosp/omr: {target} is "), said
    assert (f"a broken symbolic link (to {tmp_path / 'gone' / 'omr.csv.gz'}, which does not exist)" in said
            if kind == "broken link" else "is not a regular file (a named pipe, socket or device?)" in said), said
    assert not (tmp_path / "meds").exists()
