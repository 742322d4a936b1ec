"""ehrfm.tokens.TokenDir on a hand-made token dir (the layout the tokenizer writes)."""

import hashlib
import json

import numpy as np
import polars as pl
import pytest

from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir


def _write_token_dir(path):
    vocab = ["PAD", "UNK", "TIMELINE_START", "TIMELINE_END", "GENDER//F", "MEDS_DEATH"]
    (path / "train").mkdir(parents=True)
    (path / "tokenizer.json").write_text(json.dumps({"vocab": vocab}))
    (path / "config.json").write_text(json.dumps({"meds_dir": "/some/meds"}))
    np.save(path / "train" / "tokens.npy", np.array([2, 4, 5, 3, 2, 4, 3], dtype=np.uint16))
    np.save(path / "train" / "times.npy", np.array([10, 10, 20, 20, 5, 5, 7], dtype=np.int64))
    pl.DataFrame({"subject_id": [7, 9], "offset": [0, 4], "length": [4, 3]}).write_parquet(path / "train" / "index.parquet")
    return vocab


def test_token_dir_reads_vocab_arrays_and_subjects(tmp_path):
    vocab = _write_token_dir(tmp_path)
    td = TokenDir(tmp_path)
    assert td.vocab == vocab and td.vocab_size == 6
    assert td.token_id("MEDS_DEATH") == 5 and td.pad_id == 0
    assert td.fingerprint == hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest()
    assert str(td.meds_dir) == "/some/meds"
    tr = td.split("train")
    assert len(tr) == 2 and tr.n_tokens == 7
    toks, times = tr.subject(1)
    assert td.decode(toks) == ["TIMELINE_START", "GENDER//F", "TIMELINE_END"]
    assert times.tolist() == [5, 5, 7]
    assert tr.subject_index() == {7: 0, 9: 1}
    with pytest.raises(UserError, match="no split 'held_out'"):
        td.split("held_out")


def test_token_dir_refuses_a_dir_without_tokenizer(tmp_path):
    with pytest.raises(UserError, match="tokenizer.json not found"):
        TokenDir(tmp_path)
