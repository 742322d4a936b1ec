"""The one reader of MEDS dataset dirs, shared by every stage that reads MEDS data.

tokenize, labels, baseline and audit all open a MEDS dir through `open_meds` and read its
shards through `read_shard` / `scan_shards`, so every reader refuses the same bad input with the
same one-line error and applies the same rules:

- Layout: `data/<split>/**/*.parquet` (this package's ETL, MEDS_transforms) or
  `data/**/*.parquet` in folders that are not split names, with `metadata/subject_splits.parquet`
  (meds_etl). Split names are the
  `meds` package's constants (train, tuning, held_out). Known aliases some tools write (`val`,
  `valid`, `validation`, `dev` -> tuning; `test`, `heldout`, `held-out`, `holdout` -> held_out)
  and any of these names in other letter case (`Train`, `TEST`) are mapped, and the mapping is
  reported on stderr; any other folder under `data/` is refused, naming it, so that no split is
  silently left out. Split folders that disagree with a `metadata/subject_splits.parquet` beside
  them (which other MEDS tools read) are refused with counts; subjects that file lists under a name that is
  no split (`fold_1`), or that have no rows in the data, are counted on stderr. Links to folders are followed, and a
  folder named `*.parquet` (a Spark or Dask dataset) is read as the part files it holds. Hidden files and folders (a name starting
  with `.`: macOS's `._0.parquet` resource forks, `.ipynb_checkpoints/`) are not data, as for
  pyarrow datasets and Spark: they are left out, and their count said on stderr when any of them
  is named `*.parquet`.
- Columns: `subject_id`, `time`, `code` (MEDS 0.4, `meds.DataSchema`). A shard written before MEDS
  0.3.2 (`patient_id`) is refused naming the file, the missing column and the MEDS version
  expected.
- Types: subject_id an integer, time a timestamp (any unit; a time zone is read as the UTC
  instant, with one warning per zone: labels made elsewhere on the data's local clock would sit
  hours off their histories -- a New York shard's labels all failed the leakage audit), code text, numeric_value a number (read as the float32 MEDS stores, whatever its
  width; a decimal of over 38 digits, pyarrow's decimal256, is refused: polars cannot read it), or a column of nulls (as pandas writes an empty shard); anything else (text ids, epoch
  numbers, dates) is refused naming the file and column (`COLUMN_TYPES`), never cast by
  guessing. Rows with a null
  subject_id or code, subjects with rows in more than one split folder, and subjects with rows in
  more than one file (MEDS's subject contiguity) are refused by `open_meds` with counts.
  An optional column (the stay id hadm_id) counts as present when every shard holding rows has it
  (`MedsDataset.has_column`): an empty shard need not carry it.
- Static rows: a row with a null time is in every history, so only truly static codes may have
  one. A code is not static when it is `MEDS_BIRTH` or `MEDS_DEATH`, when it starts with a known
  event prefix (admission, discharge, lab, ...), or when the same code also occurs with a time.
  Such null-time rows are dropped by every reader with one warning on stderr naming each code
  and its count (`MedsDataset.null_time_codes`), never turned into static tokens or features.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import meds
import polars as pl

from ehrfm.errors import UserError
from ehrfm.io import check_parquet_files, refuse_repeated_columns, warn_once

SUBJECT_ID = meds.DataSchema.subject_id_name
TIME = meds.DataSchema.time_name
CODE = meds.DataSchema.code_name
NUMERIC_VALUE = meds.DataSchema.numeric_value_name
# The stay id extra column some ETLs keep (MIMIC's hadm_id: this package's ETL, MEDS_transforms).
# Read as text whatever its type in a shard (int64, a float64 from pandas, a string id): ids are only
# compared, and shards that differ in its type read alike.
STAY_ID = "hadm_id"
REQUIRED_COLUMNS = (SUBJECT_ID, TIME, CODE)
SPLITS = (meds.train_split, meds.tuning_split, meds.held_out_split)
DATA_DIR = meds.data_subdirectory
SUBJECT_SPLITS_FILE = meds.subject_splits_filepath
DATASET_METADATA_FILE = meds.dataset_metadata_filepath
# The MEDS schema version these readers expect (major.minor of the installed `meds` package).
MEDS_VERSION = ".".join(meds.__version__.split(".")[:2])

SPLIT_ALIASES = {
    "val": meds.tuning_split, "valid": meds.tuning_split, "validation": meds.tuning_split,
    "dev": meds.tuning_split, "tune": meds.tuning_split,
    "test": meds.held_out_split, "heldout": meds.held_out_split, "held-out": meds.held_out_split,
    "holdout": meds.held_out_split,
}
# Column names of older MEDS versions -> the 0.4 name that replaced them.
LEGACY_COLUMNS = {"patient_id": SUBJECT_ID, "timestamp": TIME}
# How an error names an old column's version: patient_id became subject_id in MEDS 0.3.2, not 0.4 (MEDS
# 0.3.3 data of MIMIC_IV_MEDS or meds_etl already has subject_id).
LEGACY_SINCE = {"patient_id": "the name used before MEDS 0.3.2", "timestamp": "a name of older MEDS versions"}
NEVER_STATIC_CODES = (meds.birth_code, meds.death_code)
INT64_MAX = (1 << 63) - 1
WARN_CODES = 10  # codes named in a warning line, the most frequent first (the rest counted)
# Prefixes of codes that are events by nature (MIMIC_IV_MEDS style, as written by this ETL).
EVENT_PREFIXES = (
    "HOSPITAL_ADMISSION//", "HOSPITAL_DISCHARGE//", "ICU_ADMISSION//", "ICU_DISCHARGE//", "TRANSFER_TO//",
    "ED_", "LAB//", "MEDICATION//", "DIAGNOSIS//", "PROCEDURE//", "DRG//", "VITAL//", "INFUSION//",
    "OUTPUT//", "OMR//",
)


def _say(line: str, where: Path) -> None:
    """Warn a fact about a dataset once per process while `where` (a file, or a dir's files) is unchanged.

    Labels, audit and the demo open one dataset several times, and each open repeated every line (the same
    null-time warning 3 times per `ehrfm labels`); a dataset changed since (rewritten shards or splits file)
    is warned of again, even where the line reads the same.
    """
    warn_once("meds dataset", f"{_stamp(Path(where))}|{line}", line)


def _stamp(where: Path) -> str:
    """Size and mtime of a file, or of every file under a dir (names included): changes when the data does."""
    try:
        files = [where] if where.is_file() else sorted(p for p in where.rglob("*") if p.is_file())
        return ";".join(f"{p}:{(st := p.stat()).st_size}:{st.st_mtime_ns}" for p in files)
    except OSError:
        return str(time.monotonic_ns())  # unreadable: never taken for an unchanged dataset


def split_name(name: str) -> str | None:
    """The MEDS split a folder or split name stands for (a split, a known alias, in any letter case), else None."""
    n = name.lower()
    return n if n in SPLITS else SPLIT_ALIASES.get(n)


def _all_parquet_files(folder: Path) -> list[Path]:
    """Every file named *.parquet under `folder`, following links to folders (each real folder once).

    Path.rglob does not enter a linked folder (Python < 3.13), so shards kept elsewhere and linked
    in (`data/train/part2 -> /scratch/...`) were silently left out of their split.
    """
    found, seen = [], set()
    for top, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link back to a folder already walked (a loop, or the same shards twice)
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(top) / f for f in files if f.lower().endswith(".parquet")]  # 1.PARQUET was skipped, silently
    return found


# Files under data/ that look like shards in a form MEDS does not use (a dataset's shards are *.parquet)
OTHER_DATA_SUFFIXES = (".pq", ".parquet.zst", ".parquet.gz", ".parquet.snappy", ".csv", ".csv.gz", ".tsv", ".feather",
                       ".arrow", ".ipc", ".jsonl", ".avro", ".orc")


def _other_data_files(data: Path) -> list[Path]:
    """Files under `data` (not hidden) whose names say data but not *.parquet: never read, so said.

    Walked as _all_parquet_files walks (links followed, each real folder once: two links back up made the
    walk grow without end).
    """
    found, seen = [], set()
    for top, dirs, files in os.walk(data, followlinks=True):
        real = os.path.realpath(top)
        if real in seen or any(part.startswith(".") for part in Path(top).relative_to(data).parts):
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(top) / f for f in files if not f.startswith(".") and f.lower().endswith(OTHER_DATA_SUFFIXES)]
    return sorted(found)


def _parquet_files(folder: Path, data: Path) -> list[Path]:
    """The parquet files under `folder`, sorted, without hidden ones (a `.` name anywhere below `data`)."""
    return sorted(p for p in _all_parquet_files(folder)
                  if not any(part.startswith(".") for part in p.relative_to(data).parts))


def _what_it_is(root: Path) -> str:
    """A hint for a directory passed where a MEDS dataset belongs: what it looks like, what to do."""
    if any((root / m).is_dir() for m in ("hosp", "HOSP", "icu", "core")):
        return f"; it looks like raw MIMIC-IV: make MEDS first with `ehrfm etl {root} --out MEDS_DIR`"
    if (root / "tokenizer.json").is_file():
        return "; it is a token dir: pass the MEDS dataset it was tokenized from (`meds_dir` in its config.json)"
    if (root / "sweep.json").is_file() or (root / "result.json").is_file() or (root / "checkpoint").is_dir():
        return "; it is a sweep or run dir: pass the MEDS dataset (the --out of `ehrfm etl`)"
    return ""


@dataclass(frozen=True)
class Shard:
    """One parquet file of a split; `subjects` filters a flat shard to the split's subjects."""

    path: Path
    split: str
    subjects: pl.Series | None = None
    drop_null_time: tuple[str, ...] = ()  # non-static codes whose null-time rows are dropped


@dataclass
class MedsDataset:
    """An opened, checked MEDS dataset dir.

    Attributes:
        root: the dataset dir.
        shards: split -> its shards (only splits that have data).
        aliases: folder name -> split it was read as (empty when the names are the standard ones).
        null_time_codes: code -> number of rows with a null time whose code is not static; every
            reader drops these rows.
        metadata: `metadata/dataset.json` as a dict ({} when absent or unreadable).
        time_column_zones: the time column's zone of each shard (None: naive), read by open_meds
            with the columns.
    """

    root: Path
    shards: dict[str, list[Shard]]
    aliases: dict[str, str] = field(default_factory=dict)
    null_time_codes: dict[str, int] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    time_column_zones: set = field(default_factory=set)

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def paths(self) -> list[Path]:
        """Every distinct shard file, sorted (a flat shard is listed once, not once per split)."""
        return sorted({s.path for shards in self.shards.values() for s in shards})

    def time_zones(self) -> list[str]:
        """The time zones of the shards' time column other than UTC, sorted; [] when every time is naive (or UTC).

        Zoned shards are read as UTC instants (scan_shard); a label file's zone is only meaningful
        beside data that had one (ehrfm.clinical.labels.read_labels' `data_zones`).
        """
        return sorted(z for z in self.time_column_zones if z and not is_utc(z))

    def has_column(self, column: str) -> bool:
        """Does every shard file holding rows have `column` (an optional one: hadm_id, numeric_value)?

        A file of no rows is left out: pandas writes an empty shard with only the columns it was
        given (often subject_id, time, code), and one such file made labels pair every stay by
        time and the audit call overlapping stays unknown for the whole dataset.
        """
        return not self.files_without(column)

    def files_without(self, column: str) -> list[Path]:
        """The shard files holding rows that lack `column` (see `has_column`): absent, or null in every row.

        A column of parquet's null type (what polars and pandas write for a column of no values), or
        one whose footer statistics count every row null, carries nothing: such a shard's stays were
        paired by time without a word in the audit's unknowns.
        """
        return [p for p in self.paths_with_rows() if not _carries(p, column)]

    def paths_with_rows(self) -> list[Path]:
        """`paths()` less the files of no rows (their footer's count)."""
        import pyarrow.parquet as pq

        return [p for p in self.paths() if pq.ParquetFile(p).metadata.num_rows]

    def subject_splits(self) -> pl.DataFrame:
        """subject_id (Int64) -> split (String), one row per subject."""
        frames = []
        for split, shards in self.shards.items():
            for s in shards:
                ids = s.subjects.cast(pl.Int64).to_frame(SUBJECT_ID) if s.subjects is not None else (
                    pl.scan_parquet(s.path).select(pl.col(SUBJECT_ID).cast(pl.Int64)).unique().collect())
                frames.append(ids.with_columns(pl.lit(split).alias("split")))
        if not frames:
            return pl.DataFrame(schema={SUBJECT_ID: pl.Int64, "split": pl.String})
        return pl.concat(frames).unique(SUBJECT_ID, keep="first", maintain_order=True)


def _carries(path: Path, column: str) -> bool:
    """Does the parquet file hold `column` with a value in at least one row (by its footer, not its data)?"""
    import pyarrow.parquet as pq

    schema = pl.read_parquet_schema(path)
    if column not in schema or schema[column] == pl.Null:
        return False
    meta = pq.ParquetFile(path).metadata
    # The top-level column itself: a struct's field of the same name is another leaf (path "x.hadm_id").
    i = next((j for j in range(meta.num_columns) if meta.schema.column(j).path == column), None)
    if i is None:
        return True
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(i).statistics
        if stats is None or not stats.has_null_count or stats.null_count < meta.row_group(g).num_rows:
            return True  # a value here, or no statistics to say otherwise
    return False


def open_meds(meds_dir: str | os.PathLike, check_static: bool = True) -> MedsDataset:
    """Open a MEDS dataset dir: find its split shards and check their columns.

    Args:
        meds_dir: the dataset dir (holding `data/` and usually `metadata/`).
        check_static: scan every shard once for null-time rows of non-static codes, warn about
            them and record them in `null_time_codes` (the readers then drop them).

    Returns:
        A MedsDataset.

    Raises:
        UserError: not a MEDS dir, no shards, unknown split folders, shards beside split folders,
            a flat layout without subject_splits.parquet, or a shard lacking a MEDS 0.4 column.
    """
    from ehrfm.io import check_not_temporary

    check_not_temporary(meds_dir, "MEDS dataset")
    root = Path(meds_dir)
    if not root.is_dir():
        raise UserError(f"MEDS dataset {root} " + ("is a file, not a directory" if root.is_file() else "not found"))
    data = root / DATA_DIR
    if not data.is_dir():
        raise UserError(f"{root} is not a MEDS dataset: no {DATA_DIR}/ directory{_what_it_is(root)}")
    visible = _parquet_files(data, data)
    hidden = len(_all_parquet_files(data)) - len(visible)
    if hidden:
        _say(f"{data}: left out {hidden} hidden file(s) named *.parquet (a name starting with '.', e.g. macOS's ._* "
             "copies or .ipynb_checkpoints/): not data", data)
    if other := _other_data_files(data):  # a shard written .pq or as CSV was left out of its split without a word
        _say(f"{data}: left out {len(other)} file(s) not named *.parquet (e.g. {other[0].relative_to(data)}): MEDS shards "
             "are parquet files named *.parquet; rename or convert them to be read", data)
    # A truncated shard would otherwise surface mid-scan as an error naming no file. Metadata files
    # as data files: hidden ones (macOS's ._codes.parquet) left out, a folder of parts (Spark) read.
    metadata = root / "metadata"
    check_parquet_files([*visible, *_parquet_files(metadata, metadata)], "MEDS file",
                        hint="re-create it with the tool that wrote the MEDS dataset (`ehrfm etl --overwrite` for ehrfm's ETL)")
    folders = sorted(p.name for p in data.iterdir()
                     if p.is_dir() and not p.name.startswith(".") and _parquet_files(p, data))
    split_named = [f for f in folders if split_name(f)]
    if folders and not split_named and (root / SUBJECT_SPLITS_FILE).exists():
        folders = []  # shard folders that are not splits (meds_etl): the splits come from metadata
    shards, aliases = _split_folder_shards(data, folders) if folders else _subject_split_shards(root, data)
    ds = MedsDataset(root, {s: shards[s] for s in SPLITS if s in shards}, aliases, metadata=dataset_metadata(root))
    ds.time_column_zones = {getattr(check_columns(path, ds.metadata).get(TIME), "time_zone", None) for path in ds.paths()}
    _check_rows(ds)
    if folders:
        _check_folders_match_splits_file(ds)
    if check_static:
        ds.null_time_codes = null_time_codes(ds.paths())
        drop = tuple(sorted(ds.null_time_codes))
        ds.shards = {k: [dataclasses.replace(s, drop_null_time=drop) for s in v] for k, v in ds.shards.items()}
        if ds.null_time_codes:
            top = sorted(ds.null_time_codes.items(), key=lambda cn: (-cn[1], cn[0]))
            parts = ", ".join(f"{c} ({n} rows)" for c, n in top[:WARN_CODES])
            if len(top) > WARN_CODES:  # one readable line, not every code of another ETL's dataset
                rest = top[WARN_CODES:]
                parts += f" and {len(rest)} more codes ({sum(n for _, n in rest)} rows)"
            _say(f"{root}: dropped rows with a null time whose code is not static: {parts}; "
                 "only static codes (e.g. GENDER//F) may lack a time", root)
    return ds


def _check_rows(ds: MedsDataset) -> None:
    """Refuse shards with null subject_id or code rows, and subjects in more than one split.

    One pass over the subject_id and code columns (never their values in a message: counts only).
    Every reader opens its dataset through open_meds, so labels, audit, baseline and tokenize refuse
    the same rows (a null-id row would otherwise be dropped silently by some readers and refused by
    others; a subject in two splits puts held-out data in training).
    """
    for path in ds.paths():
        stats = _row_group_stats(path)  # the footer, read once for both checks
        nulls = _null_counts(path, (SUBJECT_ID, CODE), stats)
        for col, n in zip((SUBJECT_ID, CODE), nulls, strict=True):
            if n:
                raise UserError(f"MEDS shard {path}: {n} rows with a null {col}; every MEDS row needs a {SUBJECT_ID} and a {CODE}")
        if pl.read_parquet_schema(path)[SUBJECT_ID] == pl.UInt64:  # any integer width is read as int64
            n = pl.scan_parquet(path).select((pl.col(SUBJECT_ID) > INT64_MAX).sum()).collect().item()
            if n:
                raise UserError(f"MEDS shard {path}: {n} rows whose {SUBJECT_ID} (uint64) is above int64's range; MEDS "
                                f"{MEDS_VERSION}'s {SUBJECT_ID} is int64: map those ids in the ETL")
        blank = _blank_code_count(path, stats)
        if blank:
            raise UserError(f"MEDS shard {path}: {blank} rows whose {CODE} is empty or only spaces; a code names what happened "
                            "(drop or recode those rows)")
    files = ds.paths()
    if len(files) < 2:
        return
    # One pass over the subject_id column of every file: (subject, file) pairs.
    pairs = pl.concat([pl.scan_parquet(p).select(pl.col(SUBJECT_ID).cast(pl.Int64)).unique()
                       .with_columns(pl.lit(i, pl.Int64).alias("_file")) for i, p in enumerate(files)]).collect()
    if not any(s.subjects is not None for shards in ds.shards.values() for s in shards):  # split folders
        at = {f: i for i, f in enumerate(files)}
        split_of = pl.DataFrame({"_file": [at[s.path] for shards in ds.shards.values() for s in shards],
                                 "split": [split for split, shards in ds.shards.items() for _ in shards]},
                                schema={"_file": pl.Int64, "split": pl.String})
        ids = pairs.join(split_of, on="_file").select(SUBJECT_ID, "split").unique()
        several = ids.group_by(SUBJECT_ID).agg(pl.col("split").sort()).filter(pl.col("split").list.len() > 1)
        if several.height:
            by = several.group_by(pl.col("split").list.join(" and ")).len().sort("split")
            where = ", ".join(f"{n} in {sp}" for sp, n in by.iter_rows())
            raise UserError(f"MEDS dataset {ds.root}: {several.height} subjects have rows in more than one split ({where}); "
                            "each subject must live in exactly one split, or held-out data leaks into training")
    # MEDS's subject contiguity: a subject's rows are all in one file. A reader that reads a file at
    # a time (tokenize) would make two timelines of a subject split over files (e.g. a file of only
    # its static rows), so every reader refuses it.
    spread = pairs.group_by(SUBJECT_ID).agg(pl.col("_file").min().alias("a"), pl.col("_file").max().alias("b"),
                                            pl.len().alias("n")).filter(pl.col("n") > 1)
    if spread.height:
        a, b, n = spread.group_by("a", "b").len().sort("len", "a", "b", descending=[True, False, False]).row(0)
        raise UserError(f"MEDS dataset {ds.root}: {spread.height} subjects have rows in more than one shard file "
                        f"({n} of them in {files[a]} and {files[b]}); MEDS keeps each subject's rows in one file "
                        "(subject contiguity): merge those shards by subject")


def _check_folders_match_splits_file(ds: MedsDataset) -> None:
    """Refuse split folders that disagree with metadata/subject_splits.parquet, with counts.

    ehrfm takes the splits from the data/<split>/ folders, but other MEDS tools (ACES, MEDS-Tab,
    meds-evaluation's users) take them from the splits file: a file re-written after the shards (a
    new held-out set) silently gave ehrfm another held-out set than theirs, or trained on theirs. A
    file ehrfm cannot read as (subject_id, split) is not compared (it is not used).
    """
    path = ds.root / SUBJECT_SPLITS_FILE
    if not path.exists():
        return
    try:  # a file, or a folder of part files (Spark, Dask)
        listed = pl.read_parquet(_parquet_files(path, path) if path.is_dir() else path, columns=[SUBJECT_ID, "split"])
    except Exception:  # noqa: BLE001 (unreadable or other columns: not compared, as it is not used)
        return
    if not (listed.schema[SUBJECT_ID].is_integer() and listed.schema["split"] in (pl.String, pl.Categorical)):
        return
    listed = listed.select(pl.col(SUBJECT_ID).cast(pl.Int64, strict=False), pl.col("split").cast(pl.String)).drop_nulls().unique()
    present = ds.subject_splits()  # one scan of the shards' ids, for the three comparisons below
    unlisted = present.join(listed.select(SUBJECT_ID), on=SUBJECT_ID, how="anti")
    if unlisted.height:  # read by ehrfm from their folders, left out by the tools that read the file: said, with counts
        by = ", ".join(f"{sp} {n}" for sp, n in unlisted.group_by("split").len().sort("split").iter_rows())
        _say(f"{path} does not list {unlisted.height} subjects of the {DATA_DIR}/<split>/ folders ({by}): ehrfm reads them "
             "from their folders, while MEDS tools that read the file (ACES, MEDS-Tab) leave them out", path)
    names = {n: split_name(n) for n in listed["split"].unique()}  # aliases (test, val) as for folder names
    other = sorted(n for n, s in names.items() if s is None)
    if other:  # e.g. fold_0: not compared, so say so (other tools reading the file see another split)
        n = listed.filter(pl.col("split").is_in(other))[SUBJECT_ID].n_unique()
        _say(f"{path}: split name(s) {', '.join(other)} are not MEDS splits ({', '.join(SPLITS)}): its {n} subjects "
             f"listed under them are not compared with the {DATA_DIR}/<split>/ folders ehrfm reads", path)
    listed = listed.select(SUBJECT_ID, pl.col("split").replace_strict(names, default=None).alias("listed")).drop_nulls()
    _warn_listed_without_rows(path, listed.rename({"listed": "split"}), present)
    both = present.join(listed, on=SUBJECT_ID).filter(pl.col("split") != pl.col("listed"))
    if both.height:
        a, b, n = both.group_by("split", "listed").len().sort("len", "split", "listed", descending=[True, False, False]).row(0)
        raise UserError(f"MEDS dataset {ds.root}: {both.height} subjects are in another split in {SUBJECT_SPLITS_FILE} than "
                        f"their {DATA_DIR}/<split>/ folder ({n} of them in folder {a}, listed as {b}); other MEDS tools "
                        "read the file, ehrfm the folders: make them agree (re-write the file or move the shards)")


def _warn_listed_without_rows(path: Path, listed: pl.DataFrame, present: pl.DataFrame) -> None:
    """Say how many subjects `path` lists (per MEDS split) that have no rows in the data.

    They are left out by every reader; a held-out set listed as 100 subjects but scored on 80 should
    not pass unsaid (another tool, or a filter, dropped their rows after the splits were written).
    """
    gone = (listed.select(pl.col(SUBJECT_ID).cast(pl.Int64), "split").unique(SUBJECT_ID)
            .join(present.select(pl.col(SUBJECT_ID).cast(pl.Int64)), on=SUBJECT_ID, how="anti"))
    if gone.height:
        by = ", ".join(f"{sp} {n}" for sp, n in gone.group_by("split").len().sort("split").iter_rows())
        _say(f"{path}: {gone.height} listed subjects have no rows in {DATA_DIR}/ ({by}); every reader leaves them out", path)


def _row_group_stats(path: Path) -> dict[str, list]:
    """Per column of one shard, its row groups' parquet statistics (None where a group has none)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    return {name: [meta.row_group(rg).column(i).statistics for rg in range(meta.num_row_groups)]
            for i, name in enumerate(names)}


def _null_counts(path: Path, columns: tuple[str, ...], stats: dict[str, list]) -> list[int]:
    """Null count of each column of one shard.

    From the parquet footer's statistics (`_row_group_stats`) when every row group has them (no
    data read, which matters for MIMIC-scale shards), else by a scan of those columns.
    """
    n_groups = len(next(iter(stats.values()), []))
    counts = []
    for col in columns:
        groups = stats.get(col, [None] * n_groups)
        if any(st is None or not st.has_null_count for st in groups):
            counts.append(None)
        else:
            counts.append(sum(st.null_count for st in groups))
    if any(c is None for c in counts):
        return list(pl.scan_parquet(path).select(pl.col(c).null_count() for c in columns).collect().row(0))
    return counts


def _blank_code_count(path: Path, stats: dict[str, list]) -> int:
    """Rows of one shard whose code is "" or whitespace only (a null written as text by some exporters).

    Zero without reading data when every row group's footer (`_row_group_stats`) holds a minimum
    code starting with a printable character (no blank string sorts above it); else one scan of
    the code column.
    """
    groups = stats.get(CODE)
    if groups is None:
        return 0
    mins = [st.min if st is not None and st.has_min_max else None for st in groups]
    if mins and all(isinstance(m, (str, bytes)) and len(m) and (m[:1] if isinstance(m, str) else m[:1].decode("latin-1")) > " "
                    for m in mins):
        return 0
    code = pl.col(CODE).cast(pl.String)
    return int(pl.scan_parquet(path).select((code.str.strip_chars() == "").sum()).collect().item() or 0)


def _split_folder_shards(data: Path, folders: list[str]) -> tuple[dict[str, list[Shard]], dict[str, str]]:
    """Shards per split of a data/<split>/ layout.

    ({split: shards}, {folder alias: split}) of data/<split>/ folders (UserError: unknown or
    clashing folders, or parquet files beside them).
    """
    unknown = [f for f in folders if not split_name(f)]
    if unknown:
        raise UserError(
            f"{data}: split folder(s) {', '.join(unknown)} are not MEDS splits ({', '.join(SPLITS)}; "
            f"known aliases {', '.join(sorted(SPLIT_ALIASES))}); rename them or use a flat layout with "
            f"{SUBJECT_SPLITS_FILE}")
    loose = [p for p in sorted(data.iterdir()) if p.is_file() and p.name.lower().endswith(".parquet") and not p.name.startswith(".")]
    if loose:
        raise UserError(f"{data}: {len(loose)} parquet file(s) lie beside the split folders "
                        f"{', '.join(folders)}; put every shard in a split folder")
    aliases: dict[str, str] = {}
    shards: dict[str, list[Shard]] = {}
    for f in folders:
        split = split_name(f)
        if split != f:
            aliases[f] = split
        files = _parquet_files(data / f, data)
        shards.setdefault(split, []).extend(Shard(p, split) for p in files)
    clash = [s for s in shards if sum(1 for f in folders if split_name(f) == s) > 1]
    if clash:
        both = [f for f in folders if split_name(f) == clash[0]]
        raise UserError(f"{data}: several folders map to split {clash[0]!r} ({', '.join(both)}); keep one of them")
    if aliases:
        _say(f"{data}: read split folder(s) " + ", ".join(f"{a} as {s}" for a, s in aliases.items()), data)
    return shards, aliases


def _subject_split_shards(root: Path, data: Path) -> tuple[dict[str, list[Shard]], dict[str, str]]:
    """Shards per split of a flat layout split by metadata/subject_splits.parquet.

    ({split: shards}, {split alias: split}) of a flat layout (any shards under data/) whose
    splits come from metadata/subject_splits.parquet; each split reads every shard, keeping its
    own subjects (UserError: no shards, no or a malformed splits file, unknown split names).
    """
    files = _parquet_files(data, data)
    if not files:
        raise UserError(f"{data} holds no parquet shards")
    splits_path = root / SUBJECT_SPLITS_FILE
    if not splits_path.exists():
        raise UserError(f"{root}: shards are not in {DATA_DIR}/<split>/ and {SUBJECT_SPLITS_FILE} is missing, so no "
                        f"subject's split is known: write {SUBJECT_SPLITS_FILE} (MEDS columns {SUBJECT_ID} int64 and split "
                        f"string: {', '.join(SPLITS)}), or move the shards into {DATA_DIR}/<split>/ folders")
    # A file, or a folder of part files as Spark and Dask write a parquet dataset.
    parts = _parquet_files(splits_path, splits_path) if splits_path.is_dir() else [splits_path]
    for part in parts:  # a column named twice was a polars DuplicateError traceback
        refuse_repeated_columns(part, "subject splits file")
    sp = pl.read_parquet(parts if splits_path.is_dir() else splits_path)
    for col in (SUBJECT_ID, "split"):
        if col not in sp.columns:
            old = [o for o, c in LEGACY_COLUMNS.items() if c == col and o in sp.columns]
            found = f" (found {old[0]!r}: {LEGACY_SINCE[old[0]]})" if old else ""
            raise UserError(f"{splits_path} lacks column {col!r}{found}; ehrfm reads MEDS {MEDS_VERSION} "
                            f"subject splits ({SUBJECT_ID}, split)")
    for col, ok, want in ((SUBJECT_ID, COLUMN_TYPES[SUBJECT_ID][0], "an integer (int64)"),
                          ("split", COLUMN_TYPES[CODE][0], "text (string) naming the split")):
        if not ok(sp.schema[col]):  # ids as text, splits as numbers: refused, not cast by guessing
            raise UserError(f"{splits_path}: column {col} is {sp.schema[col]}, not {want} (the MEDS {MEDS_VERSION} "
                            "subject splits schema)")
    sp = sp.with_columns(pl.col("split").cast(pl.String))
    several = sp.select(SUBJECT_ID, "split").drop_nulls().unique().group_by(SUBJECT_ID).len().filter(pl.col("len") > 1).height
    if several:
        raise UserError(f"{splits_path}: {several} subjects are listed in more than one split; each subject must "
                        "live in exactly one split, or held-out data leaks into training")
    names = sorted(set(sp["split"].drop_nulls().to_list()))
    unknown = [n for n in names if not split_name(n)]
    if unknown:
        raise UserError(f"{splits_path}: split name(s) {', '.join(unknown)} are not MEDS splits ({', '.join(SPLITS)})")
    aliases: dict[str, str] = {}
    shards: dict[str, list[Shard]] = {}
    for n in names:
        split = split_name(n)
        if split != n:
            aliases[n] = split
        ids = sp.filter(pl.col("split") == n)[SUBJECT_ID]
        shards.setdefault(split, []).extend(Shard(p, split, ids) for p in files)
    if aliases:
        _say(f"{splits_path}: read split name(s) " + ", ".join(f"{a} as {s}" for a, s in aliases.items()), splits_path)
    for p in files:
        check_columns(p)
    ids = pl.concat([pl.scan_parquet(p).select(pl.col(SUBJECT_ID).cast(pl.Int64)) for p in files]).unique()
    n_out = ids.join(sp.lazy().select(pl.col(SUBJECT_ID).cast(pl.Int64), "split").drop_nulls(), on=SUBJECT_ID,
                     how="anti").select(pl.len()).collect().item()
    if n_out:
        _say(f"{splits_path}: {n_out} subjects of the shards are in no split; every reader leaves them out", splits_path)
    listed = sp.select(pl.col(SUBJECT_ID).cast(pl.Int64), pl.col("split").replace_strict(
        {n: split_name(n) for n in names}, default=None)).drop_nulls()
    _warn_listed_without_rows(splits_path, listed, ids.collect())
    return shards, aliases


def dataset_metadata(root: str | os.PathLike) -> dict:
    """`metadata/dataset.json` of a MEDS dir as a dict; {} when absent, unreadable or not an object.

    Optional for ehrfm's readers: other ETLs (and hand-made datasets) may not write it.
    """
    path = Path(root) / DATASET_METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def check_columns(path: Path, metadata: dict | None = None) -> dict:
    """The parquet schema of one shard, after checking it has the MEDS 0.4 columns.

    Raises:
        UserError: naming the file, the missing column, the older name found (if any) and the
            MEDS version expected.
    """
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as e:  # pyarrow/polars raise several types for a non-parquet file
        refuse_repeated_columns(path, "MEDS shard")  # readable, but a column named twice
        raise UserError(f"MEDS shard {path} is not a readable parquet file ({type(e).__name__})") from None
    for col in REQUIRED_COLUMNS:
        if col in schema:
            continue
        old = [o for o, new in LEGACY_COLUMNS.items() if new == col and o in schema]
        found = f" (found {old[0]!r}: {LEGACY_SINCE[old[0]]})" if old else ""
        version = (metadata or {}).get("meds_version")
        said = f"; its metadata says meds_version {version}" if version else ""
        raise UserError(f"MEDS shard {path} lacks column {col!r}{found}; ehrfm reads MEDS {MEDS_VERSION} data "
                        f"({', '.join(REQUIRED_COLUMNS)}){said}")
    for col, (ok, want) in COLUMN_TYPES.items():
        if col in schema and isinstance(schema[col], pl.Decimal) and (schema[col].precision or 0) > MAX_DECIMAL_PRECISION:
            # pyarrow's decimal256: the schema reads, the values do not (a polars traceback mid-tokenize).
            raise UserError(f"MEDS shard {path}: column {col} is {schema[col]}, a decimal of more than "
                            f"{MAX_DECIMAL_PRECISION} digits (decimal256), which ehrfm cannot read; write it as float32 "
                            f"(the MEDS {MEDS_VERSION} DataSchema) or a decimal of at most {MAX_DECIMAL_PRECISION} digits")
        if col in schema and not ok(schema[col]):
            raise UserError(f"MEDS shard {path}: column {col} is {schema[col]}, not {want} (the MEDS {MEDS_VERSION} "
                            f"DataSchema); convert it in the ETL: ehrfm does not guess ids, units or time zones")
    if schema.get(TIME) == pl.Datetime("ms") and is_arrow_date(path, TIME):
        # parquet's date64 reads as a millisecond timestamp: refused as date32 is (events at 00:00, before
        # the prediction times of their own day: labels leaked the day's outcomes, tokenize said nothing)
        raise UserError(f"MEDS shard {path}: column {TIME} is date64 (dates, no time of day), not "
                        f"{COLUMN_TYPES[TIME][1]} (the MEDS {MEDS_VERSION} DataSchema); convert it in the ETL: ehrfm "
                        "does not guess ids, units or time zones")
    return schema


def is_arrow_date(path: Path, column: str) -> bool:
    """Is `column` of parquet file `path` stored as an arrow date (date32 or date64: no time of day)?

    polars reads date64 as Datetime("ms"), so its schema alone cannot tell a date from a timestamp.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    return column in schema.names and pa.types.is_date(schema.field(column).type)


# What each column's parquet type may be. Any integer width or timestamp unit, a time zone (read as
# the UTC instant) and a column of nulls are accepted; text ids, epoch numbers, dates (no time of day:
# an event at 00:00 would precede the prediction times of its own day) and text values are not.
# A column of nulls (pl.Null) is what pandas writes for an empty shard's text and id columns (an
# empty object column); null subject_id or code rows are then refused by count (_check_rows).
MAX_DECIMAL_PRECISION = 38  # the widest decimal polars reads (pyarrow's decimal128)
COLUMN_TYPES = {
    SUBJECT_ID: (lambda t: t.is_integer() or t == pl.Null, "an integer (int64)"),
    TIME: (lambda t: isinstance(t, pl.Datetime) or t == pl.Null, "a timestamp (timestamp[us])"),
    CODE: (lambda t: t == pl.String or isinstance(t, (pl.Categorical, pl.Enum)) or t == pl.Null, "text (string)"),
    NUMERIC_VALUE: (lambda t: t.is_numeric() or t == pl.Null, "a number (float32)"),
}


def is_never_static(code: pl.Expr) -> pl.Expr:
    """True for codes that name an event (a time is part of their meaning)."""
    expr = code.is_in(list(NEVER_STATIC_CODES))
    for p in EVENT_PREFIXES:
        expr = expr | code.str.starts_with(p)
    return expr


def null_time_codes(paths: Iterable[Path]) -> dict[str, int]:
    """Count null-time rows per code whose code is not static (rules in the module docstring)."""
    paths = list(paths)
    if not paths:
        return {}
    # Only whether a time is there: shards may differ in time unit or zone.
    lf = pl.concat([pl.scan_parquet(p).select(pl.col(CODE).cast(pl.String), pl.col(TIME).is_null().alias("_no_time"))
                    for p in paths], how="vertical_relaxed")
    nulls = lf.filter(pl.col("_no_time")).group_by(CODE).agg(pl.len().alias("n")).collect()
    if nulls.height == 0:
        return {}
    timed = set(lf.filter(~pl.col("_no_time") & pl.col(CODE).is_in(nulls[CODE].implode()))
                .select(CODE).unique().collect()[CODE].to_list())
    bad = nulls.filter(is_never_static(pl.col(CODE)) | pl.col(CODE).is_in(list(timed)))
    return {c: int(n) for c, n in bad.sort(CODE).iter_rows() if c is not None}


# Names of UTC itself: a time in one of these is the naive clock ehrfm reads (Etc/UTC and GMT were taken for zones)
UTC_NAMES = frozenset({"UTC", "ETC/UTC", "UCT", "ETC/UCT", "GMT", "ETC/GMT", "GMT0", "ETC/GMT0", "GMT+0", "ETC/GMT+0",
                       "GMT-0", "ETC/GMT-0", "GREENWICH", "ETC/GREENWICH", "UNIVERSAL", "ETC/UNIVERSAL", "ZULU",
                       "ETC/ZULU", "Z", "+00:00", "-00:00", "+0000", "00:00"})


def is_utc(zone: str | None) -> bool:
    """Whether a polars/arrow time zone name is UTC itself (no zone at all is not: None -> False)."""
    return zone is not None and zone.strip().upper() in UTC_NAMES


def _warn_zone_once(zone: str, path: Path) -> None:
    """Say once that shards zoned `zone` are read as UTC: naive label times from elsewhere must be UTC too."""
    if is_utc(zone):
        return
    warn_once("MEDS zone", zone, f"MEDS shard {path}: column time has time zone {zone}; MEDS times have none, so ehrfm reads them as UTC "
         "instants, as it reads zoned label prediction times (and as `ehrfm labels` writes them): a label file made "
         "elsewhere with naive times on the data's local clock would put each prediction time hours off its history "
         "(give its times their zone, or convert them to UTC; check it with `ehrfm audit`)")


US_PER_DAY = 86_400_000_000


def calendar_zone(ds: MedsDataset) -> str | None:
    """The time zone whose calendar days the label rules count in: the shards' zone other than UTC, else None.

    The rules: a date-only death at midnight, the end of a discharge day. None: naive or UTC times, their own clock.

    Zoned times are read as UTC instants (scan_shard); their days are the zone's, not UTC's: on America/New_York
    data a date-only death (local midnight, 05:00 UTC) was taken as timed, and `ehrfm audit` flagged 116 of 242
    mortality histories as leaking. With shards of several zones, the first is taken and a warning says so.
    """
    zones = ds.time_zones()
    if len(zones) > 1:
        _say(f"MEDS dataset {ds.root}: its shards' times are in {len(zones)} time zones ({', '.join(zones)}): calendar-day "
             f"rules (date-only deaths, the end of a discharge day) count the days of {zones[0]}", ds.root)
    return zones[0] if zones else None


def wall_clock(us, zone: str | None):
    """UTC instants (epoch microseconds, a sequence) on `zone`'s wall clock, an int64 array.

    Epoch microseconds of their local date and time, whose `// US_PER_DAY` is the local day (`us` itself for None).

    By polars' zone rules, as scan_shard read the zoned times (Python's zoneinfo extends daylight saving time
    past 2037, polars does not: a date-only death of 2126 was an hour off its day's end).
    """
    import numpy as np

    values = pl.Series("t", np.asarray(us, dtype=np.int64))
    if zone is None:
        return values.to_numpy()
    return pl.select(wall_clock_expr(pl.lit(values), zone)).to_series().to_numpy()


def day_end_expr(us: pl.Expr, zone: str | None) -> pl.Expr:
    """The UTC instant (epoch microseconds) at which the local day of each UTC instant `us` ends.

    The next midnight on `zone`'s wall clock (a changeover day lasts 23 or 25 hours); of UTC's day for None.
    """
    if zone is None:
        return (us // US_PER_DAY + 1) * US_PER_DAY
    return (pl.from_epoch(us, time_unit="us").dt.replace_time_zone("UTC").dt.convert_time_zone(zone).dt.truncate("1d")
            .dt.offset_by("1d").dt.convert_time_zone("UTC").dt.replace_time_zone(None).dt.epoch("us"))


def wall_clock_expr(us: pl.Expr, zone: str | None) -> pl.Expr:
    """`wall_clock` for a polars expression of UTC epoch microseconds (Int64)."""
    if zone is None:
        return us
    return (pl.from_epoch(us, time_unit="us").dt.replace_time_zone("UTC").dt.convert_time_zone(zone)
            .dt.replace_time_zone(None).dt.epoch("us"))


def scan_shard(shard: Shard | Path, columns: Iterable[str] = REQUIRED_COLUMNS,
               rows: tuple[int, int] | None = None) -> pl.LazyFrame:
    """A lazy frame of one shard's rows.

    A lazy frame of one shard's `columns` (subject_id Int64, time Datetime(us), code String,
    numeric_value Float64 holding the float32 value MEDS stores, hadm_id String (STAY_ID); a missing
    optional column is all null), filtered to the shard's subjects and without its non-static
    null-time rows (`Shard.drop_null_time`). rows=(offset, length): only those rows of the file
    (before the filters), so a large shard can be read a slice at a time.
    """
    path = shard.path if isinstance(shard, Shard) else Path(shard)
    schema = check_columns(path)
    columns = list(dict.fromkeys([*columns]))
    present = [c for c in columns if c in schema]
    lf = pl.scan_parquet(path)
    lf = (lf.slice(*rows) if rows is not None else lf).select(present)
    zone = getattr(schema.get(TIME), "time_zone", None)
    if zone is not None and TIME in present:  # the UTC instant, without a zone: every shard alike
        _warn_zone_once(zone, path)
        lf = lf.with_columns(pl.col(TIME).dt.convert_time_zone("UTC").dt.replace_time_zone(None))
    casts = {SUBJECT_ID: pl.Int64, TIME: pl.Datetime("us"), CODE: pl.String, NUMERIC_VALUE: pl.Float64, STAY_ID: pl.String}
    lf = lf.with_columns([pl.lit(None, casts.get(c, pl.String)).alias(c) for c in columns if c not in schema])
    if NUMERIC_VALUE in present and schema[NUMERIC_VALUE] != pl.Float32:
        # MEDS stores numeric_value as float32: a float64 (or decimal, integer) shard is read as the
        # float32 it stands for, so the same values give the same quantile tokens whichever way they
        # were written (0.1 as float64 lay just below the decile edge 0.1 as float32, 0.100000001,
        # and took a lower bin). Beyond float32's range this is +-inf, which readers treat as no value.
        lf = lf.with_columns(pl.col(NUMERIC_VALUE).cast(pl.Float32))
    lf = lf.with_columns([pl.col(c).cast(t) for c, t in casts.items() if c in columns]).select(columns)
    if isinstance(shard, Shard) and shard.subjects is not None:
        lf = lf.filter(pl.col(SUBJECT_ID).is_in(shard.subjects.cast(pl.Int64).implode()))
    if isinstance(shard, Shard) and shard.drop_null_time and TIME in columns and CODE in columns:
        lf = lf.filter(~(pl.col(TIME).is_null() & pl.col(CODE).is_in(list(shard.drop_null_time))))
    return lf


def read_shard(shard: Shard | Path, columns: Iterable[str] = REQUIRED_COLUMNS,
               rows: tuple[int, int] | None = None) -> pl.DataFrame:
    """`scan_shard` collected (its `rows` slice), refusing null subject_id or code with a count (never values).

    Raises:
        UserError: a shard with rows whose subject_id or code is null, or whose columns cannot be
            cast to the MEDS types.
    """
    path = shard.path if isinstance(shard, Shard) else Path(shard)
    try:
        df = scan_shard(shard, columns, rows).collect()
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError, pl.exceptions.SchemaError) as e:
        raise UserError(f"MEDS shard {path}: columns cannot be cast to the MEDS types ({type(e).__name__})") from None
    n_null = sum(df[c].null_count() for c in (SUBJECT_ID, CODE) if c in df.columns)
    if n_null:
        raise UserError(f"MEDS shard {path}: {n_null} rows with a null {SUBJECT_ID} or {CODE}")
    return df


def scan_shards(shards: Iterable[Shard | Path], columns: Iterable[str] = REQUIRED_COLUMNS) -> pl.LazyFrame:
    """Several shards as one lazy frame (see `scan_shard`)."""
    columns = list(columns)
    return pl.concat([scan_shard(s, columns) for s in shards], how="vertical_relaxed")
