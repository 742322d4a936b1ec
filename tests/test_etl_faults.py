"""ETL, tokenizer and synth faults of a break-it pass on raw MIMIC-IV-shaped input (real files, the real demo).

- A stray double quote in a text field (an unbalanced `"` in prescriptions.drug) made the CSV reader take
  the following lines as one quoted value with the right number of columns: three rows vanished, exit 0,
  and other patients' ids and times became part of one MEDICATION code in codes.parquet. Refused now,
  naming the file and column and how many values.
- icd_version was not checked: `ICD10`, `9.5`, `-9` made DIAGNOSIS//ICD//ICD10//4139-style codes, and rows
  without an icd_code merged into one event, counted as duplicates; both are dropped under their own reasons.
- emar_detail doses de-identified as `___` were dropped as no_dose_given while the summary said "kept as
  null": kept now as events without a value.
- `--out` inside another command's output (a MEDS dir's data/train) broke that output; a tokenizer.json
  inside a killed tokenize's temporary was applied; dataset.json named a PhysioNet download "3.1",
  version unknown; a --splits file with an empty split was told to change "split fractions".
- ehrfm synth wrote a lactate of 2e8 mmol/L and a negative pO2: labs are held to their reportable ranges.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from ehrfm.errors import UserError
from tokenization.etl import etl

ENV_QUIET = {"EHRFM_QUIET": "1"}


def _cli(*args):
    import os

    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **ENV_QUIET}, timeout=600)


def _lines(path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().split("\n")


def _minimal_raw(mimic_demo_dir, tmp_path):
    raw = tmp_path / "raw"
    (raw / "hosp").mkdir(parents=True)
    for t in ("patients", "admissions"):
        shutil.copy(mimic_demo_dir / "hosp" / f"{t}.csv.gz", raw / "hosp")
    return raw


def test_a_stray_double_quote_that_merges_rows_is_refused_naming_file_and_column(mimic_demo_dir, tmp_path):
    raw = _minimal_raw(mimic_demo_dir, tmp_path)
    lines = _lines(mimic_demo_dir / "hosp" / "prescriptions.csv.gz")
    k = lines[0].split(",").index("drug")
    for i, pre in ((10, '"'), (13, 'x"')):  # opened on line 10, closed on line 13: three records in one value
        f = lines[i].split(",")
        f[k] = pre + f[k]
        lines[i] = ",".join(f)
    (raw / "hosp" / "prescriptions.csv").write_text("\n".join(lines))
    with pytest.raises(UserError) as e:
        etl(raw, tmp_path / "meds")
    msg = str(e.value)
    assert msg.startswith(f"{raw / 'hosp' / 'prescriptions.csv'}: column 'drug' has 1 value holding a line break "
                          "followed by what starts a record"), msg
    assert "double quote left open" in msg and "10005817" not in msg and not (tmp_path / "meds").exists()
    # a quoted value that holds a line break of free text (no record after it) is still read, the break made a space
    lines = _lines(mimic_demo_dir / "hosp" / "prescriptions.csv.gz")
    f = lines[10].split(",")
    f[k] = f'"{f[k]}\nextended release"'
    lines[10] = ",".join(f)
    (raw / "hosp" / "prescriptions.csv").write_text("\n".join(lines))
    etl(raw, tmp_path / "meds_ok")
    account = json.loads((tmp_path / "meds_ok" / "metadata" / "etl_config.json").read_text())["tables"]["hosp/prescriptions"]
    assert account["line_breaks_set_to_space"] == {"drug": 1} and account["rows_read"] == len(lines) - 2, account


def test_icd_rows_without_a_version_9_or_10_or_a_code_are_dropped_under_their_own_reasons(mimic_demo_dir, tmp_path):
    raw = _minimal_raw(mimic_demo_dir, tmp_path)
    dx = pl.read_csv(mimic_demo_dir / "hosp" / "diagnoses_icd.csv.gz", infer_schema_length=0)
    i = pl.int_range(pl.len())
    dx.with_columns(
        icd_version=pl.when(i < 3).then(pl.lit("ICD10")).when(i < 6).then(pl.lit("9.5")).when(i < 9).then(pl.lit("-9"))
        .when(i < 12).then(None).when(i < 14).then(pl.lit("10.0")).otherwise(pl.col("icd_version")),
        icd_code=pl.when((i >= 14) & (i < 17)).then(None).otherwise(pl.col("icd_code")),
    ).write_csv(raw / "hosp" / "diagnoses_icd.csv")
    etl(raw, tmp_path / "meds")
    account = json.loads((tmp_path / "meds" / "metadata" / "etl_config.json").read_text())["tables"]["hosp/diagnoses_icd"]
    assert account["dropped"]["icd_version_not_9_or_10"] == 12 and account["dropped"]["no_icd_code"] == 3, account
    codes = pl.read_parquet(tmp_path / "meds" / "data" / "*" / "*.parquet")["code"]
    dx_codes = codes.filter(codes.str.starts_with("DIAGNOSIS//ICD//"))
    assert dx_codes.str.split("//").list.get(2).unique().sort().to_list() == ["10", "9"]  # "10.0" read as 10
    assert not dx_codes.str.ends_with("//UNK").any()


def test_emar_doses_de_identified_as_underscores_are_events_without_a_value(mimic_demo_dir, tmp_path):
    etl(mimic_demo_dir, tmp_path / "meds", tables="emar_detail")
    account = json.loads((tmp_path / "meds" / "metadata" / "etl_config.json").read_text())["tables"]["hosp/emar_detail"]
    raw = pl.read_csv(mimic_demo_dir / "hosp" / "emar_detail.csv.gz", infer_schema_length=0)
    lines = raw.filter(pl.col("parent_field_ordinal").is_not_null())
    redacted = lines.filter(pl.col("dose_given").str.strip_chars() == "___").height
    empty = lines.filter(pl.col("dose_given").is_null()).height
    assert redacted == 88 and account["redacted_numbers_set_null"] == {"dose_given": redacted}, account
    assert account["dropped"]["no_dose_given"] == empty, account  # only the lines without a dose
    events = pl.read_parquet(tmp_path / "meds" / "data" / "*" / "*.parquet").filter(pl.col("code").str.starts_with("EMAR_DOSE//"))
    assert events.height == account["events_written"] and events["numeric_value"].null_count() >= redacted - 1


def test_an_output_inside_another_commands_output_is_refused(mimic_demo_dir, tmp_path):
    meds = tmp_path / "m1"
    etl(mimic_demo_dir, meds, tables="diagnoses_icd")
    before = sorted(p.relative_to(meds) for p in meds.rglob("*"))
    p = _cli("etl", mimic_demo_dir, "--out", meds / "data" / "train" / "nested", "--tables", "diagnoses_icd")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
        f"ehrfm etl: error: output {meds / 'data' / 'train' / 'nested'} lies inside {meds.resolve()}, the output of "
        "`ehrfm etl`: writing there would change that data (its readers take what it holds); choose an --out outside it"
    ), p.stderr
    assert sorted(p.relative_to(meds) for p in meds.rglob("*")) == before
    p = _cli("labels", meds, "--task", "in_hospital_mortality", "--out", meds / "labels.parquet")
    assert p.returncode == 2 and "lies inside" in p.stderr, p.stderr
    tok = tmp_path / "tok"
    assert _cli("tokenize", meds, "--out", tok).returncode == 0
    for argv in (("train", tok, "--out", meds / "run", "--n-layer", "1", "--d-model", "16", "--n-head", "2", "--context", "32",
                  "--tokens", "2048"),
                 ("sweep", "plan", "--tokens", tok, "--budgets", "1e9", "--out", meds / "sweep")):
        p = _cli(*argv)
        assert p.returncode == 2 and f"lies inside {meds.resolve()}, the output of `ehrfm etl`" in p.stderr, p.stderr
    assert sorted(p.relative_to(meds) for p in meds.rglob("*")) == before
    # a labels dir may hold the user's own label files beside ours (`sweep collect --labels` reads them all)
    assert _cli("labels", meds, "--task", "all", "--out", tmp_path / "labels").returncode == 0
    p = _cli("labels", meds, "--task", "in_hospital_mortality", "--gap-hours", "48", "--out", tmp_path / "labels" / "mort48.parquet")
    assert p.returncode == 0, p.stderr


def test_diagnoses_of_the_ed_drg_and_hcpcs_rows_without_a_code_are_dropped_and_counted(mimic_demo_dir, tmp_path):
    raw = _minimal_raw(mimic_demo_dir, tmp_path)
    for table, col in (("drgcodes", "drg_code"), ("hcpcsevents", "hcpcs_cd")):
        df = pl.read_csv(mimic_demo_dir / "hosp" / f"{table}.csv.gz", infer_schema_length=0)
        df.with_columns(pl.when(pl.int_range(pl.len()) < 4).then(None).otherwise(pl.col(col)).alias(col)).write_csv(
            raw / "hosp" / f"{table}.csv")
    etl(raw, tmp_path / "meds")
    tables = json.loads((tmp_path / "meds" / "metadata" / "etl_config.json").read_text())["tables"]
    assert tables["hosp/drgcodes"]["dropped"]["no_drg_code"] == 4 and tables["hosp/hcpcsevents"]["dropped"]["no_hcpcs_code"] == 4
    codes = pl.read_parquet(tmp_path / "meds" / "data" / "*" / "*.parquet")["code"]
    assert not codes.filter(codes.str.starts_with("DRG//") | codes.str.starts_with("HCPCS//")).str.ends_with("//UNK").any()


def test_a_tokenizer_of_a_killed_tokenize_is_refused(synth_tokens, synth_meds, tmp_path):
    half = tmp_path / "tok.tmp-4242-0a7c9cdf-714d0601"  # what a killed tokenize leaves (ehrfm.io.temporary_sibling)
    half.mkdir()
    shutil.copy(synth_tokens / "tokenizer.json", half)
    p = _cli("tokenize", synth_meds, "--out", tmp_path / "tok2", "--tokenizer", half / "tokenizer.json")
    assert p.returncode == 2 and "is the unfinished output of an ehrfm command" in p.stderr, p.stderr
    assert not (tmp_path / "tok2").exists()


@pytest.mark.parametrize("layout, name, version", [
    ("physionet.org/files/mimiciv/3.1", "mimiciv", "3.1"),
    ("mimic-iv-demo-2.2", "mimic-iv-demo", "2.2"),
    ("my_extract", "my_extract", "unknown"),
])
def test_dataset_json_names_a_physionet_download_by_its_dataset_and_version(mimic_demo_dir, tmp_path, layout, name, version):
    raw = tmp_path / layout
    raw.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(_minimal_raw(mimic_demo_dir, tmp_path), raw)
    etl(raw, tmp_path / "meds")
    meta = json.loads((tmp_path / "meds" / "metadata" / "dataset.json").read_text())
    assert (meta["dataset_name"], meta["dataset_version"]) == (name, version)
    p = _cli("etl", raw, "--out", tmp_path / "named", "--dataset-name", "MIMIC-IV", "--dataset-version", "3.1-local")
    assert p.returncode == 0, p.stderr
    meta = json.loads((tmp_path / "named" / "metadata" / "dataset.json").read_text())
    assert (meta["dataset_name"], meta["dataset_version"]) == ("MIMIC-IV", "3.1-local")


def test_a_splits_file_with_an_empty_split_says_so_of_the_file(mimic_demo_dir, tmp_path):
    ids = pl.read_csv(mimic_demo_dir / "hosp" / "patients.csv.gz")["subject_id"]
    splits = tmp_path / "splits.parquet"
    pl.DataFrame({"subject_id": ids, "split": ["train"] * (len(ids) - 5) + ["held_out"] * 5}).write_parquet(splits)
    with pytest.raises(UserError, match=r"split 'tuning' is empty \(100 subjects, split file .*\): every split needs "
                                        r"subjects; list some of them under 'tuning' in that file"):
        etl(mimic_demo_dir, tmp_path / "meds", splits_file=str(splits), tables="diagnoses_icd")



def test_a_splits_file_of_an_earlier_release_says_how_to_split_the_new_subjects(mimic_demo_dir, tmp_path):
    """A splits file kept from an earlier release (40 fewer subjects) said only "40 subjects of the raw data have
    no split" (a helper): it now says how to go on, and that ehrfm's own split keeps a subject's split."""
    from tokenization.etl import assign_splits

    ids = pl.read_csv(mimic_demo_dir / "hosp" / "patients.csv.gz")["subject_id"].sort()
    splits = tmp_path / "splits.parquet"
    old = ids[:60]
    pl.DataFrame({"subject_id": old, "split": assign_splits(old.to_numpy())}).write_parquet(splits)
    with pytest.raises(UserError, match=r"40 of the raw data's 100 subjects have no split \(a newer release's subjects\?\): "
                                        r"add them to the file, or leave out --splits: the file is ehrfm's own split \(it hashes each subject_id"):
        etl(mimic_demo_dir, tmp_path / "meds", splits_file=str(splits), tables="diagnoses_icd")
    assert not (tmp_path / "meds").exists()
    # the promise: a subject split by ehrfm before keeps its split among more subjects
    np.testing.assert_array_equal(assign_splits(ids.to_numpy())[:60], assign_splits(old.to_numpy()))
    # a file of the user's own split (or another seed): the promise would not hold, so it is not made
    theirs = assign_splits(old.to_numpy(), seed=7)
    moved = int((theirs != assign_splits(old.to_numpy())).sum())
    pl.DataFrame({"subject_id": old, "split": theirs}).write_parquet(splits)
    with pytest.raises(UserError) as e:
        etl(mimic_demo_dir, tmp_path / "meds", splits_file=str(splits), tables="diagnoses_icd")
    assert moved > 0 and str(e.value).endswith(
        f"add them to the file (leaving out --splits would move {moved} of its 60 subjects to another split: it is not "
        "ehrfm's own split with these --split-seed and --split-fractions)"), str(e.value)
    # with the seed the file was made with, it is ehrfm's own split again
    with pytest.raises(UserError, match=r"--split-seed 7, --split-fractions 0.8,0.1,0.1\), so its subjects keep"):
        etl(mimic_demo_dir, tmp_path / "meds", splits_file=str(splits), tables="diagnoses_icd", split_seed=7)

def test_synthetic_labs_stay_in_their_reportable_ranges(tmp_path):
    from tokenization.synth import LAB_LIMITS, LABS, synthesize

    synthesize(tmp_path / "raw", n_patients=1500, seed=7)
    labs = pl.read_csv(tmp_path / "raw" / "hosp" / "labevents.csv.gz", infer_schema_length=0).with_columns(
        pl.col("valuenum").cast(pl.Float64), pl.col("itemid").cast(pl.Int64))
    limits = pl.DataFrame({"itemid": [lab[0] for lab in LABS], "lo": [LAB_LIMITS[lab[1]][0] for lab in LABS],
                           "hi": [LAB_LIMITS[lab[1]][1] for lab in LABS]})
    joined = labs.join(limits, on="itemid", how="left")
    assert joined["lo"].null_count() == 0 and joined.height > 10_000
    assert joined.filter((pl.col("valuenum") < pl.col("lo")) | (pl.col("valuenum") > pl.col("hi"))).height == 0
    # the limits cut the sickest tail only: every lab's deciles (the tokenizer's bins) lie strictly inside them, and
    # at most 3% of a lab's values are reported at a limit
    q = joined.group_by("itemid").agg(pl.col("valuenum").quantile(0.1).alias("q10"), pl.col("valuenum").quantile(0.9).alias("q90"),
                                      ((pl.col("valuenum") == pl.col("lo")) | (pl.col("valuenum") == pl.col("hi"))).mean().alias("at"),
                                      pl.col("lo").first(), pl.col("hi").first())
    assert q.filter((pl.col("q10") <= pl.col("lo")) | (pl.col("q90") >= pl.col("hi")) | (pl.col("at") > 0.03)).height == 0, q
    assert np.isfinite(joined["valuenum"].to_numpy()).all()
