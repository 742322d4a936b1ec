"""MEDS -> tokens: exact ETHOS sequences on a hand-made dataset, alignment on synthetic and real data,
train-only fitting, and applying a tokenizer unchanged."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import polars as pl
import pytest

from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir
from tokenization.tokenize import INTERVALS, SPECIAL_TOKENS, decode, tokenize

T0 = dt.datetime(2150, 3, 1, 8, 0)


def _write_meds(root, rows_by_split):
    """A MEDS dir with one shard per split: {split: [(subject_id, time, code, numeric_value), ...]}."""
    for split, rows in rows_by_split.items():
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        pl.DataFrame(rows, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
                                   "numeric_value": pl.Float32}, orient="row").write_parquet(root / "data" / split / "0.parquet")
    return root


def _subject(sid, lab_values, rare=True):
    m = dt.timedelta(minutes=1)
    rows = [
        (sid, None, "GENDER//F", None),
        (sid, dt.datetime(2100, 1, 1), "MEDS_BIRTH", None),
        (sid, T0, "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", None),
        (sid, T0 + 3 * m, "LAB//50912//mg/dL", lab_values[0]),  # 3 min later: no interval token
        (sid, T0 + 90 * m, "LAB//50912//mg/dL", lab_values[1]),  # 87 min: 1h-2h
        (sid, T0 + 90 * m, "RARE_CODE", None),
        (sid, T0 + dt.timedelta(days=200), "HOSPITAL_DISCHARGE//HOME", None),  # >= 6 months: >6mt
    ]
    return [r for r in rows if rare or r[2] != "RARE_CODE"]


@pytest.fixture()
def hand_meds(tmp_path):
    train = []
    for i in range(10):
        train += _subject(i, [float(i), float(i) + 0.5], rare=i == 0)
    return _write_meds(tmp_path / "meds", {
        "train": train,
        "tuning": _subject(100, [4.2, 100.0]),
        "held_out": _subject(200, [-5.0, 9.9]),
    })


def test_exact_tokens_and_times_on_a_hand_made_dataset(hand_meds, tmp_path):
    res = tokenize(hand_meds, tmp_path / "tok", min_count=10)
    td = TokenDir(tmp_path / "tok")
    assert td.vocab[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS and td.vocab[0] == "PAD"
    assert "RARE_CODE" not in td.vocab and "MEDS_BIRTH" not in td.vocab  # 1 per subject < min_count; birth -> age
    edges = td.tokenizer["quantile_edges"]["LAB//50912//mg/dL"]
    assert len(edges) == 9
    tokens, times = td.split("tuning").subject(0)
    assert td.decode(tokens) == [
        "TIMELINE_START", "GENDER//F", "AGE//50-54",
        "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM",
        "LAB//50912//mg/dL", f"Q{1 + sum(e <= 4.2 for e in edges)}",
        "1h-2h", "LAB//50912//mg/dL", "Q10", "UNK",
        ">6mt", "HOSPITAL_DISCHARGE//HOME",
        "TIMELINE_END",
    ]
    us = lambda d: int((d - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1))  # noqa: E731
    m = dt.timedelta(minutes=1)
    assert times.tolist() == [us(T0)] * 4 + [us(T0 + 3 * m)] * 2 + [us(T0 + 90 * m)] * 4 \
        + [us(T0 + dt.timedelta(days=200))] * 3
    low = td.decode(td.split("held_out").subject(0)[0])
    assert low[5] == "Q1" and low[8] == "Q10"  # below and above every train value
    # 7 MEDS rows, 6 emitted as codes (MEDS_BIRTH becomes the age token), 1 of them UNK.
    tun = res["splits"]["tuning"]
    assert (tun["events"], tun["code_events"], tun["unk_events"]) == (7, 6, 1)
    assert tun["unk_fraction"] == pytest.approx(1 / 6, abs=1e-6) and tun["code_tokens"] == 6
    assert tun["tokens_per_event"] == pytest.approx(13 / 6, abs=1e-4)


def test_interval_bins_follow_ethos(hand_meds, tmp_path):
    names = [n for n, _ in INTERVALS]
    assert names == ["5m-15m", "15m-1h", "1h-2h", "2h-6h", "6h-12h", "12h-1d", "1d-3d", "3d-1w", "1w-2w",
                     "2w-1mt", "1mt-3mt", "3mt-6mt", ">6mt"]
    gaps_min = [4, 5, 14, 15, 59, 60, 300, 24 * 60, 8 * 24 * 60, 100 * 24 * 60, 300 * 24 * 60]
    expect = [None, "5m-15m", "5m-15m", "15m-1h", "15m-1h", "1h-2h", "2h-6h", "1d-3d", "1w-2w", "3mt-6mt", ">6mt"]
    rows, t = [], T0
    for g in gaps_min:
        t = t + dt.timedelta(minutes=g)
        rows.append((1, t, "X", None))
    rows = [(1, T0, "X", None)] + rows
    _write_meds(tmp_path / "m", {"train": rows})
    tokenize(tmp_path / "m", tmp_path / "t", min_count=1)
    td = TokenDir(tmp_path / "t")
    seq = td.decode(td.split("train").subject(0)[0])
    assert seq[:3] == ["TIMELINE_START", "AGE//UNK", "X"]
    got, i = [], 3
    while seq[i] != "TIMELINE_END":
        if seq[i] == "X":
            got.append(None)
            i += 1
        else:
            got.append(seq[i])
            i += 2
    assert got == expect
    # DESIGN.md names the open last bin ">6mt"; before 2026-12-07 it was "=6mt" (a helper). A tokenizer of that time
    # is applied as it was written: its own names, its token ids unchanged.
    old = json.loads((tmp_path / "t" / "tokenizer.json").read_text().replace('">6mt"', '"=6mt"'))
    (tmp_path / "old.json").write_text(json.dumps(old))
    tokenize(tmp_path / "m", tmp_path / "t_old", tokenizer=tmp_path / "old.json")
    td_old = TokenDir(tmp_path / "t_old")
    np.testing.assert_array_equal(td_old.split("train").subject(0)[0], td.split("train").subject(0)[0])
    assert td_old.decode(td_old.split("train").subject(0)[0])[-3:-1] == ["=6mt", "X"] and seq[-3:-1] == [">6mt", "X"]


def _check_token_dir(tok):
    td = TokenDir(tok)
    stats = json.loads((tok / "stats.json").read_text())
    assert stats["vocab_size"] == td.vocab_size
    start, end = td.token_id("TIMELINE_START"), td.token_id("TIMELINE_END")
    q_ids = {td.token_id(f"Q{i}") for i in range(1, 11)}
    special = {td.token_id(t) for t in SPECIAL_TOKENS}
    all_ids = set()
    for split in td.splits:
        sp = td.split(split)
        assert sp.tokens.dtype == np.uint16 and sp.times.dtype == np.int64
        assert len(sp.tokens) == len(sp.times) == stats["splits"][split]["tokens"]
        assert len(sp) == stats["splits"][split]["subjects"] > 0
        # Offsets are contiguous and cover the arrays exactly.
        assert sp.offsets[0] == 0 and (sp.offsets[1:] == sp.offsets[:-1] + sp.lengths[:-1]).all()
        assert sp.offsets[-1] + sp.lengths[-1] == len(sp.tokens)
        tokens, times = np.asarray(sp.tokens), np.asarray(sp.times)
        assert tokens.max() < td.vocab_size and (tokens != 0).all()
        # Per subject: START ... END and non-decreasing times.
        assert (tokens[sp.offsets] == start).all() and (tokens[sp.offsets + sp.lengths - 1] == end).all()
        step = np.diff(times)
        boundary = np.zeros(len(tokens) - 1, bool)
        boundary[sp.offsets[1:] - 1] = True
        assert (step[~boundary] >= 0).all()
        # A quantile token always directly follows a (non-special) code token, at the same time.
        qpos = np.nonzero(np.isin(tokens, list(q_ids)))[0]
        assert (qpos > 0).all() and not np.isin(tokens[qpos - 1], list(special)).any()
        assert (times[qpos] == times[qpos - 1]).all()
        all_ids |= set(np.unique(tokens).tolist())
    return td, stats


def test_synthetic_token_dir_is_aligned(synth_tokens, synth_meds):
    td, stats = _check_token_dir(synth_tokens)
    assert td.meds_dir == synth_meds.resolve()
    assert stats["splits"]["train"]["unk_fraction"] < 0.01
    for code in ("MEDS_DEATH", "HOSPITAL_DISCHARGE//HOME", "GENDER//F", "LAB//50912//mg/dL"):
        td.token_id(code)
    # A discharge token carries the discharge time of the MEDS event.
    meds = pl.read_parquet(synth_meds / "data/train/*.parquet")
    sp = td.split("train")
    sid = int(sp.subject_ids[0])
    toks, times = sp.subject(0)
    names = td.decode(toks)
    want = meds.filter((pl.col("subject_id") == sid) & pl.col("code").str.starts_with("HOSPITAL_DISCHARGE//"))
    got = [int(t) for n, t in zip(names, times, strict=False) if n.startswith("HOSPITAL_DISCHARGE//")]
    assert got == want["time"].dt.epoch("us").to_list()
    # Events per split match the MEDS shards (MEDS_BIRTH counted as an input event).
    assert stats["splits"]["train"]["events"] == meds.height


def test_real_demo_token_dir_is_aligned(demo_tokens):
    td, stats = _check_token_dir(demo_tokens)
    assert sum(v["subjects"] for v in stats["splits"].values()) == 100
    assert td.vocab_size > 200


def test_tokenizer_is_fitted_on_train_only(synth_meds, synth_tokens, tmp_path):
    changed = tmp_path / "meds"
    shutil.copytree(synth_meds, changed)
    for p in (changed / "data/held_out").glob("*.parquet"):
        df = pl.read_parquet(p)
        df = df.with_columns(numeric_value=pl.col("numeric_value") * 10 + 3,
                             code=pl.when(pl.col("code").str.starts_with("MEDICATION//"))
                             .then(pl.lit("MEDICATION//Something New")).otherwise(pl.col("code")))
        df.write_parquet(p)
    tokenize(changed, tmp_path / "tok")
    assert (tmp_path / "tok/tokenizer.json").read_bytes() == (synth_tokens / "tokenizer.json").read_bytes()
    assert TokenDir(tmp_path / "tok").fingerprint == TokenDir(synth_tokens).fingerprint
    assert np.array_equal(TokenDir(tmp_path / "tok").split("train").tokens, TokenDir(synth_tokens).split("train").tokens)
    assert not np.array_equal(TokenDir(tmp_path / "tok").split("held_out").tokens,
                              TokenDir(synth_tokens).split("held_out").tokens)


def test_apply_an_existing_tokenizer_to_another_dataset(synth_tokens, demo_meds, tmp_path, capsys):
    res = tokenize(demo_meds, tmp_path / "tok", tokenizer=synth_tokens / "tokenizer.json")
    # Mostly UNK is said per split, with the likely cause and the most frequent unknown codes (codes, not rows).
    err = capsys.readouterr().err
    train = res["splits"]["train"]
    assert f"ehrfm: warning: tokenize: train: {train['unk_fraction']:.1%} of its {train['code_events']:,} code events became UNK" in err
    assert "the applied tokenizer" in err and "was fitted on other codes" in err and "the most frequent: " in err
    td = TokenDir(tmp_path / "tok")
    assert td.fingerprint == TokenDir(synth_tokens).fingerprint and td.vocab == TokenDir(synth_tokens).vocab
    _check_token_dir(tmp_path / "tok")
    # Real codes the synthetic vocab never saw become UNK; shared codes keep their ids.
    assert res["splits"]["train"]["unk_fraction"] > 0.3
    assert td.config["tokenizer"].endswith("tokenizer.json")
    assert decode(tmp_path / "tok", [0, 2, 3]) == ["PAD", "TIMELINE_START", "TIMELINE_END"]


def test_flat_meds_layout_with_subject_splits(hand_meds, tmp_path):
    flat = tmp_path / "flat"
    (flat / "data").mkdir(parents=True)
    (flat / "metadata").mkdir()
    frames = [pl.read_parquet(hand_meds / f"data/{s}/0.parquet").with_columns(split=pl.lit(s))
              for s in ("train", "tuning", "held_out")]
    allf = pl.concat(frames)
    allf.drop("split").write_parquet(flat / "data/0.parquet")
    allf.select("subject_id", "split").unique().write_parquet(flat / "metadata/subject_splits.parquet")
    tokenize(flat, tmp_path / "a")
    tokenize(hand_meds, tmp_path / "b")
    for s in ("train", "tuning", "held_out"):
        assert np.array_equal(TokenDir(tmp_path / "a").split(s).tokens, TokenDir(tmp_path / "b").split(s).tokens)


def test_a_fitted_tokenizer_with_few_unknown_codes_does_not_warn(synth_tokens, synth_meds, tmp_path, capsys):
    res = tokenize(synth_meds, tmp_path / "again", tokenizer=synth_tokens / "tokenizer.json")
    assert max(v["unk_fraction"] for v in res["splits"].values()) < 0.05
    assert "became UNK" not in capsys.readouterr().err


def test_tokenize_bad_input(hand_meds, tmp_path):
    with pytest.raises(UserError, match="not found"):
        tokenize(tmp_path / "nope", tmp_path / "t")
    tokenize(hand_meds, tmp_path / "t")
    with pytest.raises(UserError, match="already exists"):
        tokenize(hand_meds, tmp_path / "t")
    with pytest.raises(UserError, match="tokenizer .* not found"):
        tokenize(hand_meds, tmp_path / "t2", tokenizer=tmp_path / "missing.json")
    shutil.rmtree(hand_meds / "data/train")
    with pytest.raises(UserError, match="no train split"):
        tokenize(hand_meds, tmp_path / "t3")
    bad = pl.read_parquet(hand_meds / "data/tuning/0.parquet").drop("code")
    bad.write_parquet(hand_meds / "data/tuning/0.parquet")
    with pytest.raises(UserError, match=r"0\.parquet lacks column 'code'"):
        tokenize(hand_meds, tmp_path / "t4", tokenizer=tmp_path / "t/tokenizer.json")
    assert not (tmp_path / "t4").exists()


def test_encoding_in_small_subject_chunks_gives_the_same_tokens(synth_meds, synth_tokens, tmp_path, monkeypatch):
    import tokenization.tokenize as tok_module

    monkeypatch.setattr(tok_module, "CHUNK_SUBJECTS", 7)
    tokenize(synth_meds, tmp_path / "tok")
    a, b = TokenDir(tmp_path / "tok"), TokenDir(synth_tokens)
    for s in ("train", "tuning", "held_out"):
        assert np.array_equal(a.split(s).tokens, b.split(s).tokens)
        assert np.array_equal(a.split(s).times, b.split(s).times)
        assert np.array_equal(a.split(s).offsets, b.split(s).offsets)


def _in_memory_fit(meds, heads, n_quantiles=10):
    """The fit as it was before streaming: every train row in memory, one polars group_by."""
    df = pl.concat([pl.read_parquet(p).select("subject_id", "code", pl.col("numeric_value").cast(pl.Float64))
                    for p in sorted((meds / "data" / "train").glob("*.parquet"))])
    df = df.filter(pl.col("code") != "MEDS_BIRTH")
    counts = dict(df.group_by("code").len().iter_rows())
    qs = [i / n_quantiles for i in range(1, n_quantiles)]
    edges = (df.filter(pl.col("numeric_value").is_not_null() & pl.col("numeric_value").is_not_nan()
                       & pl.col("code").is_in(heads))
             .group_by("code").agg([pl.col("numeric_value").quantile(q, interpolation="linear").alias(f"q{i}")
                                    for i, q in enumerate(qs)]).sort("code"))
    return counts, {r[0]: [float(np.float32(x)) for x in r[1:]] for r in edges.iter_rows()}, df["subject_id"].n_unique()


def test_streamed_fit_equals_an_in_memory_fit(synth_meds):
    from tokenization.tokenize import fit_tokenizer

    tok = fit_tokenizer(synth_meds)
    heads = [t for t in tok["vocab"] if t not in SPECIAL_TOKENS and t not in set(tok["continuation_tokens"])]
    counts, edges, n_subjects = _in_memory_fit(synth_meds, heads)
    assert len(edges) > 20  # labs and vitals with deciles
    assert tok["quantile_edges"] == edges
    assert list(tok["quantile_edges"]) == sorted(edges)  # key order: the file's bytes are the fingerprint
    assert tok["fitted_on"] == {"split": "train", "subjects": n_subjects, "events": sum(counts.values()),
                                "codes_seen": len(counts), "codes_kept": len(tok["vocab"]) - len(SPECIAL_TOKENS)}
    # Deciles fitted a few codes at a time (a budget smaller than most codes' values): the same file.
    small = fit_tokenizer(synth_meds, batch_values=50)
    assert json.dumps(small) == json.dumps(tok)


def test_the_decile_spill_holds_a_slice_of_a_shard_never_the_whole_shard(synth_meds, monkeypatch):
    """With several decile batches, the spill pass collected each train shard's (code, value) rows
    at once: memory followed the shard (another ETL's shard holds up to 10^8 events), not the
    batch. Since 2026-12-03 it reads a shard READ_ROWS rows at a time, with the same edges."""
    import tokenization.tokenize as tz

    whole = tz.fit_tokenizer(synth_meds)
    collected = []
    collect = pl.LazyFrame.collect

    def counting(self, *args, **kwargs):
        df = collect(self, *args, **kwargs)
        if df.columns == ["_b", "_c", "numeric_value"]:  # the spill pass's values (_quantile_edges)
            collected.append(df.height)
        return df

    monkeypatch.setattr(pl.LazyFrame, "collect", counting)
    monkeypatch.setattr(tz, "READ_ROWS", 997)
    sliced = tz.fit_tokenizer(synth_meds, batch_values=5000)
    assert json.dumps(sliced) == json.dumps(whole)
    train = pl.concat([pl.read_parquet(p) for p in (synth_meds / "data" / "train").glob("*.parquet")])
    heads = set(whole["quantile_edges"])
    n_values = train.filter(pl.col("code").is_in(heads) & pl.col("numeric_value").is_not_null()
                            & pl.col("numeric_value").is_finite()).height
    assert n_values > 20 * 997 and sum(collected) == n_values  # every value spilled once
    assert max(collected) <= 997


def test_fit_sums_counts_and_values_over_train_shards(hand_meds, tmp_path):
    from tokenization.tokenize import fit_tokenizer

    whole = fit_tokenizer(hand_meds, min_count=3)
    train = pl.read_parquet(hand_meds / "data" / "train" / "0.parquet")
    split = tmp_path / "split"
    shutil.copytree(hand_meds, split)
    (split / "data" / "train" / "0.parquet").unlink()
    train.filter(pl.col("subject_id") < 4).write_parquet(split / "data" / "train" / "0.parquet")
    train.filter(pl.col("subject_id") >= 4).write_parquet(split / "data" / "train" / "1.parquet")
    parts = fit_tokenizer(split, min_count=3, batch_values=1)
    assert parts == whole
    # Ten train subjects, two lab values each: the deciles of 0, 0.5, 1, ..., 9.5 over both shards.
    assert parts["fitted_on"]["subjects"] == 10
    assert parts["quantile_edges"]["LAB//50912//mg/dL"][4] == 4.75


def test_stats_record_the_largest_token_id_and_train_checks_ids_by_it(hand_meds, tmp_path):
    from ehrfm.train import TrainConfig, train

    tokenize(hand_meds, tmp_path / "t", min_count=3)
    td = TokenDir(tmp_path / "t")
    for s in ("train", "tuning", "held_out"):
        assert td.stats["splits"][s]["max_token_id"] == int(np.max(td.split(s).tokens)) < td.vocab_size
    # The trainer reads every id (it reads every token for the data's digest anyway), so the tokens,
    # not stats.json, decide: a stats.json claiming an id beyond the vocab does not stop valid tokens
    # (test_train_faults4: a stale one claiming valid ids does not let an id >= V in).
    stats = json.loads((tmp_path / "t" / "stats.json").read_text())
    stats["splits"]["train"]["max_token_id"] = td.vocab_size
    (tmp_path / "t" / "stats.json").write_text(json.dumps(stats))
    res = train(TrainConfig(tokens_dir=str(tmp_path / "t"), out_dir=str(tmp_path / "run"), tokens=1000, batch_size=2,
                            context=8))
    assert res["status"] == "completed"


def test_min_count_with_a_fitted_tokenizer_is_its_own_or_refused(synth_tokens, synth_meds, tmp_path):
    """--min-count with --tokenizer used to be silently ignored (the vocabulary is the tokenizer's):
    a user asking for --min-count 1 got the fitted tokenizer's UNKs without a word."""
    fitted = json.loads((synth_tokens / "tokenizer.json").read_text())["min_count"]
    with pytest.raises(UserError, match=rf"was fitted with --min-count {fitted}, not 1: drop --min-count"):
        tokenize(synth_meds, tmp_path / "t1", tokenizer=synth_tokens / "tokenizer.json", min_count=1)
    assert not (tmp_path / "t1").exists()
    tokenize(synth_meds, tmp_path / "t2", tokenizer=synth_tokens / "tokenizer.json", min_count=fitted)
    assert json.loads((tmp_path / "t2" / "config.json").read_text())["min_count"] == fitted


def test_non_ascii_codes_round_trip_under_an_ascii_locale(hand_meds, tmp_path, repo_root):
    """tokenizer.json (written with its codes as they are, ensure_ascii=False) and the MEDS
    metadata were read and written in the locale's encoding: under LC_ALL=C (a cron job, a
    container without locales, SLURM's batch environment) a code like `LAB//50912//µg/L` made
    tokenize fail with a UnicodeEncodeError traceback, and a tokenizer.json or dataset.json
    written under UTF-8 could not be read back. Since 2026-12-03 every text file is UTF-8."""
    import os
    import subprocess
    import sys

    for split in ("train", "tuning", "held_out"):
        p = hand_meds / "data" / split / "0.parquet"
        pl.read_parquet(p).with_columns(pl.col("code").str.replace("mg/dL", "µg/L", literal=True)
                                        .str.replace("EMERGENCY ROOM", "URGENCES PÉDIATRIQUES", literal=True)).write_parquet(p)
    (hand_meds / "metadata").mkdir()
    (hand_meds / "metadata/dataset.json").write_text(json.dumps({"dataset_name": "Hôpital Saint-Éloi", "meds_version": "0.4"},
                                                                ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": "", "EHRFM_QUIET": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ehrfm", "tokenize", *map(str, args)], capture_output=True,
                              cwd=repo_root, env=env)

    first = cli(hand_meds, "--out", tmp_path / "tok")
    assert first.returncode == 0, first.stderr.decode("utf-8", "replace")
    text = (tmp_path / "tok/tokenizer.json").read_text(encoding="utf-8")
    assert "LAB//50912//µg/L" in text and "PÉDIATRIQUES" in text
    again = cli(hand_meds, "--out", tmp_path / "tok2", "--tokenizer", tmp_path / "tok/tokenizer.json")
    assert again.returncode == 0, again.stderr.decode("utf-8", "replace")
    assert (tmp_path / "tok2/tokenizer.json").read_text(encoding="utf-8") == text
    for split in ("train", "tuning", "held_out"):
        assert np.array_equal(np.load(tmp_path / "tok" / split / "tokens.npy"), np.load(tmp_path / "tok2" / split / "tokens.npy"))
