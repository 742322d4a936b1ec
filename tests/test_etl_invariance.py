"""Metamorphic tests of `ehrfm etl` and `ehrfm tokenize`: what their output must not depend on.

Each test changes the input in a way that carries no information (the row order of a CSV, the
CSV block size, how MEDS subjects are sharded) and expects the same files, in content and in
order: tokenize keeps the events one time shares in their MEDS order, and training draws its
order over the token files' subjects.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import shutil
from pathlib import Path

import polars as pl
import pytest
from test_data_faults5 import _raw

from tokenization.etl import etl
from tokenization.tokenize import tokenize

pytestmark = pytest.mark.usefixtures("quiet")


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("EHRFM_QUIET", "1")


def _meds(out: Path) -> dict[str, pl.DataFrame]:
    """Every data shard of a MEDS dir, by its path under data/, and the metadata tables."""
    files = {str(p.relative_to(out)): pl.read_parquet(p) for p in sorted((out / "data").rglob("*.parquet"))}
    for name in ("codes", "subject_splits"):
        files[name] = pl.read_parquet(out / "metadata" / f"{name}.parquet")
    return files


def _account(out: Path) -> dict:
    return json.loads((out / "metadata" / "etl_config.json").read_text())["tables"]


def _assert_same_meds(a: Path, b: Path) -> None:
    ma, mb = _meds(a), _meds(b)
    assert ma.keys() == mb.keys()
    for name in ma:  # counts and codes only in a failure message, never patient rows
        assert ma[name].equals(mb[name]), f"{name} differs"
    assert _account(a) == _account(b)


def _shuffled_copy(raw: Path, out: Path, seed: int) -> Path:
    """A copy of `raw` whose event tables list their rows in another (seeded) order; dictionaries kept."""
    rng = random.Random(seed)
    shutil.copytree(raw, out)
    for f in sorted(out.rglob("*.csv*")):
        f.chmod(0o644)
        if f.name.startswith("d_"):
            continue
        gz = f.name.endswith(".gz")
        data = gzip.decompress(f.read_bytes()) if gz else f.read_bytes()
        header, *rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
        rng.shuffle(rows)
        text = io.StringIO(newline="")
        csv.writer(text, lineterminator="\n").writerows([header, *rows])
        body = text.getvalue().encode()
        f.write_bytes(gzip.compress(body, mtime=0) if gz else body)
    return out


def test_the_row_order_of_the_real_demo_csvs_changes_nothing(demo_meds, mimic_demo_dir, tmp_path):
    """Events one time shares were written in their CSV rows' order: on the real demo, shuffling the
    rows of every table moved 196,784 of 337,343 events (labs, eMAR, ingredients, POE, diagnoses out
    of rank where a stay's rows were not adjacent), so the token sequences, and every model trained
    on them, depended on how the export listed its rows. Now their order is set by what they hold."""
    shuffled = _shuffled_copy(mimic_demo_dir, tmp_path / "raw", seed=1)
    etl(shuffled, tmp_path / "meds")
    _assert_same_meds(demo_meds, tmp_path / "meds")


def test_diagnoses_keep_their_rank_whatever_the_row_order_and_block_size(tmp_path):
    """Rank (seq_num) order held only for a stay whose rows were adjacent in the file; interleaved
    stays of one discharge time, or a stay listed apart, came out in file order."""
    ranks = [3, 1, 4, 2, 5]
    adm = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
           "1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n")
    # Rank r of stay 11 is listed, then an unrelated stay's row, then the next rank: never adjacent.
    dx = "subject_id,hadm_id,seq_num,icd_code,icd_version\n" + "".join(
        f"1,11,{r},A{r:02d},10\n1,99,{r},Z{r:02d},10\n" for r in ranks)
    procs = "subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version\n" + "".join(
        f"1,11,{r},2150-01-03,P{r:02d},10\n" for r in ranks)
    raw = _raw(tmp_path, {"hosp/admissions": adm, "hosp/diagnoses_icd": dx, "hosp/procedures_icd": procs})
    for batch_bytes in (1 << 20, 128):  # one block; a row or two per block
        meds = tmp_path / f"meds{batch_bytes}"
        etl(raw, meds, split_fractions=(1.0, 0.0, 0.0), batch_bytes=batch_bytes)
        codes = pl.read_parquet(sorted((meds / "data").rglob("*.parquet"))[0])["code"].to_list()
        assert [c for c in codes if c.startswith("DIAGNOSIS//")] == [f"DIAGNOSIS//ICD//10//A{r:02d}" for r in range(1, 6)]
        assert [c for c in codes if c.startswith("PROCEDURE//")] == [f"PROCEDURE//ICD//10//P{r:02d}" for r in range(1, 6)]


def test_a_csv_block_smaller_than_a_header_line_reads_every_row(tmp_path):
    """A header line longer than batch_bytes made pyarrow report an empty file, which the ETL took for a
    table without rows: admissions (a 100-byte header) read 0 rows at batch_bytes=64, every stay
    and the events timed by it dropped, exit 0. Now the block holds at least the header line."""
    adm = ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location\n"
           "1,11,2150-01-01 10:00:00,2150-01-05 14:00:00,,URGENT,ER,HOME\n")
    dx = "subject_id,hadm_id,seq_num,icd_code,icd_version\n1,11,1,A01,10\n"
    raw = _raw(tmp_path, {"hosp/admissions": adm, "hosp/diagnoses_icd": dx})
    for batch_bytes in (1 << 20, 64):
        etl(raw, tmp_path / f"meds{batch_bytes}", split_fractions=(1.0, 0.0, 0.0), batch_bytes=batch_bytes)
    _assert_same_meds(tmp_path / "meds1048576", tmp_path / "meds64")
    assert _account(tmp_path / "meds64")["hosp/admissions"]["rows_read"] == 1


def _reformatted(raw: Path, out: Path) -> Path:
    """A copy of `raw` whose tables, each in one of these ways, say the same in another form: plain
    .csv, CRLF line ends, a byte order mark, upper-case header, columns in another order, every value
    quoted, blank lines at the end, an extra column whose values hold commas and line breaks."""
    def plain(h, rows):
        return [h, *rows], "\n", csv.QUOTE_MINIMAL

    def crlf(h, rows):
        return [h, *rows], "\r\n", csv.QUOTE_MINIMAL

    def upper(h, rows):
        return [[c.upper() for c in h], *rows], "\n", csv.QUOTE_MINIMAL

    def columns(h, rows):
        order = list(range(len(h)))[::-1]
        return [[r[i] for i in order] for r in [h, *rows]], "\n", csv.QUOTE_MINIMAL

    def quoted(h, rows):
        return [h, *rows], "\n", csv.QUOTE_ALL

    def extra(h, rows):
        return [[*h, "comment"], *[[*r, "seen, then\nrechecked"] for r in rows]], "\n", csv.QUOTE_MINIMAL

    ways = [plain, crlf, upper, columns, quoted, extra, "bom", "blank_lines"]
    shutil.copytree(raw, out)
    for i, f in enumerate(sorted(out.rglob("*.csv.gz"))):
        f.chmod(0o644)
        data = gzip.decompress(f.read_bytes())
        way = ways[i % len(ways)]
        if way == "bom":
            data = b"\xef\xbb\xbf" + data
        elif way == "blank_lines":
            data += b"\n\n"
        else:
            header, *rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
            table, end, quoting = way(header, rows)
            text = io.StringIO(newline="")
            csv.writer(text, lineterminator=end, quoting=quoting).writerows(table)
            data = text.getvalue().encode()
        if way is plain:
            f.unlink()
            f.with_suffix("").write_bytes(data)
        else:
            f.write_bytes(gzip.compress(data, mtime=0))
    return out


def test_the_form_of_the_real_demo_csvs_changes_nothing(demo_meds, mimic_demo_dir, tmp_path):
    """What a re-export or an editor does to a CSV without changing what it says: each table of the
    real demo in one such form (module docstring of _reformatted) gives the same MEDS and account."""
    etl(_reformatted(mimic_demo_dir, tmp_path / "raw"), tmp_path / "meds")
    _assert_same_meds(demo_meds, tmp_path / "meds")


def test_spaces_around_every_value_change_nothing(mimic_demo_dir, tmp_path):
    """A fixed-width export pads values with spaces. Numbers, ids, times and code parts were read
    without them, but the rules that compare a value were not: on the real demo padded, transfers'
    275 `discharge` rows became events and 5,102 eMAR doses were dropped as duplicates of their
    administration's first product line (its parent_field_ordinal no longer read)."""
    tables = ["hosp/patients", "hosp/admissions", "hosp/transfers", "hosp/diagnoses_icd", "hosp/emar", "hosp/emar_detail"]
    for name in ("raw", "padded"):
        for t in tables:
            src = mimic_demo_dir / f"{t}.csv.gz"
            (tmp_path / name / t).parent.mkdir(parents=True, exist_ok=True)
            data = src.read_bytes()
            if name == "padded":
                header, *rows = list(csv.reader(io.StringIO(gzip.decompress(data).decode(), newline="")))
                text = io.StringIO(newline="")
                csv.writer(text, lineterminator="\n").writerows([header, *[[f" {v}  " if v else v for v in r] for r in rows]])
                data = gzip.compress(text.getvalue().encode(), compresslevel=1, mtime=0)
            (tmp_path / name / f"{t}.csv.gz").write_bytes(data)
        etl(tmp_path / name, tmp_path / f"meds_{name}")
    _assert_same_meds(tmp_path / "meds_raw", tmp_path / "meds_padded")

def _resharded(meds: Path, out: Path) -> Path:
    """`meds` with each split's subjects dealt at random into 4 shards, named so that they sort in another order."""
    shutil.copytree(meds / "metadata", out / "metadata")
    for split in sorted((meds / "data").iterdir()):
        df = pl.concat([pl.read_parquet(f) for f in sorted(split.glob("*.parquet"))])
        ids = df["subject_id"].unique().sort().to_list()
        random.Random(7).shuffle(ids)
        (out / "data" / split.name).mkdir(parents=True)
        for k in range(4):
            part = df.filter(pl.col("subject_id").is_in(ids[k::4])).sort("subject_id", maintain_order=True)
            part.write_parquet(out / "data" / split.name / f"{10 - 3 * k}.parquet")  # 10, 7, 4, 1
    return out


def test_tokens_do_not_depend_on_how_the_meds_subjects_are_sharded(demo_meds, tmp_path):
    """Subjects were written in the order of the shard files' names: the same real demo MEDS dealt
    into other shards (another --shard-subjects, another ETL; `10.parquet` sorts before `2.parquet`)
    gave other token files and, as training draws its order over their subjects, other batches."""
    tokenize(demo_meds, tmp_path / "tok_a")
    tokenize(_resharded(demo_meds, tmp_path / "meds_b"), tmp_path / "tok_b")
    a, b = tmp_path / "tok_a", tmp_path / "tok_b"
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    stats = [{k: v for k, v in json.loads((d / "stats.json").read_text()).items() if k != "seconds"} for d in (a, b)]
    assert stats[0] == stats[1]
    for split in ("train", "tuning", "held_out"):
        ids = pl.read_parquet(b / split / "index.parquet")["subject_id"]
        assert ids.is_sorted() and ids.n_unique() == len(ids)
        for name in ("tokens.npy", "times.npy", "index.parquet"):
            assert (a / split / name).read_bytes() == (b / split / name).read_bytes(), f"{split}/{name} differs"


def _with_rows_twice(raw: Path, out: Path, tables: list[str]) -> Path:
    """A copy of `raw` in which every row of `tables` is listed twice, each repeat next to its row."""
    shutil.copytree(raw, out)
    for t in tables:
        f = out / f"{t}.csv.gz"
        f.chmod(0o644)
        header, *rows = gzip.decompress(f.read_bytes()).decode().splitlines(keepends=True)
        f.write_bytes(gzip.compress("".join([header, *(r for r in rows for _ in (0, 1))]).encode(), compresslevel=1, mtime=0))
    return out


def test_rows_listed_twice_change_no_meds_and_no_count_of_events(demo_meds, mimic_demo_dir, tmp_path):
    """Exact repeats are dropped, so the MEDS is the same; but moved_to_store_time and
    duration_coded_at_discharge were counted on the rows read, before the repeats were dropped: with
    every row listed twice the demo reported 212,996 lab results moved to their storetime for 106,735
    written, 84 duration-coded procedures for 42 and 6 midnight discharges read as dates for 3. Every count of events written is now taken after
    the repeats are dropped; the counts of rows read double, and the repeats are the `duplicate` drops."""
    twice = ["hosp/admissions", "hosp/labevents", "hosp/procedures_icd", "hosp/emar", "hosp/pharmacy", "icu/ingredientevents"]
    etl(_with_rows_twice(mimic_demo_dir, tmp_path / "raw", twice), tmp_path / "meds")
    ma, mb = _meds(demo_meds), _meds(tmp_path / "meds")
    differ = [k for k in ma if k not in mb or not ma[k].equals(mb[k])]
    assert ma.keys() == mb.keys() and differ == []
    a, b = _account(demo_meds), _account(tmp_path / "meds")
    units = json.loads((tmp_path / "meds" / "metadata" / "etl_config.json").read_text())["count_units"]
    for t in a:
        for key in units["events written"]:
            assert a[t].get(key) == b[t].get(key), (t, key)
        n = 2 if t in twice else 1
        assert b[t]["rows_read"] == n * a[t]["rows_read"], t
        for key in set(units["rows read"]) - {"rows_read", "dropped"}:
            assert b[t].get(key) == ({c: n * v for c, v in a[t][key].items()} if key in a[t] else None), (t, key)
        # Each row read under one reason: a repeat under `duplicate`, or under the row's reason when it was
        # dropped as it was read (result_never_stored) rather than after the repeats (no_emar_row).
        assert set(b[t]["dropped"]) == set(a[t]["dropped"]) | ({"duplicate"} if n == 2 else set()), t
        assert all(b[t]["dropped"][r] in (v, n * v) for r, v in a[t]["dropped"].items()), t
        if n == 2 and t != "hosp/admissions":  # a row of these makes one event (an admission makes several)
            assert b[t]["events_written"] + sum(b[t]["dropped"].values()) == b[t]["rows_read"], t
    # How discharges were placed, one count per stay (they were per row read: 3 midnights read as dates, 6 listed twice).
    placed = [json.loads((m / "metadata" / "ehrfm_etl.json").read_text())["discharge_times"] for m in (demo_meds, tmp_path / "meds")]
    assert placed[0] == placed[1] and placed[1]["midnight_read_as_date"] == 3
    assert b["hosp/labevents"]["moved_to_store_time"] == {"charttime": 106498}
    assert b["hosp/procedures_icd"]["duration_coded_at_discharge"] == 42
    assert b["hosp/labevents"]["dropped"] == {"duplicate": 106735, "result_never_stored": 1984}
    # Events after the subject's death are kept and counted per table (they were not counted: a helper found 225 of
    # 16 deceased subjects, a culture read 62 days after); the count is of events written, so the repeats add none.
    after = {t: v["events_after_death"] for t, v in a.items() if v.get("events_after_death")}
    assert sum(after.values()) == 225 and after["hosp/microbiologyevents"] == 61, after
    ev = pl.concat([v.select("subject_id", "time", "code") for k, v in ma.items() if k.startswith("data")])
    death = ev.filter(pl.col("code") == "MEDS_DEATH").group_by("subject_id").agg(pl.col("time").min().alias("death"))
    assert ev.join(death, on="subject_id").filter(pl.col("time") > pl.col("death")).height == 225
