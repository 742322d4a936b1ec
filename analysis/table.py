"""Reading and checking the results table (DESIGN.md section 4), the only input of this stage.

Required columns: n_params (non-embedding parameters), tokens, and the loss column (default `loss`, held-out nats/token;
`loss_per_event`, held-out nats/event, compares runs on token dirs whose tokens per event differ,
e.g. hierarchical vs flat codes). Used when present: run_id, status, flops, budget,
auroc/<task>, auprc/<task>, auroc_se/<task> (the standard error of auroc/<task>, used by the
utility bootstrap), auroc_boot/<task> (list: the AUROC on held-out resamples shared by every run,
which makes the utility bootstrap paired), and these optional columns (written by sweeps, or by hand):
  - unique_tokens: distinct training tokens available to the run (the size of the data set);
  - epochs: passes over those unique tokens (tokens / unique_tokens when absent);
  - vocab_size, context: the model's vocabulary and context length (for concrete shapes);
  - n_params_total: all parameters, embeddings included (Results.with_n_count picks the count the
    fits use; a table without it is fitted on n_params).
Only status == "completed" rows are fitted; every other row is reported in `excluded` with its
reason (the status, and the `error` column's text when there is one). A completed row whose loss
is above uniform guessing, ln(vocab_size) nats/token, is a blow-up recorded by a trainer that did
not check it: excluded too, with that reason, never fitted; when a quarter of the completed rows
or more are above it, the column is in another unit (bits, perplexity): an error. A completed row with a missing, NaN, infinite or non-positive required value is an error naming
the file, column and run ids (never patient data: the table holds none, but we still name ids only).
Hand-made tables are read leniently where the meaning is certain and refused where it is not:
padded numbers and headers in a CSV ("3.2 ", "loss "), ehrfm's column names in another case ("Loss")
and a status written "Completed" are read, and
so are other trackers' words for it (W&B's and MLflow's "finished", "succeeded": COMPLETED_SYNONYMS);
completed rows repeated in every column (a table pasted twice), or in every column but run_id with
a loss equal to every digit (one run under two ids), text that is not a number, an empty table and
infinite optional values are errors; rows empty in every column (a spreadsheet's blank lines) are
skipped, and a run with an empty run_id cell is named row<i>; planned budgets within 0.1% of each other
(1e11 vs 1.0000001e11) are one IsoFLOP budget. A ';'-separated CSV (spreadsheets in locales with
decimal commas) is read as such. Columns that say one thing must agree: epochs = tokens / unique_tokens
(either one gives the other), n_params_total >= n_params; vocab_size and context are positive whole
numbers. A table lacking a required column under ehrfm's name (Epoch AI's "Model Size", "Training FLOP")
gets the renames to make in its error (COLUMN_ALIASES), never a silent guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ehrfm.errors import UserError
from ehrfm.law_checks import BUDGET_SAME_DECADES  # shared with the sweep planner; re-exported
from ehrfm.results import Status, blow_up_margin, untrained_excess
from ehrfm.tables import RESULTS_COLUMNS, RESULTS_REQUIRED, UTILITY_PREFIXES

REQUIRED = ("n_params", "tokens", "loss")
# The loss columns the trainer and sweeps write, and their units (any other numeric column may be
# fitted too; its unit is then unknown and reported as such).
LOSS_UNITS = {"loss": "nats/token", "loss_per_event": "nats/event"}
# The column holding each loss's standard error over eval subjects (result.json eval_loss_se).
LOSS_SE_COLUMNS = {"loss": "eval_loss_se", "loss_per_event": "loss_per_event_se"}
# Budgets within this many decades of each other are one IsoFLOP group when the table has no
# budget column (or a null budget): planned budgets are normally >= 2x apart (0.3 decades).
BUDGET_GROUP_DECADES = 0.05
# Planned budgets closer than this (0.1%) are one budget written two ways: shared with the sweep planner
# (defined in ehrfm.law_checks, re-exported here).
# When at least this share of the completed runs has a loss above ln(vocab_size), the loss column is
# in another unit (bits are 1.44x nats, a perplexity exp(nats)), not a sweep of blow-ups: an error.
BLOWN_UP_UNIT_SHARE = 0.25
# epochs and tokens / unique_tokens, both written, may differ by this much (relative; rounding in a CSV).
EPOCHS_TOLERANCE = 0.01
# Statuses other trackers write for a run that ended normally, read as completed: W&B's and
# MLflow's "finished" (FINISHED), "succeeded"/"success" (Argo, Kubernetes jobs, hand-made tables).
COMPLETED_SYNONYMS = ("finished", "succeeded", "success")
# Parameter counts a fit can use: Results.with_n_count.
N_COUNTS = ("total", "non-embedding")


@dataclass
class Results:
    """The completed, checked runs (as numpy arrays) plus what was left out and why."""

    source: str
    run_id: np.ndarray  # str
    n_params: np.ndarray  # float64
    tokens: np.ndarray  # float64
    loss: np.ndarray  # float64
    flops: np.ndarray  # float64
    budget: np.ndarray  # float64, the IsoFLOP group of each run
    unique_tokens: np.ndarray | None = None  # float64, NaN where unknown
    epochs: np.ndarray | None = None  # float64
    utility: dict[str, np.ndarray] = field(default_factory=dict)  # "auroc/<task>" -> float64 (NaN = missing)
    utility_se: dict[str, np.ndarray] = field(default_factory=dict)  # "auroc/<task>" -> its standard error (NaN = unknown)
    # "auroc/<task>" -> (n, B) AUROC on B held-out resamples shared by every run (auroc_boot/<task>; NaN = none)
    utility_boot: dict[str, np.ndarray] = field(default_factory=dict)
    vocab_size: int | None = None
    context: int | None = None
    n_rows: int = 0
    excluded: list[dict] = field(default_factory=list)  # {"run_id", "reason"}
    loss_column: str = "loss"  # the table column `loss` was read from
    n_params_total: np.ndarray | None = None  # float64, NaN where unknown (column n_params_total)
    n_params_non_embedding: np.ndarray | None = None  # the table's n_params (set by load_results)
    n_count: str = "non-embedding"  # which count `n_params` holds: "non-embedding" or "total"
    loss_se: np.ndarray | None = None  # float64, standard error of `loss` over eval subjects (NaN = unknown)
    # Where `budget` came from: "budget" (the planned column), "flops" (grouped by the flops column)
    # or "6ND" (grouped by 6 N D: the table has neither budget nor flops).
    budget_from: str = "budget"
    # How `flops` was measured: "flops" (the table's column) or "6ND" (no flops column: C = 6 N D, with N
    # the table's n_params). recommend converts a budget to a shape's tokens the same way.
    flops_from: str = "flops"

    @property
    def loss_unit(self) -> str:
        """"nats/token" for `loss`, "nats/event" for `loss_per_event`, else "unknown unit"."""
        return LOSS_UNITS.get(self.loss_column, "unknown unit")

    @property
    def n(self) -> int:
        """Number of runs."""
        return int(self.n_params.size)

    @property
    def multi_epoch(self) -> bool:
        """Whether any run trained for more than one epoch over its unique tokens."""
        return self.epochs is not None and bool(np.nanmax(self.epochs, initial=1.0) > 1.0 + 1e-9)

    def subset(self, mask: np.ndarray) -> Results:
        """These runs restricted to `mask` (a boolean mask or indices over the n runs); table metadata kept."""
        pick = lambda v: None if v is None else v[mask]  # noqa: E731
        return Results(
            source=self.source, run_id=self.run_id[mask], n_params=self.n_params[mask], tokens=self.tokens[mask],
            loss=self.loss[mask], flops=self.flops[mask], budget=self.budget[mask],
            unique_tokens=pick(self.unique_tokens), epochs=pick(self.epochs),
            utility={k: v[mask] for k, v in self.utility.items()},
            utility_se={k: v[mask] for k, v in self.utility_se.items()},
            utility_boot={k: v[mask] for k, v in self.utility_boot.items()}, vocab_size=self.vocab_size,
            context=self.context, n_rows=self.n_rows, excluded=list(self.excluded), loss_column=self.loss_column,
            n_params_total=pick(self.n_params_total), n_params_non_embedding=pick(self.n_params_non_embedding),
            n_count=self.n_count, loss_se=pick(self.loss_se), budget_from=self.budget_from, flops_from=self.flops_from,
        )

    def with_n_count(self, n_count: str) -> tuple[Results, str]:
        """These runs with `n_params` holding the requested parameter count.

        Args:
            n_count: "total" (embeddings included, column n_params_total) or "non-embedding"
                (column n_params).

        Returns:
            (results, note): note is "" when the requested count was used, else why it fell back
            to the non-embedding count (no n_params_total column, or runs without a value).

        Raises:
            UserError: an unknown n_count.
        """
        if n_count not in N_COUNTS:
            raise UserError(f"n_count must be one of {', '.join(N_COUNTS)} (got {n_count!r})")
        if n_count == self.n_count:
            return self, ""
        import dataclasses

        if n_count == "non-embedding":
            return dataclasses.replace(self, n_params=self.n_params_non_embedding, n_count=n_count), ""
        total = self.n_params_total
        if total is None:
            return self, f"{self.source} has no n_params_total column: fitted on the non-embedding count n_params"
        missing = ~np.isfinite(total)
        if missing.any():
            return self, (f"{self.source}: n_params_total is missing in {int(missing.sum())} of {self.n} completed runs "
                          f"({_name_ids(self.run_id[missing])}): fitted on the non-embedding count n_params")
        return dataclasses.replace(self, n_params=total, n_count=n_count), ""


def _looks_like_json(path: Path) -> bool:
    """Does the file start (after blanks) with '{' or '['? Read from its first 64 bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"[")
    except OSError:
        return False


def _read_frame(path: Path) -> pl.DataFrame:
    if path.is_dir():
        table = path / "results.parquet"
        if table.is_file():
            raise UserError(f"results table {path} is a directory (a sweep dir?): pass {table}")
        hint = (f"a sweep dir: run `ehrfm sweep collect {path}` first, then pass {table}" if (path / "sweep.json").is_file()
                else "pass the results table (results.parquet or a CSV) that `ehrfm sweep collect` writes")
        raise UserError(f"results table {path} is a directory, not a table: {hint}")
    if not path.is_file():
        raise UserError(f"results table {path} not found")
    name = path.name.lower()
    csv = name.endswith((".csv", ".tsv", ".csv.gz", ".tsv.gz"))
    if not csv and not name.endswith(".parquet"):
        # was read as parquet whatever its name: a CSV saved as .txt was "could not be read as parquet"
        what = ("it is JSON (a fits.json, or a run's result.json?), not a results table: pass the sweep's "
                "results.parquet (`ehrfm sweep collect`)" if _looks_like_json(path) else
                "it looks like CSV text: rename it to .csv" if _looks_like_text(path) else "save it as .parquet or .csv")
        raise UserError(f"results table {path}: unsupported extension {path.suffix or '(none)'} "
                        f"(.csv, .tsv, .parquet, .csv.gz, .tsv.gz); {what}")
    try:
        if csv:
            sep = "\t" if ".tsv" in name else _csv_separator(path)
            header, short = _csv_header_and_short_rows(path, sep)
            df = pl.read_csv(path, separator=sep, infer_schema_length=None, null_values=["", "NA", "null", "None"])
            _refuse_duplicate_columns(str(path), header, df.height)
            _refuse_short_rows(path, short, len(header))
            # spreadsheets pad headers ("loss "): a padded name is the same column
            stripped = [c.strip() for c in df.columns]
            if len(set(stripped)) == len(stripped):
                df = df.rename(dict(zip(df.columns, stripped, strict=True)))
            return df
        # pyarrow first: polars panics on a timestamp zoned 'Z' or '+05:30' (a run's finish time written by pandas)
        import pyarrow.parquet as pq

        from ehrfm.io import as_utc_zones, zones_polars_cannot_read

        if zones_polars_cannot_read(pq.read_schema(path)):
            return pl.from_arrow(as_utc_zones(pq.read_table(path)))
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError, ValueError, EOFError) as e:
        raise UserError(f"results table {path} could not be read as {'CSV' if csv else 'parquet'}: "
                        f"{_polars_reason(e)}{_csv_hint(path) if csv else ''}") from None


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return not head.startswith(b"PAR1") and b"\0" not in head and (b"," in head or b"\t" in head or b";" in head)


def _polars_reason(e: Exception) -> str:
    """Polars' message, first paragraph only, with the cell values it quotes in backticks replaced.

    The cause ("invalid utf-8 sequence", "found more fields than defined in 'Schema'") was hidden behind
    "(ComputeError)"; a results table holds no patient data, but messages never quote cells anyway.
    """
    import re

    text = str(e).strip().split("\n\n")[0].replace("\n", " ")
    text = re.sub(r"`[^`]*`", "<value>", text)
    return text[:300] or type(e).__name__


def _csv_hint(path: Path) -> str:
    """What spreadsheet exports put before a CSV's header or in its bytes, said plainly ('' when none)."""
    try:
        with _open_csv(path, "rb") as f:
            raw = f.read(1 << 20)
    except EOFError:  # gzip's, not an OSError: a traceback before
        return "; the gzip file ends before its end-of-stream marker: it is truncated (an interrupted copy or download?)"
    except OSError:
        return ""
    first = raw.split(b"\n", 1)[0].strip()
    if first.lower().startswith(b"sep="):
        return "; its first line is Excel's 'sep=' line: delete that line"
    if first.startswith(b"#"):
        return "; its first line is a '#' comment: delete the comment lines above the header"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as u:
        if u.start < len(raw) - 4:  # not a character cut by the 1 MiB read
            line = raw[:u.start].count(b"\n") + 1
            return (f"; line {line} is not UTF-8 (a spreadsheet's 'CSV' in cp1252/Latin-1?): save it as 'CSV UTF-8'")
    return ""


def _csv_header_and_short_rows(path: Path, sep: str) -> tuple[list[str], list[int]]:
    """A CSV's header, and the lines (1-based) of its rows with fewer fields than the header."""
    import csv

    with _open_csv(path, "rt", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        header = next(reader, [])
        short = [reader.line_num for row in reader if row and len(row) < len(header)]
    return header, short


def _refuse_short_rows(path: Path, short: list[int], n_fields: int) -> None:
    """UserError naming the lines `short` of rows with fewer fields than the header: a file cut short or hand-damaged.

    polars fills a short row's missing cells with nulls: a table cut off mid-row was fitted, or its
    last run was said to be "not fitted: status <null>", with no word of the file.
    """
    if short:
        raise UserError(f"results table {path}: {len(short)} row(s) have fewer fields than its header's {n_fields} (line "
                        f"{', '.join(map(str, short[:5]))}{' ...' if len(short) > 5 else ''}): a file cut short in a copy "
                        "or a download, or a damaged row? Write the table again (`ehrfm sweep collect` writes results.parquet)")


def _refuse_duplicate_columns(source: str, columns, n_rows: int) -> None:
    """UserError for two headers that name one of ehrfm's columns ("loss" twice, "loss" and "Loss").

    polars renames a repeated CSV header to loss_duplicated_0 and the first was fitted silently (a
    train and an eval loss exported under one name); _ehrfm_case kept "loss" beside "Loss". Which one
    is meant is not ours to guess. Names ehrfm does not read may repeat.
    """
    known = {name for name, _ in RESULTS_COLUMNS} | {"loss_per_event"}
    seen: dict[str, list[str]] = {}
    for c in columns:
        low = c.strip().lower()
        if low in known or any(low.startswith(p) for p in UTILITY_PREFIXES):
            seen.setdefault(low, []).append(c.strip())
    # "Loss" and "LOSS" without "loss": neither is renamed, and the table "lacks column loss" naming both
    dup = {k: v for k, v in seen.items() if len(v) > 1 and k in v}
    if dup:
        k, v = next(iter(dup.items()))
        raise UserError(f"results table {source}: column {k} appears {len(v)} times in the header "
                        f"({', '.join(repr(x) for x in v)}; {n_rows} rows): which one to fit is not certain; "
                        "rename or drop all but one")


# Other scaling-law tables' names for ehrfm's columns (lower-cased): Epoch AI's replication of Chinchilla
# (Besiroglu et al. 2024: "Model Size", "Training FLOP", "loss"; tokens derived as FLOP / (6 N)), and
# common hand-made ones. Only named in the error, never read silently: whether "Model Size" counts the
# embeddings, or "compute" is training FLOPs, is the user's to say.
COLUMN_ALIASES = {
    "n_params": ("model size", "params", "parameters", "num_params", "n", "model_size", "non_embedding_params"),
    "tokens": ("training tokens", "train_tokens", "num_tokens", "tokens_seen", "d", "data", "training_tokens"),
    "flops": ("training flop", "training flops", "training_flops", "flop", "compute", "c"),
    "loss": ("val_loss", "eval_loss", "validation loss", "test_loss", "final_loss", "l"),
}


def _ehrfm_case(df: pl.DataFrame, source: str = "(a DataFrame)") -> pl.DataFrame:
    """`df` with headers that are ehrfm's column names in another case ("Loss", "N_Params", "AUROC/mort") renamed.

    A spreadsheet's capitalised header is the same column: it was "lacks columns n_params, tokens, loss"
    with a "no tokens column" hint beside its "Tokens". Renamed only when the name is one of
    ehrfm's (RESULTS_COLUMNS, a utility prefix) and nothing else in the table claims it.
    """
    _refuse_duplicate_columns(source, df.columns, df.height)  # "loss" and "Loss": neither is certain
    known = {name for name, _ in RESULTS_COLUMNS}
    renames = {}
    for c in df.columns:
        low = c.lower()
        prefix = next((p for p in UTILITY_PREFIXES if low.startswith(p)), None)
        want = low if low in known else prefix + c[len(prefix):] if prefix else None
        if want and want != c and want not in df.columns:
            renames[c] = want
    if len(set(renames.values())) < len(renames):  # "Loss" and "LOSS": which one is meant is not certain
        return df
    return df.rename(renames)


def _rename_hint(columns, missing) -> str:
    """'; rename ...' for missing columns the table holds under another tool's name ("" when none)."""
    by_lower = {c.strip().lower(): c for c in columns}
    found = {want: next((by_lower[a] for a in COLUMN_ALIASES.get(want, ()) if a in by_lower), None) for want in (*missing, "flops")}
    optional = ["flops"] if "flops" not in columns else []  # else flops is taken as 6 N D
    renames = [f"'{found[w]}' -> {w}" for w in (*missing, *optional) if found[w]]
    hint = f"; another tool's names? rename {', '.join(renames)}" if renames else ""
    if "tokens" in missing and not found["tokens"] and ("flops" in columns or found["flops"]):
        hint += "; no tokens column: add tokens = flops / (6 x n_params), as Besiroglu et al. (2024) derive Chinchilla's"
    return hint


def _open_csv(path: Path, mode: str, **kwargs):
    """`path` opened for reading, through gzip when its name ends in .gz (.csv.gz, .tsv.gz)."""
    import gzip

    return (gzip.open if path.name.lower().endswith(".gz") else open)(path, mode, **kwargs)


def _csv_separator(path: Path) -> str:
    """',' unless the header line has none but has ';' or a tab.

    Spreadsheets in locales with decimal commas export CSV with ';' between fields: read with ',' such a
    table is one column named "run_id;budget;n_params;...", or, with decimal commas, rows of uneven width.
    """
    with _open_csv(path, "rt", errors="replace") as f:
        header = f.readline()
    return next((sep for sep in (";", "\t") if "," not in header and sep in header), ",")


def _name_ids(ids) -> str:
    ids = [str(i) for i in ids]
    shown = ", ".join(ids[:8])
    return shown + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")


def _numeric(df: pl.DataFrame, col: str, source: str, keep: np.ndarray | None = None) -> np.ndarray:
    """Column `col` as float64 (null -> NaN).

    Text (a CSV column with padded numbers, "1.5e9 ") is parsed after stripping blanks; UserError
    naming the column and how many rows are not numbers (never their content) when some are not.
    With `keep`, only those rows must be numbers: text in a row that is not fitted (a failed run's
    loss written "diverged") reads as NaN.
    """
    s = df[col]
    if s.dtype in (pl.Utf8, pl.Categorical, pl.Enum):
        s = s.cast(pl.Utf8).str.strip_chars()
        s = s.set(s == "", None)
        parsed = s.cast(pl.Float64, strict=False)
        text = (parsed.is_null() & s.is_not_null()).to_numpy()
        bad_rows = text & (True if keep is None else keep)
        bad = int(bad_rows.sum())
        comma = (bad_rows & s.str.contains(r"^[+-]?\d+,\d+$").fill_null(False).to_numpy()).sum()
        if bad and comma == bad:  # a spreadsheet in a European locale: 1,2 for 1.2 (the file ';'-separated)
            raise UserError(f"results table {source}: column {col} has {bad} {'' if keep is None else 'completed '}row(s) "
                            f"of {df.height} written with a decimal comma: export the table with a decimal point")
        if bad:
            raise UserError(f"results table {source}: column {col} has {bad} {'' if keep is None else 'completed '}row(s) "
                            f"of {df.height} that are not numbers "
                            f"(text such as 'n/a' or '1,000'): write plain numbers, or leave the cell empty")
        return parsed.to_numpy()
    if s.dtype == pl.Boolean:  # casts to 1.0/0.0: a loss column of true/false was fitted as losses of 1
        raise UserError(f"results table {source}: column {col} is boolean (true/false), not numbers")
    try:
        return s.cast(pl.Float64, strict=True).to_numpy()
    except pl.exceptions.PolarsError:
        raise UserError(f"results table {source}: column {col} is not numeric (dtype {s.dtype})") from None


def group_budgets(flops: np.ndarray, budget: np.ndarray | None = None) -> np.ndarray:
    """The IsoFLOP budget of each run.

    The planned budget when given, else the median flops of its group of runs whose log10 flops lie
    within BUDGET_GROUP_DECADES of their neighbours (runs near a planned budget join it).
    """
    out = np.full(flops.shape, np.nan) if budget is None else budget.astype(float).copy()
    missing = ~np.isfinite(out)
    out[~missing] = _merge_near(out[~missing])
    if not missing.any():
        return out
    planned = np.unique(out[~missing])
    order = np.argsort(flops[missing])
    logs = np.log10(flops[missing][order])
    groups, current = [], [0]
    for i in range(1, logs.size):
        if logs[i] - logs[i - 1] > BUDGET_GROUP_DECADES:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    assigned = np.empty(logs.size)
    for g in groups:
        center = float(np.median(10 ** logs[g]))
        if planned.size:
            near = planned[np.argmin(np.abs(np.log10(planned) - math.log10(center)))]
            if abs(math.log10(near) - math.log10(center)) <= BUDGET_GROUP_DECADES:
                center = float(near)
        assigned[g] = center
    filled = np.empty(logs.size)
    filled[order] = assigned
    out[missing] = filled
    return out


def _merge_near(budget: np.ndarray) -> np.ndarray:
    """Planned budgets within BUDGET_SAME_DECADES of each other as one: their most common value.

    A budget written as 1e11 by one tool and 1.0000001e11 by another (float formatting, CSV rounding)
    is one IsoFLOP group, not two groups of one run each.
    """
    values, counts = np.unique(budget, return_counts=True)  # sorted ascending
    if values.size < 2:
        return budget
    logs = np.log10(values)
    mapped = values.copy()
    start = 0
    for i in range(1, values.size + 1):
        if i == values.size or logs[i] - logs[i - 1] > BUDGET_SAME_DECADES:
            mapped[start:i] = values[start + int(np.argmax(counts[start:i]))]
            start = i
    return mapped[np.searchsorted(values, budget)]


def load_results(table: str | Path | pl.DataFrame, loss_column: str = "loss", name: str | None = None) -> Results:
    """Read a results table (parquet, CSV or a polars DataFrame), check it and keep completed runs.

    Args:
        table: the results table or its path.
        loss_column: the column fitted as the loss: "loss" (nats/token, the default) or
            "loss_per_event" (nats/event); Results.loss holds it, Results.loss_unit names its unit.
        name: what messages call a DataFrame `table` (e.g. the file it was read from).

    Raises:
        UserError: unreadable table, a missing required column, or a completed run whose
            required value is missing, NaN, infinite or non-positive (naming the column and run ids);
            completed runs of more than one vocab_size or context (losses in different units).
    """
    if isinstance(table, pl.DataFrame):
        df, source = table, name or "(a DataFrame)"
    else:
        from ehrfm.io import check_not_temporary

        check_not_temporary(table, "results table")
        source = str(table)
        df = _read_frame(Path(table))
    df = _ehrfm_case(df, source)
    required = (*RESULTS_REQUIRED, loss_column)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise UserError(
            f"results table {source} lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(needs {', '.join(required)}; has {', '.join(df.columns[:12])}){_rename_hint(df.columns, missing)}"
            + "".join(f"; {' and '.join(repr(c) for c in cs)} each could be {m}: keep one"
                      for m in missing if len(cs := [c for c in df.columns if c.strip().lower() == m]) > 1)
        )
    # Rows empty in every column are a spreadsheet's blank lines (",,,,," at the end of an export), not
    # runs: kept, they became "duplicated run_id <null>" errors or runs excluded for "status <null>".
    df = df.filter(~pl.all_horizontal(pl.all().is_null()))
    if df.height == 0:
        raise UserError(f"results table {source} is empty (0 rows; columns {', '.join(df.columns[:12])})")
    run_id = _run_ids(df, source)
    keep, excluded = _completed(df, run_id)
    _refuse_duplicate_ids(source, run_id, keep, excluded)
    _refuse_duplicate_rows(df, source, keep)
    values = {c: _numeric(df, c, source, keep) for c in required}
    # Vocabulary and context sizes, checked before ln(vocab_size) judges the losses: a size of 0, -5 or inf
    # would otherwise be fitted without a word (or crash) and fail only in `ehrfm recommend`'s model shape.
    sizes = {c: _numeric(df, c, source, keep) for c in ("vocab_size", "context") if c in df.columns}
    for col, v in sizes.items():
        _refuse(source, col, "not a positive whole number",
                keep & ~np.isnan(v) & ~((v >= 1) & np.isfinite(v) & (v == np.round(v))), run_id, "completed ")
    keep &= ~_blown_up(df, source, values, keep, run_id, excluded)
    if "flops" in df.columns:
        values["flops"] = _numeric(df, "flops", source, keep)
    for col, v in values.items():
        # an infinite `loss` never gets here: _blown_up excluded it above (worse than guessing), with a warning
        what = "missing, NaN or non-positive" if col == "loss" else "missing, NaN, infinite or non-positive"
        _refuse(source, col, what, keep & ~(np.isfinite(v) & (v > 0)), run_id, "completed ",
                hint="a run that failed or diverged: mark it in a status column (failed, diverged) or drop its row")
    if "flops" in values and keep.any():
        _refuse_unit_mismatch(source, values["flops"][keep], values["n_params"][keep], values["tokens"][keep],
                              run_id=run_id[keep])
    if keep.any():
        # with or without flops: tokens in billions with flops computed from them pass the FLOPs check
        _refuse_tokens_per_param(source, values["n_params"][keep], values["tokens"][keep], upper="flops" not in values)
    if keep.sum() == 0:
        named = _name_ids(f"{e['run_id']} ({e['reason'].split(':')[0]})" for e in excluded)
        values, counts = np.unique([e["reason"].split(":")[0] for e in excluded], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        tally = ", ".join(f"{values[i]} in {counts[i]}" for i in order[:6]) + (" ..." if values.size > 6 else "")
        raise UserError(f"results table {source} has no completed runs to fit ({df.height} rows, {len(excluded)} excluded: {named}; "
                        f"{tally}): only rows with status completed "
                        f"(or {', '.join(COMPLETED_SYNONYMS)}) are fitted")

    def positive(col: str) -> np.ndarray | None:
        """The optional column `col` (None when absent); non-positive values of kept runs refused."""
        v = _numeric(df, col, source) if col in df.columns else None
        if v is not None:
            _refuse(source, col, "non-positive or infinite", keep & ~np.isnan(v) & ~((v > 0) & np.isfinite(v)), run_id)
        return v

    budget, unique_tokens, epochs = positive("budget"), positive("unique_tokens"), positive("epochs")
    if budget is not None and np.isfinite(budget).any():
        keep &= ~_unplanned(budget, keep, run_id, excluded)
        if "flops" in df.columns:
            _refuse_off_budget(source, budget, values["flops"], values["tokens"], keep, run_id)
        elif keep.any():
            # Without flops, the planned budget is the only compute to check the units of n_params and tokens
            # against (parameters in millions, tokens in billions: Approach 2 then fits N_opt in C = budget
            # while Approach 3's frontier uses C = 6 N D, 1e15 times smaller).
            _refuse_unit_mismatch(source, budget[keep], values["n_params"][keep], values["tokens"][keep], col="budget",
                                  run_id=run_id[keep])
    if keep.any() and "flops" not in values:
        # Rows pasted in another unit (tokens in billions in a few rows) where no compute column checks each run
        # and the median passes the checks above: a count below 1 is none.
        for col in ("tokens", "n_params"):
            if (fraction := int((keep & (values[col] < 1)).sum())):
                raise UserError(f"results table {source}: column {col} is below 1 in {fraction} of {int(keep.sum())} "
                                f"completed runs (a count of {'tokens' if col == 'tokens' else 'parameters'} is at least "
                                "1): those rows in billions or millions? ehrfm reads plain counts: parameters, tokens")
    n_total = positive("n_params_total")
    if n_total is not None:
        # A total count (embeddings included) below the non-embedding one is some other number; the fits
        # use it as N by default (n_count "total"), which would move every N_opt by that factor.
        _refuse(source, "n_params_total", "below n_params (a total count includes the non-embedding parameters)",
                keep & (n_total < values["n_params"]), run_id)
    # epochs = tokens / unique_tokens: one fact in two columns. Either one gives the other (a table with only
    # epochs is still fitted on effective data); both written must agree, or the fits would read one
    # (Approach 3's effective tokens use unique_tokens) and the report the other.
    if epochs is None and unique_tokens is not None:
        epochs = values["tokens"] / unique_tokens
        _refuse(source, "epochs", "non-positive", keep & np.isfinite(epochs) & ~(epochs > 0), run_id)
    elif epochs is not None and unique_tokens is None:
        unique_tokens = values["tokens"] / epochs
    elif epochs is not None:
        with np.errstate(all="ignore"):
            off = np.abs(np.log(epochs * unique_tokens / values["tokens"])) > EPOCHS_TOLERANCE
        _refuse(source, "epochs", f"not tokens / unique_tokens (off by more than {EPOCHS_TOLERANCE:.0%})",
                keep & np.isfinite(epochs) & np.isfinite(unique_tokens) & off, run_id)
        # a cell left empty in one column is given by the other: an empty epochs beside tokens and unique_tokens
        # read as "not repeated" (a 44-epoch run left the repeated-data list, and --max-epochs kept it)
        with np.errstate(all="ignore"):  # a row left out may hold a 0
            epochs = np.where(np.isnan(epochs), values["tokens"] / unique_tokens, epochs)
            unique_tokens = np.where(np.isnan(unique_tokens), values["tokens"] / epochs, unique_tokens)
    utility, utility_se = _utility(df, source, keep, run_id)
    utility_boot = _utility_boot(df, source, keep, run_id)
    se_col = LOSS_SE_COLUMNS.get(loss_column)
    loss_se = _numeric(df, se_col, source) if se_col in df.columns else None
    if loss_se is not None:  # NaN = unknown; a negative or infinite standard error is no measurement
        _refuse(source, se_col, "negative or infinite", keep & ~np.isnan(loss_se) & ~((loss_se >= 0) & np.isfinite(loss_se)), run_id)

    def first_int(col):
        if col not in sizes:
            return None
        v = sizes[col][keep & ~np.isnan(sizes[col])]
        return int(v.max()) if v.size else None

    for col, why in (("vocab_size", "different tokenizers, whose losses in nats/token are not comparable"),
                     ("context", "different context lengths, whose losses per token are not comparable (a longer "
                                 "context predicts each token better)")):
        # one law through runs of two vocabularies mixes units: fitted without a word, recommended at the larger
        found = np.unique(sizes[col][keep & ~np.isnan(sizes[col])]) if col in sizes else np.array([])
        if found.size > 1:
            each = ", ".join(f"{int(x)} ({int((keep & (sizes[col] == x)).sum())} runs)" for x in found[:6])
            raise UserError(f"results table {source}: column {col} holds {found.size} values among the completed runs "
                            f"({each}): the runs used {why}; fit each {col}'s runs apart (filter the table)")

    res = Results(
        source=source, run_id=run_id, n_params=values["n_params"], tokens=values["tokens"], loss=values[loss_column],
        flops=values.get("flops", 6.0 * values["n_params"] * values["tokens"]),
        budget=np.full(df.height, np.nan) if budget is None else budget, unique_tokens=unique_tokens,
        epochs=epochs, utility=utility, utility_se=utility_se, utility_boot=utility_boot, vocab_size=first_int("vocab_size"), context=first_int("context"),
        n_rows=df.height, excluded=excluded, loss_column=loss_column, n_params_total=n_total,
        n_params_non_embedding=values["n_params"], loss_se=loss_se,
        budget_from="budget" if budget is not None and np.isfinite(budget[keep]).all() else
        "flops" if "flops" in df.columns else "6ND",
        flops_from="flops" if "flops" in df.columns else "6ND",
    )
    res = res.subset(keep)
    res.budget = group_budgets(res.flops, res.budget)
    _refuse_crowded_budgets(source, res)
    # Row order is not data: the same table exported in another order drew other bootstrap replicates at
    # the same seed (every interval moved). Runs are fitted in one order: budget, N, D, loss, run_id.
    return res.subset(np.lexsort((res.run_id.astype(str), res.loss, res.tokens, res.n_params, res.budget)))


def _refuse_crowded_budgets(source: str, res: Results) -> None:
    """UserError when planned budgets lie within BUDGET_GROUP_DECADES (12%) of each other.

    An IsoFLOP budget is the compute a ladder of sizes shares, planned >= 2x apart; a budget column
    whose values differ by a few percent run to run holds each run's own FLOPs (another tool's
    "budget", or flops copied into it), and splits every IsoFLOP parabola into groups of 1-2 runs
    (Approach 2 then fits nothing and Approach 1's envelope runs are not optima).
    """
    if res.budget_from != "budget":
        return
    values = np.unique(res.budget)
    gaps = np.diff(np.log10(values))
    close = np.flatnonzero(gaps < BUDGET_GROUP_DECADES)
    if close.size:
        crowded = np.unique(np.concatenate([close, close + 1]))
        i = close[0]
        raise UserError(
            f"results table {source}: column budget holds {values.size} values, {crowded.size} of them within "
            f"{10 ** BUDGET_GROUP_DECADES - 1:.0%} of another (e.g. {values[i]:.4g} and {values[i + 1]:.4g}): an IsoFLOP budget is "
            "the planned compute a ladder of model sizes shares, not each run's own FLOPs; write each run's planned "
            "budget, or drop the budget column to group the runs by their flops")


# flops / (n_params x tokens) of a transformer run: 6 for training on the parameters alone (2 forward,
# 4 backward); more with attention and the output layer over the non-embedding count (~800 for a
# 16-wide layer, 30,000 codes, context 4,096: ehrfm.shapes), down to ~3 over a total count that holds a
# large vocabulary's embeddings, and to ~1 for forward-only FLOPs. Outside this range a column is in
# another unit (tokens or parameters in millions or billions, FLOPs in PFLOP).
FLOPS_PER_PARAM_TOKEN_RANGE = (1.0, 1e5)


# Tokens per parameter of a real training run: Chinchilla-optimal is ~20; over-trained small models
# (Llama 3 8B: ~1,900; a 1M-parameter model on 10B tokens: 1e4) stay far below the upper bound, and no
# run trains a model on a thousandth of a token per parameter (1B parameters on 1M tokens). Outside this
# range the median run holds n_params or tokens in another unit: a minimal table (no flops, no budget)
# with tokens in billions was fitted as budgets of 1e9 FLOPs, D_opt "2 tokens" (ratio ~1e-8). The upper
# bound is 1e10, not 1e7: synthetic laws whose N term dies out at 3e4 parameters (tests/test_fit_holdout)
# sample 1e9 tokens per parameter; 1e10 still catches n_params in billions. It applies only to tables
# without flops: with flops, parameters in another unit fail the FLOPs check, and synthetic tables with
# a tiny N term (tests/test_fit_varpro: 2e10 tokens per parameter) are fitted as before.
TOKENS_PER_PARAM_RANGE = (1e-3, 1e10)
# No transformer has fewer parameters: the smallest of this package's family (1 layer, d_model 16) has
# ~3,000 without embeddings. A table whose n_params are in millions ("1.5") has a median run below it
# while its tokens per parameter (~2e7) stay inside the range above.
MIN_PARAMS = 100


def _refuse_tokens_per_param(source: str, n_params: np.ndarray, tokens: np.ndarray, upper: bool = True) -> None:
    """UserError when the median completed run has under MIN_PARAMS parameters or tokens / n_params outside TOKENS_PER_PARAM_RANGE.

    upper False: the ratio is checked only against the range's lower end (a table with flops).
    """
    ratio = tokens / n_params
    median = float(np.median(ratio))
    lo, hi = TOKENS_PER_PARAM_RANGE
    hi = hi if upper else float("inf")
    if not lo <= median <= hi:
        out = int(((ratio < lo) | (ratio > hi)).sum())
        unit = "tokens in billions or millions, or n_params in units" if median < lo else "n_params in millions or billions"
        raise UserError(
            f"results table {source}: columns tokens and n_params disagree: tokens / n_params is {median:.3g} in the "
            f"median completed run ({out} of {ratio.size} completed runs outside {lo:g}-{hi:g} tokens per parameter; "
            f"compute-optimal training is ~20): {unit}? ehrfm reads plain counts: parameters, tokens")
    if (median_n := float(np.median(n_params))) < MIN_PARAMS:
        raise UserError(
            f"results table {source}: column n_params is {median_n:.3g} in the median completed run ({int((n_params < MIN_PARAMS).sum())} "
            f"of {n_params.size} completed runs below {MIN_PARAMS}; no transformer has so few parameters): n_params in "
            "millions or billions? ehrfm reads plain counts: parameters, tokens")


def _refuse_unit_mismatch(source: str, flops: np.ndarray, n_params: np.ndarray, tokens: np.ndarray, col: str = "flops",
                          run_id: np.ndarray | None = None) -> None:
    """UserError when flops / (n_params x tokens) of the median completed run, or of any one run, is no transformer's.

    A table from another tool with tokens in billions ("1.5") or parameters in millions would be
    fitted as models of a few parameters trained on a few tokens: every N_opt and D_opt then comes
    out in the wrong unit. The ratio is 6 for C = 6 N D; FLOPS_PER_PARAM_TOKEN_RANGE allows for
    attention, embeddings and forward-only counts. `col` names the compute column checked: "flops",
    or "budget" in a table without flops (a planned run spends its budget to within one token). One
    row in another unit (a value pasted in billions) is refused too, naming the runs (`run_id`, (n,)):
    checked only at the median, it was fitted silently into a tight, wrong exponent (b 0.87 [0.86,
    0.88] where the law's is 0.48).
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        ratios = flops / (n_params * tokens)
    ratio = float(np.median(ratios))
    lo, hi = FLOPS_PER_PARAM_TOKEN_RANGE
    if lo <= ratio <= hi and run_id is not None:
        bad = ~((ratios >= lo) & (ratios <= hi))
        if bad.any():
            raise UserError(
                f"results table {source}: columns {col}, n_params and tokens disagree in {int(bad.sum())} of {len(ratios)} "
                f"completed runs ({_name_ids(run_id[bad])}): {col} / (n_params x tokens) is outside {lo:g}-{hi:g} there, "
                f"where the table's median run has {ratio:.3g}: is a value in another unit (tokens in billions, parameters "
                f"in millions, {col} in PFLOP)? ehrfm reads plain counts: parameters, tokens, FLOPs")
    if not lo <= ratio <= hi:
        raise UserError(
            f"results table {source}: columns {col}, n_params and tokens disagree: {col} / (n_params x tokens) is "
            f"{ratio:.3g} in the median completed run (training spends 6 per parameter and token, up to hundreds "
            f"with attention and the output layer of a tiny model): {'is n_params or tokens in millions or billions' if ratio > hi else f'is {col} in another unit (PFLOP, FLOPs per step)'}? "
            "ehrfm reads plain counts: parameters, tokens, FLOPs")


UNPLANNED_REASON = "not in the sweep's current plan (budget null)"
# A planned run trains D = floor(C / F) tokens (sweeps.plan), so budget - F < flops <= budget, F =
# flops / tokens being one token's FLOPs. Hand-made tables round D to the nearest token or write
# budgets with float jitter: a row passes within one token's FLOPs plus this share of its budget.
BUDGET_FLOPS_TOLERANCE = 1e-3


def _unplanned(budget: np.ndarray, keep: np.ndarray, run_id: np.ndarray, excluded: list) -> np.ndarray:
    """Kept rows with a null budget in a table that has planned budgets, each added to `excluded`.

    `sweep collect` writes budget null for runs of the sweep dir that its current plan no longer
    holds (another recipe, a dropped budget): grouped by FLOPs they would join a planned parabola
    they were not planned for. A table with no budget values at all is grouped by FLOPs instead.
    """
    out = keep & ~np.isfinite(budget)
    excluded.extend({"run_id": str(run_id[i]), "reason": UNPLANNED_REASON} for i in np.flatnonzero(out))
    return out


def _refuse_off_budget(source: str, budget: np.ndarray, flops: np.ndarray, tokens: np.ndarray, keep: np.ndarray,
                       run_id: np.ndarray) -> None:
    """UserError naming the runs whose flops do not match their budget as the planner rounds it.

    The planner gives budget - F < flops <= budget (F = flops / tokens, one token's FLOPs); a row
    passes within F + BUDGET_FLOPS_TOLERANCE * budget of its budget. A row outside (budget 1e10
    with flops 4e10) would be fitted in the wrong IsoFLOP parabola.
    """
    with np.errstate(all="ignore"):
        slack = flops / tokens + BUDGET_FLOPS_TOLERANCE * budget
        bad = keep & np.isfinite(budget) & ~(np.abs(flops - budget) <= slack)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise UserError(
            f"results table {source}: columns budget and flops disagree in {int(bad.sum())} completed run(s): "
            f"{_name_ids(run_id[bad])} (e.g. budget {budget[i]:.4g} vs flops {flops[i]:.4g}; a planned run's flops lie "
            f"within one token's FLOPs of its budget): correct the budget or flops column, or drop the budget column "
            "to group runs by flops")


def _refuse(source: str, col: str, what: str, bad: np.ndarray, run_id: np.ndarray, which: str = "", hint: str = "") -> None:
    """UserError naming the column and the run ids of the `bad` rows, if any (and `hint`: what to do)."""
    if bad.any():
        rows = " (row<i>: data row i, counting from 0)" if any(str(r).startswith("row") for r in run_id[bad]) else ""
        raise UserError(f"results table {source}: column {col} is {what} in {int(bad.sum())} {which}run(s): "
                        f"{_name_ids(run_id[bad])}{rows}{f'; {hint}' if hint else ''}")


def _run_ids(df: pl.DataFrame, source: str) -> np.ndarray:
    """The run_id column as str (row<i> where absent or empty, i counting rows from 0); duplicates: _refuse_duplicate_ids."""
    rows = np.array([f"row{i}" for i in range(df.height)])
    if "run_id" in df.columns:
        # a run whose id cell is empty is still a run: named by its row, as in a table without run_id
        # (all of them "<null>" were "duplicated ids")
        ids = df["run_id"].cast(pl.Utf8)
        run_id = np.where(ids.is_null().to_numpy(), rows, ids.fill_null("").to_numpy().astype(str))
    else:
        run_id = rows
    return run_id


def _refuse_duplicate_ids(source: str, run_id: np.ndarray, keep: np.ndarray, excluded: list) -> None:
    """UserError for duplicated run ids, except a retried run: its failed (pending ...) attempts beside the one completed.

    A tracker's export lists each attempt of a retried run under its name; the failed one is never
    fitted (it is in `excluded`, now said to be an earlier attempt), so only two completed rows of one
    id, or an id with no completed row at all, are ambiguous.
    """
    ids, counts = np.unique(run_id, return_counts=True)
    dup = ids[counts > 1]
    if not dup.size:
        return
    done = {r: int((keep & (run_id == r)).sum()) for r in dup}
    bad = [r for r in dup if done[r] != 1]
    if bad:
        raise UserError(f"results table {source}: column run_id has {len(bad)} duplicated id(s) "
                        f"({sum(int((run_id == r).sum()) for r in bad)} rows, {sum(done[r] for r in bad)} of them completed): "
                        f"{_name_ids(bad)}; only a retried run's failed attempts may share the id of its completed row")
    retried = set(dup.tolist())
    for e in excluded:
        if e["run_id"] in retried:
            e["reason"] += " (an earlier attempt of a run whose completed row is fitted)"


def _refuse_duplicate_rows(df: pl.DataFrame, source: str, keep: np.ndarray) -> None:
    """UserError when completed rows repeat another row in every column (a table concatenated twice).

    A repeated run would be fitted twice, weighting it double; two seeds of one shape differ in loss.
    """
    try:
        dup = df.is_duplicated().to_numpy()
    except pl.exceptions.PolarsError:  # list columns (auroc_boot/<task>): compare the scalar ones
        scalar = [c for c, t in df.schema.items() if not isinstance(t, (pl.List, pl.Array, pl.Struct))]
        dup = df.select(scalar).is_duplicated().to_numpy()
    dup &= keep
    if dup.any():
        first = np.flatnonzero(dup)
        raise UserError(f"results table {source}: {int(dup.sum())} rows are duplicates of another row in every column "
                        f"(rows {_name_ids(first)}, counting from 0): remove the repeats, or give each run a distinct run_id")
    # The same run under two ids (a table pasted twice with new ids, two collects of one sweep dir) was
    # fitted as seeds of one shape, each measurement counted twice and every interval too narrow. Seeds
    # differ in loss; two losses with more digits than a rounded CSV cell agreeing to every digit do not.
    others = [c for c, t in df.schema.items() if c != "run_id" and not isinstance(t, (pl.List, pl.Array, pl.Struct))]
    if "run_id" not in df.columns or "loss" not in others or not df.schema["loss"].is_float():
        return
    loss = df["loss"].to_numpy()
    with np.errstate(all="ignore"):
        precise = np.isfinite(loss) & (np.abs(loss - np.round(loss, 6)) > 0)
    same = df.select(others).is_duplicated().to_numpy() & keep & precise
    if same.any():
        raise UserError(f"results table {source}: {int(same.sum())} completed rows repeat another row in every column but run_id, "
                        f"loss to every digit (run ids {_name_ids(df['run_id'].cast(pl.Utf8).to_numpy()[same])}): one run listed "
                        "twice under two ids? Seeds of one shape differ in loss: remove the repeats")
    # A sweep's table differs between two runs in seed, wall_s and job_id even when one seed's loss was
    # copied from another's (a result.json copied, a run dir linked): the copy was fitted as a seed of no
    # scatter, which shrinks the pure error of the lack-of-fit test and every interval. Same shape, same loss.
    shape = [c for c in ("budget", "n_params", "n_params_total", "tokens", "loss") if c in others]
    rows = np.flatnonzero(keep & precise)
    copied = np.zeros(df.height, dtype=bool)
    copied[rows] = df[rows.tolist()].select(shape).is_duplicated().to_numpy()
    if copied.any():
        raise UserError(f"results table {source}: column loss: {int(copied.sum())} completed runs of one shape ({', '.join(shape[:-1])}) "
                        f"have the same loss to every digit (run ids {_name_ids(df['run_id'].cast(pl.Utf8).to_numpy()[copied])}): "
                        "one result copied to another seed? Seeds of one shape differ in loss: remove the copies or rerun them")
    # Losses rounded in the cell (a spreadsheet's 4 decimals) escape the digit test above: a table pasted twice
    # under new ids was 35 "seeds" of zero scatter. Two seeds may round alike once; every shape's, not.
    keys = [c for c in ("budget", "n_params", "n_params_total", "tokens") if c in others]
    groups = (df.filter(pl.Series(keep)).group_by(keys).agg(pl.len().alias("n"), pl.col("loss").n_unique().alias("losses"))
              .filter(pl.col("n") > 1))
    if groups.height >= 3 and (groups["losses"] == 1).all():
        raise UserError(f"results table {source}: column loss: each of the {groups.height} shapes run more than once has "
                        f"one loss in all of its {int(groups['n'].sum())} runs: the table pasted twice under new run ids? "
                        "Seeds of one shape differ in loss: remove the repeats")


STATE_COLUMNS = ("state", "run state", "run_state")  # another tracker's name of the status column (W&B: "State")


def _completed(df: pl.DataFrame, run_id: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Split rows into completed ones and excluded entries.

    (rows with status completed, or every row without a status column; the others as excluded
    entries naming their status and error). Without a status column, a "State" column (W&B's runs
    export: finished, crashed, running, killed) is read as it. A row with a non-empty `error` text is a
    failed run whatever its status (DESIGN.md section 3).
    """
    keep = np.ones(df.height, dtype=bool)
    excluded = []
    # W&B's runs export names it "State" (finished, crashed, running, ...): without a status column it is the status
    state = next((c for c in df.columns if c.strip().lower() in STATE_COLUMNS), None) if "status" not in df.columns else None
    column = "status" if "status" in df.columns else state
    # DESIGN.md section 3: a non-empty `error` marks a failed run, whatever its status says (a table of
    # runs whose only failure record is an error text fitted 3 OOM-killed runs as measurements)
    error = (df["error"].cast(pl.Utf8).str.strip_chars().fill_null("").to_list() if "error" in df.columns
             else [""] * df.height)
    failed = np.array([bool(e) for e in error], dtype=bool)
    if column is not None:
        # "Completed", " completed" (spreadsheets, other trackers) are the status completed
        status = df[column].cast(pl.Utf8).str.strip_chars().str.to_lowercase().fill_null("<null>").to_numpy().astype(str)
        # other trackers' word for a run that ended normally (W&B and MLflow "finished", "succeeded")
        status = np.where(np.isin(status, COMPLETED_SYNONYMS), str(Status.COMPLETED), status)
        for i in np.flatnonzero(status != Status.COMPLETED):
            excluded.append({"run_id": str(run_id[i]), "reason": f"status {status[i]}" + (f": {error[i]}" if error[i] else "")})
        keep &= status == Status.COMPLETED
    for i in np.flatnonzero(keep & failed):
        excluded.append({"run_id": str(run_id[i]), "reason": "failed: an error is recorded" + (
            f" beside status {status[i]}" if column is not None else "") + f": {error[i]}"})
    keep &= ~failed
    return keep, excluded


# The largest vocabulary a loss is checked against when the table has no vocab_size: 2^24 (16.8M) codes,
# far above any tokenizer (LLMs ~256k; EHR code vocabularies ~10^4-10^6).
MAX_VOCAB = 2**24


def _blown_up(df: pl.DataFrame, source: str, values: dict, keep: np.ndarray, run_id: np.ndarray, excluded: list) -> np.ndarray:
    """Exclude kept rows whose loss is worse than uniform guessing.

    Kept rows whose per-token loss is above uniform guessing (ln vocab_size) by more than
    its margin, each added to `excluded`: a finite blow-up a trainer did not catch. The margin is the
    trainer's (ehrfm.results.blow_up_margin, as divergence_reason applies it): DIVERGENCE_Z (3) times
    the run's eval standard error (`eval_loss_se`), or UNMEASURED_MARGIN (5%) of ln V where there is
    none, plus an untrained model's excess over ln V where d_model is given (ehrfm.results.untrained_excess).
    A tiny run that ends at ln V within its eval noise is a measurement.
    Checked on `loss` whatever column is fitted; ln(MAX_VOCAB) where vocab_size is absent.
    """
    if "loss" not in df.columns:
        return np.zeros(df.height, dtype=bool)
    # Without a vocab_size (column or cell), uniform guessing over MAX_VOCAB codes bounds nats/token: a
    # perplexity (13-40) in the loss column was fitted as nats/token, L_min "34 nats" = a vocabulary of 7e14.
    vocab = _numeric(df, "vocab_size", source) if "vocab_size" in df.columns else np.full(df.height, np.nan)
    uniform = np.where(np.isfinite(vocab) & (vocab > 0), np.log(np.where(vocab > 0, vocab, 1.0)), np.log(MAX_VOCAB))
    bound = ("ln(vocab_size)" if "vocab_size" in df.columns else
             f"ln(2^24) = {np.log(MAX_VOCAB):.4g} (no vocab_size column; no tokenizer has 2^24 = 16.8M tokens)")
    per_token = values["loss"] if "loss" in values else _numeric(df, "loss", source)
    se = _numeric(df, "eval_loss_se", source) if "eval_loss_se" in df.columns else np.zeros(df.height)
    margin = blow_up_margin(np.where(np.isfinite(uniform), uniform, 0.0), se)
    # as the trainer: an untrained model of width d_model sits above ln V by its initialisation's excess
    if "d_model" in df.columns and "vocab_size" in df.columns:
        # read leniently: a column never required before must not refuse a table (text: no allowance)
        width = df["d_model"].cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy()
        margin = margin + untrained_excess(width)
    blown = keep & np.isfinite(uniform) & (per_token > uniform + margin)
    checked = int((keep & np.isfinite(uniform) & np.isfinite(per_token)).sum())
    if blown.sum() >= 2 and blown.sum() >= BLOWN_UP_UNIT_SHARE * checked:
        # A quarter of the runs "worse than guessing" is not a sweep of blow-ups: the column holds another unit.
        raise UserError(
            f"results table {source}: column loss is above uniform guessing, {bound} nats/token, in "
            f"{int(blown.sum())} of {checked} completed runs: a loss in another unit, not blow-ups? ehrfm reads "
            "held-out cross-entropy in nats (natural log): convert bits (log2) with nats = bits x 0.6931 and a "
            "perplexity with nats = ln(perplexity), or correct the vocab_size column (runs that did blow up: "
            "status failed)")
    # A few such runs: blow-ups a trainer did not catch, or (without a vocab_size) a loss no tokenizer can
    # give (a perplexity of 40-137 in one row in five was fitted silently, 3 of 5 parabolas "concave").
    for i in np.flatnonzero(blown):
        own_vocab = np.isfinite(vocab[i]) and vocab[i] > 0
        bound_text = f"ln V = {uniform[i]:.4g}: a blow-up" if own_vocab else f"over 2^24 codes, {uniform[i]:.4g}: a blow-up or another unit"
        reason = (f"status completed but loss {per_token[i]:.4g} nats/token is above uniform guessing {bound_text}, not a "
                  "measurement") if np.isfinite(per_token[i]) else "status completed but loss infinite: a blow-up, not a measurement"
        excluded.append({"run_id": str(run_id[i]), "reason": reason})
    return blown


def _utility(df: pl.DataFrame, source: str, keep: np.ndarray, run_id: np.ndarray) -> tuple[dict, dict]:
    """Clinical metric columns and their standard errors, range-checked.

    ({"auroc/<task>" | "auprc/<task>": values}, {"auroc/<task>": standard errors from auroc_se/<task>});
    values of kept runs outside [0, 1] (standard errors outside [0, 0.5]) refused.
    """
    def bounded(col: str, lo: float, hi: float) -> np.ndarray:
        v = _numeric(df, col, source)
        # NaN is a missing value; inf is outside the range too (not a missing value to skip)
        _refuse(source, col, f"outside [{lo:g}, {hi:g}]", keep & ~np.isnan(v) & ~((v >= lo) & (v <= hi)), run_id)
        return v

    utility = {col: bounded(col, 0, 1) for col in df.columns if col.startswith(("auroc/", "auprc/"))}
    utility_se = {col: bounded("auroc_se/" + col[len("auroc/"):], 0, 0.5) for col in utility
                  if col.startswith("auroc/") and "auroc_se/" + col[len("auroc/"):] in df.columns}
    return utility, utility_se


def _utility_boot(df: pl.DataFrame, source: str, keep: np.ndarray, run_id: np.ndarray) -> dict[str, np.ndarray]:
    """{"auroc/<task>": (n, B) float64} from the list columns auroc_boot/<task> (NaN rows where null).

    UserError naming the file and column: not a list of numbers, kept runs whose lists differ in
    length (they cannot be the same resamples), or values outside [0, 1].
    """
    out: dict[str, np.ndarray] = {}
    for col in (c for c in df.columns if c.startswith("auroc_boot/")):
        task = col[len("auroc_boot/"):]
        if not isinstance(df.schema[col], pl.List) or not df.schema[col].inner.is_numeric():
            raise UserError(f"results table {source}: column {col} must be a list of numbers (got {df.schema[col]})")
        lengths = df[col].list.len().fill_null(0).to_numpy().astype(np.int64)  # a null list (a run not probed) has none
        present = keep & ~df[col].is_null().to_numpy()
        sizes = set(lengths[present].tolist())
        if len(sizes) > 1:
            raise UserError(f"results table {source}: column {col} holds lists of {len(sizes)} different lengths "
                            f"({', '.join(map(str, sorted(sizes)))}): not one shared set of resamples")
        if not sizes:
            continue
        B = sizes.pop()
        mat = np.full((df.height, B), np.nan)
        values = df[col].to_list()
        for i in np.flatnonzero(present):
            mat[i] = np.asarray([np.nan if v is None else v for v in values[i]], dtype=np.float64)
        bad = present & np.any(np.isfinite(mat) & ((mat < 0) | (mat > 1)), axis=1)
        _refuse(source, col, "outside [0, 1]", bad, run_id)
        out["auroc/" + task] = mat
    return out

