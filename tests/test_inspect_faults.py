"""Faults a break-it pass found in inspection and the heads' inputs (tokenize --decode, labels, baseline).

- `tokenize --decode` of a tokens.npy holding an id outside the vocab printed a header, then an IndexError
  traceback; a code holding a line break forged a line of its output, and one holding ESC coloured the terminal.
- `ehrfm labels` printed each warning about its dataset 3 times (it opens the dataset 3 times).
- Labels `ehrfm labels` made from naive MEDS times were read against the same stays zoned Asia/Tokyo: the
  sidecar was trusted as UTC instants, and 46 of 295 ICU-admission histories held their outcome (baseline
  AUROC 0.963 instead of 0.611), with only a warning.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

ENV = {**os.environ, "EHRFM_QUIET": "1"}


def ehrfm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ehrfm", *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=600, cwd=cwd)


def _copy_tokens(src, dst):
    shutil.copytree(src, dst)
    for marker in dst.glob(".ehrfm-*"):  # a hand-edited copy is no ehrfm output
        marker.unlink()
    return dst


def test_decode_refuses_an_id_outside_the_vocab_in_one_line(synth_tokens, tmp_path):
    tok = _copy_tokens(synth_tokens, tmp_path / "tok")
    tokens = np.load(tok / "train" / "tokens.npy")
    vocab = len(json.loads((tok / "tokenizer.json").read_text())["vocab"])
    tokens[5] = vocab + 7
    np.save(tok / "train" / "tokens.npy", tokens)
    p = ehrfm("tokenize", tok, "--decode", "--limit", "8")
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.strip() == (
        f"ehrfm tokenize: error: token dir {tok}: train/tokens.npy, the shown subject's tokens: 1 token id outside "
        f"0..{vocab - 1}, the vocab of {tok / 'tokenizer.json'} (tokens and tokenizer do not belong together); "
        "re-create the token dir with `ehrfm tokenize`")
    # the Python API alike
    from ehrfm.errors import UserError
    from tokenization.tokenize import decode

    with pytest.raises(UserError, match=r"2 token ids outside 0\.\.\d+, the vocab of"):
        decode(tok, [0, -1, vocab])


def test_decode_prints_each_token_on_its_line_whatever_its_code_holds(synth_tokens, tmp_path):
    tok = _copy_tokens(synth_tokens, tmp_path / "tok")
    tz = json.loads((tok / "tokenizer.json").read_text())
    first = int(np.load(tok / "train" / "tokens.npy")[1])  # the first subject's second token
    forged = "LAB//1//mEq/L\nQ3  2149-01-27T20:42:00  FAKE"
    tz["vocab"][first] = forged
    (tok / "tokenizer.json").write_text(json.dumps(tz))
    p = ehrfm("tokenize", tok, "--decode", "--limit", "3")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 4 and lines[2].endswith("  LAB//1//mEq/L\\nQ3  2149-01-27T20:42:00  FAKE"), lines
    from ehrfm.io import printable

    assert printable("a\x1b[31mb\u202ec\x00d é") == "a\\x1b[31mb\\u202ec\\x00d é"


def test_labels_say_each_fact_about_their_dataset_once(synth_meds, tmp_path):
    meds = tmp_path / "meds"
    shutil.copytree(synth_meds, meds)
    for marker in meds.glob(".ehrfm-*"):
        marker.unlink()
    shard = sorted((meds / "data" / "train").glob("*.parquet"))[0]
    df = pl.read_parquet(shard)
    lab = df["code"].str.starts_with("LAB//")
    df.with_columns(pl.when(lab & (pl.int_range(pl.len()) % 7 == 0)).then(None).otherwise(pl.col("time")).alias("time")
                    ).write_parquet(shard)
    p = ehrfm("labels", meds, "--task", "all", "--out", tmp_path / "labels")
    assert p.returncode == 0, p.stderr
    said = [line for line in p.stderr.splitlines() if "dropped rows with a null time whose code is not static" in line]
    assert len(said) == 1, p.stderr


def test_labels_made_from_naive_times_are_refused_beside_the_same_stays_zoned(synth_meds, tmp_path):
    labels = tmp_path / "labels"
    p = ehrfm("labels", synth_meds, "--task", "all", "--out", labels)
    assert p.returncode == 0, p.stderr
    assert json.loads((labels / "icu_admission.json").read_text())["meds_time_zones"] == []
    zoned = tmp_path / "zoned"
    shutil.copytree(synth_meds, zoned)
    for marker in zoned.glob(".ehrfm-*"):
        marker.unlink()
    for shard in (zoned / "data").rglob("*.parquet"):
        pl.read_parquet(shard).with_columns(pl.col("time").dt.replace_time_zone("Asia/Tokyo")).write_parquet(shard)
    p = ehrfm("baseline", zoned, "--labels", labels / "icu_admission.parquet", "--out", tmp_path / "bl")
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().endswith(
        f"label file {labels / 'icu_admission.parquet'} was written by `ehrfm labels` from MEDS times without a time zone "
        f"(its sidecar icu_admission.json), and the times of MEDS dataset {zoned} are in Asia/Tokyo: its prediction times "
        "would sit hours off these histories (look-ahead). Make the labels from this data (`ehrfm labels`)"), p.stderr
    assert not (tmp_path / "bl").exists()
    # labels made from the zoned data itself are read beside it (UTC instants, as `ehrfm labels` reads the data)
    p = ehrfm("labels", zoned, "--task", "all", "--out", tmp_path / "zlabels")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "zlabels" / "icu_admission.json").read_text())["meds_time_zones"] == ["Asia/Tokyo"]
    p = ehrfm("baseline", zoned, "--labels", tmp_path / "zlabels" / "icu_admission.parquet", "--out", tmp_path / "bl")
    assert p.returncode == 0, p.stderr
