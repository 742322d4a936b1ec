"""MEDS dataset dir -> token dir: ETHOS-style event tokens (DESIGN.md section 2).

    tokenize(meds, out, tokenizer=None, overwrite=False, min_count=None, codes=None)

Fitted on the train split only (vocab, quantile edges) and applied unchanged to tuning and
held_out; `tokenizer=<TOK0>/tokenizer.json` applies an existing tokenizer unchanged instead of
fitting (to another MEDS dataset, or to keep ids comparable), its code mode included.

Token conventions (others rely on them; they are also written into tokenizer.json):
- Code tokens. `codes="flat"`: exactly the MEDS code strings (`MEDS_DEATH`,
  `HOSPITAL_DISCHARGE//HOME`, `LAB//50912//mg/dL`, ...); codes seen fewer than `min_count` times
  in train become `UNK`. `codes="hierarchical"` (the default, as in the seed study via ETHOS):
  ICD diagnosis and procedure codes become 1-7 hierarchy tokens (a head, then continuation
  tokens listed in tokenizer.json's `continuation_tokens`), and a rare code falls back to its
  nearest frequent ancestor instead of UNK; every other frequent code is still its own MEDS
  string (tokenization/hierarchy.py). Either way outcome tokens (`MEDS_DEATH`,
  `HOSPITAL_DISCHARGE//...`, `ICU_ADMISSION//...`) are found by exact string or prefix.
  `MEDS_BIRTH` is not emitted (it becomes the age token); text_value is not tokenized.
- Special tokens: `PAD` (id 0), `UNK`, `TIMELINE_START`, `TIMELINE_END`, `Q1`..`Q10`, the 13
  ETHOS interval tokens `5m-15m 15m-1h 1h-2h 2h-6h 6h-12h 12h-1d 1d-3d 3d-1w 1w-2w 2w-1mt
  1mt-3mt 3mt-6mt >6mt`, and age tokens `AGE//0-4`, ..., `AGE//85-89`, `AGE//90+`, `AGE//UNK`.
- A subject's sequence: TIMELINE_START, its static codes (e.g. `GENDER//F`), its age token at
  the first timed event; then, per event in time order, an interval token when the gap since
  the previous event is >= 5 minutes (one token, `>6mt` for 6 months or more), the code token(s),
  and a `Qk` token directly after them when the event has a numeric value and the code has
  fitted deciles (k = 1 + number of train deciles <= value, where a decile repeated (a value
  that fills several deciles: a common dose, a rounded lab) counts once, and once more for the
  values above it: that value gets a Q token of its own, and the values above it the next one;
  `quantile_rule` "ties" in tokenizer.json, since 2026-12-06. A tokenizer without the key counts
  every decile <= value, as its models were trained: there every value at or above a repeated
  decile shared one token, e.g. a code valued 0 in 92% of rows and 1 in 8% gave both values Q10);
  finally TIMELINE_END.
- times.npy: every token has a time (int64 us since epoch), non-decreasing per subject. The
  prefix gets the time of the subject's first timed event, an interval token the time of the
  event it precedes, a Q token its code's time, TIMELINE_END the last event's time. So "tokens
  with time <= t" is exactly the history known at t (a discharge token has the discharge time).

Output (see ehrfm/tokens.py for the reader):
    tokenizer.json, stats.json, config.json, {split}/tokens.npy, {split}/times.npy,
    {split}/index.parquet (subject_id, offset, length)
Subjects are written in ascending subject_id order within each split, whatever the MEDS shards'
names, number and order (_in_subject_order): one dataset sharded otherwise gives the same files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ehrfm.errors import UserError
from ehrfm.io import (
    as_os_error,
    atomic_dir,
    check_not_temporary,
    check_overwrite,
    progress,
    remove_stale_temporaries,
    summary,
    temporary_sibling,
    warn,
    write_json,
)
from ehrfm.meds_io import SPLITS, MedsDataset, Shard, open_meds, read_shard, scan_shard, scan_shards
from tokenization.hierarchy import CODE_MODES, FLAT, HIERARCHICAL, MAX_PARTS, code_parts

EVENT_COLUMNS = ("subject_id", "time", "code", "numeric_value")
TOKENIZER_FORMAT = "ehrfm-ethos-tokenizer"
TOKENIZER_VERSION = 3  # 2: the "codes" mode and continuation_tokens (absent in 1: flat); 3: quantile_rule "ties"
# How a value becomes its Q token (module docstring): "ties" splits repeated deciles; "all" (tokenizers
# without the key, versions 1-2) counts every decile <= value.
QUANTILE_RULES = ("ties", "all")
# Share of events repeating an earlier row exactly above which tokenize warns: equal measurements at one time
# are real but rare (57 of the demo cohort's 15.2M events, 4e-6); an ETL that wrote its events twice has ~50%.
# A code family (LAB, POE, ...) is said to look written twice when at least this share of its events repeat an earlier
# row in every event column: a table an ETL joined twice repeats 50% of its rows; the MIMIC-IV demo's own repeats (orders,
# doses given twice at one time) reach 34% (POE) and 8% of all events. Families under REPEATED_FAMILY_MIN_EVENTS
# events or REPEATED_FAMILY_MIN_SHARE of their split's are too few to tell.
REPEATED_FAMILY_SAID = 0.45
REPEATED_FAMILY_MIN_EVENTS = 20
REPEATED_FAMILY_MIN_SHARE = 0.01
MINUTE_US = 60 * 1_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
MONTH_US = int(30.4375 * DAY_US)

# ETHOS's 13 interval tokens: (name, lower bound inclusive); the upper bound is the next one's.
INTERVALS = [
    ("5m-15m", 5 * MINUTE_US), ("15m-1h", 15 * MINUTE_US), ("1h-2h", HOUR_US), ("2h-6h", 2 * HOUR_US),
    ("6h-12h", 6 * HOUR_US), ("12h-1d", 12 * HOUR_US), ("1d-3d", DAY_US), ("3d-1w", 3 * DAY_US),
    ("1w-2w", 7 * DAY_US), ("2w-1mt", 14 * DAY_US), ("1mt-3mt", MONTH_US), ("3mt-6mt", 3 * MONTH_US),
    (">6mt", 6 * MONTH_US),
]
N_QUANTILES = 10
QUANTILE_TOKENS = [f"Q{i}" for i in range(1, N_QUANTILES + 1)]
AGE_BIN_YEARS = 5
AGE_TOKENS = [f"AGE//{a}-{a + AGE_BIN_YEARS - 1}" for a in range(0, 90, AGE_BIN_YEARS)] + ["AGE//90+", "AGE//UNK"]
SPECIAL_TOKENS = ["PAD", "UNK", "TIMELINE_START", "TIMELINE_END"] + QUANTILE_TOKENS + [n for n, _ in INTERVALS] + AGE_TOKENS
BIRTH_CODE = "MEDS_BIRTH"
CHUNK_SUBJECTS = 2048  # subjects encoded at a time
# A MEDS shard longer than this is read this many rows at a time (_shard_chunks): other ETLs write
# shards of 10^8 events (MEDS_transforms: 50,000 subjects per shard; MIMIC-IV 3.1 with chartevents).
READ_ROWS = 1 << 20
NOT_EMITTED = (BIRTH_CODE,)
FIT_BATCH_VALUES = 1 << 24  # numeric values held at once while fitting deciles (~16M: a few hundred MB)

# Written into tokenizer.json, whose sha256 is the token dir's fingerprint: a change here changes the fingerprint of
# every token dir made after it, the same vocabulary too (runs and sweeps of the earlier one are then refused on it).
CONVENTIONS = (
    "codes=flat: code tokens are the MEDS code strings; codes with train count < min_count -> UNK. "
    "codes=hierarchical: ICD codes -> head (category, else chapter) + continuation tokens, other codes -> the "
    "code string, rare ones -> their nearest kept ancestor (<prefix>//*), none kept -> UNK (tokenization/hierarchy.py). "
    "Sequence per subject: "
    "TIMELINE_START, static codes, AGE//<bin> (age at first timed event), then per event: [interval token if "
    "gap >= 5m] code token(s) [Qk if numeric and the code has deciles], then TIMELINE_END. "
    "Qk: k = 1 + #(deciles <= value). "
    "Times: prefix = first timed event, interval = the event it precedes, Q = its code, END = last event. "
    "MEDS_BIRTH is not emitted; text_value is ignored."
)


@dataclass
class TokenizeConfig:
    """Everything that decides a token dir; saved as its config.json.

    min_count is in train events; codes is "hierarchical" or "flat"; n_quantiles is the number of
    value bins per numeric code (its n_quantiles - 1 train quantiles are the edges).
    """
    meds_dir: str
    out: str
    tokenizer: str | None = None  # an existing tokenizer.json applied unchanged
    min_count: int = 10
    codes: str = HIERARCHICAL  # how codes become tokens: hierarchical | flat (tokenization/hierarchy.py)
    n_quantiles: int = N_QUANTILES


# ------------------------------------------------------------------------------- MEDS input
def meds_shards(meds: Path | MedsDataset) -> dict[str, list[Shard]]:
    """Per split, its shards.

    Per split, its shards (the one MEDS reader, ehrfm.meds_io: layouts, split aliases, column
    and static-code checks). `meds` is a dataset dir or an already opened MedsDataset.
    """
    return (meds if isinstance(meds, MedsDataset) else open_meds(meds)).shards


def _scan(shards: list[Shard]) -> pl.LazyFrame:
    return scan_shards(shards, EVENT_COLUMNS)


def _read_shard(shard: Shard) -> tuple[pl.DataFrame, bool]:
    """A shard's events, sorted, and whether the file was sorted so already.

    Sorted by (subject_id, time), static rows first, rows at one time in file order. MEDS requires
    that order; other tools' shards may not keep it.
    """
    df = read_shard(shard, EVENT_COLUMNS)
    sid, t = pl.col("subject_id"), pl.col("time").dt.epoch("us").fill_null(np.iinfo(np.int64).min)  # statics first
    back = (sid < sid.shift(1)) | ((sid == sid.shift(1)) & (t < t.shift(1)))  # compared, not subtracted: no overflow
    was_sorted = not df.select(back.any()).item()
    if was_sorted:
        return df, True
    return df.sort(["subject_id", "time"], nulls_last=False, maintain_order=True), False


def _shard_chunks(shard: Shard, read_rows: int | None = None):
    """A shard's chunks of whole subjects, sorted (as _subject_chunks of _read_shard), and whether it was sorted.

    A shard of more than `read_rows` rows that is sorted (checked a slice at a time on subject_id,
    time and code) is read `read_rows` rows at a time, a slice's last subject held back for the
    next: memory follows the slice, not the shard (read whole, it grew with the shard's events).
    An unsorted one is read whole and sorted, as before.
    """
    import pyarrow.parquet as pq

    read_rows = read_rows or READ_ROWS
    n = pq.ParquetFile(shard.path).metadata.num_rows
    if n > read_rows and _sorted_by_slices(shard, n, read_rows):
        return _sliced_chunks(shard, n, read_rows), True
    df, was_sorted = _read_shard(shard)
    return _subject_chunks(df, CHUNK_SUBJECTS), was_sorted


def _sorted_by_slices(shard: Shard, n: int, read_rows: int) -> bool:
    """Whether the shard's rows are sorted by (subject_id, time), statics first, read `read_rows` rows at a time."""
    sid, t = pl.col("subject_id"), pl.col("time").dt.epoch("us").fill_null(np.iinfo(np.int64).min)
    back = (sid < sid.shift(1)) | ((sid == sid.shift(1)) & (t < t.shift(1)))
    prev = None
    for offset in range(0, n, read_rows):
        df = read_shard(shard, ("subject_id", "time", "code"), rows=(offset, read_rows)).select("subject_id", "time")
        df = pl.concat([prev, df]) if prev is not None else df
        if df.select(back.any()).item():
            return False
        prev = df.tail(1)
    return True


def _sliced_chunks(shard: Shard, n: int, read_rows: int):
    """Chunks of whole subjects of a sorted shard, read `read_rows` rows at a time (see _shard_chunks)."""
    carry = None
    for offset in range(0, n, read_rows):
        df = read_shard(shard, EVENT_COLUMNS, rows=(offset, read_rows))
        df = pl.concat([carry, df]) if carry is not None else df
        carry = None
        if offset + read_rows < n and df.height:  # the last subject may go on in the next slice
            last = df.height - int((df["subject_id"] == df["subject_id"][-1]).sum())
            carry, df = df.slice(last), df.slice(0, last)
        yield from _subject_chunks(df, CHUNK_SUBJECTS)


# ------------------------------------------------------------------------------- fitting
# Code families that are the clinical outcomes (labels' and zero-shot rollouts'): a rare code of one falls back to its
# family's root (`ICU_ADMISSION//*`, `MEDS_DEATH`) however few events reach it, never to UNK. An ICU admission to a
# rare unit (the MIMIC-IV demo's Neuro SICU, 3 in train) was UNK: no rollout could reach it as the outcome.
OUTCOME_FAMILIES = ("MEDS_DEATH", "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "ICU_ADMISSION", "ICU_DISCHARGE")
# Codes whose own token decides a label or a rollout (a death, a discharge to no known place:
# ehrfm.clinical.labels.UNKNOWN_DISCHARGE_LOCATIONS, read as they read it), kept in hierarchical mode when any train
# event has one.
# Folded into HOSPITAL_DISCHARGE//* (the MIMIC-IV demo's 14 DIED under --min-count 30), a rollout could not tell
# a death from a live discharge.
DECIDING_PREFIX = "HOSPITAL_DISCHARGE//"


def is_deciding_code(code: str) -> bool:
    """A discharge code whose place is DIED or unknown, in any case or spacing, as the labels and rollouts read it."""
    from ehrfm.clinical.labels import UNKNOWN_DISCHARGE_LOCATIONS

    return code.startswith(DECIDING_PREFIX) and code[len(DECIDING_PREFIX):].strip().upper() in UNKNOWN_DISCHARGE_LOCATIONS


def fit_vocab(counts: dict[str, int], mode: str, min_count: int) -> tuple[dict[str, int], dict[str, int]]:
    """The code tokens to keep, fitted bottom-up on the code hierarchy (tokenization.hierarchy).

    A head candidate is kept when at least `min_count` train events would be encoded with it:
    its own events plus those of its descendants that are not kept themselves (so a rare code's
    events count for its nearest kept ancestor, and every kept token is used >= min_count times, but
    the root of an OUTCOME_FAMILIES family and the deciding codes (is_deciding_code), kept in hierarchical mode when any
    event reaches them; flat mode is DESIGN.md's, rare codes UNK).
    A continuation token at position j is kept when >= min_count events whose head and earlier
    continuations are kept carry it. In flat mode this is exactly "codes with count >= min_count".

    Args:
        counts: train events per MEDS code (codes never emitted, like MEDS_BIRTH, left out).
        mode: "hierarchical" or "flat".
        min_count: the least number of train events a token must encode.

    Returns:
        (heads, continuations): token -> the number of train events it encodes.
    """
    parts = {code: code_parts(code, mode) for code in counts}
    residual: dict[str, int] = {}
    parent: dict[str, str | None] = {}
    depth: dict[str, int] = {}
    for code, (chain, _) in parts.items():
        residual[chain[0]] = residual.get(chain[0], 0) + counts[code]
        for i, t in enumerate(chain):
            parent[t] = chain[i + 1] if i + 1 < len(chain) else None
            depth[t] = len(chain) - 1 - i
    heads: dict[str, int] = {}
    for t in sorted(depth, key=lambda t: (-depth[t], t)):  # children before their parents
        r = residual.get(t, 0)
        outcome_root = r and mode == HIERARCHICAL and parent[t] is None and t.split("//")[0] in OUTCOME_FAMILIES
        deciding = r and mode == HIERARCHICAL and is_deciding_code(t)
        if t not in SPECIAL_TOKENS and (r >= min_count or outcome_root or deciding):
            heads[t] = r
        elif r and parent[t] is not None:
            residual[parent[t]] = residual.get(parent[t], 0) + r
    continuations: dict[str, int] = {}
    alive = [code for code, (chain, _) in parts.items() if chain[0] in heads]
    for j in range(MAX_PARTS - 1):
        tally: dict[str, int] = {}
        for code in alive:
            rest = parts[code][1]
            if len(rest) > j:
                tally[rest[j]] = tally.get(rest[j], 0) + counts[code]
        kept = {t: n for t, n in tally.items() if n >= min_count and t not in SPECIAL_TOKENS}
        continuations.update(kept)
        alive = [code for code in alive if len(parts[code][1]) > j and parts[code][1][j] in kept]
    return heads, continuations


def _warn_codes_named_as_special_tokens(counts: dict[str, int], mode: str) -> None:
    """Warn, naming each, of MEDS codes whose token would be one of SPECIAL_TOKENS ("Q1", "TIMELINE_END", "AGE//0-4").

    fit_vocab never keeps such a token (a code "Q1" must not read as a value's decile), so their
    events become UNK or their parent's token; the UNK warning blamed their rarity.
    """
    special = set(SPECIAL_TOKENS)
    clash = {}
    for code, n in counts.items():
        chain, rest = code_parts(code, mode)
        if chain[0] in special or special.intersection(rest):
            clash[code] = n
    if clash:
        top = sorted(clash.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        warn(f"tokenize: {len(clash)} MEDS code(s) of the train split name ehrfm's special tokens (PAD, UNK, TIMELINE_*, "
             f"Q1..Q{N_QUANTILES}, interval and AGE// tokens): {', '.join(f'{c} ({n:,} events)' for c, n in top)}"
             f"{' ...' if len(clash) > 5 else ''}; they are encoded as UNK or their parent code's token, never as the special "
             "token: rename them in the MEDS data (e.g. with a prefix) to keep them")


def fit_tokenizer(meds: Path | MedsDataset, min_count: int = 10, n_quantiles: int = N_QUANTILES, codes: str = HIERARCHICAL,
                  batch_values: int | None = None) -> dict:
    """Fit vocab and per-code quantile edges on the train split of a MEDS dataset, in bounded memory.

    Code counts are summed over the train shards one shard at a time; the deciles are exact
    (polars' linear interpolation on all of a code's train values) and fitted a batch of codes
    at a time, each batch holding at most `batch_values` values (one code with more is a batch
    of its own; the values are spilled to a temporary directory batch by batch in one more pass
    over the shards, read READ_ROWS rows at a time), so memory follows a slice or a batch, not a
    shard or the split.

    Args:
        meds: a MEDS dataset dir with a train split (or one already opened with ehrfm.meds_io.open_meds).
        min_count: the least number of train events a code token must encode (fit_vocab).
        n_quantiles: value bins per numeric code (edges: the train deciles, float32-rounded).
        codes: "hierarchical" (ETHOS-style hierarchy tokens, tokenization.hierarchy) or "flat".
        batch_values: the most numeric values held at once for the deciles (default
            FIT_BATCH_VALUES); any value gives the same edges.

    Returns:
        The tokenizer dict written as tokenizer.json (vocab: token id -> string).

    Raises:
        UserError: no train split, or one without events.
    """
    if codes not in CODE_MODES:
        raise UserError(f"--codes must be one of {', '.join(CODE_MODES)} (got {codes!r})")
    shards = meds_shards(meds).get("train")
    if not shards:
        where = meds.root if isinstance(meds, MedsDataset) else meds
        raise UserError(f"{where}: no train split to fit the tokenizer on (or pass --tokenizer)")
    counts, n_subjects = _train_counts(shards)
    if counts.height == 0 or int(counts["n"].sum()) == 0:
        where = meds.root if isinstance(meds, MedsDataset) else meds
        raise UserError(f"{where}: the train split has 0 events ({len(shards)} shard(s)); a tokenizer fitted on it "
                        "would know no code (check the splits, or pass --tokenizer)")
    code_counts = dict(zip(counts["code"].to_list(), counts["n"].to_list(), strict=True))
    _warn_codes_named_as_special_tokens(code_counts, codes)
    heads, continuations = fit_vocab(code_counts, codes, min_count)
    kept = {**heads, **continuations}
    tokens = sorted(kept, key=lambda t: (-kept[t], t))
    # Deciles only for codes that are their own head token: a fallback ancestor mixes codes.
    numeric = counts.filter((pl.col("n_num") > 0) & pl.col("code").is_in(list(heads)))
    quantile_edges = _quantile_edges(shards, dict(numeric.select("code", "n_num").iter_rows()), n_quantiles,
                                     batch_values)
    return {
        "format": TOKENIZER_FORMAT,
        "version": TOKENIZER_VERSION,
        "conventions": CONVENTIONS,
        "codes": codes,
        "min_count": int(min_count),
        "n_quantiles": int(n_quantiles),
        "special_tokens": SPECIAL_TOKENS,
        "interval_tokens": [{"token": n, "min_us": lo} for n, lo in INTERVALS],
        "quantile_tokens": QUANTILE_TOKENS[:n_quantiles],
        "age_tokens": AGE_TOKENS,
        "age_bin_years": AGE_BIN_YEARS,
        "not_emitted": list(NOT_EMITTED),
        "fitted_on": {"split": "train", "subjects": int(n_subjects), "events": int(counts["n"].sum()),
                      "codes_seen": counts.height, "codes_kept": len(tokens)},
        "vocab": SPECIAL_TOKENS + tokens,
        "continuation_tokens": sorted(continuations),
        "quantile_edges": quantile_edges,
        "quantile_rule": QUANTILE_RULES[0],
    }


# MEDS's numeric_value is float32; a float64 value beyond its range would become an infinite edge.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _valid_number() -> pl.Expr:
    """A numeric value that is a finite number float32 can hold.

    NaN (pandas' null), +-inf and float64 values beyond float32's range (|x| > 3.4e38, from an ETL
    that writes float64) are read as no value: their decile edges, rounded to float32, would be
    infinite and written into tokenizer.json as non-standard JSON (`Infinity`).
    """
    return pl.col("numeric_value").is_not_null() & (pl.col("numeric_value").abs() <= FLOAT32_MAX)


def _train_counts(shards: list[Shard]) -> tuple[pl.DataFrame, int]:
    """Train code counts, and the number of train subjects.

    Per code (MEDS_BIRTH left out): train events `n` and events with a numeric value `n_num`,
    summed shard by shard; and the number of train subjects.
    """
    per_shard, subjects = [], []
    for shard in shards:
        lf = scan_shards([shard], EVENT_COLUMNS)
        per_shard.append(
            lf.filter(~pl.col("code").is_in(list(NOT_EMITTED)))
            .group_by("code").agg(pl.len().alias("n"), _valid_number().sum().alias("n_num"))
            .collect(engine="streaming"))
        subjects.append(lf.select(pl.col("subject_id").unique()).collect(engine="streaming")["subject_id"].to_numpy())
    counts = (pl.concat(per_shard).group_by("code").agg(pl.col("n").sum(), pl.col("n_num").sum()).sort("code")
              if per_shard else pl.DataFrame(schema={"code": pl.String, "n": pl.UInt32, "n_num": pl.UInt32}))
    n_subjects = len(np.unique(np.concatenate(subjects))) if subjects else 0
    return counts, n_subjects


def _quantile_edges(shards: list[Shard], n_values: dict[str, int], n_quantiles: int,
                    batch_values: int | None = None, read_rows: int | None = None) -> dict[str, list[float]]:
    """Train value quantiles per numeric code.

    code -> its n_quantiles - 1 train quantiles (linear interpolation, float32-rounded), for the
    codes of `n_values` (code -> its number of valid values).

    The codes are cut into batches of at most `batch_values` values (in code order). One batch:
    fitted in memory. Several: one pass over the shards, each read `read_rows` rows at a time
    (default READ_ROWS), appends each slice's (code index, value) rows to a temporary file per
    batch, then each batch's file is read and fitted in turn, so memory follows the larger of a
    slice and a batch, and the shards are read once. (Before 2026-12-03 a whole shard's values
    were collected at once: another ETL's shard of 10^8 events held them all.)
    """
    import pyarrow.parquet as pq

    budget = batch_values or FIT_BATCH_VALUES
    read_rows = read_rows or READ_ROWS
    qs = [i / n_quantiles for i in range(1, n_quantiles)]
    codes = sorted(n_values)
    batch_of, held, n_batches = [], budget, 0
    for code in codes:
        if held + n_values[code] > budget:
            n_batches += 1
            held = 0
        batch_of.append(n_batches - 1)
        held += n_values[code]
    lookup = pl.DataFrame({"code": codes, "_c": range(len(codes)), "_b": batch_of},
                          schema={"code": pl.String, "_c": pl.UInt32, "_b": pl.UInt32})
    deciles = [pl.col("numeric_value").quantile(q, interpolation="linear").alias(f"q{i}") for i, q in enumerate(qs)]

    def values(lf: pl.LazyFrame) -> pl.LazyFrame:
        return (lf.filter(_valid_number()).select("code", pl.col("numeric_value").cast(pl.Float64))
                .join(lookup.lazy(), on="code", how="inner").select("_b", "_c", "numeric_value"))

    if n_batches <= 1:
        fitted = [values(_scan(shards)).group_by("_c").agg(deciles).collect(engine="streaming")]
    else:
        fitted = []
        with _spill_dir() as spill:
            writers: dict[int, pq.ParquetWriter] = {}
            try:
                for shard in shards:
                    n = pq.ParquetFile(shard.path).metadata.num_rows
                    for offset in range(0, n, read_rows):
                        df = values(scan_shard(shard, EVENT_COLUMNS, rows=(offset, read_rows))).collect()
                        for (b,), part in df.partition_by("_b", as_dict=True, include_key=False).items():
                            table = part.to_arrow()
                            try:
                                if b not in writers:
                                    writers[b] = pq.ParquetWriter(spill / f"{b}.parquet", table.schema, compression="none")
                                writers[b].write_table(table)
                            except Exception as e:  # a full /tmp (small on cluster nodes): the traceback named no path
                                raise _spill_error(e, spill) from None
                        del df
                for w in writers.values():
                    try:
                        w.close()  # writes the file's footer: can fail on a full disk too
                    except Exception as e:
                        raise _spill_error(e, spill) from None
            except BaseException:
                for w in writers.values():  # pyarrow's close() of a closed writer does nothing
                    with contextlib.suppress(Exception):
                        w.close()
                raise
            for b in sorted(writers):
                fitted.append(pl.scan_parquet(spill / f"{b}.parquet").group_by("_c").agg(deciles).collect(engine="streaming"))
    edges: dict[str, list[float]] = {}
    for df in fitted:
        for row in df.iter_rows():
            edges[codes[row[0]]] = [float(np.float32(x)) for x in row[1:]]
    return {c: edges[c] for c in sorted(edges)}


@contextlib.contextmanager
def _spill_dir():
    """A fresh directory in TMPDIR for the fit's spill files, removed on leaving.

    Named as ehrfm's temporaries are (`ehrfm-fit.tmp-<pid>-<host>-<random>`), so that the spill
    of a fit killed by kill -9 or the OOM killer (gigabytes on a large dataset, in a node's small
    /tmp) is removed by the next fit on this machine instead of staying for good.
    """
    base = Path(tempfile.gettempdir()) / "ehrfm-fit"
    remove_stale_temporaries(base)
    spill = temporary_sibling(base)
    spill.mkdir()
    try:
        yield spill
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _spill_error(e: Exception, spill: Path) -> Exception:
    """The error to raise for `e`, a failed write of the fit's spill files under `spill`.

    An OS error (a full disk, in any library's wording) becomes one line naming the temporary
    directory and TMPDIR; any other error is `e` itself.
    """
    named = as_os_error(e, spill)
    if named is None:
        return e
    return UserError(f"cannot write the tokenizer fit's temporary files in {spill.parent}: {named.strerror}; "
                     "set TMPDIR to a directory with room")


def load_tokenizer(path: str | os.PathLike) -> dict:
    """Read a tokenizer.json (or a token dir's), as written; UserError naming the file when it is not one."""
    path = Path(path)
    check_not_temporary(path, "tokenizer")  # a killed tokenize's temporary holds a tokenizer.json its data never matched
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"tokenizer {path} not found")
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"tokenizer {path} is not valid JSON (line {e.lineno})") from None
    except UnicodeDecodeError as e:  # tokenizer.json is UTF-8 (since 2026-12-03; the locale's encoding before)
        raise UserError(f"tokenizer {path} is not UTF-8 text (byte {e.start})") from None
    if not isinstance(tok, dict) or tok.get("format") != TOKENIZER_FORMAT:
        what = tok.get("format") if isinstance(tok, dict) else f"a JSON {type(tok).__name__}"
        raise UserError(f"{path} is not an ehrfm tokenizer (format {what!r})")
    if code_mode(tok) not in CODE_MODES:
        raise UserError(f"{path}: key 'codes' is {tok.get('codes')!r}, expected one of {', '.join(CODE_MODES)}")
    _check_tokenizer(tok, path)
    return tok


# The keys _Encoder and tokenize() read (continuation_tokens and codes may be absent: version 1).
TOKENIZER_KEYS = ("vocab", "special_tokens", "quantile_edges", "n_quantiles", "interval_tokens", "age_tokens",
                  "age_bin_years", "not_emitted", "min_count")


def _check_tokenizer(tok: dict, path: Path) -> None:
    """Refuse an ehrfm tokenizer.json that lacks what encoding reads (UserError naming the file and key).

    A hand-edited or partly written file (a key deleted, the vocab cut) otherwise failed mid-tokenize
    with a KeyError or a numpy reshape error and no file named.
    """
    redo = "re-create it with `ehrfm tokenize` (fitting a new tokenizer)"
    missing = [k for k in TOKENIZER_KEYS if k not in tok]
    if missing:
        raise UserError(f"tokenizer {path} is damaged: no key {', '.join(map(repr, missing))}; {redo}")
    vocab = tok["vocab"]
    if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
        raise UserError(f"tokenizer {path} is damaged: 'vocab' is not a list of token strings; {redo}")
    intervals, ages = tok["interval_tokens"], tok["age_tokens"]
    if not (isinstance(intervals, list) and intervals and all(isinstance(t, dict) and "token" in t for t in intervals)
            and isinstance(ages, list) and ages):
        raise UserError(f"tokenizer {path} is damaged: 'interval_tokens' or 'age_tokens' is not a list of tokens; {redo}")
    used = ["UNK", "TIMELINE_START", "TIMELINE_END", "Q1", *ages, *(t["token"] for t in intervals)]
    absent = sorted(set(used) - set(vocab))
    if absent:
        raise UserError(f"tokenizer {path} is damaged: its vocab lacks {len(absent)} token(s) it uses "
                        f"({', '.join(absent[:5])}); {redo}")
    nq, edges = tok["n_quantiles"], tok["quantile_edges"]
    ok = isinstance(nq, int) and nq >= 1 and isinstance(edges, dict)
    if not ok or any(not isinstance(e, list) or len(e) != nq - 1 for e in edges.values()):
        raise UserError(f"tokenizer {path} is damaged: 'quantile_edges' does not hold n_quantiles - 1 edges per "
                        f"code; {redo}")
    # edges edited by hand (NaN, reversed) binned that code's values wrongly without a word
    bad = [c for c, e in edges.items()
           if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in e)
           or any(b < a for a, b in zip(e, e[1:], strict=False))]
    if bad:
        raise UserError(f"tokenizer {path} is damaged: 'quantile_edges' of {len(bad)} code(s) are not finite numbers "
                        f"in non-decreasing order (first: {bad[0]}); {redo}")
    if tok.get("quantile_rule", "all") not in QUANTILE_RULES:
        raise UserError(f"tokenizer {path}: 'quantile_rule' is {tok.get('quantile_rule')!r}, expected one of "
                        f"{', '.join(QUANTILE_RULES)} (a tokenizer of a newer ehrfm?)")


def code_mode(tok: dict) -> str:
    """How a tokenizer splits codes: its "codes" key; files written before the key existed are flat."""
    return tok.get("codes", FLAT)


def _tokenizer_json(tok: dict) -> str:
    # Deterministic bytes: the fingerprint downstream is the sha256 of this file.
    return json.dumps(tok, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------- applying
EXACT, COARSENED, UNKNOWN = 0, 1, 2  # how an event's code was encoded (stats.json counts them)


class _Encoder:
    """The fitted tokenizer as lookup tables for vectorised encoding."""

    def __init__(self, tok: dict):
        self.vocab = tok["vocab"]
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.mode = code_mode(tok)
        continuation = set(tok.get("continuation_tokens", []))
        special = set(tok["special_tokens"])
        self.head_ids = {t: i for t, i in self.ids.items() if t not in special and t not in continuation}
        self.cont_ids = {t: self.ids[t] for t in continuation}
        self._code_cache: dict[str, tuple[list[int], int]] = {}
        edges = tok["quantile_edges"]
        self.q_codes = pl.DataFrame({"code": list(edges), "q_row": np.arange(len(edges), dtype=np.int64)},
                                    schema={"code": pl.String, "q_row": pl.Int64})
        nq = tok["n_quantiles"]
        self.q_edges = np.array([edges[c] for c in edges], dtype=np.float64).reshape(len(edges), nq - 1)
        # Per code and decile: does it count when <= value (at_or_below), or when < value (below)?
        # Rule "ties": a run of equal deciles counts once at or below and once below (edges are sorted,
        # so equal ones are adjacent); "all": each decile at or below.
        first = np.ones(self.q_edges.shape, dtype=bool)
        first[:, 1:] = self.q_edges[:, 1:] != self.q_edges[:, :-1]
        self.q_at_or_below, self.q_below = first, np.zeros_like(first)
        if tok.get("quantile_rule", "all") == "ties":
            self.q_below[:, 1:] = ~first[:, 1:] & first[:, :-1]  # the second of each run
        else:
            self.q_at_or_below = np.ones_like(first)
        self.q_first = self.ids["Q1"]
        self.interval_lo = np.array([t["min_us"] for t in tok["interval_tokens"]], dtype=np.int64)
        self.interval_first = self.ids[tok["interval_tokens"][0]["token"]]
        self.unk, self.start, self.end = self.ids["UNK"], self.ids["TIMELINE_START"], self.ids["TIMELINE_END"]
        self.age_years = tok["age_bin_years"]
        self.age_tokens = tok["age_tokens"]
        self.not_emitted = tok["not_emitted"]
        self.dtype = np.uint16 if len(self.vocab) <= np.iinfo(np.uint16).max + 1 else np.uint32

    def code_tokens(self, code: str) -> tuple[list[int], int]:
        """One code's token ids and how it matched the vocabulary.

        One code's token ids (1..MAX_PARTS) and EXACT, COARSENED (an ancestor or a truncated
        hierarchy) or UNKNOWN (UNK), by the rule of tokenization.hierarchy.
        """
        hit = self._code_cache.get(code)
        if hit is not None:
            return hit
        chain, rest = code_parts(code, self.mode)
        level = next((i for i, t in enumerate(chain) if t in self.head_ids), None)
        if level is None:
            out = ([self.unk], UNKNOWN)
        else:
            ids = [self.head_ids[chain[level]]]
            if level == 0:
                for t in rest:
                    if t not in self.cont_ids:
                        break
                    ids.append(self.cont_ids[t])
            out = (ids, EXACT if level == 0 and len(ids) == 1 + len(rest) else COARSENED)
        self._code_cache[code] = out
        return out

    def _code_table(self, codes: pl.Series) -> pl.DataFrame:
        uniq = codes.unique().to_list()
        enc = [self.code_tokens(c) for c in uniq]
        return pl.DataFrame({"code": uniq, "tok": [e[0] for e in enc], "status": [e[1] for e in enc]},
                            schema={"code": pl.String, "tok": pl.List(pl.Int64), "status": pl.Int8})

    @staticmethod
    def _explode(tok: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row lists of token ids -> (flat ids, row of each id, position of each id in its row)."""
        n = tok.list.len().to_numpy().astype(np.int64)
        flat = tok.explode().to_numpy().astype(np.int64)
        row = np.repeat(np.arange(len(n), dtype=np.int64), n)
        pos = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        return flat, row, pos

    @staticmethod
    def _subjects(df: pl.DataFrame, timed: pl.DataFrame, birth: pl.DataFrame) -> pl.DataFrame:
        """One row per subject (sorted): subject_id, first and last event time, birth (null if none)."""
        return (
            pl.concat([df.select("subject_id"), birth.select("subject_id")]).unique().sort("subject_id")
            .join(timed.group_by("subject_id").agg(pl.col("time").min().alias("first"), pl.col("time").max().alias("last")),
                  on="subject_id", how="left")
            .join(birth, on="subject_id", how="left")
            .with_columns(pl.col("first").fill_null(pl.col("birth")).fill_null(pl.datetime(1970, 1, 1)))
            .with_columns(pl.col("last").fill_null(pl.col("first")))
        )

    def _age_token(self, subjects: pl.DataFrame) -> np.ndarray:
        """Per subject, the AGE//<bin> token id of the age (years) at the first timed event."""
        age = ((subjects["first"] - subjects["birth"]).dt.total_days() / 365.25).to_numpy()
        age_bin = np.where(np.isnan(age), len(self.age_tokens) - 1,
                           np.clip(np.floor(np.nan_to_num(age) / self.age_years), 0, len(self.age_tokens) - 2))
        return np.array([self.ids[t] for t in self.age_tokens])[age_bin.astype(np.int64)]

    def _quantile_tokens(self, timed: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Per timed row: whether it gets a quantile token (a numeric code with a value), and that token."""
        q = timed.join(self.q_codes, on="code", how="left", maintain_order="left")
        q_row = q["q_row"].fill_null(-1).to_numpy()
        val = q["numeric_value"].fill_null(float("nan")).to_numpy()
        has_q = (q_row >= 0) & (np.abs(val) <= FLOAT32_MAX)  # _valid_number: NaN compares false
        q_tok = np.zeros(len(timed), np.int64)
        if has_q.any():
            rows = np.nonzero(has_q)[0]
            e, v = self.q_edges[q_row[rows]], val[rows, None]
            q_tok[rows] = self.q_first + ((e <= v) & self.q_at_or_below[q_row[rows]]).sum(1) \
                + ((e < v) & self.q_below[q_row[rows]]).sum(1)
        return has_q, q_tok

    def encode(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, pl.DataFrame, dict, dict]:
        """Events of whole subjects (sorted by subject, time, statics first) -> tokens, times, index, counts, unk_codes.

        Events at one time keep the input's row order (MEDS leaves it to the ETL, which may order
        them on purpose: admission before labs, diagnoses by rank).
        counts: code_events (rows emitted as code tokens: every row but not_emitted ones),
        code_tokens (the tokens those rows became), unk_events and coarsened_events.
        unk_codes: {code: events} of the codes that became UNK.
        """
        birth = df.filter(pl.col("code") == BIRTH_CODE).group_by("subject_id").agg(
            pl.col("time").min().alias("birth"), pl.col("time").n_unique().alias("births"))
        df = df.filter(~pl.col("code").is_in(self.not_emitted))
        df = df.join(self._code_table(df["code"]), on="code", how="left", maintain_order="left")
        static = df.filter(pl.col("time").is_null())
        timed = df.filter(pl.col("time").is_not_null()).with_row_index("r")
        subjects = self._subjects(df, timed, birth)
        age_token = self._age_token(subjects)

        # Event tokens: [interval] code token(s) [Q] per timed row; key slot 0, 1..MAX_PARTS, MAX_PARTS + 1.
        K = MAX_PARTS + 2
        t_us = timed["time"].dt.epoch("us").to_numpy()
        sid = timed["subject_id"].to_numpy()
        # Per timed row: same subject as the row before, and the gap since it (a chunk may hold no
        # timed row at all: subjects with only static codes or a birth).
        same = np.zeros(len(sid), bool)
        same[1:] = sid[1:] == sid[:-1]
        gap = np.zeros(len(t_us), np.int64)
        gap[1:] = np.diff(t_us)
        has_int = same & (gap >= self.interval_lo[0])
        int_tok = self.interval_first + np.searchsorted(self.interval_lo, gap, side="right") - 1
        has_q, q_tok = self._quantile_tokens(timed)
        code_tok, code_row, code_pos = self._explode(timed["tok"])

        parts_sid, parts_key, parts_tok, parts_t = [], [], [], []

        def add(s, key, tok, t):
            parts_sid.append(np.asarray(s, np.int64))
            parts_key.append(np.asarray(key, np.int64))
            parts_tok.append(np.asarray(tok, np.int64))
            parts_t.append(np.asarray(t, np.int64))

        r = np.arange(len(timed), dtype=np.int64)
        add(sid[has_int], K * r[has_int], int_tok[has_int], t_us[has_int])
        add(sid[code_row], K * code_row + 1 + code_pos, code_tok, t_us[code_row])
        add(sid[has_q], K * r[has_q] + K - 1, q_tok[has_q], t_us[has_q])
        # Prefix and end: keys below and above every event key of any subject.
        s_all = subjects["subject_id"].to_numpy()
        first_us = subjects["first"].dt.epoch("us").to_numpy()
        last_us = subjects["last"].dt.epoch("us").to_numpy()
        low, high = -(1 << 40), 1 << 60
        add(s_all, np.full(len(s_all), low), np.full(len(s_all), self.start), first_us)
        n_static_tokens = 0
        if static.height:
            st = static.with_columns(pl.int_range(pl.len()).over("subject_id").alias("k")).join(
                subjects.select("subject_id", "first"), on="subject_id", how="left")
            st_tok, st_row, st_pos = self._explode(st["tok"])
            add(st["subject_id"].to_numpy()[st_row], low + 1 + K * st["k"].to_numpy()[st_row] + st_pos, st_tok,
                st["first"].dt.epoch("us").to_numpy()[st_row])
            n_static_tokens = len(st_tok)
        add(s_all, np.full(len(s_all), low + (1 << 30)), age_token, first_us)
        add(s_all, np.full(len(s_all), high), np.full(len(s_all), self.end), last_us)

        s_cat = np.concatenate(parts_sid)
        order = np.lexsort((np.concatenate(parts_key), s_cat))
        tokens = np.concatenate(parts_tok)[order].astype(self.dtype)
        times = np.concatenate(parts_t)[order]
        s_sorted = s_cat[order]
        uniq, start, length = np.unique(s_sorted, return_index=True, return_counts=True)
        index = pl.DataFrame({"subject_id": uniq.astype(np.int64), "offset": start.astype(np.int64),
                              "length": length.astype(np.int64)})
        status = df["status"].to_numpy()
        nv = df["numeric_value"]
        counts = {"code_events": df.height, "code_tokens": len(code_tok) + n_static_tokens,
                  "unk_events": int((status == UNKNOWN).sum()), "coarsened_events": int((status == COARSENED).sum()),
                  "non_finite_values": int((nv.is_not_null() & ~(nv.abs() <= FLOAT32_MAX)).sum()),
                  # a birth after the first event: an impossible timeline (ehrfm's ETL drops such events as
                  # time_outside_lifetime); its age token is the youngest bin, so it is counted and said
                  "subjects_with_events_before_birth": int((subjects["birth"].is_not_null()
                                                            & (subjects["first"] < subjects["birth"])).sum()),
                  # another ETL may write no birth row (or under another code): every such age token is AGE//UNK
                  "subjects_without_birth": int(subjects["birth"].is_null().sum()),
                  # two MEDS_BIRTH times (another ETL's merge of two records): the earliest is taken, counted and said
                  "subjects_with_several_births": int((birth["births"] > 1).sum()),
                  # rows equal to an earlier one in every event column: kept (two equal measurements or orders at one time
                  # are real: 8.1% of the MIMIC-IV demo's events, a third of its POE rows), counted per code family,
                  # and said when a family's are half its rows (an ETL that wrote a table twice: REPEATED_FAMILY_SAID)
                  "repeated_by_family": (families := _repeated_by_family(timed)),
                  "repeated_events": sum(r for _, r in families.values())}
        unk_codes = df.filter(pl.col("status") == UNKNOWN).group_by("code").len()
        return tokens, times, index, counts, dict(unk_codes.iter_rows())


def _subject_chunks(df: pl.DataFrame, n_subjects: int):
    """Zero-copy slices of whole subjects (df sorted by subject_id): bounds the encoder's memory."""
    sid = df["subject_id"].to_numpy()
    starts = np.r_[0, np.nonzero(sid[1:] != sid[:-1])[0] + 1]
    bounds = np.r_[starts[::n_subjects], len(sid)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        if b > a:
            yield df.slice(int(a), int(b - a))


def _append(f, arr: np.ndarray) -> None:
    f.write(np.ascontiguousarray(arr).tobytes())


def _bin_to_npy(bin_path: Path, npy_path: Path, dtype, n: int, runs: list[tuple[int, int]] | None = None,
                chunk: int = 1 << 24) -> None:
    """Copy a raw array file into a .npy file, whole or as `runs` ((offset, length) in items, in order).

    The raw array file -> a .npy file (header, then the bytes copied by read/write: a memory
    map of both files would count every page of them in this process's RSS, 1.9 GiB at 300k
    synthetic patients).
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (n,)}
    item = np.dtype(dtype).itemsize
    with open(npy_path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        with open(bin_path, "rb") as src:
            if runs is None:
                shutil.copyfileobj(src, out, chunk)
            for offset, length in runs or ():
                src.seek(offset * item)
                left = length * item
                while left:
                    buf = src.read(min(chunk, left))
                    out.write(buf)
                    left -= len(buf)
    bin_path.unlink()


def _in_subject_order(index: pl.DataFrame) -> tuple[pl.DataFrame, list[tuple[int, int]] | None]:
    """The index in ascending subject_id order, and the runs _bin_to_npy copies to match it.

    Runs are (offset, length) of the written token and time files, in the new order; None when the
    subjects are in that order already.

    Subjects were written in the order of the shard files' names and of subjects within each, so
    one MEDS dataset sharded otherwise (another --shard-subjects, another ETL; shard 10 sorts before
    shard 2) gave other token files, and training, whose order is drawn over the file's subjects
    (ehrfm/packing.py), another stream of batches.
    """
    ids = index["subject_id"].to_numpy()
    if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
        return index, None
    index = index.sort("subject_id")
    off, length = index["offset"].to_numpy(), index["length"].to_numpy()
    runs: list[list[int]] = []
    for o, n in zip(off.tolist(), length.tolist(), strict=True):
        if runs and runs[-1][0] + runs[-1][1] == o:  # adjacent in the written file: one copy
            runs[-1][1] += n
        else:
            runs.append([o, n])
    return index.with_columns(offset=pl.col("length").cum_sum() - pl.col("length")), [tuple(r) for r in runs]


def _resolve(meds: Path, out, tokenizer, overwrite: bool, min_count: int | None, codes: str | None,
             options: dict) -> tuple[TokenizeConfig, object, dict]:
    """Check tokenize()'s arguments and open its inputs.

    tokenize()'s arguments checked -> its config, the opened MEDS dataset and the tokenizer
    (loaded from `tokenizer`, or fitted on train). Raises UserError as tokenize() documents.
    """
    unknown = set(options) - {"n_quantiles"}
    if unknown:
        raise TypeError(f"tokenize() got unknown options: {sorted(unknown)}")
    if min_count is not None and min_count < 1:
        raise UserError(f"--min-count must be at least 1 (got {min_count})")
    cfg = TokenizeConfig(meds_dir=str(meds.resolve()), out=str(out),
                         tokenizer=str(Path(tokenizer).resolve()) if tokenizer else None,
                         min_count=int(min_count if min_count is not None else TokenizeConfig.min_count), n_quantiles=int(options.get("n_quantiles", N_QUANTILES)))
    check_overwrite(out, overwrite, inputs=(meds, tokenizer), command="tokenize")
    if codes is not None and codes not in CODE_MODES:
        raise UserError(f"--codes must be one of {', '.join(CODE_MODES)} (got {codes!r})")
    ds = open_meds(meds)
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        if codes is not None and codes != code_mode(tok):
            raise UserError(f"tokenizer {tokenizer} splits codes {code_mode(tok)}, not {codes}: "
                            f"drop --codes to apply it unchanged, or fit a new tokenizer")
        # Its vocabulary was fitted with its own min_count: another would be silently ignored.
        if min_count is not None and min_count != tok["min_count"]:
            raise UserError(f"tokenizer {tokenizer} was fitted with --min-count {tok['min_count']}, not {min_count}: "
                            "drop --min-count to apply it unchanged, or fit a new tokenizer")
        cfg.min_count, cfg.n_quantiles, cfg.codes = tok["min_count"], tok["n_quantiles"], code_mode(tok)
    else:
        cfg.codes = codes or HIERARCHICAL
        tok = fit_tokenizer(ds, cfg.min_count, cfg.n_quantiles, codes=cfg.codes)
    return cfg, ds, tok


def _encode_shards(enc: _Encoder, jobs: list, state: dict, files: dict) -> None:
    """Encode each shard, appending to its split's token and time files.

    Encode each shard by chunks of whole subjects, appending to its split's open token and
    time files and adding to its split's counts in `state`. Shard files not sorted by (subject_id,
    time) are read sorted (rows at one time keep their file order) and said once on stderr.
    """
    unsorted: dict = {}
    for shard in progress(jobs, desc="tokenize: shards", unit="shard"):
        chunks, was_sorted = _shard_chunks(shard)
        if not was_sorted:
            unsorted[shard.path] = None
        split = shard.split
        st = state[split]
        for chunk in chunks:
            tokens, times, index, counts, unk_codes = enc.encode(chunk)
            for code, n in unk_codes.items():
                st["unk_codes"][code] = st["unk_codes"].get(code, 0) + n
            _append(files[split][0], tokens)
            _append(files[split][1], times.astype(np.int64))
            st["index"].append(index.with_columns(pl.col("offset") + st["tokens"]))
            st["subjects"] += index.height
            st["events"] += chunk.height
            st["tokens"] += len(tokens)
            if len(tokens):
                st["max_token_id"] = max(st["max_token_id"], int(tokens.max()))
            for k, v in counts.items():
                if k == "repeated_by_family":
                    _add_family_counts(st[k], v)
                else:
                    st[k] += v
    if unsorted:
        files_read = {s.path for s in jobs}
        warn(f"tokenize: {len(unsorted)} of {len(files_read)} MEDS shard file(s) not sorted by (subject_id, time) as MEDS "
             f"requires (first: {next(iter(unsorted))}): read sorted, rows at one time in their file order")


def _repeated_by_family(timed: pl.DataFrame) -> dict[str, list[int]]:
    """{code family (the code up to its first "//"): [events, events equal to an earlier row in EVENT_COLUMNS]}."""
    if timed.height == 0:
        return {}
    per = (timed.select(*EVENT_COLUMNS).with_columns(pl.int_range(pl.len()).over(EVENT_COLUMNS).alias("_k"),
                                                     pl.col("code").str.split("//").list.first().alias("_family"))
           .group_by("_family").agg(pl.len().alias("n"), (pl.col("_k") > 0).sum().alias("repeated")))
    return {f: [int(n), int(r)] for f, n, r in per.iter_rows()}


def _add_family_counts(into: dict[str, list[int]], more: dict[str, list[int]]) -> None:
    """Add `more`'s {family: [events, repeated]} counts to `into`'s, in place."""
    for f, (n, r) in more.items():
        have = into.setdefault(f, [0, 0])
        have[0], have[1] = have[0] + n, have[1] + r


def _doubled_families(st: dict) -> list[tuple[str, int, int]]:
    """(family, events, repeated) of one split's code families whose rows look written twice (REPEATED_FAMILY_SAID)."""
    floor = max(REPEATED_FAMILY_MIN_EVENTS, REPEATED_FAMILY_MIN_SHARE * st["events"])
    return sorted(((f, n, r) for f, (n, r) in st["repeated_by_family"].items() if n >= floor and r >= REPEATED_FAMILY_SAID * n),
                  key=lambda x: -x[2])


def _split_counts(stats: dict, key: str) -> tuple[int, str]:
    """(the sum of stats.json's per-split `key`, "train 2, held_out 1" for the splits where it is not 0)."""
    counts = {s: v[key] for s, v in stats["splits"].items() if v[key]}
    return sum(counts.values()), ", ".join(f"{s} {n:,}" for s, n in counts.items())


def _split_stats(st: dict) -> dict:
    """One split's entry of stats.json from its running counts (see tokenize's Returns)."""
    n_ev = max(st["code_events"], 1)
    return {
        "subjects": st["subjects"], "events": st["events"], "code_events": st["code_events"],
        "tokens": st["tokens"], "code_tokens": st["code_tokens"], "max_token_id": st["max_token_id"],
        "tokens_per_subject": round(st["tokens"] / max(st["subjects"], 1), 2),
        "tokens_per_event": round(st["tokens"] / n_ev, 4),
        "unk_events": st["unk_events"], "unk_fraction": round(st["unk_events"] / n_ev, 6),
        "coarsened_events": st["coarsened_events"],
        "coarsened_fraction": round(st["coarsened_events"] / n_ev, 6),
        "non_finite_values": st["non_finite_values"],
        "subjects_with_events_before_birth": st["subjects_with_events_before_birth"],
        "subjects_without_birth": st["subjects_without_birth"],
        "subjects_with_several_births": st["subjects_with_several_births"],
        "repeated_events": st["repeated_events"],
        # the code families whose events look written twice (REPEATED_FAMILY_SAID): {family: [events, repeated]}
        "repeated_families": {f: [n, r] for f, n, r in _doubled_families(st)},
    }


def tokenize(meds: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
             overwrite: bool = False, min_count: int | None = None, codes: str | None = None, **options) -> dict:
    """Tokenize a MEDS dataset into a token dir at `out`; return a summary dict (also stats.json).

    Args:
        meds: MEDS dataset dir.
        out: token dir to write (atomically).
        tokenizer: an existing tokenizer.json (or token dir) to apply unchanged, its code mode included.
        overwrite: replace `out` when it exists.
        min_count: the least number of train events a code token must encode (when fitting; default 10).
            With `tokenizer`, only that tokenizer's own value is accepted: another would not apply.
        codes: "hierarchical" (default when fitting) or "flat"; with `tokenizer`, None or its own mode.
        **options: n_quantiles, the number of value bins per numeric code (default N_QUANTILES).

    Returns:
        stats.json's content plus out, subjects, events, tokens. Per split, stats.json holds:
        subjects; events (MEDS rows read, MEDS_BIRTH included); code_events (rows emitted as code
        tokens: all but MEDS_BIRTH); tokens (all tokens); code_tokens (tokens of those rows);
        tokens_per_event (tokens / code_events); max_token_id (the largest token id in
        tokens.npy, -1 when empty: a trainer checks ids against the vocab without reading the
        tokens); unk_events and unk_fraction (code events whose
        code became UNK, over code_events); coarsened_events and coarsened_fraction (code events
        encoded by a fallback ancestor or a truncated hierarchy, over code_events; 0 when flat);
        non_finite_values (numeric values that are NaN, +-inf or beyond float32's range: read as no
        value, so no Q token); subjects_with_events_before_birth (a MEDS_BIRTH after the subject's
        first event: their age token is the youngest bin); subjects_without_birth (no MEDS_BIRTH row:
        their age token is AGE//UNK); repeated_events (timed rows equal to an earlier row in subject_id,
        time, code and numeric_value: kept as written); repeated_families ({code family: [events,
        repeated]} for the families whose events repeat for REPEATED_FAMILY_SAID or more of their rows,
        as a table written twice does: said).

    Raises:
        UserError: missing or invalid input, `out` exists without overwrite, a mode that
            contradicts the applied tokenizer's.
        TypeError: an option other than n_quantiles.
    """
    t0 = time.time()
    meds = Path(meds)
    if not meds.is_dir():
        raise UserError(f"MEDS dataset {meds} not found")
    cfg, ds, tok = _resolve(meds, out, tokenizer, overwrite, min_count, codes, options)
    shards = ds.shards
    if "train" in shards and "tuning" not in shards:  # said now, not first at `ehrfm train` ("no split 'tuning'")
        warn(f"MEDS dataset {meds} has no tuning split: `ehrfm train` measures its validation loss on the token dir's "
             "tuning split and refuses a token dir without one (give the MEDS data a tuning split: `ehrfm etl "
             "--split-fractions`, or move some train subjects' shards to data/tuning/)")
    enc = _Encoder(tok)

    stats = {"vocab_size": len(enc.vocab), "dtype": np.dtype(enc.dtype).name, "codes": enc.mode, "splits": {},
             "split_aliases": ds.aliases, "dropped_null_time_rows": ds.null_time_codes,
             # zones other than UTC the MEDS times had ([]: naive): the heads refuse zoned labels beside naive data
             "meds_time_zones": ds.time_zones()}
    with atomic_dir(out, overwrite=overwrite, inputs=(meds, tokenizer), command="tokenize") as tmp:
        (tmp / "tokenizer.json").write_text(_tokenizer_json(tok), encoding="utf-8")
        jobs = [sh for s in SPLITS for sh in shards.get(s, [])]
        state = {s: dict(subjects=0, events=0, tokens=0, code_events=0, code_tokens=0, unk_events=0,
                         coarsened_events=0, non_finite_values=0, subjects_with_events_before_birth=0,
                         subjects_without_birth=0, subjects_with_several_births=0, repeated_events=0, max_token_id=-1,
                         index=[], unk_codes={}, repeated_by_family={}) for s in shards}
        files = {}
        for s in shards:
            (tmp / s).mkdir()
            files[s] = (open(tmp / s / "tokens.bin", "wb"), open(tmp / s / "times.bin", "wb"))  # noqa: SIM115 (closed in the finally below)
        try:
            _encode_shards(enc, jobs, state, files)
        finally:
            for f1, f2 in files.values():
                f1.close()
                f2.close()
        for s, st in state.items():
            index = pl.concat(st["index"]) if st["index"] else pl.DataFrame(
                schema={"subject_id": pl.Int64, "offset": pl.Int64, "length": pl.Int64})
            if index["subject_id"].is_duplicated().any():
                raise UserError(f"{meds}: a subject appears in more than one shard of split {s!r}")
            index, runs = _in_subject_order(index)
            _bin_to_npy(tmp / s / "tokens.bin", tmp / s / "tokens.npy", enc.dtype, st["tokens"], runs)
            _bin_to_npy(tmp / s / "times.bin", tmp / s / "times.npy", np.int64, st["tokens"], runs)
            index.write_parquet(tmp / s / "index.parquet")
            stats["splits"][s] = _split_stats(st)
        if "train" in stats["splits"] and "tuning" in stats["splits"]:
            _check_disjoint(tmp, meds)
        stats["seconds"] = round(time.time() - t0, 2)
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "config.json", cfg)
    if "train" in stats["splits"] and (stats["splits"].get("tuning") or {}).get("subjects", 1) == 0:
        warn(f"MEDS dataset {meds}: its tuning split has no subjects (its shards have no rows): `ehrfm train` measures its "
             "validation loss on the tuning split and refuses a token dir without subjects there")
    _warn_unknown_codes(state, stats, tokenizer, cfg.min_count)
    total, per_split = _split_counts(stats, "non_finite_values")
    if total:  # read as no value (the code's token stays): said once, not only in stats.json
        warn(f"tokenize: {total:,} numeric values are NaN, +-inf or beyond float32's range and were read as "
             f"no value, their codes kept ({per_split}; stats.json non_finite_values)")
    total, per_split = _split_counts(stats, "subjects_with_events_before_birth")
    if total:  # an impossible timeline from another ETL (a birth or event time wrong): said, never silently an age
        warn(f"tokenize: {total:,} subjects have events before their {BIRTH_CODE} ({per_split}; stats.json "
             "subjects_with_events_before_birth): their birth or event times are wrong in the MEDS data, and their "
             "age token is the youngest bin")
    total, per_split = _split_counts(stats, "subjects_without_birth")
    if total:  # a MEDS dataset from another ETL without birth rows: every age is unknown, said rather than silent
        warn(f"tokenize: {total:,} subjects have no {BIRTH_CODE} row ({per_split}; stats.json subjects_without_birth): "
             f"their age token is AGE//UNK (an ETL that writes no birth, or one that dropped it: `ehrfm etl` drops an "
             "implausible anchor_age's, counted as birth_of_implausible_anchor_age)")
    total, per_split = _split_counts(stats, "subjects_with_several_births")
    if total:  # the age token moved by decades without a word (two births 40 years apart: the earliest taken)
        warn(f"tokenize: {total:,} subjects have {BIRTH_CODE} rows at two or more times ({per_split}; stats.json "
             "subjects_with_several_births): the earliest is taken for their age token; two records merged into one subject?")
    doubled: dict[str, list[int]] = {}
    for v in stats["splits"].values():
        _add_family_counts(doubled, v["repeated_families"])
    if doubled:  # orders given twice at one time are real; half of a family's rows, an ETL that wrote its table twice
        named = ", ".join(f"{f} {r:,} of {n:,} ({r / n:.0%})" for f, (n, r) in sorted(doubled.items(), key=lambda x: -x[1][1])[:5])
        warn(f"tokenize: events that repeat an earlier row in subject_id, time, code and numeric_value, by code family: "
             f"{named} (stats.json repeated_families): a table written twice (a join that duplicated rows) repeats 50% of "
             f"its rows, orders given twice at one time far fewer; kept as written, each a token again: check the ETL "
             "that made the MEDS data")
    seconds = time.time() - t0
    n_sub = sum(v["subjects"] for v in stats["splits"].values())
    n_ev = sum(v["events"] for v in stats["splits"].values())
    n_tok = sum(v["tokens"] for v in stats["splits"].values())
    summary(f"tokenize: {n_sub} subjects, {n_ev} events, {n_tok} tokens, vocab {stats['vocab_size']}, codes {enc.mode} "
            f"({'applied ' + str(tokenizer) if tokenizer else 'fitted on train'}) -> {out} in {seconds:.1f}s")
    return {"out": str(out), "subjects": n_sub, "events": n_ev, "tokens": n_tok, **stats, "seconds": round(seconds, 2)}


# A split with more of its code events UNK than this was most likely tokenized with a tokenizer
# fitted on other codes (another dataset, code system or ETL): the model would see mostly UNK.
UNK_WARN_FRACTION = 0.25


def _warn_unknown_codes(state: dict, stats: dict, tokenizer, min_count: int) -> None:
    """Warn, per split, when more than UNK_WARN_FRACTION of its code events became UNK (names its top codes)."""
    for split, st in state.items():
        frac = stats["splits"][split]["unk_fraction"]
        if frac <= UNK_WARN_FRACTION:
            continue
        top = sorted(st["unk_codes"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        cause = (f"the applied tokenizer {tokenizer} was fitted on other codes (another dataset, code system or ETL?)"
                 if tokenizer else f"its codes are rare or absent in train (--min-count {min_count})")
        warn(f"tokenize: {split}: {frac:.1%} of its {st['code_events']:,} code events became UNK: {cause}; "
             f"{len(st['unk_codes']):,} codes unknown, the most frequent: "
             + ", ".join(f"{c} ({n:,})" for c, n in top))


def _check_disjoint(tmp: Path, meds: Path) -> None:
    ids = {s: set(pl.read_parquet(tmp / s / "index.parquet")["subject_id"].to_list())
           for s in SPLITS if (tmp / s / "index.parquet").is_file()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            if a in ids and b in ids and ids[a] & ids[b]:
                raise UserError(f"{meds}: {len(ids[a] & ids[b])} subjects are in both {a} and {b}")


def decode(token_dir: str | os.PathLike, ids) -> list[str]:
    """Token ids -> token strings with the token dir's (or a tokenizer.json's) vocab.

    Args:
        token_dir: a token dir or a tokenizer.json path.
        ids: token ids of any shape (flattened).

    Returns:
        One token string per id, in order.

    Raises:
        UserError: an id outside the vocab (how many; the ids and tokenizer do not belong together).
    """
    vocab = load_tokenizer(token_dir)["vocab"]
    ids = np.asarray(ids).ravel()
    bad = int(((ids < 0) | (ids >= len(vocab))).sum()) if ids.size else 0
    if bad:
        raise UserError(f"{bad} token id{'s' if bad > 1 else ''} outside 0..{len(vocab) - 1}, the vocab of {token_dir} "
                        "(tokens and tokenizer do not belong together)")
    return [vocab[int(i)] for i in ids]
