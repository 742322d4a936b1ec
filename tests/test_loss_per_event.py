"""Held-out loss per event (issue 12): code modes give different tokens per event, so the trainer
also records nats per event, counting events exactly as the tokenizer does."""

from __future__ import annotations

import datetime as dt
import json
import math

import polars as pl
import pytest

from ehrfm.config import TrainConfig
from ehrfm.tokens import TokenDir
from ehrfm.train import train
from tokenization.tokenize import tokenize

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_meds(tmp_path_factory):
    """Subjects with ICD-10 diagnoses and procedures (several tokens each when hierarchical) and labs."""
    root = tmp_path_factory.mktemp("meds") / "meds"
    t0 = dt.datetime(2150, 1, 1)
    dx = ["I219", "I2101", "E119", "E1165", "N179", "J189", "S72001A"]
    for split, sids in (("train", range(40)), ("tuning", range(100, 108))):
        rows = []
        for s in sids:
            rows += [(s, None, "GENDER//F", None), (s, dt.datetime(2090, 1, 1), "MEDS_BIRTH", None)]
            for k in range(12):
                t = t0 + dt.timedelta(hours=7 * k + s % 5)
                rows.append((s, t, f"DIAGNOSIS//ICD//10//{dx[(s + k) % len(dx)]}", None))
                rows.append((s, t, "LAB//50912//mg/dL", float((s * k) % 7)))
                if k % 3 == 0:
                    rows.append((s, t, "PROCEDURE//ICD//10//0DTJ4ZZ", None))
        (root / "data" / split).mkdir(parents=True)
        pl.DataFrame(rows, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String,
                                   "numeric_value": pl.Float32}, orient="row").write_parquet(root / "data" / split / "0.parquet")
    return root


@pytest.mark.parametrize("codes", ["hierarchical", "flat"])
def test_loss_per_event_counts_the_tokenizers_events(small_meds, tmp_path, codes):
    stats = tokenize(small_meds, tmp_path / "tok", codes=codes, min_count=5)["splits"]["tuning"]
    td = TokenDir(tmp_path / "tok")
    assert td.code_mode == codes
    res = train(TrainConfig(tokens_dir=str(tmp_path / "tok"), out_dir=str(tmp_path / "run"), n_layer=1, d_model=16,
                            n_head=2, context=32, tokens=2048, batch_size=4, eval_tokens=10**6, seed=0))
    assert res["status"] == "completed" and res["eval_tokens"] == stats["tokens"]  # the whole tuning split
    # Every event of the split opens at a predicted position (a subject's first token,
    # TIMELINE_START, is never one), so the trainer counts the tokenizer's code_events.
    assert res["eval_events"] == stats["code_events"] == 8 * (1 + 12 * 2 + 4)
    targets = stats["tokens"] - stats["subjects"]  # the last token of a subject predicts nothing
    assert res["loss_per_event"] == pytest.approx(res["val_loss"] * targets / stats["code_events"], rel=1e-12)
    assert json.loads((tmp_path / "run/result.json").read_text())["loss_per_event"] == res["loss_per_event"]
    if codes == "hierarchical":
        assert stats["code_tokens"] > stats["code_events"]  # ICD codes took several tokens
    assert math.isfinite(res["loss_per_event"]) and res["loss_per_event"] > res["val_loss"]


def test_event_head_mask_of_a_hierarchical_tokenizer(small_meds, tmp_path):
    tokenize(small_meds, tmp_path / "tok", min_count=5)
    td = TokenDir(tmp_path / "tok")
    heads = {t for t, m in zip(td.vocab, td.event_head_mask, strict=True) if m}
    assert "UNK" in heads and "GENDER//F" in heads and "LAB//50912//mg/dL" in heads
    assert "DIAGNOSIS//ICD//10//I21" in heads and "PROCEDURE//ICD//10//1//0" in heads
    assert not heads & {"PAD", "TIMELINE_START", "TIMELINE_END", "Q1", "1h-2h", "AGE//55-59",
                        "DIAGNOSIS//ICD//10//3-6//9", "PROCEDURE//ICD//10//7//Z"}
    ids = [td.token_id(t) for t in ("TIMELINE_START", "DIAGNOSIS//ICD//10//I21", "DIAGNOSIS//ICD//10//3-6//9", "Q3")]
    assert td.count_events(ids + [-100]) == 1


def test_event_head_mask_of_a_hand_made_tokenizer_without_special_tokens(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"vocab": ["PAD", "UNK", "TIMELINE_END", "CODE//0"]}))
    td = TokenDir(tmp_path)
    assert td.code_mode == "flat" and td.event_head_mask.tolist() == [False, True, False, True]
