"""Quantile tokens of tied values: a value that fills several deciles keeps a token of its own.

Before (tokenizer versions 1-2), the Q token counted every train decile <= value. A code's deciles
repeat when one value is common (a standard dose, a rounded lab): on the MIMIC-IV demo 140 of 682
numeric codes used fewer bins than they had distinct values, and in 33 two values of >= 5% of rows
each shared a token (`INFUSION//227522//ml` 50 and 100: both Q10). Rule "ties" (version 3) counts a
run of equal deciles once for the value itself and once more for the values above it.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from ehrfm.errors import UserError
from ehrfm.tokens import TokenDir
from tokenization.tokenize import tokenize

T0 = dt.datetime(2150, 3, 1, 8, 0)


def _meds(root, values_by_code: dict[str, list[float]]):
    """A MEDS dir whose train split holds one subject per value of each code; tuning/held_out one subject each."""
    def subject(sid, code, v):
        return [(sid, None, "GENDER//F", None), (sid, T0, code, v), (sid, T0 + dt.timedelta(hours=1), "DONE", None)]

    rows, sid = [], 0
    for code, values in values_by_code.items():
        for v in values:
            rows += subject(sid, code, v)
            sid += 1
    split_rows = {"train": rows, "tuning": subject(10**6, "DONE", None), "held_out": subject(10**6 + 1, "DONE", None)}
    for split, r in split_rows.items():
        (root / "data" / split).mkdir(parents=True)
        pl.DataFrame(r, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
                                "numeric_value": pl.Float32}, orient="row").write_parquet(root / "data" / split / "0.parquet")
    return root


def _q_of_values(td: TokenDir, code: str) -> dict[float, set[str]]:
    """{value: the Q tokens it became} over the train split (a Q token follows its code's token)."""
    toks = np.load(td.path / "train" / "tokens.npy")
    code_id = td.vocab.index(code)
    at = np.nonzero(toks == code_id)[0]
    qs = [td.vocab[t] for t in toks[at + 1]]
    return qs


VALUES = {
    "LAB//B": [0.0] * 92 + [1.0] * 8,  # every decile is 0
    "LAB//C": [1.0] * 50 + [2.0] * 45 + [3.0] * 5,  # deciles 1,1,1,1,1.5,2,2,2,2 (the median interpolated)
    "LAB//D": [float(i) for i in range(100)],  # no ties: Q1..Q10 as before
}


def test_tied_values_keep_tokens_of_their_own(tmp_path):
    tokenize(_meds(tmp_path / "meds", VALUES), tmp_path / "tok", min_count=1)
    td = TokenDir(tmp_path / "tok")
    assert td.tokenizer["quantile_rule"] == "ties" and td.tokenizer["version"] == 3
    assert td.tokenizer["quantile_edges"]["LAB//B"] == [0.0] * 9
    assert td.tokenizer["quantile_edges"]["LAB//C"] == [1.0] * 4 + [1.5] + [2.0] * 4
    for code, want in (("LAB//B", {0.0: "Q2", 1.0: "Q3"}), ("LAB//C", {1.0: "Q2", 2.0: "Q5", 3.0: "Q6"})):
        qs = _q_of_values(td, code)
        got = {}
        for v, q in zip(VALUES[code], qs, strict=True):
            got.setdefault(v, set()).add(q)
        assert got == {v: {q} for v, q in want.items()}, code
    # untied deciles: the rule is the old one (k = 1 + deciles <= value)
    edges = td.tokenizer["quantile_edges"]["LAB//D"]
    qs = _q_of_values(td, "LAB//D")
    assert qs == [f"Q{1 + sum(e <= v for e in edges)}" for v in VALUES["LAB//D"]]
    assert len(set(qs)) == 10


def test_a_tokenizer_without_the_rule_encodes_as_its_models_were_trained(tmp_path):
    """An older tokenizer.json (no quantile_rule) applied to new data gives the tokens its models saw."""
    meds = _meds(tmp_path / "meds", VALUES)
    tokenize(meds, tmp_path / "tok", min_count=1)
    old = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    del old["quantile_rule"]
    old["version"] = 2
    (tmp_path / "old.json").write_text(json.dumps(old))
    tokenize(meds, tmp_path / "tok_old", tokenizer=tmp_path / "old.json")
    td = TokenDir(tmp_path / "tok_old")
    assert set(_q_of_values(td, "LAB//B")) == {"Q10"}  # both values, as before
    assert dict(zip(VALUES["LAB//C"], _q_of_values(td, "LAB//C"), strict=True)) == {1.0: "Q5", 2.0: "Q10", 3.0: "Q10"}


@pytest.mark.parametrize("edit, what", [
    (lambda e: e[::-1], "reversed"),
    (lambda e: [*e[:4], float("nan"), *e[5:]], "nan"),
])
def test_edited_deciles_are_refused(tmp_path, edit, what):
    meds = _meds(tmp_path / "meds", VALUES)
    tokenize(meds, tmp_path / "tok", min_count=1)
    tok = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    tok["quantile_edges"]["LAB//D"] = edit(tok["quantile_edges"]["LAB//D"])
    (tmp_path / "edited.json").write_text(json.dumps(tok))
    with pytest.raises(UserError, match=r"tokenizer .*edited.json is damaged: 'quantile_edges' of 1 code\(s\) are not finite "
                                        r"numbers in non-decreasing order \(first: LAB//D\)"):
        tokenize(meds, tmp_path / "out", tokenizer=tmp_path / "edited.json")
    assert not (tmp_path / "out").exists()
