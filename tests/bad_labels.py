"""Label files with one kind of fault each, for the heads' and baseline's bad-input tests."""

from __future__ import annotations

from pathlib import Path

import polars as pl


def with_ghost_subjects(labels: Path, out: Path, n: int, offset: int) -> Path:
    """A copy of `labels` plus its first n rows again for subjects that do not exist (id + offset)."""
    lab = pl.read_parquet(labels)
    pl.concat([lab, lab.head(n).with_columns(pl.col("subject_id") + offset)]).write_parquet(out)
    return out


def with_prediction_time(labels: Path, out: Path, n: int, when) -> Path:
    """A copy of `labels` whose first n rows predict at `when` (outside every subject's timeline)."""
    lab = pl.read_parquet(labels)
    first = pl.int_range(0, lab.height) < n
    lab.with_columns(pl.when(first).then(pl.lit(when)).otherwise(pl.col("prediction_time")).alias("prediction_time")).write_parquet(out)
    return out
