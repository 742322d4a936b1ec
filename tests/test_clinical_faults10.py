"""A tenth clinical review: time zones polars cannot parse, the audit's memory on many labels, zero-shot windows.

Each test fails without its fix: a 'Z' or '+05:30' zone was a Rust panic (a backtrace through any
reader), the audit joined every label with all of its subject's rows at once (2M labels on the
MIMIC-IV demo's 100 subjects filled a 23 GB machine), and zero-shot took its label windows from
the path given, not the file it resolved.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.errors import UserError


def _rezone(table: pa.Table, column: str, zone: str) -> pa.Table:
    """The same instants, written with another zone name (as pandas writes a datetime.timezone offset)."""
    i = table.column_names.index(column)
    unit = table.schema.field(i).type.unit
    col = table.column(i).cast(pa.timestamp(unit, tz="UTC")).cast(pa.timestamp(unit, tz=zone))
    return table.set_column(i, column, col)


def test_label_times_zoned_z_or_a_fixed_offset_are_read_or_refused_by_name(demo_meds, tmp_path):
    from ehrfm.clinical.labels import make_labels, read_labels, write_labels

    labels, _ = make_labels(demo_meds, "long_los")
    write_labels(labels, tmp_path / "utc.parquet", {"task": "long_los"})
    table = pq.read_table(tmp_path / "utc.parquet")
    for name, zone in (("z", "Z"), ("plus", "+05:30"), ("minus", "-05:00")):
        pq.write_table(_rezone(table, "prediction_time", zone), tmp_path / f"{name}.parquet")
    utc = read_labels(tmp_path / "utc.parquet", data_zones=[])
    # 'Z' is UTC: the same labels; before, a polars panic ("unable to parse time zone: 'Z'")
    assert read_labels(tmp_path / "z.parquet", data_zones=[]).equals(utc)
    for name, zone in (("plus", "+05:30"), ("minus", "-05:00")):
        with pytest.raises(UserError, match=rf"{name}\.parquet: column prediction_time has time zone \{zone}"):
            read_labels(tmp_path / f"{name}.parquet", data_zones=[])  # naive data: hours of look-ahead, refused
        # beside zoned data both are UTC instants: the same instants as the UTC file
        assert read_labels(tmp_path / f"{name}.parquet", data_zones=["America/New_York"]).equals(utc)
    # the CLI: one line naming the file, no traceback
    from ehrfm.app.cli import main

    assert main(["baseline", str(demo_meds), "--labels", str(tmp_path / "z.parquet"), "--out", str(tmp_path / "b")]) == 0


def test_a_meds_shard_zoned_by_a_fixed_offset_is_refused_naming_file_and_column(demo_meds, tmp_path, capsys):
    import shutil

    from ehrfm.app.cli import main
    from ehrfm.meds_io import open_meds

    meds = tmp_path / "meds"
    shutil.copytree(demo_meds, meds)
    shard = sorted((meds / "data").rglob("*.parquet"))[0]
    pq.write_table(_rezone(pq.read_table(shard), "time", "+05:30"), shard)
    with pytest.raises(UserError, match=rf"{shard.name}: column time has time zone '\+05:30'"):
        open_meds(meds)
    assert main(["tokenize", str(meds), "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert "column time has time zone '+05:30'" in err and "Traceback" not in err and "panicked" not in err
    assert not (tmp_path / "tok").exists()


def test_a_results_table_with_a_timestamp_zoned_z_is_fitted(tmp_path):
    from analysis.synthetic import synthetic_results
    from analysis.table import load_results

    df = synthetic_results(seed=0)
    table = df.to_arrow()
    finished = pa.array(np.arange(len(df)) * 1_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC")).cast(
        pa.timestamp("us", tz="Z"))
    pq.write_table(table.append_column("finished_at", finished), tmp_path / "results.parquet")
    loaded = load_results(tmp_path / "results.parquet")  # a panic before
    assert len(loaded.loss) == len(df) and loaded.loss.tolist() == df["loss"].to_list()


def test_the_audit_counts_the_same_a_chunk_of_labels_at_a_time(demo_meds, tmp_path, monkeypatch):
    from ehrfm.clinical import audit as audit_mod
    from ehrfm.clinical.labels import make_labels, write_labels

    (tmp_path / "leaky").mkdir()
    for task, shift in (("long_los", timedelta(days=30)), ("icu_admission", timedelta(hours=72)),
                        ("in_hospital_mortality", timedelta(days=40))):
        labels, _ = make_labels(demo_meds, task)
        write_labels(labels.with_columns(pl.col("prediction_time") + shift), tmp_path / "leaky" / f"{task}.parquet",
                     {"task": task})
    whole = audit_mod.audit(demo_meds, tmp_path / "leaky")
    assert all(t.outcome_code_in_history and t.outcome_code_in_history > 10 for t in whole.tasks.values())
    seen = []
    chunks = audit_mod._label_chunks

    def small_chunks(lab, ev, join_rows=None):
        for part, rows in chunks(lab, ev, 300):
            per_label = part.join(rows.group_by("subject_id").len(), on="subject_id")["len"]
            seen.append((per_label.sum(), per_label.max()))
            yield part, rows

    monkeypatch.setattr(audit_mod, "_label_chunks", small_chunks)
    chunked = audit_mod.audit(demo_meds, tmp_path / "leaky")
    # many chunks, each at most ~300 label x row pairs beside its largest label (a subject of more rows)
    assert len(seen) > 30 and all(pairs - largest < 300 for pairs, largest in seen)
    assert {k: vars(t) for k, t in chunked.tasks.items()} == {k: vars(t) for k, t in whole.tasks.items()}


def test_zeroshot_takes_the_windows_of_the_file_a_label_dir_resolves_to_and_says_when_they_are_defaults(tmp_path, capsys):
    """Before: `--labels DIR` (a dir holding one label file, as head_labels accepts) read the sidecar
    DIR.json, which is not there: a long stay of 25 h was rolled out as one of 7 days, silently; and a
    label file of another tool (no sidecar) took the default windows without a word."""
    from test_clinical_faults8 import _uniform_run, _with_interval_token
    from test_heads import make_cohort

    from ehrfm.clinical import zeroshot as zs

    tok, labels = make_cohort(tmp_path)
    _with_interval_token(tok)
    run = _uniform_run(tmp_path, tok)
    (tmp_path / "dir").mkdir()
    pl.read_parquet(labels).write_parquet(tmp_path / "dir" / "long_los.parquet")
    (tmp_path / "dir" / "long_los.json").write_text(
        '{"task": "long_los", "config": {"gap_hours": 24.0, "long_los_days": 1.0416666666666667}}')
    cfg = zs.ZeroShotConfig(str(run), str(tok), str(tmp_path / "dir"), n_samples=4, max_new_tokens=16, bootstrap=0)
    m = zs.zeroshot(cfg, tmp_path / "zs")
    assert m["time_bound"]["long_los_days"] == 25 / 24 and m["time_bound"]["source"].endswith("long_los.json")
    assert "sidecar" not in capsys.readouterr().err
    # another tool's file (ACES names it by its config): the default windows, said once for the file
    pl.read_parquet(labels).write_parquet(tmp_path / "los_3d.parquet")
    cfg = zs.ZeroShotConfig(str(run), str(tok), str(tmp_path / "los_3d.parquet"), task="long_los", n_samples=4,
                            max_new_tokens=16, bootstrap=0)
    m = zs.zeroshot(cfg, tmp_path / "zs2")
    zs.zeroshot(cfg, tmp_path / "zs3")
    err = capsys.readouterr().err
    assert m["time_bound"]["long_los_days"] == 7 and err.count("no `ehrfm labels` sidecar beside") == 1
    assert "a stay over 7 days, predicted 24 h after admission" in err


@pytest.mark.parametrize("layout", ["spark", "pyarrow", "hive"])
def test_a_parquet_dataset_of_one_task_is_read_as_that_task(demo_meds, tmp_path, layout, capsys):
    """Before: a Spark/pyarrow dataset (part-00000-*.parquet, part-0.parquet) or hive partitions
    (split=train/) of one task were refused by the heads, whose advice (pass one part) scored half the
    labels under the task "part-00000"; the audit took each part for a task, NOT CHECKED."""
    from ehrfm.clinical.audit import audit
    from ehrfm.clinical.labels import head_labels, make_labels, read_labels

    labels, _ = make_labels(demo_meds, "long_los")
    half = labels.height // 2
    task = tmp_path / "labels" / "long_los"
    names = {"spark": ("part-00000-7f3a-c000.snappy.parquet", "part-00001-7f3a-c000.snappy.parquet"),
             "pyarrow": ("part-0.parquet", "part-1.parquet"),
             "hive": ("split=train/0.parquet", "split=held_out/0.parquet")}[layout]
    for name, part in zip(names, (labels[:half], labels[half:]), strict=True):
        (task / name).parent.mkdir(parents=True, exist_ok=True)
        part.write_parquet(task / name)
    (task / "_SUCCESS").write_text("")
    assert head_labels(task) == (task, "long_los")
    capsys.readouterr()
    assert read_labels(task).height == labels.height
    # its own split (hive's split= folders) is not the one used, and that is said once (it was silent)
    said = [line for line in capsys.readouterr().err.splitlines() if "carries its own split" in line]
    assert len(said) == (layout == "hive") and (layout != "hive" or "ignored; labels are split by the patient splits" in said[0])
    read_labels(task)
    assert "carries its own split" not in capsys.readouterr().err
    one = tmp_path / "own_split" / "long_los.parquet"  # a `split` column, as some ACES pipelines add
    one.parent.mkdir()
    labels.with_columns(split=pl.lit("held_out")).write_parquet(one)
    assert read_labels(one).equals(read_labels(task).sort("subject_id", "prediction_time"))
    assert f"label file {one} carries its own split" in capsys.readouterr().err
    res = audit(demo_meds, tmp_path / "labels")
    assert list(res.tasks) == ["long_los"] and res.tasks["long_los"].n_labels == labels.height and res.clean


def test_labels_say_when_no_shard_has_the_stay_id_column(demo_meds, tmp_path, capsys):
    """Before: a MEDS dataset from another ETL without `hadm_id` in any shard was labelled with stays
    paired by time and later_stay_in_history unchecked, said only in labels.json (on the MIMIC-IV demo
    one more readmission label, its history holding the next stay's orders); a shard lacking it among
    shards with it was warned about. Now both are said on stderr."""
    import shutil

    from ehrfm.clinical.labels import make_labels

    meds = tmp_path / "meds"
    shutil.copytree(demo_meds, meds)
    for path in (meds / "data").rglob("*.parquet"):
        pq.write_table(pq.read_table(path).drop_columns(["hadm_id"]), path)
    capsys.readouterr()
    with_ids, _ = make_labels(demo_meds, "readmission_30d")
    assert "stay id column" not in capsys.readouterr().err
    without, info = make_labels(meds, "readmission_30d")
    said = [line for line in capsys.readouterr().err.splitlines() if "stay id column" in line]
    assert len(said) == 1 and f"no shard of {meds} has the stay id column hadm_id: stays are paired by time order" in said[0]
    assert "later_stay_in_history is not checked" in said[0]
    assert info["excluded"].get("later_stay_in_history", 0) == 0 and without.height > with_ids.height
