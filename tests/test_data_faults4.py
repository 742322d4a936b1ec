"""Faults of real-world MIMIC-IV exports and of MEDS data from other tools, one test per kind.

Small synthetic or hand-made data, invented values; each test fails without its fix.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from datetime import datetime, timedelta

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_meds_reader import one_error_line

from ehrfm.app.cli import main
from ehrfm.errors import UserError
from tokenization.etl import etl
from tokenization.hierarchy import code_parts
from tokenization.synth import synthesize
from tokenization.tokenize import tokenize

pytestmark = pytest.mark.usefixtures("quiet")


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("EHRFM_QUIET", "1")


def _rewrite(raw, table: str, change) -> None:
    """Rewrite one raw table (all columns read as text) through `change`, gzip-compressed."""
    path = raw / f"{table}.csv.gz"
    df = change(pl.read_csv(path, infer_schema_length=0))
    with gzip.open(path, "wb") as f:
        df.write_csv(f)


def _lab_meds(path, sids) -> None:
    """A MEDS shard: per subject a birth, then 6 values of one lab an hour apart."""
    t0 = datetime(2150, 1, 1)
    rows = [(s, datetime(2100, 1, 1), "MEDS_BIRTH", None) for s in sids]
    rows += [(s, t0 + timedelta(hours=k), "LAB//1//mg/dL", float(s + k)) for s in sids for k in range(6)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
        "code": pa.array([r[2] for r in rows], pa.string()),
        "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
    }).sort_by([("subject_id", "ascending"), ("time", "ascending")]), path)


def _codes(meds) -> pl.DataFrame:
    return pl.read_parquet(meds / "metadata" / "codes.parquet")


def test_spaces_around_code_values_make_one_code_not_two(tmp_path):
    """Before: a PostgreSQL export pads CHAR(n) columns (icd_code CHAR(7): `J189   `), and MIMIC-IV
    itself writes some drug names with a trailing space (the real demo: `PHARMACY//Vitamin D3 ` beside
    `PHARMACY//Vitamin D3`, 23 such pairs, and a lab unit of one space). Each padded value became a code
    of its own, a padded ICD code parsed into no hierarchy and lost its description. Now the spaces
    around a code's part are not part of it (a blank part is UNK, as a missing one)."""
    plain = tmp_path / "plain"
    synthesize(plain, n_patients=60, seed=3)
    padded = tmp_path / "padded"
    shutil.copytree(plain, padded)
    pad = pl.col("icd_code").str.pad_end(7)  # what COPY of a CHAR(7) column writes
    for table in ("hosp/diagnoses_icd", "hosp/d_icd_diagnoses", "hosp/procedures_icd", "hosp/d_icd_procedures"):
        _rewrite(padded, table, lambda df: df.with_columns(pad))
    # Every other prescription's drug with a trailing space, every lab unit padded with one.
    _rewrite(padded, "hosp/prescriptions", lambda df: df.with_columns(
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.col("drug") + " ").otherwise(pl.col("drug")).alias("drug")))
    _rewrite(padded, "hosp/labevents", lambda df: df.with_columns(pl.col("valueuom") + " "))
    for raw in (plain, padded):
        etl(raw, tmp_path / f"{raw.name}_meds")
    a, b = _codes(tmp_path / "plain_meds"), _codes(tmp_path / "padded_meds")
    assert b.equals(a)  # the same codes, descriptions, parent codes and counts
    dx = b.filter(pl.col("code").str.starts_with("DIAGNOSIS//ICD//10//"))
    assert dx.height > 5 and not dx["description"].str.starts_with("ICD-10 ").any()  # found in the dictionary
    # The tokenizer's ICD parser drops such padding too (MEDS from other ETLs of a PostgreSQL export).
    assert code_parts("DIAGNOSIS//ICD//9//4019   ", "hierarchical") == code_parts("DIAGNOSIS//ICD//9//4019", "hierarchical")
    assert code_parts("DIAGNOSIS//ICD//10//J189   ", "hierarchical")[0][0] == "DIAGNOSIS//ICD//10//J18"


def test_a_damaged_tokenizer_json_is_named_in_one_line(tmp_path):
    """Before: a tokenizer.json that is JSON but not whole (a key deleted by hand, the vocab cut, a list)
    failed `ehrfm tokenize --tokenizer` with a KeyError or AttributeError traceback naming no file.
    Now it is refused in one line naming the file and what is missing, and nothing is written."""
    meds = tmp_path / "meds"
    for split, sids in (("train", range(1, 9)), ("tuning", range(9, 11))):
        _lab_meds(meds / "data" / split / "0.parquet", sids)
    tokenize(meds, tmp_path / "tok", min_count=1)
    good = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    cases = {
        "no_edges": ({k: v for k, v in good.items() if k != "quantile_edges"}, r"no key 'quantile_edges'"),
        "cut_vocab": ({**good, "vocab": good["vocab"][:2]}, r"its vocab lacks 36 token\(s\) it uses \(12h-1d, "),
        "short_edges": ({**good, "quantile_edges": {c: e[:3] for c, e in good["quantile_edges"].items()}},
                        r"'quantile_edges' does not hold n_quantiles - 1 edges"),
        "a_list": ([good], r"is not an ehrfm tokenizer \(format 'a JSON list'\)"),
    }
    for name, (tok, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(tok))
        with pytest.raises(UserError, match=rf"{name}\.json.*{message}"):
            tokenize(meds, tmp_path / f"out_{name}", tokenizer=path)
        assert not (tmp_path / f"out_{name}").exists()



def test_a_negative_synth_seed_is_one_error_line(tmp_path, capsys):
    """Before: `ehrfm synth --seed -1` ended in numpy's ValueError traceback ("expected non-negative
    integer"). Now it is one line naming --seed, exit 2, and nothing is written."""
    assert main(["synth", "--out", str(tmp_path / "raw"), "--patients", "5", "--seed", "-1"]) == 2
    assert one_error_line(capsys) == "ehrfm synth: error: --seed must be a whole number of at least 0 (got -1)"
    assert not (tmp_path / "raw").exists()


def test_a_split_seed_outside_the_hash_range_is_one_error_line(tmp_path, capsys):
    """Before: `ehrfm etl --split-seed -1` (or 2**64) ended in an OverflowError traceback from the
    split hash, after the output had been checked. Now it is one line naming --split-seed, before any
    table is read, and the largest seed the hash takes still works."""
    raw = tmp_path / "raw"
    synthesize(raw, n_patients=60, seed=1)
    for seed in ("-1", str(1 << 64)):
        assert main(["etl", str(raw), "--out", str(tmp_path / "meds"), "--split-seed", seed]) == 2
        assert one_error_line(capsys) == f"ehrfm etl: error: --split-seed must be a whole number from 0 to 2**63 - 1 (got {seed})"
        assert not (tmp_path / "meds").exists()
    res = etl(raw, tmp_path / "meds", split_seed=(1 << 63) - 1)
    assert sum(res["subjects_per_split"].values()) == 60


def test_icd9_diagnoses_and_procedures_have_distinct_parent_codes(tmp_path):
    """Before: metadata/codes.parquet gave ICD-9 diagnoses and ICD-9 procedures the same parent code
    prefix, `ICD9/`: on the real demo diagnosis 518.7 (transfusion-related lung injury) and procedure
    51.87 (a bile duct stent) shared the parent ICD9/5187, so a tool expanding codes by parent_codes
    merged them. Now each code system has its OMOP vocabulary (ICD9CM, ICD9Proc, ICD10CM, ICD10PCS)."""
    raw = tmp_path / "raw"
    synthesize(raw, n_patients=60, seed=2)
    first_as_icd9 = lambda df: df.with_columns(  # noqa: E731
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(v)).otherwise(pl.col(c)).alias(c)
        for c, v in (("icd_code", "5187"), ("icd_version", "9")))
    _rewrite(raw, "hosp/diagnoses_icd", first_as_icd9)
    _rewrite(raw, "hosp/procedures_icd", first_as_icd9)
    etl(raw, tmp_path / "meds")
    codes = _codes(tmp_path / "meds").filter(pl.col("parent_codes").is_not_null())
    parents = dict(zip(codes["code"].to_list(), codes["parent_codes"].list.first().to_list(), strict=True))
    assert parents["DIAGNOSIS//ICD//9//5187"] == "ICD9CM/5187"
    assert parents["PROCEDURE//ICD//9//5187"] == "ICD9Proc/5187"
    assert {p.split("/")[0] for p in parents.values()} == {"ICD9CM", "ICD9Proc", "ICD10CM", "ICD10PCS"}
    assert len(set(parents.values())) == len(parents)  # no two codes share a parent


def test_a_meds_dataset_or_token_dir_given_to_etl_says_what_it_is(tmp_path, capsys):
    """Before: `ehrfm etl MEDS_DIR` (a dataset already converted) or `ehrfm etl TOKEN_DIR` said only
    "required table hosp/patients.csv.gz (or .csv) not found", as for an empty folder, while tokenize
    names raw MIMIC-IV given in place of MEDS. Now the line says what the folder is and what to run."""
    meds = tmp_path / "meds"
    for split, sids in (("train", range(1, 9)), ("tuning", range(9, 11))):
        _lab_meds(meds / "data" / split / "0.parquet", sids)
    tokenize(meds, tmp_path / "tok", min_count=1)
    assert main(["etl", str(meds), "--out", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys).endswith(f"not found in {meds}; it is a MEDS dataset already (data/, metadata/): "
                                           f"tokenize it with `ehrfm tokenize {meds} --out TOKEN_DIR`")
    assert main(["etl", str(tmp_path / "tok"), "--out", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys).endswith("; it is a token dir (made by `ehrfm tokenize`), not raw MIMIC-IV")
    assert not (tmp_path / "out").exists()


def test_etl_run_in_process_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    """`ehrfm etl` sets arrow's and jemalloc's allocator variables for the libraries it loads. Run in-process
    (a notebook calling ehrfm.app.cli.main, the test suite) it left them in os.environ, so every process
    started later (a training run, a subprocess) got arrow's lean allocator. Now they are taken back,
    whether the run succeeds or fails, and a value the user set stays as the user set it."""
    from tokenization.cli import LEAN_ALLOCATOR_ENV

    raw = tmp_path / "raw"
    synthesize(raw, n_patients=60, seed=1)
    for k in LEAN_ALLOCATOR_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("JE_ARROW_MALLOC_CONF", "narenas:2")  # the user's own
    before = dict(os.environ)
    assert main(["etl", str(raw), "--out", str(tmp_path / "meds")]) == 0
    assert dict(os.environ) == before
    assert main(["etl", str(raw), "--out", str(tmp_path / "meds")]) == 2  # refused: --out exists
    assert dict(os.environ) == before
