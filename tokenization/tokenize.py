"""MEDS dataset dir -> token dir: ETHOS-style event tokens (DESIGN.md section 2).

    tokenize(meds, out, tokenizer=None, overwrite=False, min_count=10)

Fitted on the train split only (vocab, quantile edges) and applied unchanged to tuning and
held_out; `tokenizer=<TOK0>/tokenizer.json` applies an existing tokenizer unchanged instead of
fitting (to another MEDS dataset, or to keep ids comparable).

Token conventions (others rely on them; they are also written into tokenizer.json):
- Code tokens are exactly the MEDS code strings (`MEDS_DEATH`, `HOSPITAL_DISCHARGE//HOME`,
  `LAB//50912//mg/dL`, ...), so outcome tokens are found by exact string or prefix. Codes seen
  fewer than `min_count` times in train become `UNK`. `MEDS_BIRTH` is not emitted (it becomes
  the age token); text_value is not tokenized.
- Special tokens: `PAD` (id 0), `UNK`, `TIMELINE_START`, `TIMELINE_END`, `Q1`..`Q10`, the 13
  ETHOS interval tokens `5m-15m 15m-1h 1h-2h 2h-6h 6h-12h 12h-1d 1d-3d 3d-1w 1w-2w 2w-1mt
  1mt-3mt 3mt-6mt =6mt`, and age tokens `AGE//0-4`, ..., `AGE//85-89`, `AGE//90+`, `AGE//UNK`.
- A subject's sequence: TIMELINE_START, its static codes (e.g. `GENDER//F`), its age token at
  the first timed event; then, per event in time order, an interval token when the gap since
  the previous event is >= 5 minutes (one token, `=6mt` for 6 months or more), the code token,
  and a `Qk` token directly after it when the event has a numeric value and the code has
  fitted deciles (k = 1 + number of train deciles <= value); finally TIMELINE_END.
- times.npy: every token has a time (int64 us since epoch), non-decreasing per subject. The
  prefix gets the time of the subject's first timed event, an interval token the time of the
  event it precedes, a Q token its code's time, TIMELINE_END the last event's time. So "tokens
  with time <= t" is exactly the history known at t (a discharge token has the discharge time).

Output (see ehrfm/tokens.py for the reader):
    tokenizer.json, stats.json, config.json, {split}/tokens.npy, {split}/times.npy,
    {split}/index.parquet (subject_id, offset, length)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ehrfm.errors import UserError
from ehrfm.io import atomic_dir, check_parquet_files, progress, summary, write_json

SPLITS = ("train", "tuning", "held_out")
TOKENIZER_FORMAT = "ehrfm-ethos-tokenizer"
TOKENIZER_VERSION = 1
MINUTE_US = 60 * 1_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US
MONTH_US = int(30.4375 * DAY_US)

# ETHOS's 13 interval tokens: (name, lower bound inclusive); the upper bound is the next one's.
INTERVALS = [
    ("5m-15m", 5 * MINUTE_US), ("15m-1h", 15 * MINUTE_US), ("1h-2h", HOUR_US), ("2h-6h", 2 * HOUR_US),
    ("6h-12h", 6 * HOUR_US), ("12h-1d", 12 * HOUR_US), ("1d-3d", DAY_US), ("3d-1w", 3 * DAY_US),
    ("1w-2w", 7 * DAY_US), ("2w-1mt", 14 * DAY_US), ("1mt-3mt", MONTH_US), ("3mt-6mt", 3 * MONTH_US),
    ("=6mt", 6 * MONTH_US),
]
N_QUANTILES = 10
QUANTILE_TOKENS = [f"Q{i}" for i in range(1, N_QUANTILES + 1)]
AGE_BIN_YEARS = 5
AGE_TOKENS = [f"AGE//{a}-{a + AGE_BIN_YEARS - 1}" for a in range(0, 90, AGE_BIN_YEARS)] + ["AGE//90+", "AGE//UNK"]
SPECIAL_TOKENS = ["PAD", "UNK", "TIMELINE_START", "TIMELINE_END"] + QUANTILE_TOKENS + [n for n, _ in INTERVALS] + AGE_TOKENS
BIRTH_CODE = "MEDS_BIRTH"
CHUNK_SUBJECTS = 2048  # subjects encoded at a time
NOT_EMITTED = (BIRTH_CODE,)

CONVENTIONS = (
    "Code tokens are the MEDS code strings; codes with train count < min_count -> UNK. Sequence per subject: "
    "TIMELINE_START, static codes, AGE//<bin> (age at first timed event), then per event: [interval token if "
    "gap >= 5m] code [Qk if numeric and the code has deciles], then TIMELINE_END. Qk: k = 1 + #(deciles <= value). "
    "Times: prefix = first timed event, interval = the event it precedes, Q = its code, END = last event. "
    "MEDS_BIRTH is not emitted; text_value is ignored."
)


@dataclass
class TokenizeConfig:
    meds_dir: str
    out: str
    tokenizer: str | None = None  # an existing tokenizer.json applied unchanged
    min_count: int = 10
    n_quantiles: int = N_QUANTILES


# ------------------------------------------------------------------------------- MEDS input
def meds_shards(meds: Path) -> dict[str, list[tuple[Path, pl.Series | None]]]:
    """Per split, the shards and (when splits come from subject_splits.parquet) the subject filter.

    Accepts data/{split}/*.parquet (this ETL, MEDS_transforms) or flat data/*.parquet with
    metadata/subject_splits.parquet (meds_etl)."""
    data = meds / "data"
    if not data.is_dir():
        raise UserError(f"{meds} is not a MEDS dataset: no data/ directory")
    by_dir = {s: sorted((data / s).rglob("*.parquet")) for s in SPLITS}
    check_parquet_files([*(data.rglob("*.parquet")), *(meds / "metadata").glob("*.parquet")], "MEDS file",
                        hint="re-create the MEDS dataset (ehrfm etl --overwrite)")
    if any(by_dir.values()):
        return {s: [(p, None) for p in files] for s, files in by_dir.items() if files}
    files = sorted(data.rglob("*.parquet"))
    splits_path = meds / "metadata" / "subject_splits.parquet"
    if not files:
        raise UserError(f"{meds}/data holds no parquet shards")
    if not splits_path.is_file():
        raise UserError(f"{meds}: shards are not in data/<split>/ and metadata/subject_splits.parquet is missing")
    sp = pl.read_parquet(splits_path)
    return {s: [(p, sp.filter(pl.col("split") == s)["subject_id"]) for p in files]
            for s in SPLITS if sp.filter(pl.col("split") == s).height}


def _scan(shards) -> pl.LazyFrame:
    frames = []
    for path, subjects in shards:
        lf = pl.scan_parquet(path)
        if subjects is not None:
            lf = lf.filter(pl.col("subject_id").is_in(subjects.implode()))
        frames.append(lf)
    return pl.concat(frames, how="diagonal_relaxed")


def _read_shard(path: Path, subjects: pl.Series | None) -> pl.DataFrame:
    schema = pl.read_parquet_schema(path)
    for c in ("subject_id", "time", "code"):
        if c not in schema:
            raise UserError(f"{path}: missing column {c!r}")
    cols = ["subject_id", "time", "code"] + (["numeric_value"] if "numeric_value" in schema else [])
    lf = pl.scan_parquet(path).select(cols)
    if subjects is not None:
        lf = lf.filter(pl.col("subject_id").is_in(subjects.implode()))
    df = lf.collect()
    if "numeric_value" not in df.columns:
        df = df.with_columns(numeric_value=pl.lit(None, pl.Float64))
    n_null = df["code"].null_count() + df["subject_id"].null_count()
    if n_null:
        raise UserError(f"{path}: {n_null} rows with a null subject_id or code")
    return df.with_columns(
        pl.col("subject_id").cast(pl.Int64), pl.col("time").cast(pl.Datetime("us")),
        pl.col("numeric_value").cast(pl.Float64),
    ).sort(["subject_id", "time"], nulls_last=False, maintain_order=True)


# ------------------------------------------------------------------------------- fitting
def fit_tokenizer(meds: Path, min_count: int = 10, n_quantiles: int = N_QUANTILES) -> dict:
    """Fit vocab and per-code quantile edges on the train split of a MEDS dataset."""
    shards = meds_shards(meds).get("train")
    if not shards:
        raise UserError(f"{meds}: no train split to fit the tokenizer on (or pass --tokenizer)")
    lf = _scan(shards)
    counts = (
        lf.group_by("code").agg(pl.len().alias("n"))
        .filter(~pl.col("code").is_in(list(NOT_EMITTED)))
        .collect(engine="streaming")
    )
    kept = counts.filter(pl.col("n") >= min_count).sort(["n", "code"], descending=[True, False])
    codes = [c for c in kept["code"].to_list() if c not in SPECIAL_TOKENS]
    qs = [i / n_quantiles for i in range(1, n_quantiles)]
    edges_df = (
        lf.filter(pl.col("numeric_value").is_not_null() & pl.col("numeric_value").is_not_nan()
                  & pl.col("code").is_in(codes))
        .group_by("code")
        .agg([pl.col("numeric_value").cast(pl.Float64).quantile(q, interpolation="linear").alias(f"q{i}")
              for i, q in enumerate(qs)])
        .sort("code")
        .collect(engine="streaming")
    )
    quantile_edges = {
        row[0]: [float(np.float32(x)) for x in row[1:]] for row in edges_df.iter_rows()
    }
    n_subjects = lf.select(pl.col("subject_id").n_unique()).collect().item()
    return {
        "format": TOKENIZER_FORMAT,
        "version": TOKENIZER_VERSION,
        "conventions": CONVENTIONS,
        "min_count": int(min_count),
        "n_quantiles": int(n_quantiles),
        "special_tokens": SPECIAL_TOKENS,
        "interval_tokens": [{"token": n, "min_us": lo} for n, lo in INTERVALS],
        "quantile_tokens": QUANTILE_TOKENS[:n_quantiles],
        "age_tokens": AGE_TOKENS,
        "age_bin_years": AGE_BIN_YEARS,
        "not_emitted": list(NOT_EMITTED),
        "fitted_on": {"split": "train", "subjects": int(n_subjects), "events": int(counts["n"].sum()),
                      "codes_seen": counts.height, "codes_kept": len(codes)},
        "vocab": SPECIAL_TOKENS + codes,
        "quantile_edges": quantile_edges,
    }


def load_tokenizer(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"tokenizer {path} not found")
    try:
        tok = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"tokenizer {path} is not valid JSON (line {e.lineno})") from None
    if tok.get("format") != TOKENIZER_FORMAT:
        raise UserError(f"{path} is not an ehrfm tokenizer (format {tok.get('format')!r})")
    return tok


def _tokenizer_json(tok: dict) -> str:
    # Deterministic bytes: the fingerprint downstream is the sha256 of this file.
    return json.dumps(tok, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------- applying
class _Encoder:
    """The fitted tokenizer as lookup tables for vectorised encoding."""

    def __init__(self, tok: dict):
        self.vocab = tok["vocab"]
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.code_ids = pl.DataFrame(
            {"code": self.vocab, "token": np.arange(len(self.vocab), dtype=np.int64)},
            schema={"code": pl.String, "token": pl.Int64},
        ).filter(~pl.col("code").is_in(tok["special_tokens"]))
        edges = tok["quantile_edges"]
        self.q_codes = pl.DataFrame({"code": list(edges), "q_row": np.arange(len(edges), dtype=np.int64)},
                                    schema={"code": pl.String, "q_row": pl.Int64})
        nq = tok["n_quantiles"]
        self.q_edges = np.array([edges[c] for c in edges], dtype=np.float64).reshape(len(edges), nq - 1)
        self.q_first = self.ids["Q1"]
        self.interval_lo = np.array([t["min_us"] for t in tok["interval_tokens"]], dtype=np.int64)
        self.interval_first = self.ids[tok["interval_tokens"][0]["token"]]
        self.unk, self.start, self.end = self.ids["UNK"], self.ids["TIMELINE_START"], self.ids["TIMELINE_END"]
        self.age_years = tok["age_bin_years"]
        self.age_tokens = tok["age_tokens"]
        self.not_emitted = tok["not_emitted"]
        self.dtype = np.uint16 if len(self.vocab) <= np.iinfo(np.uint16).max + 1 else np.uint32

    def encode(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, pl.DataFrame, int]:
        """Events of whole subjects (sorted by subject, time, statics first) -> tokens, times, index, n_unk."""
        birth = df.filter(pl.col("code") == BIRTH_CODE).group_by("subject_id").agg(pl.col("time").min().alias("birth"))
        df = df.filter(~pl.col("code").is_in(self.not_emitted))
        df = df.join(self.code_ids, on="code", how="left", maintain_order="left").with_columns(
            pl.col("token").fill_null(self.unk))
        static = df.filter(pl.col("time").is_null())
        timed = df.filter(pl.col("time").is_not_null()).with_row_index("r")
        subjects = (
            pl.concat([df.select("subject_id"), birth.select("subject_id")]).unique().sort("subject_id")
            .join(timed.group_by("subject_id").agg(pl.col("time").min().alias("first"), pl.col("time").max().alias("last")),
                  on="subject_id", how="left")
            .join(birth, on="subject_id", how="left")
            .with_columns(pl.col("first").fill_null(pl.col("birth")).fill_null(pl.datetime(1970, 1, 1)))
            .with_columns(pl.col("last").fill_null(pl.col("first")))
        )
        # Age in years at the first timed event -> AGE//<bin>.
        age = ((subjects["first"] - subjects["birth"]).dt.total_days() / 365.25).to_numpy()
        age_bin = np.where(np.isnan(age), len(self.age_tokens) - 1,
                           np.clip(np.floor(np.nan_to_num(age) / self.age_years), 0, len(self.age_tokens) - 2))
        age_token = np.array([self.ids[t] for t in self.age_tokens])[age_bin.astype(np.int64)]

        # Event tokens: [interval] code [Q] per timed row.
        t_us = timed["time"].dt.epoch("us").to_numpy()
        sid = timed["subject_id"].to_numpy()
        same = np.r_[False, sid[1:] == sid[:-1]]
        gap = np.r_[0, np.diff(t_us)]
        has_int = same & (gap >= self.interval_lo[0])
        int_tok = self.interval_first + np.searchsorted(self.interval_lo, gap, side="right") - 1
        q = timed.join(self.q_codes, on="code", how="left", maintain_order="left")
        q_row = q["q_row"].fill_null(-1).to_numpy()
        val = q["numeric_value"].fill_null(float("nan")).to_numpy()
        has_q = (q_row >= 0) & ~np.isnan(val)
        q_tok = np.zeros(len(timed), np.int64)
        if has_q.any():
            rows = np.nonzero(has_q)[0]
            q_tok[rows] = self.q_first + (self.q_edges[q_row[rows]] <= val[rows, None]).sum(1)
        code_tok = timed["token"].to_numpy()

        parts_sid, parts_key, parts_tok, parts_t = [], [], [], []

        def add(s, key, tok, t):
            parts_sid.append(np.asarray(s, np.int64))
            parts_key.append(np.asarray(key, np.int64))
            parts_tok.append(np.asarray(tok, np.int64))
            parts_t.append(np.asarray(t, np.int64))

        r = np.arange(len(timed), dtype=np.int64)
        add(sid[has_int], 3 * r[has_int], int_tok[has_int], t_us[has_int])
        add(sid, 3 * r + 1, code_tok, t_us)
        add(sid[has_q], 3 * r[has_q] + 2, q_tok[has_q], t_us[has_q])
        # Prefix and end: keys below and above every event key of any subject.
        s_all = subjects["subject_id"].to_numpy()
        first_us = subjects["first"].dt.epoch("us").to_numpy()
        last_us = subjects["last"].dt.epoch("us").to_numpy()
        low, high = -(1 << 40), 1 << 60
        add(s_all, np.full(len(s_all), low), np.full(len(s_all), self.start), first_us)
        if static.height:
            st = static.with_columns(pl.int_range(pl.len()).over("subject_id").alias("k")).join(
                subjects.select("subject_id", "first"), on="subject_id", how="left")
            add(st["subject_id"].to_numpy(), low + 1 + st["k"].to_numpy(), st["token"].to_numpy(),
                st["first"].dt.epoch("us").to_numpy())
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
        n_unk = int((code_tok == self.unk).sum()) + int((static["token"] == self.unk).sum() if static.height else 0)
        return tokens, times, index, n_unk


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


def _bin_to_npy(bin_path: Path, npy_path: Path, dtype, n: int, chunk: int = 1 << 24) -> None:
    out = np.lib.format.open_memmap(npy_path, mode="w+", dtype=dtype, shape=(n,))
    src = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
    for i in range(0, n, chunk):
        out[i:i + chunk] = src[i:i + chunk]
    out.flush()
    del out, src
    bin_path.unlink()


def tokenize(meds: str | os.PathLike, out: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
             overwrite: bool = False, min_count: int = 10, **options) -> dict:
    """Tokenize a MEDS dataset into a token dir at `out`; return a summary dict (also stats.json)."""
    t0 = time.time()
    meds = Path(meds)
    if not meds.is_dir():
        raise UserError(f"MEDS dataset {meds} not found")
    unknown = set(options) - {"n_quantiles"}
    if unknown:
        raise TypeError(f"tokenize() got unknown options: {sorted(unknown)}")
    if min_count < 1:
        raise UserError(f"--min-count must be at least 1 (got {min_count})")
    cfg = TokenizeConfig(meds_dir=str(meds.resolve()), out=str(out),
                         tokenizer=str(Path(tokenizer).resolve()) if tokenizer else None,
                         min_count=int(min_count), n_quantiles=int(options.get("n_quantiles", N_QUANTILES)))
    if Path(out).exists() and not overwrite:
        raise UserError(f"output {out} already exists; pass --overwrite to replace it")
    shards = meds_shards(meds)
    if tokenizer:
        tok = load_tokenizer(tokenizer)
        cfg.min_count, cfg.n_quantiles = tok["min_count"], tok["n_quantiles"]
    else:
        tok = fit_tokenizer(meds, cfg.min_count, cfg.n_quantiles)
    enc = _Encoder(tok)

    stats = {"vocab_size": len(enc.vocab), "dtype": np.dtype(enc.dtype).name, "splits": {}}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        (tmp / "tokenizer.json").write_text(_tokenizer_json(tok))
        jobs = [(s, p, subj) for s in SPLITS for p, subj in shards.get(s, [])]
        state = {s: dict(subjects=0, events=0, tokens=0, unk=0, index=[]) for s in shards}
        files = {}
        for s in shards:
            (tmp / s).mkdir()
            files[s] = (open(tmp / s / "tokens.bin", "wb"), open(tmp / s / "times.bin", "wb"))  # noqa: SIM115 (closed in the finally below)
        try:
            for split, path, subjects in progress(jobs, desc="tokenize: shards", unit="shard"):
                df = _read_shard(path, subjects)
                st = state[split]
                for chunk in _subject_chunks(df, CHUNK_SUBJECTS):
                    tokens, times, index, n_unk = enc.encode(chunk)
                    _append(files[split][0], tokens)
                    _append(files[split][1], times.astype(np.int64))
                    st["index"].append(index.with_columns(pl.col("offset") + st["tokens"]))
                    st["subjects"] += index.height
                    st["events"] += chunk.height
                    st["tokens"] += len(tokens)
                    st["unk"] += n_unk
        finally:
            for f1, f2 in files.values():
                f1.close()
                f2.close()
        for s, st in state.items():
            _bin_to_npy(tmp / s / "tokens.bin", tmp / s / "tokens.npy", enc.dtype, st["tokens"])
            _bin_to_npy(tmp / s / "times.bin", tmp / s / "times.npy", np.int64, st["tokens"])
            index = pl.concat(st["index"]) if st["index"] else pl.DataFrame(
                schema={"subject_id": pl.Int64, "offset": pl.Int64, "length": pl.Int64})
            if index["subject_id"].is_duplicated().any():
                raise UserError(f"{meds}: a subject appears in more than one shard of split {s!r}")
            index.write_parquet(tmp / s / "index.parquet")
            stats["splits"][s] = {
                "subjects": st["subjects"], "events": st["events"], "tokens": st["tokens"],
                "tokens_per_subject": round(st["tokens"] / max(st["subjects"], 1), 2),
                "unk_fraction": round(st["unk"] / max(st["events"], 1), 6),
            }
        if "train" in stats["splits"] and "tuning" in stats["splits"]:
            _check_disjoint(tmp, meds)
        stats["seconds"] = round(time.time() - t0, 2)
        write_json(tmp / "stats.json", stats)
        write_json(tmp / "config.json", cfg)
    seconds = time.time() - t0
    n_sub = sum(v["subjects"] for v in stats["splits"].values())
    n_ev = sum(v["events"] for v in stats["splits"].values())
    n_tok = sum(v["tokens"] for v in stats["splits"].values())
    summary(f"tokenize: {n_sub} subjects, {n_ev} events, {n_tok} tokens, vocab {stats['vocab_size']} "
            f"({'applied ' + str(tokenizer) if tokenizer else 'fitted on train'}) -> {out} in {seconds:.1f}s")
    return {"out": str(out), "subjects": n_sub, "events": n_ev, "tokens": n_tok, **stats, "seconds": round(seconds, 2)}


def _check_disjoint(tmp: Path, meds: Path) -> None:
    ids = {s: set(pl.read_parquet(tmp / s / "index.parquet")["subject_id"].to_list())
           for s in SPLITS if (tmp / s / "index.parquet").is_file()}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            if a in ids and b in ids and ids[a] & ids[b]:
                raise UserError(f"{meds}: {len(ids[a] & ids[b])} subjects are in both {a} and {b}")


def decode(token_dir: str | os.PathLike, ids) -> list[str]:
    """Token ids -> token strings with the token dir's (or a tokenizer.json's) vocab."""
    vocab = load_tokenizer(token_dir)["vocab"]
    return [vocab[int(i)] for i in np.asarray(ids).ravel()]
