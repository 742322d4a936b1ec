"""MEDS written by other tools (MEDS-Extract / MIMIC_IV_MEDS, meds_etl, a pandas export) read as ours.

The MIMIC-IV demo's MEDS (this package's ETL) is rewritten the way other tools write MEDS: other
column types and widths, extra columns, other shard layouts, metadata absent. Each variation must
give the same tokens and labels as the original, or be refused in one line naming the file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrfm.app.cli import main
from ehrfm.clinical.audit import audit
from ehrfm.clinical.labels import make_labels, write_label_dir
from ehrfm.errors import UserError
from ehrfm.meds_io import open_meds
from tokenization.tokenize import tokenize


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ehrfm-output", ".ehrfm-files"))
    return dst


def _shards(root: Path) -> list[Path]:
    return sorted((root / "data").rglob("*.parquet"))


def _each_table(root: Path, change) -> None:
    for f in _shards(root):
        pq.write_table(change(pq.read_table(f)), f)


def _set(t: pa.Table, name: str, arr) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, arr)


def _recode(change):
    """A change of every shard's code column (a polars expression on `code`)."""
    return lambda t: pl.from_arrow(t).with_columns(change(pl.col("code")).alias("code")).to_arrow()


def _drop_codes(keep):
    return lambda t: pl.from_arrow(t).filter(keep(pl.col("code"))).to_arrow()


def _labels(meds: Path) -> dict[str, pl.DataFrame]:
    labels, _ = make_labels(meds, "all")
    return {t: df.sort("subject_id", "prediction_time") for t, df in labels.items()}


@pytest.fixture(scope="module")
def demo_labels(demo_meds) -> dict[str, pl.DataFrame]:
    return _labels(demo_meds)


# --- the codes a task needs -----------------------------------------------------------------------
CODE_VARIATIONS = {
    # A bare DEATH (older conventions) and an EXPIRED discharge: mortality would be all negative.
    "death_renamed": (_recode(lambda c: c.replace({"MEDS_DEATH": "DEATH", "HOSPITAL_DISCHARGE//DIED": "HOSPITAL_DISCHARGE//EXPIRED"})),
                      ["no MEDS_DEATH or HOSPITAL_DISCHARGE//DIED row among the 100 subjects", "DEATH (", "HOSPITAL_DISCHARGE//EXPIRED ("]),
    # A dataset without ICU tables: icu_admission would be all negative.
    "no_icu": (_drop_codes(lambda c: ~c.str.starts_with("ICU_")), ["no ICU_ADMISSION//* row among the 100 subjects"]),
    # meds_etl's visits: no stays at all.
    "meds_etl_visits": (_recode(lambda c: pl.when(c.str.starts_with("HOSPITAL_ADMISSION//")).then(pl.lit("Visit/IP"))
                                .when(c.str.starts_with("HOSPITAL_DISCHARGE//")).then(pl.lit("Visit_End/IP")).otherwise(c)),
                        ["no hospital stays among 100 subjects", "Visit/IP (", "Visit_End/IP ("]),
}


@pytest.mark.parametrize("name", sorted(CODE_VARIATIONS))
def test_a_task_whose_codes_the_data_lacks_is_said_naming_them(name, demo_meds, tmp_path, capsys):
    """Codes the labels stage does not recognise are one line naming the codes looked for and found, never silent zeros."""
    change, said = CODE_VARIATIONS[name]
    meds = _copy(demo_meds, tmp_path / "meds")
    _each_table(meds, change)
    if name == "meds_etl_visits":  # no stays: refused, nothing to write
        with pytest.raises(UserError) as e:
            make_labels(meds, "all")
        msg = str(e.value)
    else:  # all-negative labels of one task: written (a small dataset may truly hold no death), and said
        capsys.readouterr()
        _, info = make_labels(meds, "all")
        task = "in_hospital_mortality" if name == "death_renamed" else "icu_admission"
        assert info[task]["n_positive"] == 0 and "100 subjects" in info[task]["missing_outcome_codes"]
        assert all("missing_outcome_codes" not in i for t, i in info.items() if t != task)
        lines = [ln for ln in capsys.readouterr().err.splitlines() if "every label is negative" in ln]
        assert len(lines) == 1 and task in lines[0], lines
        msg = lines[0]
    for part in [*said, "HOSPITAL_ADMISSION//*"]:
        assert part in msg, msg
    assert "\n" not in msg


def test_audit_of_labels_made_from_codes_the_data_lacks_says_unknown(demo_meds, tmp_path):
    """ACES-style labels on data that writes DEATH: (a) looked only for MEDS_DEATH and said 0 (clean), unseen."""
    labels, info = make_labels(demo_meds, "all")
    write_label_dir(labels, info, tmp_path / "labels")
    meds = _copy(demo_meds, tmp_path / "meds")
    _each_table(meds, CODE_VARIATIONS["death_renamed"][0])
    res = audit(meds, tmp_path / "labels")
    assert len(res.unknown) == 1  # the demo has none: "clean" alone before
    said = [u for u in res.unknown if u.startswith("(a)")]
    assert len(said) == 1 and "in_hospital_mortality" in said[0] and "DEATH (" in said[0], said


def test_an_empty_shard_without_the_stay_id_column_changes_no_stay(demo_meds, tmp_path):
    """pandas writes an empty shard with only the columns it was given: the other shards' hadm_id still pairs stays."""
    meds = _copy(demo_meds, tmp_path / "meds")
    empty = {c: pa.array([], pa.null()) for c in ("subject_id", "time", "code")}  # an empty object column each
    pq.write_table(pa.table(empty), meds / "data" / "train" / "1.parquet")
    labels, info = make_labels(meds, "all")
    assert {i["stay_pairing"] for i in info.values()} == {"by hadm_id"}
    write_label_dir(labels, info, tmp_path / "labels")
    res = audit(meds, tmp_path / "labels")
    assert not [u for u in res.unknown if u.startswith("(d)")], res.unknown


def test_a_shard_with_rows_but_no_stay_id_column_is_named_by_audit_and_labels(demo_meds, tmp_path, capsys):
    """One export's shard without hadm_id: (d) said "the MEDS data has no stay id column", though two files have one."""
    labels, info = make_labels(demo_meds, "all")
    write_label_dir(labels, info, tmp_path / "labels")
    meds = _copy(demo_meds, tmp_path / "meds")
    bad = meds / "data" / "tuning" / "0.parquet"
    pq.write_table(pq.read_table(bad).drop(["hadm_id"]), bad)
    said = [u for u in audit(meds, tmp_path / "labels").unknown if u.startswith("(d)")]
    assert len(said) == 1 and "1 of the 3 shard files with rows lack the stay id column" in said[0] and str(bad) in said[0], said
    assert "their subjects' stays are not checked" in said[0], said
    capsys.readouterr()
    new, info = make_labels(meds, "long_los")
    # The other shards' subjects keep their pairing by id (since 2026-12-03; before, every subject was paired by time).
    assert info["stay_pairing"] == "by hadm_id (by time order for the subjects of 1 shard files without it)"
    old, _ = make_labels(demo_meds, "long_los")
    assert new.height == old.height
    err = [ln for ln in capsys.readouterr().err.splitlines() if "stay id column" in ln]
    assert len(err) == 1 and "1 of the shard files with rows lack the stay id column hadm_id" in err[0] and str(bad) in err[0], err
    assert "their subjects' stays are paired by time order" in err[0], err


def test_a_decimal256_numeric_value_is_refused_by_every_reader_in_one_line(demo_meds, tmp_path, capsys):
    """pyarrow's decimal256 (more than 38 digits): its schema reads in polars, its values do not (a traceback mid-tokenize)."""
    meds = _copy(demo_meds, tmp_path / "meds")
    bad = meds / "data" / "tuning" / "0.parquet"
    t = pq.read_table(bad)
    pq.write_table(_set(t, "numeric_value", t["numeric_value"].cast(pa.float64()).cast(pa.decimal256(40, 10))), bad)
    capsys.readouterr()
    for argv in (["tokenize", str(meds), "--out", str(tmp_path / "tok")],
                 ["labels", str(meds), "--task", "all", "--out", str(tmp_path / "lab")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and "column numeric_value is Decimal(precision=40" in err[0], err
    assert not (tmp_path / "tok").exists() and not (tmp_path / "lab").exists()


def test_a_splits_file_that_names_other_splits_or_absent_subjects_is_said(demo_meds, tmp_path, capsys):
    """Subjects listed under a non-MEDS split name, or with no rows, were passed over without a word."""
    meds = _copy(demo_meds, tmp_path / "meds")
    path = meds / "metadata" / "subject_splits.parquet"
    sp = pl.read_parquet(path)
    n_tuning = sp.filter(pl.col("split") == "tuning").height
    absent = pl.DataFrame({"subject_id": [1, 2], "split": ["held_out", "train"]}, schema=sp.schema)
    pl.concat([sp.with_columns(pl.col("split").replace({"tuning": "fold_1"})), absent]).write_parquet(path)
    capsys.readouterr()
    open_meds(meds)  # the folders hold the splits
    err = capsys.readouterr().err
    assert f"split name(s) fold_1 are not MEDS splits (train, tuning, held_out): its {n_tuning} subjects" in err, err
    assert "2 listed subjects have no rows in data/ (held_out 1, train 1)" in err, err
    # a subject of a train folder the file does not list: ehrfm trains on it, ACES and MEDS-Tab leave it out (was silent)
    one = sp.filter(pl.col("split") == "train")["subject_id"][0]
    sp.filter(pl.col("subject_id") != one).write_parquet(path)
    capsys.readouterr()
    open_meds(meds)
    assert f"{path} does not list 1 subjects of the data/<split>/ folders (train 1): ehrfm reads them" in capsys.readouterr().err
    sp.write_parquet(path)
    open_meds(meds)
    assert "does not list" not in capsys.readouterr().err
    _flat(meds)  # meds_etl's layout: the file holds the splits
    pl.concat([sp, absent]).write_parquet(path)
    open_meds(meds)
    assert "2 listed subjects have no rows in data/ (held_out 1, train 1)" in capsys.readouterr().err


# --- accepted variations: the same tokens and labels --------------------------------------------------
def _nested(root: Path) -> None:  # data/<split>/deep/er/shard_0.parquet
    for f in _shards(root):
        to = f.parent / "deep" / "er" / "shard_0.parquet"
        to.parent.mkdir(parents=True)
        f.rename(to)


def _many_small(root: Path) -> None:  # three subjects a file, as a sharded export writes
    for f in _shards(root):
        df = pl.read_parquet(f)
        f.unlink()
        ids = df["subject_id"].unique().sort().to_list()
        for i in range(0, len(ids), 3):
            df.filter(pl.col("subject_id").is_in(ids[i:i + 3])).write_parquet(f.parent / f"part-{i:04d}.parquet")


def _flat(root: Path) -> None:  # meds_etl: data/<n>.parquet, the splits in metadata/subject_splits.parquet
    for i, f in enumerate(_shards(root)):
        f.rename(root / "data" / f"{i}.parquet")
    for d in sorted((root / "data").iterdir()):
        if d.is_dir():
            d.rmdir()
    (root / "metadata" / "codes.parquet").unlink()


def _bare(root: Path) -> None:  # a hand-made export: no metadata at all
    shutil.rmtree(root / "metadata")


def _static_inside(t: pa.Table) -> pa.Table:  # null-time (static) rows after each subject's first timed row
    df = pl.from_arrow(t).with_columns(pl.int_range(pl.len()).over("subject_id").cast(pl.Float64).alias("_k"))
    return df.with_columns(pl.when(pl.col("time").is_null()).then(1.5).otherwise("_k").alias("_k")).sort(
        "subject_id", "_k").drop("_k").to_arrow()


def _pandas_like(t: pa.Table) -> pa.Table:  # ns times, categorical codes, NaN for no value, an index column
    t = _set(_set(t, "time", t["time"].cast(pa.timestamp("ns"))), "code", pc.dictionary_encode(t["code"]))
    t = _set(t, "numeric_value", pc.fill_null(t["numeric_value"], float("nan")))
    return t.append_column("__index_level_0__", pa.array(np.arange(len(t)))).drop(["text_value"])


ACCEPTED = {
    "time_ns_int32_ids": lambda t: _set(_set(t, "time", t["time"].cast(pa.timestamp("ns"))), "subject_id",
                                        t["subject_id"].cast(pa.int32())),
    "time_ms_uint32_ids": lambda t: _set(_set(t, "time", t["time"].cast(pa.timestamp("ms"))), "subject_id",
                                         t["subject_id"].cast(pa.uint32())),
    "time_zoned_new_york": lambda t: _set(t, "time", t["time"].cast(pa.timestamp("us", "UTC")).cast(
        pa.timestamp("us", "America/New_York"))),
    "code_large_string_value_float64": lambda t: _set(_set(t, "code", t["code"].cast(pa.large_string())), "numeric_value",
                                                      t["numeric_value"].cast(pa.float64())),
    "value_decimal_extra_columns": lambda t: _set(t, "numeric_value", t["numeric_value"].cast(pa.float64()).cast(
        pa.decimal128(38, 10))).append_column("unit_note", pa.array(["x"] * len(t))),
    "pandas_like": _pandas_like,
    "static_rows_inside_a_subject": _static_inside,
    "nested_arbitrary_names": _nested,
    "many_small_shards": _many_small,
    "flat_meds_etl_no_codes": _flat,
    "no_metadata": _bare,
}


@pytest.fixture(scope="module")
def demo_tok(demo_meds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("other_tools") / "tok"
    tokenize(demo_meds, out)
    return out


def _token_arrays(tok: Path) -> dict[str, np.ndarray]:
    out = {}
    for split in ("train", "tuning", "held_out"):
        for name in ("tokens", "times"):
            out[f"{split}/{name}"] = np.load(tok / split / f"{name}.npy")
        out[f"{split}/index"] = pl.read_parquet(tok / split / "index.parquet").sort("subject_id").to_numpy()
    return out


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_meds_written_by_other_tools_gives_the_same_tokens_and_labels(name, demo_meds, demo_tok, demo_labels, tmp_path):
    meds = _copy(demo_meds, tmp_path / "meds")
    change = ACCEPTED[name]
    if change.__name__.startswith("_") and change.__code__.co_varnames[:1] == ("root",):
        change(meds)
    else:
        _each_table(meds, change)
    tokenize(meds, tmp_path / "tok")
    want, got = _token_arrays(demo_tok), _token_arrays(tmp_path / "tok")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    labels = _labels(meds)
    for task, df in demo_labels.items():
        assert labels[task].equals(df), task
